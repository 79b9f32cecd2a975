"""Channel-gated delta rule: ``S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1} + beta_t k_t v_t^T``.

The gated delta rule with a decay per key channel (``alpha_t`` in ``(0, 1]^{d_k}``), as in Kimi
Delta Attention: the op takes its log ``g = log alpha`` per key channel, ``[B, T, H, d_k]`` (<= 0;
None: no decay), a keyword input: ``get_op("channel_gated_delta")(q, k, v, beta, g=g)``. Layers
learn ``g_t = logsigmoid(W x_t + b)``, one value per head and key channel, with ``b`` starting at 5
(alpha ~ 0.993).

Forms: ``naive`` (the definition, :mod:`.naive`), ``step`` (one token), ``chunk`` (the training
form: chunkwise parallel, the WY form with every decay a difference of cumulative log decays,
each chunk recomputed in the backward, :mod:`.chunk`) and ``checkpoint`` (the time loop
recomputed from the state at every ``chunk_size``-th token, :mod:`fastweights.ops.common.checkpointed`).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

from ..call import OpCall, Run
from ..common.checkpointed import checkpointed
from ..registry import LearnedInput, RuleSpec
from ..torch_form import torch_form
from .chunk import chunk_core
from .naive import naive_core


def apply(run: Run, call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
    """The backend's ``run`` with the decays (no rule-level work: no normalised variant)."""
    return run(call)


RULE = RuleSpec(
    name="channel_gated_delta",
    summary=(
        "Channel-gated delta rule: S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1} + beta_t k_t v_t^T, "
        "o_t = S_t^T q_t"
    ),
    apply=apply,
    inputs={"beta": "[B, T, H] rate (None: 1)", "g": "[B, T, H, d_k] log decay per key channel <= 0 (None: 0)"},
    per_channel=("g",),
    learned={"g": LearnedInput(F.logsigmoid, bias=5.0)},
    normalize=False,
    key_norm=True,
    learned_rate=True,
    bounds={"beta": (0.0, 2.0), "g": (-math.inf, 0.0)},
    forms=(
        torch_form("channel_gated_delta", "naive", naive_core),
        torch_form("channel_gated_delta", "chunk", chunk_core, priority=10),
        torch_form("channel_gated_delta", "checkpoint", checkpointed(naive_core)),
        torch_form("channel_gated_delta", "step", naive_core, one_token=True),
    ),
)

__all__ = ["RULE", "apply", "chunk_core", "naive_core"]
