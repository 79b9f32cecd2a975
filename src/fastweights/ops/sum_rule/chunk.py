"""Sum rule, chunkwise parallel form with a hand-derived backward.

With chunks of C tokens, chunk n starting from state S_n, and ``P_n = tril(Q_n K_n^T)`` (diagonal
included)::

    O_n     = Q_n S_n + P_n V_n
    S_{n+1} = S_n + K_n^T V_n

The chunk states are an exclusive prefix sum of the per-chunk updates ``K_n^T V_n``: the loop
over chunks holds additions only, every product is one batched matmul over all chunks. Backward, with
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

from .._api import make_op
from .._chunked import causal_scores, flat, from_chunks, to_chunks


class ChunkSumRule(torch.autograd.Function):
    """``(q, k, v, S0, chunk_size) -> (o, S_T)`` on ``[B, H, T, D]`` tensors; see the module docstring."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, S0: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
        B, H, T, _ = q.shape
        qc, kc, vc = (to_chunks(x, chunk_size) for x in (q, k, v))  # [N, BH, C, d]
        states = qc.new_empty((qc.shape[0] + 1, B * H) + S0.shape[2:])  # [N+1, BH, d_k, d_v]
        states[0] = S0.reshape(B * H, *S0.shape[2:])
        updates = kc.transpose(-1, -2) @ vc  # [N, BH, d_k, d_v]: K_n^T V_n
        for n in range(updates.shape[0]):  # a prefix sum (torch.cumsum over dim 0 is ~20x slower)
            torch.add(states[n], updates[n], out=states[n + 1])
        o = flat(causal_scores(qc, kc) @ vc).baddbmm_(flat(qc), flat(states[:-1]))  # [N*BH, C, d_v]
        ctx.save_for_backward(qc, kc, vc, states)
        ctx.shape = (B, H, T)
        return from_chunks(o.view_as(vc), B, H, T), states[-1].view_as(S0).clone()

    @staticmethod
    def backward(ctx, do: Optional[Tensor], dS: Optional[Tensor]):
        qc, kc, vc, states = ctx.saved_tensors
        B, H, T = ctx.shape
        if do is None:
            do = vc.new_zeros(B, H, T, vc.shape[-1])
        doc = to_chunks(do, kc.shape[2])  # [N, BH, C, d_v]
        # G_n = dL/dS_n = G_{n+1} + Q_n^T dO_n with G_N = dS_T: a reverse prefix sum.
        g = torch.empty_like(states)  # [N+1, BH, d_k, d_v]
        torch.matmul(qc.transpose(-1, -2), doc, out=g[:-1])  # Q_n^T dO_n
        g[-1] = 0.0 if dS is None else dS.reshape(g.shape[1:])
        for n in range(g.shape[0] - 2, -1, -1):
            g[n] += g[n + 1]
        g_after = g[1:]  # [N, BH, d_k, d_v]: G_{n+1}
        dp = causal_scores(doc, vc)  # [N, BH, C, C]
        dq = flat(dp @ kc).baddbmm_(flat(doc), flat(states[:-1]).transpose(-1, -2))  # [N*BH, C, d_k]
        dk = flat(dp.transpose(-1, -2) @ qc).baddbmm_(flat(vc), flat(g_after).transpose(-1, -2))
        del dp
        dv = flat(causal_scores(qc, kc).transpose(-1, -2) @ doc).baddbmm_(flat(kc), flat(g_after))
        grads = (from_chunks(x.view(kc.shape[:2] + x.shape[1:]), B, H, T) for x in (dq, dk, dv))
        return (*grads, g[0].view(B, H, *g.shape[2:]), None)


def chunk_core(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S0: Tensor, chunk_size: int) -> Tuple[Tensor, Tensor]:
    """Sum rule over chunks of ``chunk_size``. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``."""
    return ChunkSumRule.apply(q, k, v, S0, chunk_size)


chunk_sum_rule = make_op(chunk_core, "sum", "chunk", "Sum rule (linear attention), chunkwise parallel.")
