"""Backward kernels of the chunkwise sum and delta rules (layout and indexing: :mod:`.common`).

With ``P = scale tril(Q K^T)``, ``dO`` the output's gradient and ``G_{n+1} = dL/dS_{n+1}``:

- ``dv_local`` (grid: chunks x heads): the chunk-local part of ``dV'``: ``P^T dO``;
- ``state_bwd`` (grid: value blocks x sequences x heads, the reverse scan): stores ``G_{n+1}`` per
  chunk, ``dV'_n = P_n^T dO_n + K_n G_{n+1}`` (in place of the local part) and
  ``G_n = G_{n+1} + scale Q_n^T dO_n (- W_n^T dV'_n)``; ``dS_0 = G_0``;
- ``grads_qk`` (grid: key blocks x chunks x heads): ``dQ = scale (dO S_n^T + tril(dO V'^T) K)``,
  ``dK = V' G_{n+1}^T + tril(dO V'^T)^T scale Q`` and, for the delta rule, ``-dW = dV' S_n^T``;
- ``wy_bwd`` (delta rule, grid: chunks x heads): through ``W = T K``, ``U = T V``,
  ``T = L^-1 diag(beta)``: ``dV = T^T dU``, ``dT = dU V^T + dW K^T``, ``dK += T^T dW``,
  ``dA = -strict_lower(L^-T dT T^T)`` and from it ``dK`` and ``dbeta`` (``dU = dV'``).

The derivation is in docs/ops.md and in :mod:`fastweights.ops.delta_rule.chunk`. The scan holds
``G`` as up to four ``[BK, BV]`` key blocks like the forward scan.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import chunk_rows, load_block, load_rows, load_state, sequence, store_block, store_state


@triton.jit
def _scores(q, k, rows, m_t, H, i_h, K, scale, BT: tl.constexpr, BK: tl.constexpr, PRECISION: tl.constexpr):
    """``P = scale tril(Q K^T)`` ``[BT, BT]`` of one chunk, in float32, over blocks of key columns."""
    o_c = tl.arange(0, BT)
    b_p = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_q = load_block(q, rows, m_t, H, i_h, K, i_k, BK)  # [BT, BK]
        b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)
        b_p += tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)
    return tl.where(o_c[:, None] >= o_c[None, :], b_p * scale, 0.0)


@triton.jit
def dv_local(q, k, do, dvn, scale, chunk_indices, cu_seqlens, H, K, V,
             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """``P^T dO`` of one chunk and head, written to ``dvn``."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    rows, m_t = chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    b_pt = tl.trans(_scores(q, k, rows, m_t, H, i_h, K, scale, BT, BK, PRECISION)).to(do.dtype.element_ty)
    for i_v in range(tl.cdiv(V, BV)):
        b_do = load_block(do, rows, m_t, H, i_h, V, i_v, BV)  # [BT, BV]
        store_block(dvn, tl.dot(b_pt, b_do, input_precision=PRECISION), rows, m_t, H, i_h, V, i_v, BV)


@triton.jit
def _g_update(b_g, q, w, b_do, b_dvn, rows, m_t, H, i_h, K, i_k, scale,
              BK: tl.constexpr, DELTA: tl.constexpr, PRECISION: tl.constexpr):
    """Key block ``i_k`` of ``G_n = G_{n+1} + scale Q^T dO (- W^T dV')``."""
    b_q = load_block(q, rows, m_t, H, i_h, K, i_k, BK)
    b_g += tl.dot(tl.trans(b_q), b_do, input_precision=PRECISION) * scale
    if DELTA:
        b_g -= tl.dot(tl.trans(load_block(w, rows, m_t, H, i_h, K, i_k, BK)), b_dvn, input_precision=PRECISION)
    return b_g


@triton.jit
def state_bwd(q, k, w, do, dvn, dht, dhs, dh0, scale, chunk_offsets, cu_seqlens, H, K, V,
              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr, DELTA: tl.constexpr,
              HAS_DHT: tl.constexpr, PRECISION: tl.constexpr):
    """The reverse scan over one sequence's chunks for one head and block of value columns: ``G_{n+1}``
    per chunk (``dhs``), ``dV'`` (``dvn``, which holds ``P^T dO`` on entry) and ``dS_0`` (``dh0``)."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, bos, eos, c0 = sequence(chunk_offsets, cu_seqlens, i_nh, H)
    dt = k.dtype.element_ty
    o_t = tl.arange(0, BT)
    b_g1 = tl.zeros([BK, BV], dtype=tl.float32)
    if NK > 1:
        b_g2 = tl.zeros([BK, BV], dtype=tl.float32)
    if NK > 2:
        b_g3 = tl.zeros([BK, BV], dtype=tl.float32)
    if NK > 3:
        b_g4 = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_g1 += load_state(dht, i_n, H, i_h, K, V, 0, i_v, BK, BV)
        if NK > 1:
            b_g2 += load_state(dht, i_n, H, i_h, K, V, 1, i_v, BK, BV)
        if NK > 2:
            b_g3 += load_state(dht, i_n, H, i_h, K, V, 2, i_v, BK, BV)
        if NK > 3:
            b_g4 += load_state(dht, i_n, H, i_h, K, V, 3, i_v, BK, BV)
    n_chunks = tl.cdiv(eos - bos, BT)
    for j in range(n_chunks):
        i_t = n_chunks - 1 - j
        i_s = c0 + i_t
        store_state(dhs, b_g1, i_s, H, i_h, K, V, 0, i_v, BK, BV)
        if NK > 1:
            store_state(dhs, b_g2, i_s, H, i_h, K, V, 1, i_v, BK, BV)
        if NK > 2:
            store_state(dhs, b_g3, i_s, H, i_h, K, V, 2, i_v, BK, BV)
        if NK > 3:
            store_state(dhs, b_g4, i_s, H, i_h, K, V, 3, i_v, BK, BV)
        rows = bos + i_t * BT + o_t
        m_t = rows < eos
        # dV' = P^T dO + K G_{n+1}
        b_dvn = load_block(dvn, rows, m_t, H, i_h, V, i_v, BV).to(tl.float32)  # [BT, BV]
        b_dvn += tl.dot(load_block(k, rows, m_t, H, i_h, K, 0, BK), b_g1.to(dt), input_precision=PRECISION)
        if NK > 1:
            b_dvn += tl.dot(load_block(k, rows, m_t, H, i_h, K, 1, BK), b_g2.to(dt), input_precision=PRECISION)
        if NK > 2:
            b_dvn += tl.dot(load_block(k, rows, m_t, H, i_h, K, 2, BK), b_g3.to(dt), input_precision=PRECISION)
        if NK > 3:
            b_dvn += tl.dot(load_block(k, rows, m_t, H, i_h, K, 3, BK), b_g4.to(dt), input_precision=PRECISION)
        store_block(dvn, b_dvn, rows, m_t, H, i_h, V, i_v, BV)
        b_dvn = b_dvn.to(dt)
        b_do = load_block(do, rows, m_t, H, i_h, V, i_v, BV)
        b_g1 = _g_update(b_g1, q, w, b_do, b_dvn, rows, m_t, H, i_h, K, 0, scale, BK, DELTA, PRECISION)
        if NK > 1:
            b_g2 = _g_update(b_g2, q, w, b_do, b_dvn, rows, m_t, H, i_h, K, 1, scale, BK, DELTA, PRECISION)
        if NK > 2:
            b_g3 = _g_update(b_g3, q, w, b_do, b_dvn, rows, m_t, H, i_h, K, 2, scale, BK, DELTA, PRECISION)
        if NK > 3:
            b_g4 = _g_update(b_g4, q, w, b_do, b_dvn, rows, m_t, H, i_h, K, 3, scale, BK, DELTA, PRECISION)
    store_state(dh0, b_g1, i_n, H, i_h, K, V, 0, i_v, BK, BV)
    if NK > 1:
        store_state(dh0, b_g2, i_n, H, i_h, K, V, 1, i_v, BK, BV)
    if NK > 2:
        store_state(dh0, b_g3, i_n, H, i_h, K, V, 2, i_v, BK, BV)
    if NK > 3:
        store_state(dh0, b_g4, i_n, H, i_h, K, V, 3, i_v, BK, BV)


@triton.jit
def grads_qk(q, k, vn, dvn, hs, dhs, do, dq, dk, ndw, scale, chunk_indices, cu_seqlens, H, K, V,
             BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr, PRECISION: tl.constexpr):
    """dQ, the attention and state parts of dK and (delta) ``-dW`` for one block of key columns of one
    chunk and head; the value columns are visited in blocks of BV."""
    i_k, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows, m_t = chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    o_c = tl.arange(0, BT)
    dt = q.dtype.element_ty
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_ndw = tl.zeros([BT, BK], dtype=tl.float32)  # -dW = dV' S^T (delta)
    b_dp = tl.zeros([BT, BT], dtype=tl.float32)  # dO V'^T
    for i_v in range(tl.cdiv(V, BV)):
        b_do = load_block(do, rows, m_t, H, i_h, V, i_v, BV)  # [BT, BV]
        b_vn = load_block(vn, rows, m_t, H, i_h, V, i_v, BV)  # V' (V for the sum rule)
        b_h = load_state(hs, i_c, H, i_h, K, V, i_k, i_v, BK, BV).to(dt)  # [BK, BV]: S_n
        b_g = load_state(dhs, i_c, H, i_h, K, V, i_k, i_v, BK, BV).to(dt)  # G_{n+1}
        b_dp += tl.dot(b_do, tl.trans(b_vn), input_precision=PRECISION)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PRECISION)
        b_dk += tl.dot(b_vn, tl.trans(b_g), input_precision=PRECISION)
        if DELTA:
            b_dvn = load_block(dvn, rows, m_t, H, i_h, V, i_v, BV)
            b_ndw += tl.dot(b_dvn, tl.trans(b_h), input_precision=PRECISION)
    b_dp = tl.where(o_c[:, None] >= o_c[None, :], b_dp * scale, 0.0).to(dt)  # scale tril(dO V'^T)
    b_q = load_block(q, rows, m_t, H, i_h, K, i_k, BK)
    b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)
    b_dq = b_dq * scale + tl.dot(b_dp, b_k, input_precision=PRECISION)
    b_dk += tl.dot(tl.trans(b_dp), b_q, input_precision=PRECISION)
    store_block(dq, b_dq, rows, m_t, H, i_h, K, i_k, BK)
    store_block(dk, b_dk, rows, m_t, H, i_h, K, i_k, BK)
    if DELTA:
        store_block(ndw, b_ndw, rows, m_t, H, i_h, K, i_k, BK)


@triton.jit
def wy_bwd(k, v, beta, linv, dvn, ndw, dkp, dk, dv, dbeta, chunk_indices, cu_seqlens, H, K, V,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """Delta rule, one chunk and head: dV, and dK (``dkp``, the part from :func:`grads_qk`, plus the
    WY part) and dbeta through ``W = T K``, ``U = T V`` (``dU = dV'``, ``dW = -ndw``)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    rows, m_t = chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    o_c = tl.arange(0, BT)
    dt = k.dtype.element_ty
    b_beta = load_rows(beta, rows, m_t, H, i_h)  # [BT]
    b_linv = load_block(linv, rows, m_t, H, i_h, BT, 0, BT).to(tl.float32)  # [BT, BT]
    b_tmd = (b_linv * b_beta[None, :]).to(dt)  # T = L^-1 diag(beta), as a product operand
    b_dtm = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(tl.cdiv(V, BV)):
        b_dvn = load_block(dvn, rows, m_t, H, i_h, V, i_v, BV)  # [BT, BV]: dU
        b_v = load_block(v, rows, m_t, H, i_h, V, i_v, BV)
        b_dtm += tl.dot(b_dvn, tl.trans(b_v), input_precision=PRECISION)  # dU V^T
        store_block(dv, tl.dot(tl.trans(b_tmd), b_dvn, input_precision=PRECISION), rows, m_t, H, i_h, V, i_v, BV)
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)  # [BT, BK]
        b_ndw = load_block(ndw, rows, m_t, H, i_h, K, i_k, BK).to(dt)
        b_dtm -= tl.dot(b_ndw, tl.trans(b_k), input_precision=PRECISION)  # + dW K^T
    b_dbeta = tl.sum(b_dtm * b_linv, 0)  # [BT]: sum_i dT_ij (L^-1)_ij
    b_nda = tl.dot(tl.trans(b_linv), b_dtm, input_precision=PRECISION)  # L^-T dT
    b_nda = tl.dot(b_nda, tl.trans(b_linv * b_beta[None, :]), input_precision=PRECISION)  # L^-T dT T^T
    b_nda = tl.where(o_c[:, None] > o_c[None, :], b_nda, 0.0)  # -dA = strict_lower(L^-T dT T^T)
    b_ndad = b_nda.to(dt)
    b_ndab = (b_nda * b_beta[:, None]).to(dt)  # -diag(beta) dA
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)
        b_ndw = load_block(ndw, rows, m_t, H, i_h, K, i_k, BK).to(dt)
        b_dk = load_block(dkp, rows, m_t, H, i_h, K, i_k, BK).to(tl.float32)
        b_dk -= tl.dot(tl.trans(b_tmd), b_ndw, input_precision=PRECISION)  # + T^T dW
        b_ndak = tl.dot(b_ndad, b_k, input_precision=PRECISION)  # [BT, BK]: -dA K
        b_dbeta -= tl.sum(b_k.to(tl.float32) * b_ndak, 1)
        b_dk -= b_ndak * b_beta[:, None]  # + diag(beta) dA K
        b_dk -= tl.dot(tl.trans(b_ndab), b_k, input_precision=PRECISION)  # + (diag(beta) dA)^T K
        store_block(dk, b_dk, rows, m_t, H, i_h, K, i_k, BK)
    tl.store(dbeta + rows * H + i_h, b_dbeta.to(dbeta.dtype.element_ty), mask=m_t)
