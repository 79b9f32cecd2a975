"""List the update rules: their equations, per-token inputs and bounds, and the backends of each.

One block per registered rule: its update and read-out, the per-token inputs besides q, k, v
(with their bounds and what the layers learn them with), its state, and every backend with what
it runs on; a backend whose optional package is missing is marked. Then the options an attention
name may add to a rule (see fastweights train --help for the whole grammar).

Examples:
  fastweights rules
  fastweights rules --rule gated_delta
"""

from __future__ import annotations

import argparse

from ...layers.spec import describe_attentions
from ...ops import get_rule, list_backends, list_rules


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", choices=list_rules(), help="only this rule")


def _backend_line(b) -> str:
    what = [", ".join(b.devices)]
    if b.one_token:
        what.append("one token (decoding)")
    if b.priority is not None:
        what.append(f"impl='auto' priority {b.priority}")
    if b.emulated:
        what.append("interpreter only here")
    what += [f"{name} <= {limit}" for name, limit in (("d_k", b.max_d_k), ("d_v", b.max_d_v)) if limit is not None]
    missing = "" if b.available() else f"  [needs {b.requires}]"
    return f"    {b.name:<12} {'; '.join(what)}{missing}"


def main(args: argparse.Namespace) -> int:
    for name in [args.rule] if args.rule else list_rules():
        spec = get_rule(name)
        print(f"{name}: {spec.summary}")
        for input_name, meaning in spec.inputs.items():
            bounds = spec.bounds.get(input_name)
            within = f", in [{bounds[0]:g}, {bounds[1]:g}]" if bounds else ""
            learned = (
                " (layers learn it)"
                if input_name in spec.learned or (input_name == "beta" and spec.learned_rate)
                else ""
            )
            print(f"  input {input_name}: {meaning}{within}{learned}")
        column = " (d_v + 1 with normalize=True: the last column is z)" if spec.normalize else ""
        print(f"  state: {spec.state}{column}")
        print("  backends:")
        for b in list_backends(name, available=False):
            print(_backend_line(b))
        print()
    print(f"attention names: {describe_attentions()}")
    return 0
