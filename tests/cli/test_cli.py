"""The top-level CLI: every command is listed, `demo` agrees with itself, `bench ops` writes its table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastweights.cli import COMMANDS, build_parser, main


def test_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for name in ("capacity", "train", "eval", "generate", "bench", "demo"):
        assert name in COMMANDS and name in out


def test_no_command_prints_help(capsys: pytest.CaptureFixture) -> None:
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_an_error() -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["fly"])
    assert e.value.code == 2


@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_demo_parallel_equals_step_by_step(rule: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["demo", "--rule", rule, "--length", "70", "--d-model", "32", "--heads", "2"]) == 0
    out = capsys.readouterr().out
    assert "max |parallel - step by step|" in out and "whatever the length" in out


def test_bench_ops_writes_rows(tmp_path: Path) -> None:
    path = tmp_path / "ops.json"
    main(
        [
            "bench",
            "ops",
            "--rules",
            "delta",
            "--lengths",
            "100",
            "--heads",
            "2",
            "--dim",
            "12",
            "--repeat",
            "1",
            "--json",
            str(path),
        ]
    )
    result = json.loads(path.read_text())
    forms = {row["form"] for row in result["rows"] if row["rule"] == "delta"}
    assert {"naive", "chunk"} <= forms
    assert result["meta"]["matmul_peak_gflops"]
