"""Building blocks of the hand-differentiated chunk forms (``sum_rule/chunk.py`` and
``common/delta_chunk.py``, which the delta and gated delta rules share).

Layout: the chunk forms work on *chunk-major* tensors ``[N, B*H, C, D]`` (N chunks of C tokens).
Chunk ``n`` of every head is then one contiguous ``[B*H, C, D]`` block, so the scan over chunks
feeds ``torch.baddbmm`` plain contiguous batches and writes its results in place, and every
other product is one batched matmul over all chunks and heads of a cache-sized segment
(:func:`segments`). Converting to and from this layout is one strided copy per tensor (the input
is already a transposed view).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import Tensor


def without_autocast(backward: Callable) -> Callable:
    """Run a hand-written ``backward(ctx, *grads)`` with autocast off, so that it computes in the
    saved tensors' dtype even when ``loss.backward()`` is called inside an autocast region."""

    @functools.wraps(backward)
    def wrapped(ctx, *grads):
        device = next(g.device for g in grads if g is not None)
        with torch.autocast(device.type, enabled=False):
            return backward(ctx, *grads)

    return wrapped


def to_chunks(x: Tensor, chunk_size: int) -> Tensor:
    """``[B, H, T, D]`` (any strides) -> contiguous ``[N, B*H, C, D]``, zero-padded to ``N*C >= T``."""
    B, H, T, D = x.shape
    C = chunk_size
    N, full = -(-T // C), T // C
    out = x.new_empty(N, B, H, C, D)  # [N, B, H, C, D]
    if full:
        out[:full].copy_(x[:, :, : full * C].unflatten(2, (full, C)).permute(2, 0, 1, 3, 4))
    if full < N:
        rem = T - full * C
        out[full, :, :, :rem].copy_(x[:, :, full * C :])
        out[full, :, :, rem:].zero_()
    return out.view(N, B * H, C, D)


def from_chunks(xc: Tensor, B: int, H: int, T: int) -> Tensor:
    """Inverse of :func:`to_chunks`: ``[N, B*H, C, D]`` -> ``[B, H, T, D]``.

    The result is a transposed view of a contiguous ``[B, T, H, D]`` tensor: the layout the
    public ops return, so the final ``transpose(1, 2)`` of the caller costs nothing.
    """
    N, _, C, D = xc.shape
    out = xc.new_empty(B, N * C, H, D)  # [B, N*C, H, D]
    out.view(B, N, C, H, D).copy_(xc.view(N, B, H, C, D).permute(1, 0, 3, 2, 4))
    return out[:, :T].transpose(1, 2)


def causal_scores(a: Tensor, b: Tensor) -> Tensor:
    """``tril(a b^T)`` per chunk, diagonal included. ``a, b: [..., C, D]`` -> ``[..., C, C]``."""
    return (a @ b.transpose(-1, -2)).tril_()


def flat(x: Tensor) -> Tensor:
    """``[N, B*H, ...]`` -> ``[N*B*H, ...]`` (a view), the 3-D batch ``torch.baddbmm`` takes."""
    return x.flatten(0, 1)


def unit_lower_inverse(m: Tensor) -> Tensor:
    """Invert unit lower-triangular matrices in place by block doubling; returns ``m``.

    ``m: [..., C, C]`` holds ``L = I + A`` (``A`` strictly lower; the upper triangle is ignored
    and must be zero). Blocks of size b on the diagonal already hold their inverses; two of them
    are merged into a block of size 2b with

        [[L11, 0], [L21, L22]]^-1 = [[L11^-1, 0], [-L22^-1 L21 L11^-1, L22^-1]]

    so the whole inverse costs ``log2 C`` pairs of batched matmuls (about C^3 / 3 FLOP per
    matrix) instead of C dependent row updates or one LAPACK call per matrix. C that is not a
    power of two is handled by padding with an identity block.
    """
    C = m.shape[-1]
    P2 = 1 << (C - 1).bit_length()
    if P2 != C:
        padded = m.new_zeros(m.shape[:-2] + (P2, P2))
        padded[..., :C, :C] = m
        padded.diagonal(dim1=-2, dim2=-1)[..., C:] = 1.0
        m.copy_(unit_lower_inverse(padded)[..., :C, :C])
        return m
    batch = m.shape[:-2]
    b = 1
    while b < C:
        P = C // (2 * b)
        blocks = m.view(*batch, P, 2, b, P, 2, b).diagonal(dim1=-6, dim2=-3).movedim(-1, -5)  # [..., P, 2, b, 2, b]
        inv11, l21, inv22 = blocks[..., 0, :, 0, :], blocks[..., 1, :, 0, :], blocks[..., 1, :, 1, :]
        blocks[..., 1, :, 0, :] = -(inv22 @ (l21 @ inv11))  # [..., P, b, b]
        b *= 2
    return m


class Decay:
    """No decay inside the chunks (the delta rule): every method is the identity and costs nothing.

    :class:`CumulativeDecay` is the same interface for per-token decays; the hand-written chunk
    backward of the delta rule is written once against it, for both rules.
    """

    def mask_(self, m: Tensor) -> Tensor:
        """``m * D`` in place (``m: [n, BH, C, C]``)."""
        return m

    def head(self, x: Tensor) -> Tensor:
        """``diag(Gamma) x`` (``x: [n, BH, C, D]``)."""
        return x

    def tail(self, x: Tensor) -> Tensor:
        """``diag(Gamma_C / Gamma) x`` (``x: [n, BH, C, D]``)."""
        return x

    def columns(self, m: Tensor) -> Tensor:
        """``m diag(Gamma)`` (``m: [n, BH, C, C]``)."""
        return m

    def carry(self, i: int, state: Tensor) -> Tensor:
        """``Gamma_C state`` for the segment's i-th chunk (``state: [BH, d_k, d_v]``)."""
        return state


class CumulativeDecay(Decay):
    """The decays of one segment of chunks, from the in-chunk cumulative log decays
    ``gam: [n, BH, C, 1]`` (``gam_i = sum_{s <= i} g_s``, ``Gamma_i = exp(gam_i)``).

    ``D_ij = exp(gam_i - gam_j)`` for ``j <= i`` and 0 above (from differences of logs, never
    ``Gamma_i / Gamma_j``, which overflows once a chunk has forgotten enough); ``Gamma_C / Gamma_i``
    likewise.
    """

    def __init__(self, gam: Tensor) -> None:
        self.gamma = gam.exp()  # [n, BH, C, 1]: Gamma_i
        self.ratio = (gam[..., -1:, :] - gam).exp_()  # [n, BH, C, 1]: Gamma_C / Gamma_i
        self.last = self.gamma[..., -1:, :]  # [n, BH, 1, 1]: Gamma_C
        self.d = (gam - gam.transpose(-1, -2)).exp_().tril_()  # [n, BH, C, C]: D (the upper inf become 0)

    def mask_(self, m: Tensor) -> Tensor:
        return m.mul_(self.d)

    def head(self, x: Tensor) -> Tensor:
        return x * self.gamma

    def tail(self, x: Tensor) -> Tensor:
        return x * self.ratio

    def columns(self, m: Tensor) -> Tensor:
        return m * self.gamma.transpose(-1, -2)

    def carry(self, i: int, state: Tensor) -> Tensor:
        return state * self.last[i]


#: elements per tensor in one segment of chunks, by device type (absent: all chunks at once)
SEGMENT_ELEMENTS = {"cpu": 1 << 18}


def segments(n_chunks: int, chunk_elements: int, device: torch.device) -> list:
    """Consecutive chunk ranges ``slice(n0, n1)`` of about ``SEGMENT_ELEMENTS[device.type]`` per tensor.

    The chunk forms do their batched products one segment of chunks at a time. On a CPU, over all
    chunks at once every intermediate is as large as the input and streams through main memory
    between two products, so a segment is sized for the cache (2^18 elements, 1 MiB of fp32;
    measured on 2 cores, L = 8192, B = 1, H = 8, d = 64: delta rule fwd+bwd ~175-215 ms in
    segments against ~215-260 ms unsegmented; sum rule ~5-10%). On a GPU the cost is the number of
    kernel launches: at B = 8, H = 16, C = d = 64 one chunk over all heads is already 2^19
    elements, so cache-sized segments would launch each product once per chunk; there every
    product covers all chunks at once (measured on an H200, fp32, B = 8, T = 4096: delta fwd+bwd
    92 -> 12 ms, sum 25 -> 5 ms). ``chunk_elements`` is the size of one chunk's largest tensor over
    all heads (``B H C max(C, d)``).
    """
    limit = SEGMENT_ELEMENTS.get(device.type)
    step = n_chunks if limit is None else max(1, limit // chunk_elements)
    return [slice(n0, min(n0 + step, n_chunks)) for n0 in range(0, n_chunks, step)]
