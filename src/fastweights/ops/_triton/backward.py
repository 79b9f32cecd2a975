"""Backward kernels of the chunkwise sum, delta and gated delta rules (layout and indexing: :mod:`.common`).

With ``P = scale tril(Q K^T) * D``, ``dO`` the output's gradient, ``G_{n+1} = dL/dS_{n+1}`` and the
gated rule's decays (``GATED``; otherwise every factor is 1: ``Gamma = exp(gamma)`` per row, ``D``,
``Gamma_C``, ``K_out = diag(Gamma_C / Gamma) K``, as in :mod:`.forward`):

- ``dv_local`` (grid: chunks x heads): the chunk-local part of ``dV'``: ``P^T dO``;
- ``state_bwd`` (grid: value blocks x sequences x heads, the reverse scan): stores ``G_{n+1}`` per
  chunk, ``dV'_n = P_n^T dO_n + K_out,n G_{n+1}`` (in place of the local part) and
  ``G_n = Gamma_C G_{n+1} + scale (diag(Gamma) Q_n)^T dO_n (- W_n^T dV'_n)``; ``dS_0 = G_0``;
- ``grads_qk`` (grid: key blocks x chunks x heads): ``dQ = scale (diag(Gamma) dO S_n^T + dP K)``,
  ``dK = diag(Gamma_C / Gamma) V' G_{n+1}^T + dP^T scale Q`` with ``dP = tril(dO V'^T) * D`` and, for
  the delta rules, ``-dW = dV' S_n^T``; gated, also ``<G_{n+1}, S_{n+1}>`` per chunk and key block
  (``dgl``: the gradient of ``gamma_C``);
- ``wy_bwd`` (delta rules, grid: chunks x heads): through ``W = T diag(Gamma) K``, ``U = T V``,
  ``T = L^-1 diag(beta)``, ``L = I + strict_lower(diag(beta) (K K^T * D))``: ``dV = T^T dU``,
  ``dT = dU V^T + dW (diag(Gamma) K)^T``, ``dK += diag(Gamma) T^T dW``,
  ``dA = -strict_lower(L^-T dT T^T)`` and from it ``dK`` and ``dbeta`` (``dU = dV'``); gated, the
  log decays' gradient ``dgamma_i = q_i . dq_i + k_i . dk_i - 2 k_i . dk_inv,i`` (``dk_inv``: the part
  of dK through the factors ``exp(-gamma_j)``, i.e. the columns of D and ``K_out``) plus
  ``<G_{n+1}, S_{n+1}>`` at the chunk's end, and ``dg`` its reverse cumulative sum in the chunk.

The derivation is in :mod:`fastweights.ops.common.delta_chunk` and
:mod:`fastweights.ops.gated_delta_rule.chunk`. The scan holds ``G`` as up to four ``[BK, BV]`` key
blocks like the forward scan (:mod:`.blocks`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import blocks
from .common import chunk_decay, chunk_rows, decay_matrix, load_block, load_rows, load_state, sequence, store_block


@triton.jit
def _scores(
    q,
    k,
    g,
    rows,
    m_t,
    H,
    i_h,
    K,
    scale,
    BT: tl.constexpr,
    BK: tl.constexpr,
    GATED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``P = scale tril(Q K^T) * D`` ``[BT, BT]`` of one chunk, in float32, over blocks of key columns."""
    o_c = tl.arange(0, BT)
    b_p = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_q = load_block(q, rows, m_t, H, i_h, K, i_k, BK)  # [BT, BK]
        b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)
        b_p += tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)
    if GATED:
        b_gam, _ = chunk_decay(g, rows, m_t, H, i_h, BT)
        b_p = b_p * decay_matrix(b_gam, BT)
    return tl.where(o_c[:, None] >= o_c[None, :], b_p * scale, 0.0)


@triton.jit
def dv_local(
    q,
    k,
    g,
    do,
    dvn,
    scale,
    chunk_indices,
    cu_seqlens,
    H,
    K,
    V,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``P^T dO`` of one chunk and head, written to ``dvn``."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    rows, m_t = chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    b_pt = tl.trans(_scores(q, k, g, rows, m_t, H, i_h, K, scale, BT, BK, GATED, PRECISION)).to(do.dtype.element_ty)
    for i_v in range(tl.cdiv(V, BV)):
        b_do = load_block(do, rows, m_t, H, i_h, V, i_v, BV)  # [BT, BV]
        store_block(dvn, tl.dot(b_pt, b_do, input_precision=PRECISION), rows, m_t, H, i_h, V, i_v, BV)


@triton.jit
def state_bwd(
    q,
    k,
    g,
    w,
    do,
    dvn,
    dht,
    dhs,
    dh0,
    scale,
    chunk_offsets,
    cu_seqlens,
    H,
    K,
    V,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    NK: tl.constexpr,
    DELTA: tl.constexpr,
    GATED: tl.constexpr,
    HAS_DHT: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The reverse scan over one sequence's chunks for one head and block of value columns: ``G_{n+1}``
    per chunk (``dhs``), ``dV'`` (``dvn``, which holds ``P^T dO`` on entry) and ``dS_0`` (``dh0``).
    ``G`` is held as the key blocks of :mod:`.blocks`."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, bos, eos, c0 = sequence(chunk_offsets, cu_seqlens, i_nh, H)
    dt = k.dtype.element_ty
    o_t = tl.arange(0, BT)
    b_g1, b_g2, b_g3, b_g4 = blocks.init(dht, i_n, H, i_h, K, V, i_v, BK, BV, NK, HAS_DHT)
    n_chunks = tl.cdiv(eos - bos, BT)
    for j in range(n_chunks):
        i_t = n_chunks - 1 - j
        blocks.store(dhs, b_g1, b_g2, b_g3, b_g4, c0 + i_t, H, i_h, K, V, i_v, BK, BV, NK)
        rows = bos + i_t * BT + o_t
        m_t = rows < eos
        b_kg = blocks.contract(k, rows, m_t, H, i_h, K, b_g1, b_g2, b_g3, b_g4, BK, NK, PRECISION)  # K G_{n+1}
        b_do = load_block(do, rows, m_t, H, i_h, V, i_v, BV).to(tl.float32) * scale  # [BT, BV]
        if GATED:  # K_out = diag(Gamma_C / Gamma) K; Q^T diag(Gamma) dO; G_{n+1} decays by Gamma_C
            b_gam, b_gl = chunk_decay(g, rows, m_t, H, i_h, BT)
            b_kg = b_kg * tl.exp(b_gl - b_gam)[:, None]
            b_do = b_do * tl.exp(b_gam)[:, None]
            b_g1, b_g2, b_g3, b_g4 = blocks.scale(b_g1, b_g2, b_g3, b_g4, tl.exp(b_gl), NK)
        b_dvn = load_block(dvn, rows, m_t, H, i_h, V, i_v, BV).to(tl.float32) + b_kg  # dV' = P^T dO + K_out G_{n+1}
        store_block(dvn, b_dvn, rows, m_t, H, i_h, V, i_v, BV)
        # G_n = Gamma_C G_{n+1} + scale Q^T diag(Gamma) dO (- W^T dV')
        b_g1, b_g2, b_g3, b_g4 = blocks.update(
            q, rows, m_t, H, i_h, K, b_do.to(dt), b_g1, b_g2, b_g3, b_g4, BK, NK, PRECISION
        )
        if DELTA:
            b_g1, b_g2, b_g3, b_g4 = blocks.update(
                w, rows, m_t, H, i_h, K, (-b_dvn).to(dt), b_g1, b_g2, b_g3, b_g4, BK, NK, PRECISION
            )
    blocks.store(dh0, b_g1, b_g2, b_g3, b_g4, i_n, H, i_h, K, V, i_v, BK, BV, NK)


@triton.jit
def grads_qk(
    q,
    k,
    g,
    vn,
    dvn,
    hs,
    dhs,
    do,
    dq,
    dk,
    dkp,
    ndw,
    dgl,
    scale,
    chunk_indices,
    cu_seqlens,
    H,
    K,
    V,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    DELTA: tl.constexpr,
    GATED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """dQ, the attention and state parts of dK (the whole dK for the sum rule, ``dk``; for the delta
    rules the float32 part ``dkp`` that :func:`wy_bwd` completes) and (delta rules) ``-dW`` for one
    block of key columns of one chunk and head; the value columns are visited in blocks of BV. Gated,
    also this key block's part of ``<G_{n+1}, S_{n+1}> = Gamma_C <G_{n+1}, S_n> + <K_out G_{n+1}, V'>``
    (``dgl`` ``[chunks, H, key blocks]``: the gradient of ``gamma_C``)."""
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    NKB = tl.num_programs(0)
    rows, m_t = chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    o_c = tl.arange(0, BT)
    dt = q.dtype.element_ty
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_ndw = tl.zeros([BT, BK], dtype=tl.float32)  # -dW = dV' S^T (delta)
    b_dp = tl.zeros([BT, BT], dtype=tl.float32)  # dO V'^T
    b_inner = 0.0  # <G_{n+1}, S_n> over this key block (gated)
    for i_v in range(tl.cdiv(V, BV)):
        b_do = load_block(do, rows, m_t, H, i_h, V, i_v, BV)  # [BT, BV]
        b_vn = load_block(vn, rows, m_t, H, i_h, V, i_v, BV)  # V' (V for the sum rule)
        b_h = load_state(hs, i_c, H, i_h, K, V, i_k, i_v, BK, BV)  # [BK, BV]: S_n
        b_g = load_state(dhs, i_c, H, i_h, K, V, i_k, i_v, BK, BV)  # G_{n+1}
        if GATED:
            b_inner += tl.sum(tl.sum(b_g * b_h, 1), 0)
        b_h, b_g = b_h.to(dt), b_g.to(dt)
        b_dp += tl.dot(b_do, tl.trans(b_vn), input_precision=PRECISION)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PRECISION)
        b_dk += tl.dot(b_vn, tl.trans(b_g), input_precision=PRECISION)
        if DELTA:
            b_dvn = load_block(dvn, rows, m_t, H, i_h, V, i_v, BV)
            b_ndw += tl.dot(b_dvn, tl.trans(b_h), input_precision=PRECISION)
    b_dp = tl.where(o_c[:, None] >= o_c[None, :], b_dp * scale, 0.0)  # scale tril(dO V'^T)
    b_dq = b_dq * scale
    b_q = load_block(q, rows, m_t, H, i_h, K, i_k, BK)
    b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)
    if GATED:
        b_gam, b_gl = chunk_decay(g, rows, m_t, H, i_h, BT)
        b_dp = b_dp * decay_matrix(b_gam, BT)
        b_dq = b_dq * tl.exp(b_gam)[:, None]
        b_dk = b_dk * tl.exp(b_gl - b_gam)[:, None]  # K_out's part: diag(Gamma_C / Gamma) V' G^T
        # <K_out G, V'> = sum_i (Gamma_C / Gamma_i) v'_i . (G^T k_i) = <that part, K>
        b_inner = tl.exp(b_gl) * b_inner + tl.sum(tl.sum(b_dk * b_k.to(tl.float32), 1), 0)
        tl.store(dgl + (i_c * H + i_h) * NKB + i_k, b_inner)
    b_dp = b_dp.to(dt)
    b_dq += tl.dot(b_dp, b_k, input_precision=PRECISION)
    b_dk += tl.dot(tl.trans(b_dp), b_q, input_precision=PRECISION)
    store_block(dq, b_dq, rows, m_t, H, i_h, K, i_k, BK)
    if DELTA:
        store_block(dkp, b_dk, rows, m_t, H, i_h, K, i_k, BK)
        store_block(ndw, b_ndw, rows, m_t, H, i_h, K, i_k, BK)
    else:
        store_block(dk, b_dk, rows, m_t, H, i_h, K, i_k, BK)


@triton.jit
def wy_bwd(
    q,
    k,
    v,
    beta,
    g,
    linv,
    dvn,
    ndw,
    dkp,
    dq,
    dgl,
    dk,
    dv,
    dbeta,
    dg,
    chunk_indices,
    cu_seqlens,
    H,
    K,
    V,
    NKB,
    BT: tl.constexpr,
    BK: tl.constexpr,
    BV: tl.constexpr,
    GATED: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Delta rules, one chunk and head: dV, and dK (``dkp``, the part from :func:`grads_qk`, plus the
    WY part) and dbeta through ``W = T diag(Gamma) K``, ``U = T V`` (``dU = dV'``, ``dW = -ndw``);
    gated, ``dg`` from ``dq``, the final dK, its ``exp(-gamma)`` part and the ``NKB`` partial sums of
    ``<G_{n+1}, S_{n+1}>`` from :func:`grads_qk`."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    rows, m_t = chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    o_c = tl.arange(0, BT)
    dt = k.dtype.element_ty
    b_beta = load_rows(beta, rows, m_t, H, i_h)  # [BT]
    b_linv = load_block(linv, rows, m_t, H, i_h, BT, 0, BT).to(tl.float32)  # [BT, BT]
    b_tmd = (b_linv * b_beta[None, :]).to(dt)  # T = L^-1 diag(beta), as a product operand
    b_row = tl.full([BT], 1.0, dtype=tl.float32)  # Gamma per row (gated)
    if GATED:
        b_gam, _ = chunk_decay(g, rows, m_t, H, i_h, BT)
        b_row = tl.exp(b_gam)
    b_dtm = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        b_dvn = load_block(dvn, rows, m_t, H, i_h, V, i_v, BV)  # [BT, BV]: dU
        b_v = load_block(v, rows, m_t, H, i_h, V, i_v, BV)
        b_dtm += tl.dot(b_dvn, tl.trans(b_v), input_precision=PRECISION)  # dU V^T
        store_block(dv, tl.dot(tl.trans(b_tmd), b_dvn, input_precision=PRECISION), rows, m_t, H, i_h, V, i_v, BV)
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)  # [BT, BK]
        if GATED:
            b_k = (b_k * b_row[:, None]).to(dt)  # diag(Gamma) K
        b_ndw = load_block(ndw, rows, m_t, H, i_h, K, i_k, BK).to(dt)
        b_dtm -= tl.dot(b_ndw, tl.trans(b_k), input_precision=PRECISION)  # + dW (diag(Gamma) K)^T
    b_dbeta = tl.sum(b_dtm * b_linv, 0)  # [BT]: sum_i dT_ij (L^-1)_ij
    b_nda = tl.dot(tl.trans(b_linv), b_dtm, input_precision=PRECISION)  # L^-T dT
    b_nda = tl.dot(b_nda, tl.trans(b_linv * b_beta[None, :]), input_precision=PRECISION)  # L^-T dT T^T
    b_nda = tl.where(o_c[:, None] > o_c[None, :], b_nda, 0.0)  # -dA = strict_lower(L^-T dT T^T)
    if GATED:
        b_nda = b_nda * decay_matrix(b_gam, BT)  # -dA * D: the gradient of K K^T
    b_ndad = b_nda.to(dt)
    b_ndab = (b_nda * b_beta[:, None]).to(dt)  # -diag(beta) dA (* D)
    b_dgam = tl.zeros([BT], dtype=tl.float32)  # gated: dL/dgamma
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)
        b_ndw = load_block(ndw, rows, m_t, H, i_h, K, i_k, BK).to(dt)
        b_dkp = load_block(dkp, rows, m_t, H, i_h, K, i_k, BK).to(tl.float32)
        b_dk = (
            b_dkp - tl.dot(tl.trans(b_tmd), b_ndw, input_precision=PRECISION) * b_row[:, None]
        )  # + diag(Gamma) T^T dW
        b_ndak = tl.dot(b_ndad, b_k, input_precision=PRECISION)  # [BT, BK]: -(dA * D) K
        b_dbeta -= tl.sum(b_k.to(tl.float32) * b_ndak, 1)
        b_dk -= b_ndak * b_beta[:, None]  # + diag(beta) (dA * D) K
        b_col = tl.dot(tl.trans(b_ndab), b_k, input_precision=PRECISION)  # -(diag(beta) dA * D)^T K
        b_dk -= b_col
        store_block(dk, b_dk, rows, m_t, H, i_h, K, i_k, BK)
        if GATED:  # q . dq + k . dk - 2 k . dk_inv, dk_inv = dkp - b_col
            b_kf = b_k.to(tl.float32)
            b_qdq = load_block(q, rows, m_t, H, i_h, K, i_k, BK).to(tl.float32) * load_block(
                dq, rows, m_t, H, i_h, K, i_k, BK
            ).to(tl.float32)
            b_dgam += tl.sum(b_qdq + b_kf * (b_dk - 2.0 * (b_dkp - b_col)), 1)
    tl.store(dbeta + rows * H + i_h, b_dbeta.to(dbeta.dtype.element_ty), mask=m_t)
    if GATED:
        b_end = 0.0  # <G_{n+1}, S_{n+1}>: the gradient of gamma_C, summed over grads_qk's key blocks
        for i_p in range(NKB):
            b_end += tl.load(dgl + (i_c * H + i_h) * NKB + i_p)
        b_dgam += tl.where(o_c == BT - 1, b_end, 0.0)
        tl.store(dg + rows * H + i_h, tl.cumsum(b_dgam, 0, reverse=True), mask=m_t)
