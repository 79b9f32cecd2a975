"""Language-model evaluation with the paper's two protocols.

Both score the tokens ``ids[1:]`` of one token stream ``ids`` ``[N]`` by their negative
log-likelihood ``-log p(x_t | x_<t)`` (nats) and differ in the context a token is predicted from:

(a) **sliding window** (:func:`sliding_window_loss`): every token is predicted from the ``L``
    tokens before it (``L`` = the training context), each window starting from an empty state.
    The window advances by ``stride`` tokens and scores its last ``stride`` positions; the first
    window scores all of its positions (they have fewer than ``L`` tokens of context). ``stride =
    1`` is the paper's protocol (one forward pass of ``L`` tokens per scored token); a larger
    stride trades exactness for an ``L / stride``-fold speed-up (``stride = L`` scores disjoint
    blocks).
(b) **carried state** (:func:`carried_state_loss`, fast-weight models only): the stream is cut
    into consecutive segments of ``L`` tokens processed in order, each segment starting from the
    fast weights the previous one ended with, so each token sees the whole stream before it
    through a state of constant size. Positions restart at 0 in every segment, as in training.
    Memory is that of one segment whatever the length of the stream. A softmax model's state
    (its KV cache) would grow with the stream, so the protocol does not apply to it.

Reported per token: ``nats``, ``bits = nats / ln 2`` and perplexity ``exp(nats)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

IGNORE = -100


@dataclass
class EvalResult:
    """Mean negative log-likelihood of ``tokens`` scored tokens under one ``protocol``."""

    protocol: str
    context: int
    tokens: int
    nats: float

    @property
    def bits(self) -> float:
        """Bits per token: ``nats / ln 2``."""
        return self.nats / math.log(2)

    @property
    def perplexity(self) -> float:
        """``exp(nats)``."""
        return math.exp(self.nats)

    def to_dict(self) -> dict:
        return {**asdict(self), "bits": self.bits, "perplexity": self.perplexity}


def is_fast_weight_model(model: nn.Module) -> bool:
    """True when every attention layer of ``model`` has a fixed-size state (``fixed_size_state``)."""
    return all(m.fixed_size_state for m in model.modules() if hasattr(m, "fixed_size_state"))


def window_starts(n_tokens: int, context: int, stride: int) -> Tuple[Tensor, Tensor]:
    """Where the windows of protocol (a) start and how many positions each scores.

    Window ``i`` reads ``ids[a_i : a_i + L]`` and predicts ``ids[a_i + 1 : a_i + L + 1]``; it scores
    its last ``n_i`` predictions. Together the windows score every target ``ids[1:]`` exactly once.

    Returns:
        ``(starts, n_scored)``: two LongTensors ``[W]``; ``L`` is ``min(context, n_tokens - 1)``.
    """
    _check_positive(context=context, stride=stride)
    if stride > context:
        raise ValueError(f"stride must be at most the context ({context}), got {stride}")
    if n_tokens < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {n_tokens}")
    L = min(context, n_tokens - 1)
    last = n_tokens - 1 - L  # the start of the window that predicts the final token
    starts = torch.cat(
        [torch.zeros(1, dtype=torch.long), (torch.arange(1, -(-last // stride) + 1) * stride).clamp(max=last)]
    )  # [W]
    n_scored = torch.cat([torch.tensor([L]), starts.diff()])  # [W]
    return starts, n_scored


@torch.no_grad()
def sliding_window_loss(
    model: nn.Module,
    ids: Tensor,
    context: int,
    stride: int = 1,
    batch_size: int = 64,
    progress: bool = False,
) -> EvalResult:
    """Protocol (a): each window of ``context`` tokens from an empty state, scoring its last ``stride``.

    Args:
        model: ``model(idx [B, T]) -> (logits [B, T, V], loss, state)`` (logits may be
            log-probabilities).
        ids: the token stream ``[N]`` (a tensor, or a numpy array such as a corpus split's memmap).
        context: window length ``L`` (the training context).
        stride: tokens the window advances by, and positions scored per window (1 = the paper).
        batch_size: windows per forward pass.
        progress: show a tqdm bar.
    """
    ids = _check_ids(ids)
    starts, n_scored = window_starts(len(ids), context, stride)
    L = min(context, len(ids) - 1)
    offsets = torch.arange(L + 1)  # [L + 1]
    position = torch.arange(L)  # [L]
    total, count = 0.0, 0
    model.eval()
    with tqdm(
        total=len(ids) - 1, unit="tok", desc=f"sliding window L={L} stride={stride}", disable=not progress
    ) as bar:
        for i in range(0, len(starts), batch_size):
            a, n = starts[i : i + batch_size], n_scored[i : i + batch_size]  # [b], [b]
            window = ids[a[:, None] + offsets]  # [b, L + 1]
            x, y = window[:, :-1], window[:, 1:].clone()  # [b, L] each
            y[position[None, :] < (L - n)[:, None]] = IGNORE  # keep the last n_i positions
            logits = model(x.to(_device(model)))[0]  # [b, L, V]
            total += _nll_sum(logits, y)
            count += int(n.sum())
            bar.update(int(n.sum()))
    return EvalResult("sliding-window", L, count, total / count)


@torch.no_grad()
def carried_state_loss(
    model: nn.Module, ids: Tensor, segment: int, progress: bool = False, documents: Optional[Sequence[int]] = None
) -> EvalResult:
    """Protocol (b): consecutive segments of ``segment`` tokens, the fast weights carried across.

    Args:
        model: a fast-weight language model, ``model(idx [1, T], state=state) -> (logits, loss,
            state)`` with ``state = {"pos": int, "layers": [...]}``.
        ids: the token stream ``[N]`` (a tensor, or a numpy array such as a corpus split's memmap).
        segment: segment length (the training context); positions restart at 0 in each segment.
        progress: show a tqdm bar.
        documents: offsets into ``ids`` of the tokens that start a document (e.g. a split's
            :attr:`~fastweights.data.text.Corpus.documents`): the state is emptied there, as in
            training with ``reset_documents``. ``None``: the stream is read through.

    Raises:
        ValueError: ``model`` has softmax attention layers (its state would grow with the stream).
    """
    ids = _check_ids(ids)
    _check_positive(segment=segment)
    if len(ids) < 2:
        raise ValueError(f"need at least 2 tokens to score one, got {len(ids)}")
    if not is_fast_weight_model(model):
        raise ValueError(
            "carried_state_loss needs a fast-weight model; this one has softmax attention "
            "(its KV cache would grow with the stream)"
        )
    total, state = 0.0, None
    model.eval()
    device = _device(model)
    starts = torch.zeros(len(ids), dtype=torch.bool)  # [N]: the tokens where the state is emptied
    if documents is not None:
        offsets = np.asarray(documents, dtype=np.int64)  # [n_docs]
        starts[torch.from_numpy(offsets[offsets < len(ids)])] = True
    with tqdm(total=len(ids) - 1, unit="tok", desc=f"carried state segment={segment}", disable=not progress) as bar:
        for a in range(0, len(ids) - 1, segment):
            chunk = ids[a : a + segment + 1]  # [T + 1], T <= segment
            if state is not None:
                state = {**state, "pos": 0}  # new segment: positions restart, fast weights carry on
            resets = starts[a : a + len(chunk) - 1]  # [T]
            logits, _, state = model(
                chunk[None, :-1].to(device), state=state, resets=resets[None].to(device) if bool(resets.any()) else None
            )  # [1, T, V]
            total += _nll_sum(logits, chunk[None, 1:])
            bar.update(len(chunk) - 1)
    return EvalResult("carried-state", segment, len(ids) - 1, total / (len(ids) - 1))


@dataclass
class PositionProfile:
    """Loss and fast-weight size against the position in a stream, under the carried-state protocol.

    ``nats[i]`` is the mean loss of the tokens at positions ``[start[i], start[i] + segment)`` of every
    stream (segment i), ``state_norm[i]`` the mean Frobenius norm ``||S||_F`` of the fast weights
    (per layer and head) after that segment; :meth:`buckets` groups the segments by position.
    """

    segment: int
    streams: int
    start: List[int]
    nats: List[float]
    state_norm: List[float]

    def buckets(self, edges: Sequence[int] = (64, 256, 1024, 4096)) -> List[Tuple[str, float, float]]:
        """``(label, mean nats, mean ||S||_F)`` per position range ``[0, e_1), [e_1, e_2), ..., [e_n, end)``
        (a segment counts where it starts); ranges no segment starts in are left out."""
        bounds = [0, *edges, math.inf]
        out = []
        for lo, hi in zip(bounds, bounds[1:]):
            idx = [i for i, s in enumerate(self.start) if lo <= s < hi]
            if idx:
                label = f"{_short(lo)}-{_short(hi)}" if hi != math.inf else f"{_short(lo)}+"
                out.append(
                    (label, sum(self.nats[i] for i in idx) / len(idx), sum(self.state_norm[i] for i in idx) / len(idx))
                )
        return out


@torch.no_grad()
def position_profile(
    model: nn.Module, ids: Tensor, segment: int, stream_length: int = 8192, progress: bool = False
) -> PositionProfile:
    """:class:`PositionProfile` of a fast-weight model: ``ids`` cut into ``len(ids) // stream_length``
    streams (at least one, of the whole split when it is shorter), read side by side in segments of
    ``segment`` tokens with the state carried (as :func:`carried_state_loss` reads one stream), the
    loss averaged over the streams position by position."""
    ids = _check_ids(ids)
    _check_positive(segment=segment, stream_length=stream_length)
    if not is_fast_weight_model(model):
        raise ValueError("a position profile needs a fast-weight model; this one has softmax attention")
    n = max(1, (len(ids) - 1) // stream_length)
    L = min(stream_length, len(ids) - 1)
    if L < 1:
        raise ValueError(f"need at least 2 tokens, got {len(ids)}")
    streams = torch.stack([ids[i * L : i * L + L + 1] for i in range(n)])  # [n, L + 1]
    model.eval()
    device = _device(model)
    state, start, nats, norms = None, [], [], []
    for a in tqdm(range(0, L, segment), unit="segment", desc="position profile", disable=not progress):
        chunk = streams[:, a : a + segment + 1].to(device)  # [n, T + 1]
        if state is not None:
            state = {**state, "pos": 0}
        logits, _, state = model(chunk[:, :-1], state=state)  # [n, T, V]
        start.append(a)
        nats.append(_nll_sum(logits, chunk[:, 1:]) / chunk[:, 1:].numel())
        norms.append(
            torch.stack([layer["S"].float().flatten(-2).norm(dim=-1).mean() for layer in state["layers"]]).mean().item()
        )
    return PositionProfile(segment, n, start, nats, norms)


def _short(n: float) -> str:
    return f"{n // 1024:g}k" if n >= 1024 and n % 1024 == 0 else f"{n:g}"


PROTOCOLS = ("sliding-window", "carried-state")


def evaluate(
    model: nn.Module,
    ids: Tensor,
    context: int,
    *,
    protocols: Sequence[str] = PROTOCOLS,
    stride: int = 1,
    segment: Optional[int] = None,
    batch_size: int = 64,
    max_tokens: Optional[int] = None,
    progress: bool = False,
    documents: Optional[Sequence[int]] = None,
) -> List[EvalResult]:
    """Run the requested protocols on the first ``max_tokens`` scored tokens of ``ids``.

    ``'carried-state'`` is skipped for models with softmax attention (see
    :func:`is_fast_weight_model`). ``segment`` defaults to ``context``; ``max_tokens`` ``None``
    scores the whole stream (``ids[1:]``); ``documents`` (offsets of document starts) empties the
    carried state at each (see :func:`carried_state_loss`).
    """
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocols {unknown}; expected some of {list(PROTOCOLS)}")
    ids = _check_ids(ids)
    if max_tokens is not None:
        _check_positive(max_tokens=max_tokens)
        ids = ids[: max_tokens + 1]
    results = []
    if "sliding-window" in protocols:
        results.append(sliding_window_loss(model, ids, context, stride, batch_size, progress))
    if "carried-state" in protocols and is_fast_weight_model(model):
        results.append(carried_state_loss(model, ids, segment or context, progress, documents))
    return results


def _nll_sum(logits: Tensor, targets: Tensor) -> float:
    """Summed cross-entropy (nats) of ``logits [B, T, V]`` against ``targets [B, T]`` (-100 ignored)."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten().to(logits.device), ignore_index=IGNORE, reduction="sum"
    ).item()


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _check_ids(ids) -> Tensor:
    if isinstance(ids, np.ndarray):  # e.g. a read-only memmap of a corpus split
        ids = torch.from_numpy(ids.astype(np.int64))
    elif not isinstance(ids, Tensor):
        ids = torch.as_tensor(ids)
    if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex:
        raise ValueError(f"ids must be a 1-D integer tensor, got dtype {ids.dtype} and shape {list(ids.shape)}")
    return ids.long()


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
