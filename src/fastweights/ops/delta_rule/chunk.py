"""Delta rule, chunkwise parallel WY/UT form (Yang et al. 2024) with a hand-derived backward.

For a chunk with keys K [C, d_k], values V [C, d_v], rates beta and incoming state S_n, the
pseudo-values ``V'`` (row t: ``beta_t (v_t - S_{t-1}^T k_t)``) satisfy ``L V' = diag(beta)(V - K S_n)``
with the unit lower-triangular ``L = I + strict_lower(diag(beta) K K^T)``. With ``R_k = diag(beta) K``,
``R_v = diag(beta) V`` and ``P = tril(Q K^T)`` (diagonal included)::

    W = L^-1 R_k,   U = L^-1 R_v              # all chunks at once: one batched inverse
    V'_n    = U_n - W_n S_n                    # the scan over chunks: the only loop
    S_{n+1} = S_n + K_n^T V'_n
    O_n     = Q_n S_n + P_n V'_n               # all chunks at once, after the scan

Backward, with ``G_{n+1} = dL/dS_{n+1}`` (``G_N = dS_T``), a reverse scan of two products per chunk::

    dV'_n = P_n^T dO_n + K_n G_{n+1}
    G_n   = G_{n+1} + Q_n^T dO_n - W_n^T dV'_n          # dS_0 = G_0

then, for all chunks at once (``dU = dV'``)::

    dP = tril(dO V'^T),  dQ = dO S_n^T + dP K,  dK = dP^T Q + V' G_{n+1}^T,  dW = -dV' S_n^T
    dR_k = L^-T dW,  dR_v = L^-T dU,  dA = -strict_lower(L^-T (dW R_k^T + dU R_v^T) L^-T)
    dK += diag(beta) (dA K + dR_k) + (diag(beta) dA)^T K,   dV = diag(beta) dR_v
    dbeta = rowsum(K * (dA K + dR_k)) + rowsum(V * dR_v)

Saved for the backward: the inputs, ``L^-1``, ``W`` and ``V'`` (each O(T C) or O(T d)) and the
N + 1 chunk-boundary states, never a state per token: memory O(T (C + d) + (T / C) d_k d_v).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .._api import make_op
from .._chunked import causal_scores, flat, from_chunks, to_chunks, unit_lower_inverse


def wy_inverse(kc: Tensor, kb: Tensor) -> Tensor:
    """``L^-1`` for every chunk, ``L = I + strict_lower(diag(beta) K K^T)``.

    ``kc: [..., C, d_k]`` keys, ``kb: [..., C, d_k]`` the keys scaled by their rates. Returns ``[..., C, C]``.
    """
    m = (kb @ kc.transpose(-1, -2)).tril_(-1)  # [..., C, C]: beta_i k_i . k_j for i > j
    m.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return unit_lower_inverse(m)


class ChunkDeltaRule(torch.autograd.Function):
    """``(q, k, v, beta, S0, chunk_size) -> (o, S_T)`` on ``[B, H, T, D]`` tensors; see the module docstring."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, S0: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
        B, H, T, _ = q.shape
        qc, kc, vc = (to_chunks(x, chunk_size) for x in (q, k, v))  # [N, BH, C, d]
        bc = to_chunks(beta[..., None], chunk_size)  # [N, BH, C, 1]: padded rates are 0
        kb = kc * bc  # [N, BH, C, d_k]
        linv = wy_inverse(kc, kb)  # [N, BH, C, C]
        w, u = linv @ kb, linv @ (vc * bc)  # [N, BH, C, d_k], [N, BH, C, d_v]
        N = qc.shape[0]
        states = qc.new_empty((N + 1, B * H) + S0.shape[2:])  # [N+1, BH, d_k, d_v]
        states[0] = S0.reshape(states.shape[1:])
        vn = torch.empty_like(u)  # [N, BH, C, d_v]: V'
        kt = kc.transpose(-1, -2)  # [N, BH, d_k, C]
        for n in range(N):
            torch.baddbmm(u[n], w[n], states[n], alpha=-1.0, out=vn[n])  # V'_n = U_n - W_n S_n
            torch.baddbmm(states[n], kt[n], vn[n], out=states[n + 1])  # S_{n+1} = S_n + K_n^T V'_n
        o = torch.baddbmm(flat(causal_scores(qc, kc) @ vn), flat(qc), flat(states[:-1]))  # [N*BH, C, d_v]
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
        dvn = torch.empty_like(vn)  # [N, BH, C, d_v]
        wt = w.transpose(-1, -2)  # [N, BH, d_k, C]
        for n in range(N - 1, -1, -1):
            torch.baddbmm(x[n], kc[n], g[n + 1], out=dvn[n])  # dV'_n = P^T dO + K G_{n+1}
            torch.add(g[n + 1], y[n], out=g[n])
            g[n].baddbmm_(wt[n], dvn[n], alpha=-1.0)  # G_n = G_{n+1} + Q^T dO - W^T dV'
        s_before = flat(states[:-1])  # [N*BH, d_k, d_v]
        dp = causal_scores(doc, vn)  # [N, BH, C, C]
        dq = torch.baddbmm(flat(dp @ kc), flat(doc), s_before.transpose(-1, -2))  # [N*BH, C, d_k]
        dk = torch.baddbmm(flat(dp.transpose(-1, -2) @ qc), flat(vn), flat(g[1:]).transpose(-1, -2))
        dw = dvn @ states[:-1].transpose(-1, -2)  # [N, BH, C, d_k]: -dW
        # WY backward (dw holds -dW, so the signs below are flipped accordingly).
        kb, vb = kc * bc, vc * bc  # [N, BH, C, d]
        linv_t = linv.transpose(-1, -2)
        dkb = linv_t @ dw  # -dR_k
        dvb = linv_t @ dvn  # dR_v
        dlinv = (dvn @ vb.transpose(-1, -2)).sub_(dw @ kb.transpose(-1, -2))  # dW R_k^T + dU R_v^T
        da = (linv_t @ dlinv @ linv_t).tril_(-1).neg_()  # [N, BH, C, C]: dL, strictly lower
        dak = (da @ kc).sub_(dkb)  # dA K + dR_k
        dk = dk.view_as(kc).add_(bc * dak).add_((da * bc).transpose(-1, -2) @ kc)
        dv = bc * dvb  # [N, BH, C, d_v]
        dbeta = None
        if ctx.needs_input_grad[3]:
            dbeta = (kc * dak).sum(-1, keepdim=True).add_((vc * dvb).sum(-1, keepdim=True))  # [N, BH, C, 1]
            dbeta = from_chunks(dbeta, B, H, T)[..., 0]
        grads = (from_chunks(t.view(qc.shape[:2] + t.shape[-2:]), B, H, T) for t in (dq, dk, dv))
        return (*grads, dbeta, g[0].view(B, H, *g.shape[2:]), None)


def chunk_core(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S0: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
    """Delta rule over chunks of ``chunk_size``. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``, ``beta: [B, H, T]``."""
    if beta is None:
        beta = q.new_ones(q.shape[:3])
    return ChunkDeltaRule.apply(q, k, v, beta, S0, chunk_size)


chunk_delta_rule = make_op(chunk_core, "delta", "chunk", "Delta rule (DeltaNet), chunkwise parallel WY/UT form.")
