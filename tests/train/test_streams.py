"""Token streams for truncated BPTT: contiguous segments, pass resets, exact resume, detaching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastweights.files.state import map_tensors
from fastweights.train.streams import TokenStreams


def test_each_stream_continues_where_its_last_segment_ended() -> None:
    data = np.arange(103)
    s = TokenStreams(data, n_streams=4, context=5)
    assert (s.stream_length, s.steps_per_pass) == (25, 5)
    segments, resets, starts = zip(*(s.next() for _ in range(5)))
    assert resets == (True, False, False, False, False) and starts == (None,) * 5
    for i in range(4):
        row = torch.cat([seg[i, :-1] for seg in segments])  # the inputs of stream i, in order
        assert row.tolist() == list(range(25 * i, 25 * i + 25))
        assert all(seg[i, -1] == seg[i, -2] + 1 for seg in segments)  # targets shifted by one
    batch, reset, _ = s.next()  # a new pass starts over, with empty states
    assert reset and torch.equal(batch, segments[0])


def test_resume_from_state_dict_gives_the_same_segments() -> None:
    data = np.random.default_rng(0).integers(0, 50, 500)
    a, b = TokenStreams(data, 3, 7), TokenStreams(data, 3, 7)
    for _ in range(9):
        a.next()
    b.load_state_dict(a.state_dict())
    for _ in range(30):  # across a pass boundary
        (x, rx, _), (y, ry, _) = a.next(), b.next()
        assert torch.equal(x, y) and rx == ry
    with pytest.raises(ValueError, match="n_streams = 3, these have 4"):
        TokenStreams(data, 4, 7).load_state_dict(a.state_dict())


def test_document_starts_mark_the_inputs_at_the_given_offsets() -> None:
    data = np.arange(103)
    documents = np.array([0, 7, 30, 31, 49, 50, 99])
    s = TokenStreams(data, n_streams=4, context=5, documents=documents)
    for _ in range(2 * s.steps_per_pass):  # two passes
        batch, _, starts = s.next()
        assert starts.shape == (4, 5) and starts.dtype == torch.bool
        assert torch.equal(starts, torch.from_numpy(np.isin(batch[:, :-1].numpy(), documents)))  # data[i] == i
    assert s.next()[2][0, 0]  # offset 0 starts a document


def test_shifted_passes_start_later_and_stay_contiguous() -> None:
    """With a shift seed, pass p > 0 starts every stream at i m + o_p, o_p in [0, L) (not all equal
    over a few passes), reads its segments contiguously and keeps the same number of steps; the
    first pass and an unseeded stream start at 0; a resume mid-way repeats the shifts."""
    data = np.arange(1000)  # data[i] == i
    s = TokenStreams(data, n_streams=3, context=8, shift_seed=5)
    m, steps = s.stream_length, s.steps_per_pass
    assert (m, steps) == (333, (333 - 7) // 8)
    shifts = []
    for p in range(6):
        segments = [s.next() for _ in range(steps)]
        assert [new_pass for _, new_pass, _ in segments] == [True] + [False] * (steps - 1)
        shift = int(segments[0][0][0, 0])
        assert 0 <= shift < 8 and (p > 0 or shift == 0)
        for i in range(3):
            row = torch.cat([seg[i, :-1] for seg, _, _ in segments])
            assert row.tolist() == list(range(i * m + shift, i * m + shift + steps * 8))
            assert int(segments[-1][0][i, -1]) < (i + 1) * m + 1  # never past its own stream
        shifts.append(shift)
    assert len(set(shifts[1:])) > 1
    a = TokenStreams(data, 3, 8, shift_seed=5)
    for _ in range(2 * steps + 3):
        a.next()
    b = TokenStreams(data, 3, 8, shift_seed=5)
    b.load_state_dict(a.state_dict())
    for _ in range(3 * steps):
        assert torch.equal(a.next()[0], b.next()[0])
    plain = TokenStreams(data, 3, 8)
    assert plain.steps_per_pass == 333 // 8
    for _ in range(plain.steps_per_pass):
        plain.next()
    assert plain.next()[0][0, 0] == 0


def test_too_short_a_split_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="too few for 8 streams .*needs 513"):
        TokenStreams(np.arange(100), n_streams=8, context=64)


def test_map_tensors_detaches_every_graph() -> None:
    w = torch.ones(2, requires_grad=True)
    state = {"pos": 3, "layers": [{"S": w * 2}, {"S": w * 3, "o": w + 1}]}
    out = map_tensors(torch.Tensor.detach, state)
    assert out["pos"] == 3 and not any(t.requires_grad for layer in out["layers"] for t in layer.values())
    assert torch.equal(out["layers"][1]["S"], torch.full((2,), 3.0))
