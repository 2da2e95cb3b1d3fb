"""Tests for run directories: saving and loading checkpoints, and their error messages."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from bridge.sources import load_model_source
from flax_gpt2 import checkpoint, sharding
from flax_gpt2.params import init_params
from flax_gpt2.settings import TrainSettings
from flax_gpt2.train_step import make_optimizer
from gpt2_spec import CharTokenizer, GPT2Config

TOKENIZER = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .,;!?\nABCD")
CONFIG = GPT2Config(
    vocab_size=TOKENIZER.vocab_size, context_length=16, embedding_dim=32, num_layers=2, num_heads=4
)
SETTINGS = TrainSettings(steps=10, warmup_steps=1, batch_size=8)

# A failed orbax restore abandons its other reads, which surface later, in whichever test
# runs during garbage collection, as unraisable exceptions and never-awaited coroutines.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning"),
]


def _save(run_dir, params, step=3, mesh_shape=None):
    """Write a run whose state was placed on an 8-device mesh, as training leaves it."""
    mesh = sharding.make_mesh(mesh_shape or {"data": 2, "model": 4})
    shardings = sharding.param_shardings(CONFIG, params, mesh)
    optimizer = make_optimizer(SETTINGS)
    sharded = jax.device_put(params, shardings)
    validation = np.arange(40, dtype=np.int32) % CONFIG.vocab_size
    checkpoint.write_run_files(run_dir, CONFIG, TOKENIZER, SETTINGS, validation)
    with checkpoint.checkpoint_manager(run_dir) as manager:
        rng_state = np.random.default_rng(5).bit_generator.state
        checkpoint.save_run(manager, step, sharded, optimizer.init(sharded), rng_state)
    return validation


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(0))


@pytest.fixture
def saved_run(tmp_path, params):
    run_dir = tmp_path / "run"
    _save(run_dir, params)
    return run_dir


def test_load_run_round_trip(tmp_path, params):
    run_dir = tmp_path / "run"
    validation = _save(run_dir, params, step=7)
    loaded = checkpoint.load_run(run_dir)

    assert loaded.config == CONFIG
    assert loaded.tokenizer.chars == TOKENIZER.chars
    assert loaded.step == 7
    assert loaded.settings == SETTINGS
    np.testing.assert_array_equal(loaded.validation_ids, validation)
    want = jax.tree_util.tree_leaves_with_path(params)
    got = jax.tree_util.tree_leaves_with_path(loaded.params)
    assert [path for path, _ in got] == [path for path, _ in want]
    for (_, leaf), (_, want_leaf) in zip(got, want, strict=True):
        assert isinstance(leaf, np.ndarray)
        assert leaf.dtype == np.float32
        np.testing.assert_array_equal(leaf, np.asarray(want_leaf))


def test_load_run_picks_latest_step(tmp_path, params):
    run_dir = tmp_path / "run"
    _save(run_dir, params, step=2)
    later = jax.tree.map(lambda x: x + 1.0, params)
    _save(run_dir, later, step=5)
    loaded = checkpoint.load_run(run_dir)
    assert loaded.step == 5
    np.testing.assert_array_equal(
        loaded.params["ln_f"]["scale"], np.asarray(later["ln_f"]["scale"])
    )


def test_restore_training_state(tmp_path, params):
    run_dir = tmp_path / "run"
    _save(run_dir, params, step=4, mesh_shape={"data": 8})
    mesh = sharding.make_mesh({"data": 4, "fsdp": 2})
    optimizer = make_optimizer(SETTINGS)
    shardings = sharding.param_shardings(CONFIG, params, mesh)
    opt_shardings = sharding.optimizer_shardings(optimizer, params, shardings, mesh)
    abstract_params = jax.tree.map(
        lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s), params, shardings
    )
    abstract_opt = jax.tree.map(
        lambda p, s: jax.ShapeDtypeStruct(p.shape, p.dtype, sharding=s),
        jax.eval_shape(optimizer.init, params),
        opt_shardings,
    )
    got_params, opt_state, step, rng_state = checkpoint.restore_training(
        run_dir, abstract_params, abstract_opt
    )
    assert step == 4
    assert rng_state == np.random.default_rng(5).bit_generator.state
    assert got_params["wpe"]["embedding"].sharding == shardings["wpe"]["embedding"]
    np.testing.assert_array_equal(got_params["wpe"]["embedding"], params["wpe"]["embedding"])
    assert int(opt_state[1][0].count) == 0


def test_load_run_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint in .*gpt2-twins train --out"):
        checkpoint.load_run(tmp_path)


def test_load_run_empty_checkpoint_dir(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.json").write_text(CONFIG.to_json())
    (tmp_path / "tokenizer.json").write_text(TOKENIZER.to_json())
    with pytest.raises(FileNotFoundError, match="gpt2-twins train --out"):
        checkpoint.load_run(tmp_path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("config.json", '{"vocab_size": 3', "Corrupt or truncated JSON file .*config.json"),
        ("config.json", '{"vocab_size": 3, "width": 2}', "Unknown GPT2Config keys"),
        ("tokenizer.json", '{"kind": "char", "ch', "Invalid tokenizer file .*Unterminated"),
        ("tokenizer.json", '{"kind": "char", "chars": "aa"}', "Invalid tokenizer file .*distinct"),
        ("train_settings.json", '{"steps": -1}', "Invalid train settings file"),
        ("validation_ids.npy", "not numpy", "Corrupt validation ids file"),
    ],
    ids=[
        "config-truncated",
        "config-unknown-key",
        "tokenizer-truncated",
        "tokenizer-duplicate-chars",
        "settings-invalid",
        "validation-corrupt",
    ],
)
def test_load_run_corrupt_file(saved_run, name, content, message):
    (saved_run / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        checkpoint.load_run(saved_run)


def test_non_char_tokenizer_left_to_bridge(saved_run):
    (saved_run / "tokenizer.json").write_text('{"kind": "bpe"}')
    assert checkpoint.load_run(saved_run).tokenizer is None
    with pytest.raises(ValueError, match="training needs the character tokenizer"):
        checkpoint.read_tokenizer(saved_run, required=True)
    with pytest.raises(ValueError, match="is not a valid tokenizer.json"):
        load_model_source(saved_run)


def test_load_run_missing_config(saved_run):
    (saved_run / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json' is missing"):
        checkpoint.load_run(saved_run)


def test_load_run_truncated_array_files(saved_run):
    params_dir = saved_run / "checkpoints" / "3" / "params"
    data_files = [path for path in params_dir.rglob("*") if path.is_file() and "d" in path.parts]
    assert data_files, f"expected orbax data files under {params_dir}"
    for path in data_files:
        path.write_bytes(path.read_bytes()[:10])
    with pytest.raises(ValueError, match="checkpoint step 3 .*corrupt or truncated"):
        checkpoint.load_run(saved_run)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"embedding_dim": 64}, "block_0/attn/key/bias has shape \\(4, 8\\) .* \\(4, 16\\)"),
        ({"num_layers": 3}, "parameter block_2/.* is missing from the checkpoint"),
        ({"num_layers": 1}, "extra parameters \\['block_1/attn/key/bias'"),
    ],
    ids=["wider", "more-layers", "fewer-layers"],
)
def test_load_run_params_not_matching_config(saved_run, change, message):
    config = json.loads(CONFIG.to_json())
    config.update(change)
    (saved_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match config.json: .*" + message):
        checkpoint.load_run(saved_run)
