"""Gated delta rule, chunkwise parallel (the UT transform with cumulative decays), with a hand-derived backward.

It is the delta rule's chunk form (:mod:`fastweights.ops.common.delta_chunk`, :class:`ChunkDeltaRule`) with decays
inside each chunk; that one autograd Function computes both, given the log decays ``g`` or not.

Within a chunk of C tokens starting from state S_n, with ``gamma_i = sum_{s <= i} g_s`` (the log of
``Gamma_i = prod_{s <= i} alpha_s``) and ``D_ij = Gamma_i / Gamma_j`` for ``j <= i`` (0 above), the
state after token i is ``Gamma_i S_n + sum_{j <= i} D_ij k_j v'_j^T`` where the pseudo-values V'
(row t: ``beta_t (v_t - alpha_t S_{t-1}^T k_t)``) solve::

    L V' = diag(beta) V - diag(beta Gamma) K S_n,    L = I + A,   A = strict_lower(diag(beta) (K K^T * D))

so with ``T = L^-1 diag(beta)``, ``P = tril(Q K^T) * D`` (diagonal included), the rows scaled
``Q_in = diag(Gamma) Q`` and ``K_out = diag(Gamma_C / Gamma) K``::

    W = T diag(Gamma) K,   U = T V                          # batched over chunks
    V'_n    = U_n - W_n S_n                                  # the scan over chunks
    S_{n+1} = Gamma_C S_n + K_out,n^T V'_n
    O_n     = Q_in,n S_n + P_n V'_n

Backward, with ``G_{n+1} = dL/dS_{n+1}``: the delta rule's, with the same factors in place::

    dV'_n = P_n^T dO_n + K_out,n G_{n+1}
    G_n   = Gamma_C G_{n+1} + Q_in,n^T dO_n - W_n^T dV'_n
    dQ = diag(Gamma) dO S_n^T + (dP * D) K,   dK = (dP * D)^T Q + diag(Gamma_C / Gamma) V' G_{n+1}^T + ...

(the WY terms through ``diag(Gamma) K`` in W and ``K K^T * D`` in A: the delta rule's, see its
module). The gradient of the log decays: every factor is ``exp(gamma_i)`` on a row of Q or K
(``Q_in``, ``diag(Gamma) K`` in W, the rows of D) or ``exp(-gamma_j)`` on one of K (the columns of
D, ``K_out``), besides ``Gamma_C`` itself, so with ``dK_inv`` the part of dK through the latter::

    dgamma_i = q_i . dq_i + k_i . dk_i - 2 k_i . dK_inv,i   (+ <G_{n+1}, S_{n+1}> at i = C)
    dg_s     = sum_{i >= s} dgamma_i                        # in its chunk: a reverse cumulative sum

(``gamma_C`` scales all of ``S_{n+1} = Gamma_C (S_n + sum_j k_j v'_j^T / Gamma_j)``, whence the
last term). ``D`` is computed as ``exp(gamma_i - gamma_j)``, never as a quotient, so a strong decay
underflows to 0 instead of overflowing. Memory is that of the delta rule plus the cumulative log
decays: O(T (C + d) + (T / C) d_k d_v).
"""

from __future__ import annotations

from typing import Optional, Tuple

from torch import Tensor

from ..common.delta_chunk import ChunkDeltaRule


def chunk_core(
    q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S0: Tensor, chunk_size: int, g: Optional[Tensor] = None
) -> Tuple[Tensor, Tensor]:
    """Gated delta rule over chunks of ``chunk_size``. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``,
    ``beta, g: [B, H, T]`` (None: rate 1; no decay, the delta rule)."""
    if beta is None:
        beta = q.new_ones(q.shape[:3])
    return ChunkDeltaRule.apply(q, k, v, beta, g, S0, chunk_size)
