"""Products of updates: ``n`` updates of a rule per token (DeltaProduct; Siems et al., 2025).

Token ``t`` brings one query ``q_t`` and ``n`` keys, values and rates ``k_{t,j}, v_{t,j},
beta_{t,j}``; the state takes the ``n`` updates in turn, and the query reads it after the last::

    S_{t,0} = S_{t-1,n}
    S_{t,j} = update(S_{t,j-1}; k_{t,j}, v_{t,j}, beta_{t,j})        j = 1..n
    o_t     = S_{t,n}^T q_t

For the delta rule each update multiplies the state by a generalised Householder matrix
``I - beta k k^T``, so a token's transition is a product of ``n`` of them. With ``beta`` in
``[0, 2]`` (reflections) a product of two can rotate, which a single update cannot: what counting
modulo ``m`` needs. ``n = 1`` is the rule itself.

It runs as the rule's own op over the ``n T`` updates laid out in time (token major, update
minor), with zero queries at every update but each token's last, whose outputs it keeps; so every
form and backend of the rule computes it, with the rule's exactness and no kernel of its own. The
rule's other per-token inputs (the gated rule's decay ``g``) act once per token, at its first
update, and take their neutral value (``g = 0``: no decay) at the others.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import torch
from torch import Tensor

from .checks import check_cu_seqlens
from .registry import Op


def interleave(x: Tensor) -> Tensor:
    """``[B, T, n, ...] -> [B, T n, ...]``: token ``t``'s ``n`` updates at times ``t n .. t n + n - 1``."""
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def products(
    op: Op,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Optional[Tensor] = None,
    *,
    inputs: Optional[Mapping[str, Tensor]] = None,
    neutral: Optional[Mapping[str, float]] = None,
    cu_seqlens: Optional[Tensor] = None,
    **op_kwargs: Any,
) -> Tuple[Tensor, Optional[Tensor]]:
    """``n`` updates of ``op``'s rule per token (see the module docstring).

    Args:
        op: the rule's op (any backend; a one-token backend takes the ``n`` updates one by one).
        q: ``[B, T, H, d_k]``.
        k: ``[B, T, n, H, d_k]``; v: ``[B, T, n, H, d_v]``; beta: ``[B, T, n, H]`` or ``None`` (1).
        inputs: the rule's other per-token inputs, each ``[B, T, H]``, applied at each token's first update.
        neutral: each such input's value that leaves the state unchanged (default 0).
        cu_seqlens: ``[N + 1]`` cumulative token counts of packed sequences (``B = 1``).
        op_kwargs: the op's other arguments (``initial_state``, ``output_final_state``, ``scale``,
            ``chunk_size``, ``normalize``, ``eps``).

    Returns:
        ``(o [B, T, H, d_v], final_state)`` as the op returns them.
    """
    B, T, n = k.shape[:3]
    if q.shape[:2] != (B, T) or v.shape[:3] != (B, T, n) or (beta is not None and beta.shape[:3] != (B, T, n)):
        raise ValueError(
            f"products: q must be [B, T, H, d_k], k [B, T, n, H, d_k], v [B, T, n, H, d_v] and beta "
            f"[B, T, n, H] with the same B, T and n; got q {list(q.shape)}, k {list(k.shape)}, "
            f"v {list(v.shape)}, beta {None if beta is None else list(beta.shape)}"
        )
    reads = q.new_zeros(B, T, n, *q.shape[2:])  # [B, T, n, H, d_k]
    reads[:, :, -1] = q  # the query reads after the token's last update
    per_update = {}
    for name, x in (inputs or {}).items():  # [B, T, H]
        spread = x.new_full((B, T, n, *x.shape[2:]), float((neutral or {}).get(name, 0.0)))  # [B, T, n, H]
        spread[:, :, 0] = x
        per_update[name] = interleave(spread)  # [B, T n, H]
    args = (interleave(reads), interleave(k), interleave(v), None if beta is None else interleave(beta))
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, B, T)  # in tokens, before it counts updates
    cu = None if cu_seqlens is None else cu_seqlens * n
    if op.backend is not None and op.backend.one_token and T * n > 1:
        o, state = _one_by_one(op, args, per_update, op_kwargs)  # [B, T n, H, d_v]
    else:
        o, state = op(*args, cu_seqlens=cu, **op_kwargs, **per_update)  # [B, T n, H, d_v]
    return o.view(B, T, n, *o.shape[2:])[:, :, -1], state  # [B, T, H, d_v]


def _one_by_one(
    op: Op, args: Tuple[Tensor, ...], inputs: Mapping[str, Tensor], op_kwargs: Mapping[str, Any]
) -> Tuple[Tensor, Optional[Tensor]]:
    """A one-token backend over every update in turn, the state carried from one to the next."""
    kwargs = dict(op_kwargs)
    wanted = kwargs.pop("output_final_state", False)
    state = kwargs.pop("initial_state", None)
    outs = []
    for t in range(args[0].shape[1]):
        now = [None if x is None else x[:, t : t + 1] for x in args]
        o, state = op(
            *now,
            initial_state=state,
            output_final_state=True,
            **kwargs,
            **{n: x[:, t : t + 1] for n, x in inputs.items()},
        )
        outs.append(o)  # [B, 1, H, d_v]
    return torch.cat(outs, 1), state if wanted else None
