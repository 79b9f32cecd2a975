"""What a training step reads: random windows of the training split, or the next segments of
contiguous streams (carried state); and the validation windows."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import Tensor, nn

from ..data.text import Corpus
from ..evaluation.loss import is_fast_weight_model
from ..models import LMConfig, TrainConfig
from .streams import TokenStreams


def _require_tokens(split: str, n_tokens: int, context: int, extra: int) -> None:
    if n_tokens < context + extra:
        raise ValueError(
            f"the {split} has {n_tokens} tokens, fewer than context + {extra} = {context + extra}; "
            f"use more data or a smaller context"
        )


def check_splits(corpus: Corpus, context: int) -> None:
    """``ValueError`` unless the training split holds a batch window (``context + 2`` ids, see
    :func:`sample_batch`) and the validation split an evaluation window (``context + 1``, see :func:`eval_windows`)."""
    _require_tokens(f"training split of {corpus.source}", len(corpus.train), context, 2)
    _require_tokens(f"validation split of {corpus.source}", len(corpus.val), context, 1)


def sample_batch(data: np.ndarray, batch_size: int, context: int, generator: torch.Generator) -> Tensor:
    """``batch_size`` random windows of ``context + 1`` consecutive ids: ``[batch_size, context + 1]`` int64."""
    _require_tokens("training split", len(data), context, 2)
    starts = torch.randint(len(data) - context - 1, (batch_size,), generator=generator).tolist()
    return torch.from_numpy(np.stack([np.asarray(data[s : s + context + 1], dtype=np.int64) for s in starts]))


def eval_windows(n_tokens: int, context: int, max_windows: int) -> np.ndarray:
    """Start offsets of at most ``max_windows`` windows of ``context + 1`` ids, evenly spread over the
    split and never overlapping in their targets (all of them when the split is short): deterministic."""
    _require_tokens("validation split", n_tokens, context, 1)
    n_all = (n_tokens - 1) // context
    n = min(n_all, max_windows)
    return (np.arange(n) * (n_all // n)) * context


def training_streams(
    model: nn.Module, corpus: Corpus, model_cfg: LMConfig, train_cfg: TrainConfig
) -> Optional[TokenStreams]:
    """The training streams of a ``carry_state`` run (``None`` otherwise), checked before anything is written."""
    if not train_cfg.carry_state:
        return None
    if not is_fast_weight_model(model):
        raise ValueError(
            f"carry_state=true needs fast-weight attention, got attention={model_cfg.attention!r}: softmax "
            f"attention's state (its KV cache) grows with the text; train it on windows (carry_state=false)"
        )
    documents = None
    if train_cfg.reset_documents:
        documents = corpus.documents.get("train", np.zeros(0, dtype=np.int64))
        if not len(documents):
            raise ValueError(
                "reset_documents=true, but the training split marks no documents (lines ' = Title = ', "
                "as WikiText marks its articles); set reset_documents=false"
            )
    return TokenStreams(
        corpus.train,
        train_cfg.batch_size,
        model_cfg.context,
        documents,
        shift_seed=train_cfg.seed if train_cfg.shift_streams else None,
    )
