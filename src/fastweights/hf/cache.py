"""A fastweights language-model state as a ``transformers`` ``Cache``.

``transformers``' own caches store keys and values per layer; a fast weight programmer's state is
one matrix per layer and head whatever the length read (``{"S": [B, H, d_k, d_v]}``, plus the previous
output ``"o"`` for recurrent layers), and the softmax baseline carries its own preallocated KV cache
(:mod:`fastweights.layers.softmax`). :class:`FastWeightCache` holds the model's
:data:`~fastweights.models.lm.LMState` and the number of input columns it has read (left padding
included, as ``transformers`` counts them), and reorders rows for beam search.
"""

from __future__ import annotations

from typing import List, Optional

import torch
from transformers.cache_utils import Cache

from ..models.generate import batch_size, select_rows
from ..models.lm import LanguageModel, LMState


class FastWeightCache(Cache):
    """The :data:`LMState` of ``model`` between ``generate`` steps (``None`` before the first forward).

    Attributes:
        state: the model's state after the columns read so far (each row's own tokens only).
        columns: input columns read so far (prompt padding included): ``get_seq_length()``.
    """

    def __init__(self, model: LanguageModel) -> None:
        super().__init__(layers=[])
        self.model = model
        self.state: Optional[LMState] = None
        self.columns = 0

    def __repr__(self) -> str:
        rows = batch_size(self.model, self.state) if self.state is not None else 0
        return f"FastWeightCache(rows={rows}, columns={self.columns})"

    def advance(self, state: LMState, columns: int) -> None:
        """Record the state after ``columns`` more input columns."""
        self.state, self.columns = state, self.columns + columns

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.columns

    def get_max_length(self, layer_idx: Optional[int] = None) -> int:
        return -1  # no maximum: fast weights have a constant size, the softmax cache grows

    def reset(self) -> None:
        self.state, self.columns = None, 0

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select(beam_idx.tolist())

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select(indices.tolist())

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.state is not None:
            self._select([r for r in range(batch_size(self.model, self.state)) for _ in range(repeats)])

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError("a fast-weight state cannot be cropped: the tokens it read are summed into its matrices")

    @property
    def is_compileable(self) -> bool:
        return False

    @property
    def is_croppable(self) -> bool:
        return False

    def _select(self, rows: List[int]) -> None:
        if self.state is not None:
            self.state = select_rows(self.model, self.state, rows)
