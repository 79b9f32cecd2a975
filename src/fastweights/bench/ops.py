"""Op benchmark: every backend of every rule, forward and forward+backward, on CPU or CUDA.

For each rule, key width d_k, dtype, backend and length L, on random inputs in the public
``[B, T, H, D]`` layout (keys L2-normalised, rates in (0, 1) for the delta rule, d_v = ``--dim``)::

    fwd ms       median wall time of the forward (no autograd graph), after a warm-up call
    fwd+bwd ms   median wall time of forward + ``o.backward(do)`` (gradients of q, k, v, beta),
                 after a warm-up call (on CUDA the warm-ups hold kernel autotuning, e.g. FLA's)
    peak MB      extra memory of one forward+backward (which makes the gradients) over the memory
                 with the inputs made. CPU: the RSS high-water mark, in a fresh process (so no
                 earlier cell's freed heap is reused), with glibc told to map every block >= 64 KiB
                 on its own (``mallopt(M_MMAP_THRESHOLD)``) so that freed tensors leave the RSS.
                 CUDA: ``torch.cuda.max_memory_allocated``, in process (allocations, not the cache)
    GFLOP/s      the FLOP model below divided by the time
    % of peak    GFLOP/s fwd+bwd over a matmul peak measured in the same run (the best of the
                 measurements at the start and the end). CPU: a 4096^3 float32 product, for every
                 dtype. CUDA: an 8192^3 product in the cell's dtype (TF32 as torch is set)

Defaults per ``--device``: cpu: B=1, H=8, d_k = d_v = 64, float32, L in 512..32768; cuda:
B*T = 32768 tokens per call (``--tokens``: B = N // L), H=16, d_v=64, d_k in {64, 256} (``--dim``
and 4 x ``--dim``, DPFP-2's width), bfloat16, L in {1024, 4096, 16384}. The backends (``--impls``) default to every
installed one of the rule that runs on the device, except the one-token (decoding) forms: on CUDA
``chunk``, ``naive``, ``parallel`` and ``fla`` (flash-linear-attention) when installed. A backend
that cannot run a cell (dtype, device, d_k, missing package) is listed as a skipped row with its
reason, as is a cell that runs out of GPU memory (and the longer lengths of its series).

Examples:
  fastweights bench ops                                  # every rule and backend on the CPU, ~10 min on 2 cores
  fastweights bench ops --rules delta --lengths 2048 8192 --threads 1 --json ops.json
  fastweights bench ops --device cuda --dtypes float32 bfloat16 --peers

FLOP model (per head and chunk of C = 64 tokens, masks not exploited; the same count is used for
every form of a rule, so GFLOP/s compares forms by speed)::

    sum     forward: 2 C^2 (d_k + d_v) + 4 C d_k d_v            (QK^T, PV, QS, K^T V)
    delta   forward: 6 C^2 d_k + 4 C^2 d_v + 6 C d_k d_v + C^3/3 (KK^T, inverse, W, U, QK^T, PV', WS, K^T V', QS)
    forward + backward = 3 x forward
    softmax forward: T^2 (d_k + d_v) per head and sequence (the causal half of QK^T and PV);
            forward + backward = 3.5 x forward (the backward recomputes QK^T)

A form whose forward+backward is predicted (from the previous length, scaled by its complexity)
to take longer than ``--max-seconds`` (one call) is skipped with a note, as is the quadratic form
above ``--max-parallel``. With ``--peers``: on CPU, installed peers (fast-transformers'
``causal_dot_product`` kernel, flash-linear-attention's pure-torch references) are checked against
fastweights' naive form and timed the same way; on CUDA, softmax causal attention
(``scaled_dot_product_attention``, rule ``softmax``, form ``sdpa``, half dtypes, d_k = d_v) is
timed as a yardstick. After the table: for each rule, dtype, d_k and L, every form's fwd+bwd time
over the fastest, ``fla / chunk``, and the softmax yardstick over the fastest. Timings depend on
what else runs on the machine: compare within one run.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import signal
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import torch
from torch import Tensor

from ..cli.arguments import at_least, check_device, check_output_path
from ..ops import Backend, get_op, get_rule, list_backends, list_rules
from . import peers as peer_impls

DTYPES = ["float32", "bfloat16", "float16", "float64"]
HALF = ("bfloat16", "float16")
COMPLEXITY = {"parallel": 2.0, "sdpa": 2.0}  # time ~ L ** exponent (1 for the others)
FWD_BWD_FACTOR = {"sum": 3.0, "delta": 3.0, "softmax": 3.5}  # forward+backward FLOPs over forward FLOPs
SOFTMAX = ("softmax", "sdpa")  # (rule, form) of the CUDA yardstick
OUT_OF_MEMORY = "skipped: out of memory"  # the note of a cell that ran out of memory, and of its longer lengths

#: What ``--device`` changes in :class:`BenchConfig`'s defaults (which are the CPU ones).
DEVICE_DEFAULTS: Dict[str, Dict[str, object]] = {
    "cpu": dict(json="benchmarks/results/ops.json"),
    "cuda": dict(
        lengths=[1024, 4096, 16384],
        tokens=32768,
        heads=16,
        dtypes=["bfloat16"],
        max_seconds=1.0,
        json="benchmarks/results/ops_cuda.json",
    ),
}


@dataclass
class BenchConfig:
    """What to measure (defaults: the CPU run; :func:`configured` gives another device's)."""

    device: str = "cpu"
    rules: List[str] = field(default_factory=lambda: ["sum", "delta"])
    impls: Optional[List[str]] = None  # None: every installed backend of the device, one-token ones excepted
    lengths: List[int] = field(default_factory=lambda: [512, 2048, 8192, 32768])
    batch: int = 1
    tokens: Optional[int] = None  # B * T per call; overrides ``batch``
    heads: int = 8
    dim: int = 64  # d_v
    d_ks: List[int] = field(default_factory=list)  # empty: [dim]
    chunk_size: int = 64
    dtypes: List[str] = field(default_factory=lambda: ["float32"])
    repeat: int = 5
    max_seconds: float = 12.0
    max_parallel: int = 4096
    threads: int = 0
    peers: bool = False
    json: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.d_ks:
            self.d_ks = [self.dim]

    def batch_for(self, T: int) -> int:
        """B at length ``T``: ``tokens // T`` (at least 1) when ``tokens`` is set, else ``batch``."""
        return max(1, self.tokens // T) if self.tokens else self.batch


def configured(device: str = "cpu", **options: object) -> BenchConfig:
    """The configuration of ``device``: :data:`DEVICE_DEFAULTS` (on CUDA also d_k in {dim, 4 dim}),
    overridden by the ``options`` that are not None (a ``batch`` given drops the default ``tokens``)."""
    given = {k: v for k, v in options.items() if v is not None}
    values = dict(DEVICE_DEFAULTS[device], device=device)
    if "batch" in given:
        values.pop("tokens", None)
    values.update(given)
    if device == "cuda" and "d_ks" not in given:
        dim = int(values.get("dim", BenchConfig.dim))
        values["d_ks"] = [dim, 4 * dim]
    return BenchConfig(**values)


@dataclass(frozen=True)
class Cell:
    """One measurement: ``rule``'s ``form`` on q, k ``[B, T, H, d_k]``, v ``[B, T, H, d_v]``,
    beta ``[B, T, H]`` (delta rule only) of ``dtype`` on ``device``."""

    rule: str
    form: str
    B: int
    T: int
    H: int
    d_k: int
    d_v: int
    dtype: str
    device: str

    def row(self) -> Dict[str, object]:
        """The row's identifying fields."""
        return dict(rule=self.rule, form=self.form, dtype=self.dtype, d_k=self.d_k, d_v=self.d_v, B=self.B, L=self.T)


def flops_forward(rule: str, T: int, B: int, H: int, d_k: int, d_v: int, C: int = 64) -> float:
    """FLOPs of one forward pass by the model in the module docstring (``ceil(T / C)`` chunks)."""
    if rule == "softmax":
        return B * H * T * T * (d_k + d_v)
    per_chunk = {
        "sum": 2 * C * C * (d_k + d_v) + 4 * C * d_k * d_v,
        "delta": 6 * C * C * d_k + 4 * C * C * d_v + 6 * C * d_k * d_v + C**3 / 3,
    }[rule]
    return B * H * (-(-T // C)) * per_chunk


def _sync(device: str) -> Optional[Callable[[], None]]:
    """What makes the device's work finish before a clock is read (None on CPU)."""
    return torch.cuda.synchronize if device == "cuda" else None


def median_seconds(fn: Callable[[], object], repeat: int, sync: Optional[Callable[[], None]] = None) -> float:
    """Median wall time of ``fn`` over ``repeat`` calls, after one warm-up call; ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before each clock reading."""
    wait = sync or (lambda: None)
    fn()
    wait()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        wait()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def matmul_peak(dtype: str = "float32", device: str = "cpu") -> float:
    """Median GFLOP/s of a square matmul (4096 on CPU, 8192 on CUDA): the ceiling the ops are compared with."""
    n, repeat = (8192, 10) if device == "cuda" else (4096, 3)
    a, b = (torch.randn(n, n, device=device, dtype=getattr(torch, dtype)) for _ in range(2))
    return 2 * n**3 / median_seconds(lambda: a @ b, repeat, _sync(device)) / 1e9


def _peak_dtype(dtype: str, device: str) -> str:
    """The dtype of the matmul peak a cell of ``dtype`` is compared with."""
    return dtype if device == "cuda" else "float32"


def return_freed_memory() -> bool:
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


def cuda_peak_mb(fn: Callable[[], object]) -> float:
    """Extra CUDA memory high-water mark (MB) while ``fn`` runs, over the memory allocated before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def make_inputs(cell: Cell, seed: int = 0) -> Dict[str, Optional[Tensor]]:
    """Random inputs of ``cell`` on its device (leaf tensors that require grad) and an output gradient:
    q, k ``[B, T, H, d_k]``, v, do ``[B, T, H, d_v]``, beta ``[B, T, H]`` (for rules that learn a rate, else None)
    and the rule's other learned per-token inputs ``[B, T, H]`` (``[B, T, H, d_k]`` per key channel)
    as a layer makes them (e.g. the gated delta rule's log decay ``g = logsigmoid(randn + 5)``)."""
    g = torch.Generator(cell.device).manual_seed(seed)
    dtype = getattr(torch, cell.dtype)
    shape_k, shape_v = (cell.B, cell.T, cell.H, cell.d_k), (cell.B, cell.T, cell.H, cell.d_v)

    def randn(shape: Tuple[int, ...]) -> Tensor:
        return torch.randn(shape, generator=g, device=cell.device)

    q = randn(shape_k) * cell.d_k**-0.5
    k = torch.nn.functional.normalize(randn(shape_k), dim=-1)
    v = randn(shape_v)
    learned_rate = cell.rule in list_rules() and get_rule(cell.rule).learned_rate
    beta = torch.rand(shape_k[:3], generator=g, device=cell.device) if learned_rate else None
    spec = get_rule(cell.rule) if cell.rule in list_rules() else None
    learned = spec.learned if spec is not None else {}
    extra = {  # [B, T, H], or [B, T, H, d_k] per key channel
        name: x.activation(randn(shape_k if name in spec.per_channel else shape_k[:3]) + x.bias)
        for name, x in learned.items()
    }
    do = randn(shape_v)
    out = dict(q=q, k=k, v=v, beta=beta, **extra)
    out = {n: (t.to(dtype).requires_grad_() if t is not None else None) for n, t in out.items()}
    out["do"] = do.to(dtype)
    return out


def _clear_grads(inp: Dict[str, Optional[Tensor]]) -> None:
    for t in inp.values():
        if t is not None:
            t.grad = None


def _runners(fn: Callable, inp: Dict[str, Optional[Tensor]]) -> Tuple[Callable[[], None], Callable[[], None]]:
    """``(forward, forward_backward)`` closures around ``fn(q, k, v, beta, **extra) -> o``."""
    args = [inp[n] for n in ("q", "k", "v", "beta")]
    extra = {n: t for n, t in inp.items() if n not in ("q", "k", "v", "beta", "do")}

    def forward() -> None:
        with torch.no_grad():
            fn(*args, **extra)

    def forward_backward() -> None:
        _clear_grads(inp)
        fn(*args, **extra).backward(inp["do"])

    return forward, forward_backward


def measure(fn: Callable, inp: Dict[str, Optional[Tensor]], repeat: int, device: str = "cpu") -> Dict[str, float]:
    """Median forward and forward+backward ms of ``fn`` (each after a warm-up call)."""
    forward, forward_backward = _runners(fn, inp)
    sync = _sync(device)
    return dict(
        fwd_ms=median_seconds(forward, repeat, sync) * 1e3,
        fwdbwd_ms=median_seconds(forward_backward, repeat, sync) * 1e3,
    )


def make_fn(rule: str, form: str, chunk_size: int) -> Callable:
    """``(q, k, v, beta, **extra) -> o`` (``[B, T, H, D]``; ``extra``: the rule's other per-token
    inputs) for a registered backend, the softmax yardstick or, by its name, an installed CPU peer."""
    if (rule, form) == SOFTMAX:
        return peer_impls.sdpa_causal
    if form in {b.name for b in list_backends(rule, available=False)}:
        op = get_op(rule, form)
        return lambda q, k, v, beta, **extra: op(q, k, v, beta, chunk_size=chunk_size, **extra)[0]
    return next(fn for name, fn, _ in peer_impls.available(rule) if name == form)


def _child_peak_mb(cell: Cell, chunk_size: int, threads: int) -> float:
    """In a fresh process, after a warm-up call: the extra peak RSS of one forward+backward (which
    makes the gradients) over the RSS with the inputs made."""
    if threads:
        torch.set_num_threads(threads)
    return_freed_memory()
    inp = make_inputs(cell)
    forward_backward = _runners(make_fn(cell.rule, cell.form, chunk_size), inp)[1]
    forward_backward()  # one-time allocations (library workspaces, caches) are not the op's
    _clear_grads(inp)
    return peak_rss_mb(forward_backward)


def peak_memory_mb(cell: Cell, cfg: BenchConfig) -> float:
    """:func:`_child_peak_mb` in a spawned process, whose heap no earlier cell has fragmented. The child
    starts with Ctrl-C ignored (Python keeps an ignored SIGINT ignored), so that Ctrl-C stops only this
    process, with the command line's one line, and not the child with a traceback of its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            future = pool.submit(_child_peak_mb, cell, cfg.chunk_size, cfg.threads)  # starts the child
        finally:
            signal.signal(signal.SIGINT, handler)
        return future.result()


def _timed(cell: Cell, cfg: BenchConfig, repeat: int) -> Dict[str, float]:
    """Times and peak memory of ``cell`` (see the module docstring)."""
    inp = make_inputs(cell)
    fn = make_fn(cell.rule, cell.form, cfg.chunk_size)
    out = measure(fn, inp, repeat, cell.device)
    if cell.device == "cuda":
        _clear_grads(inp)
        out["peak_mb"] = cuda_peak_mb(_runners(fn, inp)[1])
    else:
        del inp
        out["peak_mb"] = peak_memory_mb(cell, cfg)
    return out


def _probe(cell: Cell) -> Tensor:
    """A queries tensor of ``cell``'s shape, dtype and device that holds one element (for ``Backend.unsupported``)."""
    one = torch.zeros((), dtype=getattr(torch, cell.dtype), device=cell.device)
    return one.expand(cell.B, cell.T, cell.H, cell.d_k)


def bench_cell(cell: Cell, backend: Optional[Backend], predicted: float, cfg: BenchConfig) -> Dict[str, object]:
    """The row of ``cell``: measured, or a note saying why it was skipped.

    ``backend``: the registered backend (None for peers and the yardstick, which declare nothing:
    any error of theirs is a skip); ``predicted``: the expected seconds of one forward+backward.
    """
    row = cell.row()
    why = backend.unsupported(_probe(cell), cell.d_v) if backend is not None else None
    if why is not None:
        row["note"] = f"skipped: {why}"
    elif cell.form == "parallel" and cell.T > cfg.max_parallel:
        row["note"] = f"skipped: quadratic memory above L={cfg.max_parallel}"
    elif predicted > cfg.max_seconds:
        row["note"] = f"skipped: ~{predicted:.0f} s per fwd+bwd predicted"
    else:
        failures = torch.OutOfMemoryError if backend is not None else Exception
        try:
            row.update(_timed(cell, cfg, cfg.repeat if predicted < 1.0 else 2))
        except failures as e:
            first = (str(e).splitlines() or [""])[0]
            oom = isinstance(e, torch.OutOfMemoryError)
            row["note"] = f"{OUT_OF_MEMORY}: {first}" if oom else f"skipped: {type(e).__name__}: {first}"
        if cell.device == "cuda":
            torch.cuda.empty_cache()
    if "fwd_ms" in row and cell.rule in FWD_BWD_FACTOR:  # a rule without a FLOP model gets times only
        flops = flops_forward(cell.rule, cell.T, cell.B, cell.H, cell.d_k, cell.d_v)
        row["gflops_fwd"] = flops / row["fwd_ms"] / 1e6
        row["gflops_fwdbwd"] = FWD_BWD_FACTOR[cell.rule] * flops / row["fwdbwd_ms"] / 1e6
    return row


def _priority(b: Backend) -> float:
    return float("-inf") if b.priority is None else b.priority


def backends(rule: str, cfg: BenchConfig) -> List[Backend]:
    """The backends of ``rule`` to time, references first (``priority`` ascending): ``cfg.impls``
    (installed or not, so that a missing one is reported), or every installed one that runs on
    ``cfg.device``, one-token and emulated (interpreted) backends excepted."""
    if cfg.impls is None:
        found = [b for b in list_backends(rule, device=cfg.device) if not (b.one_token or b.emulated)]
    else:
        found = [b for b in list_backends(rule, available=False) if b.name in cfg.impls]
    return sorted(found, key=_priority)


def _series(cfg: BenchConfig, log: Callable[[str], None]) -> Iterator[Tuple[str, str, Optional[Backend], int, str]]:
    """``(rule, form, backend or None, d_k, dtype)`` of every series of lengths to run, in table order."""
    for rule in cfg.rules:
        forms = [(b.name, b) for b in backends(rule, cfg)]
        if cfg.peers and cfg.device == "cpu":
            forms += [(name, None) for name in _checked_peers(rule, cfg, log)]
        for d_k in cfg.d_ks:
            for dtype in cfg.dtypes:
                for form, backend in forms:
                    yield rule, form, backend, d_k, dtype
    if cfg.peers and cfg.device == "cuda":
        for dtype in cfg.dtypes:
            if dtype in HALF:
                yield SOFTMAX[0], SOFTMAX[1], None, cfg.dim, dtype


def _meta(cfg: BenchConfig, rss_tracks_live_memory: bool) -> Dict[str, object]:
    """What the run ran on."""
    cuda = cfg.device == "cuda"
    return dict(
        device=cfg.device,
        device_name=torch.cuda.get_device_name() if cuda else (platform.processor() or platform.machine()),
        torch=torch.__version__,
        cuda=torch.version.cuda if cuda else None,
        tf32=torch.backends.cuda.matmul.allow_tf32 if cuda else None,
        threads=torch.get_num_threads(),
        interop_threads=torch.get_num_interop_threads(),
        cpu_count=os.cpu_count(),
        omp_num_threads=os.environ.get("OMP_NUM_THREADS"),
        loadavg_start=os.getloadavg(),
        rss_tracks_live_memory=rss_tracks_live_memory,
        config=asdict(cfg),
        matmul_size=8192 if cuda else 4096,
    )


def run(cfg: BenchConfig, log: Callable[[str], None] = print) -> Dict:
    """Run the benchmark; returns ``{"meta", "rows", "ratios", "figures"}`` (also written to ``cfg.json``)."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    meta = _meta(cfg, return_freed_memory() if cfg.device == "cpu" else False)
    peak_dtypes = sorted({_peak_dtype(dt, cfg.device) for dt in cfg.dtypes}, key=DTYPES.index)
    peaks = {dt: [matmul_peak(dt, cfg.device)] for dt in peak_dtypes}  # dtype -> GFLOP/s at start (, end)
    meta["matmul_peak_gflops"] = peaks
    log(f"{setup_line(meta)}\n{HEADER}\n{SEPARATOR}")
    rows: List[Dict] = []
    for rule, form, backend, d_k, dtype in _series(cfg, log):
        last = None  # (L, fwd+bwd seconds) of the previous length
        oom_at = None  # the length that ran out of memory: longer ones are not tried
        for L in cfg.lengths:
            cell = Cell(rule, form, cfg.batch_for(L), L, cfg.heads, d_k, cfg.dim, dtype, cfg.device)
            predicted = last[1] * (L / last[0]) ** COMPLEXITY.get(form, 1.0) if last else 0.0
            if oom_at is not None:
                row = dict(cell.row(), note=f"{OUT_OF_MEMORY} at L={oom_at}")
            else:
                row = bench_cell(cell, backend, predicted, cfg)
            if "fwdbwd_ms" in row:
                last = (L, row["fwdbwd_ms"] / 1e3)
            elif row["note"].startswith(OUT_OF_MEMORY) and oom_at is None:
                oom_at = L
            rows.append(row)
            log(format_row(row, max(peaks[_peak_dtype(dtype, cfg.device)])))
    for dt, measured in peaks.items():
        measured.append(matmul_peak(dt, cfg.device))
    meta["loadavg_end"] = os.getloadavg()
    for row in rows:
        if "gflops_fwdbwd" in row:
            row["frac_of_peak"] = row["gflops_fwdbwd"] / max(peaks[_peak_dtype(row["dtype"], cfg.device)])
    result = dict(meta=meta, rows=rows, ratios=ratios(rows), figures=figures(rows) if cfg.device == "cpu" else {})
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(result, indent=1))
    return result


def _checked_peers(rule: str, cfg: BenchConfig, log: Callable[[str], None]) -> List[str]:
    """Names of the installed CPU peers of ``rule`` that agree with fastweights' naive form (float32, d_k = d_v)."""
    found = []
    for name, fn, why_not in peer_impls.available(rule):
        if fn is None:
            log(f"peer {name}: {why_not}")
            continue
        inp = make_inputs(Cell(rule, name, 1, 128, cfg.heads, cfg.dim, cfg.dim, "float32", "cpu"))
        args = [inp[n] for n in ("q", "k", "v", "beta")]
        with torch.no_grad():
            err = (fn(*args) - make_fn(rule, "naive", cfg.chunk_size)(*args)).abs().max().item()
        if err > 1e-3:
            log(f"peer {name}: disagrees with fastweights naive (max |diff| {err:.2e}); not timed")
            continue
        log(f"peer {name}: agrees with fastweights naive (max |diff| {err:.1e})")
        found.append(name)
    return found


def ratios(rows: List[Dict]) -> List[Dict[str, object]]:
    """Per (rule, dtype, d_k, L) with two measured forms or a softmax yardstick: each form's fwd+bwd
    time over the fastest's, ``fla / chunk`` (fwd, fwd+bwd) when both ran, and the softmax
    yardstick's fwd+bwd time (same dtype and L) over the fastest's."""
    measured = [r for r in rows if "fwdbwd_ms" in r]
    softmax = {(r["dtype"], r["L"]): r for r in measured if r["rule"] == SOFTMAX[0]}
    groups: Dict[Tuple, List[Dict]] = {}
    for r in measured:
        if r["rule"] != SOFTMAX[0]:
            groups.setdefault((r["rule"], r["dtype"], r["d_k"], r["L"]), []).append(r)
    out = []
    for (rule, dtype, d_k, L), members in groups.items():
        yardstick = softmax.get((dtype, L))
        if len(members) < 2 and yardstick is None:
            continue
        best = min(members, key=lambda r: r["fwdbwd_ms"])
        by_form = {r["form"]: r for r in members}
        entry: Dict[str, object] = dict(
            rule=rule,
            dtype=dtype,
            d_k=d_k,
            L=L,
            fastest=best["form"],
            fastest_fwdbwd_ms=best["fwdbwd_ms"],
            relative={r["form"]: r["fwdbwd_ms"] / best["fwdbwd_ms"] for r in members},
        )
        if "fla" in by_form and "chunk" in by_form:
            entry["fla_over_chunk"] = {k: by_form["fla"][k] / by_form["chunk"][k] for k in ("fwd_ms", "fwdbwd_ms")}
        if yardstick is not None:
            entry["softmax_over_fastest"] = yardstick["fwdbwd_ms"] / best["fwdbwd_ms"]
        out.append(entry)
    return out


def figures(rows: List[Dict]) -> Dict[str, Optional[float]]:
    """A CPU run's summary figures, from the float32 rows with d_k = d_v: how close the chunk forms
    come to the matmul peak, their speed-up over the naive form, their memory growth in L."""

    def get(rule: str, form: str, L: int, key: str) -> Optional[float]:
        for r in rows:
            cell = (r["rule"], r["form"], r["L"], r["dtype"]) == (rule, form, L, "float32")
            if cell and r["d_k"] == r["d_v"] and key in r:
                return r[key]
        return None

    def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
        return a / b if a is not None and b else None

    return {
        "delta chunk fwd+bwd % of peak at L=8192": _pct(get("delta", "chunk", 8192, "frac_of_peak")),
        "sum chunk fwd+bwd % of peak at L=8192": _pct(get("sum", "chunk", 8192, "frac_of_peak")),
        "delta chunk speed-up over naive at L=2048, fwd+bwd": ratio(
            get("delta", "naive", 2048, "fwdbwd_ms"), get("delta", "chunk", 2048, "fwdbwd_ms")
        ),
        "delta chunk memory L=32768 / L=8192": ratio(
            get("delta", "chunk", 32768, "peak_mb"), get("delta", "chunk", 8192, "peak_mb")
        ),
        "sum chunk memory L=32768 / L=8192": ratio(
            get("sum", "chunk", 32768, "peak_mb"), get("sum", "chunk", 8192, "peak_mb")
        ),
    }


def _pct(x: Optional[float]) -> Optional[float]:
    return None if x is None else 100 * x


HEADER = (
    "| rule | form | dtype | d_k | B | L | fwd ms | fwd+bwd ms | peak MB | GFLOP/s fwd | GFLOP/s fwd+bwd "
    "| % of peak | note |"
)
SEPARATOR = "|---" * (HEADER.count("|") - 1) + "|"


def _ms(x: float) -> str:
    return f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def format_row(r: Dict, peak: float) -> str:
    """One markdown table row (``% of peak`` from the row's ``frac_of_peak``, else against ``peak`` GFLOP/s)."""
    head = f"| {r['rule']} | {r['form']} | {r['dtype']} | {r['d_k']} | {r['B']} | {r['L']} |"
    if "fwd_ms" not in r:
        return f"{head} | | | | | | {r.get('note', '')} |"
    times = f"{head} {_ms(r['fwd_ms'])} | {_ms(r['fwdbwd_ms'])} | {r['peak_mb']:.0f} |"
    if "gflops_fwd" not in r:
        return f"{times} | | | {r.get('note', '')} |"
    frac = r.get("frac_of_peak", r["gflops_fwdbwd"] / peak)
    return f"{times} {r['gflops_fwd']:.0f} | {r['gflops_fwdbwd']:.0f} | {100 * frac:.0f}% | {r.get('note', '')} |"


def setup_line(meta: Dict) -> str:
    """What ran where: device, torch, shapes and the matmul peaks measured so far (start / end)."""
    cfg = meta["config"]
    if meta["device"] == "cuda":
        where = f"cuda: {meta['device_name']}, torch {meta['torch']} (CUDA {meta['cuda']}, TF32 matmul {meta['tf32']})"
    else:
        where = f"cpu: torch {meta['torch']}, {meta['threads']} threads on {meta['cpu_count']} CPUs"
    size = f"B*T = {cfg['tokens']}" if cfg["tokens"] else f"B = {cfg['batch']}"
    n = meta["matmul_size"]
    peaks = ", ".join(f"{dt} " + " / ".join(f"{p:.0f}" for p in ps) for dt, ps in meta["matmul_peak_gflops"].items())
    return (
        f"{where}; H = {cfg['heads']}, d_v = {cfg['dim']}, C = {cfg['chunk_size']}, {size}; "
        f"{n}^3 matmul peak (start / end) {peaks} GFLOP/s; % of peak: against the best "
        + ("peak of the cell's dtype" if meta["device"] == "cuda" else "float32 peak, for every dtype")
    )


def format_ratios(entries: List[Dict]) -> List[str]:
    """One markdown list item per :func:`ratios` entry."""
    lines = []
    for e in entries:
        forms = ", ".join(f"{form} {x:.2f}x" for form, x in sorted(e["relative"].items(), key=lambda kv: kv[1]))
        line = (
            f"- {e['rule']} {e['dtype']} d_k={e['d_k']} L={e['L']}: {forms} "
            f"(fastest {e['fastest']}, {_ms(e['fastest_fwdbwd_ms'])} ms)"
        )
        if "fla_over_chunk" in e:
            fc = e["fla_over_chunk"]
            line += f"; fla / chunk {fc['fwd_ms']:.2f} fwd, {fc['fwdbwd_ms']:.2f} fwd+bwd"
        if "softmax_over_fastest" in e:
            line += f"; softmax sdpa {e['softmax_over_fastest']:.2f}x"
        lines.append(line)
    return lines


def format_table(result: Dict) -> str:
    """The whole result as markdown: setup line, table, ratios, summary figures."""
    m = result["meta"]
    peaks = m["matmul_peak_gflops"]
    lines = [setup_line(m), "", HEADER, SEPARATOR]
    lines += [format_row(r, max(peaks[_peak_dtype(r["dtype"], m["device"])])) for r in result["rows"]]
    if result["ratios"]:
        lines += ["", "fwd+bwd time over the fastest form of the same rule, dtype, d_k and L:", ""]
        lines += format_ratios(result["ratios"])
    if result["figures"]:
        lines.append("")
        lines += [f"- {name}: {'n/a' if x is None else f'{x:.1f}'}" for name, x in result["figures"].items()]
    return "\n".join(lines)


def configure(p: argparse.ArgumentParser) -> None:
    positive = at_least(1)
    """Command-line options of ``fastweights bench ops`` and ``benchmarks/ops.py``."""
    d = BenchConfig()
    cpu, cuda = dict(asdict(d), **DEVICE_DEFAULTS["cpu"]), DEVICE_DEFAULTS["cuda"]

    def per_device(key: str) -> str:
        def show(x: object) -> str:
            return " ".join(map(str, x)) if isinstance(x, list) else str(x)

        return f"(default: {show(cpu[key])} on cpu, {show(cuda[key])} on cuda)"

    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default: cpu)")
    p.add_argument(
        "--rules", nargs="+", choices=list_rules(), default=d.rules, help="update rules (default: sum delta)"
    )
    impls = sorted({b.name for b in list_backends(available=False)})
    p.add_argument(
        "--impls",
        nargs="+",
        choices=impls,
        metavar="IMPL",
        help=f"backends to time, of {', '.join(impls)} (default: every installed one of the rule that runs "
        "on the device, one-token forms excepted); one that cannot run a cell is a skipped row",
    )
    p.add_argument(
        "--lengths", nargs="+", type=positive, metavar="L", help=f"sequence lengths L {per_device('lengths')}"
    )
    size = p.add_mutually_exclusive_group()
    size.add_argument(
        "--batch", type=positive, metavar="B", help=f"batch size B at every length (default on cpu: {d.batch})"
    )
    size.add_argument(
        "--tokens",
        type=positive,
        metavar="N",
        help=f"fix B*T: B = max(1, N // L) at each length (default on cuda: {cuda['tokens']})",
    )
    p.add_argument("--heads", type=positive, help=f"heads H {per_device('heads')}")
    p.add_argument("--dim", type=positive, default=d.dim, help=f"d_v, and d_k unless --dk (default: {d.dim})")
    p.add_argument(
        "--dk",
        dest="d_ks",
        nargs="+",
        type=positive,
        metavar="D_K",
        help="key widths d_k, each a series of rows (default: --dim on cpu; --dim and 4 x --dim, "
        "DPFP-2's width, on cuda)",
    )
    p.add_argument(
        "--chunk-size", type=positive, default=d.chunk_size, help=f"chunk length C (default: {d.chunk_size})"
    )
    p.add_argument(
        "--dtypes",
        "--dtype",
        nargs="+",
        choices=DTYPES,
        metavar="DTYPE",
        help=f"input dtypes, of {', '.join(DTYPES)} {per_device('dtypes')}",
    )
    p.add_argument(
        "--repeat",
        type=positive,
        default=d.repeat,
        help=f"timed repetitions per cell; the median is kept (default: {d.repeat})",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        help=f"skip a cell whose forward+backward is predicted to take longer {per_device('max_seconds')}",
    )
    p.add_argument(
        "--max-parallel",
        type=positive,
        default=d.max_parallel,
        help=f"longest L for the quadratic form (default: {d.max_parallel})",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="cpu: also time fast-transformers / flash-linear-attention's torch references when installed; "
        "cuda: also time softmax attention (sdpa) as a yardstick",
    )
    p.add_argument("--json", help=f"where to write the results {per_device('json')}")


def main(args: argparse.Namespace) -> int:
    """Run :func:`run` from parsed arguments; print the table. A ``ValueError`` (before any work) for
    ``--device cuda`` without CUDA, a ``--max-seconds`` <= 0 or a ``--json`` that cannot be written."""
    check_device(args.device)
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise ValueError(f"--max-seconds must be > 0, got {args.max_seconds}")
    names = {f.name for f in fields(BenchConfig)} - {"device"}
    cfg = configured(args.device, **{n: getattr(args, n) for n in names if hasattr(args, n)})
    if cfg.json:
        check_output_path(cfg.json, "--json")
    result = run(cfg, log=print)
    print("\nResults:\n")
    print(format_table(result))
    if cfg.json:
        print(f"\nwrote {cfg.json}")
    return 0
