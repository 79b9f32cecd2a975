"""Gated delta rule, one-token step for decoding::

S' = alpha S,   S = S' + beta k (v - S'^T k)^T,   o = S^T q,   alpha = exp(g)
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor


def step_core(
    q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S: Tensor, chunk_size: int, g: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """One token (T = 1): ``q, k: [B, H, 1, d_k]``, ``v: [B, H, 1, d_v]``, ``beta, g: [B, H, 1]``."""
    if g is not None:
        S = g.exp()[..., None] * S  # [B, H, d_k, d_v]
    u = v - k @ S  # [B, H, 1, d_v]: v_t - S'^T k_t
    if beta is not None:
        u = u * beta[..., None]
    S = S + k.transpose(-1, -2) @ u  # [B, H, d_k, d_v]
    return q @ S, S  # [B, H, 1, d_v]
