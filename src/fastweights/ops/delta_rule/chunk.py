"""Delta rule, chunkwise parallel WY/UT form (Yang et al. 2024) with a hand-derived backward.

For a chunk with keys K [C, d_k], values V [C, d_v], rates beta and incoming state S_n, the
pseudo-values ``V'`` (row t: ``beta_t (v_t - S_{t-1}^T k_t)``) satisfy ``L V' = diag(beta)(V - K S_n)``
with the unit lower-triangular ``L = I + A``, ``A = strict_lower(diag(beta) K K^T)``. With the UT
transform ``T = L^-1 diag(beta)`` and ``P = tril(Q K^T)`` (diagonal included)::

    W = T K,   U = T V                        # independent per chunk: batched inverse and products
    V'_n    = U_n - W_n S_n                    # the scan over chunks: the only loop
    S_{n+1} = S_n + K_n^T V'_n
    O_n     = Q_n S_n + P_n V'_n               # all chunks at once, after the scan

Backward, with ``G_{n+1} = dL/dS_{n+1}`` (``G_N = dS_T``), a reverse scan of two products per chunk::

    dV'_n = P_n^T dO_n + K_n G_{n+1}
    G_n   = G_{n+1} + Q_n^T dO_n - W_n^T dV'_n          # dS_0 = G_0

then, for all chunks at once (``dU = dV'``)::

    dP = tril(dO V'^T),  dQ = dO S_n^T + dP K,  dK = dP^T Q + V' G_{n+1}^T,  dW = -dV' S_n^T
    dK += T^T dW,  dV = T^T dU,  dT = dW K^T + dU V^T
    dbeta_j = sum_i dT_ij (L^-1)_ij + sum_l dA_jl k_j . k_l,   dA = -strict_lower(L^-T dT T^T)
    dK += diag(beta) dA K + (diag(beta) dA)^T K

Saved for the backward: the inputs, ``L^-1``, ``W`` and ``V'`` (each O(T C) or O(T d)) and the
N + 1 chunk-boundary states, never a state per token: memory O(T (C + d) + (T / C) d_k d_v).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._chunked import causal_scores, flat, from_chunks, segments, to_chunks, unit_lower_inverse, without_autocast


def wy_inverse(kc: Tensor, bc: Tensor, out: Tensor) -> Tensor:
    """``L^-1`` for every chunk, ``L = I + strict_lower(diag(beta) K K^T)``, written into ``out``.

    ``kc: [..., C, d_k]`` keys, ``bc: [..., C, 1]`` their rates, ``out: [..., C, C]``.
    """
    m = torch.matmul(kc, kc.transpose(-1, -2), out=out).tril_(-1).mul_(bc)  # beta_i k_i . k_j for i > j
    m.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return unit_lower_inverse(m)


class ChunkDeltaRule(torch.autograd.Function):
    """``(q, k, v, beta, S0, chunk_size) -> (o, S_T)`` on ``[B, H, T, D]`` tensors; see the module docstring.

    The chunk-parallel products are batched over one cache-sized segment of chunks at a time
    (:func:`~fastweights.ops._chunked.segments`); the scan runs through the segments in order.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, S0: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
        B, H, T, _ = q.shape
        qc, kc, vc = (to_chunks(x, chunk_size) for x in (q, k, v))  # [N, BH, C, d]
        bc = to_chunks(beta[..., None], chunk_size)  # [N, BH, C, 1]: padded rates are 0
        N, BH, C, d_k = kc.shape
        d_v = vc.shape[-1]
        linv = kc.new_empty(N, BH, C, C)  # L^-1 per chunk
        w, vn, o = torch.empty_like(kc), torch.empty_like(vc), torch.empty_like(vc)  # W, V' (U until the scan), O
        states = qc.new_empty(N + 1, BH, d_k, d_v)  # [N+1, BH, d_k, d_v]: S_n
        states[0] = S0.reshape(BH, d_k, d_v)
        kt = kc.transpose(-1, -2)  # [N, BH, d_k, C]
        for s in segments(N, BH * C * max(C, d_k, d_v), kc.device):
            tm = wy_inverse(kc[s], bc[s], linv[s]) * bc[s].transpose(-1, -2)  # [n, BH, C, C]: T = L^-1 diag(beta)
            torch.matmul(tm, kc[s], out=w[s])  # W = T K
            torch.matmul(tm, vc[s], out=vn[s])  # U = T V
            for n in range(s.start, s.stop):
                vn[n].baddbmm_(w[n], states[n], alpha=-1.0)  # V'_n = U_n - W_n S_n
                torch.baddbmm(states[n], kt[n], vn[n], out=states[n + 1])  # S_{n+1} = S_n + K_n^T V'_n
            torch.matmul(causal_scores(qc[s], kc[s]), vn[s], out=o[s])
            flat(o[s]).baddbmm_(flat(qc[s]), flat(states[s]))  # O = Q S_n + P V'
        ctx.save_for_backward(qc, kc, vc, bc, linv, w, vn, states)
        ctx.shape = (B, H, T)
        return from_chunks(o, B, H, T), states[-1].view_as(S0).clone()

    @staticmethod
    @once_differentiable  # in-place kernels: a double backward must fail loudly, not be wrong
    @without_autocast
    def backward(ctx, do: Optional[Tensor], dS: Optional[Tensor]):
        qc, kc, vc, bc, linv, w, vn, states = ctx.saved_tensors
        B, H, T = ctx.shape
        N, BH, C, d_k = kc.shape
        d_v = vc.shape[-1]
        if do is None:
            do = vn.new_zeros(B, H, T, d_v)
        doc = to_chunks(do, C)  # [N, BH, C, d_v]
        g = torch.empty_like(states)  # [N+1, BH, d_k, d_v]: g[n] = dL/dS_n
        g[N] = 0.0 if dS is None else dS.reshape(g.shape[1:])
        dq, dk, dv = torch.empty_like(qc), torch.empty_like(kc), torch.empty_like(vc)
        dbeta = kc.new_empty(N, BH, C)
        wt = w.transpose(-1, -2)  # [N, BH, d_k, C]
        for s in reversed(segments(N, BH * C * max(C, d_k, d_v), kc.device)):
            dvn = causal_scores(qc[s], kc[s]).transpose(-1, -2) @ doc[s]  # [n, BH, C, d_v]: P^T dO, then dV'
            y = qc[s].transpose(-1, -2) @ doc[s]  # [n, BH, d_k, d_v]: Q^T dO
            for n in range(s.stop - 1, s.start - 1, -1):
                i = n - s.start
                dvn[i].baddbmm_(kc[n], g[n + 1])  # dV'_n = P^T dO + K G_{n+1}
                torch.add(g[n + 1], y[i], out=g[n])
                g[n].baddbmm_(wt[n], dvn[i], alpha=-1.0)  # G_n = G_{n+1} + Q^T dO - W^T dV'
            s_before = flat(states[s])  # [n*BH, d_k, d_v]
            g_after = flat(g[s.start + 1 : s.stop + 1])  # [n*BH, d_k, d_v]
            dp = causal_scores(doc[s], vn[s])  # [n, BH, C, C]
            dq_s, dk_s = flat(dq[s]), flat(dk[s])  # views: written in place
            torch.matmul(dp, kc[s], out=dq[s])
            dq_s.baddbmm_(flat(doc[s]), s_before.transpose(-1, -2))  # dQ = dO S^T + dP K
            torch.matmul(dp.transpose(-1, -2), qc[s], out=dk[s])
            dk_s.baddbmm_(flat(vn[s]), g_after.transpose(-1, -2))  # dK = dP^T Q + V' G^T
            ndw = dvn @ states[s].transpose(-1, -2)  # [n, BH, C, d_k]: -dW
            # WY backward with T = L^-1 diag(beta): dK += T^T dW, dV = T^T dU, dT = dW K^T + dU V^T,
            # dbeta_j += sum_i dT_ij (L^-1)_ij, dA = -strict_lower(L^-T dT T^T).
            tm = linv[s] * bc[s].transpose(-1, -2)  # [n, BH, C, C]
            tmt = tm.transpose(-1, -2)
            dk_s.baddbmm_(flat(tmt), flat(ndw), alpha=-1.0)
            torch.matmul(tmt, dvn, out=dv[s])
            dtm = dvn @ vc[s].transpose(-1, -2)  # [n, BH, C, C]
            flat(dtm).baddbmm_(flat(ndw), flat(kc[s]).transpose(-1, -2), alpha=-1.0)
            torch.sum(dtm * linv[s], dim=-2, out=dbeta[s])
            nda = (linv[s].transpose(-1, -2) @ dtm @ tmt).tril_(-1)  # -dA
            # A = strict_lower(diag(beta) K K^T): dK += diag(beta) dA K + (diag(beta) dA)^T K.
            ndak = nda @ kc[s]  # [n, BH, C, d_k]: -dA K
            dbeta[s] -= (kc[s] * ndak).sum(-1)
            dk_s.sub_(flat(ndak.mul_(bc[s]))).baddbmm_(flat(nda.mul_(bc[s])).transpose(-1, -2), flat(kc[s]), alpha=-1.0)
        grads = [from_chunks(t, B, H, T) for t in (dq, dk, dv)]
        dbeta = from_chunks(dbeta[..., None], B, H, T)[..., 0] if ctx.needs_input_grad[3] else None
        return (*grads, dbeta, g[0].view(B, H, d_k, d_v), None)


def chunk_core(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S0: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
    """Delta rule over chunks of ``chunk_size``. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``, ``beta: [B, H, T]``."""
    if beta is None:
        beta = q.new_ones(q.shape[:3])
    return ChunkDeltaRule.apply(q, k, v, beta, S0, chunk_size)

