"""Delta rule, chunkwise parallel: the WY/UT form of :mod:`fastweights.ops.common.delta_chunk`
(equations and backward there) without decays."""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from ..common.delta_chunk import ChunkDeltaRule


def chunk_core(
    q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S0: Tensor, chunk_size: int
) -> Tuple[Tensor, Tensor]:
    """Delta rule over chunks of ``chunk_size``.

    ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``, ``beta: [B, H, T]``."""
    if beta is None:
        beta = q.new_ones(q.shape[:3])
    return ChunkDeltaRule.apply(q, k, v, beta, None, S0, chunk_size)
