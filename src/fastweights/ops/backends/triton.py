"""fastweights' own Triton kernels of the chunkwise sum, delta and gated delta rules (``impl="triton"``).

Kernels in :mod:`fastweights.ops._triton` (forward and hand-derived backward, the delta rule in the
WY/UT form, packed sequences read natively, memory linear in T). They run on CUDA GPUs of compute
capability 8.0 or newer (an older GPU is refused, and ``impl="auto"`` takes the torch path) in
bf16, fp16 or fp32 (fp32 accumulation, fp32 state), with d_k, d_v <= 256, each kernel launched with
the first of the configurations :func:`fastweights.ops._triton.launch.plan` lists that fits the GPU
(measured by compiling it, once per shape; ``fastweights bench kernels`` shows the same offline). A
shape for which some kernel has no fitting configuration is declined the same way. With
``TRITON_INTERPRET=1`` set before Triton is imported, Triton's interpreter runs them on CPU tensors
(fp32/fp16; slow, for tests): the backend then declares the CPU too, as ``emulated``, which
``impl="auto"`` never picks.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Optional

import torch

from ..call import OpCall
from ..registry import Backend

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
MAX_WIDTH = 256  #: largest d_k and d_v the kernels take (as in ``_triton.launch``, which needs Triton)
MIN_CAPABILITY = (8, 0)  #: bf16 tensor-core products


def _check(q: torch.Tensor, d_v: int, delta: bool, gated: bool) -> Optional[str]:
    """The GPU must be sm_80 or newer, and every kernel must have a launch configuration that fits it
    (measured once per shape: :mod:`fastweights.ops._triton.fit`)."""
    if q.device.type != "cuda":
        return None
    capability = torch.cuda.get_device_capability(q.device)
    if capability < MIN_CAPABILITY:
        return f"its kernels need a GPU of compute capability 8.0 or newer, this one is {capability[0]}.{capability[1]}"
    from .._triton.fit import unfit

    return unfit(delta, gated, q.dtype, q.shape[-1], d_v, 10 * capability[0] + capability[1])


def _run(call: OpCall, delta: bool):
    from .._triton.chunk import run

    return run(call, delta=delta)


def _declare(rule: str, delta: bool, gated: bool = False) -> Backend:
    return Backend(
        "triton",
        rule,
        partial(_run, delta=delta),
        devices=("cuda", "cpu") if INTERPRETED else ("cuda",),
        dtypes=(torch.float16, torch.bfloat16, torch.float32) if not INTERPRETED else (torch.float16, torch.float32),
        upcast=False,
        native_varlen=True,
        max_d_k=MAX_WIDTH,
        max_d_v=MAX_WIDTH,
        emulated=INTERPRETED,
        priority=15,
        requires="triton",
        tolerance=1e-4,
        check=partial(_check, delta=delta, gated=gated),
    )


BACKENDS = [_declare("sum", False), _declare("delta", True), _declare("gated_delta", True, gated=True)]
