"""The forms of the general FWP for any ``sigma``: the time loop, its one-token step, and the
time loop recomputed from checkpoints (the training form).

    S_t = sigma(S_{t-1} + k_t v_t^T),    o_t = S_t^T q_t        # S is [d_k, d_v]

No chunkwise form exists for a nonlinear ``sigma``. Autograd through the plain loop keeps one
``[d_k, d_v]`` matrix per token for the backward; the checkpointed form keeps only the state at
every ``chunk_size``-th token and recomputes each segment's loop in the backward (memory
``O(T d + (T / chunk_size) d_k d_v)``, one more forward's work).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
from torch import Tensor

from ..common.checkpointed import checkpointed

Sigma = Callable[[Tensor], Tensor]


def loop(sigma: Sigma, q: Tensor, k: Tensor, v: Tensor, S: Tensor) -> Tuple[Tensor, Tensor]:
    """The definition over ``[B, H, T, d]`` inputs from state ``S`` ``[B, H, d_k, d_v]``."""
    outs = []
    for q_t, k_t, v_t in zip(q.unbind(2), k.unbind(2), v.unbind(2)):  # each [B, H, d]
        S = sigma(S + k_t[..., :, None] * v_t[..., None, :])  # [B, H, d_k, d_v]
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, S))  # [B, H, d_v]
    return torch.stack(outs, dim=2), S  # [B, H, T, d_v]


def naive(sigma: Sigma):
    """The time loop as a core (the rate is applied to ``v`` by the rule)."""

    def naive_core(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S: Tensor, chunk_size: int):
        return loop(sigma, q, k, v, S)

    return naive_core


def step(sigma: Sigma):
    """One token (T = 1) as a core."""

    def step_core(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor], S: Tensor, chunk_size: int):
        S = sigma(S + k.transpose(-1, -2) @ v)  # [B, H, d_k, d_v]
        return q @ S, S  # [B, H, 1, d_v]

    return step_core


def checkpointed_form(sigma: Sigma):
    """The time loop in segments of ``chunk_size`` tokens, each recomputed in the backward."""
    return checkpointed(naive(sigma))
