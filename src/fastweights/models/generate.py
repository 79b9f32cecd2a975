"""Sampling from a language model: one parallel prefill, then one token at a time from the state.

The prompt ``x_1 .. x_P`` is consumed by one parallel forward (the chunkwise form for fast weights,
SDPA for softmax) which returns the logits of ``x_{P+1}`` and the state after ``x_P``. Each new
token then costs one :meth:`LanguageModel.step`: for a fast weight programmer an update of a
fixed-size matrix per layer (``O(1)`` time and memory per token, whatever was read before); for
the softmax baseline one more row in the KV cache (``O(t)`` per token).

Batches: :func:`generate` takes one prompt or several (a list of prompts of any lengths, or a
left-padded ``[B, P]`` tensor with its ``attention_mask``), and decodes each row as if it were
alone. :func:`prefill` reads the prompts of equal length together, so no padding token ever enters
a state, and stacks their states into one batch state in which each row keeps its own position
(``pos`` per row) and, for softmax layers, its own right-aligned span of the KV cache. The rows then
step together; a row that samples one of ``stop_tokens`` leaves the batch.

A model with learned absolute positions cannot see past its ``context``: once a row's state holds
``context`` tokens, each further token of that row is predicted from a fresh prefill of its last
``context`` tokens (a sliding window, as nanoGPT crops its input). Models without positions (the
fast-weight presets) decode for ever from the carried state.
"""

from __future__ import annotations

from typing import Callable, Collection, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .lm import LMState

Prompts = Union[Sequence[int], Sequence[Sequence[int]], Tensor]


def sample_next(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    top_p: Optional[float] = None,
) -> Tensor:
    """Draw one token per row of ``logits [B, V]`` (logits or log-probabilities) -> ``[B]``.

    ``p ~ softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens and then to
    the nucleus: the most likely tokens whose probabilities sum to at least ``top_p`` (a token is
    dropped when the tokens more likely than it already hold ``top_p``); ``temperature = 0`` picks
    the argmax (greedy decoding).
    """
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature  # [B, V]
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # [B, V]
    if top_p is not None and top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)  # [B, V]
        before = sorted_p.cumsum(-1) - sorted_p  # [B, V] mass of the more likely tokens
        probs = probs.scatter(-1, order, sorted_p.masked_fill(before >= top_p, 0.0))
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def check_sampling(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    """``ValueError`` unless ``temperature >= 0``, ``top_k`` a positive int or None, ``0 < top_p <= 1`` or None."""
    if not isinstance(temperature, (int, float)) or not temperature >= 0:  # NaN too
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if top_p is not None and (not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: Prompts,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    state: Optional[LMState] = None,
    *,
    top_p: Optional[float] = None,
    stop_tokens: Collection[int] = (),
    on_token: Optional[Callable[[int, int], None]] = None,
    attention_mask: Optional[Tensor] = None,
) -> Tuple[Union[List[int], List[List[int]]], LMState]:
    """Continue ``prompt`` (or each prompt of a batch) by up to ``max_new_tokens`` sampled tokens.

    Args:
        model: a :class:`fastweights.models.LanguageModel` (``forward``, ``step``, ``blocks``, ``cfg``).
        prompt: token ids (at least one per prompt) read before sampling: one prompt (a sequence of
            ints), a batch as a list of prompts of any lengths, or a ``[B, P]`` tensor whose rows
            are left-padded where ``attention_mask`` is 0.
        max_new_tokens: tokens to sample per row at most.
        temperature, top_k, top_p: see :func:`sample_next`.
        generator: the random generator of the sampler (seed it for reproducible text; the draws of
            a batch depend on all its rows).
        state: a state to continue from (from an earlier call or :func:`fastweights.files.state.load_state`),
            e.g. the previous turns of a conversation, with one row per prompt; ``None`` starts
            afresh. With learned positions, a row whose state and prompt exceed ``context`` tokens
            starts afresh from its last ``context`` prompt tokens (earlier turns are then forgotten).
        stop_tokens: ids that end a row: the row's output ends with the first one it samples.
        on_token: called as ``on_token(row, token_id)`` for each token as soon as it is sampled
            (row 0 for a single prompt), e.g. to print a stream.
        attention_mask: ``[B, P]`` 1 for prompt tokens, 0 for left padding (tensor prompts only).

    Returns:
        ``(new_tokens, state)``: the sampled ids (a list for a single prompt, a list of lists for a
        batch), and the state after reading each prompt and every token sampled for it (its stop
        token included), ready for the next prompt.
    """
    rows, single = as_prompts(prompt, attention_mask)
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    check_sampling(temperature, top_k, top_p)
    stop = {int(t) for t in stop_tokens}
    if any(not 0 <= t < model.cfg.vocab_size for t in stop):
        raise ValueError(f"stop_tokens must be ids in [0, vocab_size={model.cfg.vocab_size}), got {sorted(stop)}")
    if state is not None and batch_size(model, state) != len(rows):
        raise ValueError(f"state holds {batch_size(model, state)} rows, but {len(rows)} prompts were given")
    model.eval()
    window = model.cfg.context if model.cfg.pos_emb == "learned" else None
    fresh: List[int] = []
    if window is not None:  # keep what fits in the positions
        fresh = [r for r, p in enumerate(rows) if position(state, r) + len(p) > window]
        rows = [p[-window:] if r in fresh else p for r, p in enumerate(rows)]
    logits, state = prefill(model, rows, state, fresh=fresh)
    last = torch.stack([row_logits[-1] for row_logits in logits])  # [B, V]
    recent = [p[-window:] for p in rows] if window is not None else []  # what a sliding window re-reads
    new: List[List[int]] = [[] for _ in rows]
    active = list(range(len(rows)))  # the rows still decoding: row j of `state` and `last` is active[j]
    parts: List[Tuple[List[int], LMState]] = []  # (rows, state) of the rows that stopped
    for _ in range(max_new_tokens):
        tokens = sample_next(last, temperature, top_k, generator, top_p)  # [b]
        for r, t in zip(active, tokens.tolist()):
            new[r].append(t)
            if window is not None:
                recent[r] = (recent[r] + [t])[-window:]
            if on_token is not None:
                on_token(r, t)
        last, state = advance(model, tokens, state, [recent[r] for r in active] if window is not None else None)
        stopped = [j for j, r in enumerate(active) if new[r][-1] in stop]
        if stopped:
            going = [j for j in range(len(active)) if j not in stopped]
            parts.append(([active[j] for j in stopped], select_rows(model, state, stopped)))
            active = [active[j] for j in going]
            if not active:
                break
            state, last = select_rows(model, state, going), last[going]
    if active:
        parts.append((active, state))
    state = merge(model, parts, len(rows))
    return (new[0] if single else new), state


def as_prompts(prompt: Prompts, attention_mask: Optional[Tensor] = None) -> Tuple[List[List[int]], bool]:
    """``(rows, single)``: the token ids of each prompt of ``prompt`` (see :func:`generate`), and
    whether it was one prompt rather than a batch."""
    if isinstance(prompt, Tensor) and prompt.dim() == 2:
        return unpad(prompt, attention_mask), False
    if attention_mask is not None:
        raise ValueError("attention_mask needs a [B, P] tensor prompt")
    single = isinstance(prompt, Tensor) or not (len(prompt) and _is_row(prompt[0]))
    rows = [[int(t) for t in p] for p in ([prompt] if single else prompt)]
    if not rows or any(not p for p in rows):
        raise ValueError("prompt must hold at least one token (every prompt of a batch)")
    return rows, single


def _is_row(x: object) -> bool:
    """Whether ``x`` is one prompt (a list, tuple or 1-d array of ids) rather than one id."""
    return isinstance(x, (list, tuple)) or getattr(x, "ndim", None) == 1


def unpad(input_ids: Tensor, attention_mask: Optional[Tensor]) -> List[List[int]]:
    """The prompts of a left-padded batch: row b's ids where ``attention_mask [B, P]`` is 1.

    Raises ``ValueError`` unless each row's mask is zeros then ones (left padding) with at least one 1.
    """
    if attention_mask is None:
        return input_ids.tolist()
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask must have the shape of the prompt {list(input_ids.shape)}, "
            f"got {list(attention_mask.shape)}"
        )
    mask = attention_mask.long().cpu()  # [B, P]
    lengths = mask.sum(-1)  # [B]
    P = mask.shape[1]
    expected = (torch.arange(P)[None, :] >= P - lengths[:, None]).long()  # [B, P]: zeros then ones
    if not torch.equal(mask, expected) or int(lengths.min()) < 1:
        raise ValueError(
            f"attention_mask must be left padding (each row: zeros, then at least one 1), got rows {mask.tolist()}"
        )
    return [ids[P - n :] for ids, n in zip(input_ids.tolist(), lengths.tolist())]


def prefill(
    model: nn.Module, prompts: Sequence[Sequence[int]], state: Optional[LMState] = None, fresh: Collection[int] = ()
) -> Tuple[List[Tensor], LMState]:
    """Read each prompt as if it were alone; returns the logits of each (``[P_i, V]``) and the batch state.

    Prompts of one length run as one ``[b, P]`` forward (from their rows of ``state``, or from an
    empty state for the rows in ``fresh`` and when ``state`` is None); the states are then stacked
    in prompt order (:func:`stack_states`).
    """
    device = next(model.parameters()).device
    groups: Dict[Tuple[int, bool], List[int]] = {}  # (length, starts afresh) -> rows
    for r, p in enumerate(prompts):
        groups.setdefault((len(p), state is None or r in fresh), []).append(r)
    logits: List[Tensor] = [torch.empty(0)] * len(prompts)
    parts = []
    for (_, empty), rows in groups.items():
        start = None if empty else (state if len(groups) == 1 else select_rows(model, state, rows))
        out, _, after = model(torch.tensor([list(prompts[r]) for r in rows], device=device), state=start)  # [b, P, V]
        for j, r in enumerate(rows):
            logits[r] = out[j]
        parts.append((rows, after))
    return logits, merge(model, parts, len(prompts))


def advance(
    model: nn.Module, tokens: Tensor, state: LMState, recent: Optional[List[List[int]]] = None
) -> Tuple[Tensor, LMState]:
    """Read one token per row (``tokens: [b]``) -> ``(logits [b, V], state)``: a :meth:`step`, except
    for rows whose learned positions are used up, which re-read their ``recent`` tokens (the last
    ``context``, ending with this token) from an empty state: a sliding window."""
    window = model.cfg.context
    full = [] if recent is None else [j for j in range(len(tokens)) if position(state, j) >= window]
    if not full:
        return model.step(tokens, state)
    logits = torch.empty(len(tokens), model.cfg.vocab_size, device=tokens.device)  # [b, V]
    rest = [j for j in range(len(tokens)) if j not in full]
    slid, slid_state = prefill(model, [recent[j] for j in full])
    logits[full] = torch.stack([row_logits[-1] for row_logits in slid]).to(logits.dtype)
    parts = [(full, slid_state)]
    if rest:
        rest_logits, rest_state = model.step(tokens[rest], select_rows(model, state, rest))
        logits[rest] = rest_logits.to(logits.dtype)
        parts.append((rest, rest_state))
    return logits, merge(model, parts, len(tokens))


def position(state: Optional[LMState], row: int) -> int:
    """Tokens row ``row`` of ``state`` has read (0 without a state)."""
    if state is None:
        return 0
    pos = state["pos"]
    return int(pos[row]) if isinstance(pos, Tensor) else int(pos)


def batch_size(model: nn.Module, state: LMState) -> int:
    """Rows of an :data:`LMState` (the batch size of its first layer's keys or fast weights)."""
    return model.blocks[0].attn.state_batch_size(state["layers"][0])


def select_rows(model: nn.Module, state: LMState, rows: Sequence[int]) -> LMState:
    """The state of the batch rows ``rows`` (indices, in that order)."""
    index = torch.as_tensor(list(rows), dtype=torch.long)  # [b]
    layers = [blk.attn.select_state(layer, index) for blk, layer in zip(model.blocks, state["layers"])]
    pos = state["pos"]
    return {"pos": pos.index_select(0, index) if isinstance(pos, Tensor) else pos, "layers": layers}


def stack_states(model: nn.Module, states: Sequence[LMState]) -> LMState:
    """One state of the rows of ``states``, batch-concatenated in order (each layer's
    ``stack_states``: KV caches right-aligned; ``pos`` per row when the rows differ)."""
    layers = [blk.attn.stack_states([s["layers"][i] for s in states]) for i, blk in enumerate(model.blocks)]
    positions = [s["pos"] for s in states]
    if all(not isinstance(p, Tensor) for p in positions) and len(set(positions)) == 1:
        return {"pos": positions[0], "layers": layers}
    per_row = [
        p.cpu() if isinstance(p, Tensor) else torch.full((batch_size(model, s),), p, dtype=torch.long)
        for p, s in zip(positions, states)
    ]
    return {"pos": torch.cat(per_row), "layers": layers}


def merge(model: nn.Module, parts: Sequence[Tuple[List[int], LMState]], batch: int) -> LMState:
    """One state of ``batch`` rows from the states of disjoint row sets ``parts = [(rows, state), ...]``."""
    order = [r for rows, _ in parts for r in rows]
    state = parts[0][1] if len(parts) == 1 else stack_states(model, [s for _, s in parts])
    if order == list(range(batch)):
        return state
    where = {r: j for j, r in enumerate(order)}
    return select_rows(model, state, [where[r] for r in range(batch)])
