"""Delta rule, chunkwise parallel WY/UT form (Yang et al. 2024) with a hand-derived backward.

For a chunk with keys K [C, d_k], values V [C, d_v], rates beta and incoming state S_n, the
pseudo-values ``V'`` (row t: ``beta_t (v_t - S_{t-1}^T k_t)``) satisfy ``L V' = diag(beta)(V - K S_n)``
with the unit lower-triangular ``L = I + A``, ``A = strict_lower(diag(beta) K K^T)``. With the UT
transform ``T = L^-1 diag(beta)`` and ``P = tril(Q K^T)`` (diagonal included)::

    W = T K,   U = T V                        # all chunks at once: one batched inverse
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

from .._api import make_op
from .._chunked import causal_scores, flat, from_chunks, to_chunks, unit_lower_inverse


def wy_inverse(kc: Tensor, bc: Tensor) -> Tensor:
    """``L^-1`` for every chunk, ``L = I + strict_lower(diag(beta) K K^T)``.

    ``kc: [..., C, d_k]`` keys, ``bc: [..., C, 1]`` their rates. Returns ``[..., C, C]``.
    """
    m = (kc @ kc.transpose(-1, -2)).tril_(-1).mul_(bc)  # [..., C, C]: beta_i k_i . k_j for i > j
    m.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return unit_lower_inverse(m)


class ChunkDeltaRule(torch.autograd.Function):
    """``(q, k, v, beta, S0, chunk_size) -> (o, S_T)`` on ``[B, H, T, D]`` tensors; see the module docstring."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, S0: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
        B, H, T, _ = q.shape
        qc, kc, vc = (to_chunks(x, chunk_size) for x in (q, k, v))  # [N, BH, C, d]
        bc = to_chunks(beta[..., None], chunk_size)  # [N, BH, C, 1]: padded rates are 0
        linv = wy_inverse(kc, bc)  # [N, BH, C, C]
        tm = linv * bc.transpose(-1, -2)  # [N, BH, C, C]: the UT transform L^-1 diag(beta)
        w, u = tm @ kc, tm @ vc  # [N, BH, C, d_k], [N, BH, C, d_v]
        del tm
        N = qc.shape[0]
        states = qc.new_empty((N + 1, B * H) + S0.shape[2:])  # [N+1, BH, d_k, d_v]
        states[0] = S0.reshape(states.shape[1:])
        vn = u  # [N, BH, C, d_v]: V', overwriting U chunk by chunk
        kt = kc.transpose(-1, -2)  # [N, BH, d_k, C]
        for n in range(N):
            vn[n].baddbmm_(w[n], states[n], alpha=-1.0)  # V'_n = U_n - W_n S_n
            torch.baddbmm(states[n], kt[n], vn[n], out=states[n + 1])  # S_{n+1} = S_n + K_n^T V'_n
        o = flat(causal_scores(qc, kc) @ vn).baddbmm_(flat(qc), flat(states[:-1]))  # [N*BH, C, d_v]
        ctx.save_for_backward(qc, kc, vc, bc, linv, w, vn, states)
        ctx.shape = (B, H, T)
        return from_chunks(o.view_as(vn), B, H, T), states[-1].view_as(S0).clone()

    @staticmethod
    def backward(ctx, do: Optional[Tensor], dS: Optional[Tensor]):
        qc, kc, vc, bc, linv, w, vn, states = ctx.saved_tensors
        B, H, T = ctx.shape
        N = qc.shape[0]
        if do is None:
            do = vn.new_zeros(B, H, T, vn.shape[-1])
        doc = to_chunks(do, qc.shape[2])  # [N, BH, C, d_v]
        x = causal_scores(qc, kc).transpose(-1, -2) @ doc  # [N, BH, C, d_v]: P^T dO
        y = qc.transpose(-1, -2) @ doc  # [N, BH, d_k, d_v]: Q^T dO
        g = torch.empty_like(states)  # [N+1, BH, d_k, d_v]: g[n] = dL/dS_n
        g[N] = 0.0 if dS is None else dS.reshape(g.shape[1:])
        dvn = x  # [N, BH, C, d_v]: dV', overwriting P^T dO chunk by chunk
        wt = w.transpose(-1, -2)  # [N, BH, d_k, C]
        for n in range(N - 1, -1, -1):
            dvn[n].baddbmm_(kc[n], g[n + 1])  # dV'_n = P^T dO + K G_{n+1}
            torch.add(g[n + 1], y[n], out=g[n])
            g[n].baddbmm_(wt[n], dvn[n], alpha=-1.0)  # G_n = G_{n+1} + Q^T dO - W^T dV'
        del x, y
        s_before = flat(states[:-1])  # [N*BH, d_k, d_v]
        dp = causal_scores(doc, vn)  # [N, BH, C, C]
        dq = flat(dp @ kc).baddbmm_(flat(doc), s_before.transpose(-1, -2))  # [N*BH, C, d_k]
        dk = flat(dp.transpose(-1, -2) @ qc).baddbmm_(flat(vn), flat(g[1:]).transpose(-1, -2))
        del dp
        ndw = dvn @ states[:-1].transpose(-1, -2)  # [N, BH, C, d_k]: -dW
        # WY backward with T = L^-1 diag(beta): dK += T^T dW, dV = T^T dU, dT = dW K^T + dU V^T,
        # dbeta_j += sum_i dT_ij (L^-1)_ij, dA = -strict_lower(L^-T dT T^T).
        tm = linv * bc.transpose(-1, -2)  # [N, BH, C, C]
        tmt = flat(tm).transpose(-1, -2)
        dk.baddbmm_(tmt, flat(ndw), alpha=-1.0)
        dv = tmt @ flat(dvn)  # [N*BH, C, d_v]
        dtm = (dvn @ vc.transpose(-1, -2)).view_as(tm)
        flat(dtm).baddbmm_(flat(ndw), flat(kc).transpose(-1, -2), alpha=-1.0)  # [N, BH, C, C]
        dbeta = (dtm * linv).sum(-2)  # [N, BH, C]
        nda = (linv.transpose(-1, -2) @ dtm @ tm.transpose(-1, -2)).tril_(-1)  # -dA
        del dtm, tm
        # A = strict_lower(diag(beta) K K^T): dK += diag(beta) dA K + (diag(beta) dA)^T K.
        ndak = nda @ kc  # [N, BH, C, d_k]: -dA K
        dbeta.sub_((kc * ndak).sum(-1))
        dk.sub_(flat(ndak.mul_(bc))).baddbmm_(flat(nda.mul_(bc)).transpose(-1, -2), flat(kc), alpha=-1.0)
        grads = [from_chunks(t.view(qc.shape[:2] + t.shape[-2:]), B, H, T) for t in (dq, dk, dv)]
        dbeta = from_chunks(dbeta[..., None], B, H, T)[..., 0] if ctx.needs_input_grad[3] else None
        return (*grads, dbeta, g[0].view(B, H, *g.shape[2:]), None)


def chunk_core(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S0: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
    """Delta rule over chunks of ``chunk_size``. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``, ``beta: [B, H, T]``."""
    if beta is None:
        beta = q.new_ones(q.shape[:3])
    return ChunkDeltaRule.apply(q, k, v, beta, S0, chunk_size)


chunk_delta_rule = make_op(chunk_core, "delta", "chunk", "Delta rule (DeltaNet), chunkwise parallel WY/UT form.")
