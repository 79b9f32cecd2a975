"""flash-linear-attention (``pip install 'fastweights[fla]'``): its Triton chunk kernels on CUDA.

- delta rule: ``fla.ops.delta_rule.chunk_delta_rule`` (bf16/fp16 only: it refuses float32; d_k <= 256);
- gated delta rule: ``fla.ops.gated_delta_rule.chunk_gated_delta_rule``, which takes the same log
  decays ``g`` (``[B, T, H]``, in log space) before ``beta``;
- sum rule: ``fla.ops.linear_attn.chunk_linear_attn`` with its own normalisation off (the sum
  rule's ``normalize`` rides on the value column, see :mod:`fastweights.ops.sum_rule`).

Both take ``[B, T, H, D]``, read ``cu_seqlens`` natively and keep a float32 ``[N, H, d_k, d_v]``
state, as fastweights does. Their default ``scale`` is ``d_k^-1/2``; fastweights' is 1, so it is
always passed. Their half-precision backward needs even widths: an odd ``d_k`` (``d_v``) is padded
with a zero column of q and k (of v and the state), which changes nothing, and cut off again.

Checked against fla-core 0.6 (older releases do not import with Triton 3.9): outputs, final state
and every gradient equal the naive form's in fp16 and (gated delta, sum) fp32, packed sequences and
odd widths included, with FLA's kernels run by Triton's interpreter on the CPU
(``tests/ops/test_fla.py``); on CUDA, by the registry-driven tests.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..call import OpCall, Run
from ..registry import Backend

HALF = (torch.bfloat16, torch.float16)


def _even(x: Optional[Tensor], odd: bool, dim: int = -1) -> Optional[Tensor]:
    """``x`` with one zero column appended along ``dim`` when ``odd``."""
    if x is None or not odd:
        return x
    pad = [0, 0] * (-dim - 1) + [0, 1]
    return F.pad(x, pad)


def _call(kernel: Callable, q: Tensor, k: Tensor, v: Tensor, initial_state: Optional[Tensor], *args, **kwargs):
    """``kernel(q, k, v, *args, initial_state=..., **kwargs)`` on even widths; the result cut back."""
    d_k, d_v = q.shape[-1], v.shape[-1]
    odd_k, odd_v = d_k % 2 == 1, d_v % 2 == 1
    state = _even(_even(initial_state, odd_v), odd_k, dim=-2)  # [N, H, d_k (+1), d_v (+1)]
    o, s_t = kernel(_even(q, odd_k), _even(k, odd_k), _even(v, odd_v), *args, initial_state=state, **kwargs)
    return o[..., :d_v], (s_t[..., :d_k, :d_v] if s_t is not None else None)


def _kernel_args(call: OpCall) -> dict:
    """The keyword arguments every FLA kernel takes from the contract: scale (always passed: FLA's
    default is ``d_k^-1/2``), final state, packed sequences."""
    return dict(scale=call.scale, output_final_state=call.output_final_state, cu_seqlens=call.cu_seqlens)


def _rate(call: OpCall) -> Tensor:
    """``beta`` ``[B, T, H]``, ones where the call has none."""
    return call.beta if call.beta is not None else call.q.new_ones(call.q.shape[:3])


def run_delta(call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
    """``chunk_delta_rule`` under the fastweights contract (``chunk_size`` is FLA's own, 64)."""
    from fla.ops.delta_rule import chunk_delta_rule

    return _call(chunk_delta_rule, call.q, call.k, call.v, call.initial_state, _rate(call), **_kernel_args(call))


def run_gated_delta(call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
    """``chunk_gated_delta_rule`` under the fastweights contract (no ``g``: no decay)."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    g = call.inputs.get("g")
    g = g if g is not None else call.q.new_zeros(call.q.shape[:3])  # [B, T, H]: log 1
    return _call(
        chunk_gated_delta_rule, call.q, call.k, call.v, call.initial_state, g, _rate(call), **_kernel_args(call)
    )


def run_sum(call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
    """``chunk_linear_attn`` (normalisation off) under the fastweights contract; the rule applies the rate."""
    from fla.ops.linear_attn import chunk_linear_attn

    return _call(chunk_linear_attn, call.q, call.k, call.v, call.initial_state, normalize=False, **_kernel_args(call))


def _declare(rule: str, run: Run, **limits: int) -> Backend:
    """FLA's kernel of ``rule``: CUDA, half precision (float32 accumulation), ``cu_seqlens`` native."""
    return Backend(
        "fla",
        rule,
        run,
        devices=("cuda",),
        dtypes=HALF,
        upcast=False,
        native_varlen=True,
        priority=20,
        requires="fla",
        tolerance=2e-2,
        **limits,
    )


BACKENDS = [
    _declare("delta", run_delta, max_d_k=256),
    _declare("gated_delta", run_gated_delta, max_d_k=256),
    _declare("sum", run_sum),
]
