"""The synthetic tasks: their data, the registry, the parity finding on a reduced preset, and
``fastweights synth``."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fastweights.cli import main
from fastweights.experiments.synthetic import (
    IGNORE,
    MQAR_KEYS,
    MQAR_VALUES,
    SynthPreset,
    Task,
    get_synth_preset,
    get_task,
    list_tasks,
    register_task,
    run_task,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name,modulus", [("parity", 2), ("modular", 5)])
def test_running_sums_have_the_running_sum_as_targets(name: str, modulus: int) -> None:
    task = get_task(name)
    ids, targets = task.sample(8, 13, _gen(), True)  # [8, 13]
    assert ids.shape == targets.shape == (8, 13) and ids.max() < modulus
    for row, target in zip(ids.tolist(), targets.tolist()):
        assert target == [sum(row[: t + 1]) % modulus for t in range(13)]
    _, test_targets = task.sample(8, 13, _gen(), False)
    assert (test_targets[:, :-1] == IGNORE).all() and (test_targets[:, -1] == targets[:, -1]).all()


def test_mqar_asks_each_stored_key_once_and_its_target_is_its_value() -> None:
    task = get_task("mqar")
    ids, targets = task.sample(16, 10, _gen(), True)  # [16, 20]
    assert ids.shape == (16, 20) and ids.max() < task.vocab_size
    for row, target in zip(ids.tolist(), targets.tolist()):
        pairs, queries = row[:10], row[10:]
        stored = {p // MQAR_VALUES: p % MQAR_VALUES for p in pairs}
        assert len(stored) == 10  # distinct keys
        asked = [q - MQAR_KEYS * MQAR_VALUES for q in queries]
        assert sorted(asked) == sorted(stored)
        assert target[:10] == [IGNORE] * 10 and target[10:] == [stored[k] for k in asked]
    with pytest.raises(ValueError, match=f"mqar has {MQAR_KEYS} keys; {MQAR_KEYS + 1} pairs"):
        task.sample(1, MQAR_KEYS + 1, _gen(), True)


def test_a_task_is_one_registration_away(scratch_registries) -> None:
    def last_token(batch_size, size, generator, train):
        ids = torch.randint(3, (batch_size, size), generator=generator)
        targets = torch.full_like(ids, IGNORE)
        targets[:, -1] = ids[:, -1]
        return ids, targets

    register_task(Task("echo", "repeat the last token", 3, "length", 1 / 3, last_token, rules=("linear",)))
    assert "echo" in list_tasks()
    preset = SynthPreset((2, 4), (4, 8), steps=2, batch_size=4, d_model=8, n_heads=1, d_ff=8, eval_batches=1)
    (result,) = run_task("echo", preset=preset, progress=False)
    assert result.rule == "linear" and set(result.accuracy) == {4, 8} and result.chance == 1 / 3
    with pytest.raises(
        ValueError, match=r"unknown task 'nope'; expected one of \['echo', 'modular', 'mqar', 'parity'\]"
    ):
        get_task("nope")


def test_parity_needs_negative_eigenvalues() -> None:
    """The published finding on a reduced quick preset (300 steps, tested at 4x the training
    length): the delta rule with a rate in [0, 2] solves parity, with a rate in [0, 1] it stays
    near chance."""
    preset = dataclasses.replace(get_synth_preset("parity", "quick"), steps=300, test_sizes=(64,), eval_batches=2)
    plain, negative = run_task("parity", ["delta", "delta+neg"], preset=preset, progress=False)
    assert negative.accuracy[64] > 0.95, negative.accuracy
    assert plain.accuracy[64] < 0.75, plain.accuracy


def test_synth_writes_results_and_refuses_bad_rules(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["synth", "--task", "parity", "--steps", "3", "--out", str(out), "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["rule"] for r in results] == ["delta", "delta+neg"]
    assert all(r["task"] == "parity" and r["train_length"] == 16 for r in results)
    assert set(results[0]["accuracy"]) == {"16", "32", "64", "128"}
    assert (out / "results.png").stat().st_size > 0 and "| delta+neg |" in (out / "results.md").read_text()
    capsys.readouterr()
    assert main(["synth", "--task", "parity", "--rules", "delta,hebb", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastweights synth: error: --rules: unknown attention variant 'hebb'")
    assert not (tmp_path / "x").exists()
