"""The examples of README.md and docs/*.md run as written, and print what they show.

Every fenced block is a known language: ``python`` and shell (``bash``, ``sh``) blocks are run,
:data:`NOT_EXECUTED` says why the others are not.

**Python** blocks run on their own (a fresh namespace, in a temporary working directory), as a user
would paste them, one top-level statement at a time. What a block shows it prints is checked:

- a ``print(...)`` statement's trailing comment shows what that statement prints, optionally
  followed by a remark after ``": "`` or in ``" (...)"``; ``...`` stands for any text
  (``print(x.shape)  # torch.Size([2, 4]): fixed size``);
- comment lines after a block's last statement show everything the block prints. When they start
  with ``prints, for example ...:`` the text depends on a trained model (sampled text): it is an
  example, which only :data:`EXAMPLE_OUTPUTS` may have, and only its first line (the prompt, which
  the block prints itself) is compared.

A block that reads a run directory (``runs/NAME``) says right above it which ``fastweights train``
command of the docs makes it, and finds it trained by that command, scaled down (:data:`SCALED`).

**Shell** blocks run command by command in a temporary working directory (``&&`` chains split,
``for v in ...; do ... done`` unrolled, ``VAR=value`` prefixes set in the environment): every
``fastweights`` command in this process through :func:`fastweights.cli.main`, scaled down only by
appending documented options (:data:`SCALED`), and must exit with status 0. A command that reads a
run directory it did not make (``--checkpoint runs/NAME``) gets it as the Python blocks do. A
command this test cannot run (a GPU, a download, the installation) must match an entry of
:data:`NOT_RUN`, which gives the reason; every other command must run, so a new example cannot slip
through unexecuted. The ``fastweights`` commands not run must still parse.
"""

from __future__ import annotations

import argparse
import ast
import codecs
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tokenize
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest

from fastweights.bench import ops as bench_ops
from fastweights.cli import build_parser, main
from fastweights.data.corpora import bundled_path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL = {"bash", "sh"}
#: fenced blocks that are not run, by language, and why
NOT_EXECUTED = {"bibtex": "a citation, not code", "text": "a diagram, not code"}

#: commands of the docs that CI cannot run (a regular expression searched in the command) and why
NOT_RUN: Dict[str, str] = {
    r"^git clone ": "clones the repository the tests run in",
    r"^cd fastweights$": "enters that clone",
    r"^python -m venv ": "creates the virtual environment the tests run in",
    r"^\. \.venv/bin/activate$": "activates that environment",
    r"^pip install ": "installs packages: CI installs fastweights with its extras before the tests",
    r"^python -m pytest$": "the whole test suite, which CI runs itself (this file included)",
    r"--device cuda": "needs a CUDA GPU",
    r"^bash benchmarks/gpu\.sh$": "needs a CUDA GPU (the CUDA tests and the GPU benchmarks)",
    r"^torchrun --nproc_per_node 8 ": "8 processes, one per GPU",
    r"^fastweights data wikitext-": "downloads WikiText from the internet",
    r"--preset wt2-small|--checkpoint runs/wt2-": "needs WikiText-2, which `fastweights data wikitext-2` downloads",
}

#: settings appended to a ``fastweights train`` command so that it finishes in a second
TINY_RUN = [
    "--set",
    "steps=2",
    "--set",
    "warmup=1",
    "--set",
    "d_model=16",
    "--set",
    "n_layers=1",
    "--set",
    "n_heads=2",
    "--set",
    "batch_size=2",
    "--set",
    "eval_every=2",
    "--set",
    "eval_batches=1",
    "--set",
    "ckpt_every=2",
    "--no-progress",
]

#: documented options appended to each ``fastweights`` command (the last value of an option wins),
#: by (sub-)command; ``{cache}`` is a directory kept for the whole module
SCALED: Dict[str, List[str]] = {
    "train": TINY_RUN,
    "eval": ["--max-tokens", "40", "--stream-length", "256", "--no-progress"],
    "generate": ["--max-new-tokens", "5"],
    "capacity": ["--keys", "4", "--max-steps", "5"],
    "synth": ["--steps", "3"],
    "bench ops": ["--lengths", "64", "--repeat", "1", "--heads", "1", "--dim", "16", "--json", "ops.json"],
    "bench lm": [
        "--contexts",
        "16",
        "--tokens",
        "32",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--d-model",
        "16",
        "--layers",
        "1",
        "--heads",
        "2",
        "--d-ff",
        "32",
    ],
    "bench kernels": [
        "--arch",
        "sm_90",
        "--dtype",
        "bf16",
        "--dk",
        "16",
        "--rules",
        "sum",
        "--cache-dir",
        "{cache}/kernels",
    ],
}

#: documented options appended to each ``python benchmarks/SCRIPT`` command (run in a fresh process,
#: from a folder that has the repository's ``docs/`` folder, as in the repository's root), by script
SCRIPTS: Dict[str, List[str]] = {
    "benchmarks/capacity_readme.py": ["--seeds", "2", "--keys", "4", "--max-steps", "5", "--methods", "linear"],
}

#: files the docs' commands read as the user's own, and what stands in for them
INPUTS: Dict[str, Callable[[], str]] = {
    "my.txt": lambda: bundled_path("tinyshakespeare").read_text()[:20_000],  # "your own text: a file"
}

#: Python blocks whose shown output is an example ("prints, for example"), and why
EXAMPLE_OUTPUTS: Dict[str, str] = {
    "README.md#generating-from-a-trained-model": "text sampled from a trained model",
    "README.md#generating-from-a-trained-model-2": "text sampled from a trained model",
    "README.md#with-hugging-face-transformers": "text sampled from a trained model",
}

#: the run directories a Python example reads
RUN_DIR = re.compile(r"""["'](runs/[\w.+-]+)["']""")
#: the top-level modules a Python example imports (an optional extra's may be missing)
IMPORT = re.compile(r"^(?:import|from)\s+(\w+)", re.M)
ENV_ASSIGNMENT = re.compile(r"([A-Za-z_]\w*)=(\S*)")
LOOP = re.compile(r"for (\w+) in ([^;]+); do")
ANSI_C_STRING = re.compile(r"\$'((?:[^'\\]|\\.)*)'")
INLINE_CODE = re.compile(r"`([^`]+)`")
EXAMPLE = re.compile(r"prints, for example\b.*:$")


@dataclass(frozen=True)
class Block:
    """A fenced code block: its language, its id (``FILE#heading``, ``-2``... for a section's later
    blocks), its text and the prose between it and the block before it."""

    lang: str
    id: str
    code: str = field(repr=False)
    above: str = field(repr=False)


@dataclass(frozen=True)
class Command:
    """One command of a shell block: its id (``BLOCK:N``), its text (words joined by spaces), the
    ``VAR=value`` assignments before it and its words."""

    id: str
    text: str
    env: Tuple[Tuple[str, str], ...]
    words: Tuple[str, ...]

    def fastweights_argv(self) -> Optional[List[str]]:
        """The arguments it passes to the ``fastweights`` CLI (``fastweights ARGS``, or ``... -m
        fastweights.cli ARGS``), or None for another program."""
        if self.words[0] == "fastweights":
            return list(self.words[1:])
        if "fastweights.cli" in self.words[1:] and self.words[self.words.index("fastweights.cli") - 1] == "-m":
            return list(self.words[self.words.index("fastweights.cli") + 1 :])
        return None

    def script(self) -> Optional[str]:
        """The repository script it runs (``python benchmarks/X.py ...``), or None."""
        return self.words[1] if len(self.words) > 1 and self.words[0] == "python" and self.words[1] in SCRIPTS else None

    def not_run(self) -> Optional[str]:
        """Why the test does not run it (:data:`NOT_RUN`), or None."""
        return next((why for pattern, why in NOT_RUN.items() if re.search(pattern, self.text)), None)


def _slug(heading: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", heading.lower()).strip("-")


def markdown_blocks(text: str, name: str) -> List[Block]:
    """The fenced blocks of markdown ``text`` of file ``name``, in order (``#`` lines inside a block
    are not headings)."""
    blocks: List[Block] = []
    heading, lang, lines, prose = "top", None, [], []
    seen: Dict[str, int] = {}
    for line in text.splitlines():
        if lang is None and line.startswith("```"):
            lang, lines = line[3:].strip(), []
        elif lang is not None and line.startswith("```"):
            seen[heading] = seen.get(heading, 0) + 1
            block_id = f"{name}#{heading}" + ("" if seen[heading] == 1 else f"-{seen[heading]}")
            blocks.append(Block(lang, block_id, "\n".join(lines) + "\n", "\n".join(prose)))
            lang, prose = None, []
        elif lang is not None:
            lines.append(line)
        else:
            prose.append(line)
            if line.startswith("#"):
                heading = _slug(line.lstrip("#"))
    return blocks


def shell_commands(block: Block) -> List[Command]:
    """The commands of a shell block, in order (see the module docstring for the syntax understood)."""
    lines = [line.strip() for line in block.code.replace("\\\n", " ").splitlines()]
    unrolled: List[str] = []
    while lines:
        line = lines.pop(0)
        loop = LOOP.fullmatch(line)
        if loop is None:
            unrolled.append(line)
            continue
        body, lines = lines[: lines.index("done")], lines[lines.index("done") + 1 :]
        variable = re.compile(rf"\$(?:{loop[1]}\b|\{{{loop[1]}\}})")
        unrolled += [variable.sub(value, b) for value in loop[2].split() for b in body]
    commands: List[Command] = []
    for line in unrolled:
        line = ANSI_C_STRING.sub(lambda m: shlex.quote(codecs.decode(m[1], "unicode_escape")), line)
        words = shlex.split(line, comments=True)
        while words:
            part, words = (words[: words.index("&&")], words[words.index("&&") + 1 :]) if "&&" in words else (words, [])
            env: List[Tuple[str, str]] = []
            while ENV_ASSIGNMENT.fullmatch(part[0]):
                env.append(ENV_ASSIGNMENT.fullmatch(part.pop(0)).groups())
            commands.append(Command(f"{block.id}:{len(commands) + 1}", " ".join(part), tuple(env), tuple(part)))
    return commands


BLOCKS = [b for doc in DOCS for b in markdown_blocks(doc.read_text(), doc.relative_to(ROOT).as_posix())]
PYTHON = [b for b in BLOCKS if b.lang == "python"]
SHELL_BLOCKS = [b for b in BLOCKS if b.lang in SHELL]
COMMANDS = [c for b in SHELL_BLOCKS for c in shell_commands(b)]
NOT_RUN_CLI = [c for c in COMMANDS if c.not_run() and c.fastweights_argv() is not None]


def scaled(argv: List[str], cache: Path) -> List[str]:
    """``fastweights`` arguments ``argv`` with :data:`SCALED`'s options of its (sub-)command appended."""
    command = " ".join(argv[:2]) if argv[0] == "bench" else argv[0]
    assert command in SCALED, f"no scaled-down options for `fastweights {command}`: add them to SCALED"
    return argv + [word.format(cache=cache) for word in SCALED[command]]


def run_fastweights(argv: List[str], env: Tuple[Tuple[str, str], ...], cache: Path) -> None:
    """Run ``fastweights ARGV`` scaled down, in this process, in the current directory, with the
    environment variables ``env``; it must succeed."""
    argv = scaled(argv, cache)
    for word in argv:
        if word in INPUTS and not Path(word).exists():
            Path(word).write_text(INPUTS[word]())
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env:
            mp.setenv(name, value)
        try:
            status = main(argv)
        except SystemExit as e:  # argparse rejected the command line
            status = e.code
    assert status == 0, f"`fastweights {shlex.join(argv)}` exited with status {status} (its output is above)"


def run_script(command: Command) -> None:
    """Run ``python benchmarks/SCRIPT ARGS`` with :data:`SCRIPTS`' options appended, in a fresh process
    in the current directory (given an empty ``docs/``, as the repository's root has); it must succeed."""
    Path("docs").mkdir(exist_ok=True)
    argv = [sys.executable, str(ROOT / command.words[1]), *command.words[2:], *SCRIPTS[command.words[1]]]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **dict(command.env)}, timeout=300)
    assert done.returncode == 0, f"`{shlex.join(argv)}` exited with status {done.returncode}:\n{done.stderr[-3000:]}"


def parse(command: Command) -> argparse.Namespace:
    """A ``fastweights`` command's arguments as the CLI parses them; the test fails if they do not parse."""
    with contextlib.suppress(SystemExit):  # argparse's error, printed above
        return build_parser().parse_args(command.fastweights_argv())
    pytest.fail(f"{command.id}: `{command.text}` does not parse (see the usage message above)")


def train_command(out: str) -> Command:
    """The docs' ``fastweights train`` command that creates run directory ``out``."""
    found = [
        c
        for c in COMMANDS
        if c.words[:2] == ("fastweights", "train")
        and not c.not_run()
        and "--resume" not in c.words
        and str(parse(c).out) == out
    ]
    assert found, f"the docs read {out} but no `fastweights train ... --out {out}` of theirs creates it"
    return found[0]


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory for the module: the token-id cache (``$FASTWEIGHTS_CACHE``) and the compiled
    kernels (``{cache}`` of :data:`SCALED`). No option scales down what ``bench ops`` measures first
    (the 4096^3 matmul peak, ~25 s on two cores) or its fresh process per cell for the peak memory:
    both are replaced by constants, as tests/bench/test_bench_ops.py does."""
    path = tmp_path_factory.mktemp("docs-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTWEIGHTS_CACHE", str(path / "corpora"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(bench_ops, "matmul_peak", lambda dtype="float32", device="cpu": 100.0)
        mp.setattr(bench_ops, "peak_memory_mb", lambda cell, cfg: 1.0)
        yield path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Callable[[str], Path]:
    """``trained_run("runs/NAME")``: that run directory, trained once by the docs' command
    (:func:`train_command`), scaled down."""
    base = tmp_path_factory.mktemp("docs-runs")
    made: Dict[str, Path] = {}

    def get(out: str) -> Path:
        if out not in made:
            command = train_command(out)
            with pytest.MonkeyPatch.context() as mp:
                mp.chdir(base)
                run_fastweights(list(command.words[1:]), command.env, cache)
            made[out] = base / out
        return made[out]

    return get


def shows(shown: str, printed: str, remarks: bool) -> bool:
    """Whether docs text ``shown`` shows ``printed``: the same, with ``...`` standing for any text
    and, with ``remarks``, possibly followed by a remark after ``": "`` or in ``" (...)"``."""
    ends = [len(shown)] + ([m.start() for m in re.finditer(r": | \(", shown)] if remarks else [])
    return any(re.fullmatch(".*".join(map(re.escape, shown[:end].split("..."))), printed, re.S) for end in ends)


def shown_outputs(code: str) -> Tuple[Dict[int, str], List[str]]:
    """What a Python block shows it prints: ``{line: trailing comment}`` of the lines with code and a
    comment, and the comment lines after the last line of code."""
    inline: Dict[int, str] = {}
    after: List[Tuple[int, str]] = []
    code_lines: Set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(code).readline):
        if tok.type == tokenize.COMMENT:
            text = re.sub(r"^# ?", "", tok.string)
            if tok.start[0] in code_lines:
                inline[tok.start[0]] = text
            else:
                after.append((tok.start[0], text))
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    last = max(code_lines)
    return inline, [text for line, text in after if line > last]


def inline_commands(prose: str) -> List[List[str]]:
    """The words of each inline code span of markdown ``prose`` (a span wrapped over lines is one)."""
    commands: List[List[str]] = []
    for span in INLINE_CODE.findall(prose):
        with contextlib.suppress(ValueError):  # not shell words: an unmatched quote
            commands.append(shlex.split(span))
    return commands


def run_python(block: Block) -> List[Tuple[ast.stmt, str]]:
    """Run a Python block one top-level statement at a time: each statement with what it printed."""
    name = f"{ROOT / block.id.split('#')[0]} ({block.id})"
    namespace = {"__name__": "__main__"}
    printed: List[Tuple[ast.stmt, str]] = []
    for statement in ast.parse(block.code).body:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(ast.Module([statement], type_ignores=[]), name, "exec"), namespace)
        printed.append((statement, out.getvalue()))
    return printed


def _is_print(statement: ast.stmt) -> bool:
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Call)
        and isinstance(statement.value.func, ast.Name)
        and statement.value.func.id == "print"
    )


def test_the_docs_have_examples() -> None:
    assert {b.id.split("#")[0] for b in BLOCKS} >= {"README.md", "docs/ops.md", "docs/kernels.md"}
    assert len({b.id for b in BLOCKS}) == len(BLOCKS)
    assert any(c.words[:2] == ("fastweights", "train") for c in COMMANDS) and PYTHON


def test_every_block_is_run_or_says_why_not() -> None:
    unknown = [f"{b.id} (```{b.lang})" for b in BLOCKS if b.lang not in {"python", *SHELL, *NOT_EXECUTED}]
    assert not unknown, f"blocks of no known language: mark them python or bash, or add to NOT_EXECUTED: {unknown}"


def test_the_tables_are_current() -> None:
    """Every entry of :data:`NOT_RUN` matches a command and every block of :data:`EXAMPLE_OUTPUTS` is
    a Python block: an entry the docs no longer need goes."""
    unused = [p for p in NOT_RUN if not any(re.search(p, c.text) for c in COMMANDS)]
    assert not unused, f"NOT_RUN entries that match no command of the docs: {unused}"
    assert set(EXAMPLE_OUTPUTS) <= {b.id for b in PYTHON}, sorted(set(EXAMPLE_OUTPUTS) - {b.id for b in PYTHON})


@pytest.mark.parametrize("block", PYTHON, ids=[b.id for b in PYTHON])
def test_python_example(
    block: Block,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    trained_run: Callable[[str], Path],
    scratch_registries: None,  # what an example registers (a rule, a feature map, a task) is undone
) -> None:
    for module in sorted(set(IMPORT.findall(block.code))):
        pytest.importorskip(module)  # an optional extra (transformers) may be absent
    for out in sorted(set(RUN_DIR.findall(block.code))):
        assert list(train_command(out).words) in inline_commands(block.above), (
            f"{block.id} reads {out}: say right above it which command makes it, `{train_command(out).text}`"
        )
        shutil.copytree(trained_run(out), tmp_path / out)
    monkeypatch.chdir(tmp_path)
    printed = run_python(block)

    inline, after = shown_outputs(block.code)
    for statement, text in printed:
        if _is_print(statement) and statement.end_lineno in inline:
            shown = inline[statement.end_lineno]
            assert shows(shown, text.removesuffix("\n"), remarks=True), (
                f"{block.id}, line {statement.end_lineno}: shows {shown!r}, printed {text!r}"
            )
    everything = "".join(text for _, text in printed)
    if after and EXAMPLE.match(after[0]):
        assert block.id in EXAMPLE_OUTPUTS, f"{block.id}: only EXAMPLE_OUTPUTS' blocks may show an example"
        assert everything.split("\n")[0] == after[1], (block.id, after[1], everything)  # the prompt
    else:
        assert block.id not in EXAMPLE_OUTPUTS, f"{block.id} shows no example output (`# prints, for example ...:`)"
        if after:
            assert shows("\n".join(after), everything.removesuffix("\n"), remarks=False), (after, everything)


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=[b.id for b in SHELL_BLOCKS])
def test_shell_example(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path, trained_run: Callable[[str], Path]
) -> None:
    commands = [c for c in shell_commands(block) if not c.not_run()]
    if not commands:
        pytest.skip("; ".join(f"`{c.text}`: {c.not_run()}" for c in shell_commands(block)))
    monkeypatch.chdir(tmp_path)
    for command in commands:
        if command.script():
            run_script(command)
            continue
        argv = command.fastweights_argv()
        assert argv is not None, f"{command.id}: `{command.text}` is neither run by this test nor listed in NOT_RUN"
        checkpoint = getattr(parse(command), "checkpoint", None)
        if checkpoint and not Path(checkpoint).exists():
            shutil.copytree(trained_run(str(checkpoint)), checkpoint)
        run_fastweights(argv, command.env, cache)


@pytest.mark.parametrize("command", NOT_RUN_CLI, ids=[c.id for c in NOT_RUN_CLI])
def test_command_not_run_parses(command: Command) -> None:
    parse(command)
