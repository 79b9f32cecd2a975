"""What is particular to the channel-gated delta rule (the registry-driven tests check its forms
against its naive form): a decay per key channel, the gated delta rule when every channel decays
alike, and its per-channel input contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastweights.layers import FastWeightAttention, parse_attention
from fastweights.ops import get_op

from .helpers import assert_close, make_inputs


def test_one_token_is_the_equation() -> None:
    """S_1 = (I - beta k k^T) Diag(alpha) S_0 + beta k v^T, o_1 = S_1^T q, with a different decay on every channel."""
    x = make_inputs(1, 1, 1, 4, 3, rule="channel_gated_delta")
    q, k, v, beta, S0, g = (x[n].detach() for n in ("q", "k", "v", "beta", "initial_state", "g"))
    o, S = get_op("channel_gated_delta", "naive")(q, k, v, beta, g=g, initial_state=S0, output_final_state=True)
    k1, b1 = k[0, 0, 0], beta[0, 0, 0]  # [d_k], []
    decayed = torch.diag(g[0, 0, 0].exp()) @ S0[0, 0]  # [d_k, d_v]
    expected = (torch.eye(4, dtype=k.dtype) - b1 * torch.outer(k1, k1)) @ decayed + b1 * torch.outer(k1, v[0, 0, 0])
    assert_close(S[0, 0], expected, "S_1")
    assert_close(o[0, 0, 0], expected.T @ q[0, 0, 0], "o_1")


@pytest.mark.parametrize("impl", ["naive", "checkpoint"])
def test_the_same_decay_on_every_channel_is_the_gated_delta_rule(impl: str) -> None:
    x = make_inputs(2, 11, 3, 5, 4, rule="gated_delta")  # g: [B, T, H]
    args = (x["q"], x["k"], x["v"], x["beta"])
    mine = get_op("channel_gated_delta", impl)(
        *args, g=x["g"][..., None].expand(-1, -1, -1, 5), initial_state=x["initial_state"], output_final_state=True
    )
    gated = get_op("gated_delta", "naive")(*args, g=x["g"], initial_state=x["initial_state"], output_final_state=True)
    assert_close(mine[0], gated[0], "output")
    assert_close(mine[1], gated[1], "final state")


def test_a_decay_per_head_is_refused_with_the_shape_it_needs() -> None:
    x = make_inputs(2, 3, 2, 4, 4)
    with pytest.raises(
        ValueError, match=r"g \(one value per key channel\) must have shape \[B, T, H, d_k\] = \[2, 3, 2, 4\]"
    ):
        get_op("channel_gated_delta")(x["q"], x["k"], x["v"], x["beta"], g=-torch.rand(2, 3, 2))


def test_layers_learn_one_decay_per_head_and_key_channel() -> None:
    layer = FastWeightAttention(24, 3, rule="channel_gated_delta", feature_map="dpfp", feature_map_kwargs={"nu": 1})
    assert layer.input_projs["g"].out_features == 3 * layer.d_key  # d_key = 16 for DPFP-1 of d_head 8
    y, state = layer(torch.randn(2, 7, 24))
    assert y.shape == (2, 7, 24) and state["S"].shape == (2, 3, 16, 8)
    assert parse_attention("dpfp-2+channel_gated_delta+neg").rule == "channel_gated_delta"
    g = F.logsigmoid(layer.input_projs["g"](torch.zeros(1, 24)))  # [1, H d_key]: the starting decays
    assert torch.allclose(g, F.logsigmoid(torch.tensor(5.0)).expand_as(g))  # alpha ~ 0.993, as the gated rule's
