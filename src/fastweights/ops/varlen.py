"""Packed variable-length sequences for backends without native ``cu_seqlens`` support: padding (for
rules whose state a zero key leaves unchanged) or one call per sequence (for the others)."""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Tuple

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


def sequence_ids(cu: Sequence[int], device: torch.device) -> Tensor:
    """``[T]`` long: the index of the packed sequence each position belongs to (``cu``: ``[0, ..., T]``)."""
    lengths = torch.tensor([b - a for a, b in zip(cu, cu[1:])], device=device)  # [N]
    return torch.repeat_interleave(torch.arange(len(lengths), device=device), lengths)  # [T]


def pack(x: Tensor, cu: Sequence[int]) -> Tensor:
    """Inverse of :func:`unpack`: ``[N, T_max, ...]`` -> ``[1, T, ...]``."""
    return torch.cat([x[i, : b - a] for i, (a, b) in enumerate(zip(cu, cu[1:]))], dim=0)[None]


def per_sequence(run: Callable[..., Tuple[Tensor, Optional[Tensor]]]) -> Callable[..., Tuple[Tensor, Optional[Tensor]]]:
    """``run`` (a backend's, see :data:`fastweights.ops.registry.Run`) made to read ``cu_seqlens`` by
    calling it once per packed sequence, each from its own initial state: for rules where padding
    would change the state (a nonlinear ``sigma`` moves even a state that receives a zero key)."""

    def each(
        q: Tensor,
        k: Tensor,
        v: Tensor,
        beta: Optional[Tensor],
        scale: float,
        initial_state: Optional[Tensor],
        output_final_state: bool,
        cu_seqlens: Optional[Tensor],
        chunk_size: int,
        **inputs: Tensor,
    ):
        if cu_seqlens is None:
            return run(q, k, v, beta, scale, initial_state, output_final_state, None, chunk_size, **inputs)
        cu = cu_seqlens.tolist()
        outs, states = [], []
        for i, (a, b) in enumerate(zip(cu, cu[1:])):
            at = slice(a, b)
            o, s_t = run(
                q[:, at],
                k[:, at],
                v[:, at],
                beta[:, at] if beta is not None else None,
                scale,
                initial_state[i : i + 1] if initial_state is not None else None,
                output_final_state,
                None,
                chunk_size,
                **{n: x[:, at] for n, x in inputs.items()},
            )
            outs.append(o)
            states.append(s_t)
        return torch.cat(outs, dim=1), (torch.cat(states) if output_final_state else None)

    return each
