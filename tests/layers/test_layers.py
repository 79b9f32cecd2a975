"""The FWP layer and the softmax baseline: parallel forward == one-token steps, carried state,
packed sequences, the attention-normalised delta variant against its definition, and errors."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from fastweights import FastWeightAttention, SoftmaxAttention
from fastweights.feature_maps import get_feature_map
from fastweights.ops import list_rules

VARIANTS = {
    "sum": dict(rule="sum"),
    "sum-unnormalised": dict(rule="sum", attn_norm=False, beta="learned"),
    "delta": dict(rule="delta"),
    "delta-attn-norm": dict(rule="delta", attn_norm=True),
    "delta-l2-fixed-beta": dict(rule="delta", feature_map="identity", qk_norm="l2", beta=0.7),
    "dpfp-2+delta": dict(rule="delta", feature_map="dpfp", feature_map_kwargs={"nu": 2}),
    "favor+sum": dict(rule="sum", feature_map="favor", feature_map_kwargs={"m": 8}),
    "delta+neg": dict(rule="delta", qk_norm="l2", beta_max=2.0),  # a learned rate in [0, 2]
    "gated_delta+neg": dict(rule="gated_delta", beta_max=2.0),
    "deltaproduct-3+neg": dict(rule="delta", qk_norm="l2", beta_max=2.0, steps=3),  # 3 updates per token
    "gated_deltaproduct-2": dict(rule="gated_delta", steps=2),
    **{rule: dict(rule=rule) for rule in list_rules() if rule not in ("sum", "delta")},  # every other rule
}


def make_layer(name: str, d_model: int = 24, n_heads: int = 3, d_head: int = 6, **kw):
    if name == "softmax":
        layer = SoftmaxAttention(d_model, n_heads, d_head)
    else:
        layer = FastWeightAttention(d_model, n_heads, d_head, chunk_size=16, **{**VARIANTS[name], **kw})
    return layer.double().eval()


ALL = list(VARIANTS) + ["softmax"]


def _close(a, b, name):
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("name", ALL)
def test_forward_equals_repeated_step(name: str) -> None:
    layer = make_layer(name)
    x = torch.randn(2, 37, 24, dtype=torch.float64)
    y, state = layer(x)
    s, ys = None, []
    for t in range(x.shape[1]):
        y_t, s = layer.step(x[:, t], s)
        ys.append(y_t)
    _close(torch.stack(ys, 1), y, "step outputs")
    for key in state:
        _close(s[key], state[key], f"state {key}")


@pytest.mark.parametrize("name", ALL)
def test_forward_resumes_from_state(name: str) -> None:
    layer = make_layer(name)
    x = torch.randn(2, 50, 24, dtype=torch.float64)
    y, _ = layer(x)
    y1, s1 = layer(x[:, :21])
    y2, _ = layer(x[:, 21:], s1)
    _close(torch.cat([y1, y2], 1), y, "resumed outputs")


@pytest.mark.parametrize("name", ALL)
def test_packed_sequences_equal_separate(name: str) -> None:
    layer = make_layer(name)
    lengths = [9, 33, 1]
    xs = [torch.randn(1, n, 24, dtype=torch.float64) for n in lengths]
    cu = torch.tensor([0, 9, 42, 43])
    y, _ = layer(torch.cat(xs, 1), cu_seqlens=cu)
    _close(y, torch.cat([layer(x)[0] for x in xs], 1), "packed outputs")


@pytest.mark.parametrize("name", list(VARIANTS))
def test_impls_agree(name: str) -> None:
    x = torch.randn(2, 40, 24, dtype=torch.float64)
    fast = make_layer(name)
    slow = make_layer(name, impl="naive")
    slow.load_state_dict(fast.state_dict())
    _close(fast(x)[0], slow(x)[0], "chunk vs naive layer")


def test_attention_normalised_delta_matches_definition() -> None:
    """Rate beta_t c_t, key k_t / c_t with c_t = z_{t-1}.k_t (1 when z is empty), output / (z_t.q_t)."""
    layer = make_layer("delta-attn-norm")
    x = torch.randn(1, 20, 24, dtype=torch.float64)
    y, _ = layer(x)
    H, D, eps = layer.n_heads, layer.d_head, layer.eps
    q, k, v = layer.qkv(x).view(1, 20, 3, H, D).unbind(2)
    q, k = layer.feature_map(q), layer.feature_map(k)
    q, k = q / (q.sum(-1, keepdim=True) + eps), k / (k.sum(-1, keepdim=True) + eps)
    beta = torch.sigmoid(layer.beta_proj(x))
    S = torch.zeros(1, H, D, D, dtype=torch.float64)
    z = torch.zeros(1, H, D, dtype=torch.float64)
    outs = []
    for t in range(20):
        c = (z * k[:, t]).sum(-1)  # [1, H]
        c = torch.where(c == 0, torch.ones_like(c), c)
        kt = k[:, t] / (c[..., None] + eps)
        old = torch.einsum("bhk,bhkv->bhv", kt, S)
        S = S + (beta[:, t] * c)[..., None, None] * kt[..., :, None] * (v[:, t] - old)[..., None, :]
        z = z + k[:, t]
        o = torch.einsum("bhk,bhkv->bhv", q[:, t], S) / ((z * q[:, t]).sum(-1, keepdim=True) + eps)
        outs.append(o)
    expected = layer.out_proj(torch.stack(outs, 1).reshape(1, 20, H * D))
    _close(y, expected, "attention-normalised delta")


@pytest.mark.parametrize("name", ["delta", "sum", "softmax"])
def test_gradients_reach_every_parameter(name: str) -> None:
    layer = make_layer(name).train()
    x = torch.randn(2, 19, 24, dtype=torch.float64, requires_grad=True)
    y, _ = layer(x)
    y.square().mean().backward()
    for pname, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, pname
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["delta", "sum", "dpfp-2+delta"])
def test_bf16_autocast_finite_and_close(name: str) -> None:
    layer = make_layer(name).float()
    x = torch.randn(2, 70, 24)
    y32, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, state = layer(x)
    assert torch.isfinite(y16).all() and state["S"].dtype == torch.float32
    rel = (y16.float() - y32).norm() / y32.norm()
    assert rel < 5e-2, rel


def test_favor_redraws_in_training_only() -> None:
    layer = FastWeightAttention(16, 2, rule="sum", feature_map="favor", feature_map_kwargs={"m": 4, "redraw": "step"})
    w = layer.feature_map.weight.clone()
    layer.eval()(torch.randn(1, 3, 16))
    assert torch.equal(w, layer.feature_map.weight)
    layer.train()(torch.randn(1, 3, 16))
    assert not torch.equal(w, layer.feature_map.weight)


def test_init_state_matches_forward_state() -> None:
    for name in ALL:
        layer = make_layer(name).float()
        _, state = layer(torch.randn(3, 4, 24))
        empty = layer.init_state(3)
        assert set(empty) == set(state)
        if name != "softmax":
            assert all(empty[k].shape == state[k].shape for k in state)


def test_layer_errors() -> None:
    with pytest.raises(ValueError, match=re.escape(f"unknown rule 'hebb'; expected one of {list_rules()}")):
        FastWeightAttention(16, 2, rule="hebb")
    with pytest.raises(ValueError, match="unknown feature map 'nope'"):
        FastWeightAttention(16, 2, feature_map="nope")
    with pytest.raises(ValueError, match="built for d = 4, but d_head = 8"):
        FastWeightAttention(16, 2, feature_map=get_feature_map("dpfp", 4))
    with pytest.raises(ValueError, match="not divisible"):
        FastWeightAttention(10, 3)
    with pytest.raises(ValueError, match="beta must be"):
        FastWeightAttention(16, 2, beta="sometimes")
    with pytest.raises(ValueError, match="unknown impl 'parallel' for rule 'delta'"):
        FastWeightAttention(16, 2, impl="parallel")
    layer = FastWeightAttention(16, 2)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, d_model=16\], got \[2, 5, 8\]"):
        layer(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="T = 0"):
        layer(torch.randn(2, 0, 16))
    with pytest.raises(ValueError, match=r"step expects x_t of shape \[B, d_model\]"):
        layer.step(torch.randn(2, 1, 16))
    with pytest.raises(ValueError, match="initial_state must have shape"):
        layer(torch.randn(3, 4, 16), layer.init_state(2))


def test_softmax_errors() -> None:
    layer = SoftmaxAttention(16, 2)
    with pytest.raises(ValueError, match=r"x must have shape \[B, T, d_model=16\]"):
        layer(torch.randn(2, 16))
    _, cache = layer(torch.randn(1, 3, 16))
    with pytest.raises(ValueError, match="cu_seqlens cannot be combined"):
        layer(torch.randn(1, 3, 16), cache, cu_seqlens=torch.tensor([0, 3]))


@pytest.mark.parametrize("name", ALL)
def test_packed_sequences_must_match_the_input(name: str) -> None:
    """cu_seqlens must end at T and needs B = 1, in every layer (the softmax one included)."""
    layer = make_layer(name)
    with pytest.raises(
        ValueError, match=re.escape("cu_seqlens must start at 0, strictly increase and end at T = 8, got [0, 3, 7]")
    ):
        layer(torch.randn(1, 8, 24, dtype=torch.float64), cu_seqlens=torch.tensor([0, 3, 7]))
    with pytest.raises(ValueError, match="so B must be 1, got B = 2"):
        layer(torch.randn(2, 8, 24, dtype=torch.float64), cu_seqlens=torch.tensor([0, 3, 8]))


@pytest.mark.parametrize("rule", list_rules())
def test_nan_padding_leaves_the_valid_tokens_alone(rule: str) -> None:
    """Garbage (NaN) in the right-padding of x: the outputs before it are those of a clean x, the rest NaN."""
    layer = FastWeightAttention(24, 3, rule=rule, chunk_size=8).double().eval()
    x = torch.randn(2, 20, 24, dtype=torch.float64)
    padded = x.clone()
    padded[1, 13:] = float("nan")
    y, _ = layer(x)
    y_pad, _ = layer(padded)
    assert torch.equal(y_pad[:, :13], y[:, :13]) and torch.equal(y_pad[0], y[0])
    assert y_pad[1, 13:].isnan().all()


@pytest.mark.parametrize("rule", list_rules())
@pytest.mark.parametrize("beta", [float("nan"), float("inf")])
def test_a_fixed_rate_must_be_finite(rule: str, beta: float) -> None:
    with pytest.raises(ValueError, match=rf"a fixed beta must be a finite float.*, got {beta}"):
        FastWeightAttention(16, 2, rule=rule, beta=beta)


@pytest.mark.parametrize("feature_map,expected", [("elu_p1", "sum"), ("dpfp", "sum"), ("identity", "l2")])
def test_delta_rule_key_normalisation_default(feature_map: str, expected: str) -> None:
    """Sum-normalising a signed map divides by sums near zero, so 'auto' picks L2 for it."""
    layer = FastWeightAttention(16, 2, rule="delta", feature_map=feature_map)
    assert layer.qk_norm_name == expected
    x = torch.randn(2, 30, 16) * 4
    assert torch.isfinite(layer(x)[0]).all()


def test_attention_normalisation_needs_a_non_negative_map() -> None:
    assert not FastWeightAttention(16, 2, rule="sum", feature_map="identity").attn_norm
    assert FastWeightAttention(16, 2, rule="sum", feature_map="relu").attn_norm
    for rule in ("sum", "delta"):
        with pytest.raises(ValueError, match="attn_norm .* needs a non-negative feature map, got Identity"):
            FastWeightAttention(16, 2, rule=rule, feature_map="identity", attn_norm=True)
    with pytest.raises(ValueError, match="chunk_size must be a positive int, got 0"):
        FastWeightAttention(16, 2, chunk_size=0)


def test_a_rate_up_to_two_is_twice_the_sigmoid(monkeypatch) -> None:
    """beta_max=2: the op gets beta = 2 sigmoid(w . x + b), past 1 where the pre-activation is
    positive (negative eigenvalues of I - beta k k^T); the default keeps sigmoid's [0, 1]."""
    seen = {}
    x = torch.randn(2, 5, 24, dtype=torch.float64)
    for beta_max in (1.0, 2.0):
        layer = make_layer("delta", beta_max=beta_max)
        nn.init.constant_(layer.beta_proj.bias, 3.0)

        def spy(q, k, v, beta, op=layer.op, key=beta_max, **kw):
            seen[key] = beta
            return op(q, k, v, beta, **kw)

        monkeypatch.setattr(layer, "op", spy)
        layer(x)
        expected = beta_max * torch.sigmoid(layer.beta_proj(x))  # [B, T, H]
        _close(seen[beta_max], expected, f"beta with beta_max={beta_max}")
    assert seen[2.0].max() > 1.5 and seen[1.0].max() < 1.0


@pytest.mark.parametrize(
    "kw,message",
    [
        (
            dict(rule="delta", beta_max=2.5),
            r"beta_max must be a float in \(0, 2\] \(the bound of rule 'delta'\), got 2.5",
        ),
        (dict(rule="delta", beta_max=0.0), r"beta_max must be a float in \(0, 2\]"),
        (dict(rule="delta", beta=0.5, beta_max=2.0), r"beta_max applies to a learned rate; beta is 0.5"),
    ],
)
def test_bad_beta_max_is_one_clear_error(kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        FastWeightAttention(24, 3, 6, **kw)
