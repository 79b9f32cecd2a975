"""`fastweights capacity`: files written, resume after an interruption, the cells a rerun reuses, presets
(argument errors: tests/cli/test_cli_errors.py)."""

from __future__ import annotations

import csv
import json
import shlex

import pytest

from fastweights.cli import build_parser, main
from fastweights.experiments.capacity import CapacityTraining
from fastweights.experiments.capacity_report import format_loss
from fastweights.experiments.capacity_sweep import (
    Grid,
    SweepConfig,
    get_sweep_preset,
    load_results,
    parse_keys,
    run_sweep,
)
from fastweights.files.runlock import run_lock

TINY = ["--methods", "linear", "dpfp-1+delta", "--keys", "3,4", "--max-steps", "5", "--d", "4", "--queries", "2"]


def test_cli_writes_table_csv_json_and_png(tmp_path, capsys):
    assert main(["capacity", "--setting", "2", *TINY, "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    assert "| linear | 4 |" in stdout and "| dpfp-1+delta | 8 |" in stdout  # d_dot at d = 4
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["n_keys"]) for r in rows] == [
        ("linear", "3"),
        ("linear", "4"),
        ("dpfp-1+delta", "3"),
        ("dpfp-1+delta", "4"),
    ]
    for col in ("method", "feature_map", "rule", "d_dot", "n_keys", "final_loss", "steps", "seconds"):
        assert col in rows[0]
    assert rows[2]["feature_map"] == "dpfp" and rows[2]["rule"] == "delta" and rows[2]["queries"] == "2"
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert [c["final_loss"] for c in cells] == [float(r["final_loss"]) for r in rows]
    assert all(c["setting"] == 2 and c["steps"] == 5 for c in cells)
    assert (tmp_path / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupted_sweep_resumes_without_retraining(tmp_path):
    config = SweepConfig(
        (Grid(1, ("linear", "dpfp-1"), (3, 4)),), CapacityTraining(max_steps=4, eval_batches=1), queries=1, d=4
    )
    trained = []

    def interrupt_in_third_cell(i, n, cell):
        trained.append(cell)
        if len(trained) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path, on_start=interrupt_in_third_cell)
    first = load_results(tmp_path)
    assert [(r.method, r.n_keys) for r in first] == [("linear", 3), ("linear", 4)]  # finished cells are kept

    trained.clear()
    skipped = []
    rows = run_sweep(
        config,
        tmp_path,
        on_start=lambda i, n, cell: trained.append(cell[1:3]),
        on_result=lambda i, n, r, was_done: was_done and skipped.append((r.method, r.n_keys)),
    )
    assert skipped == [("linear", 3), ("linear", 4)]
    assert trained == [("dpfp-1", 3), ("dpfp-1", 4)]
    assert rows[:2] == first  # the stored results, untouched
    assert len(load_results(tmp_path)) == 4


def test_cli_rerun_skips_done_cells_and_adds_new_ones(tmp_path, capsys):
    base = ["capacity", "--setting", "1", "--methods", "linear", "--max-steps", "3", "--d", "4", "--out", str(tmp_path)]
    assert main([*base, "--keys", "3"]) == 0
    before = load_results(tmp_path)
    capsys.readouterr()
    assert main([*base, "--keys", "3,5"]) == 0
    out = capsys.readouterr()
    assert "S=3 seed 0: loss" in out.out and "done before, skipped" in out.out
    after = load_results(tmp_path)
    assert after[0] == before[0] and [r.n_keys for r in after] == [3, 5]


def test_a_cell_trained_under_another_training_rule_is_trained_again(tmp_path):
    """A cell's result is reused only under the same whole CapacityTraining (window, patience, ...), not
    just the same step cap: switching preset must not pick up cells trained under other settings."""
    grid = (Grid(1, ("linear",), (3,)),)
    trained = []
    for patience in (1, 2, 2):
        config = SweepConfig(
            grid, CapacityTraining(max_steps=4, window=2, patience=patience, eval_batches=1), queries=1, d=4
        )
        run_sweep(config, tmp_path, on_start=lambda i, n, cell: trained.append(patience))  # noqa: B023 (used within this iteration)
    assert trained == [1, 2]  # the third run found its cell done
    rows = load_results(tmp_path)
    assert [(r.patience, r.window, r.lr) for r in rows] == [(1, 2, 1e-3), (2, 2, 1e-3)]


def test_results_of_an_older_version_are_refused(tmp_path):
    """Rows without the training rule cannot be matched to a cell: a clear error, not a silent reuse."""
    config = SweepConfig((Grid(1, ("linear",), (3,)),), CapacityTraining(max_steps=2, eval_batches=1), queries=1, d=4)
    run_sweep(config, tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    for row in doc["cells"]:
        del row["window"], row["patience"]
    (tmp_path / "results.json").write_text(json.dumps(doc))
    with pytest.raises(
        ValueError,
        match="is not a results file of this experiment \\(its cells lack window, patience: "
        "written by an older version\\); use another --out",
    ):
        run_sweep(config, tmp_path)


def test_keys_and_presets():
    assert parse_keys("20:100:20") == (20, 40, 60, 80, 100)
    assert parse_keys("8,16") == (8, 16)
    s1, s2 = get_sweep_preset("paper-setting1"), get_sweep_preset("paper-setting2")
    assert s1.grids[0].keys == tuple(range(20, 601, 20)) and s1.d == 64 and s1.train.lr == 1e-3
    assert s2.grids[0].setting == 2 and "dpfp-2+delta" in s2.grids[0].methods
    quick = get_sweep_preset("quick")
    assert {g.setting for g in quick.grids} == {1, 2}
    assert any("+delta" in m for g in quick.grids for m in g.methods)


def test_a_second_sweep_on_the_same_out_is_refused_at_once(tmp_path, capsys):
    out = tmp_path / "out"
    with run_lock(out, "fastweights capacity"):
        assert main(["capacity", "--methods", "linear", "--keys", "4", "--max-steps", "5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastweights capacity: error: ") and "in use by pid" in err and "\n" not in err
    assert list(out.iterdir()) == []  # nothing trained, nothing written, and the lock gone


def test_seeds_train_a_row_per_seed_and_a_rerun_with_more_seeds_trains_only_the_new_ones(tmp_path, capsys):
    base = [
        "capacity",
        "--setting",
        "1",
        "--methods",
        "linear",
        "--keys",
        "3",
        "--max-steps",
        "3",
        "--d",
        "4",
        "--out",
        str(tmp_path),
    ]
    assert main([*base, "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    rows = load_results(tmp_path)
    assert [(r.method, r.n_keys, r.seed) for r in rows] == [("linear", 3, 0), ("linear", 3, 1)]
    assert rows[0].final_loss != rows[1].final_loss  # each row trained with its own seed
    assert "1 cells x seeds 0-1" in out and "median (min-max) over seeds 0, 1" in out
    assert f"| linear | 4 | {format_loss(rows)} |" in out

    assert main([*base, "--seeds", "3"]) == 0
    out = capsys.readouterr().out
    assert "S=3 seed 0: loss" in out and "S=3 seed 1: loss" in out and out.count("done before, skipped") == 2
    after = load_results(tmp_path)
    assert after[:2] == rows and [r.seed for r in after] == [0, 1, 2]
    assert f"| linear | 4 | {format_loss(after)} |" in out and "over seeds 0, 1, 2" in out


def test_seeds_below_one_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["capacity", "--seeds", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "fastweights capacity: error: --seeds must be >= 1, got 0"
    assert not out.exists()


def test_help_ends_with_examples_that_parse(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["capacity", "--help"])
    _, examples = capsys.readouterr().out.rstrip().split("\nExamples:\n")
    lines = examples.splitlines()
    assert 3 <= len(lines) <= 4 and any("--seeds 3" in line for line in lines)
    for line in lines:
        words = shlex.split(line, comments=True)
        assert words[:2] == ["fastweights", "capacity"]
        assert build_parser().parse_args(words[1:]).command == "capacity"  # an unknown option exits 2
