"""Run the paper's associative-retrieval capacity experiment (section 6.1).

Trains a one-layer retrieval model per (method, S) cell and reports the final loss against the
number of stored keys S: a memory fails once S passes its key dimension d_dot (setting 1), and
only the delta rule recovers when keys repeat and must be overwritten (setting 2); setting 3 asks
only the last S/4 pairs, so a memory that forgets can win. With no arguments it runs the quick
preset (both findings, width d = 16, minutes on a CPU); --preset family compares the update rules
(sum, delta, gated delta, general FWP, Recurrent Delta Net) in settings 2 and 3; --preset paper-setting1|paper-setting2
runs the paper's full grids (d = 64). --seeds N trains every cell with N seeds (--seed, --seed + 1,
...) and reports each cell's median final loss with its min-max range. Writes results.csv,
results.json (a row per cell and seed) and capacity.png to --out; a sweep restarted with the same
--out skips finished cells.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch
from tqdm import tqdm

from ...experiments.capacity import METHOD_HELP
from ...experiments.capacity_report import format_table, plot_results
from ...experiments.capacity_sweep import (
    PRESETS,
    Grid,
    SweepConfig,
    get_sweep_preset,
    load_results,
    parse_keys,
    run_sweep,
)
from ...experiments.retrieval import SETTINGS
from ...files.atomic import remove_temporaries
from ...files.runlock import run_lock
from ..arguments import check_device, check_output_path

RESULT_FILES = ("results.csv", "results.json", "capacity.png")
EXAMPLES = """\
Examples:
  fastweights capacity --out runs/capacity             # quick preset, seed 0
  fastweights capacity --seeds 3 --out runs/capacity3  # quick preset, seeds 0, 1, 2: median (min-max)
  fastweights capacity --preset family --out runs/family
  fastweights capacity --setting 1 --methods linear dpfp-1 --keys 8,16,24 --seeds 3 --seed 10 --out runs/s1
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="grid to run (default: quick)")
    p.add_argument("--setting", type=int, choices=list(SETTINGS), help="run only this setting of the preset")
    p.add_argument("--methods", nargs="+", metavar="METHOD", help=f"methods to train ({METHOD_HELP})")
    p.add_argument("--keys", metavar="START:STOP:STEP|S,S,...", help="S values, e.g. 20:600:20 or 8,16,32")
    p.add_argument("--queries", metavar="N|all", help="keys queried per sequence (default: the preset's)")
    p.add_argument("--max-steps", type=int, metavar="N", help="step cap per cell (default: the preset's)")
    p.add_argument("--d", type=int, metavar="N", help="model width d (default: the preset's; 64 in the paper)")
    p.add_argument("--seed", type=int, default=0, help="random seed, the first of --seeds (default: 0)")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="N",
        help="train every cell with N seeds, --seed to --seed + N - 1, and report the median final "
        "loss with its min-max range (default: 1)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--out", default="runs/capacity", help="output folder (default: runs/capacity)")
    p.epilog = EXAMPLES


def build_config(args: argparse.Namespace) -> SweepConfig:
    """The preset of ``args`` with the command-line overrides applied (``ValueError`` if invalid)."""
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    config = get_sweep_preset(args.preset)
    grids = config.grids
    if args.setting is not None:
        grids = tuple(g for g in grids if g.setting == args.setting)
        if not grids:
            raise ValueError(f"--setting {args.setting}: preset {args.preset!r} has no such setting")
    methods = tuple(m for arg in args.methods for m in arg.split(",") if m) if args.methods else None
    keys = parse_keys(args.keys) if args.keys is not None else None
    grids = tuple(Grid(g.setting, methods or g.methods, keys or g.keys) for g in grids)
    train = config.train
    if args.max_steps is not None:
        train = dataclasses.replace(train, max_steps=args.max_steps)
    queries = config.queries
    if args.queries is not None:
        if args.queries != "all" and not args.queries.isdigit():
            raise ValueError(f"--queries must be a positive int or 'all', got {args.queries!r}")
        queries = args.queries if args.queries == "all" else int(args.queries)
    return SweepConfig(grids, train, queries, args.d if args.d is not None else config.d, args.seed, args.seeds)


def main(args: argparse.Namespace) -> int:
    config = build_config(args)
    device = check_device(args.device)
    check_output_path(args.out, "--out", folder=True)
    load_results(args.out)  # results of another experiment there: refused before the progress bar
    with run_lock(Path(args.out), "fastweights capacity"):  # one sweep per --out: a second is refused at once
        remove_temporaries(args.out, RESULT_FILES)  # what a killed sweep left half-written
        return _run(config, device, args)


def _run(config: SweepConfig, device: torch.device, args: argparse.Namespace) -> int:
    out = Path(args.out)
    n_cells = len(list(config.cells())) // config.seeds
    seeds = f"seed {config.seed}" if config.seeds == 1 else f"seeds {config.seed}-{config.seed + config.seeds - 1}"
    print(
        f"capacity sweep: preset {args.preset}, {n_cells} cells x {seeds}, d = {config.d}, "
        f"queries = {config.queries}, max steps {config.train.max_steps}, device {device}, results in {out}/"
    )
    bar = tqdm(total=config.train.max_steps, unit="step", dynamic_ncols=True, leave=False)

    def on_start(i: int, n: int, cell) -> None:
        setting, method, n_keys, _, seed = cell
        bar.reset(total=config.train.max_steps)
        bar.set_description(f"[{i + 1}/{n}] setting {setting} {method} S={n_keys} seed {seed}")

    def on_result(i: int, n: int, r, skipped: bool) -> None:
        how = "done before, skipped" if skipped else f"{r.steps} steps ({r.stopped}), {r.seconds:.1f} s"
        tqdm.write(
            f"[{i + 1}/{n}] setting {r.setting} {r.method} S={r.n_keys} seed {r.seed}: loss {r.final_loss:.3g}, {how}"
        )

    def on_step(step: int, loss: float) -> None:
        bar.update(1)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    start = time.perf_counter()
    try:
        rows = run_sweep(config, out, device, on_start=on_start, on_step=on_step, on_result=on_result)
    finally:
        bar.close()
    print("\n" + format_table(rows))
    png = plot_results(rows, out / "capacity.png")
    trained = sum(r.seconds for r in rows)
    print(
        f"\nwrote {out / 'results.csv'}, {out / 'results.json'}, {png}  "
        f"({time.perf_counter() - start:.0f} s this run; {trained:.0f} s of training in these cells)"
    )
    return 0
