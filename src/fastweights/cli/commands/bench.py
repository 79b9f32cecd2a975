"""Benchmarks: `fastweights bench ops` times every form of every rule; `bench lm` LM training.

`ops`: forward and forward+backward of every op backend on CPU or CUDA (`--device`), peak memory
and GFLOP/s against a matmul peak measured in the same run; `--peers` adds installed peers
(and softmax attention on CUDA). See fastweights.bench.ops.

`lm`: tokens/s and peak memory of training steps (forward, backward, AdamW; bf16 autocast on CUDA)
of a decoder LM with softmax, linear (sum rule) and delta attention at several contexts, and each
variant's speed relative to softmax. See fastweights.bench.lm.

`kernels`: compiles, without a GPU, every Triton kernel the backend launches for chosen GPU
architectures, dtypes and widths, and reports registers, spills and shared memory against the
arch's limits. See fastweights.bench.kernels.

Examples:
  fastweights bench ops --rules delta --lengths 2048 8192 --threads 1
  fastweights bench lm --attentions softmax delta --contexts 256
  fastweights bench kernels --arch sm_90 --dtype bf16 --dk 64
"""

from __future__ import annotations

import argparse

from ...bench import kernels, lm, ops
from ..threads import add_threads_argument

BENCHMARKS = {"ops": ops, "lm": lm, "kernels": kernels}
HAS_SUBCOMMANDS = True  # each benchmark has its own options, --threads among them


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    for name, module in BENCHMARKS.items():
        doc = (module.__doc__ or "").strip()
        q = sub.add_parser(
            name, help=doc.splitlines()[0], description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.configure(q)
        add_threads_argument(q)
        q.set_defaults(_prog=q.prog, _parser=q)  # errors name the benchmark: "fastweights bench ops: error: ..."


def main(args: argparse.Namespace) -> int:
    return BENCHMARKS[args.benchmark].main(args)
