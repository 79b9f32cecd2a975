"""The general fast weight programmer (Schmidhuber 1991/1992): ``S_t = sigma(S_{t-1} + beta_t k_t v_t^T)``.

Two rules, one per ``sigma`` on the fast weights:

- ``fwp-tanh``: ``sigma = tanh`` elementwise: every entry stays in (-1, 1);
- ``fwp-normcap``: ``sigma(S) = S / max(1, ||S||_F / c)`` with ``c = sqrt(d_k d_v)``: the whole
  matrix stays within a Frobenius ball (about d_k unit-norm keys' worth of values of norm sqrt(d_v)).

The identity would give back the sum rule. Forms: ``naive`` (the definition), ``step`` (one
token) and ``checkpoint`` (the training form: the loop recomputed from a state kept every
``chunk_size`` tokens; see :mod:`fastweights.ops.fwp.forms`). Packed sequences run one by one:
padding them would not leave the state alone, since ``sigma`` moves it even without a write.
Layers use normalised keys and a learned rate, which scales the written value as in the sum rule.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..call import OpCall, Run
from ..registry import RuleSpec
from ..torch_form import torch_form
from ..varlen import per_sequence
from . import forms


def norm_cap(S: Tensor) -> Tensor:
    """``S / max(1, ||S||_F / sqrt(d_k d_v))`` per ``[d_k, d_v]`` matrix of ``S: [..., d_k, d_v]``."""
    cap = math.sqrt(S.shape[-1] * S.shape[-2])
    norm = torch.linalg.matrix_norm(S)[..., None, None]  # [..., 1, 1]: Frobenius
    return S / torch.clamp(norm / cap, min=1.0)


def apply(run: Run, call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
    """The rate scales the written value (``beta_t k_t v_t^T``), as in the sum rule."""
    if call.beta is None:
        return run(call)
    return run(call.replace(v=call.v * call.beta[..., None], beta=None))  # v: [B, T, H, d_v]


def _rule(name: str, sigma: forms.Sigma, summary: str) -> RuleSpec:
    return RuleSpec(
        name=name,
        summary=summary,
        apply=apply,
        normalize=False,
        key_norm=True,
        learned_rate=True,
        forms=tuple(
            replace(b, run=per_sequence(b.run), native_varlen=True)
            for b in (  # padding would move S
                torch_form(name, "naive", forms.naive(sigma)),
                torch_form(name, "checkpoint", forms.checkpointed_form(sigma), priority=10),
                torch_form(name, "step", forms.step(sigma), one_token=True),
            )
        ),
    )


RULES = [
    _rule("fwp-tanh", torch.tanh, "General FWP: S_t = tanh(S_{t-1} + beta_t k_t v_t^T), o_t = S_t^T q_t"),
    _rule(
        "fwp-normcap",
        norm_cap,
        "General FWP: S_t = capF(S_{t-1} + beta_t k_t v_t^T), capF(S) = S / max(1, |S|_F / sqrt(d_k d_v))",
    ),
]

__all__ = ["RULES", "apply", "norm_cap"]
