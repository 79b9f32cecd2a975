"""flash-linear-attention (``pip install 'fastweights[fla]'``): its Triton chunk kernels on CUDA.

- delta rule: ``fla.ops.delta_rule.chunk_delta_rule`` (bf16/fp16 only: it refuses float32; d_k <= 256);
- sum rule: ``fla.ops.linear_attn.chunk_linear_attn`` with its own normalisation off (the sum
  rule's ``normalize`` rides on the value column, see :mod:`fastweights.ops.sum_rule`).

Both take ``[B, T, H, D]``, read ``cu_seqlens`` natively and keep a float32 ``[N, H, d_k, d_v]``
state, as fastweights does. Their default ``scale`` is ``d_k^-1/2``; fastweights' is 1, so it is
always passed. Their half-precision backward needs even ``d_v``: an odd one is padded with a zero
column (which stays zero) and cut off again.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Backend

HALF = (torch.bfloat16, torch.float16)


def _even_columns(v: Tensor, initial_state: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor], int]:
    """Pad ``v`` (and the state) to an even ``d_v``; returns them and the original ``d_v``."""
    d_v = v.shape[-1]
    if d_v % 2 == 0:
        return v, initial_state, d_v
    state = F.pad(initial_state, (0, 1)) if initial_state is not None else None
    return F.pad(v, (0, 1)), state, d_v


def run_delta(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], scale: float, initial_state: Optional[Tensor],
              output_final_state: bool, cu_seqlens: Optional[Tensor], chunk_size: int) -> Tuple[Tensor, Optional[Tensor]]:
    """``chunk_delta_rule`` under the fastweights contract (``chunk_size`` is FLA's own, 64)."""
    from fla.ops.delta_rule import chunk_delta_rule

    if beta is None:
        beta = q.new_ones(q.shape[:3])  # [B, T, H]
    v, state, d_v = _even_columns(v, initial_state)
    o, s_t = chunk_delta_rule(q, k, v, beta, scale=scale, initial_state=state, output_final_state=output_final_state,
                              cu_seqlens=cu_seqlens)
    return o[..., :d_v], (s_t[..., :d_v] if s_t is not None else None)


def run_sum(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], scale: float, initial_state: Optional[Tensor],
            output_final_state: bool, cu_seqlens: Optional[Tensor], chunk_size: int) -> Tuple[Tensor, Optional[Tensor]]:
    """``chunk_linear_attn`` (normalisation off) under the fastweights contract; the rule applies the rate."""
    from fla.ops.linear_attn import chunk_linear_attn

    v, state, d_v = _even_columns(v, initial_state)
    o, s_t = chunk_linear_attn(q, k, v, scale=scale, initial_state=state, output_final_state=output_final_state,
                               normalize=False, cu_seqlens=cu_seqlens)
    return o[..., :d_v], (s_t[..., :d_v] if s_t is not None else None)


BACKENDS = [
    Backend("fla", "delta", run_delta, devices=("cuda",), dtypes=HALF, upcast=False, native_varlen=True,
            max_d_k=256, priority=20, requires="fla", tolerance=2e-2),
    Backend("fla", "sum", run_sum, devices=("cuda",), dtypes=HALF, upcast=False, native_varlen=True,
            priority=20, requires="fla", tolerance=2e-2),
]
