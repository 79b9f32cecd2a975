"""Mesa rule: the fast weights that solve the regression the delta rule takes one gradient step on.

``H_t = alpha_t H_{t-1} + beta_t k_t k_t^T``, ``G_t = alpha_t G_{t-1} + beta_t k_t v_t^T`` and
``o_t = G_t^T (H_t + lambda_t I)^{-1} q_t`` (:mod:`fastweights.ops.mesa_rule.naive`): the Mesa layer
(von Oswald et al., 2024), with MesaNet's decay (von Oswald et al., 2025), solved exactly (MesaNet
approximates the solve by conjugate gradients). Its state is two matrices, ``[H | G]``:
``[N, H, d_k, d_k + d_v]``, declared as the rule's :class:`~fastweights.ops.StateShape`.

The op takes the decay as its log ``g`` (<= 0; None: no decay) and the regulariser as its log ``l``
(``lambda_t = exp(l_t)``; None: 1), keyword inputs ``[B, T, H]``:
``get_op("mesa")(q, k, v, beta, g=g, l=l)``. Zero ``beta``, ``g`` and ``l`` leave the state alone and
keep the solve regular, so packed sequences are padded like any other rule's. Layers learn
``beta = sigmoid(.)``, ``g = logsigmoid(.)`` (starting at ``alpha ~ 0.993``) and ``l`` (starting at
0, ``lambda = 1``) per head. Each token costs a ``d_k x d_k`` solve: ``O(T d_k^3)``.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from ..call import OpCall, Run
from ..registry import LearnedInput, RuleSpec
from ..state_shape import StateShape
from ..torch_form import torch_form
from .chunk import chunk_core
from .naive import naive_core


def apply(run: Run, call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
    """The backend's ``run`` (no rule-level work: no normalised variant)."""
    return run(call)


def _identity(x: Tensor) -> Tensor:
    return x


RULE = RuleSpec(
    name="mesa",
    summary=(
        "Mesa rule: H_t = alpha_t H_{t-1} + beta_t k_t k_t^T, G_t = alpha_t G_{t-1} + beta_t k_t v_t^T, "
        "o_t = G_t^T (H_t + lambda_t I)^-1 q_t"
    ),
    apply=apply,
    inputs={
        "beta": "[B, T, H] write strength (None: 1)",
        "g": "[B, T, H] log decay log(alpha) <= 0 (None: 0)",
        "l": "[B, T, H] log regulariser log(lambda) (None: 0)",
    },
    learned={"g": LearnedInput(F.logsigmoid, bias=5.0), "l": LearnedInput(_identity)},
    state=StateShape("d_k, d_k + d_v", lambda d_k, d_v: (d_k, d_k + d_v)),
    normalize=False,
    key_norm=True,
    learned_rate=True,
    bounds={"beta": (0.0, math.inf), "g": (-math.inf, 0.0)},  # H stays positive semi-definite
    forms=(
        torch_form("mesa", "naive", naive_core),
        torch_form("mesa", "chunk", chunk_core, priority=10),
        torch_form("mesa", "step", naive_core, one_token=True),
    ),
)

__all__ = ["RULE", "apply", "chunk_core", "naive_core"]
