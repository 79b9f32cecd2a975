"""Gated delta rule (Gated DeltaNet): ``S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T``.

The op takes the decay as its log, ``g = log alpha`` (``[B, T, H]``, <= 0; None: no decay, the
delta rule), a keyword input: ``get_op("gated_delta")(q, k, v, beta, g=g)``. Layers learn
``g_t = logsigmoid(w_h . x_t + b_h)`` per head, with ``b_h`` starting at 5 (alpha ~ 0.993: a memory
that forgets over a few hundred tokens until trained otherwise).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from ..call import OpCall, Run
from ..registry import LearnedInput, RuleSpec
from ..torch_form import torch_form
from .chunk import chunk_core
from .naive import naive_core
from .step import step_core


def apply(run: Run, call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
    """The backend's ``run`` with the decay (no rule-level work: no normalised variant)."""
    return run(call)


RULE = RuleSpec(
    name="gated_delta",
    summary="Gated delta rule: S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t",
    apply=apply,
    inputs={"beta": "[B, T, H] rate (None: 1)", "g": "[B, T, H] log decay log(alpha) <= 0 (None: 0)"},
    learned={"g": LearnedInput(F.logsigmoid, bias=5.0)},
    normalize=False,
    key_norm=True,
    learned_rate=True,
    bounds={"beta": (0.0, 2.0), "g": (-math.inf, 0.0)},  # as the delta rule's; a decay alpha = e^g <= 1
    forms=(
        torch_form("gated_delta", "naive", naive_core),
        torch_form("gated_delta", "chunk", chunk_core, priority=10),
        torch_form("gated_delta", "step", step_core, one_token=True),
    ),
)

__all__ = ["RULE", "apply", "chunk_core", "naive_core", "step_core"]
