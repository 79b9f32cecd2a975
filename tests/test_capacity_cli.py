"""`fastweights capacity`: files written, resume after an interruption, argument errors, presets."""

from __future__ import annotations

import csv
import json

import pytest

from fastweights.cli import main
from fastweights.tasks.capacity import TrainConfig
from fastweights.tasks.capacity_sweep import Grid, SweepConfig, get_preset, load_results, parse_keys, run_sweep

TINY = ["--methods", "linear", "dpfp-1+delta", "--keys", "3,4", "--max-steps", "5", "--d", "4", "--queries", "2"]


def test_cli_writes_table_csv_json_and_png(tmp_path, capsys):
    assert main(["capacity", "--setting", "2", *TINY, "--out", str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    assert "| linear | 4 |" in stdout and "| dpfp-1+delta | 8 |" in stdout  # d_dot at d = 4
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["n_keys"]) for r in rows] == [("linear", "3"), ("linear", "4"), ("dpfp-1+delta", "3"), ("dpfp-1+delta", "4")]
    for col in ("method", "feature_map", "rule", "d_dot", "n_keys", "final_loss", "steps", "seconds"):
        assert col in rows[0]
    assert rows[2]["feature_map"] == "dpfp" and rows[2]["rule"] == "delta" and rows[2]["queries"] == "2"
    cells = json.loads((tmp_path / "results.json").read_text())["cells"]
    assert [c["final_loss"] for c in cells] == [float(r["final_loss"]) for r in rows]
    assert all(c["setting"] == 2 and c["steps"] == 5 for c in cells)
    assert (tmp_path / "capacity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interrupted_sweep_resumes_without_retraining(tmp_path):
    config = SweepConfig((Grid(1, ("linear", "dpfp-1"), (3, 4)),), TrainConfig(max_steps=4, eval_batches=1), queries=1, d=4)
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
    rows = run_sweep(config, tmp_path, on_start=lambda i, n, cell: trained.append(cell[1:3]),
                     on_result=lambda i, n, r, was_done: was_done and skipped.append((r.method, r.n_keys)))
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
    assert "S=3: loss" in out.out and "done before, skipped" in out.out
    after = load_results(tmp_path)
    assert after[0] == before[0] and [r.n_keys for r in after] == [3, 5]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--methods", "dpfp-2+hebb"], "unknown method 'dpfp-2\\+hebb'; valid methods: softmax, linear"),
        (["--keys", "20:10:5"], "keys must be START:STOP:STEP"),
        (["--keys", "a,b"], "keys must be START:STOP:STEP"),
        (["--keys", "1,4"], "S values >= 2"),
        (["--queries", "some"], "--queries must be a positive int or 'all'"),
        (["--queries", "0"], "queries must be a positive int"),
        (["--max-steps", "0"], "max_steps must be a positive int"),
        (["--preset", "paper-setting1", "--setting", "2"], "preset 'paper-setting1' has no such setting"),
        (["--device", "nonsense"], "--device"),
        (["--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_bad_arguments_give_clear_errors(tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        main(["capacity", *args, "--out", str(tmp_path)])
    assert not (tmp_path / "results.json").exists()


def test_argparse_rejects_unknown_preset_and_setting(capsys):
    for args in (["--preset", "huge"], ["--setting", "4"]):
        with pytest.raises(SystemExit):
            main(["capacity", *args])
        assert "invalid choice" in capsys.readouterr().err


def test_results_of_another_experiment_are_not_overwritten(tmp_path):
    (tmp_path / "results.json").write_text('{"rows": []}')
    with pytest.raises(SystemExit, match="not a results file"):
        main(["capacity", *TINY, "--out", str(tmp_path)])


def test_keys_and_presets():
    assert parse_keys("20:100:20") == (20, 40, 60, 80, 100)
    assert parse_keys("8,16") == (8, 16)
    s1, s2 = get_preset("paper-setting1"), get_preset("paper-setting2")
    assert s1.grids[0].keys == tuple(range(20, 601, 20)) and s1.d == 64 and s1.train.lr == 1e-3
    assert s2.grids[0].setting == 2 and "dpfp-2+delta" in s2.grids[0].methods
    quick = get_preset("quick")
    assert {g.setting for g in quick.grids} == {1, 2}
    assert any("+delta" in m for g in quick.grids for m in g.methods)
