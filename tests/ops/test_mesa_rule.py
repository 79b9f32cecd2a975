"""What is particular to the Mesa rule (its forms against the definition are the registry-driven tests'):
its read-out is the ridge regression of the values on the keys, its state is [H | G], and layers
learn its inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastweights.layers import FastWeightAttention
from fastweights.ops import get_op, get_rule

B, T, H, DK, DV = 2, 9, 3, 5, 4


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, B, T, H, DK, generator=g, dtype=torch.float64).unbind(0)
    v = torch.randn(B, T, H, DV, generator=g, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64) + 0.1
    log_decay = F.logsigmoid(torch.randn(B, T, H, generator=g, dtype=torch.float64) + 1)
    l = torch.randn(B, T, H, generator=g, dtype=torch.float64)  # noqa: E741
    return q, k, v, beta, log_decay, l


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_each_output_is_the_weighted_ridge_regression_so_far(impl: str) -> None:
    """o_t = W_t q_t with W_t = argmin_W sum_{i <= t} w_i |W k_i - v_i|^2 + lambda_t |W|^2, where
    w_i = beta_i alpha_{i+1} ... alpha_t: solved here by the normal equations, token by token."""
    q, k, v, beta, log_decay, l = _inputs()
    o, _ = get_op("mesa", impl)(q, k, v, beta, g=log_decay, l=l, chunk_size=4)
    for t in range(T):
        for b in range(B):
            for h in range(H):
                gs = log_decay[b, : t + 1, h]  # [t + 1]
                w = beta[b, : t + 1, h] * (gs.flip(0).cumsum(0).flip(0) - gs).exp()  # beta_i alpha_{i+1..t}
                K, V = k[b, : t + 1, h], v[b, : t + 1, h]  # [t + 1, d_k], [t + 1, d_v]
                ridge = torch.linalg.solve(
                    K.T @ (w[:, None] * K) + l[b, t, h].exp() * torch.eye(DK, dtype=K.dtype), K.T @ (w[:, None] * V)
                )
                torch.testing.assert_close(o[b, t, h], ridge.T @ q[b, t, h], rtol=1e-10, atol=1e-10)


def test_the_state_is_h_beside_g() -> None:
    q, k, v, beta, log_decay, l = _inputs(1)
    _, S = get_op("mesa")(q, k, v, beta, g=log_decay, l=l, output_final_state=True)
    assert S.shape == (B, H, DK, DK + DV)
    Hs, G = S[..., :DK], S[..., DK:]
    torch.testing.assert_close(Hs, Hs.transpose(-1, -2))  # symmetric, positive semi-definite
    assert torch.linalg.eigvalsh(Hs).min() > -1e-12
    weights = beta * (log_decay.flip(1).cumsum(1).flip(1) - log_decay).exp()  # [B, T, H]: beta_i alpha_{i+1..T}
    torch.testing.assert_close(G, torch.einsum("bth,bthk,bthv->bhkv", weights, k, v))
    assert get_rule("mesa").state(DK, DV) == (DK, DK + DV)


def test_a_negative_write_is_refused() -> None:
    q, k, v, beta, _, _ = _inputs()
    with pytest.raises(ValueError, match=r"beta .*\[0, inf\]"):
        get_op("mesa")(q, k, v, -beta)


def test_layers_learn_rate_decay_and_regulariser() -> None:
    layer = FastWeightAttention(d_model=16, n_heads=2, rule="mesa")
    assert set(layer.input_projs) == {"g", "l"} and layer.beta_proj is not None
    assert torch.allclose(layer.input_projs["l"].bias, torch.zeros(2))  # lambda = 1 to start
    assert torch.allclose(F.logsigmoid(layer.input_projs["g"].bias).exp(), torch.tensor(0.9933), atol=1e-4)
    assert layer.init_state(3)["S"].shape == (3, 2, layer.d_key, layer.d_key + 8)
