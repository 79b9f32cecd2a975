"""Contiguous token streams for training with carried fast weights (truncated BPTT).

Windowed training (:func:`fastweights.train.sample_batch`) reads independent random windows of
``L`` tokens, each from an empty state, so a model never learns to use a state carried over more
than ``L`` tokens. Streamed training reads the text in order instead, as Transformer-XL and the
classic PyTorch word-language-model example do: the training split ``x`` of ``N`` tokens is cut
into ``n`` contiguous streams of ``m = (N - 1) // n`` tokens each, stream ``i`` starting at
``i m``; step ``s`` of a pass feeds tokens ``[i m + s L, i m + (s + 1) L]`` of every stream
(targets shifted by one), and the model starts each step from the state the previous step ended
with, detached from its graph (gradients stop at the segment boundary). A pass has ``m // L``
steps; at the start of each pass the states are reset to empty, and the tail ``m mod L`` of each
stream is skipped.

With ``shift_seed``, each pass starts every stream ``o_p`` tokens later, ``o_p`` drawn in
``[0, L)`` from the seed and the pass number ``p`` (a pass then has ``(m - L + 1) // L`` steps), so
the segment boundaries differ from pass to pass when the data is read several times over (as
AWD-LSTM varies its BPTT length); the first pass starts at 0.

With ``documents`` (the offsets of the tokens that start a document), every segment also says
which of its tokens start one, and training empties that stream's state there (the model's
``resets``), so a document never reads its predecessor through the state.

::

    stream 0: |seg 0|seg 1|seg 2| ... |       the state flows left to right,
    stream 1: |seg 0|seg 1|seg 2| ... |       the gradient stops at each |
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor


class TokenStreams:
    """The ``n_streams`` contiguous streams of ``data`` read ``context`` tokens per step.

    Args:
        data: the token ids ``[N]`` (e.g. a read-only memmap of the training split).
        n_streams: streams, one per row of every batch (the global batch size).
        context: tokens per stream and step (the training context ``L``).
        documents: increasing offsets into ``data`` of the tokens that start a document, or ``None``.
        shift_seed: shift each later pass by a random offset drawn from this seed (``None``: never).

    >>> s = TokenStreams(np.arange(21), n_streams=2, context=3, documents=np.array([4, 12]))
    >>> batch, new_pass, starts = s.next()
    >>> batch.tolist(), new_pass, starts.tolist()
    ([[0, 1, 2, 3], [10, 11, 12, 13]], True, [[False, False, False], [False, False, True]])
    >>> batch, new_pass, starts = s.next()
    >>> batch.tolist(), starts.tolist()
    ([[3, 4, 5, 6], [13, 14, 15, 16]], [[False, True, False], [False, False, False]])
    """

    def __init__(
        self,
        data: np.ndarray,
        n_streams: int,
        context: int,
        documents: Optional[np.ndarray] = None,
        shift_seed: Optional[int] = None,
    ) -> None:
        if n_streams < 1 or context < 1:
            raise ValueError(f"n_streams and context must be >= 1, got {n_streams} and {context}")
        self.data, self.n_streams, self.context, self.shift_seed = data, n_streams, context, shift_seed
        self.stream_length = (len(data) - 1) // n_streams  # m: inputs per stream (targets one further)
        room = context - 1 if shift_seed is not None else 0  # the largest shift
        self.steps_per_pass = (self.stream_length - room) // context
        if self.steps_per_pass < 1:
            raise ValueError(
                f"the training split has {len(data)} tokens: too few for {n_streams} streams of at least "
                f"context = {context} tokens (needs {n_streams * (context + room) + 1}); lower batch_size or context"
            )
        self.starts = np.arange(n_streams) * self.stream_length  # [n]
        self.documents = documents
        self.position = 0  #: steps already taken in the current pass
        self.passes = 0  #: passes completed

    def next(self) -> Tuple[Tensor, bool, Optional[Tensor]]:
        """The next segment of every stream, ``[n_streams, context + 1]`` int64 (inputs and the
        targets shifted by one); whether it starts a pass (the carried states must be reset); and,
        with ``documents``, which inputs start a document, ``[n_streams, context]`` bool (else ``None``)."""
        reset = self.position == 0
        offsets = self.starts + self.shift() + self.position * self.context  # [n]
        batch = np.stack([np.asarray(self.data[o : o + self.context + 1], dtype=np.int64) for o in offsets])
        starts = None
        if self.documents is not None:
            positions = offsets[:, None] + np.arange(self.context)  # [n, L]: the inputs' offsets in data
            starts = torch.from_numpy(np.isin(positions, self.documents))  # [n, L]
        self.position = (self.position + 1) % self.steps_per_pass
        if self.position == 0:
            self.passes += 1
        return torch.from_numpy(batch), reset, starts

    def shift(self) -> int:
        """The current pass's offset ``o_p`` of every stream: 0 in the first pass or without a seed."""
        if self.shift_seed is None or self.passes == 0:
            return 0
        return int(np.random.default_rng([self.shift_seed, self.passes]).integers(self.context))

    def state_dict(self) -> Dict[str, int]:
        """What a checkpoint keeps to resume the streams exactly."""
        return {
            "position": self.position,
            "passes": self.passes,
            "n_streams": self.n_streams,
            "context": self.context,
            "stream_length": self.stream_length,
        }

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Continue from :meth:`state_dict`; the streams must be cut the same way."""
        mine = self.state_dict()
        for key in ("n_streams", "context", "stream_length"):
            if state[key] != mine[key]:
                raise ValueError(
                    f"the checkpoint's streams have {key} = {state[key]}, these have {mine[key]} "
                    f"(a different training split, batch size or context)"
                )
        self.position = int(state["position"])
        self.passes = int(state.get("passes", 0))  # absent from checkpoints written before shifts
