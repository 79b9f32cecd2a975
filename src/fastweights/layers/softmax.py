"""Softmax attention baseline with the same interface as :class:`FastWeightAttention`, and its KV cache.

The state is a KV cache whose buffers are preallocated and grow geometrically: appending ``T`` tokens
writes them into free slots (doubling the capacity when full), so a decoded token costs ``O(1)``
copies amortised instead of a ``torch.cat`` of the whole cache::

    {"k": [B, H, C, d_head], "v": [B, H, C, d_head],  # buffers of capacity C
     "length": n,                                     # slots 0..n-1 hold the keys and values read so far
     "written": [1] (int64, CPU),                     # slots written into these buffers, by any state
     "start": None or [B] (int64)}                    # row b's keys begin at slot start[b]

States stay values: several states may share one pair of buffers (each continuation of a state
appends after its own ``length``), and a state appends in place only while ``written == length``,
i.e. no other state has written past it; otherwise it copies first. ``start`` is set when rows of
different lengths share a cache (a left-padded batch, see :func:`stack_caches`): slots before
``start[b]`` are masked out of row b's attention.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_sequence, check_token, resolve_d_head

State = Dict[str, Any]

MIN_CAPACITY = 64  # slots of a cache's first buffers; each reallocation at least doubles the capacity


class SoftmaxAttention(nn.Module):
    """Causal multi-head softmax attention (``torch.nn.functional.scaled_dot_product_attention``).

    ``y = W_o concat_heads(softmax(q k^T / sqrt(d_head) + causal mask) v)``. Its state is a KV cache
    (see the module docstring) that grows with every token: the cost the fast-weight layers avoid.

    Args:
        d_model: input and output width.
        n_heads: number of heads H.
        d_head: per-head width (default ``d_model // n_heads``).
        dropout: attention-probability dropout and output dropout (training only).
        bias: biases in the projections.
    """

    fixed_size_state = False  #: the KV cache grows with every token

    def __init__(
        self, d_model: int, n_heads: int, d_head: Optional[int] = None, dropout: float = 0.0, bias: bool = False
    ) -> None:
        super().__init__()
        d_head = resolve_d_head(d_model, n_heads, d_head)
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head
        self.p_drop = dropout
        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head, bias=bias)
        self.out_proj = nn.Linear(n_heads * d_head, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, state: Optional[State] = None, cu_seqlens: Optional[Tensor] = None
    ) -> Tuple[Tensor, State]:
        """``x: [B, T, d_model]`` -> ``(y: [B, T, d_model], kv_cache)``, attending to ``state`` first."""
        check_sequence(x, self.d_model, cu_seqlens)
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)  # each [B, H, T, D]
        p = self.p_drop if self.training else 0.0
        if state is None:
            mask = packed_mask(cu_seqlens, T) if cu_seqlens is not None else None  # [T, T]
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None, dropout_p=p)
            cache = {"k": k, "v": v, "length": T, "written": torch.tensor([T]), "start": None}
        else:
            if cu_seqlens is not None:
                raise ValueError("cu_seqlens cannot be combined with a KV-cache state")
            if state["k"].shape[0] != B:
                raise ValueError(f"state is a KV cache of batch {state['k'].shape[0]}, but x has batch {B}")
            past = state["length"]
            cache = append(state, k, v)
            keys, values = cache["k"][:, :, : past + T], cache["v"][:, :, : past + T]  # [B, H, past + T, D]
            mask = cache_mask(past, T, state["start"], x.device)  # None: every slot visible
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, dropout_p=p)
        y = self.out_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.d_head))  # [B, T, d_model]
        return self.dropout(y), cache

    def step(self, x_t: Tensor, state: Optional[State] = None) -> Tuple[Tensor, State]:
        """One token: ``x_t: [B, d_model] -> y_t: [B, d_model]``; the cache grows by one."""
        check_token(x_t)
        y, state = self.forward(x_t[:, None], state)
        return y[:, 0], state

    def init_state(self, batch_size: int, device: Optional[torch.device] = None) -> State:
        """An empty KV cache (buffers of capacity 0: the first append allocates them)."""
        device = device if device is not None else self.qkv.weight.device
        empty = torch.zeros(batch_size, self.n_heads, 0, self.d_head, device=device)
        return {"k": empty, "v": empty.clone(), "length": 0, "written": torch.tensor([0]), "start": None}

    def state_batch_size(self, state: State) -> int:
        """The number of sequences (rows) of a cache."""
        return state["k"].shape[0]

    def select_state(self, state: State, rows: Tensor) -> State:
        """The cache of batch rows ``rows`` (``[b]`` indices, in that order): :func:`select_cache`."""
        return select_cache(state, rows)

    def stack_states(self, states: List[State]) -> State:
        """One cache of the rows of ``states``, in order (right-aligned): :func:`stack_caches`."""
        return stack_caches(states)

    def extra_repr(self) -> str:
        return f"heads={self.n_heads}, d_head={self.d_head}"


def packed_mask(cu_seqlens: Tensor, T: int) -> Tensor:
    """``[T, T]`` boolean mask of causal attention within each sequence packed along T."""
    device = cu_seqlens.device
    seq_id = torch.repeat_interleave(torch.arange(len(cu_seqlens) - 1, device=device), cu_seqlens.diff().long())  # [T]
    pos = torch.arange(T, device=device)
    return (seq_id[:, None] == seq_id[None, :]) & (pos[:, None] >= pos[None, :])  # [T, T]


def cache_mask(past: int, T: int, start: Optional[Tensor], device: torch.device) -> Optional[Tensor]:
    """The mask of ``T`` queries at slots ``past..past+T-1`` over keys at slots ``0..past+T-1``.

    Query i sees key j iff ``j <= past + i`` (causal) and ``j >= start[b]`` (row b's first slot);
    ``[T, past + T]``, or ``[B, 1, T, past + T]`` with ``start``; ``None`` when every key is visible.
    """
    if start is None and T == 1:
        return None
    slot = torch.arange(past + T, device=device)  # [past + T]
    mask = slot[None, :] <= past + torch.arange(T, device=device)[:, None]  # [T, past + T]
    if start is None:
        return mask
    return mask[None, None] & (slot >= start.to(device)[:, None])[:, None, None, :]  # [B, 1, T, past + T]


def append(state: State, k: Tensor, v: Tensor) -> State:
    """The cache ``state`` followed by ``k, v: [B, H, T, D]`` (slots ``n..n+T-1``, ``n = state['length']``).

    In place when the buffers are this state's to extend (nobody wrote past ``n``, room for ``T``,
    same dtype and device, no autograd graph through them); else into new buffers of capacity
    ``max(n + T, 2 C, MIN_CAPACITY)``, so decoding ``N`` tokens copies ``O(N)`` slots in all.
    """
    n, T = state["length"], k.shape[2]
    buf_k, buf_v, written = state["k"], state["v"], state["written"]
    graph = torch.is_grad_enabled() and (k.requires_grad or v.requires_grad or buf_k.requires_grad)
    if graph:  # in-place writes would corrupt tensors saved for backward
        buf_k = torch.cat([buf_k[:, :, :n].to(k.dtype), k], dim=2)  # [B, H, n + T, D]
        buf_v = torch.cat([buf_v[:, :, :n].to(v.dtype), v], dim=2)
        return {**state, "k": buf_k, "v": buf_v, "length": n + T, "written": torch.tensor([n + T])}
    fits = buf_k.shape[2] >= n + T and buf_k.dtype == k.dtype and buf_k.device == k.device
    frozen = buf_k.is_inference() and not torch.is_inference_mode_enabled()  # inference tensors are read-only outside
    if not (fits and int(written) == n and not frozen):
        capacity = max(n + T, 2 * buf_k.shape[2], MIN_CAPACITY)
        buf_k, buf_v = (_grown(b, n, capacity, k) for b in (buf_k, buf_v))
        written = torch.tensor([n])
    buf_k[:, :, n : n + T] = k
    buf_v[:, :, n : n + T] = v
    written.fill_(n + T)
    return {**state, "k": buf_k, "v": buf_v, "length": n + T, "written": written}


def _grown(buf: Tensor, n: int, capacity: int, like: Tensor) -> Tensor:
    """New ``[B, H, capacity, D]`` buffer (dtype and device of ``like``) holding the first ``n`` slots of ``buf``."""
    B, H, _, D = buf.shape
    out = like.new_empty(B, H, capacity, D)
    out[:, :, :n] = buf[:, :, :n]
    return out


def select_cache(state: State, rows: Tensor) -> State:
    """The cache of the batch rows ``rows`` (``[b]`` int64 indices), in that order, in new buffers."""
    n = state["length"]
    k = state["k"][:, :, :n].index_select(0, rows.to(state["k"].device))  # [b, H, n, D]
    v = state["v"][:, :, :n].index_select(0, rows.to(state["v"].device))
    start = state["start"].index_select(0, rows.to(state["start"].device)) if state["start"] is not None else None
    return {"k": k, "v": v, "length": n, "written": torch.tensor([n]), "start": start}


def stack_caches(states: List[State]) -> State:
    """One cache of the rows of ``states`` (batch-concatenated in order).

    Caches of equal length without ``start`` are concatenated; otherwise each is right-aligned at
    the longest one's length ``N`` (its slot j moves to ``j + N - n``) and ``start`` marks where each
    row's keys begin, as in a left-padded batch.
    """
    N = max(s["length"] for s in states)
    if all(s["length"] == N and s["start"] is None for s in states):
        k = torch.cat([s["k"][:, :, :N] for s in states])  # [B, H, N, D]
        v = torch.cat([s["v"][:, :, :N] for s in states])
        return {"k": k, "v": v, "length": N, "written": torch.tensor([N]), "start": None}
    ref = states[0]["k"]
    B, H, D = sum(s["k"].shape[0] for s in states), ref.shape[1], ref.shape[3]
    k, v = ref.new_zeros(B, H, N, D), ref.new_zeros(B, H, N, D)
    starts, row = [], 0
    for s in states:
        b, n, shift = s["k"].shape[0], s["length"], N - s["length"]
        k[row : row + b, :, shift:] = s["k"][:, :, :n]
        v[row : row + b, :, shift:] = s["v"][:, :, :n]
        own = (
            s["start"].to(ref.device) if s["start"] is not None else torch.zeros(b, dtype=torch.long, device=ref.device)
        )
        starts.append(own + shift)  # [b]
        row += b
    return {"k": k, "v": v, "length": N, "written": torch.tensor([N]), "start": torch.cat(starts)}
