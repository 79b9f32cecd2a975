"""Packed variable-length sequences for backends without native ``cu_seqlens`` support."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor


def unpack(x: Tensor, cu: Sequence[int]) -> Tensor:
    """``[1, T, ...]`` packed -> ``[N, T_max, ...]`` zero-padded at the end of each sequence."""
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    t_max = max(lengths)
    out = x.new_zeros((len(lengths), t_max) + tuple(x.shape[2:]))
    for i, (a, n) in enumerate(zip(cu, lengths)):
        out[i, :n] = x[0, a : a + n]
    return out


def pack(x: Tensor, cu: Sequence[int]) -> Tensor:
    """Inverse of :func:`unpack`: ``[N, T_max, ...]`` -> ``[1, T, ...]``."""
    return torch.cat([x[i, : b - a] for i, (a, b) in enumerate(zip(cu, cu[1:]))], dim=0)[None]
