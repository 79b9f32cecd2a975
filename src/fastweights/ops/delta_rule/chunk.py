"""Delta rule, chunkwise parallel WY/UT form (Yang et al. 2024).

For a chunk with keys K [C, d_k], values V [C, d_v], rates beta and incoming state S_0, the
pseudo-values ``U' = diag(beta)(V - K S_{t-1})`` row by row satisfy ``(I + A) U' = diag(beta)(V - K S_0)``
with ``A = strict_lower(diag(beta) K K^T)``. Hence, with the UT transform ``T = (I + A)^{-1} diag(beta)``:

    W = T K,   U = T V                       # independent per chunk: one batched solve
    V' = U - W S_0
    O  = Q S_0 + tril(Q K^T) V'              # diagonal included
    S_1 = S_0 + K^T V'

Only the last three lines depend on the incoming state, so the scan over chunks is the only loop.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._api import causal_mask, chunk_view, make_op


def wy_transform(k: Tensor, v: Tensor, beta: Tensor) -> Tuple[Tensor, Tensor]:
    """``W = T K`` and ``U = T V`` for every chunk at once. ``k: [..., C, d_k]``, ``beta: [..., C]``."""
    C = k.shape[-2]
    a = (k @ k.transpose(-1, -2)) * beta[..., :, None]  # [..., C, C]: beta_i k_i . k_j
    a = a.masked_fill(~causal_mask(C, k.device, -1), 0.0)
    a = a + torch.eye(C, dtype=k.dtype, device=k.device)  # I + A, unit lower triangular
    rhs = torch.cat([k, v], dim=-1) * beta[..., None]  # [..., C, d_k + d_v]
    wu = torch.linalg.solve_triangular(a, rhs, upper=False, unitriangular=True)
    return wu[..., : k.shape[-1]], wu[..., k.shape[-1] :]


def chunk_core(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
    """Delta rule over chunks of ``chunk_size``. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``."""
    T = q.shape[2]
    if beta is None:
        beta = q.new_ones(q.shape[:3])
    qc, kc, vc = (chunk_view(x, chunk_size) for x in (q, k, v))  # [B, H, N, C, d]
    bc = chunk_view(beta, chunk_size)  # [B, H, N, C]: padded rates are 0
    w, u = wy_transform(kc, vc, bc)  # [B, H, N, C, d_k], [B, H, N, C, d_v]
    mask = causal_mask(chunk_size, q.device)
    scores = (qc @ kc.transpose(-1, -2)).masked_fill(~mask, 0.0)  # [B, H, N, C, C]
    outs = []
    for q_n, k_n, w_n, u_n, a_n in zip(qc.unbind(2), kc.unbind(2), w.unbind(2), u.unbind(2), scores.unbind(2)):
        v_new = u_n - w_n @ S  # [B, H, C, d_v]
        outs.append(q_n @ S + a_n @ v_new)  # [B, H, C, d_v]
        S = S + k_n.transpose(-1, -2) @ v_new  # [B, H, d_k, d_v]
    o = torch.cat(outs, dim=2)[:, :, :T]  # [B, H, T, d_v]
    return o, S


chunk_delta_rule = make_op(chunk_core, "delta", "chunk", "Delta rule (DeltaNet), chunkwise parallel WY/UT form.")
