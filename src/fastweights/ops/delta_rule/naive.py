"""Delta rule (DeltaNet), plain time loop: the definition every other form is tested against.

Per head, with (already feature-mapped and normalised) keys::

    S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T     # S is [d_k, d_v]
    o_t = S_t^T q_t

The memory retrieves the value currently stored under k_t, and moves it towards v_t by the
rate beta_t: an old association is overwritten instead of added to.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def naive_core(
    q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S: Tensor, chunk_size: int
) -> Tuple[Tensor, Tensor]:
    """Delta rule, one token at a time. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``, ``beta: [B, H, T]``."""
    if beta is None:
        beta = q.new_ones(q.shape[:3])
    outs = []
    for q_t, k_t, v_t, b_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), beta.unbind(2)):
        v_old = torch.einsum("bhk,bhkv->bhv", k_t, S)  # [B, H, d_v]: S_{t-1}^T k_t
        S = S + b_t[..., None, None] * k_t[..., :, None] * (v_t - v_old)[..., None, :]  # [B, H, d_k, d_v]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))  # [B, H, d_v]
    return torch.stack(outs, dim=2), S  # [B, H, T, d_v]
