"""What is special about the Triton backend (its op results are covered by the registry-driven tests):
wide keys up to its limit, a clear error above it, memory linear in T, and each launch taking the
configuration the launch plan gives (the one `fastweights bench kernels` checks)."""

from __future__ import annotations

import pytest
import torch

from fastweights.ops import get_op, list_ops

from .helpers import assert_rel_close, make_inputs, run_with_grads

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(
    ("delta", "triton") not in list_ops(device=DEVICE),
    reason="triton is not installed (or neither CUDA nor TRITON_INTERPRET=1)",
)


@pytest.mark.parametrize("rule", ["sum", "delta", "gated_delta"])
def test_widest_keys(rule: str) -> None:
    """d_k = 256 (DPFP-2 on 64-wide heads: four key blocks in the scans) with an odd length, every gradient."""
    x = make_inputs(1, 37, 1, 256, 20, device=DEVICE, rule=rule)
    expected = run_with_grads(get_op(rule, "naive"), x)
    low = {n: t.detach().float().requires_grad_() for n, t in x.items()}
    o, s, g = run_with_grads(get_op(rule, "triton"), low, chunk_size=16)
    for name, a, e in [("o", o, expected[0]), ("state", s, expected[1])] + [(n, g[n], expected[2][n]) for n in g]:
        assert_rel_close(a, e, name, 1e-4)


def test_wider_than_the_limit_is_refused() -> None:
    q = torch.randn(1, 4, 1, 257, device=DEVICE)
    with pytest.raises(
        ValueError,
        match=r"impl 'triton' of rule 'delta' cannot run these inputs: its largest d_k is 256, "
        r"got d_k = 257",
    ):
        get_op("delta", "triton")(q, q, torch.randn(1, 4, 1, 8, device=DEVICE))


@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_saved_for_backward_is_linear_in_T(rule: str) -> None:
    """Saved: q, k, v, beta, S_0 and (delta rule) W, U, L^-1: O(T (d_k + d_v + C)); no state per token or chunk."""
    T, d, C, H = 256, 16, 16, 2
    x = make_inputs(1, T, 2, d, d, device=DEVICE, dtype=torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        get_op(rule, "triton")(x["q"], x["k"], x["v"], x["beta"], initial_state=x["initial_state"], chunk_size=C)
    bound = H * T * (5 * d + C + 1) + H * d * d  # q, k, v, W, U [T, d]; L^-1 [T, C]; beta [T]; S_0
    assert saved and sum(saved) <= bound < H * T * d * d  # H T d^2: one state per token


@pytest.mark.parametrize("rule", ["sum", "delta", "gated_delta"])
@pytest.mark.parametrize("dtype,d_k", [(torch.float32, 24), (torch.float32, 100), (torch.float16, 24)])
def test_default_chunk_size_over_several_chunks(rule: str, dtype: torch.dtype, d_k: int) -> None:
    """The op's default chunk_size (64) on a sequence of several chunks: where the kernels use shorter
    chunks (fp32: 32, or 16 for d_k > 64), the host's chunk bookkeeping follows them."""
    x = make_inputs(1, 100, 2, d_k, 20, device=DEVICE, rule=rule)
    expected = run_with_grads(get_op(rule, "naive"), x)
    low = {n: t.detach().to(dtype if n != "initial_state" else torch.float32).requires_grad_() for n, t in x.items()}
    o, s, g = run_with_grads(get_op(rule, "triton"), low)
    tol = 1e-4 if dtype == torch.float32 else 5e-3
    for name, a, e in [("o", o, expected[0]), ("state", s, expected[1])] + [(n, g[n], expected[2][n]) for n in g]:
        assert_rel_close(a, e, name, tol)


def test_every_kernel_of_a_call_uses_the_hosts_chunk_length() -> None:
    """One chunk length per call: every candidate of every kernel has the ``BT`` the host lays chunks out with."""
    from fastweights.ops._triton.launch import kernel_chunk, plan

    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for capability in (80, 86, 89, 90):
            for d_k in (16, 64, 100, 256):
                for chunk in (16, 32, 64):
                    for delta, gated in ((False, False), (True, False), (True, True)):
                        BT = kernel_chunk(dtype, d_k, chunk, capability)
                        for options in plan(delta, dtype, d_k, 48, chunk, capability, gated).values():
                            assert {c.constexprs["BT"] for c in options} == {BT}
