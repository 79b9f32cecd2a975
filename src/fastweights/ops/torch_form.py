"""The adapter that turns a torch *core* (the math of one form on clean tensors) into a :class:`Backend`.

A core works in the ``[B, H, T, D]`` layout, in the compute dtype, on one batch of equal-length
sequences::

    core(q, k, v, beta, S0, chunk_size) -> (o, S_T)
        q, k : [B, H, T, d_k]   (q already scaled)
        v    : [B, H, T, d_v]
        beta : [B, H, T] or None
        S0   : [B, H, d_k, d_v] (or the rule's declared state shape, :class:`~fastweights.ops.StateShape`)
        **inputs : the rule's other per-token inputs, each [B, H, T] (keyword arguments)
        o    : [B, H, T, d_v],  S_T : the shape of S0

The dispatcher has already checked the arguments, cast them to float32 (float64 stays) and padded
packed sequences; the adapter transposes, scales ``q``, makes the zero state and keeps autocast
off, so the op keeps its own precision.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from .call import OpCall
from .registry import Backend, get_rule

Core = Callable[[Tensor, Tensor, Tensor, Optional[Tensor], Tensor, int], Tuple[Tensor, Tensor]]


def torch_form(rule: str, name: str, core: Core, **declaration) -> Backend:
    """The backend ``name`` of ``rule`` that runs ``core`` (``declaration``: :class:`Backend` fields)."""

    def run(call: OpCall) -> Tuple[Tensor, Tensor]:
        qc = call.q.transpose(1, 2)  # [B, H, T, d_k]
        if call.scale != 1.0:
            qc = qc * call.scale
        kc, vc = call.k.transpose(1, 2), call.v.transpose(1, 2)  # [B, H, T, d_k], [B, H, T, d_v]
        bc = call.beta.transpose(1, 2) if call.beta is not None else None  # [B, H, T]
        B, H, _, d_k = kc.shape
        if call.initial_state is None:
            s0 = kc.new_zeros(B, H, *get_rule(rule).state(d_k, vc.shape[-1]))  # empty: [B, H, *state]
        else:
            s0 = call.initial_state.to(call.q.dtype)
        extra = {n: x.transpose(1, 2) for n, x in call.inputs.items()}  # each [B, H, T]
        with torch.autocast(call.q.device.type, enabled=False):
            o, s_t = core(qc, kc, vc, bc, s0, call.chunk_size, **extra)
        return o.transpose(1, 2), s_t  # [B, T, H, d_v]

    run.__name__ = f"{name}_{rule}_rule"
    run.__doc__ = core.__doc__
    return Backend(name, rule, run, **declaration)
