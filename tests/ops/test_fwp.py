"""What is special about the general FWP rules (their forms against the naive one: the registry-driven tests)."""

from __future__ import annotations

import math

import pytest
import torch

from fastweights.ops import get_op
from fastweights.ops.fwp import forms

from .helpers import assert_close, make_inputs


def _x(T: int = 60, d: int = 8, **kw):
    return {n: t.detach() for n, t in make_inputs(1, T, 2, d, d, **kw).items()}


def test_identity_sigma_is_the_sum_rule() -> None:
    x = _x()
    o, s = forms.naive(lambda S: S)(*(x[n].transpose(1, 2) for n in ("q", "k", "v")), None, x["initial_state"], 16)
    o_ref, s_ref = get_op("sum", "naive")(
        x["q"], x["k"], x["v"], initial_state=x["initial_state"], output_final_state=True
    )
    assert_close(o.transpose(1, 2), o_ref, "o")
    assert_close(s, s_ref, "state")


def test_tanh_bounds_every_entry_and_normcap_the_norm() -> None:
    g = torch.Generator().manual_seed(0)
    q, k = torch.rand(1, 300, 2, 8, generator=g), torch.rand(1, 300, 2, 8, generator=g)
    v = 10 * torch.randn(1, 300, 2, 8, generator=g)  # large writes
    _, s = get_op("fwp-tanh")(q, k, v, output_final_state=True)
    assert s.abs().max() <= 1  # (float32 tanh rounds to 1 when saturated)
    _, s = get_op("fwp-normcap")(q, k, v, output_final_state=True)
    assert torch.linalg.matrix_norm(s).max() <= math.sqrt(8 * 8) * (1 + 1e-6)
    _, s_sum = get_op("sum")(q, k, v, output_final_state=True)
    assert torch.linalg.matrix_norm(s_sum).max() > 10 * math.sqrt(8 * 8)  # what the cap prevents


@pytest.mark.parametrize("rule", ["fwp-tanh", "fwp-normcap"])
def test_checkpointed_form_keeps_one_state_per_segment(rule: str) -> None:
    """Saved for the backward: the inputs and the state every chunk_size tokens, not one per token."""
    T, d, N = 256, 16, 32
    x = make_inputs(1, T, 1, d, d, dtype=torch.float32, with_state=False)
    counts = {}
    for impl in ("naive", "checkpoint"):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):  # noqa: B023 (used within this iteration)
            get_op(rule, impl)(x["q"], x["k"], x["v"], chunk_size=N)
        counts[impl] = sum(saved)
    assert counts["checkpoint"] <= 3 * T * d + (T // N) * d * d < T * d * d <= counts["naive"]


def test_no_grad_runs_without_checkpoints() -> None:
    x = _x()
    with torch.no_grad():
        o, _ = get_op("fwp-tanh", "checkpoint")(x["q"], x["k"], x["v"], chunk_size=16)
    assert_close(o, get_op("fwp-tanh", "naive")(x["q"], x["k"], x["v"])[0], "o")
