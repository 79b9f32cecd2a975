"""A decoder-only language model with any attention the layers offer, in reading order:
attention factory -> feed-forward -> block -> adaptive input -> the model.

``LMState = {"pos": int, "layers": [layer_state, ...]}``: ``pos`` counts the tokens consumed so
far (a forward with a state starts at position ``pos``), or is a ``[B]`` tensor of per-row counts
when the rows read prompts of different lengths (a batch of prompts, see
:func:`fastweights.models.generate.prefill`); each layer state is that attention layer's own (fast weights
``{"S", ...}`` of constant size, or the softmax KV cache ``{"k", "v", ...}``).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..files.state import map_tensors
from ..layers import FastWeightAttention, RecurrentFastWeightAttention, SoftmaxAttention
from .config import LMConfig

LMState = Dict[str, Any]


def build_attention(cfg: LMConfig) -> nn.Module:
    """The attention layer of ``cfg.attention`` (same ``forward``/``step`` interface for all)."""
    spec = cfg.attention
    if not spec.is_fast_weight:
        return SoftmaxAttention(cfg.d_model, cfg.n_heads, cfg.d_head, dropout=cfg.dropout, bias=cfg.bias)
    kwargs = dict(spec.feature_map.kwargs)
    if spec.feature_map.name == "favor":
        kwargs["input_scale"] = cfg.head_dim**-0.25  # phi(q).phi(k) estimates exp(q.k / sqrt(d_head))
    layer = RecurrentFastWeightAttention if spec.is_recurrent else FastWeightAttention
    return layer(
        cfg.d_model,
        cfg.n_heads,
        cfg.d_head,
        rule=spec.rule,
        feature_map=spec.feature_map.name,
        feature_map_kwargs=kwargs,
        dropout=cfg.dropout,
        bias=cfg.bias,
        chunk_size=cfg.chunk_size,
        impl=cfg.impl,
        decode_impl=cfg.decode_impl,
        qk_norm=None if cfg.qk_norm == "none" else cfg.qk_norm,
        out_norm=cfg.out_norm,
        **({"beta_max": spec.beta_max} if spec.beta_max != 1.0 else {}),
        **({"steps": spec.steps} if spec.steps != 1 else {}),
    )


class FeedForward(nn.Module):
    """``W_2 gelu(W_1 x)``, ``d_model -> d_ff -> d_model``, with dropout."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # [B, T, d_model]


class Block(nn.Module):
    """Attention then feed-forward, each in a residual branch with LayerNorm before (``'pre'``:
    ``x + f(LN(x))``) or after (``'post'``: ``LN(x + f(x))``)."""

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        self.pre = cfg.norm == "pre"
        self.ln_1 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = build_attention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.ff = FeedForward(cfg)

    def forward(self, x: Tensor, state: Optional[dict] = None, one_token: bool = False) -> Tuple[Tensor, dict]:
        """``x: [B, T, d_model]`` -> ``(x, state)``; ``one_token`` uses the layer's one-token step (T = 1)."""
        h = self.ln_1(x) if self.pre else x
        if one_token:
            a, state = self.attn.step(h[:, 0], state)  # [B, d_model]
            a = a[:, None]  # [B, 1, d_model]
        else:
            a, state = self.attn(h, state)  # [B, T, d_model]
        x = x + a if self.pre else self.ln_1(x + a)
        x = x + self.ff(self.ln_2(x)) if self.pre else self.ln_2(x + self.ff(x))
        return x, state


def adaptive_input(idx: Tensor, als: nn.AdaptiveLogSoftmaxWithLoss) -> Tensor:
    """Adaptive input embeddings tied to an adaptive softmax (Baevski & Auli, 2019).

    A token in the head cluster (``id < cutoffs[0]``) is embedded by its row of the softmax head
    ``[d_model]``; a token in tail cluster i by its row of the cluster's output matrix ``[h_i]``
    projected back to ``d_model`` by the cluster's (transposed) input projection.
    ``idx: [...] -> [..., d_model]``.
    """
    d_model = als.in_features
    out = torch.zeros(*idx.shape, d_model, dtype=als.head.weight.dtype, device=idx.device)
    cut = als.cutoffs  # [c_0, ..., c_{n-1}, V]
    head = idx < cut[0]
    out[head] = F.embedding(idx[head], als.head.weight)  # [n_head, d_model]
    for i, tail in enumerate(als.tail):
        sel = (idx >= cut[i]) & (idx < cut[i + 1])
        proj, emb = tail[0].weight, tail[1].weight  # [h_i, d_model], [c_{i+1} - c_i, h_i]
        out[sel] = (F.embedding(idx[sel] - cut[i], emb) @ proj).to(out.dtype)  # [n_i, d_model] (bf16 under autocast)
    return out


class LanguageModel(nn.Module):
    """Decoder-only LM: token (+ position) embedding -> ``n_layers`` blocks -> (final LN) -> head.

    The head is a linear layer to V logits (weights tied with the embedding if
    ``tie_embeddings``) or, with ``adaptive_cutoffs``, an adaptive softmax whose outputs are
    log-probabilities (its input side is :func:`adaptive_input` when tied, else a full embedding).
    """

    def __init__(self, cfg: LMConfig) -> None:
        super().__init__()
        if not isinstance(cfg, LMConfig):
            raise TypeError(f"cfg must be an LMConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        adaptive = cfg.adaptive_cutoffs is not None
        self.wte = None if adaptive and cfg.tie_embeddings else nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.context, cfg.d_model) if cfg.pos_emb == "learned" else None
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias) if cfg.norm == "pre" else None
        if adaptive:
            self.head: nn.Module = nn.AdaptiveLogSoftmaxWithLoss(
                cfg.d_model,
                cfg.vocab_size,
                cfg.adaptive_cutoffs,
                div_value=cfg.adaptive_div_value,
                head_bias=cfg.bias,
            )
        else:
            self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        for blk in self.blocks:  # the zeroed biases of a rule's learned inputs (e.g. a decay) back to the rule's
            if isinstance(blk.attn, FastWeightAttention):
                blk.attn.init_learned_inputs()
        for name, p in self.named_parameters():  # GPT-2: scale residual projections by 1/sqrt(2 L)
            if name.endswith(("attn.out_proj.weight", "ff.proj.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))
        if cfg.tie_embeddings and not adaptive:
            self.wte.weight = self.head.weight  # [V, d_model]

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def num_params(self) -> int:
        """Parameter count (shared tensors counted once)."""
        return sum(p.numel() for p in self.parameters())

    # ------------------------------------------------------------------ public API
    def forward(
        self,
        idx: Tensor,
        targets: Optional[Tensor] = None,
        state: Optional[LMState] = None,
        *,
        return_logits: bool = True,
        resets: Optional[Tensor] = None,
    ) -> Tuple[Optional[Tensor], Optional[Tensor], LMState]:
        """Run a segment, optionally continuing from ``state``.

        Args:
            idx: ``[B, T]`` token ids.
            targets: ``[B, T]`` next-token ids (``-100`` = ignore) or ``None``.
            state: an :data:`LMState` to continue from, or ``None`` (start of text).
            return_logits: ``False`` skips the ``[B, T, V]`` output (training with an adaptive
                softmax only needs the loss); logits are then ``None``.
            resets: ``[B, T]`` bool or ``None``: row b's state is emptied just before token t where
                ``resets[b, t]`` (a new document starts there; fast-weight attention only). The
                segment runs in pieces cut at those tokens, each row's state flowing through them
                with its graph, so gradients cross the pieces as in one call.

        Returns:
            ``(logits, loss, state)``: logits ``[B, T, V]`` (log-probabilities with an adaptive
            softmax); loss the mean cross-entropy in nats over non-ignored targets (``None``
            without targets); state after the last token.
        """
        self._check_idx(idx, 2, "idx")
        B, T = idx.shape
        if resets is None:
            h, new_state = self._trunk(idx, state, one_token=False)  # [B, T, d_model]
        else:
            h, new_state = self._trunk_resetting(idx, state, resets)  # [B, T, d_model]
        loss = None
        if targets is not None:
            if not isinstance(targets, Tensor) or targets.shape != idx.shape:
                raise ValueError(
                    f"targets must have the shape of idx {list(idx.shape)}, "
                    f"got {getattr(targets, 'shape', type(targets))}"
                )
            loss = self._loss(h.reshape(B * T, -1), targets.reshape(B * T))
        logits = self._logits(h) if return_logits else None
        return logits, loss, new_state

    def step(self, idx_t: Tensor, state: Optional[LMState] = None) -> Tuple[Tensor, LMState]:
        """One token per sequence with each attention layer's one-token step.

        ``idx_t: [B]`` -> ``(logits [B, V], state)``; fast-weight layers carry an O(1) state,
        softmax layers a growing KV cache.
        """
        self._check_idx(idx_t, 1, "idx_t")
        h, new_state = self._trunk(idx_t[:, None], state, one_token=True)  # [B, 1, d_model]
        return self._logits(h[:, 0]), new_state

    def init_state(self, batch_size: int, device: Optional[torch.device] = None) -> LMState:
        """The empty state (position 0, empty layer states)."""
        return {"pos": 0, "layers": [blk.attn.init_state(batch_size, device) for blk in self.blocks]}

    # ------------------------------------------------------------------ internals
    def _check_idx(self, idx: Tensor, dim: int, name: str) -> None:
        if not isinstance(idx, Tensor) or idx.dim() != dim or idx.dtype not in (torch.int64, torch.int32):
            want = "[B, T]" if dim == 2 else "[B]"
            raise ValueError(
                f"{name} must be an integer tensor of shape {want}, "
                f"got {getattr(idx, 'dtype', type(idx))} {list(getattr(idx, 'shape', []))}"
            )
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.cfg.vocab_size):
            raise ValueError(
                f"{name} holds ids outside [0, vocab_size={self.cfg.vocab_size}): "
                f"min {int(idx.min())}, max {int(idx.max())}"
            )

    def _trunk(self, idx: Tensor, state: Optional[LMState], one_token: bool) -> Tuple[Tensor, LMState]:
        B, T = idx.shape
        if state is not None and (
            not isinstance(state, dict) or set(state) != {"pos", "layers"} or len(state["layers"]) != len(self.blocks)
        ):
            raise ValueError(f"state must be an LMState {{'pos': int, 'layers': [{len(self.blocks)} layer states]}}")
        pos0 = 0 if state is None else state["pos"]  # int, or [B] per-row positions
        if isinstance(pos0, Tensor) and pos0.shape != (B,):
            raise ValueError(f"state['pos'] must be an int or a [B={B}] tensor, got shape {list(pos0.shape)}")
        layer_states: List[Optional[dict]] = [None] * len(self.blocks) if state is None else list(state["layers"])
        x = self.wte(idx) if self.wte is not None else adaptive_input(idx, self.head)  # [B, T, d_model]
        if self.wpe is not None:
            last = int(pos0.max()) if isinstance(pos0, Tensor) else int(pos0)
            if last + T > self.cfg.context:
                raise ValueError(
                    f"learned positions cover {self.cfg.context} tokens, asked for positions up to {last + T - 1}; "
                    "use a sliding window (or pos_emb='none')"
                )
            pos = torch.as_tensor(pos0, device=idx.device)[..., None] + torch.arange(
                T, device=idx.device
            )  # [T] or [B, T]
            x = x + self.wpe(pos)  # [B, T, d_model]
        x = self.drop(x)
        for i, blk in enumerate(self.blocks):
            x, layer_states[i] = blk(x, layer_states[i], one_token=one_token)
        if self.ln_f is not None:
            x = self.ln_f(x)
        return x, {"pos": pos0 + T, "layers": layer_states}

    def _trunk_resetting(self, idx: Tensor, state: Optional[LMState], resets: Tensor) -> Tuple[Tensor, LMState]:
        """:meth:`_trunk` over the pieces of ``idx`` cut where any row resets; a resetting row enters
        its piece with the empty (all-zero) state at position 0."""
        B, T = idx.shape
        if not isinstance(resets, Tensor) or resets.dtype != torch.bool or resets.shape != (B, T):
            raise ValueError(
                f"resets must be a bool tensor of the shape of idx {[B, T]}, got "
                f"{getattr(resets, 'dtype', type(resets))} {list(getattr(resets, 'shape', []))}"
            )
        if not all(isinstance(blk.attn, FastWeightAttention) for blk in self.blocks):
            raise ValueError(
                f"resets need fast-weight attention (an empty state is all zeros), got attention={self.cfg.attention!r}"
            )
        cuts = [0] + [t for t in resets.any(0).nonzero().flatten().tolist() if t > 0] + [T]
        hs = []
        for a, b in zip(cuts, cuts[1:]):
            if state is not None and bool(resets[:, a].any()):
                keep = ~resets[:, a]  # [B]
                pos = torch.where(keep, torch.as_tensor(state["pos"], device=idx.device), 0)  # [B]
                layers = map_tensors(lambda t: torch.where(keep.view(-1, *[1] * (t.dim() - 1)), t, 0), state["layers"])  # noqa: B023 (used within this iteration)
                state = {"pos": pos, "layers": layers}
            h, state = self._trunk(idx[:, a:b], state, one_token=False)  # [B, b - a, d_model]
            hs.append(h)
        return torch.cat(hs, 1), state  # [B, T, d_model]

    def _logits(self, h: Tensor) -> Tensor:
        if isinstance(self.head, nn.AdaptiveLogSoftmaxWithLoss):
            lead = h.shape[:-1]
            with torch.autocast(h.device.type, enabled=False):  # the adaptive softmax mixes dtypes under autocast
                return self.head.log_prob(h.reshape(-1, h.shape[-1]).float()).view(*lead, -1)  # [..., V]
        return self.head(h)  # [..., V]

    def _loss(self, h: Tensor, targets: Tensor) -> Tensor:
        """Mean cross-entropy over targets != -100; ``h: [N, d_model]``, ``targets: [N]``."""
        if isinstance(self.head, nn.AdaptiveLogSoftmaxWithLoss):
            keep = targets != -100
            with torch.autocast(h.device.type, enabled=False):
                return self.head(h[keep].float(), targets[keep]).loss
        return F.cross_entropy(self.head(h).float(), targets, ignore_index=-100)
