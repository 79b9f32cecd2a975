"""A time loop recomputed from checkpoints: the training form of rules with no chunkwise parallel form.

Autograd through a plain time loop keeps one ``[d_k, d_v]`` state per token for the backward.
:func:`checkpointed` runs the loop in segments of ``chunk_size`` tokens, keeps only the state at
each segment's start and recomputes the segment in the backward (``torch.utils.checkpoint``):
memory ``O(T d + (T / chunk_size) d_k d_v)`` for one more forward's work, and the same numbers as
the loop.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

#: a torch core (see :mod:`fastweights.ops.torch_form`): ``core(q, k, v, beta, S0, chunk_size, **inputs) -> (o, S_T)``
Core = Callable[..., Tuple[Tensor, Tensor]]


def checkpointed(loop: Core) -> Core:
    """The core that runs ``loop`` (a time-loop core) segment by segment, each recomputed in the backward."""

    def checkpoint_core(
        q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S: Tensor, chunk_size: int, **inputs: Tensor
    ) -> Tuple[Tensor, Tensor]:
        """``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``, ``beta`` and each input ``[B, H, T, ...]``."""
        names = list(inputs)

        def segment(q, k, v, beta, S, *xs):
            return loop(q, k, v, beta, S, chunk_size, **dict(zip(names, xs)))

        outs = []
        for t0 in range(0, q.shape[2], chunk_size):
            at = slice(t0, t0 + chunk_size)
            args = (q[:, :, at], k[:, :, at], v[:, :, at], None if beta is None else beta[:, :, at], S)
            xs = [x[:, :, at] for x in inputs.values()]
            if torch.is_grad_enabled():
                o, S = checkpoint(segment, *args, *xs, use_reentrant=False)
            else:
                o, S = segment(*args, *xs)
            outs.append(o)
        return torch.cat(outs, dim=2), S  # [B, H, T, d_v]

    checkpoint_core.__doc__ = f"{loop.__doc__ or ''} Recomputed from a state every chunk_size tokens."
    return checkpoint_core
