"""Sampling from a language model: one parallel prefill, then one token at a time from the state.

The prompt ``x_1 .. x_P`` is consumed by one parallel forward (the chunkwise form for fast weights,
SDPA for softmax) which returns the logits of ``x_{P+1}`` and the state after ``x_P``. Each new
token then costs one :meth:`LanguageModel.step`: for a fast weight programmer an update of a
fixed-size matrix per layer (``O(1)`` time and memory per token, whatever was read before); for
the softmax baseline one more row in the KV cache (``O(t)`` per token).

A model with learned absolute positions cannot see past its ``context``: once the state holds
``context`` tokens, each further token is predicted from a fresh prefill of the last ``context``
tokens (a sliding window, as nanoGPT crops its input). Models without positions (the fast-weight
presets) decode for ever from the carried state.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw one token per row of ``logits [B, V]`` (logits or log-probabilities) -> ``[B]``.

    ``p ~ softmax(logits / temperature)`` restricted to the ``top_k`` most likely tokens;
    ``temperature = 0`` picks the argmax (greedy decoding).
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature  # [B, V]
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # [B, 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)  # [B, V]
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt: Sequence[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    state: Optional[dict] = None,
) -> Tuple[List[int], dict]:
    """Continue ``prompt`` by ``max_new_tokens`` sampled tokens.

    Args:
        model: a :class:`fastweights.models.LanguageModel` (``forward``, ``step``, ``cfg``).
        prompt: token ids (at least one) read before sampling.
        max_new_tokens: tokens to sample.
        temperature, top_k: see :func:`sample_next`.
        generator: the random generator of the sampler (seed it for reproducible text).
        state: a state to continue from (from an earlier call or :func:`fastweights.state.load_state`),
            e.g. the previous turns of a conversation; ``None`` starts afresh. With learned
            positions, a state whose tokens plus the prompt exceed ``context`` is dropped and only
            the last ``context`` prompt tokens are read (earlier turns are then forgotten).

    Returns:
        ``(new_tokens, state)``: the sampled ids, and the state after reading the prompt and every
        sampled token, ready for the next prompt.
    """
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("prompt must hold at least one token")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    model.eval()
    device = next(model.parameters()).device
    window = model.cfg.context if model.cfg.pos_emb == "learned" else None
    pos = state["pos"] if state is not None else 0
    if window is not None and pos + len(prompt) > window:  # keep what fits in the positions
        state, prompt = None, prompt[-window:]
    logits, _, state = model(torch.tensor([prompt], device=device), state=state)  # prefill: [1, P, V]
    logits = logits[:, -1]  # [1, V]
    recent = prompt[-window:] if window is not None else []
    new: List[int] = []
    for _ in range(max_new_tokens):
        token = sample_next(logits, temperature, top_k, generator)  # [1]
        new.append(int(token))
        if window is not None:
            recent = (recent + new[-1:])[-window:]
        if window is not None and state["pos"] >= window:  # positions used up: slide the window
            logits, _, state = model(torch.tensor([recent], device=device))
            logits = logits[:, -1]
        else:
            logits, state = model.step(token.to(device), state)  # [1, V]
    return new, state
