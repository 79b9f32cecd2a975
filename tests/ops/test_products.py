"""Products of updates (DeltaProduct): every form of the delta and gated delta rules, run by
``products``, against the definition written out here in float64 (outputs, final state and every
gradient; an initial state; packed sequences)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastweights.ops import get_op
from fastweights.ops.products import products

from .helpers import assert_close


def definition(q, k, v, beta, S, g=None):
    """DeltaProduct, one update at a time: for token t and j = 1..n,
    S <- alpha_t^[j=1] S;  S <- S + beta_{t,j} k_{t,j} (v_{t,j} - S^T k_{t,j})^T;  then o_t = S^T q_t.
    q [B, T, H, d_k], k [B, T, n, H, d_k], v [B, T, n, H, d_v], beta [B, T, n, H], S [B, H, d_k, d_v]."""
    outs = []
    for t in range(q.shape[1]):
        for j in range(k.shape[2]):
            if g is not None and j == 0:
                S = g[:, t].exp()[..., None, None] * S
            k_j, v_j, b_j = k[:, t, j], v[:, t, j], beta[:, t, j]  # [B, H, d_k], [B, H, d_v], [B, H]
            old = torch.einsum("bhk,bhkv->bhv", k_j, S)  # [B, H, d_v]
            S = S + b_j[..., None, None] * k_j[..., :, None] * (v_j - old)[..., None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))  # [B, H, d_v]
    return torch.stack(outs, 1), S  # [B, T, H, d_v]


def inputs(B=2, T=7, n=3, H=2, d_k=5, d_v=4, gated=False, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = {
        "q": r(B, T, H, d_k),
        "k": F.normalize(r(B, T, n, H, d_k), dim=-1),
        "v": r(B, T, n, H, d_v),
        "beta": 2 * torch.rand(B, T, n, H, generator=gen, dtype=torch.float64),  # [0, 2]: reflections too
        "S": r(B, H, d_k, d_v),
    }
    if gated:
        x["g"] = F.logsigmoid(r(B, T, H))
    return {name: t.requires_grad_() for name, t in x.items()}


def grads(out, x):
    o, S = out
    loss = (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() + (S * S).sum()
    return torch.autograd.grad(loss, list(x.values()))


@pytest.mark.parametrize("impl", ["naive", "chunk", "step"])
@pytest.mark.parametrize("rule", ["delta", "gated_delta"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_every_form_computes_the_definition(rule: str, impl: str, n: int) -> None:
    gated = rule == "gated_delta"
    x = inputs(n=n, gated=gated)
    extra = {"g": x["g"]} if gated else {}
    mine = products(
        get_op(rule, impl),
        x["q"],
        x["k"],
        x["v"],
        x["beta"],
        inputs=extra,
        initial_state=x["S"],
        output_final_state=True,
        chunk_size=4,
    )
    expected = definition(x["q"], x["k"], x["v"], x["beta"], x["S"], x.get("g"))
    assert_close(mine[0], expected[0], f"{rule} {impl} n={n} output")
    assert_close(mine[1], expected[1], f"{rule} {impl} n={n} final state")
    for name, a, b in zip(x, grads(mine, x), grads(expected, x)):
        assert_close(a, b, f"{rule} {impl} n={n} d/d{name}")


def test_packed_sequences_are_the_sequences_one_by_one() -> None:
    x = inputs(B=1, T=9, n=2)
    cu = torch.tensor([0, 4, 9])
    S0 = torch.cat([x["S"], 0.5 * x["S"]]).detach()  # [2, H, d_k, d_v]: one initial state per sequence
    o, S = products(
        get_op("delta", "chunk"),
        x["q"],
        x["k"],
        x["v"],
        x["beta"],
        cu_seqlens=cu,
        initial_state=S0,
        output_final_state=True,
    )
    for i, (a, b) in enumerate([(0, 4), (4, 9)]):
        o_i, S_i = definition(x["q"][:, a:b], x["k"][:, a:b], x["v"][:, a:b], x["beta"][:, a:b], S0[i : i + 1])
        assert_close(o[:, a:b], o_i, f"sequence {i} output")
        assert_close(S[i : i + 1], S_i, f"sequence {i} final state")


def test_mismatched_shapes_are_one_clear_error() -> None:
    x = inputs(n=2)
    with pytest.raises(ValueError, match=r"products: q must be \[B, T, H, d_k\], k \[B, T, n, H, d_k\]"):
        products(get_op("delta", "naive"), x["q"], x["k"], x["v"][:, :, :1], x["beta"])
