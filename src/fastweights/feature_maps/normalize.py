"""Normalisation of feature-mapped keys and queries."""

from __future__ import annotations

from typing import Callable, Optional

import torch.nn.functional as F
from torch import Tensor


def sum_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / (sum_j x_j + eps)`` over the last dimension (the paper's choice for the delta rule)."""
    return x / (x.sum(dim=-1, keepdim=True) + eps)


def l2_normalize(x: Tensor, eps: float = 1e-6) -> Tensor:
    """``x / max(|x|_2, eps)`` over the last dimension."""
    return F.normalize(x, p=2.0, dim=-1, eps=eps)


_NORMS = {"sum": sum_normalize, "l2": l2_normalize}


def get_qk_norm(name: Optional[str]) -> Optional[Callable[[Tensor, float], Tensor]]:
    """The key/query normaliser called ``name`` ('sum' | 'l2'), or ``None`` for none."""
    if name is None or name == "none":
        return None
    if name not in _NORMS:
        raise ValueError(f"unknown qk_norm {name!r}; expected one of {sorted(_NORMS)} or None")
    return _NORMS[name]
