"""A rule whose state is not one [d_k, d_v] matrix: the op, the layer, the LM and the test inputs
read its declared :class:`~fastweights.ops.StateShape`, with no edit outside its registration."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastweights.experiments.capacity import RetrievalModel
from fastweights.experiments.retrieval import RetrievalBatch
from fastweights.layers import FastWeightAttention
from fastweights.models import LanguageModel, LMConfig
from fastweights.ops import RuleSpec, StateShape, get_op, get_rule, register_rule
from fastweights.ops.torch_form import torch_form

from .helpers import make_inputs

GAMMA = 0.5


def two_memories(q, k, v, beta, S, chunk_size):
    """``F_t = (1 - GAMMA beta_t) F_{t-1} + beta_t k_t v_t^T``, ``M_t = M_{t-1} + beta_t k_t v_t^T``,
    ``o_t = (F_t + M_t)^T q_t`` (a rate of 0 leaves both alone); the state ``S = [F | M]``:
    ``[B, H, d_k, 2 d_v]``. q, k: ``[B, H, T, d_k]``; v: ``[B, H, T, d_v]``; beta: ``[B, H, T]`` (None: 1)."""
    d_v = v.shape[-1]
    fast, slow = S[..., :d_v], S[..., d_v:]  # [B, H, d_k, d_v] each
    beta = q.new_ones(q.shape[:3]) if beta is None else beta
    outs = []
    for q_t, k_t, v_t, b_t in zip(q.unbind(2), k.unbind(2), v.unbind(2), beta.unbind(2)):  # each [B, H, (d)]
        b_t = b_t[..., None, None]  # [B, H, 1, 1]
        write = b_t * k_t[..., :, None] * v_t[..., None, :]  # [B, H, d_k, d_v]
        fast, slow = (1 - GAMMA * b_t) * fast + write, slow + write
        outs.append(torch.einsum("bhk,bhkv->bhv", q_t, fast + slow))  # [B, H, d_v]
    return torch.stack(outs, dim=2), torch.cat([fast, slow], -1)  # [B, H, T, d_v], [B, H, d_k, 2 d_v]


@pytest.fixture
def rule(scratch_registries) -> str:
    register_rule(
        RuleSpec(
            name="two_memories",
            summary=f"F_t = (1 - {GAMMA} beta_t) F_(t-1) + beta_t k_t v_t^T, M_t = M_(t-1) + beta_t k_t v_t^T, "
            "o_t = (F_t + M_t)^T q_t",
            apply=lambda run, call: run(call),
            normalize=False,
            state=StateShape("d_k, 2 d_v", lambda d_k, d_v: (d_k, 2 * d_v)),
            forms=(
                torch_form("two_memories", "naive", two_memories, priority=0),
                torch_form("two_memories", "step", two_memories, one_token=True),
            ),
        )
    )
    return "two_memories"


def test_the_op_makes_checks_and_returns_the_declared_state(rule: str) -> None:
    q, k, v = torch.randn(3, 2, 5, 3, 4, dtype=torch.float64).unbind(0)  # each [B=2, T=5, H=3, d=4]
    o, S = get_op(rule)(q, k, v, output_final_state=True)
    assert S.shape == (2, 3, 4, 8)
    writes = torch.einsum("bthk,bthv->bthkv", k, v)  # [B, T, H, d_k, d_v]
    decay = GAMMA ** torch.arange(4, -1, -1, dtype=torch.float64)  # [T]: GAMMA^(T - 1 - t)
    torch.testing.assert_close(S[..., :4], torch.einsum("t,bthkv->bhkv", decay, writes))
    torch.testing.assert_close(S[..., 4:], writes.sum(1))
    with pytest.raises(ValueError, match=r"initial_state must have shape \[N, H, d_k, 2 d_v\] = \[2, 3, 4, 8\]"):
        get_op(rule)(q, k, v, initial_state=torch.zeros(2, 3, 4, 4, dtype=torch.float64))
    o2, S2 = get_op(rule)(
        q[:, 2:],
        k[:, 2:],
        v[:, 2:],
        initial_state=get_op(rule)(q[:, :2], k[:, :2], v[:, :2], output_final_state=True)[1],
        output_final_state=True,
    )
    torch.testing.assert_close(o2, o[:, 2:])
    torch.testing.assert_close(S2, S)


def test_a_nonfinite_write_poisons_the_declared_state(rule: str) -> None:
    q, k, v = torch.randn(3, 2, 5, 3, 4).unbind(0)
    k[1, 2, 0, 0] = float("nan")  # sequence 1, head 0, from token 2 on
    o, S = get_op(rule)(q, k, v, output_final_state=True)
    assert S.shape == (2, 3, 4, 8)
    assert S[1, 0].isnan().all() and S[1, 1:].isfinite().all() and S[0].isfinite().all()
    assert o[1, 2:, 0].isnan().all() and o[1, :2].isfinite().all()


def test_layer_and_lm_make_and_carry_the_declared_state(rule: str) -> None:
    torch.manual_seed(0)
    layer = FastWeightAttention(d_model=16, n_heads=2, rule=rule)
    assert layer.init_state(3)["S"].shape == (3, 2, 8, 16)
    x = torch.randn(3, 5, 16)
    y, state = layer(x)
    assert state["S"].shape == (3, 2, 8, 16)
    s = layer.init_state(3)
    for t in range(5):  # the step form from the empty state equals the parallel form
        y_t, s = layer.step(x[:, t], s)
        torch.testing.assert_close(y_t, y[:, t], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s["S"], state["S"], atol=1e-5, rtol=1e-5)

    lm = LanguageModel(LMConfig(vocab_size=11, d_model=16, n_layers=2, n_heads=2, d_ff=32, attention=f"linear+{rule}"))
    lm.eval()
    idx = torch.randint(0, 11, (2, 6))
    logits = lm(idx)[0]  # [B, T, V]
    s = lm.init_state(2)
    assert s["layers"][0]["S"].shape == (2, 2, 8, 16)
    for t in range(6):
        step_logits, s = lm.step(idx[:, t], s)
        torch.testing.assert_close(step_logits, logits[:, t], atol=1e-4, rtol=1e-4)


def test_test_inputs_follow_the_declaration(rule: str) -> None:
    assert make_inputs(2, 3, 4, 5, 6, rule=rule)["initial_state"].shape == (2, 4, 5, 12)
    assert str(get_rule(rule).state) == "[N, H, d_k, 2 d_v]" and not get_rule(rule).state.is_matrix
    assert get_rule("delta").state.is_matrix and get_rule("delta").state(5, 7) == (5, 7)


def test_capacity_reads_the_declared_state_through_the_op(rule: str) -> None:
    """The capacity model reads a state that is not one matrix with the rule's own op (queries as
    tokens that write nothing): here ``(F + M)^T q`` from the state its writes left."""
    torch.manual_seed(0)
    model = RetrievalModel(f"identity+{rule}", n_keys=6, d=8).double()
    keys, values = torch.randint(0, 6, (2, 2, 5)).unbind(0)  # [B = 2, T = 5] each
    batch = RetrievalBatch(keys, values, keys[:, :3], values[:, :3])
    y = model(batch)  # [B, Q, S]
    v = F.one_hot(values, 6).double()  # [B, T, S]
    k, _, _ = model._write_inputs({"k": model.key_proj(torch.cat([model.embed(keys), v], -1))})  # [B, T, 1, d]
    _, S = get_op(rule)(torch.zeros_like(k), k, v[:, :, None], output_final_state=True)  # [B, 1, d, 2 S]
    q = model.feature_map.forward_query(model.query_proj(model.embed(batch.queries)))  # [B, Q, d]
    expected = torch.einsum("bqk,bks->bqs", q, S[:, 0, :, :6] + S[:, 0, :, 6:])  # (F + M)^T q
    torch.testing.assert_close(y, expected)
