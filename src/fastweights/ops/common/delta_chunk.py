"""The delta rules' chunkwise parallel WY/UT form (Yang et al. 2024) with a hand-derived backward.

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

The same Function runs the gated delta rule, given its per-token log decays: every product above
then carries the in-chunk decays (:class:`~fastweights.ops.common.chunked.CumulativeDecay`), and the
backward also returns the gradient of the log decays. ``gated_delta_rule/chunk.py`` gives those
equations; without decays each decay factor is the identity and costs nothing. ``delta_rule/chunk.py``
and ``gated_delta_rule/chunk.py`` are the two rules' chunk forms over this Function.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .chunked import (
    CumulativeDecay,
    Decay,
    causal_scores,
    flat,
    from_chunks,
    segments,
    to_chunks,
    unit_lower_inverse,
    without_autocast,
)


def wy_inverse(kc: Tensor, bc: Tensor, out: Tensor, decay: Decay) -> Tensor:
    """``L^-1`` for every chunk, ``L = I + strict_lower(diag(beta) (K K^T * D))``, written into ``out``.

    ``kc: [..., C, d_k]`` keys, ``bc: [..., C, 1]`` their rates, ``out: [..., C, C]``, ``decay``:
    the segment's ``D`` (:class:`~fastweights.ops.common.chunked.Decay`: none, the delta rule).
    """
    m = decay.mask_(torch.matmul(kc, kc.transpose(-1, -2), out=out)).tril_(-1).mul_(bc)  # beta_i D_ij k_i . k_j, i > j
    m.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    return unit_lower_inverse(m)


def segment_decay(gc: Optional[Tensor], s: slice) -> Decay:
    """The decays of the chunks ``s`` from the cumulative log decays ``gc: [N, BH, C, 1]`` (None: no decay)."""
    return Decay() if gc is None else CumulativeDecay(gc[s])


class ChunkDeltaRule(torch.autograd.Function):
    """``(q, k, v, beta, g, S0, chunk_size) -> (o, S_T)`` on ``[B, H, T, D]`` tensors; see the module docstring.

    ``g: [B, H, T]`` is an optional per-token log decay (the gated delta rule, whose module,
    ``gated_delta_rule/chunk.py``, gives the decayed equations); None is the delta rule, and then
    every decay factor below is the identity (:class:`~fastweights.ops.common.chunked.Decay`). The
    chunk-parallel products are batched over one cache-sized segment of chunks at a time
    (:func:`~fastweights.ops.common.chunked.segments`); the scan runs through the segments in order.
    """

    @staticmethod
    def forward(
        ctx, q: Tensor, k: Tensor, v: Tensor, beta: Tensor, g: Optional[Tensor], S0: Tensor, chunk_size: int
    ) -> Tuple[Tensor, Tensor]:
        B, H, T, _ = q.shape
        qc, kc, vc = (to_chunks(x, chunk_size) for x in (q, k, v))  # [N, BH, C, d]
        bc = to_chunks(beta[..., None], chunk_size)  # [N, BH, C, 1]: padded rates are 0
        gc = None if g is None else to_chunks(g[..., None], chunk_size).cumsum_(-2)  # [N, BH, C, 1]: gamma
        N, BH, C, d_k = kc.shape
        d_v = vc.shape[-1]
        linv = kc.new_empty(N, BH, C, C)  # L^-1 per chunk
        w, vn, o = torch.empty_like(kc), torch.empty_like(vc), torch.empty_like(vc)  # W, V' (U until the scan), O
        states = qc.new_empty(N + 1, BH, d_k, d_v)  # [N+1, BH, d_k, d_v]: S_n
        states[0] = S0.reshape(BH, d_k, d_v)
        for s in segments(N, BH * C * max(C, d_k, d_v), kc.device):
            decay = segment_decay(gc, s)
            tm = wy_inverse(kc[s], bc[s], linv[s], decay) * bc[s].transpose(
                -1, -2
            )  # [n, BH, C, C]: T = L^-1 diag(beta)
            torch.matmul(decay.columns(tm), kc[s], out=w[s])  # W = T diag(Gamma) K
            torch.matmul(tm, vc[s], out=vn[s])  # U = T V
            k_out = decay.tail(kc[s]).transpose(-1, -2)  # [n, BH, d_k, C]: (diag(Gamma_C / Gamma) K)^T
            for i, n in enumerate(range(s.start, s.stop)):
                vn[n].baddbmm_(w[n], states[n], alpha=-1.0)  # V'_n = U_n - W_n S_n
                torch.baddbmm(decay.carry(i, states[n]), k_out[i], vn[n], out=states[n + 1])  # S_{n+1}
            torch.matmul(decay.mask_(causal_scores(qc[s], kc[s])), vn[s], out=o[s])
            flat(o[s]).baddbmm_(flat(decay.head(qc[s])), flat(states[s]))  # O = diag(Gamma) Q S_n + P V'
        ctx.save_for_backward(qc, kc, vc, bc, gc, linv, w, vn, states)
        ctx.shape = (B, H, T)
        return from_chunks(o, B, H, T), states[-1].view_as(S0).clone()

    @staticmethod
    @once_differentiable  # in-place kernels: a double backward must fail loudly, not be wrong
    @without_autocast
    def backward(ctx, do: Optional[Tensor], dS: Optional[Tensor]):
        qc, kc, vc, bc, gc, linv, w, vn, states = ctx.saved_tensors
        B, H, T = ctx.shape
        N, BH, C, d_k = kc.shape
        d_v = vc.shape[-1]
        if do is None:
            do = vn.new_zeros(B, H, T, d_v)
        doc = to_chunks(do, C)  # [N, BH, C, d_v]
        gs = torch.empty_like(states)  # [N+1, BH, d_k, d_v]: gs[n] = G_n = dL/dS_n
        gs[N] = 0.0 if dS is None else dS.reshape(gs.shape[1:])
        dq, dk, dv = torch.empty_like(qc), torch.empty_like(kc), torch.empty_like(vc)
        dbeta = kc.new_empty(N, BH, C)
        dgam = kc.new_empty(N, BH, C) if ctx.needs_input_grad[4] else None  # dL/dgamma
        wt = w.transpose(-1, -2)  # [N, BH, d_k, C]
        for s in reversed(segments(N, BH * C * max(C, d_k, d_v), kc.device)):
            decay = segment_decay(gc, s)
            dvn = (
                decay.mask_(causal_scores(qc[s], kc[s])).transpose(-1, -2) @ doc[s]
            )  # [n, BH, C, d_v]: P^T dO, then dV'
            do_in = decay.head(doc[s])  # [n, BH, C, d_v]: diag(Gamma) dO
            y = qc[s].transpose(-1, -2) @ do_in  # [n, BH, d_k, d_v]: (diag(Gamma) Q)^T dO
            k_out = decay.tail(kc[s])  # [n, BH, C, d_k]: diag(Gamma_C / Gamma) K
            for i, n in reversed(list(enumerate(range(s.start, s.stop)))):
                dvn[i].baddbmm_(k_out[i], gs[n + 1])  # dV'_n = P^T dO + K_out G_{n+1}
                torch.add(decay.carry(i, gs[n + 1]), y[i], out=gs[n])
                gs[n].baddbmm_(wt[n], dvn[i], alpha=-1.0)  # G_n = Gamma_C G_{n+1} + Q_in^T dO - W^T dV'
            s_before = flat(states[s])  # [n*BH, d_k, d_v]
            g_after = flat(gs[s.start + 1 : s.stop + 1])  # [n*BH, d_k, d_v]
            dp = decay.mask_(causal_scores(doc[s], vn[s]))  # [n, BH, C, C]: dP * D
            dq_s, dk_s = flat(dq[s]), flat(dk[s])  # views: written in place
            torch.matmul(dp, kc[s], out=dq[s])
            dq_s.baddbmm_(flat(do_in), s_before.transpose(-1, -2))  # dQ = diag(Gamma) dO S^T + (dP * D) K
            torch.matmul(dp.transpose(-1, -2), qc[s], out=dk[s])
            dk_s.baddbmm_(flat(decay.tail(vn[s])), g_after.transpose(-1, -2))  # dK = (dP * D)^T Q + K_out's: V' G^T
            ndw = dvn @ states[s].transpose(-1, -2)  # [n, BH, C, d_k]: -dW
            # WY backward with T = L^-1 diag(beta), W = T diag(Gamma) K: dK += diag(Gamma) T^T dW,
            # dV = T^T dU, dT = dW (diag(Gamma) K)^T + dU V^T, dbeta_j += sum_i dT_ij (L^-1)_ij,
            # dA = -strict_lower(L^-T dT T^T).
            tm = linv[s] * bc[s].transpose(-1, -2)  # [n, BH, C, C]
            tmt = tm.transpose(-1, -2)
            torch.matmul(tmt, dvn, out=dv[s])
            dtm = dvn @ vc[s].transpose(-1, -2)  # [n, BH, C, C]
            flat(dtm).baddbmm_(flat(ndw), flat(decay.head(kc[s])).transpose(-1, -2), alpha=-1.0)
            torch.sum(dtm * linv[s], dim=-2, out=dbeta[s])
            nda = decay.mask_((linv[s].transpose(-1, -2) @ dtm @ tmt).tril_(-1))  # -dA * D
            # A = strict_lower(diag(beta) (K K^T * D)): dK += diag(beta) (dA * D) K + (diag(beta) (dA * D))^T K.
            ndak = nda @ kc[s]  # [n, BH, C, d_k]: -(dA * D) K
            dbeta[s] -= (kc[s] * ndak).sum(-1)
            dk_s.baddbmm_(flat(nda.mul_(bc[s])).transpose(-1, -2), flat(kc[s]), alpha=-1.0)
            if dgam is not None:  # k_i . dK_inv,i: so far dK holds the terms through 1 / Gamma (D's columns, K_out)
                dgam[s] = (kc[s] * dk[s]).sum(-1)
            dk_s.baddbmm_(flat(decay.columns(tm)).transpose(-1, -2), flat(ndw), alpha=-1.0).sub_(flat(ndak.mul_(bc[s])))
            if dgam is not None:  # dgamma_i = q_i . dq_i + k_i . dk_i - 2 k_i . dK_inv,i (+ <G, S> at the end)
                dgam[s] = (qc[s] * dq[s]).sum(-1) + (kc[s] * dk[s]).sum(-1) - 2.0 * dgam[s]
                dgam[s, :, -1] += (states[s.start + 1 : s.stop + 1] * gs[s.start + 1 : s.stop + 1]).sum((-2, -1))
        grads = [from_chunks(t, B, H, T) for t in (dq, dk, dv)]
        dbeta = from_chunks(dbeta[..., None], B, H, T)[..., 0] if ctx.needs_input_grad[3] else None
        dg = None
        if dgam is not None:  # gamma_i = sum_{s <= i} g_s in a chunk: dg is the reverse cumulative sum
            dg = from_chunks(dgam.flip(-1).cumsum(-1).flip(-1)[..., None], B, H, T)[..., 0]
        return (*grads, dbeta, dg, gs[0].view(B, H, d_k, d_v), None)
