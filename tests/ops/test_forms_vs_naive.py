"""Every fast form equals the naive time loop in float64: outputs, final state and every gradient."""

from __future__ import annotations

import functools

import pytest
import torch

from fastweights.ops import get_op

from .helpers import assert_close, assert_same_results, make_inputs, run_with_grads

TS = [1, 63, 64, 65, 200]
DS = [16, 60, 64]
CHUNKS = [16, 32, 64]


@functools.lru_cache(maxsize=None)
def _reference(rule: str, T: int, dk: int, dv: int, device: str):
    """The naive outputs and gradients, computed once per input set (shared by every chunk size)."""
    return run_with_grads(get_op(rule, "naive"), make_inputs(2, T, 3, dk, dv, device=device))


def _compare(rule: str, impl: str, T: int, dk: int, dv: int, device: str = "cpu", **kw) -> None:
    inputs = make_inputs(2, T, 3, dk, dv, device=device)
    o_ref, s_ref, g_ref = _reference(rule, T, dk, dv, device)
    assert_same_results(run_with_grads(get_op(rule, impl), inputs, **kw), (o_ref, s_ref, g_ref))


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_chunk_matches_naive(rule: str, T: int, d: int, chunk_size: int) -> None:
    _compare(rule, "chunk", T, d, d, chunk_size=chunk_size)


@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("T", TS)
def test_parallel_sum_matches_naive(T: int, d: int) -> None:
    _compare("sum", "parallel", T, d, d)


@pytest.mark.parametrize("impl", ["chunk", "parallel"])
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_key_and_value_dims_differ(rule: str, impl: str) -> None:
    if (rule, impl) == ("delta", "parallel"):
        pytest.skip("no parallel form of the delta rule")
    _compare(rule, impl, 77, 24, 40, chunk_size=32)


@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_forms_on_device(rule: str, device: str) -> None:
    _compare(rule, "chunk", 65, 20, 12, device=device, chunk_size=16)


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_recurrent_steps_match_naive(rule: str, T: int) -> None:
    """T calls of the one-token form, each from the previous state, equal one naive pass (and grads)."""
    inputs = make_inputs(2, T, 3, 20, 12)
    o_ref, s_ref, g_ref = run_with_grads(get_op(rule, "naive"), inputs)
    step = get_op(rule, "recurrent")

    def looped(q, k, v, beta, initial_state=None, output_final_state=True):
        s, outs = initial_state, []
        for t in range(q.shape[1]):
            o_t, s = step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], beta[:, t : t + 1],
                          initial_state=s, output_final_state=True)
            outs.append(o_t)
        return torch.cat(outs, dim=1), s

    assert_same_results(run_with_grads(looped, inputs), (o_ref, s_ref, g_ref))


@pytest.mark.parametrize("impl", ["chunk", "parallel", "recurrent"])
def test_sum_rule_beta_scales_values(impl: str) -> None:
    """Sum rule with a rate: writing beta_t v_t, checked against naive with pre-scaled values."""
    T = 1 if impl == "recurrent" else 45
    inp = make_inputs(1, T, 2, 8, 8)
    q, k, v, beta = (inp[n].detach() for n in ("q", "k", "v", "beta"))
    o, s = get_op("sum", impl)(q, k, v, beta, output_final_state=True, chunk_size=16)
    o_ref, s_ref = get_op("sum", "naive")(q, k, v * beta[..., None], output_final_state=True)
    assert_close(o, o_ref, "o")
    assert_close(s, s_ref, "state")


@pytest.mark.parametrize("impl", ["naive", "chunk", "parallel"])
def test_sum_rule_normalisation(impl: str) -> None:
    """normalize=True returns (S_t^T q_t) / (z_t . q_t + eps), z_t the running key sum, with z in the state."""
    inp = make_inputs(2, 70, 2, 10, 6, positive=True, with_state=False)
    q, k, v = (inp[n].detach() for n in ("q", "k", "v"))
    eps = 1e-6
    o, s = get_op("sum", impl)(q, k, v, normalize=True, eps=eps, output_final_state=True, chunk_size=16)
    scores = torch.einsum("bthk,bshk->bhts", q, k).tril()
    num = torch.einsum("bhts,bshv->bthv", scores, v)
    den = scores.sum(-1).transpose(1, 2)[..., None]
    assert_close(o, num / (den + eps), "normalised o")
    assert_close(s[..., -1], k.sum(1), "z column of the state")
    assert_close(s[..., :-1], torch.einsum("bthk,bthv->bhkv", k, v), "S part of the state")


@pytest.mark.parametrize("impl", ["chunk", "naive"])
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_scale_multiplies_queries(rule: str, impl: str) -> None:
    inp = make_inputs(1, 33, 2, 8, 8)
    q, k, v, beta = (inp[n].detach() for n in ("q", "k", "v", "beta"))
    o, _ = get_op(rule, impl)(q, k, v, beta, scale=0.3, chunk_size=16)
    o_ref, _ = get_op(rule, "naive")(q * 0.3, k, v, beta)
    assert_close(o, o_ref, "o")


@pytest.mark.parametrize("impl", ["naive", "chunk", "parallel"])
def test_sum_rule_rate_normalisation_and_state_by_hand(impl: str) -> None:
    """The wrapper's own work (rate, z column, initial state, scale) against a loop written here."""
    inp = make_inputs(1, 40, 2, 6, 5, positive=True, with_state=False)
    q, k, v, beta = (inp[n].detach() for n in ("q", "k", "v", "beta"))
    S = torch.rand(1, 2, 6, 5, dtype=torch.float64)
    z = torch.rand(1, 2, 6, dtype=torch.float64)
    eps, scale = 1e-6, 0.7
    o, s = get_op("sum", impl)(q, k, v, beta, scale=scale, normalize=True, eps=eps, chunk_size=16,
                               initial_state=torch.cat([S, z[..., None]], -1), output_final_state=True)
    outs = []
    for t in range(40):
        S = S + beta[:, t, :, None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        qt = q[:, t] * scale
        outs.append(torch.einsum("bhk,bhkv->bhv", qt, S) / ((z * qt).sum(-1, keepdim=True) + eps))
    assert_close(o, torch.stack(outs, 1), "o")
    assert_close(s, torch.cat([S, z[..., None]], -1), "state [S | z]")
