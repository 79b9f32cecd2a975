"""Sum rule, chunkwise parallel form.

With chunks of C tokens, chunk n starting from state S_n::

    O_n     = Q_n S_n + tril(Q_n K_n^T) V_n
    S_{n+1} = S_n + K_n^T V_n

The chunk states are an exclusive prefix sum of the per-chunk updates K_n^T V_n, so there is
no loop at all: every product is one batched matmul over all chunks.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._api import causal_mask, chunk_view, make_op


def chunk_core(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S0: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
    """Sum rule over chunks of ``chunk_size``. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``."""
    T = q.shape[2]
    qc, kc, vc = (chunk_view(x, chunk_size) for x in (q, k, v))  # [B, H, N, C, d]
    updates = kc.transpose(-1, -2) @ vc  # [B, H, N, d_k, d_v]
    states = torch.cumsum(updates, dim=2)  # [B, H, N, d_k, d_v]: state after chunk n (minus S0)
    s_final = S0 + states[:, :, -1]  # [B, H, d_k, d_v]
    s_before = S0[:, :, None] + (states - updates)  # [B, H, N, d_k, d_v]
    mask = causal_mask(chunk_size, q.device)
    scores = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0.0)  # [B, H, N, C, C]
    o = qc @ s_before + scores @ vc  # [B, H, N, C, d_v]
    o = o.reshape(o.shape[0], o.shape[1], -1, o.shape[-1])[:, :, :T]  # [B, H, T, d_v]
    return o, s_final


chunk_sum_rule = make_op(chunk_core, "sum", "chunk", "Sum rule (linear attention), chunkwise parallel.")
