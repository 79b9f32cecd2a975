"""Indexing helpers shared by the Triton kernels of the chunkwise rules.

Every sequence of a batch is one range ``[bos, eos)`` of packed tokens (``cu_seqlens``; a plain
``[B, T]`` batch is B ranges of T), cut into chunks of ``BT`` tokens; ``chunk_indices[c] = (n, j)``
names chunk c as chunk j of sequence n, and ``chunk_offsets[n]`` is the first chunk of sequence n.
Tensors are ``[tokens, H, D]`` (the public ``[B, T, H, D]`` layout flattened) and states
``[states, H, d_k, d_v]`` (float32). Feature widths are visited in blocks (``BK`` key columns,
``BV`` value columns) and masked at their end.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def chunk_rows(chunk_indices, cu_seqlens, i_c, BT: tl.constexpr):
    """Token offsets ``[BT]`` of chunk ``i_c`` and their validity mask."""
    i_n = tl.load(chunk_indices + 2 * i_c).to(tl.int64)
    i_t = tl.load(chunk_indices + 2 * i_c + 1).to(tl.int64)
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    t0 = bos + i_t * BT
    o_t = tl.arange(0, BT)
    return t0 + o_t, o_t < eos - t0


@triton.jit
def sequence(chunk_offsets, cu_seqlens, i_nh, H):
    """Sequence and head of program ``i_nh`` (sequences x heads), its tokens ``[bos, eos)`` and first chunk."""
    i_n, i_h = i_nh // H, i_nh % H
    bos = tl.load(cu_seqlens + i_n).to(tl.int64)
    eos = tl.load(cu_seqlens + i_n + 1).to(tl.int64)
    return i_n, i_h, bos, eos, tl.load(chunk_offsets + i_n).to(tl.int64)


@triton.jit
def load_block(ptr, rows, row_mask, H, i_h, D, i_b, BD: tl.constexpr):
    """Columns ``[i_b BD, (i_b + 1) BD)`` of rows ``rows`` of a ``[tokens, H, D]`` tensor: ``[len(rows), BD]``,
    zeros outside the masks."""
    cols = i_b * BD + tl.arange(0, BD)
    p = ptr + (rows[:, None] * H + i_h) * D + cols[None, :]
    return tl.load(p, mask=row_mask[:, None] & (cols < D)[None, :], other=0.0)


@triton.jit
def store_block(ptr, x, rows, row_mask, H, i_h, D, i_b, BD: tl.constexpr):
    """Writes ``x`` ``[len(rows), BD]`` where :func:`load_block` reads (cast to the tensor's dtype)."""
    cols = i_b * BD + tl.arange(0, BD)
    p = ptr + (rows[:, None] * H + i_h) * D + cols[None, :]
    tl.store(p, x.to(ptr.dtype.element_ty), mask=row_mask[:, None] & (cols < D)[None, :])


@triton.jit
def load_rows(ptr, rows, row_mask, H, i_h):
    """``[len(rows)]`` float32 entries of a ``[tokens, H]`` tensor (zeros outside the mask)."""
    return tl.load(ptr + rows * H + i_h, mask=row_mask, other=0.0).to(tl.float32)


@triton.jit
def load_state(ptr, i_s, H, i_h, K, V, i_k, i_v, BK: tl.constexpr, BV: tl.constexpr):
    """Block ``(i_k, i_v)`` ``[BK, BV]`` of state ``i_s`` of a ``[states, H, K, V]`` tensor, in float32."""
    o_k, o_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    p = ptr + ((i_s * H + i_h) * K + o_k[:, None]) * V + o_v[None, :]
    return tl.load(p, mask=(o_k < K)[:, None] & (o_v < V)[None, :], other=0.0).to(tl.float32)


@triton.jit
def store_state(ptr, x, i_s, H, i_h, K, V, i_k, i_v, BK: tl.constexpr, BV: tl.constexpr):
    """Writes block ``(i_k, i_v)`` of state ``i_s`` (cast to the tensor's dtype)."""
    o_k, o_v = i_k * BK + tl.arange(0, BK), i_v * BV + tl.arange(0, BV)
    p = ptr + ((i_s * H + i_h) * K + o_k[:, None]) * V + o_v[None, :]
    tl.store(p, x.to(ptr.dtype.element_ty), mask=(o_k < K)[:, None] & (o_v < V)[None, :])


@triton.jit
def chunk_decay(g, rows, row_mask, H, i_h, BT: tl.constexpr):
    """The gated rule's in-chunk cumulative log decays ``gamma_i = sum_{s <= i} g_s`` ``[BT]`` (rows past
    the sequence's end add 0, so the last entry is the chunk's last token's) and ``gamma_C``, that last entry."""
    b_gam = tl.cumsum(load_rows(g, rows, row_mask, H, i_h), 0)
    return b_gam, tl.sum(tl.where(tl.arange(0, BT) == BT - 1, b_gam, 0.0), 0)


@triton.jit
def decay_matrix(b_gam, BT: tl.constexpr):
    """``D_ij = exp(gamma_i - gamma_j)`` for ``j <= i``, 0 above ``[BT, BT]`` (a difference of logs, so a
    strong decay underflows to 0 instead of overflowing; above the diagonal nothing is exponentiated)."""
    o = tl.arange(0, BT)
    lower = o[:, None] >= o[None, :]
    return tl.where(lower, tl.exp(tl.where(lower, b_gam[:, None] - b_gam[None, :], 0.0)), 0.0)
