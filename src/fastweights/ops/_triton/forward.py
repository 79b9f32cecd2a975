"""Forward kernels of the chunkwise sum and delta rules (layout and indexing: :mod:`.common`).

With ``P = tril(Q K^T)`` per chunk (``Q`` scaled by ``scale``); the gated delta rule (``GATED``)
puts its decays in place, with ``gamma`` the in-chunk cumulative log decays, ``Gamma = exp(gamma)``
per row, ``D_ij = exp(gamma_i - gamma_j)`` (``j <= i``) and ``Gamma_C`` the chunk's total decay (the
equations of :mod:`fastweights.ops.gated_delta_rule.chunk`):

- ``wy_fwd`` (delta rule, grid: chunks x heads): ``L = I + strict_lower(diag(beta) (K K^T * D))``, its
  inverse by forward substitution, ``T = L^-1 diag(beta)``, ``W = T diag(Gamma) K``, ``U = T V``;
- ``state_fwd`` (grid: value blocks x sequences x heads, the scan over a sequence's chunks): stores
  the state ``S_n`` at the start of each chunk, ``V'_n = U_n - W_n S_n`` (delta) or ``V_n`` (sum),
  ``S_{n+1} = Gamma_C S_n + K_n^T diag(Gamma_C / Gamma) V'_n``, and the final state;
- ``output_fwd`` (grid: value blocks x chunks x heads): ``O_n = diag(Gamma) Q_n S_n + (P_n * D) V'_n``.

Without ``GATED`` every decay factor is 1 and is not computed.

A scan program keeps its ``[d_k, BV]`` slice of the state in registers as up to four ``[BK, BV]``
blocks (:mod:`.blocks`; ``NK = cdiv(d_k, BK)``, ``BK <= 64``): ``d_k = 256`` holds four 64-row
blocks, never one 256-row tile. Products accumulate in float32; their operands are in the input dtype (bf16/fp16
tensor-core products; fp32 inputs use IEEE products, ``PRECISION``).
"""

from __future__ import annotations

import triton
import triton.language as tl

from . import blocks
from .common import chunk_decay, chunk_rows, decay_matrix, load_block, load_rows, load_state, sequence, store_block


@triton.jit
def wy_fwd(
    k,
    v,
    beta,
    g,
    w,
    u,
    linv,
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
    """Delta rule: ``L^-1`` ``[BT, BT]``, ``W = T diag(Gamma) K`` and ``U = T V`` of one chunk and head."""
    i_c, i_h = tl.program_id(0), tl.program_id(1)
    rows, m_t = chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    o_c = tl.arange(0, BT)
    b_beta = load_rows(beta, rows, m_t, H, i_h)  # [BT]
    b_a = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)  # [BT, BK]
        b_a += tl.dot(b_k, tl.trans(b_k), input_precision=PRECISION)  # k_i . k_j
    if GATED:
        b_gam, _ = chunk_decay(g, rows, m_t, H, i_h, BT)
        b_a = b_a * decay_matrix(b_gam, BT)
    b_a = tl.where(o_c[:, None] > o_c[None, :], -b_a * b_beta[:, None], 0.0)  # -A, A = strict_lower(diag(beta) K K^T)
    # Forward substitution: row i of L^-1 - I is -A_i + sum_{j<i} (-A_ij) (row j of L^-1 - I).
    for i in range(1, BT):
        is_row = o_c == i
        b_row = tl.sum(tl.where(is_row[:, None], b_a, 0.0), 0)  # [BT]
        b_row = b_row + tl.sum(b_row[:, None] * b_a, 0) * (o_c < i)
        b_a = tl.where(is_row[:, None], b_row[None, :], b_a)
    b_linv = b_a + (o_c[:, None] == o_c[None, :])  # [BT, BT]: L^-1
    store_block(linv, b_linv, rows, m_t, H, i_h, BT, 0, BT)
    b_tm = (b_linv * b_beta[None, :]).to(k.dtype.element_ty)  # T = L^-1 diag(beta)
    for i_k in range(tl.cdiv(K, BK)):
        b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)
        if GATED:
            b_k = (b_k * tl.exp(b_gam)[:, None]).to(b_tm.dtype)  # diag(Gamma) K
        store_block(w, tl.dot(b_tm, b_k, input_precision=PRECISION), rows, m_t, H, i_h, K, i_k, BK)
    for i_v in range(tl.cdiv(V, BV)):
        b_v = load_block(v, rows, m_t, H, i_h, V, i_v, BV)  # [BT, BV]
        store_block(u, tl.dot(b_tm, b_v, input_precision=PRECISION), rows, m_t, H, i_h, V, i_v, BV)


@triton.jit
def state_fwd(
    k,
    v,
    g,
    w,
    u,
    vn,
    h0,
    hs,
    ht,
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
    HAS_H0: tl.constexpr,
    STORE_FINAL: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """The scan over one sequence's chunks for one head and one block of value columns: ``S_n`` per
    chunk (``hs``), ``V'_n`` (delta, ``vn``) and the final state (``ht``). ``S`` is held as the key
    blocks of :mod:`.blocks`."""
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h, bos, eos, c0 = sequence(chunk_offsets, cu_seqlens, i_nh, H)
    o_t = tl.arange(0, BT)
    b_h1, b_h2, b_h3, b_h4 = blocks.init(h0, i_n, H, i_h, K, V, i_v, BK, BV, NK, HAS_H0)
    for i_t in range(tl.cdiv(eos - bos, BT)):
        blocks.store(hs, b_h1, b_h2, b_h3, b_h4, c0 + i_t, H, i_h, K, V, i_v, BK, BV, NK)
        rows = bos + i_t * BT + o_t
        m_t = rows < eos
        if DELTA:  # V' = U - W S
            b_vn = load_block(u, rows, m_t, H, i_h, V, i_v, BV).to(tl.float32)  # [BT, BV]
            b_vn -= blocks.contract(w, rows, m_t, H, i_h, K, b_h1, b_h2, b_h3, b_h4, BK, NK, PRECISION)
            store_block(vn, b_vn, rows, m_t, H, i_h, V, i_v, BV)
            if GATED:  # S <- Gamma_C S + K^T diag(Gamma_C / Gamma) V'
                b_gam, b_gl = chunk_decay(g, rows, m_t, H, i_h, BT)
                b_vn = b_vn * tl.exp(b_gl - b_gam)[:, None]
                b_h1, b_h2, b_h3, b_h4 = blocks.scale(b_h1, b_h2, b_h3, b_h4, tl.exp(b_gl), NK)
            b_vn = b_vn.to(k.dtype.element_ty)
        else:
            b_vn = load_block(v, rows, m_t, H, i_h, V, i_v, BV)
        b_h1, b_h2, b_h3, b_h4 = blocks.update(
            k, rows, m_t, H, i_h, K, b_vn, b_h1, b_h2, b_h3, b_h4, BK, NK, PRECISION
        )  # S += K^T V'
    if STORE_FINAL:
        blocks.store(ht, b_h1, b_h2, b_h3, b_h4, i_n, H, i_h, K, V, i_v, BK, BV, NK)


@triton.jit
def output_fwd(
    q,
    k,
    g,
    vn,
    hs,
    o,
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
    """``O = scale (diag(Gamma) Q S_n + (tril(Q K^T) * D) V')`` for one chunk, head and block of value columns."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rows, m_t = chunk_rows(chunk_indices, cu_seqlens, i_c, BT)
    o_c = tl.arange(0, BT)
    b_o = tl.zeros([BT, BV], dtype=tl.float32)
    b_p = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(tl.cdiv(K, BK)):
        b_q = load_block(q, rows, m_t, H, i_h, K, i_k, BK)  # [BT, BK]
        b_k = load_block(k, rows, m_t, H, i_h, K, i_k, BK)  # [BT, BK]
        b_h = load_state(hs, i_c, H, i_h, K, V, i_k, i_v, BK, BV)  # [BK, BV]
        b_o += tl.dot(b_q, b_h.to(b_q.dtype), input_precision=PRECISION)
        b_p += tl.dot(b_q, tl.trans(b_k), input_precision=PRECISION)
    b_vn = load_block(vn, rows, m_t, H, i_h, V, i_v, BV)  # [BT, BV]
    if GATED:
        b_gam, _ = chunk_decay(g, rows, m_t, H, i_h, BT)
        b_o = b_o * tl.exp(b_gam)[:, None]
        b_p = b_p * decay_matrix(b_gam, BT)
    b_p = tl.where(o_c[:, None] >= o_c[None, :], b_p, 0.0).to(b_vn.dtype)
    b_o += tl.dot(b_p, b_vn, input_precision=PRECISION)
    store_block(o, b_o * scale, rows, m_t, H, i_h, V, i_v, BV)
