"""Damaged weights wherever they are read: a truncated, empty, overwritten (digest mismatch), non-finite
or missing ``model.safetensors`` is one line naming the file from `fastweights generate` and `eval`
(exit 2, nothing printed), one clear error from ``load_model`` and ``AutoModelForCausalLM``; a damaged
``--load-state`` file likewise; directories written before the digest still load; the digest is
recorded by every writer of a model directory's weights; ``eval`` never reports a non-finite score."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest
import torch

from fastweights import cli
from fastweights.data.text import load_tokenizer
from fastweights.files.atomic import file_sha256
from fastweights.files.state import save_state
from fastweights.models import load_model, read_config, save_weights
from fastweights.models.directory import VERIFY_ENV, WEIGHTS_FILE, write_weights
from fastweights.train.checkpoints import save_checkpoint

from ..tiny_lm import TEXT, write_model_dir


def overwrite_middle(path: Path, byte: bytes, count: int = 400) -> None:
    """``count`` bytes of ``byte`` in the middle of the file (0xff: float32 NaNs; 0x00: finite zeros)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(byte * count)


def poison_first_weight(directory: Path, value: float) -> None:
    """Set one entry of the first floating-point weight to ``value`` and save the weights properly (digest matches)."""
    model, _ = load_model(directory)
    with torch.no_grad():
        next(p for p in model.parameters() if p.is_floating_point()).view(-1)[0] = value
    save_weights(model, directory / WEIGHTS_FILE)


def remove_digest(directory: Path) -> None:
    doc = read_config(directory)
    del doc["weights"]
    (directory / "config.json").write_text(json.dumps(doc))


WEIGHTS = "model.safetensors"
#: damage to a model directory with a digest, and the error it must give (a pattern after "weights file <path> ")
DAMAGES: Dict[str, Tuple[Callable[[Path], None], type, str]] = {
    "truncated": (
        lambda d: os.truncate(d / WEIGHTS, (d / WEIGHTS).stat().st_size // 2),
        ValueError,
        r"is truncated: [\d,]+ bytes, its header describes [\d,]+$",
    ),
    "zero-bytes": (lambda d: (d / WEIGHTS).write_bytes(b""), ValueError, r"is empty \(0 bytes\)$"),
    "garbage-inside": (
        lambda d: overwrite_middle(d / WEIGHTS, b"\x00"),
        ValueError,
        r"does not match the SHA-256 recorded in \S+/config.json: it changed after it was written "
        r"\(damaged on disk or in a copy\)",
    ),
    "non-finite": (
        lambda d: poison_first_weight(d, float("nan")),
        ValueError,
        r"holds non-finite values \(NaN or inf\) in wte.weight",
    ),
    "nan-bytes-no-digest": (
        lambda d: (overwrite_middle(d / WEIGHTS, b"\xff"), remove_digest(d)),
        ValueError,
        r"holds non-finite values \(NaN or inf\) in \S+.*",
    ),
    "missing": (lambda d: (d / WEIGHTS).unlink(), FileNotFoundError, r"does not exist$"),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A delta-rule model directory whose config.json records the weights' digest, a text and a saved state."""
    root = tmp_path_factory.mktemp("weights")
    model_dir = root / "model"
    write_model_dir(model_dir, "delta")  # weights, then config.json: no digest yet, as in directories written before it
    model, _ = load_model(model_dir)
    save_weights(model, model_dir / WEIGHTS)  # into a directory with a config.json: the digest is recorded
    (root / "input.txt").write_text(TEXT)
    tokenizer = load_tokenizer(model_dir)
    with torch.no_grad():
        _, _, state = model(torch.tensor([tokenizer.encode("ROMEO:")]))
    save_state(root / "state.safetensors", state)
    return {"model": model_dir, "text": root / "input.txt", "state": root / "state.safetensors"}


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request: pytest.FixtureRequest, pristine: Dict[str, Path], tmp_path: Path) -> Tuple[Path, type, str]:
    """A damaged copy of the model directory, the error type and the message pattern it must give."""
    damage, error, pattern = DAMAGES[request.param]
    directory = tmp_path / "model"
    shutil.copytree(pristine["model"], directory)
    damage(directory)
    return directory, error, "weights file " + re.escape(str(directory / WEIGHTS)) + " " + pattern


def eval_argv(directory: Path, text: Path) -> List[str]:
    """``fastweights eval`` of the run in ``directory`` on ``text``, one protocol, quickly."""
    return [
        "eval",
        "--checkpoint",
        str(directory),
        "--data",
        str(text),
        "--protocol",
        "sliding-window",
        "--stride",
        "16",
        "--no-progress",
    ]


def run(argv: List[str], capsys: pytest.CaptureFixture) -> Tuple[int, str, List[str]]:
    """``fastweights`` ``argv``: exit status, stdout, stderr lines."""
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err.splitlines()


def assert_one_line(command: str, pattern: str, result: Tuple[int, str, List[str]]) -> None:
    code, out, err = result
    assert code == 2 and out == "" and len(err) == 1, (code, out, err)
    assert re.fullmatch(f"fastweights {command}: error: {pattern}", err[0]), err[0]


def test_generate_and_eval_refuse_damaged_weights_in_one_line(damaged, pristine, capsys) -> None:
    directory, _, pattern = damaged
    assert_one_line(
        "generate",
        pattern,
        run(
            [
                "generate",
                "--checkpoint",
                str(directory),
                "--prompt",
                "ROMEO:",
                "--max-new-tokens",
                "3",
                "--temperature",
                "0",
            ],
            capsys,
        ),
    )
    assert_one_line(
        "eval",
        pattern,
        run(eval_argv(directory, pristine["text"]), capsys),
    )


def test_load_model_raises_the_one_clear_error(damaged) -> None:
    directory, error, pattern = damaged
    with pytest.raises(error) as e:
        load_model(directory)
    assert type(e.value) is error and re.fullmatch(pattern, str(e.value)), str(e.value)


def test_auto_model_raises_the_one_clear_error(damaged) -> None:
    pytest.importorskip("transformers")
    from transformers import AutoModelForCausalLM

    import fastweights.hf  # noqa: F401  registers the model type

    directory, error, pattern = damaged
    with pytest.raises(error) as e:
        AutoModelForCausalLM.from_pretrained(directory)
    assert type(e.value) is error and re.fullmatch(pattern, str(e.value)), str(e.value)


def test_pristine_and_old_directories_load(pristine, tmp_path: Path, capsys) -> None:
    record = read_config(pristine["model"])["weights"]
    assert record == {
        "sha256": file_sha256(pristine["model"] / WEIGHTS),
        "bytes": (pristine["model"] / WEIGHTS).stat().st_size,
    }
    old = tmp_path / "old"
    shutil.copytree(pristine["model"], old)
    remove_digest(old)  # written before the digest existed: the structural and finiteness checks only
    argv = ["--prompt", "ROMEO:", "--max-new-tokens", "3", "--temperature", "0"]
    outputs = []
    for directory in (pristine["model"], old):
        code, out, err = run(["generate", "--checkpoint", str(directory), *argv], capsys)
        assert code == 0 and err == [] and out.startswith("ROMEO:"), (code, out, err)
        outputs.append(out)
    assert outputs[0] == outputs[1]


def test_the_digest_can_be_skipped_for_very_large_files(pristine, tmp_path: Path, monkeypatch) -> None:
    directory = tmp_path / "model"
    shutil.copytree(pristine["model"], directory)
    overwrite_middle(directory / WEIGHTS, b"\x00")  # finite garbage: only the digest sees it
    monkeypatch.setenv(VERIFY_ENV, "0")
    load_model(directory)
    os.truncate(directory / WEIGHTS, (directory / WEIGHTS).stat().st_size - 1)  # the size and structure still count
    with pytest.raises(ValueError, match="is truncated"):
        load_model(directory)


def test_every_writer_of_a_model_directory_records_the_digest(pristine, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(pristine["model"], out)
    remove_digest(out)
    model, _ = load_model(out)
    with torch.no_grad():
        model.wte.weight.add_(1.0)
    ckpt = save_checkpoint(out, model, {"step": 3}, 3)  # what `fastweights train` publishes
    assert read_config(out)["weights"]["sha256"] == file_sha256(out / WEIGHTS) == file_sha256(ckpt / WEIGHTS)
    assert sorted(p.name for p in ckpt.iterdir()) == ["manifest.json", WEIGHTS, "trainer.pt"]  # digest: the manifest
    assert torch.equal(load_model(out)[0].wte.weight, model.wte.weight)


def test_a_failed_weights_write_leaves_no_stale_digest(pristine, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    shutil.copytree(pristine["model"], directory)
    before = (directory / WEIGHTS).read_bytes()

    def crash(tmp: str) -> None:
        Path(tmp).write_bytes(b"half a file")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        write_weights(directory / WEIGHTS, crash)
    assert "weights" not in read_config(directory) and (directory / WEIGHTS).read_bytes() == before
    load_model(directory)  # the old weights, checked without a digest


@pytest.mark.parametrize(
    "damage,pattern",
    [
        (lambda p: os.truncate(p, p.stat().st_size - 10), r"is truncated: [\d,]+ bytes, its header describes [\d,]+"),
        (lambda p: p.write_bytes(b""), r"is empty \(0 bytes\)"),
        (
            lambda p: overwrite_middle(p, b"\x00", 40),
            r"does not match the SHA-256 in its metadata: it changed after .*",
        ),
        (lambda p: p.write_bytes(b"\xff" * 100), r"is truncated or not a safetensors file \(100 bytes, no complete .*"),
    ],
    ids=["truncated", "zero-bytes", "garbage-inside", "not-safetensors"],
)
def test_generate_refuses_a_damaged_state_file_in_one_line(pristine, tmp_path: Path, capsys, damage, pattern) -> None:
    state = tmp_path / "state.safetensors"
    shutil.copyfile(pristine["state"], state)
    damage(state)
    result = run(
        ["generate", "--checkpoint", str(pristine["model"]), "--prompt", " ", "--load-state", str(state)], capsys
    )
    assert_one_line("generate", "state file " + re.escape(str(state)) + " " + pattern, result)


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--max-new-tokens", "-5", "--max-new-tokens must be >= 0, got -5"),
        ("--temperature", "nan", "temperature must be >= 0, got nan"),
        ("--top-p", "1.5", "top_p must be in (0, 1] or None, got 1.5"),
        ("--seed", str(2**64), f"--seed must be in [-2**63, 2**64) (a 64-bit seed), got {2**64}"),
    ],
)
def test_generate_checks_its_numbers_before_printing_anything(pristine, capsys, option, value, message) -> None:
    result = run(["generate", "--checkpoint", str(pristine["model"]), "--prompt", "ROMEO:", option, value], capsys)
    assert_one_line("generate", re.escape(message), result)


def test_eval_never_reports_a_non_finite_score(pristine, tmp_path: Path, capsys) -> None:
    directory = tmp_path / "model"
    shutil.copytree(pristine["model"], directory)
    model, _ = load_model(directory)
    with torch.no_grad():
        model.head.weight.mul_(1e37)  # finite weights whose logits overflow to inf: a NaN loss
    save_weights(model, directory / WEIGHTS)
    result = run(eval_argv(directory, pristine["text"]), capsys)
    assert_one_line(
        "eval",
        rf"the sliding-window loss of {re.escape(str(directory))} on the val split of "
        rf"{re.escape(str(pristine['text']))} is nan \(not finite\): .*",
        result,
    )
