"""Non-finite inputs kept causal: a NaN or Inf at position t changes no output before t, in every backend.

A chunkwise or quadratic form mixes positions in matrix products, and ``0 * NaN = NaN``: a causal
mask applied by multiplication cannot keep a NaN at position t out of the outputs before t (the
chunk forms' outputs earlier in t's chunk, the quadratic form's everywhere). Garbage in the
right-padding of a batch (``torch.empty``) would then corrupt the valid tokens. So the op screens
its inputs once, before any backend runs (:func:`all_finite`, then :func:`find_nonfinite` when
that cannot vouch for them), and when one is not finite:

- a non-finite query ``q_t`` is a bad *read*: it is replaced by zeros and the output ``o_t``
  alone is NaN (the definition reads ``q_t`` only there);
- a non-finite key, value, rate or other per-token input (``g``, ...) at ``t`` is a bad *write*:
  from ``t`` on, that sequence's (and head's) writes are replaced by zeros, its outputs from ``t``
  on are NaN, and so is its final state.

Replacement and poisoning use ``masked_fill`` (a ``where``, never a product), so the backend sees
finite inputs only, its outputs before ``t`` are those of the clean inputs, and no NaN reaches the
gradients of the earlier positions. Heads, batch entries and packed sequences are independent:
each is poisoned from its own first bad write. A non-finite initial state is not positional and
flows through the backend unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .varlen import sequence_ids


@dataclass(frozen=True)
class NonFinite:
    """Where an op's inputs are not finite, and what that poisons (see the module docstring).

    Attributes:
        read: ``[B, T, H]`` bool: tokens whose query is not finite.
        write: ``[B, T, H]`` bool: tokens at or after the first non-finite write of their sequence and head.
        state: ``[N, H]`` bool: sequences and heads with a non-finite write (their final state is NaN).
    """

    read: Tensor
    write: Tensor
    state: Tensor

    def clean(
        self, q: Tensor, k: Tensor, v: Tensor, per_token: Dict[str, Optional[Tensor]]
    ) -> Tuple[Tensor, Tensor, Tensor, Dict[str, Optional[Tensor]]]:
        """The inputs with bad reads and every write from the first bad one on replaced by zeros
        (``q, k: [B, T, H, d_k]``, ``v: [B, T, H, d_v]``, ``per_token``: each ``[B, T, H]`` or None, or
        ``[B, T, H, d_k]`` per key channel)."""
        write = self.write[..., None]  # [B, T, H, 1]
        return (
            q.masked_fill(self.read[..., None], 0.0),
            k.masked_fill(write, 0.0),
            v.masked_fill(write, 0.0),
            {n: _fill(x, self.write) for n, x in per_token.items()},
        )

    def poison(self, o: Tensor, final_state: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """NaN in the outputs ``o: [B, T, H, d_v]`` of bad reads and poisoned writes, and in the
        final state ``[N, H, *state]`` (if any) of each poisoned sequence and head."""
        o = o.masked_fill((self.read | self.write)[..., None], float("nan"))  # [B, T, H, d_v]
        if final_state is not None:
            mask = self.state.view(*self.state.shape, *(1,) * (final_state.dim() - 2))  # [N, H, 1, ...]
            final_state = final_state.masked_fill(mask, float("nan"))  # [N, H, *state]
        return o, final_state


@torch.no_grad()  # a check: its sums need no autograd graph
def all_finite(q: Tensor, k: Tensor, v: Tensor, per_token: Dict[str, Optional[Tensor]]) -> Tensor:
    """``[]`` bool on the inputs' device, no host sync: ``True`` vouches that every checked input
    is finite (a NaN or Inf anywhere makes the sum non-finite); ``False`` sends the caller to
    :func:`find_nonfinite` (an overflow of finite values does too, and finds nothing there).

    ``q, k: [B, T, H, d_k]``, ``v: [B, T, H, d_v]``, ``per_token``: the rule's per-token inputs
    (``beta``, ...), each ``[B, T, H]`` or None.
    """
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return torch.isfinite(sum(x.sum(dtype=acc) for x in _writes(k, v, per_token) + [q]))


@torch.no_grad()  # a check: its masks need no autograd graph
def find_nonfinite(
    q: Tensor, k: Tensor, v: Tensor, per_token: Dict[str, Optional[Tensor]], cu: Optional[Sequence[int]]
) -> NonFinite:
    """Where the checked op inputs (as :func:`all_finite`'s) are not finite; ``cu``: cumulative
    lengths of sequences packed along T (``B = 1``) or None."""
    writes = _writes(k, v, per_token)
    read = _nonfinite_tokens(q)  # [B, T, H]
    bad = torch.stack([_nonfinite_tokens(x) for x in writes]).any(0)  # [B, T, H]: non-finite writes
    T = q.shape[1]
    t = torch.arange(T, device=q.device)  # [T]
    at = torch.where(bad, t[:, None], T)  # [B, T, H]: the position of each bad write, T elsewhere
    if cu is None:
        first = at.amin(1)  # [B, H]: each sequence's first bad write (T: none)
        write = t[:, None] >= first[:, None]  # [B, T, H]
    else:
        seq = sequence_ids(cu, q.device)  # [T]
        first = at.new_full((len(cu) - 1, q.shape[2]), T).scatter_reduce(
            0, seq[:, None].expand(-1, q.shape[2]), at[0], reduce="amin"
        )  # [N, H]
        write = (t[:, None] >= first[seq])[None]  # [1, T, H]
    return NonFinite(read, write, first < T)


def _fill(x: Optional[Tensor], write: Tensor) -> Optional[Tensor]:
    """``x`` (``[B, T, H]`` or, per key channel, ``[B, T, H, d_k]``) with zeros where ``write`` ``[B, T, H]``."""
    if x is None:
        return None
    return x.masked_fill(write if x.dim() == 3 else write[..., None], 0.0)


def _writes(k: Tensor, v: Tensor, per_token: Dict[str, Optional[Tensor]]) -> List[Tensor]:
    """The inputs of a write: the key, the value and the per-token inputs given."""
    return [k, v] + [x for x in per_token.values() if x is not None]


def _nonfinite_tokens(x: Tensor) -> Tensor:
    """``[B, T, H]`` bool: the tokens of ``x`` (``[B, T, H, D]`` or ``[B, T, H]``) with a non-finite entry."""
    finite = torch.isfinite(x)
    return ~(finite.all(-1) if x.dim() == 4 else finite)
