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


def test_rules_lists_every_rule_with_its_backends_and_the_grammar(capsys: pytest.CaptureFixture) -> None:
    from fastweights.ops import get_rule, list_backends, list_rules

    assert main(["rules"]) == 0
    out = capsys.readouterr().out
    for rule in list_rules():
        assert f"{rule}: {get_rule(rule).summary}" in out
        assert all(f"    {b.name} " in out for b in list_backends(rule, available=False))
    assert "input beta: [B, T, H] rate (None: 1), in [0, 2] (layers learn it)" in out
    assert "deltaproduct-<n>" in out and "+neg" in out
