"""How the Triton kernels are launched: block sizes, warps and pipeline stages per GPU, dtype and width.

One source for the backend (:mod:`.chunk` launches these configurations) and for
``fastweights bench kernels`` (which compiles them ahead of time for a chosen GPU architecture and
reads their registers, spills and shared memory, with no GPU). A configuration must *fit*: no
registers spilled to local memory and dynamic shared memory within the architecture's per-block
limit (:data:`SHARED_LIMIT`).

:func:`plan` lists each kernel's candidates, the preferred first (set per architecture family from
offline measurements: the chunk length ``BT`` is the caller's 16, 32 or 64 within the limits below,
keys are visited in blocks of ``BK = min(64, width(d_k))``, ``NK`` blocks of a scan's state held in
registers, values in blocks of ``BV``), then variants with other warps, stages and value blocks. On
a GPU the first candidate that fits is launched (:mod:`.fit`); nothing is tuned for speed yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Dict, List

import torch
import triton

#: Largest dynamic shared memory one block may use, per compute capability (CUDA C programming guide,
#: "Technical specifications per compute capability"): sm_80/sm_87 163 KB, sm_86/sm_89 99 KB, sm_90 227 KB.
SHARED_LIMIT = {80: 166_912, 86: 101_376, 87: 166_912, 89: 101_376, 90: 232_448}
MAX_REGISTERS = 255  #: per thread
MAX_WIDTH = 256  #: largest d_k and d_v the kernels take

#: Kernel arguments that are float32 (log decays and their gradient, states, ``L^-1``, the WY backward's
#: buffers) or int32; every other
#: pointer has the input dtype. The scalars: ``scale`` is a float, ``H``, ``K``, ``V`` ints.
FLOAT32_ARGS = frozenset({"g", "dg", "dgl", "linv", "h0", "hs", "ht", "dht", "dhs", "dh0", "ndw", "dkp"})
INT32_ARGS = frozenset({"chunk_indices", "chunk_offsets", "cu_seqlens"})
SCALAR_ARGS = {"scale": "fp32", "H": "i32", "K": "i32", "V": "i32", "NKB": "i32"}
POINTER_TYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass(frozen=True)
class KernelConfig:
    """One kernel's launch: compile-time constants (block sizes), warps, pipeline stages."""

    kernel: str
    constexprs: Dict[str, object] = field(hash=False)
    num_warps: int
    num_stages: int

    def kwargs(self) -> dict:
        """Keyword arguments of the launch: ``kernel[grid](*args, **flags, **config.kwargs())``."""
        return dict(self.constexprs, num_warps=self.num_warps, num_stages=self.num_stages)


def width(d: int) -> int:
    """A feature width padded to the power of two >= 16 the kernels work on."""
    return max(16, triton.next_power_of_2(d))


def chunk_length(chunk_size: int) -> int:
    """The chunk length the kernels use: ``chunk_size`` if a power of two in [16, 64], else 64."""
    return chunk_size if chunk_size in (16, 32, 64) else 64


def kernel_chunk(dtype: torch.dtype, d_k: int, chunk_size: int, capability: int) -> int:
    """The chunk length ``BT`` every kernel of a call uses (and the host's chunk bookkeeping with them):
    ``chunk_length(chunk_size)``, at most 32 in fp32 (16 when d_k > 64: IEEE products hold both
    operands in registers) and below sm_90 (the ``[BT, BT]`` float32 tiles of ``wy_bwd`` and
    ``grads_qk`` spill at 64 on sm_80's register budget)."""
    BT = chunk_length(chunk_size)
    if dtype == torch.float32:
        return min(BT, 32 if d_k <= 64 else 16)
    return BT if family(capability) == 90 else min(BT, 32)


def family(capability: int) -> int:
    """The architecture whose configurations a device of ``capability`` (e.g. 89) uses: 90 (Hopper
    and newer), 80 (sm_80, sm_87: 163 KB of shared memory) or 86 (sm_86, sm_89: 99 KB)."""
    if capability >= 90:
        return 90
    return 86 if SHARED_LIMIT.get(capability, 101_376) < 166_912 else 80


def plan(
    delta: bool, dtype: torch.dtype, d_k: int, d_v: int, chunk_size: int = 64, capability: int = 90, gated: bool = False
) -> Dict[str, List[KernelConfig]]:
    """The candidate configurations of every kernel a forward and backward of the sum
    (``delta=False``), delta or gated delta (``gated``) rule launches for ``[.., d_k]`` keys and
    ``[.., d_v]`` values of ``dtype`` on a GPU of compute capability ``capability`` (``90`` for
    sm_90), the preferred first (:func:`preferred`); on a GPU the first that fits is launched
    (:mod:`.fit`), under the interpreter the preferred one.

    The chunk length is :func:`kernel_chunk`'s (the result does not depend on it). bf16/fp16 products
    run on tensor cores; scans with more than one key block use 16-column value blocks and no
    software pipelining. fp32 inputs take IEEE float32 products, which Triton builds from FMA
    instructions that hold both operands in registers: 8 warps, one pipeline stage and 16-column
    value blocks in the scans.
    Checked by ``fastweights bench kernels``."""
    arch = family(capability)
    f32 = dtype == torch.float32
    BK = min(64, width(d_k))
    NK = triton.cdiv(d_k, BK)
    BT = kernel_chunk(dtype, d_k, chunk_size, capability)
    common = dict(BT=BT, BK=BK, GATED=gated, PRECISION="ieee" if f32 else "tf32")
    if f32:
        scan = dict(common, BV=16, NK=NK)
        local = dict(common, BV=min(32, width(d_v)))
        warps, stages, grad_bv, grad_stages = 8, 1, 16, 1
        scan_warps = 4 if BK <= 16 else 8
        scan_stages = 2 if arch == 90 and NK > 1 else 1
    else:
        scan = dict(common, BV=min(16 if NK > 1 else 32, width(d_v)), NK=NK)
        local = dict(common, BV=min(64 if width(d_v) <= 64 and NK == 1 else 32, width(d_v)))
        warps, stages = 4, 2
        scan_warps, scan_stages = 4, 1 if NK > 1 or BK <= 16 or gated or (arch == 86 and BK <= 32) else 2
        grad_bv, grad_stages = (local["BV"], 2) if arch == 90 else (32, 3)
    wide_warps = 8 if BT == 64 or f32 else 4  # kernels that hold several [BT, BT] float32 tiles
    configs = {
        "state_fwd": KernelConfig("state_fwd", dict(scan, DELTA=delta), scan_warps, scan_stages),
        "output_fwd": KernelConfig("output_fwd", local, warps, stages),
        "dv_local": KernelConfig("dv_local", local, warps, stages),
        "state_bwd": KernelConfig("state_bwd", dict(scan, DELTA=delta), scan_warps, scan_stages),
        "grads_qk": KernelConfig(
            "grads_qk", dict(common, BV=min(grad_bv, width(d_v)), DELTA=delta), wide_warps, grad_stages
        ),
    }
    if delta:
        configs["wy_fwd"] = KernelConfig("wy_fwd", local, warps, stages)
        configs["wy_bwd"] = KernelConfig("wy_bwd", local, wide_warps, 1 if gated else stages)
    return {name: _candidates(config) for name, config in configs.items()}


def _candidates(preferred: KernelConfig) -> List[KernelConfig]:
    """``preferred``, then the same blocks with 8 or 4 warps and 1 to 3 pipeline stages, then all of
    those with 16-column value blocks (where wider): what is tried, in order, until one fits."""
    bvs = [preferred.constexprs["BV"]] + ([16] if preferred.constexprs["BV"] > 16 else [])
    out = [preferred]
    for bv in bvs:
        for warps in (8, 4):
            for stages in (1, 2, 3):
                config = replace(
                    preferred, constexprs=dict(preferred.constexprs, BV=bv), num_warps=warps, num_stages=stages
                )
                if config not in out:
                    out.append(config)
    return out


def preferred(
    delta: bool, dtype: torch.dtype, d_k: int, d_v: int, chunk_size: int = 64, capability: int = 90, gated: bool = False
) -> Dict[str, KernelConfig]:
    """The first candidate of each kernel (what runs under the interpreter)."""
    return {name: options[0] for name, options in plan(delta, dtype, d_k, d_v, chunk_size, capability, gated).items()}


def signature(fn: triton.JITFunction, dtype: torch.dtype, constexprs: Dict[str, object]) -> Dict[str, str]:
    """The argument types a launch of kernel ``fn`` on ``dtype`` inputs has (for ahead-of-time compiling)."""
    types = {}
    for name in fn.arg_names:
        if name in constexprs:
            types[name] = "constexpr"
        elif name in SCALAR_ARGS:
            types[name] = SCALAR_ARGS[name]
        elif name in INT32_ARGS:
            types[name] = "*i32"
        else:
            types[name] = "*fp32" if name in FLOAT32_ARGS else "*" + POINTER_TYPE[dtype]
    return types
