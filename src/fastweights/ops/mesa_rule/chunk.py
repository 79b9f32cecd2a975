"""Mesa rule, chunkwise: every token of a chunk solved at once, each chunk recomputed in the backward.

Within a chunk of ``C`` tokens starting from ``[H_0 | G_0]``, with ``gamma_i`` the cumulative log
decay up to token ``i`` and ``D_ij = exp(gamma_i - gamma_j) beta_j`` for ``j <= i`` (0 above)::

    H_i = exp(gamma_i) H_0 + sum_j D_ij k_j k_j^T                    # [C, d_k, d_k], all at once
    x_i = (H_i + lambda_i I)^{-1} q_i                                # C solves in one batched call
    o_i = exp(gamma_i) G_0^T x_i + sum_j D_ij (k_j . x_i) v_j         # [C, d_v]: an attention over the chunk

and the chunk's last ``H`` and ``G`` are the next one's start. Every decay is a difference
``gamma_i - gamma_j <= 0``, so none overflows. The ``C`` matrices ``H_i`` are the chunk's cost in
memory (``C d_k^2`` per head), so each chunk runs under ``torch.utils.checkpoint``
(:func:`~fastweights.ops.common.checkpointed.checkpointed`): the backward keeps one state per chunk.
The numbers equal the time loop's up to rounding.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..common.checkpointed import checkpointed


def _chunk(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Optional[Tensor],
    S: Tensor,
    chunk_size: int,
    g: Optional[Tensor] = None,
    l: Optional[Tensor] = None,  # noqa: E741
) -> Tuple[Tensor, Tensor]:
    """One chunk, all tokens at once. ``q, k: [B, H, C, d_k]``, ``v: [B, H, C, d_v]``, ``beta, g, l:
    [B, H, C]`` (None: 1, 0, 0), ``S: [B, H, d_k, d_k + d_v]``."""
    d_k, C = k.shape[-1], k.shape[2]
    H0, G0 = S[..., :d_k], S[..., d_k:]  # [B, H, d_k, d_k], [B, H, d_k, d_v]
    gamma = g.cumsum(-1) if g is not None else q.new_zeros(q.shape[:3])  # [B, H, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()  # [C, C]: j <= i
    diff = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf"))  # [B, H, C, C]
    D = diff.exp() * (beta[..., None, :] if beta is not None else 1)  # [B, H, C, C]: weight of write j at token i
    start = gamma.exp()  # [B, H, C]: the decay of the chunk's start state at token i
    Hs = start[..., None, None] * H0[:, :, None] + torch.einsum("bhij,bhjk,bhjl->bhikl", D, k, k)  # [B, H, C, d_k, d_k]
    lam = l.exp() if l is not None else q.new_ones(q.shape[:3])  # [B, H, C]
    eye = torch.eye(d_k, dtype=q.dtype, device=q.device)
    x = torch.linalg.solve(Hs + lam[..., None, None] * eye, q)  # [B, H, C, d_k]
    o = start[..., None] * (x @ G0) + (D * (x @ k.transpose(-1, -2))) @ v  # [B, H, C, d_v]
    written = torch.einsum("bhj,bhjk,bhjv->bhkv", D[..., -1, :], k, v)  # [B, H, d_k, d_v]: the chunk's writes
    G_end = start[..., -1, None, None] * G0 + written  # [B, H, d_k, d_v]
    return o, torch.cat([Hs[:, :, -1], G_end], dim=-1)  # [B, H, C, d_v], [B, H, d_k, d_k + d_v]


chunk_core = checkpointed(_chunk)
chunk_core.__doc__ = "Chunks of chunk_size tokens, each solved at once and recomputed in the backward."
