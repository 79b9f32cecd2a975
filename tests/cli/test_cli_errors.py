"""Bad input to every command (``train`` has its own table in tests/train/test_train.py): exit status 2,
one line on stderr, ``fastweights <cmd>: error: ...``, that names the argument, and nothing written.

Errors the commands raise (``ValueError``, ``OSError``) are that one line; errors argparse finds
itself (an invalid choice, a malformed number) end its usage message with the same line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import torch

from fastweights.cli import main
from fastweights.files.state import save_state

from ..tiny_lm import TEXT, tiny_model, write_model_dir


@dataclass(frozen=True)
class Case:
    """``argv`` (with ``{name}`` for the paths of :func:`assets` and of the test's folder), the command
    its error line names, a pattern of its message, and whether argparse rejects it (usage lines
    first; argparse names a benchmark's own parser, ``bench ops``, the command line ``bench``)."""

    argv: Tuple[str, ...]
    command: str
    message: str
    parser: bool = False


def case(command: str, argv: str, message: str, parser: bool = False):
    return pytest.param(Case(tuple(argv.split()), command, message, parser), id=f"{command}: {argv}")


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")

CASES = [
    case("fastweights", "nope", r"argument COMMAND: invalid choice: 'nope'", parser=True),
    # capacity
    case("capacity", "capacity --keys 2:100000000:1", r"keys must give S values <= 2048 .*got '2:100000000:1'"),
    case("capacity", "capacity --keys 20:10:5", r"keys must be START:STOP:STEP .*got '20:10:5'"),
    case("capacity", "capacity --keys 1,4", r"keys must give S values >= 2, got '1,4'"),
    case(
        "capacity", "capacity --methods dpfp-2+hebb", r"unknown method 'dpfp-2\+hebb'; valid methods: softmax, linear"
    ),
    case("capacity", "capacity --queries some", r"--queries must be a positive int or 'all', got 'some'"),
    case("capacity", "capacity --queries 0", r"queries must be a positive int or 'all', got 0"),
    case("capacity", "capacity --max-steps 0", r"max_steps must be a positive int, got 0"),
    case("capacity", "capacity --d 0", r"d must be a positive int, got 0"),
    case(
        "capacity",
        "capacity --preset paper-setting1 --setting 2",
        r"--setting 2: preset 'paper-setting1' has no such setting",
    ),
    case("capacity", "capacity --device nonsense", r"--device: .*nonsense"),
    case("capacity", "capacity --threads 0", r"argument --threads: must be >= 1, got 0", parser=True),
    case(
        "train",
        "train --preset shakespeare-char --out {folder} --max-steps 5",
        r"unrecognized arguments: --max-steps 5 \(did you mean --set steps=VALUE\?\)",
        parser=True,
    ),
    case("capacity", "capacity --out {file}", r"--out \S*file.txt is a file; expected a folder"),
    case("capacity", "capacity --out {file}/sweep", r"--out \S*file.txt/sweep is inside \S*file.txt, which is a file"),
    case(
        "capacity",
        "capacity --keys 3 --out {other}",
        r"\S*results.json is not a results file of this experiment .*use another --out",
    ),
    case("capacity", "capacity --setting 4", r"argument --setting: invalid choice: 4", parser=True),
    case("capacity", "capacity --preset huge", r"argument --preset: invalid choice: 'huge'", parser=True),
    # demo
    case("demo", "demo --length 0", r"--length must be >= 1, got 0"),
    case("demo", "demo --heads 3", r"--d-model \(128\) must be divisible by --heads \(3\)"),
    case("demo", "demo --nu 0", r"--nu must be >= 1, got 0"),
    case("demo", "demo --impl parallel", r"--rule delta --impl parallel .*unknown impl 'parallel' for rule 'delta'"),
    case("demo", "demo --nu 200", r"--feature-map dpfp: dpfp nu must be an int in \[1, 2d\) = \[1, 64\), got 200"),
    case("demo", "demo --rule hebb", r"argument --rule: invalid choice: 'hebb'", parser=True),
    # bench ops
    case("bench ops", "bench ops --max-seconds 0", r"--max-seconds must be > 0, got 0.0"),
    case("bench ops", "bench ops --json {folder}", r"--json \S*folder is a folder; expected a file"),
    case(
        "bench ops",
        "bench ops --json {file}/ops.json",
        r"--json \S*file.txt/ops.json is inside \S*file.txt, which is a file",
    ),
    case("bench ops", "bench ops --lengths 0", r"argument --lengths: must be >= 1, got 0", parser=True),
    pytest.param(
        Case(("bench", "ops", "--device", "cuda"), "bench ops", "--device cuda: CUDA is not available on this machine"),
        id="bench: bench ops --device cuda",
        marks=NO_CUDA,
    ),
    # bench lm
    case("bench lm", "bench lm --attentions bogus", r"--attentions bogus: unknown attention variant 'bogus'"),
    case("bench lm", "bench lm --impl nope", r"--impl must be 'auto' or one of \[.*'chunk'.*\], got 'nope'"),
    case("bench lm", "bench lm --d-model 10 --heads 3", r"--d-model \(10\) must be divisible by --heads \(3\)"),
    case("bench lm", "bench lm --json {folder}", r"--json \S*folder is a folder; expected a file"),
    case("bench lm", "bench lm --steps 0", r"argument --steps: must be >= 1, got 0", parser=True),
    pytest.param(
        Case(("bench", "lm", "--device", "cuda"), "bench lm", "--device cuda: CUDA is not available on this machine"),
        id="bench: bench lm --device cuda",
        marks=NO_CUDA,
    ),
    # eval
    case("eval", "eval --checkpoint {delta} --data {text} --stride 0", r"--stride must be >= 1, got 0"),
    case("eval", "eval --checkpoint {delta} --data {text} --segment 0", r"--segment must be >= 1, got 0"),
    case("eval", "eval --checkpoint {delta} --data {text} --max-tokens 1", r"--max-tokens must be >= 2, got 1"),
    case("eval", "eval --checkpoint {delta} --data {text} --batch-size 0", r"--batch-size must be >= 1, got 0"),
    case(
        "eval",
        "eval --checkpoint {delta} --data {text} --val-fraction 1.5",
        r"--val-fraction must be in \(0, 1\), got 1.5",
    ),
    case("eval", "eval --checkpoint {delta} --data {text} --device nonsense", r"--device: .*nonsense"),
    case(
        "eval",
        "eval --checkpoint {delta} --data {text} --json {folder}",
        r"--json \S*folder is a folder; expected a file",
    ),
    case(
        "eval",
        "eval --checkpoint {folder} --data {text}",
        r"no config.json in \S*folder: not a fastweights model directory",
    ),
    case(
        "eval",
        "eval --checkpoint {delta} --data {folder}/missing.txt",
        r"corpus path '\S*folder/missing.txt' does not exist",
    ),
    case("eval", "eval --checkpoint {delta} --data {text} --split test", r"--data \S*input.txt has no 'test' split"),
    case(
        "eval",
        "eval --checkpoint {delta} --data {text} --stride 100",
        r"stride must be at most the context \(16\), got 100",
    ),
    case(
        "eval",
        "eval --checkpoint {delta} --data {text} --protocol every",
        r"argument --protocol: invalid choice",
        parser=True,
    ),
    # generate
    case("generate", "generate --checkpoint {folder} --prompt ROMEO:", r"no config.json in \S*folder"),
    case(
        "generate",
        "generate --checkpoint {delta} --prompt ROMEO: --load-state {softmax_state}",
        r"--load-state \S*softmax.safetensors is not a state of this model \(delta\): it has \['layers.0.k'",
    ),
    case(
        "generate",
        "generate --checkpoint {delta} --prompt ROMEO: --load-state {folder}/missing.safetensors",
        r"no state file at '\S*missing.safetensors'",
    ),
    case(
        "generate",
        "generate --checkpoint {delta} --prompt ROMEO: --save-state {folder}",
        r"--save-state \S*folder is a folder; expected a file",
    ),
    case(
        "generate",
        "generate --checkpoint {delta} --prompt ROMEO: --temperature -1",
        r"temperature must be >= 0, got -1.0",
    ),
    case(
        "generate",
        "generate --checkpoint {delta} --prompt ROMEO: --top-k 0",
        r"top_k must be a positive int or None, got 0",
    ),
    case(
        "generate",
        "generate --checkpoint {delta} --prompt ROMEO: --max-new-tokens x",
        r"argument --max-new-tokens: invalid int",
        parser=True,
    ),
]


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Dict[str, Path]:
    """Model directories, a corpus and a softmax model's state (outside the tests' own folders)."""
    root = tmp_path_factory.mktemp("assets")
    write_model_dir(root / "delta", "delta")
    tokenizer = write_model_dir(root / "softmax", "softmax")
    (root / "input.txt").write_text(TEXT)
    _, _, state = tiny_model("softmax", vocab_size=tokenizer.vocab_size)(torch.tensor([tokenizer.encode("ROMEO:")]))
    save_state(root / "softmax.safetensors", state)
    return {"delta": root / "delta", "text": root / "input.txt", "softmax_state": root / "softmax.safetensors"}


def _snapshot(root: Path) -> Dict[str, Tuple[int, int]]:
    """Every file and folder under ``root``, with its size and modification time."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}


def _run(argv: List[str], capsys) -> Tuple[int, List[str]]:
    """``main(argv)``'s exit status (argparse exits itself) and its stderr lines."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bad: Case, assets, tmp_path, monkeypatch, capsys):
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "folder").mkdir()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text('{"rows": []}')  # another experiment's results
    paths = {**assets, "file": tmp_path / "file.txt", "folder": tmp_path / "folder", "other": tmp_path / "other"}
    monkeypatch.chdir(tmp_path)  # default outputs (runs/capacity, benchmarks/results) would land here
    before = _snapshot(tmp_path), _snapshot(assets["delta"].parent)
    code, err = _run([arg.format(**paths) for arg in bad.argv], capsys)
    assert code == 2, f"exit status {code}, stderr {err}"
    assert err and (bad.parser or len(err) == 1), f"expected one line on stderr, got {err}"
    prefix = "fastweights: error: " if bad.command == "fastweights" else f"fastweights {bad.command}: error: "
    assert err[-1].startswith(prefix), err[-1]
    assert re.search(bad.message, err[-1]), f"{err[-1]!r} does not match {bad.message!r}"
    assert (_snapshot(tmp_path), _snapshot(assets["delta"].parent)) == before, "a bad command wrote files"
