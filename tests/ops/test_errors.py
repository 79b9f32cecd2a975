"""Bad input raises ValueError/TypeError naming the argument and the expected vs received value."""

from __future__ import annotations

import re

import pytest
import torch

from fastweights.ops import get_op, get_rule, list_ops, list_rules

B, T, H, D = 2, 5, 3, 4


def _ok():
    return dict(
        q=torch.randn(B, T, H, D), k=torch.randn(B, T, H, D), v=torch.randn(B, T, H, D), beta=torch.rand(B, T, H)
    )


CASES = [
    ("q rank", dict(q=torch.randn(T, H, D)), ValueError, r"q must have shape \[B, T, H, D\].*\[5, 3, 4\]"),
    (
        "k mismatch",
        dict(k=torch.randn(B, T, H, D + 1)),
        ValueError,
        r"k must have the shape of q \[2, 5, 3, 4\], got \[2, 5, 3, 5\]",
    ),
    (
        "v batch",
        dict(v=torch.randn(B + 1, T, H, D)),
        ValueError,
        r"v must have shape \[B, T, H, d_v\] = \[2, 5, 3, d_v\]",
    ),
    ("v time", dict(v=torch.randn(B, T + 1, H, D)), ValueError, r"v must have shape"),
    ("v heads", dict(v=torch.randn(B, T, H + 1, D)), ValueError, r"v must have shape"),
    (
        "beta shape",
        dict(beta=torch.rand(B, T)),
        ValueError,
        r"beta must have shape \[B, T, H\] = \[2, 5, 3\], got \[2, 5\]",
    ),
    ("beta dtype", dict(beta=torch.ones(B, T, H, dtype=torch.long)), TypeError, r"beta must be a floating-point"),
    (
        "mixed dtypes",
        dict(k=torch.randn(B, T, H, D, dtype=torch.float64)),
        TypeError,
        r"k has dtype torch.float64 but q has dtype torch.float32",
    ),
    ("integer q", dict(q=torch.ones(B, T, H, D, dtype=torch.long)), TypeError, r"q must be a floating-point"),
    ("not a tensor", dict(v=[[1.0]]), TypeError, r"v must be a torch.Tensor, got list"),
    (
        "empty T",
        dict(q=torch.randn(B, 0, H, D), k=torch.randn(B, 0, H, D), v=torch.randn(B, 0, H, D), beta=torch.rand(B, 0, H)),
        ValueError,
        r"T = 0",
    ),
    (
        "state shape",
        dict(initial_state=torch.zeros(B, H, D, D + 2)),
        ValueError,
        lambda state: (  # the shape the rule declares: [N, H, d_k, d_v] for one matrix
            rf"initial_state must have shape \[N, H, {re.escape(state.text)}\] = "
            rf"\[2, 3, {', '.join(map(str, state(D, D)))}\], got \[2, 3, 4, 6\]"
        ),
    ),
    ("cu_seqlens with B > 1", dict(cu_seqlens=torch.tensor([0, 2, 5])), ValueError, r"B must be 1"),
    ("chunk size", dict(chunk_size=0), ValueError, r"chunk_size must be a positive int"),
]


@pytest.mark.parametrize("rule,impl", [r for r in list_ops() if r[1] != "step"])
@pytest.mark.parametrize("case,override,exc,pattern", CASES, ids=[c[0] for c in CASES])
def test_bad_input(rule, impl, case, override, exc, pattern) -> None:
    args = _ok()
    args.update({n: override[n] for n in ("q", "k", "v", "beta") if n in override})
    kw = {n: override[n] for n in ("initial_state", "cu_seqlens", "chunk_size") if n in override}
    if callable(pattern):
        pattern = pattern(get_rule(rule).state)
    with pytest.raises(exc, match=pattern):
        get_op(rule, impl)(args["q"], args["k"], args["v"], args["beta"], **kw)


@pytest.mark.parametrize(
    "cu,pattern",
    [
        ([0, 3, 3, 5], "strictly increase"),
        ([1, 5], "start at 0"),
        ([0, 4], "end at T = 5"),
    ],
)
def test_bad_cu_seqlens(cu, pattern) -> None:
    x = {n: t[:1] for n, t in _ok().items()}
    with pytest.raises(ValueError, match=pattern):
        get_op("delta", "chunk")(x["q"], x["k"], x["v"], x["beta"], cu_seqlens=torch.tensor(cu))
    with pytest.raises(TypeError, match="cu_seqlens must be an int32/int64"):
        get_op("delta", "chunk")(x["q"], x["k"], x["v"], x["beta"], cu_seqlens=torch.tensor([0.0, 5.0]))


@pytest.mark.parametrize("name", ["k", "v", "beta", "initial_state"])
def test_mixed_devices_named(name: str) -> None:
    """A tensor on another device (the meta device stands in for a GPU) is named, not computed on."""
    x = _ok()
    x["initial_state"] = torch.zeros(B, H, D, D)
    x[name] = x[name].to("meta")
    with pytest.raises(ValueError, match=f"{name} is on meta but q is on cpu"):
        get_op("delta", "chunk")(x["q"], x["k"], x["v"], x["beta"], initial_state=x["initial_state"])


def test_recurrent_takes_one_token() -> None:
    x = _ok()
    with pytest.raises(ValueError, match="one token"):
        get_op("delta", "step")(x["q"], x["k"], x["v"], x["beta"])


def test_unknown_rule_or_impl() -> None:
    with pytest.raises(ValueError, match=re.escape(f"unknown rule 'hebb'; expected one of {list_rules()}")):
        get_op("hebb", "chunk")
    with pytest.raises(ValueError, match=r"unknown impl 'parallel' for rule 'delta'"):
        get_op("delta", "parallel")


def test_normalised_state_needs_z_column() -> None:
    x = _ok()
    with pytest.raises(ValueError, match=r"= \[2, 3, 4, 5\], got \[2, 3, 4, 4\]"):
        get_op("sum", "chunk")(x["q"], x["k"], x["v"], normalize=True, initial_state=torch.zeros(B, H, D, D))
