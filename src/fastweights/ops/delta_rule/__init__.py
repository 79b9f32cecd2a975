"""Delta rule (DeltaNet): ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T``, ``o_t = S_t^T q_t``.

``normalize=True`` is the attention-normalised variant of Schlag et al. (2021): with the running
key sum ``z_t = z_{t-1} + k_t`` and ``c_t = z_{t-1} . k_t`` (1 while ``z`` is empty), the update
uses the rate ``beta_t c_t`` and the key ``k_t / (c_t + eps)``, and the output is divided by
``z_t . q_t + eps``. ``z`` is kept as one more (last) column of the state.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..call import OpCall, Run
from ..registry import RuleSpec
from ..torch_form import torch_form
from .chunk import chunk_core
from .naive import naive_core
from .step import step_core


def exclusive_key_sums(k: Tensor, z0: Optional[Tensor], cu: Optional[Sequence[int]]) -> Tuple[Tensor, Tensor]:
    """``z_{t-1} = z_0 + sum_{i<t} k_i`` per sequence, in float32 (float64 stays), and the final ``z``.

    ``k: [B, T, H, d_k]``, ``z0: [N, H, d_k]`` or None, ``cu``: cumulative lengths of packed
    sequences (``B = 1``) or None. Returns ``([B, T, H, d_k], [N, H, d_k])``.
    """
    kf = k if k.dtype == torch.float64 else k.float()
    excl = kf.cumsum(1) - kf  # [B, T, H, d_k]
    if cu is not None:
        starts = torch.tensor(cu[:-1], device=k.device)
        lengths = torch.tensor([b - a for a, b in zip(cu, cu[1:])], device=k.device)
        excl = excl - excl[0, starts].repeat_interleave(lengths, dim=0)[None]  # restart at each sequence
        last = torch.tensor(cu[1:], device=k.device) - 1
    if z0 is not None:
        z0 = z0.to(excl.dtype)
        excl = excl + (z0.repeat_interleave(lengths, dim=0)[None] if cu is not None else z0[:, None])
    if cu is None:
        return excl, excl[:, -1] + kf[:, -1]
    return excl, excl[0, last] + kf[0, last]


def apply(run: Run, call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
    """The normalised variant (see the module docstring) around a backend's ``run``; otherwise ``run`` itself."""
    if not call.normalize:
        return run(call)
    q, k, eps, state = call.q, call.k, call.eps, call.initial_state
    s0, z0 = (state[..., :-1], state[..., -1]) if state is not None else (None, None)
    cu = call.cu_seqlens.tolist() if call.cu_seqlens is not None else None
    z_prev, z_last = exclusive_key_sums(k, z0, cu)  # [B, T, H, d_k], [N, H, d_k]
    c = (z_prev * k).sum(-1)  # [B, T, H]: c_t = z_{t-1} . k_t
    c = torch.where(c == 0, torch.ones_like(c), c)
    rate = c if call.beta is None else call.beta * c
    k_n = (k / (c[..., None] + eps)).to(k.dtype)  # [B, T, H, d_k]
    o, s_t = run(call.replace(k=k_n, beta=rate.to(k.dtype), initial_state=s0))
    den = call.scale * ((z_prev + k) * q).sum(-1, keepdim=True)  # [B, T, H, 1]: z_t . q_t
    o = (o / (den + eps)).to(call.v.dtype)
    if call.output_final_state:
        s_t = torch.cat([s_t, z_last[..., None].to(s_t.dtype)], dim=-1)  # [N, H, d_k, d_v + 1]
    return o, s_t


RULE = RuleSpec(
    name="delta",
    summary="Delta rule (DeltaNet): S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T, o_t = S_t^T q_t",
    apply=apply,
    key_norm=True,
    learned_rate=True,
    bounds={"beta": (0.0, 2.0)},  # I - beta k k^T contracts for unit keys only while 0 <= beta <= 2
    forms=(
        torch_form("delta", "naive", naive_core),
        torch_form("delta", "chunk", chunk_core, priority=10),
        torch_form("delta", "step", step_core, one_token=True),
    ),
)

__all__ = ["RULE", "apply", "chunk_core", "exclusive_key_sums", "naive_core", "step_core"]
