"""Packed variable-length sequences for backends without native ``cu_seqlens`` support: padding (for
rules whose state a zero key leaves unchanged) or one call per sequence (for the others)."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from .call import OpCall, Run


def unpack(x: Tensor, cu: Sequence[int]) -> Tensor:
    """``[1, T, ...]`` packed -> ``[N, T_max, ...]`` zero-padded at the end of each sequence."""
    lengths = [b - a for a, b in zip(cu, cu[1:])]
    t_max = max(lengths)
    out = x.new_zeros((len(lengths), t_max) + tuple(x.shape[2:]))
    for i, (a, n) in enumerate(zip(cu, lengths)):
        out[i, :n] = x[0, a : a + n]
    return out


def sequence_ids(cu: Sequence[int], device: torch.device) -> Tensor:
    """``[T]`` long: the index of the packed sequence each position belongs to (``cu``: ``[0, ..., T]``)."""
    lengths = torch.tensor([b - a for a, b in zip(cu, cu[1:])], device=device)  # [N]
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)  # [T]


def pack(x: Tensor, cu: Sequence[int]) -> Tensor:
    """Inverse of :func:`unpack`: ``[N, T_max, ...]`` -> ``[1, T, ...]``."""
    return torch.cat([x[i, : b - a] for i, (a, b) in enumerate(zip(cu, cu[1:]))], dim=0)[None]


def per_sequence(run: Run) -> Run:
    """``run`` (a backend's, see :data:`fastweights.ops.call.Run`) made to read ``cu_seqlens`` by
    calling it once per packed sequence, each from its own initial state: for rules where padding
    would change the state (a nonlinear ``sigma`` moves even a state that receives a zero key)."""

    def each(call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
        if call.cu_seqlens is None:
            return run(call)
        cu = call.cu_seqlens.tolist()
        outs, states = zip(*(run(call.sequences(a, b, slice(i, i + 1))) for i, (a, b) in enumerate(zip(cu, cu[1:]))))
        return torch.cat(outs, dim=1), (torch.cat(states) if call.output_final_state else None)

    return each
