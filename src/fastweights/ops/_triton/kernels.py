"""Triton kernels of the chunkwise sum and delta rules (forward and backward).

Every sequence of a batch is one range ``[bos, eos)`` of packed tokens (``cu_seqlens``; a plain
``[B, T]`` batch is B ranges of T), cut into chunks of ``BT`` tokens; ``chunk_indices[c] = (n, j)``
names chunk c as chunk j of sequence n, and ``chunk_offsets[n]`` is the first chunk of sequence n.
Tensors are ``[tokens, H, D]`` (token-major, as the public ``[B, T, H, D]`` layout flattened) and
per-chunk states ``[chunks, H, d_k, d_v]``. With ``P = tril(Q K^T)`` (``Q`` already scaled):

- ``wy_fwd`` (delta rule, per chunk): ``L = I + strict_lower(diag(beta) K K^T)``, its inverse by
  forward substitution, ``T = L^-1 diag(beta)``, ``W = T K``, ``U = T V``;
- ``state_fwd`` (per sequence, the scan over its chunks): stores the state ``S_n`` at the start of
  each chunk, ``V'_n = U_n - W_n S_n`` (delta) or ``V_n`` (sum), ``S_{n+1} = S_n + K_n^T V'_n``;
- ``output_fwd`` (per chunk): ``O_n = Q_n S_n + P_n V'_n``;
- ``state_bwd`` (per sequence, in reverse): ``G_{n+1} = dL/dS_{n+1}`` stored per chunk,
  ``dV'_n = P_n^T dO_n + K_n G_{n+1}`` (delta), ``G_n = G_{n+1} + Q_n^T dO_n (- W_n^T dV'_n)``;
- ``grads`` (per chunk): dQ, dK, dV and, for the delta rule, dbeta through the WY representation
  (the equations of :mod:`fastweights.ops.delta_rule.chunk`).

A program holds at most a ``[d_k, BV]`` block of a state and ``[BT, d_k]`` / ``[BT, BT]`` tiles:
value columns are visited in blocks of BV (a grid axis, or a loop where a product sums over them).

Products accumulate in float32; the state is float32; operands of a product are cast to the input
dtype (bf16/fp16 inputs give bf16/fp16 tensor-core products), and float32 inputs use IEEE float32
products. Feature widths are padded to powers of two >= 16 by masking.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _chunk_rows(chunk_indices, cu_seqlens, i_c, BT: tl.constexpr):
    """First token of chunk ``i_c``, its token offsets ``[BT]`` and their validity mask."""
    i_n = tl.load(chunk_indices + 2 * i_c).to(tl.int64)
    i_t = tl.load(chunk_indices + 2 * i_c + 1).to(tl.int64)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    t0 = bos + i_t * BT
    o_t = tl.arange(0, BT)
    return t0 + o_t, o_t < eos - t0


@triton.jit
def _sequence(chunk_offsets, cu_seqlens, i_nh, H):
    """Sequence and head of program ``i_nh`` (sequences x heads), its tokens ``[bos, eos)`` and first chunk."""
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    return i_n, i_h, bos, eos, tl.load(chunk_offsets + i_n).to(tl.int64)


@triton.jit
def _load(ptr, rows, row_mask, H, i_h, D, cols, col_mask):
    """``[len(rows), len(cols)]`` block of a ``[tokens, H, D]`` tensor (zeros outside the masks)."""
    p = ptr + (rows[:, None] * H + i_h) * D + cols[None, :]
    return tl.load(p, mask=row_mask[:, None] & col_mask[None, :], other=0.0)


@triton.jit
def _store(ptr, x, rows, row_mask, H, i_h, D, cols, col_mask):
    p = ptr + (rows[:, None] * H + i_h) * D + cols[None, :]
    tl.store(p, x.to(ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


@triton.jit
def _state_ptr(ptr, i_s, H, i_h, K, V, o_k, o_v):
    """Pointers of the ``[BK, BV]`` block of state ``i_s`` of a ``[states, H, K, V]`` tensor."""
    return ptr + ((i_s * H + i_h) * K + o_k[:, None]) * V + o_v[None, :]


@triton.jit
def wy_fwd(k, v, beta, w, u, linv, chunk_indices, cu_seqlens, H, K, V,
           BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """Delta rule: ``L^-1``, ``W = T K`` and ``U = T V`` (in blocks of BV value columns) of one chunk and
    head (grid: chunks, heads)."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    rows, m_t = _chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    o_k, o_c = tl.arange(0, BK), tl.arange(0, BT)
    b_k = _load(k, rows, m_t, H, i_h, K, o_k, o_k < K)  # [BT, BK]
    b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)  # [BT]
    b_a = tl.dot(b_k, tl.trans(b_k), input_precision=PRECISION)  # [BT, BT]: k_i . k_j
    b_a = tl.where(o_c[:, None] > o_c[None, :], -b_a * b_beta[:, None], 0.0)  # -A, A = strict_lower(diag(beta) K K^T)
    # Forward substitution: row i of L^-1 - I is -A_i + sum_{j<i} (-A_ij) (row j of L^-1 - I).
    for i in range(1, BT):
        is_row = o_c == i
        b_row = tl.sum(tl.where(is_row[:, None], b_a, 0.0), 0)  # [BT]
        b_row = b_row + tl.sum(b_row[:, None] * b_a, 0) * (o_c < i)
        b_a = tl.where(is_row[:, None], b_row[None, :], b_a)
    b_linv = b_a + (o_c[:, None] == o_c[None, :])  # [BT, BT]: L^-1
    b_tm = (b_linv * b_beta[None, :]).to(b_k.dtype)  # T = L^-1 diag(beta)
    _store(w, tl.dot(b_tm, b_k, input_precision=PRECISION), rows, m_t, H, i_h, K, o_k, o_k < K)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        b_v = _load(v, rows, m_t, H, i_h, V, o_v, o_v < V)  # [BT, BV]
        _store(u, tl.dot(b_tm, b_v, input_precision=PRECISION), rows, m_t, H, i_h, V, o_v, o_v < V)
    _store(linv, b_linv, rows, m_t, H, i_h, BT, o_c, o_c < BT)


@triton.jit
def state_fwd(k, v, w, u, vn, h0, hs, ht, chunk_offsets, cu_seqlens, H, K, V,
              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
              HAS_H0: tl.constexpr, STORE_FINAL: tl.constexpr, PRECISION: tl.constexpr):
    """The scan over one sequence's chunks for one head and one block of value columns
    (grid: value blocks, sequences x heads): ``S_n`` per chunk, ``V'_n`` (delta), the final state."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, bos, eos, c0 = _sequence(chunk_offsets, cu_seqlens, i_nh, H)
    o_k, o_v, o_t = tl.arange(0, BK), i_v * BV + tl.arange(0, BV), tl.arange(0, BT)
    m_k, m_v = o_k < K, o_v < V
    m_s = m_k[:, None] & m_v[None, :]
    b_h = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        b_h += tl.load(_state_ptr(h0, i_n, H, i_h, K, V, o_k, o_v), mask=m_s, other=0.0).to(tl.float32)
    for i_t in range(tl.cdiv(eos - bos, BT)):
        tl.store(_state_ptr(hs, c0 + i_t, H, i_h, K, V, o_k, o_v), b_h.to(hs.dtype.element_ty), mask=m_s)
        rows = bos + i_t * BT + o_t
        m_t = rows < eos
        b_k = _load(k, rows, m_t, H, i_h, K, o_k, m_k)  # [BT, BK]
        if DELTA:
            b_w = _load(w, rows, m_t, H, i_h, K, o_k, m_k)  # [BT, BK]
            b_u = _load(u, rows, m_t, H, i_h, V, o_v, m_v)  # [BT, BV]
            b_vn = b_u.to(tl.float32) - tl.dot(b_w, b_h.to(b_w.dtype), input_precision=PRECISION)
            _store(vn, b_vn, rows, m_t, H, i_h, V, o_v, m_v)
            b_vn = b_vn.to(b_k.dtype)
        else:
            b_vn = _load(v, rows, m_t, H, i_h, V, o_v, m_v)
        b_h += tl.dot(tl.trans(b_k), b_vn, input_precision=PRECISION)  # S += K^T V'
    if STORE_FINAL:
        tl.store(_state_ptr(ht, i_n, H, i_h, K, V, o_k, o_v), b_h, mask=m_s)


@triton.jit
def output_fwd(q, k, vn, hs, o, scale, chunk_indices, cu_seqlens, H, K, V,
               BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, PRECISION: tl.constexpr):
    """``O = scale (Q S_n + tril(Q K^T) V')`` for one chunk, head and block of value columns
    (grid: value blocks, chunks, heads)."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows, m_t = _chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    o_k, o_v, o_c = tl.arange(0, BK), i_v * BV + tl.arange(0, BV), tl.arange(0, BT)
    m_k, m_v = o_k < K, o_v < V
    b_q = _load(q, rows, m_t, H, i_h, K, o_k, m_k)  # [BT, BK]
    b_k = _load(k, rows, m_t, H, i_h, K, o_k, m_k)  # [BT, BK]
    b_vn = _load(vn, rows, m_t, H, i_h, V, o_v, m_v)  # [BT, BV]
    b_h = tl.load(_state_ptr(hs, i_c, H, i_h, K, V, o_k, o_v), mask=m_k[:, None] & m_v[None, :], other=0.0)
    b_p = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)  # [BT, BT]
    b_p = tl.where(o_c[:, None] >= o_c[None, :], b_p, 0.0).to(b_vn.dtype)
    b_o = tl.dot(b_q, b_h.to(b_q.dtype), input_precision=PRECISION) + tl.dot(b_p, b_vn, input_precision=PRECISION)
    _store(o, b_o * scale, rows, m_t, H, i_h, V, o_v, m_v)


@triton.jit
def state_bwd(q, k, w, do, dvn, dht, dhs, dh0, scale, chunk_offsets, cu_seqlens, H, K, V,
              BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr,
              HAS_DHT: tl.constexpr, PRECISION: tl.constexpr):
    """The reverse scan (grid: value blocks, sequences x heads): ``G_{n+1}`` per chunk, ``dV'_n``
    (delta) and ``dS_0 = G_0``."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, bos, eos, c0 = _sequence(chunk_offsets, cu_seqlens, i_nh, H)
    o_k, o_v, o_c = tl.arange(0, BK), i_v * BV + tl.arange(0, BV), tl.arange(0, BT)
    m_k, m_v = o_k < K, o_v < V
    m_s = m_k[:, None] & m_v[None, :]
    b_g = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        b_g += tl.load(_state_ptr(dht, i_n, H, i_h, K, V, o_k, o_v), mask=m_s, other=0.0).to(tl.float32)
    n_chunks = tl.cdiv(eos - bos, BT)
    for j in range(n_chunks):
        i_t = n_chunks - 1 - j
        tl.store(_state_ptr(dhs, c0 + i_t, H, i_h, K, V, o_k, o_v), b_g.to(dhs.dtype.element_ty), mask=m_s)
        rows = bos + i_t * BT + o_c
        m_t = rows < eos
        b_q = (_load(q, rows, m_t, H, i_h, K, o_k, m_k) * scale).to(q.dtype.element_ty)  # [BT, BK]
        b_do = _load(do, rows, m_t, H, i_h, V, o_v, m_v)  # [BT, BV]
        b_g_next = tl.dot(tl.trans(b_q), b_do, input_precision=PRECISION)  # Q^T dO
        if DELTA:
            b_k = _load(k, rows, m_t, H, i_h, K, o_k, m_k)
            b_w = _load(w, rows, m_t, H, i_h, K, o_k, m_k)
            b_p = tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)
            b_p = tl.where(o_c[:, None] >= o_c[None, :], b_p, 0.0).to(b_do.dtype)
            b_dvn = tl.dot(tl.trans(b_p), b_do, input_precision=PRECISION) \
                + tl.dot(b_k, b_g.to(b_k.dtype), input_precision=PRECISION)  # dV' = P^T dO + K G
            _store(dvn, b_dvn, rows, m_t, H, i_h, V, o_v, m_v)
            b_g_next -= tl.dot(tl.trans(b_w), b_dvn.to(b_w.dtype), input_precision=PRECISION)
        b_g += b_g_next
    tl.store(_state_ptr(dh0, i_n, H, i_h, K, V, o_k, o_v), b_g, mask=m_s)


@triton.jit
def grads(q, k, v, beta, vn, dvn, linv, hs, dhs, do, dq, dk, dv, dbeta, scale, chunk_indices, cu_seqlens, H, K, V,
          BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, DELTA: tl.constexpr, PRECISION: tl.constexpr):
    """dQ, dK, dV (and dbeta) of one chunk and head (grid: chunks, heads); the value columns are
    visited in blocks of BV, accumulating the products that sum over them."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    rows, m_t = _chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    o_k, o_c = tl.arange(0, BK), tl.arange(0, BT)
    m_k = o_k < K
    dt = q.dtype.element_ty
    b_q = (_load(q, rows, m_t, H, i_h, K, o_k, m_k) * scale).to(dt)  # [BT, BK]
    b_k = _load(k, rows, m_t, H, i_h, K, o_k, m_k)  # [BT, BK]
    causal = o_c[:, None] >= o_c[None, :]
    b_p = tl.where(causal, tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION), 0.0).to(dt)  # [BT, BT]
    if DELTA:
        b_beta = tl.load(beta + rows * H + i_h, mask=m_t, other=0.0).to(tl.float32)
        b_linv = _load(linv, rows, m_t, H, i_h, BT, o_c, o_c < BT).to(tl.float32)  # [BT, BT]
        b_tm = b_linv * b_beta[None, :]  # T = L^-1 diag(beta)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_dp = tl.zeros([BT, BT], dtype=tl.float32)
    b_ndw = tl.zeros([BT, BK], dtype=tl.float32)  # -dW = dV' S^T (delta)
    b_dtm = tl.zeros([BT, BT], dtype=tl.float32)  # dU V^T, then dT (delta)
    for i_v in range(tl.cdiv(V, BV)):
        o_v = i_v * BV + tl.arange(0, BV)
        m_v = o_v < V
        m_s = m_k[:, None] & m_v[None, :]
        b_do = _load(do, rows, m_t, H, i_h, V, o_v, m_v)  # [BT, BV]
        b_h = tl.load(_state_ptr(hs, i_c, H, i_h, K, V, o_k, o_v), mask=m_s, other=0.0).to(dt)  # S_n
        b_g = tl.load(_state_ptr(dhs, i_c, H, i_h, K, V, o_k, o_v), mask=m_s, other=0.0).to(dt)  # G_{n+1}
        b_vn = _load(vn, rows, m_t, H, i_h, V, o_v, m_v).to(dt)  # V' (V for the sum rule)
        if DELTA:
            b_dvn = _load(dvn, rows, m_t, H, i_h, V, o_v, m_v).to(dt)
        else:
            b_dvn = (tl.dot(tl.trans(b_p), b_do, input_precision=PRECISION)
                     + tl.dot(b_k, b_g, input_precision=PRECISION)).to(dt)  # dV' = P^T dO + K G
        b_dp += tl.dot(b_do, tl.trans(b_vn), input_precision=PRECISION)
        b_dq += tl.dot(b_do, tl.trans(b_h), input_precision=PRECISION)
        b_dk += tl.dot(b_vn, tl.trans(b_g), input_precision=PRECISION)
        if DELTA:
            b_v = _load(v, rows, m_t, H, i_h, V, o_v, m_v)
            b_ndw += tl.dot(b_dvn, tl.trans(b_h), input_precision=PRECISION)
            b_dtm += tl.dot(b_dvn, tl.trans(b_v), input_precision=PRECISION)
            _store(dv, tl.dot(tl.trans(b_tm.to(dt)), b_dvn, input_precision=PRECISION), rows, m_t, H, i_h, V, o_v, m_v)
        else:
            _store(dv, b_dvn, rows, m_t, H, i_h, V, o_v, m_v)  # dV = dV'
    b_dp = tl.where(causal, b_dp, 0.0).to(dt)  # tril(dO V'^T)
    b_dq += tl.dot(b_dp, b_k, input_precision=PRECISION)
    b_dk += tl.dot(tl.trans(b_dp), b_q, input_precision=PRECISION)
    if DELTA:
        b_dk -= tl.dot(tl.trans(b_tm.to(dt)), b_ndw.to(dt), input_precision=PRECISION)  # dK += T^T dW
        b_dtm -= tl.dot(b_ndw.to(dt), tl.trans(b_k), input_precision=PRECISION)  # dT = dU V^T + dW K^T
        b_dbeta = tl.sum(b_dtm * b_linv, 0)  # [BT]: sum_i dT_ij (L^-1)_ij
        b_nda = tl.dot(tl.dot(tl.trans(b_linv), b_dtm, input_precision="ieee"), tl.trans(b_tm), input_precision="ieee")
        b_nda = tl.where(o_c[:, None] > o_c[None, :], b_nda, 0.0)  # -dA = strict_lower(L^-T dT T^T)
        b_ndak = tl.dot(b_nda.to(dt), b_k, input_precision=PRECISION)  # [BT, BK]: -dA K
        b_dbeta -= tl.sum(b_k.to(tl.float32) * b_ndak, 1)
        b_dk -= b_ndak * b_beta[:, None]  # dK += diag(beta) dA K
        b_dk -= tl.dot(tl.trans((b_nda * b_beta[:, None]).to(dt)), b_k, input_precision=PRECISION)  # + (diag(beta) dA)^T K
        tl.store(dbeta + rows * H + i_h, b_dbeta.to(dbeta.dtype.element_ty), mask=m_t)
    _store(dq, b_dq * scale, rows, m_t, H, i_h, K, o_k, m_k)
    _store(dk, b_dk, rows, m_t, H, i_h, K, o_k, m_k)
