"""What every command shares: ``--threads``, ``Examples:`` in ``--help``, unknown options with a
"did you mean", and Ctrl-C as one line with exit status 130."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
import torch

from fastweights.cli import EXIT_INTERRUPTED, build_parser, main, threads

from ..tiny_lm import write_model_dir


def leaf_parsers() -> Iterator[Tuple[str, argparse.ArgumentParser]]:
    """``("bench ops", parser)``... for every command that runs (sub-commands of sub-commands included)."""

    def walk(prefix: str, parser: argparse.ArgumentParser) -> Iterator[Tuple[str, argparse.ArgumentParser]]:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            yield prefix, parser
        for action in subs:
            for name, child in action.choices.items():
                yield from walk(f"{prefix} {name}".strip(), child)

    yield from walk("", build_parser())


LEAVES = list(leaf_parsers())
NAMES = [name for name, _ in LEAVES]


def examples(help_text: str) -> List[str]:
    """The command lines of the ``Examples:`` section of a help text (continuation lines joined,
    ``# comments`` dropped, indented explanation lines skipped)."""
    section = help_text.split("Examples:\n", 1)[1]
    lines, out = section.replace("\\\n", " ").splitlines(), []
    for line in lines:
        if not line.strip():
            break  # the section ends at the first empty line
        if line.startswith("  ") and not line.startswith("   "):
            out.append(line.strip())
    return out


@pytest.mark.parametrize("name,parser", LEAVES, ids=NAMES)
def test_every_command_has_examples_that_parse(name: str, parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert "\nExamples:\n" in text, f"fastweights {name} --help has no Examples section"
    found = examples(text)
    assert found, name
    full, own = build_parser(), 0
    for line in found:
        words = shlex.split(line, comments=True)
        if words[0] != "fastweights":  # e.g. torchrun ... -m fastweights.cli train ...
            words = ["fastweights"] + words[words.index("fastweights.cli") + 1 :]
        full.parse_args(words[1:])  # an unknown option or bad value exits (SystemExit)
        own += words[1 : 1 + len(name.split())] == name.split()  # (an example may show what follows, e.g. train)
    assert own, f"fastweights {name} --help shows no example of fastweights {name}"


@pytest.mark.parametrize("name,parser", LEAVES, ids=NAMES)
def test_every_command_takes_threads(name: str, parser: argparse.ArgumentParser) -> None:
    assert "--threads" in parser._option_string_actions, name


def test_default_threads_leaves_busy_cpus_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(threads.ENV, raising=False)
    monkeypatch.setattr(threads, "usable_cpus", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    for busy, expected in [(1, 1), (0, 2), (7, 1)]:  # one core busy; idle: torch's default; never below one
        monkeypatch.setattr(threads, "busy_cpus", lambda: busy)  # noqa: B023 (used within this iteration)
        assert threads.default_threads() == expected
    monkeypatch.setenv(threads.ENV, "2")
    assert threads.default_threads() == 2  # the user's own choice


def test_busy_cpus_counts_this_process_cpus_now_or_falls_back_to_the_load(monkeypatch: pytest.MonkeyPatch) -> None:
    samples = iter([{0: (100, 1000), 1: (500, 1000)}, {0: (190, 1100), 1: (505, 1100)}])  # cpu 0 busy 90%, 1: 5%
    monkeypatch.setattr(threads, "_cpu_times", lambda: next(samples))
    assert threads.busy_cpus(seconds=0) == 1

    def no_proc_stat():
        raise FileNotFoundError("/proc/stat")

    monkeypatch.setattr(threads, "_cpu_times", no_proc_stat)
    monkeypatch.setattr(os, "getloadavg", lambda: (2.4, 1.0, 1.0))
    assert threads.busy_cpus(seconds=0) == 2


def test_threads_apply_while_the_command_runs_and_are_restored(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from fastweights.cli.commands import demo

    seen = []
    monkeypatch.setattr(demo, "main", lambda args: seen.append((args.threads, torch.get_num_threads())) or 0)
    before = torch.get_num_threads()
    target = 1 if before > 1 else 2
    assert main(["demo", "--threads", str(target)]) == 0
    assert seen == [(target, target)] and torch.get_num_threads() == before


@pytest.mark.parametrize(
    "value,message",
    [("0", "must be >= 1, got 0"), ("-1", "must be >= 1, got -1"), ("two", "must be an int >= 1, got 'two'")],
)
def test_bad_threads_is_one_line(value: str, message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["demo", "--threads", value])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"fastweights demo: error: argument --threads: {message}"


@pytest.mark.parametrize(
    "argv,usage,hint",
    [
        (
            ["train", "--preset", "shakespeare-char", "--out", "x", "--max-steps", "5"],
            "fastweights train",
            "--set steps=VALUE",
        ),
        (
            ["train", "--preset", "shakespeare-char", "--out", "x", "--d-model=64"],
            "fastweights train",
            "--set d_model=VALUE",
        ),
        (["eval", "--checkpoint", "runs/x", "--max-tokns", "5"], "fastweights eval", "--max-tokens"),
        (
            ["train", "--preset", "shakespeare-char", "--out", "x", "--lr", "1e-3"],
            "fastweights train",
            "--set lr=VALUE",
        ),
        (["train", "--preset", "shakespeare-char", "--out", "x", "--out-dir", "y"], "fastweights train", "--out"),
        (["bench", "ops", "--lenghts", "512"], "fastweights bench ops", "--lengths"),
    ],
)
def test_unknown_option_gets_the_commands_usage_and_a_hint(
    argv: List[str], usage: str, hint: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {usage} "), err
    assert f"(did you mean {hint}?)" in err.splitlines()[-1], err


def test_ctrl_c_in_generate_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from fastweights.models import LanguageModel

    write_model_dir(tmp_path / "run", "delta")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LanguageModel, "step", interrupted)
    assert (
        main(["generate", "--checkpoint", str(tmp_path / "run"), "--prompt", "To", "--max-new-tokens", "5"])
        == EXIT_INTERRUPTED
    )
    err = capsys.readouterr().err.strip()
    assert err == "fastweights generate: interrupted"


def test_ctrl_c_in_train_says_where_it_stopped_and_how_to_resume(tmp_path: Path) -> None:
    """A real SIGINT to a training process: one line (the step reached, the last checkpoint and
    ``--resume``), exit 130, no traceback, no lock left."""
    text = tmp_path / "text.txt"
    text.write_text("to be or not to be, that is the question " * 400)
    out = tmp_path / "run"
    argv = [
        sys.executable,
        "-m",
        "fastweights.cli",
        "train",
        "--preset",
        "shakespeare-char",
        "--attention",
        "delta",
        "--data",
        str(text),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out",
        str(out),
        "--no-progress",
        "--threads",
        "1",
        "--set",
        "steps=100000",
        "--set",
        "ckpt_every=2",
        "--set",
        "eval_every=100000",
        "--set",
        "d_model=16",
        "--set",
        "n_layers=1",
        "--set",
        "n_heads=2",
        "--set",
        "context=16",
        "--set",
        "batch_size=2",
        "--set",
        "warmup=1",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("step-*")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    found = re.fullmatch(
        r"fastweights train: interrupted: training stopped at step (\d+) of 100000; its last "
        r"checkpoint is step (\d+): the same command with --resume continues from there",
        lines[0],
    )
    assert found and int(found[2]) <= int(found[1]), lines[0]
    assert not (out / ".lock").exists()
