"""Carried state, packed variable-length sequences, low precision and gradcheck, for every backend."""

from __future__ import annotations

import pytest
import torch

from fastweights.ops import Backend, get_op, list_rules

from .helpers import assert_close, assert_rel_close, backend_cases, backend_dtype, make_inputs

SEQUENCE = backend_cases(exclude=())


def _detached(T: int, B: int = 2, H: int = 3, dk: int = 20, dv: int = 12, dtype=torch.float64, device="cpu"):
    inp = make_inputs(B, T, H, dk, dv, dtype=dtype, device=device)
    return {n: (t.detach() if t is not None else None) for n, t in inp.items()}


def _check(b: Backend):
    """Equality to 1e-9 in float64, else within the backend's tolerance."""
    if backend_dtype(b) == torch.float64:
        return assert_close
    return lambda a, e, name: assert_rel_close(a, e, name, b.tolerance)


@pytest.mark.parametrize("split", [1, 40, 64, 99])
@pytest.mark.parametrize("backend,device", SEQUENCE)
def test_split_resume_equals_one_pass(backend: Backend, device: str, split: int) -> None:
    x = _detached(100, dtype=backend_dtype(backend), device=device)
    op = get_op(backend.rule, backend.name)
    check = _check(backend)
    o, s = op(x["q"], x["k"], x["v"], x["beta"], initial_state=x["initial_state"], output_final_state=True, chunk_size=32)
    a = slice(0, split)
    b = slice(split, None)
    o1, s1 = op(x["q"][:, a], x["k"][:, a], x["v"][:, a], x["beta"][:, a], initial_state=x["initial_state"],
                output_final_state=True, chunk_size=32)
    o2, s2 = op(x["q"][:, b], x["k"][:, b], x["v"][:, b], x["beta"][:, b], initial_state=s1,
                output_final_state=True, chunk_size=32)
    check(torch.cat([o1, o2], 1), o, "o")
    check(s2, s, "final state")


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("backend,device", SEQUENCE)
def test_varlen_packed_equals_separate(backend: Backend, device: str, normalize: bool) -> None:
    lengths = [5, 64, 1, 70]
    seqs = [make_inputs(1, n, 3, 20, 12, dtype=backend_dtype(backend), device=device, positive=normalize,
                        normalize=normalize, seed=i) for i, n in enumerate(lengths)]
    seqs = [{n: t.detach() for n, t in x.items()} for x in seqs]
    check = _check(backend)
    s0 = torch.cat([s["initial_state"] for s in seqs], 0)  # [N, H, dk, dv]
    packed = {n: torch.cat([s[n] for s in seqs], 1) for n in ("q", "k", "v", "beta")}
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)), dtype=torch.int32, device=device)
    op = get_op(backend.rule, backend.name)
    o, s = op(packed["q"], packed["k"], packed["v"], packed["beta"], initial_state=s0, normalize=normalize,
              output_final_state=True, cu_seqlens=cu, chunk_size=16)
    outs, states = [], []
    for x in seqs:
        o_i, s_i = op(x["q"], x["k"], x["v"], x["beta"], initial_state=x["initial_state"], normalize=normalize,
                      output_final_state=True, chunk_size=16)
        outs.append(o_i)
        states.append(s_i)
    check(o, torch.cat(outs, 1), "packed o")
    check(s, torch.cat(states, 0), "per-sequence final states")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rule", list_rules())
def test_low_precision_close_to_float32(rule: str, dtype: torch.dtype) -> None:
    x = _detached(150, dk=32, dv=32, dtype=torch.float32)
    op = get_op(rule, "chunk")
    o32, s32 = op(x["q"], x["k"], x["v"], x["beta"], output_final_state=True)
    o_lo, s_lo = op(x["q"].to(dtype), x["k"].to(dtype), x["v"].to(dtype), x["beta"].to(dtype), output_final_state=True)
    assert o_lo.dtype == dtype and s_lo.dtype == torch.float32
    assert torch.isfinite(o_lo).all() and torch.isfinite(s_lo).all()
    rel = (o_lo.float() - o32).norm() / o32.norm()
    assert rel < 3e-2, f"relative error {rel:.3g} of {dtype} output vs float32"
    rel_s = (s_lo - s32).norm() / s32.norm()
    assert rel_s < 3e-2, f"relative error {rel_s:.3g} of {dtype} state vs float32"


@pytest.mark.parametrize("backend,device", [c for c in SEQUENCE + backend_cases(one_token=True)
                                            if torch.float64 in c.values[0].dtypes])
def test_gradcheck(backend: Backend, device: str) -> None:
    T = 1 if backend.one_token else 7
    x = make_inputs(1, T, 2, 3, 2, device=device)
    op = get_op(backend.rule, backend.name)

    def f(q, k, v, beta, s0):
        return op(q, k, v, beta, initial_state=s0, output_final_state=True, chunk_size=4)

    assert torch.autograd.gradcheck(f, (x["q"], x["k"], x["v"], x["beta"], x["initial_state"]))


def test_state_is_float32_for_half_inputs() -> None:
    x = _detached(10, dtype=torch.bfloat16)
    _, s = get_op("delta", "chunk")(x["q"], x["k"], x["v"], x["beta"], output_final_state=True)
    assert s.dtype == torch.float32


def test_no_final_state_unless_asked() -> None:
    x = _detached(10)
    o, s = get_op("sum", "chunk")(x["q"], x["k"], x["v"])
    assert s is None and o.shape == x["v"].shape
