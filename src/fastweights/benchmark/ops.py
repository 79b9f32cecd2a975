"""Op benchmark: every sequence form of the sum and delta rules, forward and forward+backward.

For each rule, form and length L (B=1, H=8, d=64, float32 by default), on random inputs in the
public ``[B, T, H, D]`` layout (keys L2-normalised, rates in (0, 1) for the delta rule)::

    fwd ms       median wall time of the forward (no autograd graph)
    fwd+bwd ms   median wall time of forward + ``o.backward(do)`` (gradients of q, k, v, beta)
    peak MB      extra resident memory of one forward+backward: the RSS high-water mark above
                 the RSS with the inputs made, in a fresh process (so no earlier cell's freed
                 heap is reused), with glibc told to map every block >= 64 KiB on its own
                 (``mallopt(M_MMAP_THRESHOLD)``) so that freed tensors leave the RSS
    GFLOP/s      the FLOP model below divided by the fwd+bwd time
    % peak       GFLOP/s over the fp32 matmul peak measured in the same run (a 4096 x 4096 x
                 4096 product; the best of the measurements taken at the start and the end)

FLOP model (per head and chunk of C = 64 tokens, masks not exploited; the same count is used for
every form of a rule, so GFLOP/s compares forms by speed)::

    sum   forward: 2 C^2 (d_k + d_v) + 4 C d_k d_v            (QK^T, PV, QS, K^T V)
    delta forward: 6 C^2 d_k + 4 C^2 d_v + 6 C d_k d_v + C^3/3 (KK^T, inverse, W, U, QK^T, PV', WS, K^T V', QS)
    forward + backward = 3 x forward

A form whose forward+backward is predicted (from the previous length, scaled by its complexity)
to take longer than ``--max-seconds`` (one call) is skipped with a note, as are the quadratic form above
``--max-parallel``. With ``--peers``, installed peers (fast-transformers' ``causal_dot_product``
CPU kernel, flash-linear-attention's pure-torch references) are checked against fastweights'
naive form and timed the same way. The machine's cores may be shared: compare within one run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor

from ..ops import get_op
from . import peers as peer_impls

FORMS = {"sum": ["naive", "parallel", "chunk"], "delta": ["naive", "chunk"]}
COMPLEXITY = {"naive": 1.0, "chunk": 1.0, "parallel": 2.0}  # time ~ L ** exponent


@dataclass
class BenchConfig:
    """What to measure."""

    rules: List[str] = field(default_factory=lambda: ["sum", "delta"])
    lengths: List[int] = field(default_factory=lambda: [512, 2048, 8192, 32768])
    batch: int = 1
    heads: int = 8
    dim: int = 64
    chunk_size: int = 64
    dtype: str = "float32"
    repeat: int = 5
    max_seconds: float = 12.0
    max_parallel: int = 4096
    threads: int = 0
    peers: bool = False
    json: Optional[str] = None


def flops_forward(rule: str, T: int, B: int, H: int, d_k: int, d_v: int, C: int = 64) -> float:
    """FLOPs of one forward pass by the model in the module docstring (``ceil(T / C)`` chunks)."""
    per_chunk = {
        "sum": 2 * C * C * (d_k + d_v) + 4 * C * d_k * d_v,
        "delta": 6 * C * C * d_k + 4 * C * C * d_v + 6 * C * d_k * d_v + C**3 / 3,
    }[rule]
    return B * H * (-(-T // C)) * per_chunk


def matmul_peak(n: int = 4096, repeat: int = 3) -> float:
    """Median GFLOP/s of an ``n x n`` fp32 matmul (the ceiling the ops are compared with)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: a @ b, repeat) / 1e9


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` over ``repeat`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _return_freed_memory() -> bool:
    """Make glibc unmap every freed block >= 64 KiB, so RSS tracks live memory. False if not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_rss_mb(fn: Callable[[], object]) -> float:
    """Extra RSS high-water mark (MB) while ``fn`` runs (Linux: reset via ``/proc/self/clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_kb("VmRSS")
    except OSError:
        return float("nan")
    fn()
    return (_status_kb("VmHWM") - before) / 1024


def make_inputs(rule: str, cfg: BenchConfig, T: int, seed: int = 0) -> Dict[str, Optional[Tensor]]:
    """Random ``[B, T, H, D]`` inputs (leaf tensors that require grad) and an output gradient."""
    g = torch.Generator().manual_seed(seed)
    dtype = getattr(torch, cfg.dtype)
    shape = (cfg.batch, T, cfg.heads, cfg.dim)
    q = torch.randn(shape, generator=g) * cfg.dim**-0.5
    k = torch.nn.functional.normalize(torch.randn(shape, generator=g), dim=-1)
    v = torch.randn(shape, generator=g)
    beta = torch.rand(shape[:3], generator=g) if rule == "delta" else None
    do = torch.randn(shape, generator=g)
    out = dict(q=q, k=k, v=v, beta=beta)
    out = {n: (t.to(dtype).requires_grad_() if t is not None else None) for n, t in out.items()}
    out["do"] = do.to(dtype)
    return out


def _runners(fn: Callable, inp: Dict[str, Optional[Tensor]]):
    """``(forward, forward_backward)`` closures around ``fn(q, k, v, beta) -> o``."""
    args = [inp[n] for n in ("q", "k", "v", "beta")]

    def forward() -> None:
        with torch.no_grad():
            fn(*args)

    def forward_backward() -> None:
        for t in args:
            if t is not None:
                t.grad = None
        fn(*args).backward(inp["do"])

    return forward, forward_backward


def measure(fn: Callable, inp: Dict[str, Optional[Tensor]], repeat: int) -> Dict[str, float]:
    """Median forward and forward+backward ms of ``fn``."""
    forward, forward_backward = _runners(fn, inp)
    return dict(fwd_ms=median_seconds(forward, repeat) * 1e3, fwdbwd_ms=median_seconds(forward_backward, repeat) * 1e3)


def make_fn(rule: str, form: str, chunk_size: int) -> Callable:
    """``(q, k, v, beta) -> o`` for a fastweights form or, by its name, an installed peer."""
    if form in FORMS[rule]:
        op = get_op(rule, form)
        return lambda q, k, v, beta: op(q, k, v, beta, chunk_size=chunk_size)[0]
    return next(fn for name, fn, _ in peer_impls.available(rule) if name == form)


def _child_peak_mb(rule: str, form: str, L: int, cfg: BenchConfig) -> float:
    """In a fresh process, after a warm-up call: the extra peak RSS of one forward+backward (which
    makes the gradients) over the RSS with the inputs made."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    _return_freed_memory()
    inp = make_inputs(rule, cfg, L)
    forward_backward = _runners(make_fn(rule, form, cfg.chunk_size), inp)[1]
    forward_backward()  # one-time allocations (library workspaces, caches) are not the op's
    for t in inp.values():
        if t is not None:
            t.grad = None
    return peak_rss_mb(forward_backward)


def peak_memory_mb(rule: str, form: str, L: int, cfg: BenchConfig) -> float:
    """:func:`_child_peak_mb` in a spawned process, whose heap no earlier cell has fragmented."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_child_peak_mb, rule, form, L, cfg).result()


def run(cfg: BenchConfig, log: Callable[[str], None] = print) -> Dict:
    """Run the benchmark; returns ``{"meta": ..., "rows": [...]}`` (also written to ``cfg.json``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    freed = _return_freed_memory()
    meta = dict(
        torch=torch.__version__, threads=torch.get_num_threads(), interop_threads=torch.get_num_interop_threads(),
        cpu_count=os.cpu_count(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        loadavg_start=os.getloadavg(), rss_tracks_live_memory=freed, config=asdict(cfg),
    )
    peaks = [matmul_peak()]
    log(f"threads {meta['threads']} (cpus {meta['cpu_count']}), load average {meta['loadavg_start'][0]:.1f}, "
        f"fp32 matmul peak {peaks[0]:.0f} GFLOP/s\n{HEADER}\n{SEPARATOR}")
    rows: List[Dict] = []
    for rule in cfg.rules:
        candidates = [(form, make_fn(rule, form, cfg.chunk_size)) for form in FORMS[rule]]
        if cfg.peers:
            candidates += _checked_peers(rule, cfg, log)
        for form, fn in candidates:
            last = None  # (L, fwd+bwd seconds) of the previous length
            for L in cfg.lengths:
                row = dict(rule=rule, form=form, L=L)
                exponent = COMPLEXITY.get(form, 1.0)
                predicted = last[1] * (L / last[0]) ** exponent if last else 0.0  # seconds per fwd+bwd
                if form == "parallel" and L > cfg.max_parallel:
                    row["note"] = f"skipped: quadratic memory above L={cfg.max_parallel}"
                elif predicted > cfg.max_seconds:
                    row["note"] = f"skipped: ~{predicted:.0f} s per fwd+bwd predicted"
                else:
                    inp = make_inputs(rule, cfg, L)
                    repeat = cfg.repeat if predicted < 1.0 else 2
                    row.update(measure(fn, inp, repeat))
                    row["peak_mb"] = peak_memory_mb(rule, form, L, cfg)
                    flops = flops_forward(rule, L, cfg.batch, cfg.heads, cfg.dim, cfg.dim)
                    row["gflops_fwd"] = flops / row["fwd_ms"] / 1e6
                    row["gflops_fwdbwd"] = 3 * flops / row["fwdbwd_ms"] / 1e6
                    last = (L, row["fwdbwd_ms"] / 1e3)
                    del inp
                rows.append(row)
                log(format_row(row, max(peaks)))
    peaks.append(matmul_peak())
    meta.update(matmul_peak_gflops=peaks, loadavg_end=os.getloadavg())
    for row in rows:
        if "gflops_fwdbwd" in row:
            row["frac_of_peak"] = row["gflops_fwdbwd"] / max(peaks)
    result = dict(meta=meta, rows=rows, targets=targets(rows))
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(result, indent=1))
    return result


def _checked_peers(rule: str, cfg: BenchConfig, log: Callable[[str], None]) -> List:
    """Installed peer implementations of ``rule`` that agree with fastweights' naive form."""
    found = []
    for name, fn, why_not in peer_impls.available(rule):
        if fn is None:
            log(f"peer {name}: {why_not}")
            continue
        inp = make_inputs(rule, cfg, 128)
        args = [inp[n] for n in ("q", "k", "v", "beta")]
        with torch.no_grad():
            err = (fn(*args) - make_fn(rule, "naive", cfg.chunk_size)(*args)).abs().max().item()
        if err > 1e-3:
            log(f"peer {name}: disagrees with fastweights naive (max |diff| {err:.2e}); not timed")
            continue
        log(f"peer {name}: agrees with fastweights naive (max |diff| {err:.1e})")
        found.append((name, fn))
    return found


def targets(rows: List[Dict]) -> Dict[str, Optional[float]]:
    """The issue's figures of merit (reported, never asserted)."""
    def get(rule: str, form: str, L: int, key: str) -> Optional[float]:
        for r in rows:
            if (r["rule"], r["form"], r["L"]) == (rule, form, L) and key in r:
                return r[key]
        return None

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    return {
        "delta chunk fwd+bwd % of peak at L=8192 (target >= 35)": _pct(get("delta", "chunk", 8192, "frac_of_peak")),
        "sum chunk fwd+bwd % of peak at L=8192 (target >= 35)": _pct(get("sum", "chunk", 8192, "frac_of_peak")),
        "delta chunk speed-up over naive at L=2048, fwd+bwd (target >= 15)": ratio(
            get("delta", "naive", 2048, "fwdbwd_ms"), get("delta", "chunk", 2048, "fwdbwd_ms")),
        "delta chunk memory L=32768 / L=8192 (target <= 4.5)": ratio(
            get("delta", "chunk", 32768, "peak_mb"), get("delta", "chunk", 8192, "peak_mb")),
        "sum chunk memory L=32768 / L=8192 (target <= 4.5)": ratio(
            get("sum", "chunk", 32768, "peak_mb"), get("sum", "chunk", 8192, "peak_mb")),
    }


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else 100 * x


HEADER = "| rule | form | L | fwd ms | fwd+bwd ms | peak MB | GFLOP/s fwd | GFLOP/s fwd+bwd | % of peak | note |"
SEPARATOR = "|---" * (HEADER.count("|") - 1) + "|"


def format_row(r: Dict, peak: float) -> str:
    """One markdown table row (``% of peak`` against ``peak`` GFLOP/s)."""
    if "fwd_ms" not in r:
        return f"| {r['rule']} | {r['form']} | {r['L']} | | | | | | | {r.get('note', '')} |"
    frac = r.get("frac_of_peak", r["gflops_fwdbwd"] / peak)
    return (f"| {r['rule']} | {r['form']} | {r['L']} | {r['fwd_ms']:.1f} | {r['fwdbwd_ms']:.1f} | {r['peak_mb']:.0f} | "
            f"{r['gflops_fwd']:.0f} | {r['gflops_fwdbwd']:.0f} | {100 * frac:.0f}% | {r.get('note', '')} |")


def format_table(result: Dict) -> str:
    """The whole result as markdown: setup line, table, targets."""
    m = result["meta"]
    peak = max(m["matmul_peak_gflops"])
    lines = [
        f"torch {m['torch']}, {m['threads']} threads on {m['cpu_count']} CPUs, load average "
        f"{m['loadavg_start'][0]:.1f} -> {m['loadavg_end'][0]:.1f}; fp32 4096^3 matmul peak "
        + " / ".join(f"{p:.0f}" for p in m["matmul_peak_gflops"]) + f" GFLOP/s (start / end; % of {peak:.0f})",
        "", HEADER, SEPARATOR,
    ]
    lines += [format_row(r, peak) for r in result["rows"]]
    lines.append("")
    for name, value in result["targets"].items():
        lines.append(f"- {name}: {'n/a' if value is None else f'{value:.1f}'}")
    return "\n".join(lines)


def configure(p: argparse.ArgumentParser) -> None:
    """Command-line options of ``fastweights bench ops`` and ``benchmarks/ops.py``."""
    d = BenchConfig()
    p.add_argument("--rules", nargs="+", choices=["sum", "delta"], default=d.rules, help="update rules (default: both)")
    p.add_argument("--lengths", nargs="+", type=int, default=d.lengths, help="sequence lengths L (default: %(default)s)")
    p.add_argument("--heads", type=int, default=d.heads, help="heads H (default: 8)")
    p.add_argument("--dim", type=int, default=d.dim, help="d_k = d_v (default: 64)")
    p.add_argument("--chunk-size", type=int, default=d.chunk_size, help="chunk length C (default: 64)")
    p.add_argument("--dtype", choices=["float32", "float64", "bfloat16"], default=d.dtype, help="input dtype (default: float32)")
    p.add_argument("--repeat", type=int, default=d.repeat, help="timed repetitions per cell; the median is kept (default: 5)")
    p.add_argument("--max-seconds", type=float, default=d.max_seconds,
                   help="skip a cell whose forward+backward is predicted to take longer (default: 12 s)")
    p.add_argument("--max-parallel", type=int, default=d.max_parallel, help="longest L for the quadratic form (default: 4096)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch threads (default: torch's choice)")
    p.add_argument("--peers", action="store_true", help="also time fast-transformers / flash-linear-attention when installed")
    p.add_argument("--json", default="benchmarks/results/ops.json", help="where to write the results (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    """Run :func:`run` from parsed arguments; print the table."""
    cfg = BenchConfig(rules=args.rules, lengths=args.lengths, heads=args.heads, dim=args.dim, chunk_size=args.chunk_size,
                      dtype=args.dtype, repeat=args.repeat, max_seconds=args.max_seconds, max_parallel=args.max_parallel,
                      threads=args.threads, peers=args.peers, json=args.json)
    result = run(cfg, log=print)
    print("\nResults (% of peak against the best matmul peak of the run):\n")
    print(format_table(result))
    if cfg.json:
        print(f"\nwrote {cfg.json}")
    return 0
