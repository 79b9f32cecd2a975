"""Softmax attention baseline with the same interface as :class:`FastWeightAttention`."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_sequence, check_token, resolve_d_head

State = Dict[str, Tensor]


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention (``torch.nn.functional.scaled_dot_product_attention``).

    ``y = W_o concat_heads(softmax(q k^T / sqrt(d_head) + causal mask) v)``. Its state is a KV cache,
    ``{"k": [B, H, T_past, d_head], "v": [B, H, T_past, d_head]}``, which grows with every token:
    the cost the fast-weight layers avoid.

    Args:
        d_model: input and output width.
        n_heads: number of heads H.
        d_head: per-head width (default ``d_model // n_heads``).
        dropout: attention-probability dropout and output dropout (training only).
        bias: biases in the projections.
    """

    def __init__(self, d_model: int, n_heads: int, d_head: Optional[int] = None, dropout: float = 0.0, bias: bool = False) -> None:
        super().__init__()
        d_head = resolve_d_head(d_model, n_heads, d_head)
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head
        self.p_drop = dropout
        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head, bias=bias)
        self.out_proj = nn.Linear(n_heads * d_head, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, state: Optional[State] = None, cu_seqlens: Optional[Tensor] = None) -> Tuple[Tensor, State]:
        """``x: [B, T, d_model]`` -> ``(y: [B, T, d_model], kv_cache)``, attending to ``state`` first."""
        check_sequence(x, self.d_model, cu_seqlens)
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # each [B, H, T, D]
        past = 0
        if state is not None:
            if cu_seqlens is not None:
                raise ValueError("cu_seqlens cannot be combined with a KV-cache state")
            past = state["k"].shape[2]
            k = torch.cat([state["k"].to(k.dtype), k], dim=2)  # [B, H, past + T, D]
            v = torch.cat([state["v"].to(v.dtype), v], dim=2)
        p = self.p_drop if self.training else 0.0
        if cu_seqlens is not None:
            seq_id = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1, device=x.device), cu_seqlens.diff().long())
            pos = torch.arange(T, device=x.device)
            mask = (seq_id[:, None] == seq_id[None, :]) & (pos[:, None] >= pos[None, :])  # [T, T]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        elif past == 0:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        else:
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(past)  # [T, past + T]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = self.out_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head))  # [B, T, d_model]
        return self.dropout(y), {"k": k, "v": v}

    def step(self, x_t: Tensor, state: Optional[State] = None) -> Tuple[Tensor, State]:
        """One token: ``x_t: [B, d_model] -> y_t: [B, d_model]``; the cache grows by one."""
        check_token(x_t)
        y, state = self.forward(x_t[:, None], state)
        return y[:, 0], state

    def init_state(self, batch_size: int, device: Optional[torch.device] = None) -> State:
        """An empty KV cache."""
        device = device if device is not None else self.qkv.weight.device
        empty = torch.zeros(batch_size, self.n_heads, 0, self.d_head, device=device)
        return {"k": empty, "v": empty.clone()}

    def extra_repr(self) -> str:
        return f"heads={self.n_heads}, d_head={self.d_head}"
