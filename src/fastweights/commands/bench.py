"""Benchmarks: `fastweights bench ops` times every form of the sum and delta rules.

`ops`: forward and forward+backward of each op form for L in 512..32768 (B=1, H=8, d=64, fp32),
peak memory and GFLOP/s against a matmul peak measured in the same run; `--peers` adds
fast-transformers / flash-linear-attention when installed. See fastweights.benchmark.ops.
"""

from __future__ import annotations

import argparse

from ..benchmark import ops

BENCHMARKS = {"ops": ops}


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module in BENCHMARKS.items():
        doc = (module.__doc__ or "").strip()
        q = sub.add_parser(name, help=doc.splitlines()[0], description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        module.configure(q)


def main(args: argparse.Namespace) -> int:
    return BENCHMARKS[args.benchmark].main(args)
