"""What is special about the gated delta rule (its forms against the naive one: the registry-driven tests)."""

from __future__ import annotations

import pytest
import torch

from fastweights.layers import FastWeightAttention
from fastweights.ops import get_op, list_ops

from .helpers import assert_close, assert_rel_close, make_inputs, run_with_grads


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_no_decay_is_the_delta_rule(impl: str) -> None:
    x = {n: t.detach() for n, t in make_inputs(2, 70, 2, 8, 6).items()}
    args = (x["q"], x["k"], x["v"], x["beta"])
    kw = dict(initial_state=x["initial_state"], output_final_state=True, chunk_size=16)
    o, s = get_op("gated_delta", impl)(*args, g=torch.zeros_like(x["beta"]), **kw)
    o_ref, s_ref = get_op("delta", "naive")(*args, **kw)
    assert_close(o, o_ref, "o")
    assert_close(s, s_ref, "state")


def test_definition_by_hand() -> None:
    """S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T, written out here."""
    x = {n: t.detach() for n, t in make_inputs(1, 30, 1, 5, 4, rule="gated_delta").items()}
    q, k, v, beta, g, S = (
        x["q"][0, :, 0],
        x["k"][0, :, 0],
        x["v"][0, :, 0],
        x["beta"][0, :, 0],
        x["g"][0, :, 0],
        x["initial_state"][0, 0],
    )
    outs = []
    for t in range(30):
        S = g[t].exp() * (torch.eye(5, dtype=S.dtype) - beta[t] * torch.outer(k[t], k[t])) @ S + beta[t] * torch.outer(
            k[t], v[t]
        )
        outs.append(S.T @ q[t])
    o, s = get_op("gated_delta", "chunk")(
        x["q"],
        x["k"],
        x["v"],
        x["beta"],
        g=x["g"],
        chunk_size=8,
        initial_state=x["initial_state"],
        output_final_state=True,
    )
    assert_close(o[0, :, 0], torch.stack(outs), "o")
    assert_close(s[0, 0], S, "state")


def test_strong_decay_forgets() -> None:
    """With alpha ~ 0 at a token, what was stored before it no longer answers a query."""
    x = {n: t.detach() for n, t in make_inputs(1, 20, 1, 8, 8, with_state=False).items() if t is not None}
    g = torch.zeros_like(x["beta"])
    g[:, 10] = -50.0  # alpha_10 = e^-50
    o, _ = get_op("gated_delta")(x["q"], x["k"], x["v"], x["beta"], g=g)
    o_tail, _ = get_op("gated_delta")(x["q"][:, 10:], x["k"][:, 10:], x["v"][:, 10:], x["beta"][:, 10:])
    assert_close(o[:, 10:], o_tail, "output after the reset", rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["chunk", "triton"])
def test_chunk_backward_survives_a_decay_beyond_float32(impl: str) -> None:
    """A chunk that forgets e^-120 (1 / Gamma would overflow float32) backpropagates like the float64
    definition, in the torch chunk form and the Triton kernels (interpreted where there is no GPU)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if ("gated_delta", impl) not in list_ops(device=device):
        pytest.skip(f"{impl} does not run on {device} here")
    x = {n: t.to(device) for n, t in make_inputs(1, 40, 2, 8, 8, rule="gated_delta").items()}
    g = x["g"].detach().clone()
    g[:, 3:7] = -30.0  # [B, T, H]: inside the first chunk of 16
    ref = run_with_grads(get_op("gated_delta", "naive"), {**x, "g": g.requires_grad_()})
    x32 = {n: t.detach().float().requires_grad_() for n, t in {**x, "g": g}.items()}
    o, s, grads = run_with_grads(get_op("gated_delta", impl), x32, chunk_size=16)
    for name, a, e in [("o", o, ref[0]), ("state", s, ref[1])] + [(f"grad of {n}", grads[n], ref[2][n]) for n in grads]:
        assert_rel_close(a, e, name, 1e-4)


def test_layer_learns_a_decay_near_one() -> None:
    layer = FastWeightAttention(16, 2, rule="gated_delta")
    alpha = torch.sigmoid(layer.input_projs["g"].bias)
    assert layer.beta_proj is not None and ((alpha > 0.99) & (alpha < 1)).all()


def test_decay_is_a_named_input() -> None:
    x = make_inputs(1, 5, 2, 4, 4)
    with pytest.raises(ValueError, match=r"g must have shape \[B, T, H\] = \[1, 5, 2\], got \[1, 5\]"):
        get_op("gated_delta")(x["q"], x["k"], x["v"], g=torch.zeros(1, 5))
    with pytest.raises(TypeError, match=r"rule 'delta' takes no input 'g'; its per-token inputs are \['beta'\]"):
        get_op("delta")(x["q"], x["k"], x["v"], g=torch.zeros(1, 5, 2))
