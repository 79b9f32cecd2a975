"""The hand-derived backward of the chunk forms: gradcheck, the batched inverse, and what is saved
(gradchecks of every form with all its inputs, the gated delta rule's log decays included, are in
test_state_and_varlen.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from fastweights.ops.common.chunked import from_chunks, to_chunks, unit_lower_inverse
from fastweights.ops.delta_rule.chunk import chunk_core as delta_chunk_core
from fastweights.ops.gated_delta_rule.chunk import chunk_core as gated_chunk_core
from fastweights.ops.sum_rule.chunk import chunk_core as sum_chunk_core


def _inputs(T: int, dk: int, dv: int, seed: int = 0, B: int = 1, H: int = 2):
    """Leaf float64 tensors in the core layout ``[B, H, T, D]`` (keys L2-normalised, rates in (0, 1))."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, T, dk, generator=g, dtype=torch.float64)
    k = F.normalize(torch.randn(B, H, T, dk, generator=g, dtype=torch.float64), dim=-1)
    v = torch.randn(B, H, T, dv, generator=g, dtype=torch.float64)
    beta = torch.rand(B, H, T, generator=g, dtype=torch.float64) * 0.9 + 0.05
    s0 = torch.randn(B, H, dk, dv, generator=g, dtype=torch.float64)
    return [t.requires_grad_() for t in (q, k, v, beta, s0)]


@pytest.mark.parametrize("T, chunk_size", [(8, 4), (7, 4), (5, 3), (2, 4)])
def test_delta_rule_backward_gradcheck(T: int, chunk_size: int) -> None:
    """o and S_T against q, k, v, beta and S0; several chunks, a padded last chunk, a non-power-of-two C."""
    q, k, v, beta, s0 = _inputs(T, 3, 2)
    assert gradcheck(lambda *a: delta_chunk_core(*a, chunk_size), (q, k, v, beta, s0))


def test_delta_rule_backward_gradcheck_without_rates() -> None:
    q, k, v, _, s0 = _inputs(6, 3, 4)
    assert gradcheck(lambda q, k, v, s: delta_chunk_core(q, k, v, None, s, 4), (q, k, v, s0))


def _log_decays(like: torch.Tensor) -> torch.Tensor:
    """Log decays ``logsigmoid(randn)`` shaped like the rates ``[B, H, T]``."""
    return F.logsigmoid(torch.randn(like.shape, generator=torch.Generator().manual_seed(1), dtype=like.dtype))


def _gated_chunk_core(q, k, v, beta, s0, chunk_size: int):
    """The gated delta chunk form with log decays that require grad."""
    return gated_chunk_core(q, k, v, beta, s0, chunk_size, g=_log_decays(beta).requires_grad_())


def test_gated_delta_rule_backward_gradcheck_with_a_constant_decay() -> None:
    """Log decays that need no gradient (the backward skips dg) still decay every other gradient."""
    q, k, v, beta, s0 = _inputs(7, 3, 2)
    g = _log_decays(beta)
    assert gradcheck(lambda q, k, v, b, s: gated_chunk_core(q, k, v, b, s, 4, g=g), (q, k, v, beta, s0))


@pytest.mark.parametrize("T, chunk_size", [(8, 4), (7, 4), (5, 3), (2, 4)])
def test_sum_rule_backward_gradcheck(T: int, chunk_size: int) -> None:
    q, k, v, _, s0 = _inputs(T, 3, 2)
    assert gradcheck(lambda q, k, v, s: sum_chunk_core(q, k, v, None, s, chunk_size), (q, k, v, s0))


@pytest.mark.parametrize("core", [sum_chunk_core, delta_chunk_core, _gated_chunk_core], ids=["sum", "delta", "gated"])
def test_backward_with_only_one_output_used(core) -> None:
    """A loss on o alone or on S_T alone (the other output's gradient is None) backpropagates."""
    q, k, v, beta, s0 = _inputs(9, 3, 2)
    o, s = core(q, k, v, beta, s0, 4)
    (gq,) = torch.autograd.grad(o.sum(), q)
    (gk,) = torch.autograd.grad(core(q, k, v, beta, s0, 4)[1].sum(), k)
    assert gq.shape == q.shape and gk.shape == k.shape
    assert gq.abs().sum() > 0 and gk.abs().sum() > 0


@pytest.mark.parametrize("C", [1, 2, 5, 16, 48, 64])
def test_unit_lower_inverse_matches_linalg_inv(C: int) -> None:
    m = torch.eye(C, dtype=torch.float64) + 0.3 * torch.randn(3, 2, C, C, dtype=torch.float64).tril(-1)
    torch.testing.assert_close(unit_lower_inverse(m.clone()), torch.linalg.inv(m), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("T, C", [(7, 4), (8, 4), (3, 5)])
def test_chunk_layout_round_trip(T: int, C: int) -> None:
    x = torch.randn(2, T, 3, 5).transpose(1, 2)  # [B, H, T, D] view of the public layout
    xc = to_chunks(x, C)  # [N, B*H, C, D]
    assert xc.shape == (-(-T // C), 6, C, 5)
    assert torch.equal(xc[-1, :, T - (xc.shape[0] - 1) * C :], torch.zeros_like(xc[-1, :, T - (xc.shape[0] - 1) * C :]))
    torch.testing.assert_close(from_chunks(xc, 2, 3, T), x, rtol=0, atol=0)


@pytest.mark.parametrize("core", [sum_chunk_core, delta_chunk_core, _gated_chunk_core], ids=["sum", "delta", "gated"])
def test_saved_for_backward_is_linear_in_T(core) -> None:
    """Only O(T (C + d)) values and the chunk-boundary states are kept, never a state per token."""
    T, d, C = 256, 16, 16
    q, k, v, beta, s0 = _inputs(T, d, d)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        core(q, k, v, beta, s0, C)
    n_chunks = T // C
    per_token_states = 2 * T * d * d  # what a naive backward keeps (B * H = 2)
    bound = 2 * (8 * T * max(d, C) + (n_chunks + 1) * d * d)
    assert saved and sum(saved) <= bound < per_token_states
