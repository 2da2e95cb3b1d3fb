"""`gpt2-twins parity`: twins against each other, and both against stored reference logits."""

import jax
import numpy as np
import optax
import pytest

from bridge.cli import main
from flax_gpt2 import checkpoint
from flax_gpt2.params import init_params
from flax_gpt2.settings import TrainSettings
from gpt2_spec import CharTokenizer, GPT2Config


@pytest.fixture(scope="module")
def forward_npz(hf_fixture_dir):
    with np.load(hf_fixture_dir / "forward.npz") as data:
        return {key: data[key] for key in data.files}


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def padded_reference(forward_npz):
    return dict(
        input_ids=forward_npz["padded_input_ids"],
        attention_mask=forward_npz["padded_attention_mask"],
        logits=forward_npz["padded_logits"],
    )


def test_twins_agree_on_hf_folder(hf_fixture_dir, capsys):
    assert main(["parity", str(hf_fixture_dir)]) == 0
    out = capsys.readouterr().out
    assert "a random batch of 4 x 64 token ids (seed 0" in out
    assert "flax vs penzai: max |logit diff| = " in out
    assert "argmax mismatches (top-2 gap > tolerance): 0" in out
    assert "PASS" in out


def test_reference_padded_batch_passes(hf_fixture_dir, forward_npz, tmp_path, capsys):
    path = write_npz(tmp_path / "ref.npz", **padded_reference(forward_npz))
    assert main(["parity", str(hf_fixture_dir), "--reference", path]) == 0
    out = capsys.readouterr().out
    assert "(logits, 27 positions with mask == 1)" in out
    assert "flax vs reference: max |logit diff| = " in out
    assert "penzai vs reference: max |logit diff| = " in out
    assert "PASS (tolerance 0.0001)" in out


def test_reference_ignores_padding(hf_fixture_dir, forward_npz, tmp_path):
    arrays = padded_reference(forward_npz)
    logits = arrays["logits"].copy()
    logits[1, 0] += 10.0  # row 1 starts with padding, which is never compared
    path = write_npz(tmp_path / "ref.npz", **{**arrays, "logits": logits})
    assert main(["parity", str(hf_fixture_dir), "--reference", path]) == 0


def test_reference_difference_fails(hf_fixture_dir, forward_npz, tmp_path, capsys):
    arrays = padded_reference(forward_npz)
    logits = arrays["logits"].copy()
    logits[1, 10, 3] += 1e-3
    path = write_npz(tmp_path / "ref.npz", **{**arrays, "logits": logits})
    assert main(["parity", str(hf_fixture_dir), "--reference", path]) == 1
    out = capsys.readouterr().out
    assert "FAIL (tolerance 0.0001)" in out


def test_reference_tolerance_option(hf_fixture_dir, forward_npz, tmp_path):
    arrays = padded_reference(forward_npz)
    logits = arrays["logits"].copy()
    logits[1, 10, 3] += 1e-3
    path = write_npz(tmp_path / "ref.npz", **{**arrays, "logits": logits})
    assert main(["parity", str(hf_fixture_dir), "--reference", path, "--tolerance", "2e-3"]) == 0


def test_reference_logits_last(hf_fixture_dir, forward_npz, tmp_path, capsys):
    path = write_npz(
        tmp_path / "last.npz",
        input_ids=forward_npz["b2_input_ids"],
        logits_last=forward_npz["b2_logits"][:, -1],
    )
    assert main(["parity", str(hf_fixture_dir), "--reference", path]) == 0
    assert "(logits_last, 2 positions with mask == 1)" in capsys.readouterr().out


def test_reference_missing_logits(hf_fixture_dir, forward_npz, tmp_path, capsys):
    path = write_npz(tmp_path / "bad.npz", input_ids=forward_npz["b2_input_ids"])
    assert main(["parity", str(hf_fixture_dir), "--reference", path]) == 2
    assert "has neither 'logits'" in capsys.readouterr().err


def test_reference_out_of_range_id(hf_fixture_dir, forward_npz, tmp_path, capsys):
    ids = forward_npz["b2_input_ids"].copy()
    ids[0, 3] = 65
    path = write_npz(tmp_path / "bad.npz", input_ids=ids, logits=forward_npz["b2_logits"])
    assert main(["parity", str(hf_fixture_dir), "--reference", path]) == 2
    assert "Token id 65 at index (0, 3) is outside" in capsys.readouterr().err


def test_missing_source(tmp_path, capsys):
    assert main(["parity", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.fixture
def run_dir(tmp_path):
    config = GPT2Config(
        vocab_size=37, context_length=16, embedding_dim=32, num_layers=2, num_heads=4
    )
    params = init_params(config, jax.random.key(0))
    tokenizer = CharTokenizer(list("abcdefghijklmnopqrstuvwxyz ,.;:!?'-\nX"))
    validation = np.random.default_rng(0).integers(0, 37, 200).astype(np.int32)
    directory = tmp_path / "run"
    checkpoint.write_run_files(directory, config, tokenizer, TrainSettings(), validation)
    with checkpoint.checkpoint_manager(directory) as manager:
        checkpoint.save_run(manager, 1, params, optax.adamw(1e-3).init(params), {})
    return directory


@pytest.mark.slow
def test_twins_agree_on_run_dir(run_dir, capsys):
    assert main(["parity", str(run_dir), "--batch", "3"]) == 0
    out = capsys.readouterr().out
    assert "input: 3 windows of 16 validation tokens" in out
    assert "PASS" in out
