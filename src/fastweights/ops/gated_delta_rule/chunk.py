"""Gated delta rule, chunkwise parallel (the UT transform with cumulative decays), differentiated by autograd.

Within a chunk of C tokens starting from state S_0, with ``gamma_i = sum_{s <= i} g_s`` (the log of
``Gamma_i = prod_{s <= i} alpha_s``) and ``D_ij = Gamma_i / Gamma_j`` for ``j <= i`` (0 above), the
state after token i is ``Gamma_i S_0 + sum_{j <= i} D_ij k_j u_j^T`` where the pseudo-values u solve::

    (I + A) U = diag(beta) V - diag(beta Gamma) K S_0,    A = strict_lower(diag(beta) (K K^T * D))

so with ``T = (I + A)^-1 diag(beta)``, ``W = T diag(Gamma) K`` and ``U_0 = T V`` (batched over all
chunks), the scan over chunks is::

    U_n     = U_0,n - W_n S_n
    O_n     = diag(Gamma) Q_n S_n + (Q_n K_n^T * D) U_n
    S_{n+1} = Gamma_C S_n + (diag(Gamma_C / Gamma) K_n)^T U_n

The backward is autograd's through these batched products (tested against the naive form, every
gradient); memory is O(T C + (T / C) d_k d_v), never a state per token.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._chunked import UnitLowerInverse


def _chunks(x: Tensor, C: int) -> Tensor:
    """``[B, H, T, ...]`` -> ``[B, H, N, C, ...]``, zero-padded at the end (zero keys, rates and log
    decays leave the state unchanged)."""
    T = x.shape[2]
    pad = -T % C
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 3) + (0, pad))
    return x.unflatten(2, (-1, C))


def chunk_core(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S0: Tensor, chunk_size: int,
               g: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """Gated delta rule over chunks of ``chunk_size``. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``,
    ``beta, g: [B, H, T]`` (None: rate 1, no decay)."""
    T, C = q.shape[2], chunk_size
    if beta is None:
        beta = q.new_ones(q.shape[:3])
    if g is None:
        g = q.new_zeros(q.shape[:3])
    qc, kc, vc = _chunks(q, C), _chunks(k, C), _chunks(v, C)  # [B, H, N, C, d]
    bc, gam = _chunks(beta, C), _chunks(g, C).cumsum(-1)  # [B, H, N, C]: beta, gamma (log Gamma)
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    decay = (gam[..., :, None] - gam[..., None, :]).masked_fill(~causal, float("-inf")).exp()  # [B, H, N, C, C]: D
    a = (kc @ kc.transpose(-1, -2) * decay).tril(-1) * bc[..., :, None]  # A
    eye = torch.eye(C, dtype=q.dtype, device=q.device)
    tm = UnitLowerInverse.apply(eye + a) * bc[..., None, :]  # [B, H, N, C, C]: T = (I + A)^-1 diag(beta)
    w = tm @ (gam.exp()[..., None] * kc)  # [B, H, N, C, d_k]: T diag(Gamma) K
    u0 = tm @ vc  # [B, H, N, C, d_v]: T V
    scores = qc @ kc.transpose(-1, -2) * decay  # [B, H, N, C, C]
    k_out = (gam[..., -1:] - gam).exp()[..., None] * kc  # [B, H, N, C, d_k]: diag(Gamma_C / Gamma) K
    q_in = gam.exp()[..., None] * qc  # [B, H, N, C, d_k]: diag(Gamma) Q
    g_last = gam[..., -1].exp()[..., None, None]  # [B, H, N, 1, 1]: Gamma_C
    S, outs = S0, []
    # One view per chunk made once (unbind): indexing inside the loop would make every slice's
    # backward allocate and fill a gradient as large as the whole tensor.
    for u0_n, w_n, q_n, p_n, k_n, a_n in zip(*(x.unbind(2) for x in (u0, w, q_in, scores, k_out, g_last))):
        u = u0_n - w_n @ S  # [B, H, C, d_v]
        outs.append(q_n @ S + p_n @ u)  # [B, H, C, d_v]
        S = a_n * S + k_n.transpose(-1, -2) @ u
    return torch.cat(outs, dim=2)[:, :, :T], S  # [B, H, T, d_v]
