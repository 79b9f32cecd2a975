"""Sum rule (causal linear attention): ``S_t = S_{t-1} + beta_t k_t v_t^T``, ``o_t = S_t^T q_t``.

With ``normalize=True`` (attention normalisation) the op also keeps ``z_t = z_{t-1} + k_t`` and
returns ``o_t / (z_t . q_t + eps)``. ``z`` rides along as one more value column that is always 1
(``S_aug = [S | z]``), so every backend computes it with no extra code; the state then carries it
as its last column.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..call import OpCall, Run
from ..registry import RuleSpec
from ..torch_form import torch_form
from .chunk import chunk_core
from .naive import naive_core
from .parallel import parallel_core
from .step import step_core


def apply(run: Run, call: OpCall) -> Tuple[Tensor, Optional[Tensor]]:
    """The rate and the normalisation around a backend's ``run`` (every tensor ``[B, T, H, .]``)."""
    v = call.v if call.beta is None else call.v * call.beta[..., None]  # [B, T, H, d_v]: the written beta_t v_t
    if call.normalize:
        v = torch.cat([v, v.new_ones(v.shape[:-1] + (1,))], dim=-1)  # [B, T, H, d_v + 1]
    o, s_t = run(call.replace(v=v, beta=None))
    if call.normalize:
        o = o[..., :-1] / (o[..., -1:] + call.eps)  # [B, T, H, d_v]: o_t / (z_t . q_t + eps)
    return o, s_t


RULE = RuleSpec(
    name="sum",
    summary="Sum rule (linear attention): S_t = S_{t-1} + beta_t k_t v_t^T, o_t = S_t^T q_t",
    apply=apply,
    attn_norm=True,
    forms=(
        torch_form("sum", "naive", naive_core),
        torch_form("sum", "chunk", chunk_core, priority=10),
        torch_form("sum", "parallel", parallel_core),
        torch_form("sum", "step", step_core, one_token=True),
    ),
)

__all__ = ["RULE", "apply", "chunk_core", "naive_core", "parallel_core", "step_core"]
