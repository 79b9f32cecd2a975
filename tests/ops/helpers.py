"""Inputs and the reference comparison shared by the op tests."""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor


def make_inputs(B: int, T: int, H: int, dk: int, dv: int, *, dtype=torch.float64, device="cpu",
                positive: bool = False, with_state: bool = True, seed: int = 0) -> Dict[str, Optional[Tensor]]:
    """Random leaf tensors: keys L2-normalised (the delta rule needs normalised keys), rates in (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, H, dk, generator=g, dtype=torch.float64)
    k = torch.randn(B, T, H, dk, generator=g, dtype=torch.float64)
    if positive:
        q, k = F.elu(q) + 1, F.elu(k) + 1
    k = F.normalize(k, dim=-1)
    v = torch.randn(B, T, H, dv, generator=g, dtype=torch.float64)
    beta = torch.rand(B, T, H, generator=g, dtype=torch.float64) * 0.9 + 0.05
    s0 = torch.randn(B, H, dk, dv, generator=g, dtype=torch.float64) * 0.5 if with_state else None
    state_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # the state is never half
    out = dict(q=q, k=k, v=v, beta=beta, initial_state=s0)
    return {n: (t.to(device=device, dtype=state_dtype if n == "initial_state" else dtype).requires_grad_()
                if t is not None else None) for n, t in out.items()}


def run_with_grads(op, inputs: Dict[str, Optional[Tensor]], seed: int = 1, **kw):
    """Run ``op`` and backprop ``(o * do).sum() + (S_T * dS).sum()``; return outputs and all grads."""
    for t in inputs.values():
        if t is not None:
            t.grad = None
    o, s = op(inputs["q"], inputs["k"], inputs["v"], inputs["beta"], initial_state=inputs["initial_state"],
              output_final_state=True, **kw)
    g = torch.Generator().manual_seed(seed)
    do = torch.randn(o.shape, generator=g, dtype=torch.float64).to(o)
    ds = torch.randn(s.shape, generator=g, dtype=torch.float64).to(s)
    ((o * do).sum() + (s * ds).sum()).backward()
    grads = {n: t.grad.clone() for n, t in inputs.items() if t is not None}
    return o.detach(), s.detach(), grads


def assert_close(actual: Tensor, expected: Tensor, name: str, rtol: float = 1e-9, atol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def assert_same_results(actual, expected) -> None:
    """Compare ``(o, final_state, grads)`` triples from :func:`run_with_grads`, every gradient included."""
    (o, s, g), (o_ref, s_ref, g_ref) = actual, expected
    assert_close(o, o_ref, "o")
    assert_close(s, s_ref, "final state")
    assert set(g) == set(g_ref)
    for name in g_ref:
        assert_close(g[name], g_ref[name], f"grad of {name}")
