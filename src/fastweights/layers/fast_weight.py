"""The multi-head Fast Weight Programmer layer (linear transformer / DeltaNet)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..feature_maps import FeatureMap, get_feature_map, get_qk_norm
from ..ops import get_op
from ._checks import check_sequence, check_token, resolve_d_head

State = Dict[str, Tensor]


class FastWeightAttention(nn.Module):
    """Multi-head fast weight programmer: a slow net programs a fast weight matrix per head.

    For each token, a linear projection of ``x_t`` gives per head ``q_t, k_t, v_t`` (and a rate
    ``beta_t = sigmoid(w_beta . x_t)``); keys and queries go through the feature map phi (and
    optionally a normalisation), then the fast weights ``S`` (``[d_k, d_v]``, ``d_k = phi.out_dim``)
    are updated and queried:

    - ``rule='sum'``   : ``S_t = S_{t-1} + beta_t k_t v_t^T``  (beta = 1 unless given)
    - ``rule='delta'`` : ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T``

    and ``y_t = W_o concat_heads(S_t^T q_t)``.

    ``attn_norm`` (default on for the sum rule, off for the delta rule) keeps ``z_t = z_{t-1} + k_t``
    and divides the output by ``z_t . q_t``; for the delta rule it is the paper's attention-normalised
    variant, which also uses ``c_t = z_{t-1} . k_t`` (1 while the memory is empty): rate
    ``beta_t c_t`` and key ``k_t / c_t``.

    The same parameters serve :meth:`forward` (a whole sequence, chunkwise parallel by default) and
    :meth:`step` (one token, the recurrent form), so a model trained in parallel decodes token by
    token with no conversion. The state is a dict of float32 tensors: ``"S"`` ``[B, H, d_k, d_v]``
    (``d_v + 1`` for the normalised sum rule, whose last column is ``z``) and, for the normalised
    delta rule, ``"z"`` ``[B, H, d_k]``.

    Args:
        d_model: input and output width.
        n_heads: number of heads H.
        d_head: per-head width of the projected q, k, v (default ``d_model // n_heads``).
        rule: ``'sum'`` or ``'delta'``.
        feature_map: a registered name (see :func:`fastweights.feature_maps.list_feature_maps`) or a
            :class:`FeatureMap` instance built for inputs of size ``d_head``.
        feature_map_kwargs: extra arguments for a named feature map (``nu``, ``m``, ...).
        qk_norm: ``'sum'``, ``'l2'`` or ``None`` applied to phi(q), phi(k); ``'auto'``: for the
            delta rule ``'sum'`` (``'l2'`` if phi can be negative), ``None`` for the sum rule.
        attn_norm: attention normalisation (see above); ``None``: on for the sum rule with a
            non-negative feature map, off otherwise. It needs a non-negative map.
        beta: ``'learned'`` (sigmoid of a per-head projection), a fixed float, or ``'auto'``
            (``'learned'`` for delta, none for sum).
        dropout: dropout on the layer output.
        bias: biases in the projections.
        impl: op form for :meth:`forward` (``'chunk'``, ``'naive'``, ``'parallel'`` for sum).
        chunk_size: chunk length of the chunk form.
        eps: added to normalisers.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_head: Optional[int] = None,
        rule: str = "delta",
        feature_map: Union[str, FeatureMap] = "elu_p1",
        feature_map_kwargs: Optional[dict] = None,
        qk_norm: Optional[str] = "auto",
        attn_norm: Optional[bool] = None,
        beta: Union[str, float] = "auto",
        dropout: float = 0.0,
        bias: bool = False,
        impl: str = "chunk",
        chunk_size: int = 64,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if rule not in ("sum", "delta"):
            raise ValueError(f"rule must be 'sum' or 'delta', got {rule!r}")
        d_head = resolve_d_head(d_model, n_heads, d_head)
        get_op(rule, impl)  # validates impl early
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head
        self.rule, self.impl, self.chunk_size, self.eps = rule, impl, chunk_size, eps

        if isinstance(feature_map, FeatureMap):
            if feature_map_kwargs:
                raise ValueError("feature_map_kwargs only apply to a feature map given by name")
            if feature_map.d != d_head:
                raise ValueError(f"the feature map was built for d = {feature_map.d}, but d_head = {d_head}")
            self.feature_map = feature_map
        elif isinstance(feature_map, str):
            self.feature_map = get_feature_map(feature_map, d_head, **(feature_map_kwargs or {}))
        else:
            raise TypeError(f"feature_map must be a name or a FeatureMap, got {type(feature_map).__name__}")
        self.d_key = self.feature_map.out_dim()

        if qk_norm == "auto":  # the delta rule needs normalised keys; sums only make sense for phi >= 0
            qk_norm = None if rule == "sum" else ("sum" if self.feature_map.non_negative else "l2")
        self.qk_norm_name = qk_norm
        self.qk_norm = get_qk_norm(qk_norm)
        if attn_norm is None:  # on for the sum rule, where z . q > 0 is guaranteed
            attn_norm = rule == "sum" and self.feature_map.non_negative
        self.attn_norm = bool(attn_norm)
        if self.attn_norm and not self.feature_map.non_negative:
            raise ValueError(
                f"attn_norm divides by z . q (and, for the delta rule, by z . k): it needs a non-negative "
                f"feature map, got {type(self.feature_map).__name__}; use attn_norm=False"
            )
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")

        if beta == "auto":
            beta = "learned" if rule == "delta" else 1.0
        if beta == "learned":
            self.beta_proj: Optional[nn.Linear] = nn.Linear(d_model, n_heads, bias=True)
            self.fixed_beta: Optional[float] = None
        elif isinstance(beta, (int, float)) and not isinstance(beta, bool):
            self.beta_proj, self.fixed_beta = None, float(beta)
        else:
            raise ValueError(f"beta must be 'learned', 'auto' or a float, got {beta!r}")

        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head, bias=bias)
        self.out_proj = nn.Linear(n_heads * d_head, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    # ------------------------------------------------------------------ public API
    def forward(self, x: Tensor, state: Optional[State] = None, cu_seqlens: Optional[Tensor] = None) -> Tuple[Tensor, State]:
        """Process a sequence.

        Args:
            x: ``[B, T, d_model]``.
            state: the state to continue from (as returned by a previous call), or ``None``.
            cu_seqlens: ``[N + 1]`` cumulative lengths of sequences packed along T (``B == 1``).

        Returns:
            ``(y, state)``: ``y`` is ``[B, T, d_model]``; ``state`` the fast weights after the last
            token (per sequence with ``cu_seqlens``).
        """
        if self.training:
            self.feature_map.training_step()
        return self._attend(x, state, cu_seqlens, self.impl)

    def step(self, x_t: Tensor, state: Optional[State] = None) -> Tuple[Tensor, State]:
        """One token with the recurrent form: ``x_t: [B, d_model] -> y_t: [B, d_model]``."""
        check_token(x_t)
        y, state = self._attend(x_t[:, None], state, None, "recurrent")
        return y[:, 0], state

    def init_state(self, batch_size: int, device: Optional[torch.device] = None) -> State:
        """An empty (all-zero) state for ``batch_size`` sequences."""
        device = device if device is not None else self.qkv.weight.device
        d_v = self.d_head + (1 if self.attn_norm and self.rule == "sum" else 0)
        state = {"S": torch.zeros(batch_size, self.n_heads, self.d_key, d_v, device=device)}
        if self.attn_norm and self.rule == "delta":
            state["z"] = torch.zeros(batch_size, self.n_heads, self.d_key, device=device)
        return state

    # ------------------------------------------------------------------ internals
    def _attend(self, x: Tensor, state: Optional[State], cu_seqlens: Optional[Tensor], impl: str) -> Tuple[Tensor, State]:
        check_sequence(x, self.d_model)
        B, T, _ = x.shape
        H, D = self.n_heads, self.d_head
        q, k, v = self.qkv(x).view(B, T, 3, H, D).unbind(2)  # each [B, T, H, D]
        q = self.feature_map.forward_query(q)  # [B, T, H, d_k]
        k = self.feature_map.forward_key(k)  # [B, T, H, d_k]
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, self.eps), self.qk_norm(k, self.eps)
        if self.beta_proj is not None:
            beta: Optional[Tensor] = torch.sigmoid(self.beta_proj(x))  # [B, T, H]
        elif self.fixed_beta != 1.0:
            beta = torch.full((B, T, H), self.fixed_beta, dtype=q.dtype, device=q.device)
        else:
            beta = None
        op = get_op(self.rule, impl)
        S0 = state["S"] if state is not None else None
        kw = dict(initial_state=S0, output_final_state=True, cu_seqlens=cu_seqlens, chunk_size=self.chunk_size)
        if self.rule == "sum":
            o, S = op(q, k, v, beta, normalize=self.attn_norm, eps=self.eps, **kw)  # [B, T, H, D]
            new_state = {"S": S}
        elif not self.attn_norm:
            o, S = op(q, k, v, beta, **kw)
            new_state = {"S": S}
        else:
            z0 = state["z"] if state is not None else None
            z_prev, z_last = _exclusive_key_sums(k, z0, cu_seqlens)  # [B, T, H, d_k], [N, H, d_k]
            c = (z_prev * k).sum(-1)  # [B, T, H]: c_t = z_{t-1} . k_t
            c = torch.where(c == 0, torch.ones_like(c), c)
            rate = c if beta is None else beta * c
            o, S = op(q, (k / (c[..., None] + self.eps)).to(q.dtype), v, rate, **kw)
            den = ((z_prev + k) * q).sum(-1, keepdim=True)  # [B, T, H, 1]: z_t . q_t
            o = (o / (den + self.eps)).to(q.dtype)
            new_state = {"S": S, "z": z_last}
        y = self.out_proj(o.reshape(B, T, H * D))  # [B, T, d_model]
        return self.dropout(y), new_state

    def extra_repr(self) -> str:
        return (
            f"rule={self.rule!r}, heads={self.n_heads}, d_head={self.d_head}, d_key={self.d_key}, "
            f"qk_norm={self.qk_norm_name!r}, attn_norm={self.attn_norm}, "
            f"beta={'learned' if self.beta_proj is not None else self.fixed_beta}, impl={self.impl!r}"
        )


def _exclusive_key_sums(k: Tensor, z0: Optional[Tensor], cu_seqlens: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """``z_{t-1} = z_0 + sum_{i<t} k_i`` per sequence, in float32, and the final ``z``.

    ``k: [B, T, H, d_k]``, ``z0: [N, H, d_k]`` or None. Returns ``([B, T, H, d_k], [N, H, d_k])``.
    """
    kf = k.float() if k.dtype != torch.float64 else k
    cum = kf.cumsum(1)  # [B, T, H, d_k]
    if cu_seqlens is None:
        excl = cum - kf
        if z0 is not None:
            excl = excl + z0[:, None].to(excl)
        return excl, excl[:, -1] + kf[:, -1]
    starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
    lengths = ends - starts
    base = (cum - kf)[0, starts]  # [N, H, d_k]: the running sum where each sequence begins
    if z0 is not None:
        base = base - z0.to(base)
    excl = (cum - kf) - base.repeat_interleave(lengths, dim=0)[None]  # [1, T, H, d_k]
    return excl, excl[0, ends - 1] + kf[0, ends - 1]
