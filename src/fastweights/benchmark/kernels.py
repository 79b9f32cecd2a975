"""Kernel fitness: compile every Triton kernel the backend launches, ahead of time, and read its resources.

No GPU is needed: each kernel is compiled by Triton for a target architecture (``--arch sm_80,sm_90``)
with exactly the configuration the backend would launch for those inputs
(:func:`fastweights.ops._triton.launch.plan`: block sizes, warps, pipeline stages), and the cubin's
resources are read from the ``ptxas`` bundled in the Triton wheel (``-v``), the one Triton runs. One row per kernel::

    registers   per thread (at most 255)
    spilled B   bytes of registers spilled to local memory per thread (ptxas's spill stores; 0 to fit)
    shared B    dynamic shared memory per block; the arch's limit beside it
    fits        yes: no spills and shared memory within the limit (the kernel launches at full speed)

The limits are the documented per-block maxima: sm_80 166,912 B, sm_86/sm_89 101,376 B, sm_90
232,448 B. Flags that vary per call (initial state, final state) are compiled on, their most demanding
setting. Results are cached per kernel source, Triton version and configuration (``--cache-dir``),
so a second run only compiles what changed. Exit status 1 when any row does not fit.

Examples:
  fastweights bench kernels --arch sm_90 --dtype bf16 --dk 64
  fastweights bench kernels --arch sm_80,sm_90 --dtype bf16,fp16,fp32 --dk 16,32,64,128,256 --json fit.json
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..arguments import check_output_path

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
ARCHS = (80, 86, 89, 90)
RULES = {"sum": dict(delta=False), "delta": dict(delta=True), "gated_delta": dict(delta=True, gated=True)}
WIDTHS = (16, 32, 64, 128, 256)
#: per-call flags, compiled at their most demanding setting
FLAGS = {"HAS_H0": True, "STORE_FINAL": True, "HAS_DHT": True}


@dataclass(frozen=True)
class Job:
    """One kernel to compile: the rule's kernel ``kernel`` for ``dtype`` inputs of widths d_k, d_v on ``arch``."""

    rule: str
    kernel: str
    arch: int
    dtype: str
    d_k: int
    d_v: int
    chunk: int
    override: Tuple[Tuple[str, object], ...] = ()  #: settings replacing the plan's (``num_warps``, ``BV``, ...)


@dataclass
class Row:
    """A compiled kernel's configuration and resources."""

    kernel: str
    rule: str
    arch: str
    dtype: str
    d_k: int
    d_v: int
    chunk: int
    num_warps: int
    num_stages: int
    blocks: str
    registers: int
    spilled: int
    shared: int
    limit: int
    fits: bool


def _triton_environment() -> None:
    """Triton must compile, not interpret: a worker drops ``TRITON_INTERPRET`` before importing the kernels."""
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated to silence its warning


def _config(job: Job):
    import torch

    from ..ops._triton.launch import KernelConfig, plan

    config = plan(dtype=getattr(torch, DTYPES[job.dtype]), d_k=job.d_k, d_v=job.d_v, chunk_size=job.chunk,
                  capability=job.arch, **RULES[job.rule])[job.kernel]
    if not job.override:
        return config
    options = dict(job.override)
    return KernelConfig(config.kernel, {k: options.get(k, v) for k, v in config.constexprs.items()},
                        options.get("num_warps", config.num_warps), options.get("num_stages", config.num_stages))


def _source_key(job: Job) -> str:
    """Cache key: the kernels' and this module's source, Triton's version, the job and its configuration."""
    import triton

    from ..ops._triton import backward, blocks, common, forward, launch

    h = hashlib.sha256()
    for module in (common, blocks, forward, backward, launch, sys.modules[__name__]):  # this module: how it measures
        h.update(inspect.getsource(module).encode())
    config = _config(job)
    h.update(repr((triton.__version__, asdict(job), sorted(config.constexprs.items()), config.num_warps,
                   config.num_stages)).encode())
    return h.hexdigest()[:32]


def _ptxas_usage(ptx: str, arch: int) -> Tuple[int, int]:
    """Registers per thread and bytes of spill stores that Triton's own ptxas reports for ``ptx``
    (the command Triton runs to make the cubin, with ``-v``)."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [get_ptxas(arch).path, "-lineinfo", "-v", "--regAllocOptLevel=2",
               f"--gpu-name={sm_arch_from_capability(arch)}", str(src), "-o", str(Path(tmp) / "kernel.cubin")]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    if registers is None or spills is None:
        raise RuntimeError(f"ptxas reported no register usage: {log!r}")
    return int(registers.group(1)), int(spills.group(1))


def compile_job(job: Job, cache_dir: Optional[str]) -> Row:
    """Compile ``job`` for its arch (or read the cache) and return its row."""
    _triton_environment()
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from ..ops._triton.chunk import KERNELS
    from ..ops._triton.launch import SHARED_LIMIT, signature

    config = _config(job)
    cache = Path(cache_dir) / f"{_source_key(job)}.json" if cache_dir else None
    if cache is not None and cache.exists():
        return Row(**json.loads(cache.read_text()))
    fn = KERNELS[job.kernel]
    if not isinstance(fn, triton.JITFunction):
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1; run bench kernels without it")
    constexprs = dict(config.constexprs, **{f: v for f, v in FLAGS.items() if f in fn.arg_names})
    sig = signature(fn, getattr(torch, DTYPES[job.dtype]), constexprs)
    ints = {"H": 16, "K": job.d_k, "V": job.d_v}  # a launch specialises ints divisible by 16 and aligned pointers
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names)
             if sig[name].startswith("*") or (name in ints and ints[name] % 16 == 0)}
    src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", job.arch, 32),
                              options=dict(num_warps=config.num_warps, num_stages=config.num_stages))
    registers, spilled = _ptxas_usage(compiled.asm["ptx"], job.arch)
    shared = compiled.metadata.shared
    limit = SHARED_LIMIT[job.arch]
    blocks = " ".join(f"{k}={config.constexprs[k]}" for k in ("BT", "BK", "BV", "NK") if k in config.constexprs)
    row = Row(job.kernel, job.rule, f"sm_{job.arch}", job.dtype, job.d_k, job.d_v, job.chunk, config.num_warps,
              config.num_stages, blocks, registers, spilled, shared, limit,
              fits=spilled == 0 and shared <= limit and registers * 32 * config.num_warps <= 65_536)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = cache.with_suffix(".tmp")
        tmp_path.write_text(json.dumps(asdict(row)))
        tmp_path.replace(cache)
    return row


def jobs(archs: Sequence[int], dtypes: Sequence[str], d_ks: Sequence[int], d_vs: Optional[Sequence[int]],
         rules: Sequence[str], chunk: int) -> List[Job]:
    """Every kernel of every rule for each combination (d_v = d_k where ``d_vs`` is None)."""
    import torch

    from ..ops._triton.launch import plan

    out = []
    for arch in archs:
        for dtype in dtypes:
            for d_k in d_ks:
                for d_v in (d_vs if d_vs is not None else [d_k]):
                    for rule in rules:
                        names = plan(dtype=getattr(torch, DTYPES[dtype]), d_k=d_k, d_v=d_v, chunk_size=chunk, capability=arch,
                                     **RULES[rule])
                        out += [Job(rule, name, arch, dtype, d_k, d_v, chunk) for name in sorted(names)]
    return out


def run(job_list: Sequence[Job], workers: int = 1, cache_dir: Optional[str] = None, progress: bool = True) -> List[Row]:
    """Compile every job (in ``workers`` processes, spawned without ``TRITON_INTERPRET``) and return the rows."""
    from tqdm import tqdm

    saved = os.environ.pop("TRITON_INTERPRET", None)  # the spawned workers inherit the environment
    try:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(compile_job, job, cache_dir) for job in job_list]
            return [f.result() for f in tqdm(futures, desc="compiling kernels", unit="kernel", disable=not progress)]
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


def format_table(rows: Sequence[Row]) -> str:
    """A markdown table of the rows."""
    head = ["kernel", "rule", "arch", "dtype", "d_k", "d_v", "warps", "stages", "blocks", "registers",
            "spilled B", "shared B", "limit B", "fits"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.kernel, r.rule, r.arch, r.dtype, r.d_k, r.d_v, r.num_warps, r.num_stages, r.blocks, r.registers,
                 f"{r.spilled:,}", f"{r.shared:,}", f"{r.limit:,}", "yes" if r.fits else "**no**"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _list(kind):
    """An argparse type for a comma-separated list of ``kind(item)`` values (``sm_80,sm_90``)."""
    def parse(text: str) -> list:
        values = []
        for item in filter(None, text.split(",")):
            try:
                values.append(kind(item))
            except ValueError as e:
                raise argparse.ArgumentTypeError(f"{item!r} {e}") from None
        return values
    return parse


def _choice(choices: Sequence[str]):
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"is not one of {', '.join(choices)}")
        return text
    return parse


def _arch(text: str) -> int:
    digits = text.lower().removeprefix("sm_")
    if not digits.isdigit() or int(digits) not in ARCHS:
        raise ValueError(f"is not one of {', '.join(f'sm_{a}' for a in ARCHS)}")
    return int(digits)


def _width(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise ValueError("is not a width in 1..256")
    return int(text)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", type=_list(_arch), nargs="+", default=[[80, 90]],
                   help="target GPU architectures, comma-separated: sm_80, sm_86, sm_89, sm_90 (default sm_80,sm_90)")
    p.add_argument("--dtype", type=_list(_choice(tuple(DTYPES))), nargs="+", default=[["bf16", "fp16", "fp32"]],
                   help="input dtypes: bf16, fp16, fp32 (default all three)")
    p.add_argument("--dk", type=_list(_width), nargs="+", default=[list(WIDTHS)],
                   help="key widths 1..256 (default 16,32,64,128,256)")
    p.add_argument("--dv", type=_list(_width), nargs="+", default=None,
                   help="value widths (default: d_v = d_k for each d_k)")
    p.add_argument("--rules", type=_list(_choice(tuple(RULES))), nargs="+", default=[list(RULES)],
                   help="rules with kernels: sum, delta, gated_delta (default all three)")
    p.add_argument("--chunk-size", type=int, choices=(16, 32, 64), default=64, help="chunk length (default 64)")
    p.add_argument("--workers", type=int, default=max(1, min(4, os.cpu_count() or 1)),
                   help="compiling processes (default: CPU cores, at most 4)")
    p.add_argument("--cache-dir", default=str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                             / "fastweights" / "kernels"),
                   help="where compiled results are kept (default ~/.cache/fastweights/kernels); '' for none")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def _flatten(groups) -> list:
    return [x for group in groups for x in group]


def main(args: argparse.Namespace) -> int:
    """Compile, print the table and a summary; exit 1 when any kernel does not fit."""
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.json:
        check_output_path(args.json, "--json")
    job_list = jobs(_flatten(args.arch), _flatten(args.dtype), _flatten(args.dk),
                    _flatten(args.dv) if args.dv else None, _flatten(args.rules), args.chunk_size)
    rows = run(job_list, args.workers, args.cache_dir or None)
    print(format_table(rows))
    bad = [r for r in rows if not r.fits]
    print(f"\n{len(rows) - len(bad)} of {len(rows)} kernels fit (no spills, shared memory within the limit)"
          + (f"; {len(bad)} do not" if bad else ""))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
        print(f"wrote {args.json}")
    return 1 if bad else 0
