"""The README's capacity tables: the quick preset trained with 3 seeds, median (min-max) per cell.

Runs ``fastweights capacity --seeds 3 --threads 1 --out OUT`` in-process (resumable: a rerun with
the same ``--out`` trains only the cells and seeds not yet there), then writes the markdown tables
that the README's "Capacity experiment" section quotes, each cell's median final loss with its
min-max range over the seeds, with the command and the wall and CPU time of this run, to
``OUT/README-tables.md``, and prints them. ``--plot PATH`` saves the plot there too (the README's
is ``docs/capacity.png``). Any other option goes to ``fastweights capacity`` as it is (e.g.
``--keys 4 --max-steps 5`` for a trial in seconds)::

    python benchmarks/capacity_readme.py --out runs/capacity-readme --plot docs/capacity.png  # ~5 min of CPU time
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import List, Optional, Tuple

from fastweights.cli import build_parser
from fastweights.cli import main as cli_main
from fastweights.cli.commands.capacity import build_config
from fastweights.experiments.capacity_report import format_table, plot_results
from fastweights.experiments.capacity_sweep import run_sweep


def parse_args(argv: Optional[List[str]] = None) -> Tuple[argparse.Namespace, List[str]]:
    """This script's options, and the others (for ``fastweights capacity``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/capacity-readme", help="sweep folder (default: runs/capacity-readme)")
    p.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds 0..N-1 per cell (default: 3)")
    p.add_argument("--threads", type=int, default=1, metavar="N", help="CPU threads for torch (default: 1)")
    p.add_argument("--plot", metavar="PATH", help="also save the plot here, e.g. docs/capacity.png")
    args, capacity_options = p.parse_known_args(argv)
    if args.plot and not Path(args.plot).resolve().parent.is_dir():
        p.error(f"--plot {args.plot}: its folder does not exist")  # before the sweep, not after it
    return args, capacity_options


def main(argv: Optional[List[str]] = None) -> int:
    args, capacity_options = parse_args(argv)
    command = [
        "capacity",
        "--seeds",
        str(args.seeds),
        "--threads",
        str(args.threads),
        "--out",
        args.out,
        *capacity_options,
    ]
    wall, cpu = time.perf_counter(), time.process_time()
    status = cli_main(command)
    if status:
        return status
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rows = run_sweep(build_config(build_parser().parse_args(command)), args.out)  # all done: the stored cells
    if args.plot:
        plot_results(rows, args.plot)
    this = shlex.join(["python", "benchmarks/capacity_readme.py", *(sys.argv[1:] if argv is None else argv)])
    text = (
        f"Final loss of `fastweights {shlex.join(command)}` written by `{this}`: "
        f"{wall:.0f} s wall, {cpu:.0f} s of CPU time this run; the cells' training took "
        f"{sum(r.seconds for r in rows):.0f} s in all.\n\n{format_table(rows)}\n"
    )
    path = Path(args.out) / "README-tables.md"
    path.write_text(text)
    print(f"\n{text}\nwrote {path}" + (f" and {args.plot}" if args.plot else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
