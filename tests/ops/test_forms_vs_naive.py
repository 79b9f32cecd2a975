"""Every backend of every rule equals the naive time loop: outputs, final state and every gradient.

Driven by the registry: a new rule or backend is tested here with no edit. Backends that take
float64 are compared in float64 to 1e-9; the others (GPU kernels) in their most precise dtype within
their declared tolerance. CUDA cases carry the ``gpu`` marker.
"""

from __future__ import annotations

import functools

import pytest
import torch

from fastweights.ops import Backend, get_op, get_rule, list_backends, list_rules

from .helpers import assert_close, assert_same_results, backend_cases, backend_dtype, make_inputs, run_with_grads

TS = [1, 63, 64, 65, 200]
DS = [16, 60, 64]
CHUNKS = [16, 32, 64]
SEQUENCE = backend_cases()
ONE_TOKEN = backend_cases(one_token=True)
NORMALIZING = [r for r in list_rules() if get_rule(r).normalize]


@functools.lru_cache(maxsize=None)
def _reference(rule: str, T: int, dk: int, dv: int, device: str, normalize: bool = False):
    """The naive float64 outputs and gradients, computed once per input set (shared by every backend)."""
    inputs = make_inputs(2, T, 3, dk, dv, device=device, positive=normalize, normalize=normalize, rule=rule)
    return run_with_grads(get_op(rule, "naive"), inputs, normalize=normalize)


def _compare(b: Backend, T: int, dk: int, dv: int, device: str = "cpu", normalize: bool = False, **kw) -> None:
    """``normalize``: attention normalisation, on non-negative keys and queries as the layers use it."""
    inputs = make_inputs(
        2, T, 3, dk, dv, device=device, dtype=backend_dtype(b), positive=normalize, normalize=normalize, rule=b.rule
    )
    expected = _reference(b.rule, T, dk, dv, device, normalize)
    assert_same_results(run_with_grads(get_op(b.rule, b.name), inputs, normalize=normalize, **kw), expected, b)


TRAINING = [b for b in list_backends(device="cpu") if b.priority is not None and not b.emulated]  # what auto runs


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("d", DS)
@pytest.mark.parametrize("T", TS)
@pytest.mark.parametrize("backend", TRAINING, ids=lambda b: f"{b.rule}-{b.name}")
def test_training_form_matches_naive(backend: Backend, T: int, d: int, chunk_size: int) -> None:
    """The CPU training form of every rule over lengths and widths around the chunk size."""
    _compare(backend, T, d, d, chunk_size=chunk_size)


@pytest.mark.parametrize("backend,device", SEQUENCE)
@pytest.mark.parametrize("T,dk,dv", [(1, 16, 16), (65, 64, 64), (200, 60, 60), (77, 24, 40)])
def test_backend_matches_naive(backend: Backend, device: str, T: int, dk: int, dv: int) -> None:
    _compare(backend, T, dk, dv, device=device, chunk_size=32)


@pytest.mark.parametrize("rule", NORMALIZING)
@pytest.mark.parametrize("backend,device", SEQUENCE)
def test_normalised_backend_matches_naive(backend: Backend, device: str, rule: str) -> None:
    """``normalize=True`` from an ``[S | z]`` state, every gradient included."""
    if backend.rule != rule:
        pytest.skip(f"{backend.name} implements {backend.rule!r}")
    _compare(backend, 70, 10, 7, device=device, normalize=True, chunk_size=16)


@pytest.mark.parametrize("T", [1, 37])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("backend,device", ONE_TOKEN)
def test_one_token_steps_match_naive(backend: Backend, device: str, normalize: bool, T: int) -> None:
    """T calls of a one-token backend, each from the previous state, equal one naive pass (and grads)."""
    if normalize and not get_rule(backend.rule).normalize:
        pytest.skip(f"rule {backend.rule!r} has no attention normalisation")
    inputs = make_inputs(
        2,
        T,
        3,
        20,
        12,
        device=device,
        dtype=backend_dtype(backend),
        positive=normalize,
        normalize=normalize,
        rule=backend.rule,
    )
    expected = _reference(backend.rule, T, 20, 12, device, normalize)
    step = get_op(backend.rule, backend.name)

    def looped(q, k, v, beta, initial_state=None, output_final_state=True, normalize=False, **inputs):
        s, outs = initial_state, []
        for t in range(q.shape[1]):
            at_t = {n: x[:, t : t + 1] for n, x in inputs.items()}
            o_t, s = step(
                q[:, t : t + 1],
                k[:, t : t + 1],
                v[:, t : t + 1],
                beta[:, t : t + 1],
                initial_state=s,
                output_final_state=True,
                normalize=normalize,
                **at_t,
            )
            outs.append(o_t)
        return torch.cat(outs, dim=1), s

    assert_same_results(run_with_grads(looped, inputs, normalize=normalize), expected, backend)


@pytest.mark.parametrize("impl", ["chunk", "parallel", "step"])
def test_sum_rule_beta_scales_values(impl: str) -> None:
    """Sum rule with a rate: writing beta_t v_t, checked against naive with pre-scaled values."""
    T = 1 if impl == "step" else 45
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


@pytest.mark.parametrize("rule", list_rules())
def test_scale_multiplies_queries(rule: str) -> None:
    inp = make_inputs(1, 33, 2, 8, 8)
    q, k, v, beta = (inp[n].detach() for n in ("q", "k", "v", "beta"))
    o, _ = get_op(rule)(q, k, v, beta, scale=0.3, chunk_size=16)
    o_ref, _ = get_op(rule, "naive")(q * 0.3, k, v, beta)
    assert_close(o, o_ref, "o")


@pytest.mark.parametrize("impl", ["naive", "chunk", "parallel"])
def test_sum_rule_rate_normalisation_and_state_by_hand(impl: str) -> None:
    """The sum rule's own work (rate, z column, initial state, scale) against a loop written here."""
    inp = make_inputs(1, 40, 2, 6, 5, positive=True, with_state=False)
    q, k, v, beta = (inp[n].detach() for n in ("q", "k", "v", "beta"))
    S = torch.rand(1, 2, 6, 5, dtype=torch.float64)
    z = torch.rand(1, 2, 6, dtype=torch.float64)
    eps, scale = 1e-6, 0.7
    o, s = get_op("sum", impl)(
        q,
        k,
        v,
        beta,
        scale=scale,
        normalize=True,
        eps=eps,
        chunk_size=16,
        initial_state=torch.cat([S, z[..., None]], -1),
        output_final_state=True,
    )
    outs = []
    for t in range(40):
        S = S + beta[:, t, :, None, None] * k[:, t, :, :, None] * v[:, t, :, None, :]
        z = z + k[:, t]
        qt = q[:, t] * scale
        outs.append(torch.einsum("bhk,bhkv->bhv", qt, S) / ((z * qt).sum(-1, keepdim=True) + eps))
    assert_close(o, torch.stack(outs, 1), "o")
    assert_close(s, torch.cat([S, z[..., None]], -1), "state [S | z]")


@pytest.mark.parametrize("impl", ["naive", "chunk"])
def test_delta_rule_normalised_variant_by_hand(impl: str) -> None:
    """The paper's attention-normalised delta rule (rate beta c, key k / c, output / z.q) from a given
    [S | z] state, against a loop written here."""
    inp = make_inputs(1, 40, 2, 6, 5, positive=True, with_state=False)
    q, k, v, beta = (inp[n].detach() for n in ("q", "k", "v", "beta"))
    S = torch.randn(1, 2, 6, 5, dtype=torch.float64)
    z = torch.rand(1, 2, 6, dtype=torch.float64)
    eps, scale = 1e-6, 0.7
    o, s = get_op("delta", impl)(
        q,
        k,
        v,
        beta,
        scale=scale,
        normalize=True,
        eps=eps,
        chunk_size=16,
        initial_state=torch.cat([S, z[..., None]], -1),
        output_final_state=True,
    )
    outs = []
    for t in range(40):
        c = (z * k[:, t]).sum(-1)  # [1, 2]
        kt = k[:, t] / (c[..., None] + eps)
        u = beta[:, t, :, None] * c[..., None] * (v[:, t] - torch.einsum("bhk,bhkv->bhv", kt, S))
        S = S + kt[..., :, None] * u[..., None, :]
        z = z + k[:, t]
        qt = q[:, t] * scale
        outs.append(torch.einsum("bhk,bhkv->bhv", qt, S) / ((z * qt).sum(-1, keepdim=True) + eps))
    assert_close(o, torch.stack(outs, 1), "o")
    assert_close(s, torch.cat([S, z[..., None]], -1), "state [S | z]")
