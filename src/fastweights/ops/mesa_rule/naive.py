"""Mesa rule, plain time loop: the definition every other form is tested against.

Per head, with (already feature-mapped and normalised) keys, a write strength ``beta_t``, a decay
``alpha_t = exp(g_t)`` and a regulariser ``lambda_t = exp(l_t)``::

    H_t = alpha_t H_{t-1} + beta_t k_t k_t^T           # [d_k, d_k]: the keys' (decayed) second moment
    G_t = alpha_t G_{t-1} + beta_t k_t v_t^T           # [d_k, d_v]: keys against values
    x_t = (H_t + lambda_t I)^{-1} q_t                  # [d_k]
    o_t = G_t^T x_t                                    # [d_v]

So ``o_t = W_t q_t`` with ``W_t = G_t^T (H_t + lambda_t I)^{-1}``, the fast weights that minimise
``sum_i alpha_{i+1..t} beta_i |W k_i - v_i|^2 + lambda_t |W|_F^2``: the Mesa layer (von Oswald
et al., "Uncovering mesa-optimization algorithms in Transformers", 2024; gated as in MesaNet, von
Oswald et al., 2025), which solves the regression the delta rule takes one gradient step on. The
state is the two matrices side by side, ``S = [H | G]``: ``[d_k, d_k + d_v]``.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor


def naive_core(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    beta: Optional[Tensor],
    S: Tensor,
    chunk_size: int,
    g: Optional[Tensor] = None,
    l: Optional[Tensor] = None,  # noqa: E741 (the paper's lambda, as a log)
) -> Tuple[Tensor, Tensor]:
    """One token at a time. ``q, k: [B, H, T, d_k]``, ``v: [B, H, T, d_v]``, ``beta, g, l: [B, H, T]``
    (None: 1, 0, 0), ``S: [B, H, d_k, d_k + d_v]``."""
    d_k = k.shape[-1]
    ones, zeros = q.new_ones(q.shape[:3]), q.new_zeros(q.shape[:3])
    beta, g, l = (ones if beta is None else beta), (zeros if g is None else g), (zeros if l is None else l)  # noqa: E741
    H, G = S[..., :d_k], S[..., d_k:]  # [B, H, d_k, d_k], [B, H, d_k, d_v]
    eye = torch.eye(d_k, dtype=q.dtype, device=q.device)
    outs = []
    for q_t, k_t, v_t, b_t, g_t, l_t in zip(*(x.unbind(2) for x in (q, k, v, beta, g, l))):
        a_t, b_t = g_t.exp()[..., None, None], b_t[..., None, None]  # [B, H, 1, 1]
        H = a_t * H + b_t * k_t[..., :, None] * k_t[..., None, :]  # [B, H, d_k, d_k]
        G = a_t * G + b_t * k_t[..., :, None] * v_t[..., None, :]  # [B, H, d_k, d_v]
        x_t = torch.linalg.solve(H + l_t.exp()[..., None, None] * eye, q_t)  # [B, H, d_k]
        outs.append(torch.einsum("bhk,bhkv->bhv", x_t, G))  # [B, H, d_v]
    return torch.stack(outs, dim=2), torch.cat([H, G], dim=-1)  # [B, H, T, d_v], [B, H, d_k, d_k + d_v]
