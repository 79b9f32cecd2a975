"""The README's examples work as written.

Every ```python block runs on its own (a fresh namespace, in a temporary working directory), as a
user would paste it. A block that reads a run directory (``runs/NAME``) finds it there, trained by
the README's own ``fastweights train ... --out runs/NAME`` command with tiny settings appended, as
after the quick start; its printed samples depend on the model and are comments in the README, so
only what does not depend on the model is checked. Every ``fastweights ...`` command line of the
```bash blocks (also under ``torchrun ... -m fastweights.cli``) must parse, so every option shown
exists.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from fastweights.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"

#: the run directories a Python example reads
RUN_DIR = re.compile(r"""["'](runs/[\w.+-]+)["']""")
#: the top-level modules a Python example imports (an optional extra's may be missing)
IMPORT = re.compile(r"^(?:import|from)\s+(\w+)", re.M)
ENV_ASSIGNMENT = re.compile(r"[A-Za-z_]\w*=\S*")

#: settings appended to a README training command so that it finishes in seconds
TINY_RUN = ["--set", "steps=2", "--set", "warmup=1", "--set", "d_model=16", "--set", "n_layers=1", "--set", "n_heads=2",
            "--set", "batch_size=2", "--set", "context=16", "--set", "eval_every=2", "--set", "eval_batches=1",
            "--set", "ckpt_every=2", "--no-progress"]


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, its id (the section heading above it, ``-2``... for a
    section's later blocks) and its text."""

    lang: str
    id: str
    code: str


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def readme_blocks(text: str) -> List[Block]:
    """The fenced blocks of a markdown ``text``, in order (``#`` lines inside a block are not headings)."""
    blocks: List[Block] = []
    heading, lang, lines = "top", None, []
    seen: Dict[str, int] = {}
    for line in text.splitlines():
        if lang is None and line.startswith("```"):
            lang, lines = line[3:].strip(), []
        elif lang is None and line.startswith("#"):
            heading = _slug(line.lstrip("#"))
        elif lang is not None and line.startswith("```"):
            seen[heading] = seen.get(heading, 0) + 1
            block_id = heading if seen[heading] == 1 else f"{heading}-{seen[heading]}"
            blocks.append(Block(lang, block_id, "\n".join(lines) + "\n"))
            lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def fastweights_argv(line: str) -> Optional[List[str]]:
    """The arguments a shell line passes to the ``fastweights`` CLI (``fastweights ARGS``, after any
    ``VAR=value`` prefixes, or ``... -m fastweights.cli ARGS``), or None for any other line."""
    words = shlex.split(line, comments=True)
    if "fastweights.cli" in words:
        at = words.index("fastweights.cli")
        return words[at + 1:] if at > 0 and words[at - 1] == "-m" else None
    while words and ENV_ASSIGNMENT.fullmatch(words[0]):
        words = words[1:]
    return words[1:] if words and words[0] == "fastweights" else None


def command_lines(code: str) -> List[List[str]]:
    """The CLI arguments of every ``fastweights`` command of a shell block (continuation lines joined)."""
    argvs = (fastweights_argv(line.strip()) for line in code.replace("\\\n", " ").splitlines())
    return [argv for argv in argvs if argv is not None]


BLOCKS = readme_blocks(README.read_text())
PYTHON = [b for b in BLOCKS if b.lang == "python"]
COMMANDS = [(f"{b.id}-cmd{i}", argv) for b in BLOCKS if b.lang == "bash" for i, argv in enumerate(command_lines(b.code), 1)]

#: what a block prints whatever the trained model (block id -> substrings of its output)
EXPECTED: Dict[str, List[str]] = {
    "a-fast-weight-layer": ["True\n", "torch.Size([2, 4, 128, 32])"],
    "the-ops": ["chunk\n", "('delta', 'chunk')"],
    "generating-from-a-trained-model": ["ROMEO:\n"],
    "generating-from-a-trained-model-2": ["JULIET:\n", "KING RICHARD III:\nNow is the "],
}


def train_command(out: str) -> List[str]:
    """The README's ``fastweights train`` command that creates run directory ``out``."""
    parser = build_parser()
    found = [argv for _, argv in COMMANDS if argv[0] == "train" and "--resume" not in argv
             and parser.parse_args(argv).out == out]
    assert found, f"the README reads {out} but no `fastweights train ... --out {out}` of it creates it"
    return found[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``trained_run("runs/NAME")``: that run directory, trained once by the README's command with
    :data:`TINY_RUN` settings (the token cache in a temporary directory)."""
    base = tmp_path_factory.mktemp("readme-runs")
    made: Dict[str, Path] = {}

    def get(out: str) -> Path:
        if out not in made:
            argv = train_command(out)
            at = argv.index("--out") + 1
            argv = argv[:at] + [str(base / out)] + argv[at + 1:] + TINY_RUN + ["--cache-dir", str(base / "cache")]
            assert main(argv) == 0, argv
            made[out] = base / out
        return made[out]

    return get


def test_readme_has_the_examples() -> None:
    ids = [b.id for b in PYTHON]
    assert len(ids) == len(set(ids)) and set(EXPECTED) <= set(ids), (ids, sorted(EXPECTED))
    assert any(argv[0] == "train" for _, argv in COMMANDS)


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_example_runs_on_its_own(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture, trained_run: Callable[[str], Path]) -> None:
    for module in sorted(set(IMPORT.findall(block.code))):
        pytest.importorskip(module)  # an optional extra (transformers) may be absent
    for out in sorted(set(RUN_DIR.findall(block.code))):
        shutil.copytree(trained_run(out), tmp_path / out)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exec(compile(block.code, f"{README} ({block.id})", "exec"), {"__name__": "__main__"})
    printed = capsys.readouterr().out
    for expected in EXPECTED.get(block.id, []):
        assert expected in printed, (expected, printed)


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[i for i, _ in COMMANDS])
def test_command_parses(argv: List[str]) -> None:
    try:
        build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"`fastweights {shlex.join(argv)}` does not parse (see the usage message above)")
