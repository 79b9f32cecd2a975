"""Inputs and the reference comparison shared by the op tests."""

from __future__ import annotations

from typing import Dict, List, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from fastweights.ops import Backend, get_op, get_rule, list_backends

STANDARD = ("q", "k", "v", "beta", "initial_state")  #: the inputs every rule takes


def make_inputs(
    B: int,
    T: int,
    H: int,
    dk: int,
    dv: int,
    *,
    dtype=torch.float64,
    device="cpu",
    positive: bool = False,
    with_state: bool = True,
    normalize: bool = False,
    seed: int = 0,
    rule: Optional[str] = None,
) -> Dict[str, Optional[Tensor]]:
    """Random leaf tensors: keys L2-normalised (the delta rule needs normalised keys), rates in (0, 1);
    ``normalize``: the state has one more column, a positive running key sum ``z``; ``rule``: also
    that rule's other learned per-token inputs, ``activation(randn)`` as a layer would make them."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, dk, generator=g, dtype=torch.float64)
    k = torch.randn(B, T, H, dk, generator=g, dtype=torch.float64)
    if positive:
        q, k = F.elu(q) + 1, F.elu(k) + 1
    k = F.normalize(k, dim=-1)
    v = torch.randn(B, T, H, dv, generator=g, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64) * 0.9 + 0.05
    s0 = torch.randn(B, H, dk, dv, generator=g, dtype=torch.float64) * 0.5 if with_state else None
    if with_state and rule is not None and not get_rule(rule).state.is_matrix:
        s0 = reached_state(rule, B, H, dk, dv, seed)
    if s0 is not None and normalize:
        s0 = torch.cat([s0, torch.rand(B, H, dk, 1, generator=g, dtype=torch.float64) + 0.5], -1)  # [S | z]
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # the state is never half
    out = dict(q=q, k=k, v=v, beta=beta, initial_state=s0)
    if rule is not None:
        spec = get_rule(rule)
        for name, learned in spec.learned.items():
            shape = (B, T, H, dk) if name in spec.per_channel else (B, T, H)  # per head, or per key channel
            out[name] = learned.activation(torch.randn(*shape, generator=g, dtype=torch.float64))
    return {
        n: (
            t.to(device=device, dtype=state_dtype if n == "initial_state" else dtype).requires_grad_()
            if t is not None
            else None
        )
        for n, t in out.items()
    }


def reached_state(rule: str, B: int, H: int, dk: int, dv: int, seed: int) -> Tensor:
    """The state ``[B, H, *state]`` that ``rule``'s naive form reaches from zeros in 4 random tokens: for a
    state that is not one matrix, a valid one whatever its structure (the Mesa rule's ``H`` is
    positive semi-definite), where random entries would not be."""
    x = make_inputs(B, 4, H, dk, dv, with_state=False, rule=rule, seed=seed + 1)
    extra = {n: t.detach() for n, t in x.items() if n not in STANDARD}
    _, s = get_op(rule, "naive")(*(x[n].detach() for n in ("q", "k", "v", "beta")), output_final_state=True, **extra)
    return s.detach()


def run_with_grads(op, inputs: Dict[str, Optional[Tensor]], seed: int = 1, **kw):
    """Run ``op`` and backprop ``(o * do).sum() + (S_T * dS).sum()``; return outputs and all grads."""
    for t in inputs.values():
        if t is not None:
            t.grad = None
    extra = {n: t for n, t in inputs.items() if n not in STANDARD}
    o, s = op(
        inputs["q"],
        inputs["k"],
        inputs["v"],
        inputs["beta"],
        initial_state=inputs["initial_state"],
        output_final_state=True,
        **extra,
        **kw,
    )
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)
    ds = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s)
    ((o * do).sum() + (s * ds).sum()).backward()
    grads = {n: t.grad.clone() for n, t in inputs.items() if t is not None}
    return o.detach(), s.detach(), grads


def assert_close(actual: Tensor, expected: Tensor, name: str, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def assert_rel_close(actual: Tensor, expected: Tensor, name: str, tol: float) -> None:
    """``|actual - expected| / |expected| <= tol`` (Frobenius norms, in float64): for low-precision backends."""
    a, e = actual.double(), expected.double().to(actual.device)
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    rel = ((a - e).norm() / e.norm().clamp_min(1e-30)).item()
    assert rel <= tol, f"{name}: relative error {rel:.3g} > {tol:g}"


def assert_same_results(actual, expected, backend: Optional[Backend] = None) -> None:
    """Compare ``(o, final_state, grads)`` triples from :func:`run_with_grads`, every gradient included:
    to 1e-9 in float64, within ``backend.tolerance`` (relative) for a backend tested in lower precision."""
    (o, s, g), (o_ref, s_ref, g_ref) = actual, expected
    if o.dtype == torch.float64:
        check = assert_close
    else:

        def check(a: Tensor, e: Tensor, name: str) -> None:
            assert_rel_close(a, e, name, backend.tolerance)

    check(o, o_ref, "o")
    check(s, s_ref, "final state")
    assert set(g) == set(g_ref)
    for name in g_ref:
        check(g[name], g_ref[name], f"grad of {name}")


def backend_dtype(backend: Backend) -> torch.dtype:
    """The most precise dtype ``backend`` accepts: what it is tested in against the float64 naive form."""
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        if dtype in backend.dtypes:
            return dtype
    raise ValueError(f"backend {backend.name!r} declares no floating dtype")


def backend_cases(one_token: bool = False, exclude: tuple = ("naive",)) -> List:
    """``pytest.param(backend, device)`` for every registered backend on every device it declares
    (CUDA cases marked ``gpu`` and skipped without CUDA); sequence backends unless ``one_token``."""
    cases = []
    for device in ("cpu", "cuda"):
        for b in list_backends(device=device):
            if b.one_token != one_token or b.name in exclude:
                continue
            marks = (
                [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")]
                if device == "cuda"
                else []
            )
            cases.append(pytest.param(b, device, id=f"{b.rule}-{b.name}-{device}", marks=marks))
    return cases
