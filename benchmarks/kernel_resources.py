"""On a GPU: the resources of the Triton kernels as the driver loaded them, beside `bench kernels`' prediction.

Runs a forward and backward of the sum, delta and gated delta rules' Triton backend for each dtype and width
(one small batch each), then reads every compiled kernel's registers, local memory (spills) and
shared memory from Triton's cache, and compiles the same configuration offline as
`fastweights bench kernels` does for this GPU's architecture. Prints a markdown table (and writes
it as JSON with --json); exit status 1 if a prediction differs from the GPU in whether it fits.

    python benchmarks/kernel_resources.py --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from fastweights.bench.kernels import DTYPES, Job, compile_job
from fastweights.ops import get_op
from fastweights.ops._triton import default_cache_dir
from fastweights.ops._triton.chunk import KERNELS, capability
from fastweights.ops._triton.launch import SHARED_LIMIT, family

NAMES = {v: k for k, v in DTYPES.items()}


def exercise(rule: str, dtype: torch.dtype, d: int) -> None:
    """One forward and backward of ``rule``'s Triton backend at d_k = d_v = d (compiles its kernels)."""
    q, k, v = (torch.randn(2, 200, 4, d, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    beta = torch.rand(2, 200, 4, device="cuda", dtype=dtype, requires_grad=True)
    s0 = torch.randn(2, 4, d, d, device="cuda", requires_grad=True)
    extra = {"g": F.logsigmoid(torch.randn(2, 200, 4, device="cuda", dtype=dtype))} if rule == "gated_delta" else {}
    o, s = get_op(rule, "triton")(
        q, F.normalize(k, dim=-1), v, beta, initial_state=s0, output_final_state=True, **extra
    )
    (o.float().sum() + s.sum()).backward()


def loaded() -> list:
    """(kernel name, constexprs, n_regs, n_spills, shared) of every kernel Triton compiled and loaded."""
    out = []
    for name, fn in KERNELS.items():
        for cache in fn.device_caches.values():
            for compiled in cache[0].values():
                compiled._init_handles()
                out.append((name, compiled, compiled.n_regs, compiled.n_spills, compiled.metadata.shared))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=list(DTYPES))
    p.add_argument("--dims", nargs="+", type=int, default=[32, 64, 256])
    p.add_argument("--json")
    args = p.parse_args()
    arch = capability(torch.device("cuda"))
    rows, mismatches = [], 0
    for dtype in args.dtypes:
        for d in args.dims:
            for rule in ("sum", "delta", "gated_delta"):
                for fn in KERNELS.values():
                    fn.device_caches.clear()
                exercise(rule, getattr(torch, DTYPES[dtype]), d)
                for name, compiled, regs, spills, shared in loaded():
                    job = Job(rule, name, arch if arch in SHARED_LIMIT else family(arch), dtype, d, d, 64)
                    predicted = compile_job(job, str(default_cache_dir()))  # the backend's own measurement
                    # Triton's n_spills is the driver's local memory per thread in 4-byte words (spills and stack)
                    fits = spills == 0 and shared <= SHARED_LIMIT.get(arch, predicted.limit)
                    mismatches += fits != predicted.fits
                    rows.append(
                        dict(
                            kernel=name,
                            rule=rule,
                            dtype=dtype,
                            d=d,
                            warps=compiled.metadata.num_warps,
                            stages=compiled.metadata.num_stages,
                            regs=regs,
                            predicted_regs=predicted.registers,
                            local_words=spills,
                            predicted_spilled_bytes=predicted.spilled,
                            shared=shared,
                            predicted_shared=predicted.shared,
                            fits=fits,
                            predicted_fits=predicted.fits,
                        )
                    )
    head = list(rows[0]) if rows else []
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(r[h]) for h in head) + " |")
    print(f"\n{len(rows)} kernels on sm_{arch}; {mismatches} where the offline prediction of fitting differs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
