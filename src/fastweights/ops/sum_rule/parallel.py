"""Sum rule, quadratic masked ("attention") form: a second reference.

O = tril(Q K^T) V + Q S_0,      S_T = S_0 + K^T V
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor


def parallel_core(
    q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S0: Tensor, chunk_size: int
) -> Tuple[Tensor, Tensor]:
    """Sum rule as masked attention over all T tokens (O(T^2) time and memory)."""
    scores = (q @ k.transpose(-1, -2)).tril()  # [B, H, T, T]
    o = scores @ v + q @ S0  # [B, H, T, d_v]
    return o, S0 + k.transpose(-1, -2) @ v
