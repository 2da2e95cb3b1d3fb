"""Shared test set-up: eight virtual CPU devices for sharding tests, and paths to the
read-only corpus and Hugging Face fixture beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

# Must happen before JAX is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def corpus_path() -> Path:
    """tiny-shakespeare; GPT2_TWINS_DATA overrides the default ../shared/data path."""
    path = Path(os.environ.get("GPT2_TWINS_DATA", SHARED / "data" / "tinyshakespeare.txt"))
    if not path.is_file():
        pytest.skip(f"corpus not found at {path}; set GPT2_TWINS_DATA to a text file")
    return path


@pytest.fixture(scope="session")
def hf_fixture_dir() -> Path:
    """The tiny Hugging Face GPT-2 checkpoint with reference outputs;
    GPT2_TWINS_FIXTURE overrides the default ../shared/fixtures path."""
    path = Path(os.environ.get("GPT2_TWINS_FIXTURE", SHARED / "fixtures" / "hf_gpt2_tiny"))
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"Hugging Face fixture not found at {path}; set GPT2_TWINS_FIXTURE")
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
