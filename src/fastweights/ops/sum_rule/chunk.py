"""Sum rule, chunkwise parallel form with a hand-derived backward.

With chunks of C tokens, chunk n starting from state S_n, and ``P_n = tril(Q_n K_n^T)`` (diagonal
included)::

    O_n     = Q_n S_n + P_n V_n
    S_{n+1} = S_n + K_n^T V_n

The chunk states are an exclusive prefix sum of the per-chunk updates ``K_n^T V_n``: the loop
over chunks holds additions only, every product is batched over chunks. Backward, with
``G_{n+1} = dL/dS_{n+1}`` (a reverse prefix sum: ``G_{n+1} = dS_T + sum_{m > n} Q_m^T dO_m``)::

    dP_n = tril(dO_n V_n^T)
    dQ_n = dO_n S_n^T + dP_n K_n
    dK_n = dP_n^T Q_n + V_n G_{n+1}^T
    dV_n = P_n^T dO_n + K_n G_{n+1}
    dS_0 = G_0

Only the inputs and the N + 1 chunk-boundary states are kept for the backward (``P`` is
recomputed), so memory is O(T d + (T / C) d_k d_v).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..common.chunked import causal_scores, flat, from_chunks, segments, to_chunks, without_autocast


class ChunkSumRule(torch.autograd.Function):
    """``(q, k, v, S0, chunk_size) -> (o, S_T)`` on ``[B, H, T, D]`` tensors; see the module docstring.

    The products are batched over one cache-sized segment of chunks at a time
    (:func:`~fastweights.ops.common.chunked.segments`).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, S0: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
        B, H, T, _ = q.shape
        qc, kc, vc = (to_chunks(x, chunk_size) for x in (q, k, v))  # [N, BH, C, d]
        N, BH, C, d_k = kc.shape
        d_v = vc.shape[-1]
        states = qc.new_empty(N + 1, BH, d_k, d_v)  # [N+1, BH, d_k, d_v]: S_n
        states[0] = S0.reshape(BH, d_k, d_v)
        o = torch.empty_like(vc)  # [N, BH, C, d_v]
        for s in segments(N, BH * C * max(C, d_k, d_v), kc.device):
            updates = kc[s].transpose(-1, -2) @ vc[s]  # [n, BH, d_k, d_v]: K_n^T V_n
            for n in range(s.start, s.stop):  # a prefix sum (torch.cumsum over dim 0 is ~20x slower)
                torch.add(states[n], updates[n - s.start], out=states[n + 1])
            torch.matmul(causal_scores(qc[s], kc[s]), vc[s], out=o[s])
            flat(o[s]).baddbmm_(flat(qc[s]), flat(states[s]))  # O = Q S_n + P V
        ctx.save_for_backward(qc, kc, vc, states)
        ctx.shape = (B, H, T)
        return from_chunks(o, B, H, T), states[-1].view_as(S0).clone()

    @staticmethod
    @once_differentiable  # in-place kernels: a double backward must fail loudly, not be wrong
    @without_autocast
    def backward(ctx, do: Optional[Tensor], dS: Optional[Tensor]):
        qc, kc, vc, states = ctx.saved_tensors
        B, H, T = ctx.shape
        N, BH, C, d_k = kc.shape
        d_v = vc.shape[-1]
        if do is None:
            do = vc.new_zeros(B, H, T, d_v)
        doc = to_chunks(do, C)  # [N, BH, C, d_v]
        g = torch.empty_like(states)  # [N+1, BH, d_k, d_v]: G_n = dL/dS_n = G_{n+1} + Q_n^T dO_n
        g[N] = 0.0 if dS is None else dS.reshape(g.shape[1:])
        dq, dk, dv = torch.empty_like(qc), torch.empty_like(kc), torch.empty_like(vc)
        for s in reversed(segments(N, BH * C * max(C, d_k, d_v), kc.device)):
            y = qc[s].transpose(-1, -2) @ doc[s]  # [n, BH, d_k, d_v]: Q_n^T dO_n
            for n in range(s.stop - 1, s.start - 1, -1):
                torch.add(g[n + 1], y[n - s.start], out=g[n])
            g_after = flat(g[s.start + 1 : s.stop + 1])  # [n*BH, d_k, d_v]: G_{n+1}
            dp = causal_scores(doc[s], vc[s])  # [n, BH, C, C]
            torch.matmul(dp, kc[s], out=dq[s])
            flat(dq[s]).baddbmm_(flat(doc[s]), flat(states[s]).transpose(-1, -2))  # dQ = dO S^T + dP K
            torch.matmul(dp.transpose(-1, -2), qc[s], out=dk[s])
            flat(dk[s]).baddbmm_(flat(vc[s]), g_after.transpose(-1, -2))  # dK = dP^T Q + V G^T
            torch.matmul(causal_scores(qc[s], kc[s]).transpose(-1, -2), doc[s], out=dv[s])
            flat(dv[s]).baddbmm_(flat(kc[s]), g_after)  # dV = P^T dO + K G
        grads = (from_chunks(t, B, H, T) for t in (dq, dk, dv))
        return (*grads, g[0].view(B, H, d_k, d_v), None)


def chunk_core(
    q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S0: Tensor, chunk_size: int
) -> Tuple[Tensor, Tensor]:
    """Sum rule over chunks of ``chunk_size``. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``."""
    return ChunkSumRule.apply(q, k, v, S0, chunk_size)
