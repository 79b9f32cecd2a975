"""The flash-linear-attention adapter (``impl="fla"``) against the real ``fla-core`` package.

FLA's kernels are CUDA-only, but Triton's interpreter (``TRITON_INTERPRET=1``, which the test
suite sets on a machine without CUDA) runs them on CPU tensors once two of its gaps are bridged,
here and only for these tests: its autotuner would benchmark every configuration, which needs a GPU
driver (so only the first configuration is kept), and it leaves a ``for`` loop's counter a Python
int where compiled Triton makes it a tensor (FLA's kernels call ``i.to(tl.int64)`` on it). The
adapter's backends, declared for CUDA, are registered again for the CPU for these tests. bf16 is
left out: the interpreter's bf16 arithmetic is wrong. On a GPU the same comparison is the
registry-driven tests' ``fla`` cases.
"""

from __future__ import annotations

import ast
import dataclasses
import os

import pytest
import torch

from fastweights.ops import get_op, list_backends, register_backend

from .helpers import assert_rel_close, make_inputs, run_with_grads

pytest.importorskip("fla")
pytestmark = pytest.mark.skipif(
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") != "1",
    reason="runs FLA under Triton's interpreter on the CPU (on CUDA the registry-driven tests cover it)",
)


def _counter_as_tensor(self, node: ast.For) -> ast.For:
    """``ASTTransformer.visit_For``: a ``range`` loop's counter made a tensor first, as compiled Triton does."""
    node = self.generic_visit(node)
    func = node.iter.func if isinstance(node.iter, ast.Call) else None
    if isinstance(node.target, ast.Name) and getattr(func, "id", getattr(func, "attr", None)) == "range":
        name = node.target.id
        node.body.insert(0, ast.parse(f"{name} = interpreter_semantic.to_tensor({name}, False)").body[0])
    return node


@pytest.fixture(scope="module")
def fla_on_cpu():
    """The interpreter bridged for FLA while this module's tests run, and restored afterwards."""
    from triton.runtime import interpreter
    from triton.runtime.autotuner import Autotuner

    assert "visit_For" not in vars(interpreter.ASTTransformer), "this Triton's interpreter changed: revisit the bridge"
    prune = Autotuner.prune_configs
    Autotuner.prune_configs = lambda self, kwargs: prune(self, kwargs)[:1]
    interpreter.ASTTransformer.visit_For = _counter_as_tensor
    yield
    Autotuner.prune_configs = prune
    del interpreter.ASTTransformer.visit_For


@pytest.fixture
def fla_backends(fla_on_cpu, scratch_registries) -> None:
    """The ``fla`` backends, declared for the CPU in fp16 and fp32 for one test."""
    for backend in list_backends(device="cuda"):
        if backend.name == "fla":
            register_backend(dataclasses.replace(backend, devices=("cpu",), dtypes=(torch.float16, torch.float32)))


CASES = [
    ("delta", torch.float16, 5e-3),  # FLA's delta rule refuses float32
    ("gated_delta", torch.float16, 5e-3),
    ("gated_delta", torch.float32, 1e-5),
    ("sum", torch.float16, 5e-3),
    ("sum", torch.float32, 1e-5),
]


@pytest.mark.parametrize("rule,dtype,tol", CASES)
@pytest.mark.parametrize("packed", [False, True])
def test_fla_equals_the_definition(fla_backends, rule: str, dtype: torch.dtype, tol: float, packed: bool) -> None:
    """Outputs, final state and every gradient (initial state included) against the naive form in
    float64: odd widths (the adapter pads them), a scale, two chunks, packed sequences."""
    B, cu = (1, torch.tensor([0, 29, 70])) if packed else (2, None)
    x = make_inputs(B, 70, 2, 15, 17, rule=rule)
    if packed:
        x["initial_state"] = torch.cat([x["initial_state"]] * 2).detach().requires_grad_()  # [N = 2, H, d_k, d_v]
    expected = run_with_grads(get_op(rule, "naive"), x, scale=0.7, cu_seqlens=cu)
    low = {n: t.detach().to(torch.float32 if n == "initial_state" else dtype).requires_grad_() for n, t in x.items()}
    o, s, grads = run_with_grads(get_op(rule, "fla"), low, scale=0.7, cu_seqlens=cu)
    assert o.dtype == dtype and s.dtype == torch.float32
    assert_rel_close(o, expected[0], "o", tol)
    assert_rel_close(s, expected[1], "final state", tol)
    for name, g in grads.items():
        assert_rel_close(g, expected[2][name], f"d{name}", tol)
