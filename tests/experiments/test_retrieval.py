"""The associative-retrieval generator: targets, repeats, determinism, devices, bad arguments."""

from __future__ import annotations

import pytest
import torch

from fastweights.experiments.retrieval import RetrievalTask, sequence_length


def last_paired_values(keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Reference: scan each sequence in order, remembering the latest value of every key."""
    out = torch.empty_like(queries)
    for b in range(keys.shape[0]):
        memory = {}
        for k, v in zip(keys[b].tolist(), values[b].tolist()):
            memory[k] = v
        out[b] = torch.tensor([memory[q] for q in queries[b].tolist()])
    return out


@pytest.mark.parametrize("setting", [1, 2])
@pytest.mark.parametrize("n_keys,n_queries", [(2, 1), (7, 3), (20, 1), (20, 20)])
def test_targets_are_the_last_paired_values(setting, n_keys, n_queries):
    task = RetrievalTask(setting, n_keys, n_queries, seed=n_keys)
    b = task.sample(16)
    T = sequence_length(setting, n_keys)
    assert b.keys.shape == b.values.shape == (16, T)
    assert b.queries.shape == b.targets.shape == (16, n_queries)
    assert b.keys.max() < n_keys and b.values.max() < n_keys and b.keys.min() >= 0
    assert torch.equal(b.targets, last_paired_values(b.keys, b.values, b.queries))
    assert all(set(q.tolist()) <= set(k.tolist()) for q, k in zip(b.queries, b.keys))


def test_setting1_lists_each_key_once_and_queries_distinct_keys():
    b = RetrievalTask(1, 12, n_queries=12, seed=0).sample(8)
    expected = torch.arange(12).expand(8, 12)
    assert torch.equal(b.keys.sort(dim=1).values, expected)
    assert torch.equal(b.queries.sort(dim=1).values, expected)


def test_setting2_repeats_keys_and_the_last_pairing_matters():
    b = RetrievalTask(2, 10, n_queries=20, seed=1).sample(64)
    assert all(len(set(row.tolist())) < 20 for row in b.keys)  # 2S draws from S keys repeat
    first = torch.empty_like(b.queries)  # the value *first* paired with each queried key
    for i in range(64):
        pos = [b.keys[i].tolist().index(q) for q in b.queries[i].tolist()]
        first[i] = b.values[i, pos]
    assert (first != b.targets).float().mean() > 0.3  # overwriting changes many answers


def test_same_seed_same_batches_other_seed_other_batches():
    a, b, c = (RetrievalTask(2, 16, 4, seed=s) for s in (3, 3, 4))
    for _ in range(3):
        x, y, z = a.sample(8), b.sample(8), c.sample(8)
        for name in ("keys", "values", "queries", "targets"):
            assert torch.equal(getattr(x, name), getattr(y, name))
        assert not torch.equal(x.keys, z.keys)
    assert not torch.equal(a.sample(8).keys, a.sample(8).keys)  # the stream moves on


def test_batches_on_the_requested_device(device):
    cpu = RetrievalTask(1, 9, 2, seed=5).sample(4)
    b = RetrievalTask(1, 9, 2, seed=5).sample(4, device)
    assert all(t.device.type == device and t.dtype == torch.long for t in (b.keys, b.values, b.queries, b.targets))
    assert torch.equal(b.targets.cpu(), cpu.targets)  # the same data on every device


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(setting=4, n_keys=8), "setting"),
        (dict(setting=1, n_keys=1), "n_keys"),
        (dict(setting=1, n_keys=8, n_queries=0), "n_queries"),
        (dict(setting=1, n_keys=8, n_queries=9), "n_queries"),
        (dict(setting=2, n_keys=8, n_queries=17), "n_queries"),
        (dict(setting=3, n_keys=8, n_queries=3), r"n_queries must be an int in \[1, 2\] \(the queryable"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RetrievalTask(**kwargs)


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        RetrievalTask(1, 8).sample(0)


def test_setting_3_asks_only_the_last_pairs() -> None:
    """Length 2S, keys repeat, queries only from the last S // 4 pairs, targets their last values."""
    task = RetrievalTask(setting=3, n_keys=16, n_queries=4, seed=0)
    b = task.sample(64)
    assert b.keys.shape == (64, 32) and b.queries.shape == (64, 4)
    for i in range(64):
        recent = b.keys[i, -4:].tolist()
        for q, t in zip(b.queries[i].tolist(), b.targets[i].tolist()):
            assert q in recent
            last = max(j for j in range(32) if b.keys[i, j] == q)
            assert t == b.values[i, last]
