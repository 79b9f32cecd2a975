"""Fast-weight operations: one package per update rule, backends behind one contract.

Every op is called the same way (see :mod:`fastweights.ops.registry`)::

    op = get_op("delta")           # impl="auto": the fastest backend for each call's inputs
    o, S = op(q, k, v, beta, *, scale=None, initial_state=None, output_final_state=False,
              cu_seqlens=None, chunk_size=64, normalize=False, eps=1e-6)   # layout [B, T, H, D]

Torch forms of every rule: ``naive`` (time loop, the definition), ``chunk`` (chunkwise parallel,
for training), ``step`` (one token, for decoding) and, for the sum rule, ``parallel``
(quadratic). Optional backends (``fla``: flash-linear-attention on CUDA) register themselves when
their package is installed; :func:`list_ops` lists what can run here.
"""

from __future__ import annotations

from .registry import (
    Backend,
    LearnedInput,
    Op,
    RuleSpec,
    check_impl,
    get_op,
    get_rule,
    list_backends,
    list_ops,
    list_rules,
    register_backend,
    register_rule,
    select_backend,
)
from .state_shape import StateShape

__all__ = [
    "Backend",
    "LearnedInput",
    "Op",
    "RuleSpec",
    "StateShape",
    "check_impl",
    "get_op",
    "get_rule",
    "list_backends",
    "list_ops",
    "list_rules",
    "register_backend",
    "register_rule",
    "select_backend",
]
