"""A scan's ``[d_k, BV]`` slice of a state (or of its gradient) held in registers as up to four key
blocks ``b1..b4`` of ``[BK, BV]`` float32 (``NK = cdiv(d_k, BK)`` of them are used; Triton has no
arrays of tiles, so the blocks are separate values and each operation visits the first ``NK``).

Blocks past ``NK`` are zeros that no operation changes: the compiler drops them from the loop.
Token-side operands (``[BT, d_k]`` rows of keys, queries or ``W``) are read block by block from a
``[tokens, H, d_k]`` tensor (:func:`.common.load_block`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .common import load_block, load_state, store_state


@triton.jit
def init(ptr, i_s, H, i_h, K, V, i_v, BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr, LOAD: tl.constexpr):
    """The blocks of state ``i_s`` of a ``[states, H, K, V]`` tensor when ``LOAD``, else zeros."""
    b1 = tl.zeros([BK, BV], dtype=tl.float32)
    b2 = tl.zeros([BK, BV], dtype=tl.float32)
    b3 = tl.zeros([BK, BV], dtype=tl.float32)
    b4 = tl.zeros([BK, BV], dtype=tl.float32)
    if LOAD:
        b1 += load_state(ptr, i_s, H, i_h, K, V, 0, i_v, BK, BV)
        if NK > 1:
            b2 += load_state(ptr, i_s, H, i_h, K, V, 1, i_v, BK, BV)
        if NK > 2:
            b3 += load_state(ptr, i_s, H, i_h, K, V, 2, i_v, BK, BV)
        if NK > 3:
            b4 += load_state(ptr, i_s, H, i_h, K, V, 3, i_v, BK, BV)
    return b1, b2, b3, b4


@triton.jit
def store(ptr, b1, b2, b3, b4, i_s, H, i_h, K, V, i_v, BK: tl.constexpr, BV: tl.constexpr, NK: tl.constexpr):
    """Write the blocks as state ``i_s``."""
    store_state(ptr, b1, i_s, H, i_h, K, V, 0, i_v, BK, BV)
    if NK > 1:
        store_state(ptr, b2, i_s, H, i_h, K, V, 1, i_v, BK, BV)
    if NK > 2:
        store_state(ptr, b3, i_s, H, i_h, K, V, 2, i_v, BK, BV)
    if NK > 3:
        store_state(ptr, b4, i_s, H, i_h, K, V, 3, i_v, BK, BV)


@triton.jit
def scale(b1, b2, b3, b4, c, NK: tl.constexpr):
    """``c S`` (``c`` a scalar)."""
    b1 = b1 * c
    if NK > 1:
        b2 = b2 * c
    if NK > 2:
        b3 = b3 * c
    if NK > 3:
        b4 = b4 * c
    return b1, b2, b3, b4


@triton.jit
def contract(x, rows, m_t, H, i_h, K, b1, b2, b3, b4, BK: tl.constexpr, NK: tl.constexpr, PRECISION: tl.constexpr):
    """``X S`` ``[BT, BV]`` in float32, ``X`` the rows ``rows`` of ``x`` ``[tokens, H, K]`` (the product's
    operands in ``x``'s dtype)."""
    dt = x.dtype.element_ty
    out = tl.dot(load_block(x, rows, m_t, H, i_h, K, 0, BK), b1.to(dt), input_precision=PRECISION)
    if NK > 1:
        out += tl.dot(load_block(x, rows, m_t, H, i_h, K, 1, BK), b2.to(dt), input_precision=PRECISION)
    if NK > 2:
        out += tl.dot(load_block(x, rows, m_t, H, i_h, K, 2, BK), b3.to(dt), input_precision=PRECISION)
    if NK > 3:
        out += tl.dot(load_block(x, rows, m_t, H, i_h, K, 3, BK), b4.to(dt), input_precision=PRECISION)
    return out


@triton.jit
def update(x, rows, m_t, H, i_h, K, b_y, b1, b2, b3, b4, BK: tl.constexpr, NK: tl.constexpr, PRECISION: tl.constexpr):
    """``S + X^T Y`` (``X`` as in :func:`contract`, ``b_y`` ``[BT, BV]`` in ``x``'s dtype)."""
    b1 += tl.dot(tl.trans(load_block(x, rows, m_t, H, i_h, K, 0, BK)), b_y, input_precision=PRECISION)
    if NK > 1:
        b2 += tl.dot(tl.trans(load_block(x, rows, m_t, H, i_h, K, 1, BK)), b_y, input_precision=PRECISION)
    if NK > 2:
        b3 += tl.dot(tl.trans(load_block(x, rows, m_t, H, i_h, K, 2, BK)), b_y, input_precision=PRECISION)
    if NK > 3:
        b4 += tl.dot(tl.trans(load_block(x, rows, m_t, H, i_h, K, 3, BK)), b_y, input_precision=PRECISION)
    return b1, b2, b3, b4
