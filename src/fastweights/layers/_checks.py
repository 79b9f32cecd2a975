"""Argument checks shared by the attention layers."""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..ops.checks import check_cu_seqlens


def resolve_d_head(d_model: int, n_heads: int, d_head: Optional[int]) -> int:
    """``d_head``, defaulting to ``d_model // n_heads``; raise ``ValueError`` on bad sizes."""
    for name, value in (("d_model", d_model), ("n_heads", n_heads)) + (
        (("d_head", d_head),) if d_head is not None else ()
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if d_head is None:
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) is not divisible by n_heads ({n_heads}); pass d_head")
        d_head = d_model // n_heads
    return d_head


def check_sequence(x: Tensor, d_model: int, cu_seqlens: Optional[Tensor] = None) -> None:
    """``x`` must be a ``[B, T, d_model]`` tensor with T > 0; ``cu_seqlens``, if given, the
    ``[N + 1]`` cumulative lengths of sequences packed along those T tokens (so B = 1)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != d_model:
        raise ValueError(f"x must have shape [B, T, d_model={d_model}], got {list(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError("x has T = 0 tokens")
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, x.shape[0], x.shape[1])


def check_token(x_t: Tensor) -> None:
    """``x_t`` (one token per sequence) must be a ``[B, d_model]`` tensor."""
    if not isinstance(x_t, Tensor) or x_t.dim() != 2:
        got = list(x_t.shape) if isinstance(x_t, Tensor) else type(x_t).__name__
        raise ValueError(f"step expects x_t of shape [B, d_model], got {got}")
