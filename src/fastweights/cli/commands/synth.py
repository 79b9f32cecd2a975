"""Train rules on a synthetic task and test them past their training: state tracking and recall.

parity: the parity of a bit string (trained up to length 16, tested up to 128 with --preset
quick): the delta rule solves it at any length only when its rate may reach 2 ('delta+neg',
negative eigenvalues), and stays at chance with a rate in [0, 1]. modular: a running sum of digits
mod 5, which needs rotations: DeltaProduct ('deltaproduct-<n>+neg', n updates per token) does
better with more updates. mqar: multi-query associative recall as the number of key-value
pairs grows past the state's size. With no --rules a task runs the rules that show its finding.
Each rule trains a small language model (no positional embedding) with --seeds seeds and reports
the median accuracy by test size (chance: 1/2, 1/5, 1/16). Writes results.json (one object per
rule: task, train length, accuracy per test size), results.md (the table) and results.png to
--out. --preset quick runs in minutes on a CPU; --preset full is for a GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from ...experiments.synthetic import (
    RuleResult,
    format_table,
    get_synth_preset,
    get_task,
    list_tasks,
    plot_results,
    run_task,
)
from ...files.atomic import atomic_write_text, remove_temporaries
from ...files.runlock import run_lock
from ...layers.spec import describe_attentions, parse_attention
from ..arguments import at_least, check_device, check_output_path

RESULT_FILES = ("results.json", "results.md", "results.png")
EXAMPLES = """\
Examples:
  fastweights synth --task parity --out runs/parity                 # delta vs delta+neg, about 1 minute
  fastweights synth --task mqar --rules linear,delta --seeds 3 --out runs/mqar
  fastweights synth --task modular --rules delta+neg --steps 2000 --out runs/modular
"""


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", required=True, choices=list_tasks(), help="the task")
    p.add_argument(
        "--rules",
        metavar="A,B,...",
        help="attention variants to compare, comma-separated (default: the task's own; "
        "names: see fastweights train --help), e.g. delta,delta+neg",
    )
    p.add_argument(
        "--preset", default="quick", choices=("quick", "full"), help="sizes, steps and model (default: quick)"
    )
    p.add_argument(
        "--steps", type=at_least(1), metavar="N", help="training steps per rule and seed (default: the preset's)"
    )
    p.add_argument(
        "--seeds",
        type=at_least(1),
        default=1,
        metavar="N",
        help="seeds 0..N-1 per rule; the table shows the median and range (default: 1)",
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--out", required=True, help="output folder")
    p.epilog = EXAMPLES


def main(args: argparse.Namespace) -> int:
    task = get_task(args.task)
    rules = [r for r in args.rules.split(",") if r] if args.rules else list(task.rules)
    for rule in rules:
        try:
            parse_attention(rule)
        except ValueError as e:
            raise ValueError(f"--rules: {e}") from None
    if args.rules is not None and not rules:
        raise ValueError(f"--rules names no attention; expected {describe_attentions()}")
    preset = get_synth_preset(args.task, args.preset)
    if args.steps is not None:
        preset = dataclasses.replace(preset, steps=args.steps)
    device = check_device(args.device)
    check_output_path(args.out, "--out", folder=True)
    out = Path(args.out)
    with run_lock(out, "fastweights synth"):
        remove_temporaries(out, RESULT_FILES)
        print(
            f"synth {task.name} ({task.summary}): rules {', '.join(rules)}; preset {args.preset}, "
            f"{preset.steps} steps x {args.seeds} seed(s) per rule, trained on {task.size_name} "
            f"{preset.train_sizes[0]}-{preset.train_sizes[1]}, tested at {', '.join(map(str, preset.test_sizes))}; "
            f"device {device}; results in {out}/"
        )
        done: list[RuleResult] = []
        start = time.perf_counter()

        def save(result: RuleResult) -> None:
            done.append(result)
            atomic_write_text(out / "results.json", json.dumps([r.to_dict() for r in done], indent=1) + "\n")
            scores = ", ".join(f"{size} {acc:.3f}" for size, acc in result.accuracy.items())
            print(f"{result.rule}: accuracy by {task.size_name}: {scores} ({result.seconds:.0f} s)")

        run_task(args.task, rules, seeds=args.seeds, device=str(device), preset=preset, on_result=save)
        table = format_table(done)
        atomic_write_text(out / "results.md", "\n".join(table) + "\n")
        plot_results(done, out / "results.png", f"{task.name}: accuracy by test {task.size_name}")
        print("\n" + "\n".join(table))
        seconds = time.perf_counter() - start
        print(f"\nwrote {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'} ({seconds:.0f} s)")
    return 0
