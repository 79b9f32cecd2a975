"""Argument checks of the op contract: one clear error naming the bad argument, raised before any work."""

from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .state_shape import MATRIX, StateShape


def _shape(t: Tensor) -> str:
    """``[2, 3, 4]``: a shape as the error messages print it."""
    return "[" + ", ".join(str(s) for s in t.shape) + "]"


def check_inputs(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    per_token: Dict[str, Optional[Tensor]],
    initial_state: Optional[Tensor],
    cu_seqlens: Optional[Tensor],
    state_dv: Optional[int] = None,
    per_channel: Sequence[str] = (),
    state: StateShape = MATRIX,
) -> None:
    """Validate the op arguments; raise ``TypeError``/``ValueError`` naming the bad one.

    ``per_token`` holds the rule's per-token inputs (``beta``, ...), each ``[B, T, H]`` or None, or
    ``[B, T, H, d_k]`` for those named in ``per_channel``.
    ``state`` is the rule's state shape (default one ``[d_k, d_v]`` matrix), for ``d_v`` =
    ``state_dv`` (``v``'s unless the op adds columns, as the normalised sum rule does).
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape [B, T, H, D] (4 dims), got {_shape(t)}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but q has dtype {q.dtype}; they must match")
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; they must match")
    if k.shape != q.shape:
        raise ValueError(f"k must have the shape of q {_shape(q)}, got {_shape(k)}")
    B, T, H, d_k = q.shape
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must have shape [B, T, H, d_v] = [{B}, {T}, {H}, d_v] like q, got {_shape(v)}")
    if T == 0:
        raise ValueError("the sequence is empty: q, k, v have T = 0 tokens")
    if min(B, H, d_k, v.shape[-1]) == 0:
        raise ValueError(f"q {_shape(q)} and v {_shape(v)} must have non-zero B, H and D")
    for name, x in per_token.items():
        if x is None:
            continue
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if name in per_channel and x.shape != (B, T, H, d_k):
            raise ValueError(
                f"{name} (one value per key channel) must have shape [B, T, H, d_k] = [{B}, {T}, {H}, {d_k}], "
                f"got {_shape(x)}"
            )
        if name not in per_channel and x.shape != (B, T, H):
            raise ValueError(f"{name} must have shape [B, T, H] = [{B}, {T}, {H}], got {_shape(x)}")
        if x.device != q.device:
            raise ValueError(f"{name} is on {x.device} but q is on {q.device}; they must match")
    n_seq = B if cu_seqlens is None else check_cu_seqlens(cu_seqlens, B, T)
    if initial_state is not None:
        if not isinstance(initial_state, Tensor):
            raise TypeError(f"initial_state must be a torch.Tensor or None, got {type(initial_state).__name__}")
        if not initial_state.is_floating_point():
            raise TypeError(f"initial_state must be floating point, got dtype {initial_state.dtype}")
        dv = v.shape[-1] if state_dv is None else state_dv
        dims = state(d_k, dv)
        if initial_state.shape != (n_seq, H, *dims):
            expected = ", ".join(str(n) for n in (n_seq, H, *dims))
            raise ValueError(
                f"initial_state must have shape [N, H, {state.text}] = [{expected}], got {_shape(initial_state)}"
            )
        if initial_state.device != q.device:
            raise ValueError(f"initial_state is on {initial_state.device} but q is on {q.device}; they must match")


def check_chunk_size(chunk_size: int) -> None:
    """``chunk_size`` must be a positive int."""
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")


def check_cu_seqlens(cu_seqlens: Tensor, B: int, T: int) -> int:
    """``cu_seqlens`` must be ``[N + 1]`` int cumulative lengths of sequences packed along the T
    tokens of a batch of ``B = 1``: from 0, strictly increasing, to T. Returns N."""
    if not isinstance(cu_seqlens, Tensor) or cu_seqlens.dtype not in (torch.int32, torch.int64):
        got = cu_seqlens.dtype if isinstance(cu_seqlens, Tensor) else type(cu_seqlens).__name__
        raise TypeError(f"cu_seqlens must be an int32/int64 tensor of cumulative lengths, got {got}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError(f"cu_seqlens must have shape [N + 1] with N >= 1, got {_shape(cu_seqlens)}")
    if B != 1:
        raise ValueError(f"with cu_seqlens the sequences are packed along T, so B must be 1, got B = {B}")
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != T or any(b <= a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens must start at 0, strictly increase and end at T = {T}, got {cu}")
    return len(cu) - 1


@torch.no_grad()  # a check: nothing of it belongs in the autograd graph (isfinite would save its input)
@torch.no_grad()  # a check: its masks need no autograd graph
def outside_bounds(
    bounds: Mapping[str, Tuple[float, float]], per_token: Mapping[str, Optional[Tensor]]
) -> Dict[str, Tensor]:
    """For each bounded per-token input given (``bounds[name] = (lo, hi)``, a rule's
    :attr:`~fastweights.ops.RuleSpec.bounds`), the ``[B, T, H]`` mask of its finite values outside
    ``[lo, hi]`` (non-finite values are left to :mod:`fastweights.ops.nonfinite`); no host sync."""
    return {
        name: torch.isfinite(x) & ((x < lo) | (x > hi))  # [B, T, H]
        for name, (lo, hi) in bounds.items()
        if (x := per_token.get(name)) is not None
    }


def bounds_error(rule: str, name: str, bounds: Tuple[float, float], x: Tensor, outside: Tensor) -> ValueError:
    """The error for the values of ``x`` that :func:`outside_bounds` marked in ``outside``."""
    bad = x[outside]
    lo, hi = bounds
    return ValueError(
        f"{name} must lie in [{lo:g}, {hi:g}] for rule {rule!r}, got {bad.numel()} value(s) "
        f"outside, from {bad.min().item():g} to {bad.max().item():g}"
    )
