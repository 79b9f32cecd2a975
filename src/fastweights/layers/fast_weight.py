"""The multi-head Fast Weight Programmer layer (linear transformer / DeltaNet)."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..feature_maps import FeatureMap, get_feature_map, get_qk_norm
from ..ops import Op, get_op, get_rule
from ..ops.products import products
from ._checks import check_sequence, check_token, resolve_d_head

State = Dict[str, Tensor]


class FastWeightAttention(nn.Module):
    """Multi-head fast weight programmer: a slow net programs a fast weight matrix per head.

    For each token, a linear projection of ``x_t`` gives per head ``q_t, k_t, v_t`` (and a rate
    ``beta_t = sigmoid(w_beta . x_t)``); keys and queries go through the feature map phi (and
    optionally a normalisation), then the fast weights ``S`` (``[d_k, d_v]``, ``d_k = phi.out_dim``)
    are updated by the update rule and queried, e.g.

    - ``rule='sum'``   : ``S_t = S_{t-1} + beta_t k_t v_t^T``  (beta = 1 unless given)
    - ``rule='delta'`` : ``S_t = S_{t-1} + beta_t k_t (v_t - S_{t-1}^T k_t)^T``

    and ``y_t = W_o concat_heads(S_t^T q_t)``. Any rule of :func:`fastweights.ops.list_rules` works;
    its :class:`~fastweights.ops.RuleSpec` sets the defaults below, and its other per-token inputs
    (e.g. the gated delta rule's log decay ``g_t``) are learned as ``activation(w_h . x_t + b_h)``
    per head (:class:`~fastweights.ops.LearnedInput`).

    ``attn_norm`` is the op's ``normalize``: it keeps ``z_t = z_{t-1} + k_t`` and divides the output
    by ``z_t . q_t`` (for the delta rule, the paper's attention-normalised variant; see
    :mod:`fastweights.ops.delta_rule`).

    The same parameters serve :meth:`forward` (a whole sequence, backend ``impl``) and :meth:`step`
    (one token, backend ``decode_impl``), so a model trained in parallel decodes token by token with
    no conversion. The state is ``{"S": [B, H, d_k, d_v]}`` in float32 (``d_v + 1`` with
    ``attn_norm``: the last column is ``z``), or the shape the rule declares
    (:class:`~fastweights.ops.StateShape`).

    Under autocast, the projections, feature map and normalisations may come out in different
    dtypes (CUDA autocast runs sums and exponentials in float32); the layer hands the op q, k, v and
    beta in one compute dtype: autocast's dtype when autocast is on, else that of the values.

    Args:
        d_model: input and output width.
        n_heads: number of heads H.
        d_head: per-head width of the projected q, k, v (default ``d_model // n_heads``).
        rule: an update rule of :func:`fastweights.ops.list_rules` (``'sum'``, ``'delta'``).
        feature_map: a registered name (see :func:`fastweights.feature_maps.list_feature_maps`) or a
            :class:`FeatureMap` instance built for inputs of size ``d_head``.
        feature_map_kwargs: extra arguments for a named feature map (``nu``, ``m``, ...).
        qk_norm: ``'sum'``, ``'l2'`` or ``None`` applied to phi(q), phi(k); ``'auto'``: for rules
            that need normalised keys (delta) ``'sum'`` (``'l2'`` if phi can be negative), else ``None``.
        attn_norm: attention normalisation (see above); ``None``: the rule's default (on for the
            sum rule) when the feature map is non-negative, else off. It needs a non-negative map.
        out_norm: RMS-normalise each head's output before ``out_proj``,
            ``o_t <- g * o_t / sqrt(mean(o_t^2) + eps)`` with a learned gain ``g`` ``[d_head]`` shared by
            the heads (as DeltaNet and Gated DeltaNet do): the output's scale no longer follows the
            state's, which grows with the number of writes when a state is carried over a long text.
        beta: ``'learned'`` (sigmoid of a per-head projection), a fixed float, or ``'auto'``
            (``'learned'`` for rules that learn a rate (delta), else none). A fixed rate must be
            finite and within the rule's bounds (:attr:`~fastweights.ops.RuleSpec.bounds`; the
            delta rules: ``[0, 2]``). A learned rate is NaN only where ``x`` (or a weight) is; the
            op treats it as any non-finite input: the outputs from that token on are NaN, the
            earlier ones untouched (:mod:`fastweights.ops.nonfinite`).
        beta_max: the largest learned rate: ``beta_t = beta_max * sigmoid(w_h . x_t + b_h)``. 1 (the
            default) keeps the delta rule's transition ``I - beta_t k_t k_t^T`` positive
            semi-definite for unit keys; 2 lets its eigenvalue along ``k_t`` reach -1 (a reflection),
            which state tracking such as parity needs. At most the rule's bound on ``beta``.
        steps: updates per token, ``n``: each token writes ``n`` keys, values and rates in turn and
            its query reads after the last (:mod:`fastweights.ops.products`; for the delta rules,
            DeltaProduct: a product of ``n`` generalised Householder transitions); 1 is the rule itself.
        dropout: dropout on the layer output.
        bias: biases in the projections.
        impl: backend of :meth:`forward` (``'auto'``: chosen per call; ``'chunk'``, ``'naive'``,
            ``'fla'``, ... see :func:`fastweights.ops.list_ops`).
        decode_impl: backend of :meth:`step` (default ``'auto'``: the form the rule declares for one
            token, ``one_token=True``, its ``step``).
        chunk_size: chunk length of chunkwise backends.
        eps: added to normalisers.
    """

    fixed_size_state = True  #: the fast weights: the same size whatever the number of tokens read

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
        out_norm: bool = False,
        beta: Union[str, float] = "auto",
        beta_max: float = 1.0,
        steps: int = 1,
        dropout: float = 0.0,
        bias: bool = False,
        impl: str = "auto",
        decode_impl: str = "auto",
        chunk_size: int = 64,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        spec = get_rule(rule)
        d_head = resolve_d_head(d_model, n_heads, d_head)
        self.op, self.step_op = get_op(rule, impl), get_op(rule, decode_impl)
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_head
        self.state_shape = spec.state  # the state per sequence and head, [N, H, *state]
        self.rule, self.impl, self.decode_impl, self.chunk_size, self.eps = rule, impl, decode_impl, chunk_size, eps

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

        if qk_norm == "auto":  # rules such as delta need normalised keys; sums only make sense for phi >= 0
            qk_norm = ("sum" if self.feature_map.non_negative else "l2") if spec.key_norm else None
        self.qk_norm_name = qk_norm
        self.qk_norm = get_qk_norm(qk_norm)
        if attn_norm is None:  # the rule's default, where z . q > 0 is guaranteed
            attn_norm = spec.attn_norm and self.feature_map.non_negative
        self.attn_norm = bool(attn_norm)
        if self.attn_norm and not spec.normalize:
            raise ValueError(f"rule {rule!r} has no attention normalisation; use attn_norm=False")
        if self.attn_norm and not self.feature_map.non_negative:
            raise ValueError(
                f"attn_norm divides by z . q (and, for the delta rule, by z . k): it needs a non-negative "
                f"feature map, got {type(self.feature_map).__name__}; use attn_norm=False"
            )
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps!r}")

        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        self.steps = steps
        if beta == "auto":
            beta = "learned" if spec.learned_rate else 1.0
        lo, hi = spec.bounds.get("beta", (-math.inf, math.inf))
        if not (isinstance(beta_max, (int, float)) and not isinstance(beta_max, bool) and 0 < beta_max <= hi):
            raise ValueError(f"beta_max must be a float in (0, {hi:g}] (the bound of rule {rule!r}), got {beta_max!r}")
        if beta_max != 1.0 and beta != "learned":
            raise ValueError(f"beta_max applies to a learned rate; beta is {beta!r}")
        self.beta_max = float(beta_max)
        if beta == "learned":
            self.beta_proj: Optional[nn.Linear] = nn.Linear(d_model, steps * n_heads, bias=True)
            self.fixed_beta: Optional[float] = None
        elif isinstance(beta, (int, float)) and not isinstance(beta, bool):
            if not (math.isfinite(beta) and lo <= beta <= hi):
                within = f" in [{lo:g}, {hi:g}] (the bounds of rule {rule!r})" if "beta" in spec.bounds else ""
                raise ValueError(f"a fixed beta must be a finite float{within}, got {beta!r}")
            self.beta_proj, self.fixed_beta = None, float(beta)
        else:
            raise ValueError(f"beta must be 'learned', 'auto' or a float, got {beta!r}")

        self.learned = spec.learned  # the rule's other per-token inputs: activation(w_h . x + b_h)
        self.per_channel = spec.per_channel  # those learned per head and key channel
        self.input_projs = nn.ModuleDict(
            {
                name: nn.Linear(d_model, n_heads * (self.d_key if name in spec.per_channel else 1), bias=True)
                for name in spec.learned
            }
        )
        self.init_learned_inputs()
        self.qkv = nn.Linear(d_model, (1 + 2 * steps) * n_heads * d_head, bias=bias)  # q, then steps k's and v's
        self.out_norm: Optional[nn.RMSNorm] = nn.RMSNorm(d_head, eps=eps) if out_norm else None
        self.out_proj = nn.Linear(n_heads * d_head, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    # ------------------------------------------------------------------ public API
    def forward(
        self, x: Tensor, state: Optional[State] = None, cu_seqlens: Optional[Tensor] = None
    ) -> Tuple[Tensor, State]:
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
        return self._attend(x, state, cu_seqlens, self.op)

    def step(self, x_t: Tensor, state: Optional[State] = None) -> Tuple[Tensor, State]:
        """One token with the decoding backend: ``x_t: [B, d_model] -> y_t: [B, d_model]``."""
        check_token(x_t)
        y, state = self._attend(x_t[:, None], state, None, self.step_op)
        return y[:, 0], state

    def init_state(self, batch_size: int, device: Optional[torch.device] = None) -> State:
        """An empty (all-zero) state for ``batch_size`` sequences."""
        device = device if device is not None else self.qkv.weight.device
        d_v = self.d_head + (1 if self.attn_norm else 0)
        return {"S": torch.zeros(batch_size, self.n_heads, *self.state_shape(self.d_key, d_v), device=device)}

    def state_batch_size(self, state: State) -> int:
        """The number of sequences (rows) of a state."""
        return state["S"].shape[0]

    def select_state(self, state: State, rows: Tensor) -> State:
        """The state of batch rows ``rows`` (``[b]`` indices, in that order): every tensor is batch-major."""
        return {name: t.index_select(0, rows.to(t.device)) for name, t in state.items()}

    def stack_states(self, states: List[State]) -> State:
        """One state of the rows of ``states``, in order."""
        return {name: torch.cat([s[name] for s in states]) for name in states[0]}

    def init_learned_inputs(self) -> None:
        """Set the biases of the rule's learned inputs to the rule's starting values
        (:attr:`~fastweights.ops.LearnedInput.bias`; the gated delta rule's decay: 5, ``alpha ~ 0.993``).
        A model that re-initialises every ``nn.Linear`` calls this afterwards."""
        for name, proj in self.input_projs.items():
            nn.init.constant_(proj.bias, self.learned[name].bias)

    # ------------------------------------------------------------------ internals
    def _attend(self, x: Tensor, state: Optional[State], cu_seqlens: Optional[Tensor], op: Op) -> Tuple[Tensor, State]:
        check_sequence(x, self.d_model)
        o, S = self._fast(self._slow(x), state, cu_seqlens, op)  # [B, T, H * D]
        return self.dropout(self.out_proj(o)), {"S": S}  # [B, T, d_model]

    def _slow(self, x: Tensor) -> Dict[str, Tensor]:
        """The slow net's linear outputs for ``x: [B, T, d_model]``: ``"qkv"`` ``[B, T, 3 H D]``,
        ``"beta"`` ``[B, T, H]`` (when learned) and the rule's learned inputs ``[B, T, H]``."""
        pre = {"qkv": self.qkv(x)}
        if self.beta_proj is not None:
            pre["beta"] = self.beta_proj(x)
        pre.update({name: proj(x) for name, proj in self.input_projs.items()})
        return pre

    def _fast(
        self, pre: Dict[str, Tensor], state: Optional[State], cu_seqlens: Optional[Tensor], op: Op
    ) -> Tuple[Tensor, Tensor]:
        """Feature maps, rate and the op on the slow net's outputs ``pre``; returns the fast net's output
        ``[B, T, H * D]`` (heads concatenated, before ``out_proj``) and the new fast weights."""
        B, T = pre["qkv"].shape[:2]
        H, D, n = self.n_heads, self.d_head, self.steps
        qkv = pre["qkv"].view(B, T, 1 + 2 * n, H, D)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1 : 1 + n], qkv[:, :, 1 + n :]  # [B, T, H, D], [B, T, n, H, D] x 2
        q = self.feature_map.forward_query(q)  # [B, T, H, d_k]
        k = self.feature_map.forward_key(k.reshape(B, T * n, H, D))  # [B, T n, H, d_k]
        if self.qk_norm is not None:
            q, k = self.qk_norm(q, self.eps), self.qk_norm(k, self.eps)
        if "beta" in pre:
            beta: Optional[Tensor] = torch.sigmoid(pre["beta"])  # [B, T, n H]
            if self.beta_max != 1.0:
                beta = self.beta_max * beta
        elif self.fixed_beta != 1.0:
            beta = torch.full((B, T, n * H), self.fixed_beta, device=v.device)
        else:
            beta = None
        dtype = compute_dtype(v.device, v.dtype)
        inputs = {}  # each [B, T, H], or [B, T, H, d_k] per key channel
        for name in self.input_projs:
            x = self.learned[name].activation(pre[name]).to(dtype)  # [B, T, H (d_k)]
            inputs[name] = x.view(B, T, H, -1) if name in self.per_channel else x
        kwargs = dict(
            initial_state=state["S"] if state is not None else None,
            output_final_state=True,
            cu_seqlens=cu_seqlens,
            chunk_size=self.chunk_size,
            normalize=self.attn_norm,
            eps=self.eps,
        )
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        beta = beta.to(dtype) if beta is not None else None
        if n == 1:
            o, S = op(q, k, v[:, :, 0], beta, **kwargs, **inputs)  # [B, T, H, D]
        else:
            neutral = {name: self.learned[name].neutral for name in inputs}
            k = k.view(B, T, n, H, -1)  # [B, T, n, H, d_k]
            beta = beta.view(B, T, n, H) if beta is not None else None
            o, S = products(op, q, k, v, beta, inputs=inputs, neutral=neutral, **kwargs)  # [B, T, H, D]
        if self.out_norm is not None:
            o = self.out_norm(o)  # [B, T, H, D]
        return o.reshape(B, T, H * D), S

    def extra_repr(self) -> str:
        return (
            f"rule={self.rule!r}, heads={self.n_heads}, d_head={self.d_head}, d_key={self.d_key}, "
            f"qk_norm={self.qk_norm_name!r}, attn_norm={self.attn_norm}, out_norm={self.out_norm is not None}, "
            f"beta={'learned' if self.beta_proj is not None else self.fixed_beta}, beta_max={self.beta_max:g}, "
            f"steps={self.steps}, impl={self.impl!r}, "
            f"decode_impl={self.decode_impl!r}"
        )


def compute_dtype(device: torch.device, value_dtype: torch.dtype) -> torch.dtype:
    """The one dtype the layer hands the op: autocast's on ``device`` when it is on, else ``value_dtype``."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return value_dtype
