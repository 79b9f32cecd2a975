"""The recurrent FWP layer (RDN): the slow net reads the previous output; forward equals T steps."""

from __future__ import annotations

import pytest
import torch

from fastweights.layers import FastWeightAttention, RecurrentFastWeightAttention
from fastweights.ops import list_rules


@pytest.mark.parametrize("rule", list_rules())
def test_forward_equals_steps_and_packed_equals_separate(rule: str) -> None:
    torch.manual_seed(0)
    layer = RecurrentFastWeightAttention(24, 2, rule=rule).double()
    x = torch.randn(1, 30, 24, dtype=torch.float64)
    y, state = layer(x)
    s, ys = None, []
    for t in range(30):
        y_t, s = layer.step(x[:, t], s)
        ys.append(y_t)
    torch.testing.assert_close(torch.stack(ys, 1), y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s["S"], state["S"], rtol=1e-12, atol=1e-12)
    y_packed, s_packed = layer(x, cu_seqlens=torch.tensor([0, 12, 30]))
    ya, sa = layer(x[:, :12])
    yb, sb = layer(x[:, 12:])
    torch.testing.assert_close(y_packed, torch.cat([ya, yb], 1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s_packed["o"], torch.cat([sa["o"], sb["o"]]), rtol=1e-12, atol=1e-12)


def test_the_previous_output_feeds_the_projections() -> None:
    """With the recurrent weights at zero the layer is the plain FWP; with them, a token's output
    depends on earlier outputs through the slow net, and every recurrent weight gets a gradient."""
    torch.manual_seed(0)
    plain = FastWeightAttention(16, 2, rule="delta").double()
    rec = RecurrentFastWeightAttention(16, 2, rule="delta").double()
    rec.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randn(2, 9, 16, dtype=torch.float64)
    with torch.no_grad():
        for lin in rec.recurrent.values():
            lin.weight.zero_()
    torch.testing.assert_close(rec(x)[0], plain(x)[0], rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        for lin in rec.recurrent.values():
            lin.weight.normal_(0, 0.3)
    y, _ = rec(x)
    assert not torch.allclose(y, plain(x)[0])
    y.square().sum().backward()
    assert all(lin.weight.grad.abs().sum() > 0 for lin in rec.recurrent.values())
    assert set(rec.recurrent) == {"qkv", "beta"}
