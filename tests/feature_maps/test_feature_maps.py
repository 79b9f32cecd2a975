"""Feature maps against their formulas (DESIGN.md section 1) and the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastweights.feature_maps import (
    FeatureMap,
    get_feature_map,
    get_qk_norm,
    l2_normalize,
    list_feature_maps,
    register_feature_map,
    sum_normalize,
)


def test_registry_lists_the_paper_maps() -> None:
    assert {"elu_p1", "relu", "identity", "favor", "dpfp"} <= set(list_feature_maps())


def test_unknown_map_names_the_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown feature map 'hedgehog'; expected one of \['dpfp'"):
        get_feature_map("hedgehog", 8)
    with pytest.raises(TypeError, match="bad arguments"):
        get_feature_map("elu_p1", 8, nu=3)


def test_elementwise_maps() -> None:
    x = torch.randn(4, 7, 9)
    torch.testing.assert_close(get_feature_map("elu_p1", 9)(x), F.elu(x) + 1)
    torch.testing.assert_close(get_feature_map("relu", 9)(x), x.clamp_min(0))
    torch.testing.assert_close(get_feature_map("identity", 9)(x), x)
    assert get_feature_map("elu_p1", 9).out_dim() == 9


@pytest.mark.parametrize("nu", [1, 2, 3])
@pytest.mark.parametrize("d", [5, 16])
def test_dpfp_formula(d: int, nu: int) -> None:
    phi = get_feature_map("dpfp", d, nu=nu)
    x = torch.randn(3, 4, d, dtype=torch.float64)
    y = phi(x)
    assert y.shape == (3, 4, 2 * nu * d) and phi.out_dim() == 2 * nu * d
    assert (y >= 0).all()
    r = torch.cat([x.clamp_min(0), (-x).clamp_min(0)], -1)
    n = 2 * d
    for i in range(1, nu + 1):  # element j of block i is r_j * r_{(j - i) mod 2d}
        block = y[..., (i - 1) * n : i * n]
        for j in range(n):
            torch.testing.assert_close(block[..., j], r[..., j] * r[..., (j - i) % n])


def test_dpfp_bad_nu() -> None:
    with pytest.raises(ValueError, match=r"dpfp nu must be an int in \[1, 2d\)"):
        get_feature_map("dpfp", 4, nu=0)


def test_favor_estimates_exp_dot_product_better_with_more_features() -> None:
    d = 8
    g = torch.Generator().manual_seed(0)
    q = torch.randn(256, d, generator=g, dtype=torch.float64) * 0.3
    k = torch.randn(256, d, generator=g, dtype=torch.float64) * 0.3
    exact = torch.exp((q * k).sum(-1))
    errors = []
    for m in (8, 64, 1024):
        errs = []
        for seed in range(5):
            phi = get_feature_map("favor", d, m=m, seed=seed).double()
            est = (phi(q) * phi(k)).sum(-1)
            errs.append(((est - exact).abs() / exact).mean())
        errors.append(torch.stack(errs).mean().item())
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.05


def test_favor_outputs_positive_and_sized() -> None:
    phi = get_feature_map("favor", 6, m=10)
    y = phi(torch.randn(2, 3, 6))
    assert y.shape == (2, 3, 20) and (y > 0).all() and phi.out_dim() == 20


def test_favor_matrix_is_orthogonal_within_blocks_and_saved() -> None:
    phi = get_feature_map("favor", 8, m=8, seed=1)
    w = phi.weight / phi.weight.norm(dim=1, keepdim=True)
    torch.testing.assert_close(w @ w.T, torch.eye(8), atol=1e-5, rtol=0)
    assert "weight" in phi.state_dict()
    other = get_feature_map("favor", 8, m=8, seed=2)
    other.load_state_dict(phi.state_dict())
    x = torch.randn(3, 8)
    torch.testing.assert_close(other(x), phi(x))


@pytest.mark.parametrize("redraw,expected_changes", [("step", 4), (2, 2), ("never", 0)])
def test_favor_redraw_policy(redraw, expected_changes) -> None:
    phi = get_feature_map("favor", 4, m=4, redraw=redraw, seed=0)
    changes = 0
    for _ in range(4):
        before = phi.weight.clone()
        phi.training_step()
        changes += int(not torch.equal(before, phi.weight))
    assert changes == expected_changes


def test_favor_bad_redraw() -> None:
    with pytest.raises(ValueError, match="favor redraw must be"):
        get_feature_map("favor", 4, redraw="sometimes")


def test_wrong_input_size_is_named() -> None:
    with pytest.raises(ValueError, match="built for inputs of size d = 8, got last dimension 6"):
        get_feature_map("dpfp", 8)(torch.randn(2, 6))


def test_register_a_new_map(monkeypatch: pytest.MonkeyPatch) -> None:
    import fastweights.feature_maps as fm

    monkeypatch.setattr(fm, "_REGISTRY", dict(fm._REGISTRY))  # leave the global registry as it was

    class Square(FeatureMap):
        def out_dim(self, d=None):
            return self.d

        def forward(self, x):
            return x * x

    register_feature_map("square_test", Square)
    assert get_feature_map("square_test", 3)(torch.full((3,), 2.0)).tolist() == [4.0, 4.0, 4.0]
    with pytest.raises(TypeError):
        register_feature_map("bad", int)


def test_normalisations() -> None:
    x = torch.rand(5, 7)
    torch.testing.assert_close(sum_normalize(x, 0.0).sum(-1), torch.ones(5))
    torch.testing.assert_close(l2_normalize(x).norm(dim=-1), torch.ones(5))
    assert get_qk_norm(None) is None and get_qk_norm("sum") is sum_normalize
    with pytest.raises(ValueError, match="unknown qk_norm 'max'"):
        get_qk_norm("max")


@pytest.mark.parametrize("name", ["elu_p1", "relu", "dpfp", "favor", "identity"])
def test_non_negative_flag_is_true_to_the_map(name: str) -> None:
    phi = get_feature_map(name, 6)
    y = phi(torch.randn(500, 6) * 3)
    assert phi.non_negative == bool((y >= 0).all())


def test_favor_redraws_are_reproducible_across_replicas_and_resume() -> None:
    torch.manual_seed(3)
    a = get_feature_map("favor", 6, m=6, redraw="step")
    torch.manual_seed(3)
    b = get_feature_map("favor", 6, m=6, redraw="step")  # a DDP replica built alike
    for _ in range(3):
        a.training_step()
        b.training_step()
    assert torch.equal(a.weight, b.weight)
    resumed = get_feature_map("favor", 6, m=6, redraw="step", seed=99)
    resumed.load_state_dict(a.state_dict())  # checkpoint, then continue
    a.training_step()
    resumed.training_step()
    assert torch.equal(a.weight, resumed.weight)
