"""The capacity sweep: grids of (setting, method, S) cells, named presets, resumable results.

Each finished cell is appended to ``results.json`` and ``results.csv`` in the output folder at
once, so an interrupted sweep restarted with the same folder skips the cells already there (a
cell is the same when its setting, method, S, queries, width d, seed and whole training rule,
:class:`~fastweights.experiments.capacity.CapacityTraining`, agree: a preset with another window or patience
trains its own cells). A sweep over several seeds trains and stores every cell once per seed, so
a rerun with more seeds trains only the new ones.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..cli.arguments import check_output_path
from .capacity import CapacityTraining, CellResult, parse_method, train_cell
from .retrieval import check_setting, queryable

Queries = Union[int, str]
CellKey = Tuple[Union[int, float, str], ...]
#: A cell trained with one seed: ``(setting, method, S, queries, seed)``.
Cell = Tuple[int, str, int, int, int]
CSV_NAME, JSON_NAME = "results.csv", "results.json"
FIELDS = [f.name for f in dataclasses.fields(CellResult)]
#: What identifies a cell's result: the cell and the training rule that produced it.
KEY_FIELDS = ("setting", "method", "n_keys", "queries", "d", "seed") + tuple(
    f.name for f in dataclasses.fields(CapacityTraining)
)
#: The largest S: a sequence holds up to 2S pairs, each with a one-hot value of width S (the paper goes to 600).
MAX_KEYS = 2048


@dataclass(frozen=True)
class Grid:
    """The methods and key counts S trained in one setting."""

    setting: int
    methods: Tuple[str, ...]
    keys: Tuple[int, ...]

    def __post_init__(self) -> None:
        check_setting(self.setting)
        if not self.methods:
            raise ValueError("methods must name at least one method")
        for name in self.methods:
            parse_method(name)
        if not self.keys or any(not isinstance(s, int) or not 2 <= s <= MAX_KEYS for s in self.keys):
            raise ValueError(f"keys (S values) must be ints in [2, {MAX_KEYS}], got {list(self.keys)}")


@dataclass(frozen=True)
class SweepConfig:
    """A whole sweep: its grids, the training rule, the model width and the seeds.

    ``queries``: keys queried per sequence, an int (at most the queryable positions; 1 is the
    paper's task) or ``'all'`` (every queryable pair: T queries, S // 4 in setting 3).
    ``seeds``: how many seeds train each cell: ``seed``, ``seed + 1``, ..., ``seed + seeds - 1``.
    """

    grids: Tuple[Grid, ...]
    train: CapacityTraining = CapacityTraining()
    queries: Queries = 1
    d: int = 64
    seed: int = 0
    seeds: int = 1

    def __post_init__(self) -> None:
        if not self.grids:
            raise ValueError("a sweep needs at least one grid")
        if not (
            self.queries == "all"
            or (isinstance(self.queries, int) and not isinstance(self.queries, bool) and self.queries >= 1)
        ):
            raise ValueError(f"queries must be a positive int or 'all', got {self.queries!r}")
        if not isinstance(self.d, int) or self.d < 1:
            raise ValueError(f"d must be a positive int, got {self.d!r}")
        if not isinstance(self.seeds, int) or isinstance(self.seeds, bool) or self.seeds < 1:
            raise ValueError(f"seeds must be a positive int, got {self.seeds!r}")

    def cells(self) -> Iterator[Cell]:
        """``(setting, method, S, queries, seed)`` of every cell and seed: seed by seed (the cells of
        one seed form a whole sweep), then grid by grid, method by method."""
        for seed in range(self.seed, self.seed + self.seeds):
            for grid in self.grids:
                for method in grid.methods:
                    for s in grid.keys:
                        w = queryable(grid.setting, s)
                        yield grid.setting, method, s, w if self.queries == "all" else min(self.queries, w), seed

    def cell_key(self, setting: int, method: str, n_keys: int, queries: int, seed: int) -> CellKey:
        """What identifies a cell's result in the results files (the values of :data:`KEY_FIELDS`)."""
        return (setting, method, n_keys, queries, self.d, seed) + dataclasses.astuple(self.train)


def _key(row: CellResult) -> CellKey:
    return tuple(getattr(row, name) for name in KEY_FIELDS)


# ---------------------------------------------------------------------------------- presets
def quick() -> SweepConfig:
    """Both findings in minutes on a laptop CPU: the paper's task scaled down to width d = 16.

    Setting 1: Linear (d_dot 16), DPFP-1 (32) and DPFP-2 (64) at S = 8..48: the S at which each
    fails grows with its d_dot (in each of seeds 0-2 Linear fails from S = 16, DPFP-1 from 24 and
    DPFP-2 at 48); softmax, whose memory grows with the sequence, solves every S. Setting 2 at
    S = 8, 16: with repeated keys the sum rule stays near 0.25 while the delta rule solves it
    (Linear + delta at S = 8; at 16 its smaller memory leaves 0.003-0.03).
    Every stored key is queried (multi-query), which makes few steps enough for a clear estimate.
    """
    return SweepConfig(
        grids=(
            Grid(1, ("linear", "dpfp-1", "dpfp-2", "softmax"), (8, 16, 24, 32, 48)),
            Grid(2, ("linear", "dpfp-2", "linear+delta", "dpfp-2+delta"), (8, 16)),
        ),
        train=CapacityTraining(max_steps=1500, window=50, patience=12),
        queries="all",
        d=16,
    )


def paper_setting1() -> SweepConfig:
    """The paper's setting 1 grid (d = 64, S = 20..600 step 20, one query, long training)."""
    return SweepConfig(
        grids=(
            Grid(
                1,
                ("softmax", "linear", "favor-64", "favor-128", "favor-512", "dpfp-1", "dpfp-2", "dpfp-3"),
                tuple(range(20, 601, 20)),
            ),
        ),
        train=CapacityTraining(max_steps=50000, window=100, patience=20),
    )


def paper_setting2() -> SweepConfig:
    """The paper's setting 2 grid (d = 64, S = 20..200 step 20, one query, long training)."""
    return SweepConfig(
        grids=(
            Grid(
                2,
                ("linear", "favor-64", "dpfp-2", "linear+delta", "favor-64+delta", "dpfp-2+delta"),
                tuple(range(20, 201, 20)),
            ),
        ),
        train=CapacityTraining(max_steps=50000, window=100, patience=20),
    )


def family() -> SweepConfig:
    """The FWP family side by side at the quick preset's scale (d = 16): overwriting (setting 2,
    S = 8, 16) and forgetting (setting 3, S = 32, 64: twice as many keys as the linear map's
    d_dot = 16 pass by, only the last S / 4 pairs are asked) for the sum, delta (rate in [0, 1] and in
    [0, 2]), gated delta, channel-gated delta and general FWP (tanh, norm cap) rules and the Recurrent
    Delta Net."""
    methods = (
        "linear",
        "linear+delta",
        "linear+delta+neg",
        "linear+gated_delta",
        "linear+channel_gated_delta",
        "linear+fwp-tanh",
        "linear+fwp-normcap",
        "rdn",
    )
    return SweepConfig(
        grids=(Grid(2, methods, (8, 16)), Grid(3, methods, (32, 64))),
        train=CapacityTraining(max_steps=1500, window=50, patience=12),
        queries="all",
        d=16,
    )


PRESETS: Dict[str, Callable[[], SweepConfig]] = {
    "quick": quick,
    "family": family,
    "paper-setting1": paper_setting1,
    "paper-setting2": paper_setting2,
}


def get_sweep_preset(name: str) -> SweepConfig:
    """The preset called ``name`` (see :data:`PRESETS`)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]()


def parse_keys(text: str) -> Tuple[int, ...]:
    """``'20:600:20'`` (start:stop:step, stop included) or ``'8,16,32'`` -> a tuple of S values in
    ``[2, MAX_KEYS]`` (checked before a range is expanded)."""
    try:
        if ":" in text:
            start, stop, step = (int(p) for p in text.split(":"))
            if step < 1 or stop < start:
                raise ValueError
            smallest, largest = start, stop
        else:
            keys = tuple(int(p) for p in text.split(",") if p.strip())
            smallest, largest = min(keys), max(keys)
    except ValueError:
        raise ValueError(
            f"keys must be START:STOP:STEP (e.g. 20:600:20) or a comma list (e.g. 8,16,32), got {text!r}"
        ) from None
    if smallest < 2:
        raise ValueError(f"keys must give S values >= 2, got {text!r}")
    if largest > MAX_KEYS:
        raise ValueError(
            f"keys must give S values <= {MAX_KEYS} (a sequence holds up to 2S pairs with one-hot values "
            f"of width S), got {text!r}"
        )
    return tuple(range(start, stop + 1, step)) if ":" in text else keys


# ---------------------------------------------------------------------------------- results files
def load_results(out: Union[str, Path]) -> List[CellResult]:
    """The cells stored in ``out/results.json`` (empty if there is none yet)."""
    path = Path(out) / JSON_NAME
    if not path.exists():
        return []
    try:
        rows = json.loads(path.read_text())["cells"]
        missing = sorted({name for row in rows for name in FIELDS if name not in row}, key=FIELDS.index)
        if missing:
            raise ValueError(f"its cells lack {', '.join(missing)}: written by an older version")
        return [CellResult(**row) for row in rows]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a results file of this experiment ({e}); use another --out") from None


def save_results(out: Union[str, Path], rows: Sequence[CellResult]) -> None:
    """Write ``results.json`` and ``results.csv`` (each replaced atomically)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = [dataclasses.asdict(r) for r in rows]
    _replace(out / JSON_NAME, lambda f: json.dump({"cells": records}, f, indent=1))

    def write_csv(f) -> None:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(records)

    _replace(out / CSV_NAME, write_csv)


def _replace(path: Path, write: Callable) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", newline="") as f:
        write(f)
    os.replace(tmp, path)


def run_sweep(
    config: SweepConfig,
    out: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    on_start: Optional[Callable[[int, int, Cell], None]] = None,
    on_step: Optional[Callable[[int, float], None]] = None,
    on_result: Optional[Callable[[int, int, CellResult, bool], None]] = None,
) -> List[CellResult]:
    """Train every (cell, seed) of ``config`` not yet in ``out``; return their results in the order of
    :meth:`SweepConfig.cells`.

    Callbacks: ``on_start(i, n, (setting, method, S, queries, seed))`` before a cell is trained,
    ``on_step(step, loss)`` after every training step (see :func:`train_cell`) and
    ``on_result(i, n, result, skipped)`` once a cell is trained or found done before.
    """
    check_output_path(out, "--out", folder=True)  # before any cell is trained, not at its first write
    rows = load_results(out)
    done = {_key(r): r for r in rows}
    cells = list(config.cells())
    results = []
    for i, cell in enumerate(cells):
        setting, method, n_keys, queries, seed = cell
        result = done.get(config.cell_key(*cell))
        skipped = result is not None
        if not skipped:
            if on_start is not None:
                on_start(i, len(cells), cell)
            result = train_cell(
                method,
                setting,
                n_keys,
                queries=queries,
                d=config.d,
                seed=seed,
                device=device,
                config=config.train,
                on_step=on_step,
            )
            rows.append(result)
            done[_key(result)] = result
            save_results(out, rows)
        if on_result is not None:
            on_result(i, len(cells), result, skipped)
        results.append(result)
    return results
