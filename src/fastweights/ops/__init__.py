"""Fast-weight operations: one package per update rule, one module per form.

All ops share one signature (see :mod:`fastweights.ops._api`)::

    op(q, k, v, beta=None, *, scale=None, initial_state=None, output_final_state=False,
       cu_seqlens=None, chunk_size=64) -> (o, final_state)       # layout [B, T, H, D]

Forms: ``naive`` (time loop, the definition), ``chunk`` (chunkwise parallel, for training),
``recurrent`` (one token, for decoding) and, for the sum rule, ``parallel`` (quadratic).
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from .delta_rule import chunk_delta_rule, naive_delta_rule, recurrent_delta_rule
from .sum_rule import chunk_sum_rule, naive_sum_rule, parallel_sum_rule, recurrent_sum_rule

_OPS: Dict[Tuple[str, str], Callable] = {
    ("sum", "naive"): naive_sum_rule,
    ("sum", "chunk"): chunk_sum_rule,
    ("sum", "recurrent"): recurrent_sum_rule,
    ("sum", "parallel"): parallel_sum_rule,
    ("delta", "naive"): naive_delta_rule,
    ("delta", "chunk"): chunk_delta_rule,
    ("delta", "recurrent"): recurrent_delta_rule,
}


def list_ops() -> List[Tuple[str, str]]:
    """Every registered ``(rule, impl)`` pair."""
    return sorted(_OPS)


def get_op(rule: str, impl: str = "chunk") -> Callable:
    """The op for update ``rule`` ('sum' | 'delta') in form ``impl`` ('naive' | 'chunk' | 'recurrent' | 'parallel')."""
    try:
        return _OPS[(rule, impl)]
    except KeyError:
        rules = sorted({r for r, _ in _OPS})
        if rule not in rules:
            raise ValueError(f"unknown rule {rule!r}; expected one of {rules}") from None
        impls = sorted(i for r, i in _OPS if r == rule)
        raise ValueError(f"unknown impl {impl!r} for rule {rule!r}; expected one of {impls}") from None


def register_op(rule: str, impl: str, op: Callable) -> None:
    """Add an op (e.g. a new rule or a compiled kernel) under ``(rule, impl)``."""
    _OPS[(rule, impl)] = op


__all__ = [
    "get_op", "list_ops", "register_op",
    "naive_sum_rule", "chunk_sum_rule", "recurrent_sum_rule", "parallel_sum_rule",
    "naive_delta_rule", "chunk_delta_rule", "recurrent_delta_rule",
]
