"""Sum rule, one-token step for decoding: ``S = S + k v^T``, ``o = S^T q``."""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor


def step_core(
    q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S: Tensor, chunk_size: int
) -> Tuple[Tensor, Tensor]:
    """One token (T must be 1): ``q, k: [B, H, 1, d_k]``, ``v: [B, H, 1, d_v]``."""
    S = S + k.transpose(-1, -2) @ v  # [B, H, d_k, d_v]
    return q @ S, S  # [B, H, 1, d_v]
