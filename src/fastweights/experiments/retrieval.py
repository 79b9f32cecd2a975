"""Synthetic associative retrieval (paper section 6.1): store key/value pairs, recall by key.

A sequence lists ``T`` pairs ``(key_t, value_t)`` drawn from ``S`` keys and ``S`` values (two
distinct vocabularies, each ``0..S-1``), then ``Q`` query keys; the target of a query is the value
*last* paired with that key in the sequence.

- setting 1: every key exactly once, in random order, ``T = S``; each value uniform in ``0..S-1``.
- setting 2: ``T = 2S`` pairs, keys drawn with replacement (so keys repeat and a later pair
  overwrites an earlier one), values uniform.
- setting 3 (forgetting): as setting 2, but only the last ``W = max(1, S // 4)`` pairs are ever
  queried: everything written before them is irrelevant, and a memory smaller than the S keys
  can still solve the task if it forgets the old pairs (a decay, as in the gated delta rule).

Queries are the keys at ``Q`` distinct random positions among the queryable ones (all ``T``, or
the last ``W`` in setting 3); ``Q = 1`` is the paper's task, ``Q > 1`` the multi-query form of the
MQAR recall benchmarks. Batches are drawn on the
CPU from a seeded :class:`torch.Generator`, so a seed gives the same data on every device, and then
moved to the requested device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

SETTINGS = (1, 2, 3)


@dataclass(frozen=True)
class RetrievalBatch:
    """One batch of retrieval sequences.

    Attributes:
        keys: ``[B, T]`` key ids of the stored pairs.
        values: ``[B, T]`` value ids of the stored pairs.
        queries: ``[B, Q]`` key ids asked for.
        targets: ``[B, Q]`` value last paired with each queried key.
    """

    keys: Tensor
    values: Tensor
    queries: Tensor
    targets: Tensor

    def to(self, device: Union[str, torch.device]) -> "RetrievalBatch":
        """The same batch on ``device``."""
        return RetrievalBatch(*(t.to(device) for t in (self.keys, self.values, self.queries, self.targets)))


def sequence_length(setting: int, n_keys: int) -> int:
    """Number of stored pairs ``T``: ``S`` in setting 1, ``2S`` in settings 2 and 3."""
    check_setting(setting)
    return n_keys if setting == 1 else 2 * n_keys


def queryable(setting: int, n_keys: int) -> int:
    """How many of the last positions queries are drawn from: all ``T``, or ``max(1, S // 4)`` in setting 3."""
    return max(1, n_keys // 4) if setting == 3 else sequence_length(setting, n_keys)


def check_setting(setting: int) -> None:
    """Raise ``ValueError`` unless ``setting`` is 1, 2 or 3."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")


class RetrievalTask:
    """A seeded stream of retrieval batches.

    Args:
        setting: 1 (each key once), 2 (keys repeat; length 2S) or 3 (as 2, only the last S // 4
            pairs queried).
        n_keys: ``S``, the number of keys and of values (>= 2).
        n_queries: ``Q``, keys queried per sequence (1 <= Q <= the queryable positions).
        seed: seed of the stream; two tasks with equal arguments yield equal batches.

    >>> task = RetrievalTask(setting=2, n_keys=20, n_queries=4, seed=0)
    >>> b = task.sample(32)
    >>> b.keys.shape, b.queries.shape
    (torch.Size([32, 40]), torch.Size([32, 4]))
    """

    def __init__(self, setting: int, n_keys: int, n_queries: int = 1, seed: int = 0) -> None:
        check_setting(setting)
        if not isinstance(n_keys, int) or isinstance(n_keys, bool) or n_keys < 2:
            raise ValueError(f"n_keys (S) must be an int >= 2, got {n_keys!r}")
        self.setting, self.n_keys = setting, n_keys
        self.length = sequence_length(setting, n_keys)
        self.window = queryable(setting, n_keys)
        if not isinstance(n_queries, int) or isinstance(n_queries, bool) or not 1 <= n_queries <= self.window:
            raise ValueError(
                f"n_queries must be an int in [1, {self.window}] (the queryable positions), got {n_queries!r}"
            )
        self.n_queries = n_queries
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int, device: Optional[Union[str, torch.device]] = None) -> RetrievalBatch:
        """Draw ``batch_size`` sequences (on the CPU, then moved to ``device``)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        B, S, T, g = batch_size, self.n_keys, self.length, self.generator
        if self.setting == 1:
            keys = torch.rand(B, S, generator=g).argsort(dim=1)  # [B, T]: a permutation of the keys
        else:
            keys = torch.randint(0, S, (B, T), generator=g)  # [B, T]: with replacement
        values = torch.randint(0, S, (B, T), generator=g)  # [B, T]
        W = self.window
        positions = T - W + torch.rand(B, W, generator=g).argsort(dim=1)[:, : self.n_queries]  # [B, Q] distinct
        queries = keys.gather(1, positions)  # [B, Q]
        last = torch.full((B, S), -1, dtype=torch.long).scatter_reduce(
            1, keys, torch.arange(T).expand(B, T), reduce="amax"
        )  # [B, S]: last position of each key (-1: absent)
        targets = values.gather(1, last.gather(1, queries))  # [B, Q]
        batch = RetrievalBatch(keys, values, queries, targets)
        return batch if device is None else batch.to(device)
