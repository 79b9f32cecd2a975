"""The softmax layer's preallocated KV cache: growth, in-place appends, states as values, batches of
rows of different lengths, autograd and inference mode."""

from __future__ import annotations

import torch

from fastweights.layers import SoftmaxAttention
from fastweights.layers.softmax import MIN_CAPACITY, select_cache, stack_caches


def layer() -> SoftmaxAttention:
    torch.manual_seed(0)
    return SoftmaxAttention(16, 2).eval()


def test_steps_append_in_place_and_grow_geometrically() -> None:
    attn, x = layer(), torch.randn(2, 150, 16)
    with torch.no_grad():
        full, _ = attn(x)
        _, state = attn(x[:, :1])
        capacities, outs = [], []
        for t in range(1, x.shape[1]):
            y, state = attn.step(x[:, t], state)
            outs.append(y)
            capacities.append(state["k"].shape[2])
    torch.testing.assert_close(torch.stack(outs, 1), full[:, 1:], rtol=1e-5, atol=1e-5)
    assert state["length"] == 150 and int(state["written"]) == 150
    assert sorted(set(capacities)) == [MIN_CAPACITY, 2 * MIN_CAPACITY, 4 * MIN_CAPACITY]  # 3 allocations for 149 steps


def test_states_stay_values_when_continued_twice() -> None:
    attn, x = layer(), torch.randn(1, 6, 16)
    with torch.no_grad():
        _, s0 = attn(x[:, :3])
        _, s0 = attn.step(x[:, 3], s0)  # now in preallocated buffers with free slots
        _, s1 = attn.step(x[:, 4], s0)  # writes slot 4 in place
        _, s2 = attn.step(x[:, 5], s0)  # slot 4 of s0's buffers is s1's now: copies
        y1, _ = attn.step(x[:, 5], s1)
        y2, _ = attn.step(x[:, 4], s2)
        ref1, _ = attn(x[:, [0, 1, 2, 3, 4, 5]])
        ref2, _ = attn(x[:, [0, 1, 2, 3, 5, 4]])
    assert s1["k"].data_ptr() == s0["k"].data_ptr() != s2["k"].data_ptr()
    torch.testing.assert_close(y1, ref1[:, -1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y2, ref2[:, -1], rtol=1e-5, atol=1e-5)


def test_stacked_caches_of_different_lengths_attend_row_by_row() -> None:
    attn = layer()
    xs = [torch.randn(1, n, 16) for n in (5, 2, 9)]
    nxt = torch.randn(3, 3, 16)
    with torch.no_grad():
        states = [attn(x)[1] for x in xs]
        batch = stack_caches(states)
        assert batch["length"] == 9 and batch["start"].tolist() == [4, 7, 0]
        y, after = attn(nxt, batch)  # three tokens per row after each row's own past
        for b, x in enumerate(xs):
            ref, _ = attn(torch.cat([x, nxt[b : b + 1]], 1))
            torch.testing.assert_close(y[b], ref[0, -3:], rtol=1e-5, atol=1e-5)
        picked = select_cache(after, torch.tensor([2, 0]))
        y2, _ = attn.step(nxt[[2, 0], 0], picked)
        for j, b in enumerate([2, 0]):
            ref, _ = attn(torch.cat([xs[b], nxt[b : b + 1], nxt[b : b + 1, :1]], 1))
            torch.testing.assert_close(y2[j], ref[0, -1], rtol=1e-5, atol=1e-5)


def test_gradients_through_a_cache_and_inference_mode_prefill() -> None:
    attn = SoftmaxAttention(16, 2)
    x = torch.randn(2, 7, 16, requires_grad=True)
    y1, state = attn(x[:, :4])
    y2, state = attn(x[:, 4:], state)
    (y1.sum() + y2.sum()).backward()  # no in-place write into tensors saved for backward
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with torch.inference_mode():
        _, cache = attn(x.detach()[:, :4])
    with torch.no_grad():
        y, _ = attn.step(x.detach()[:, 4], cache)  # the inference tensors are copied, not written
        ref, _ = attn(x.detach()[:, :5])
    torch.testing.assert_close(y, ref[:, -1], rtol=1e-5, atol=1e-5)
