"""Carried state, packed variable-length sequences, low precision and gradcheck, for every backend."""

from __future__ import annotations

import pytest
import torch

from fastweights.ops import Backend, get_op, get_rule

from .helpers import (
    STANDARD,
    assert_close,
    assert_rel_close,
    backend_cases,
    backend_dtype,
    make_inputs,
    run_with_grads,
)

SEQUENCE = backend_cases(exclude=())


def _detached(T: int, B: int = 2, H: int = 3, dk: int = 20, dv: int = 12, dtype=torch.float64, device="cpu", rule=None):
    inp = make_inputs(B, T, H, dk, dv, dtype=dtype, device=device, rule=rule)
    return {n: (t.detach() if t is not None else None) for n, t in inp.items()}


def _extra(x, sl=slice(None)):
    """The rule's inputs other than q, k, v, beta and the state, cut to the time slice ``sl``."""
    return {n: t[:, sl] for n, t in x.items() if n not in STANDARD}


def _check(b: Backend):
    """Equality to 1e-9 in float64, else within the backend's tolerance."""
    if backend_dtype(b) == torch.float64:
        return assert_close
    return lambda a, e, name: assert_rel_close(a, e, name, b.tolerance)


@pytest.mark.parametrize("split", [1, 40, 64, 99])
@pytest.mark.parametrize("backend,device", SEQUENCE)
def test_split_resume_equals_one_pass(backend: Backend, device: str, split: int) -> None:
    x = _detached(100, dtype=backend_dtype(backend), device=device, rule=backend.rule)
    op = get_op(backend.rule, backend.name)
    check = _check(backend)
    o, s = op(
        x["q"],
        x["k"],
        x["v"],
        x["beta"],
        initial_state=x["initial_state"],
        output_final_state=True,
        chunk_size=32,
        **_extra(x),
    )
    a = slice(0, split)
    b = slice(split, None)
    o1, s1 = op(
        x["q"][:, a],
        x["k"][:, a],
        x["v"][:, a],
        x["beta"][:, a],
        initial_state=x["initial_state"],
        output_final_state=True,
        chunk_size=32,
        **_extra(x, a),
    )
    o2, s2 = op(
        x["q"][:, b],
        x["k"][:, b],
        x["v"][:, b],
        x["beta"][:, b],
        initial_state=s1,
        output_final_state=True,
        chunk_size=32,
        **_extra(x, b),
    )
    check(torch.cat([o1, o2], 1), o, "o")
    check(s2, s, "final state")


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("backend,device", SEQUENCE)
def test_varlen_packed_equals_separate(backend: Backend, device: str, normalize: bool) -> None:
    if normalize and not get_rule(backend.rule).normalize:
        pytest.skip(f"rule {backend.rule!r} has no attention normalisation")
    lengths = [5, 64, 1, 70]
    seqs = [
        make_inputs(
            1,
            n,
            3,
            20,
            12,
            dtype=backend_dtype(backend),
            device=device,
            positive=normalize,
            normalize=normalize,
            seed=i,
            rule=backend.rule,
        )
        for i, n in enumerate(lengths)
    ]
    seqs = [{n: t.detach() for n, t in x.items()} for x in seqs]
    check = _check(backend)
    s0 = torch.cat([s["initial_state"] for s in seqs], 0)  # [N, H, dk, dv]
    packed = {n: torch.cat([s[n] for s in seqs], 1) for n in seqs[0] if n != "initial_state"}
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=device)
    op = get_op(backend.rule, backend.name)
    o, s = op(
        packed["q"],
        packed["k"],
        packed["v"],
        packed["beta"],
        initial_state=s0,
        normalize=normalize,
        output_final_state=True,
        cu_seqlens=cu,
        chunk_size=16,
        **_extra(packed),
    )
    outs, states = [], []
    for x in seqs:
        o_i, s_i = op(
            x["q"],
            x["k"],
            x["v"],
            x["beta"],
            initial_state=x["initial_state"],
            normalize=normalize,
            output_final_state=True,
            chunk_size=16,
            **_extra(x),
        )
        outs.append(o_i)
        states.append(s_i)
    check(o, torch.cat(outs, 1), "packed o")
    check(s, torch.cat(states, 0), "per-sequence final states")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend,device", SEQUENCE)
def test_low_precision_close_to_float64(backend: Backend, device: str, dtype: torch.dtype) -> None:
    """Half-precision inputs: finite, a float32 state, output, state and gradients close to the
    float64 naive form (relative error; every backend that takes ``dtype``)."""
    if dtype not in backend.dtypes:
        pytest.skip(f"{backend.name} does not take {dtype}")
    x = make_inputs(2, 150, 3, 32, 32, device=device, rule=backend.rule)
    o_ref, s_ref, g_ref = run_with_grads(get_op(backend.rule, "naive"), x)
    low = {n: t.detach().to(dtype if n != "initial_state" else torch.float32).requires_grad_() for n, t in x.items()}
    o, s, g = run_with_grads(get_op(backend.rule, backend.name), low, chunk_size=32)
    assert o.dtype == dtype and s.dtype == torch.float32
    for name, a, e in [("o", o, o_ref), ("state", s, s_ref)] + [(f"grad of {n}", g[n], g_ref[n]) for n in g_ref]:
        assert_rel_close(a, e, f"{dtype} {name}", 3e-2)


@pytest.mark.parametrize(
    "backend,device", [c for c in SEQUENCE + backend_cases(one_token=True) if torch.float64 in c.values[0].dtypes]
)
def test_gradcheck(backend: Backend, device: str) -> None:
    T = 1 if backend.one_token else 7
    x = make_inputs(1, T, 2, 3, 2, device=device, rule=backend.rule)
    op = get_op(backend.rule, backend.name)
    names = [n for n in x if n not in STANDARD]

    def f(q, k, v, beta, s0, *extra):
        return op(q, k, v, beta, initial_state=s0, output_final_state=True, chunk_size=4, **dict(zip(names, extra)))

    assert torch.autograd.gradcheck(f, tuple(x[n] for n in STANDARD + tuple(names)))


def test_state_is_float32_for_half_inputs() -> None:
    x = _detached(10, dtype=torch.bfloat16)
    _, s = get_op("delta", "chunk")(x["q"], x["k"], x["v"], x["beta"], output_final_state=True)
    assert s.dtype == torch.float32


def test_no_final_state_unless_asked() -> None:
    x = _detached(10)
    o, s = get_op("sum", "chunk")(x["q"], x["k"], x["v"])
    assert s is None and o.shape == x["v"].shape
