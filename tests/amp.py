"""CUDA-like autocast on the CPU: what made the delta LM crash on bf16 GPUs, reproduced without one.

CUDA autocast runs reductions and exponentials (``sum``, ``normalize``, ``exp``, ``cumsum``,
``softmax``, ``norm``, ``pow``) in float32, while matmuls come out in bf16; CPU autocast keeps those
ops in bf16, so CPU tests under plain ``torch.autocast("cpu")`` never see mixed dtypes.
:func:`cuda_like_autocast` is CPU bf16 autocast plus a ``TorchFunctionMode`` that returns those
ops' half-precision results in float32.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

UPCAST = {
    torch.sum,
    torch.Tensor.sum,
    F.normalize,
    torch.exp,
    torch.Tensor.exp,
    torch.cumsum,
    torch.Tensor.cumsum,
    torch.softmax,
    F.softmax,
    torch.Tensor.softmax,
    F.log_softmax,
    torch.norm,
    torch.Tensor.norm,
    torch.linalg.vector_norm,
    torch.pow,
    torch.Tensor.pow,
    torch.Tensor.__pow__,
}


class _UpcastLikeCuda(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in UPCAST and isinstance(out, torch.Tensor) and out.dtype in (torch.bfloat16, torch.float16):
            return out.float()
        return out


@contextlib.contextmanager
def cuda_like_autocast(dtype: torch.dtype = torch.bfloat16) -> Iterator[None]:
    """CPU autocast to ``dtype`` with CUDA's float32 reductions and exponentials."""
    with torch.autocast("cpu", dtype=dtype), _UpcastLikeCuda():
        yield
