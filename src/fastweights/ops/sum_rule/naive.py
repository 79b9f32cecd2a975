"""Sum rule, plain time loop: the definition every other form is tested against.

Per head, with (already feature-mapped) keys and queries::

    S_t = S_{t-1} + k_t v_t^T          # S is [d_k, d_v]  (the paper's W_t = S_t^T)
    o_t = S_t^T q_t
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def naive_core(
    q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S: Tensor, chunk_size: int
) -> Tuple[Tensor, Tensor]:
    """Sum rule, one token at a time. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``."""
    outs = []
    for q_t, k_t, v_t in zip(q.unbind(2), k.unbind(2), v.unbind(2)):  # each [B, H, d]
        S = S + k_t[..., :, None] * v_t[..., None, :]  # [B, H, d_k, d_v]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))  # [B, H, d_v]
    return torch.stack(outs, dim=2), S  # [B, H, T, d_v]
