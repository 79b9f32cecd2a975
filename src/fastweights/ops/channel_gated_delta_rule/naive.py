"""Channel-gated delta rule, plain time loop: the definition every other form is tested against.

Per head, with (already feature-mapped and normalised) keys, a rate ``beta_t`` and a decay per key
channel ``alpha_t = exp(g_t)`` in ``(0, 1]^{d_k}``::

    S'_t = Diag(alpha_t) S_{t-1}                                  # S is [d_k, d_v]: row i decays by alpha_t[i]
    S_t  = S'_t + beta_t k_t (v_t - S'_t^T k_t)^T = (I - beta_t k_t k_t^T) S'_t + beta_t k_t v_t^T
    o_t  = S_t^T q_t

The gated delta rule with one decay per key channel instead of one per head, as in Kimi Delta
Attention (Kimi Team, "Kimi Linear", 2025): each key direction forgets at its own rate.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def naive_core(
    q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S: Tensor, chunk_size: int, g: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """One token at a time. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``, ``beta: [B, H, T]``,
    ``g: [B, H, T, d_k]`` (None: rate 1, no decay)."""
    if beta is None:
        beta = q.new_ones(q.shape[:3])
    if g is None:
        g = torch.zeros_like(k)
    outs = []
    for q_t, k_t, v_t, b_t, g_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), beta.unbind(2), g.unbind(2)):
        S = g_t.exp()[..., :, None] * S  # [B, H, d_k, d_v]: S'_t = Diag(alpha_t) S_{t-1}
        v_old = torch.einsum("bhk,bhkv->bhv", k_t, S)  # [B, H, d_v]
        S = S + b_t[..., None, None] * k_t[..., :, None] * (v_t - v_old)[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))  # [B, H, d_v]
    return torch.stack(outs, dim=2), S  # [B, H, T, d_v]
