"""Kernel fitness: choose, ahead of time, the launch configuration of every Triton kernel the backend runs.

No GPU is needed: for each kernel the backend's candidates (:func:`fastweights.ops._triton.launch.plan`:
block sizes, warps, pipeline stages; the preferred first) are compiled by Triton for a target
architecture (``--arch sm_80,sm_90``) in order until one fits, exactly as the backend chooses on a
GPU (:mod:`fastweights.ops._triton.fit`); resources are read from the ``ptxas`` Triton runs (``-v``).
One row per kernel, for the configuration chosen::

    candidate   which of the kernel's candidates was chosen (1: the preferred one)
    registers   per thread (at most 255)
    spilled B   bytes of registers spilled to local memory per thread (ptxas's spill stores; 0 to fit)
    shared B    dynamic shared memory per block; the arch's limit beside it
    fits        yes: no spills and shared memory within the limit. no: no candidate fits (the row shows
                the preferred one), and the backend declines these inputs (``impl="auto"`` takes torch)

The limits are the documented per-block maxima: sm_80 166,912 B, sm_86/sm_89 101,376 B, sm_90
232,448 B. Flags that vary per call (initial state, final state) are compiled on, their most demanding
setting. Results are cached per kernel source, Triton version, configuration and shape
(``--cache-dir``, shared with the backend), so a second run only compiles what changed. Exit status
1 when any row does not fit.

Examples:
  fastweights bench kernels --arch sm_90 --dtype bf16 --dk 64
  fastweights bench kernels --arch sm_80,sm_90 --dtype bf16,fp16,fp32 --dk 16,32,64,128,256 --json fit.json
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..cli.arguments import check_output_path
from ..ops._triton import default_cache_dir

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
ARCHS = (80, 86, 89, 90)
RULES = {"sum": dict(delta=False), "delta": dict(delta=True), "gated_delta": dict(delta=True, gated=True)}
WIDTHS = (16, 32, 64, 128, 256)


@dataclass(frozen=True)
class Job:
    """One kernel to choose a configuration for: the rule's kernel ``kernel`` for ``dtype`` inputs of
    widths d_k, d_v on ``arch``."""

    rule: str
    kernel: str
    arch: int
    dtype: str
    d_k: int
    d_v: int
    chunk: int
    override: Tuple[Tuple[str, object], ...] = ()  #: settings replacing the preferred candidate's; no others tried


@dataclass
class Row:
    """The configuration the backend would launch (the first candidate that fits) and its resources."""

    kernel: str
    rule: str
    arch: str
    dtype: str
    d_k: int
    d_v: int
    chunk: int
    choice: str
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


def _candidates(job: Job) -> list:
    import torch

    from ..ops._triton.launch import plan

    candidates = plan(
        dtype=getattr(torch, DTYPES[job.dtype]),
        d_k=job.d_k,
        d_v=job.d_v,
        chunk_size=job.chunk,
        capability=job.arch,
        **RULES[job.rule],
    )[job.kernel]
    if not job.override:
        return candidates
    options, first = dict(job.override), candidates[0]
    return [
        replace(
            first,
            constexprs={k: options.get(k, v) for k, v in first.constexprs.items()},
            num_warps=options.get("num_warps", first.num_warps),
            num_stages=options.get("num_stages", first.num_stages),
        )
    ]


def compile_job(job: Job, cache_dir: Optional[str]) -> Row:
    """Choose ``job``'s configuration as the backend does on a GPU of its arch (compiling its candidates
    in order, or reading them from ``cache_dir``) and return its row."""
    _triton_environment()
    import torch

    from ..ops._triton.fit import choose

    candidates = _candidates(job)
    index, config, res = choose(
        job.kernel,
        candidates,
        getattr(torch, DTYPES[job.dtype]),
        job.d_k,
        job.d_v,
        job.arch,
        Path(cache_dir) if cache_dir else None,
    )
    blocks = " ".join(f"{k}={config.constexprs[k]}" for k in ("BT", "BK", "BV", "NK") if k in config.constexprs)
    return Row(
        job.kernel,
        job.rule,
        f"sm_{job.arch}",
        job.dtype,
        job.d_k,
        job.d_v,
        job.chunk,
        f"{index + 1} of {len(candidates)}",
        config.num_warps,
        config.num_stages,
        blocks,
        res.registers,
        res.spilled,
        res.shared,
        res.limit,
        res.fits,
    )


def jobs(
    archs: Sequence[int],
    dtypes: Sequence[str],
    d_ks: Sequence[int],
    d_vs: Optional[Sequence[int]],
    rules: Sequence[str],
    chunk: int,
) -> List[Job]:
    """Every kernel of every rule for each combination (d_v = d_k where ``d_vs`` is None)."""
    import torch

    from ..ops._triton.launch import plan

    out = []
    for arch in archs:
        for dtype in dtypes:
            for d_k in d_ks:
                for d_v in d_vs if d_vs is not None else [d_k]:
                    for rule in rules:
                        names = plan(
                            dtype=getattr(torch, DTYPES[dtype]),
                            d_k=d_k,
                            d_v=d_v,
                            chunk_size=chunk,
                            capability=arch,
                            **RULES[rule],
                        )
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
    head = [
        "kernel",
        "rule",
        "arch",
        "dtype",
        "d_k",
        "d_v",
        "candidate",
        "warps",
        "stages",
        "blocks",
        "registers",
        "spilled B",
        "shared B",
        "limit B",
        "fits",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r.kernel,
            r.rule,
            r.arch,
            r.dtype,
            r.d_k,
            r.d_v,
            r.choice,
            r.num_warps,
            r.num_stages,
            r.blocks,
            r.registers,
            f"{r.spilled:,}",
            f"{r.shared:,}",
            f"{r.limit:,}",
            "yes" if r.fits else "**no**",
        ]
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
    p.add_argument(
        "--arch",
        type=_list(_arch),
        nargs="+",
        default=[[80, 90]],
        help="target GPU architectures, comma-separated: sm_80, sm_86, sm_89, sm_90 (default sm_80,sm_90)",
    )
    p.add_argument(
        "--dtype",
        type=_list(_choice(tuple(DTYPES))),
        nargs="+",
        default=[["bf16", "fp16", "fp32"]],
        help="input dtypes: bf16, fp16, fp32 (default all three)",
    )
    p.add_argument(
        "--dk",
        type=_list(_width),
        nargs="+",
        default=[list(WIDTHS)],
        help="key widths 1..256 (default 16,32,64,128,256)",
    )
    p.add_argument(
        "--dv", type=_list(_width), nargs="+", default=None, help="value widths (default: d_v = d_k for each d_k)"
    )
    p.add_argument(
        "--rules",
        type=_list(_choice(tuple(RULES))),
        nargs="+",
        default=[list(RULES)],
        help="rules with kernels: sum, delta, gated_delta (default all three)",
    )
    p.add_argument("--chunk-size", type=int, choices=(16, 32, 64), default=64, help="chunk length (default 64)")
    p.add_argument(
        "--workers",
        type=int,
        default=max(1, min(4, os.cpu_count() or 1)),
        help="compiling processes (default: CPU cores, at most 4)",
    )
    p.add_argument(
        "--cache-dir",
        default=str(default_cache_dir()),
        help="where compiled results are kept (default ~/.cache/fastweights/kernels); '' for none",
    )
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")


def _flatten(groups) -> list:
    return [x for group in groups for x in group]


def main(args: argparse.Namespace) -> int:
    """Compile, print the table and a summary; exit 1 when any kernel does not fit."""
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.json:
        check_output_path(args.json, "--json")
    job_list = jobs(
        _flatten(args.arch),
        _flatten(args.dtype),
        _flatten(args.dk),
        _flatten(args.dv) if args.dv else None,
        _flatten(args.rules),
        args.chunk_size,
    )
    rows = run(job_list, args.workers, args.cache_dir or None)
    print(format_table(rows))
    bad = [r for r in rows if not r.fits]
    print(
        f"\n{len(rows) - len(bad)} of {len(rows)} kernels fit (no spills, shared memory within the limit)"
        + (f"; {len(bad)} do not" if bad else "")
    )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in rows], indent=1) + "\n")
        print(f"wrote {args.json}")
    return 1 if bad else 0
