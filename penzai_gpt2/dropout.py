"""Dropout control by selectors: disable, remove or re-enable the model's dropout layers.

Each function returns a new model and leaves its argument untouched.
"""

from __future__ import annotations

from typing import TypeVar

from penzai import pz

Model = TypeVar("Model")


def disable_dropout(model: Model) -> Model:
    """Replace every `StochasticDropout` by a `DisabledDropout` that remembers its rate."""
    return pz.select(model).at_instances_of(pz.nn.StochasticDropout).apply(lambda d: d.disable())


def enable_dropout(model: Model) -> Model:
    """Turn every `DisabledDropout` back into an active `StochasticDropout`."""
    return pz.select(model).at_instances_of(pz.nn.DisabledDropout).apply(lambda d: d.enable())


def remove_dropout(model: Model) -> Model:
    """Delete every dropout layer, active or disabled, from its parent `Sequential`.

    The result computes exactly the deterministic forward pass and has nothing left to
    put back; use `disable_dropout` to keep the rates.
    """
    dropout_types = pz.nn.StochasticDropout | pz.nn.DisabledDropout
    return pz.select(model).at_instances_of(dropout_types).remove_from_parent()
