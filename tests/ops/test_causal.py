"""Causality under non-finite inputs (``fastweights.ops.nonfinite``) and the rules' input bounds.

A NaN or Inf at position t, in any input of any registered op (q, k, v, beta and the rule's other
per-token inputs), leaves every output before t bitwise equal to that of the clean inputs, and
every other head, batch entry and packed sequence too; from t on the poisoned outputs are NaN (a
bad query: its own output only), and so is the final state of a sequence with a bad write.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

import pytest
import torch
from torch import Tensor

from fastweights.ops import Op, get_op, get_rule

from .helpers import STANDARD, backend_cases, backend_dtype, make_inputs

B, T, H, D, CHUNK = 2, 21, 2, 8, 8
AT = 13  #: the poisoned position: inside the chunk [8, 16), after a whole chunk
POISON = ((0, 1, float("nan")), (1, 0, float("inf")))  #: (batch entry, head, value) poisoned at AT


def _per_token(rule: str):
    """The inputs that can be poisoned: the query and every write."""
    return ["q", "k", "v", *get_rule(rule).inputs]


def _run(op: Op, x: Dict[str, Optional[Tensor]], **kw):
    extra = {n: t for n, t in x.items() if n not in STANDARD}
    return op(
        x["q"],
        x["k"],
        x["v"],
        x["beta"],
        initial_state=x["initial_state"],
        output_final_state=True,
        chunk_size=CHUNK,
        **extra,
        **kw,
    )


def _inputs(backend, device: str, normalize: bool = False, batch: int = B) -> Dict[str, Optional[Tensor]]:
    x = make_inputs(
        batch,
        T,
        H,
        D,
        D,
        dtype=backend_dtype(backend),
        device=device,
        positive=normalize,
        normalize=normalize,
        rule=backend.rule,
    )
    return {n: t.detach() if t is not None else None for n, t in x.items()}


def _poisoned(x: Dict[str, Optional[Tensor]], name: str, where: Sequence[tuple]) -> Dict[str, Optional[Tensor]]:
    """``x`` with ``x[name][b, t, h]`` (its entry 3 for a ``[B, T, H, D]`` input) set to ``value``
    for each ``(b, t, h, value)`` of ``where``."""
    bad = dict(x)
    bad[name] = x[name].clone()
    for b, t, h, value in where:
        bad[name][(b, t, h, 3) if x[name].dim() == 4 else (b, t, h)] = value
    return bad


def _normalize_cases():
    """Every sequence backend, and with ``normalize=True`` those of rules that normalise (rule-level
    work shared by all backends: the emulated, slow ones are left out)."""
    return [
        pytest.param(*p.values, norm, id=f"{p.id}{'-normalize' if norm else ''}", marks=p.marks)
        for p in backend_cases(exclude=())
        for norm in (False, True)
        if not norm or (get_rule(p.values[0].rule).normalize and not p.values[0].emulated)
    ]


@pytest.mark.parametrize("backend,device,normalize", _normalize_cases())
def test_a_nonfinite_input_changes_no_earlier_output(backend, device, normalize):
    op = get_op(backend.rule, backend.name)
    x = _inputs(backend, device, normalize)
    o, s = _run(op, x, normalize=normalize)
    assert torch.isfinite(o).all() and torch.isfinite(s).all()
    for name in _per_token(backend.rule):
        o_bad, s_bad = _run(op, _poisoned(x, name, [(b, AT, h, value) for b, h, value in POISON]), normalize=normalize)
        assert torch.equal(o_bad[:, :AT], o[:, :AT]), f"{name}: an earlier output changed"
        for b, h, value in POISON:
            what = f"{name} = {value} at t = {AT} in batch entry {b}, head {h}"
            assert torch.equal(o_bad[b, :, 1 - h], o[b, :, 1 - h]), f"{what}: the other head changed"
            if name == "q":  # a read: its own output alone
                assert o_bad[b, AT, h].isnan().all(), f"{what}: the output at t is finite"
                assert torch.equal(o_bad[b, AT + 1 :], o[b, AT + 1 :]), f"{what}: a later output changed"
                assert torch.equal(s_bad[b], s[b]), f"{what}: the final state changed"
            else:  # a write: everything after it, and the final state
                assert o_bad[b, AT:, h].isnan().all(), f"{what}: an output from t on is finite"
                assert s_bad[b, h].isnan().all(), f"{what}: the final state is finite"
                assert torch.equal(s_bad[b, 1 - h], s[b, 1 - h]), f"{what}: the other head's state changed"


@pytest.mark.parametrize("backend,device", backend_cases(exclude=()))
def test_a_nonfinite_input_in_one_packed_sequence_leaves_the_others_alone(backend, device):
    """Sequences [0, 7), [7, 15), [15, 21) packed; a bad write at t = 10 poisons the second alone, from t on."""
    op = get_op(backend.rule, backend.name)
    x = _inputs(backend, device, batch=1)
    x["initial_state"] = x["initial_state"].expand(3, -1, -1, -1).clone()  # [N = 3, H, d_k, d_v]
    cu = torch.tensor([0, 7, 15, T])
    o, s = _run(op, x, cu_seqlens=cu)
    for name in _per_token(backend.rule)[1:]:
        o_bad, s_bad = _run(op, _poisoned(x, name, [(0, 10, 0, float("nan"))]), cu_seqlens=cu)
        assert torch.equal(o_bad[0, :10], o[0, :10]), f"{name}: an earlier output changed"
        assert o_bad[0, 10:15, 0].isnan().all(), f"{name}: an output of the poisoned sequence from t on is finite"
        assert torch.equal(o_bad[0, 15:], o[0, 15:]) and torch.equal(o_bad[0, :, 1], o[0, :, 1]), (
            f"{name}: the next sequence or another head changed"
        )
        assert s_bad[1, 0].isnan().all(), f"{name}: the poisoned sequence's final state is finite"
        assert torch.equal(s_bad[[0, 2]], s[[0, 2]]) and torch.equal(s_bad[1, 1], s[1, 1]), (
            f"{name}: another sequence's final state changed"
        )


@pytest.mark.parametrize("backend,device", backend_cases(exclude=()))
def test_gradients_of_earlier_outputs_ignore_a_later_nonfinite_input(backend, device):
    """Padding garbage cannot reach training: the gradients of the outputs before a NaN value (and
    of the other heads) are those of the clean inputs, and finite."""
    op = get_op(backend.rule, backend.name)
    clean = _inputs(backend, device)
    dirty = _poisoned(clean, "v", [(0, AT, 1, float("nan"))])
    do = torch.randn(clean["v"].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    keep = torch.ones(B, T, H, 1, dtype=torch.bool)  # [B, T, H, 1]: the outputs the loss reads
    keep[0, AT:, 1] = False
    grads = []
    for x in (clean, dirty):
        x = {n: t.clone().requires_grad_() if t is not None else None for n, t in x.items()}
        o, _ = _run(op, x)
        (o.masked_fill(~keep.to(o.device), 0.0) * do.to(o)).sum().backward()
        grads.append({n: t.grad for n, t in x.items() if t is not None})
    for name, g in grads[1].items():
        assert torch.isfinite(g).all(), f"grad of {name}: not finite"
        if name != "initial_state":
            g, ref = g[:, :AT], grads[0][name][:, :AT]
        else:
            ref = grads[0][name]
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6, msg=lambda m: f"grad of {name}: {m}")  # noqa: B023 (used within this iteration)


@pytest.mark.parametrize("backend,device", backend_cases(one_token=True))
def test_a_nonfinite_write_in_one_token_steps_poisons_the_carried_state(backend, device):
    """Stepping a one-token backend: steps before the bad write are unchanged, every later one is NaN."""
    op = get_op(backend.rule, backend.name)
    x = _inputs(backend, device)
    for value in (float("nan"), float("inf")):
        outs = []
        for inputs in (x, _poisoned(x, "v", [(0, AT, 1, value)])):
            state, o = inputs["initial_state"], []
            for t in range(T):
                step = {n: v[:, t : t + 1] if v is not None and n != "initial_state" else v for n, v in inputs.items()}
                o_t, state = _run(op, {**step, "initial_state": state})
                o.append(o_t)
            outs.append((torch.cat(o, 1), state))
        (o, s), (o_bad, s_bad) = outs
        assert torch.equal(o_bad[:, :AT], o[:, :AT]) and torch.equal(o_bad[1], o[1])
        assert o_bad[0, AT:, 1].isnan().all() and s_bad[0, 1].isnan().all()


def test_a_finite_value_outside_a_rules_bounds_is_an_error():
    """A rule's ``bounds`` (here the delta rule's rate in [0, 2]): a finite value outside is a
    ValueError naming the input, the interval and the values; values inside, and non-finite values
    (handled causally), pass."""
    assert get_rule("delta").bounds == {"beta": (0.0, 2.0)}
    op = get_op("delta", "chunk")
    x = {n: t.detach() if t is not None else None for n, t in make_inputs(1, T, H, D, D).items()}
    for beta in (2.0, 0.0):
        _run(op, {**x, "beta": torch.full_like(x["beta"], beta)})
    o, _ = _run(op, _poisoned(x, "beta", [(0, AT, 1, float("inf"))]))
    assert o[0, AT:, 1].isnan().all() and torch.isfinite(o[0, :AT]).all()
    for beta in (10.0, -0.5):
        with pytest.raises(
            ValueError,
            match=rf"beta must lie in \[0, 2\] for rule 'delta', got 1 value\(s\) outside, "
            rf"from {beta:g} to {beta:g}",
        ):
            _run(op, _poisoned(x, "beta", [(0, 4, 0, beta)]))


def test_the_gated_delta_rules_decay_is_bounded():
    """Its log decay g = log(alpha) must be <= 0 (alpha <= 1): a growing memory is refused."""
    assert get_rule("gated_delta").bounds == {"beta": (0.0, 2.0), "g": (-math.inf, 0.0)}
    x = {n: t.detach() if t is not None else None for n, t in make_inputs(1, T, H, D, D, rule="gated_delta").items()}
    with pytest.raises(ValueError, match=r"g must lie in \[-inf, 0\] for rule 'gated_delta'"):
        _run(get_op("gated_delta", "chunk"), {**x, "g": x["g"].abs() + 0.1})
