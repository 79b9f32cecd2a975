"""The registry and dispatcher: impl='auto' picks per call and says which, declarations are enforced,
a new rule or backend plugs in without touching layers, and the FLA adapter keeps the contract."""

from __future__ import annotations

import logging
import sys
import types
from dataclasses import replace

import pytest
import torch

from fastweights.layers import FastWeightAttention
from fastweights.layers.spec import list_attentions, parse_attention
from fastweights.ops import (
    Backend,
    Op,
    RuleSpec,
    get_op,
    get_rule,
    list_backends,
    list_ops,
    list_rules,
    register_backend,
    register_rule,
)
from fastweights.ops.backends import fla

from .helpers import assert_close, make_inputs


def _inputs(dtype=torch.float32, T: int = 20, dk: int = 8, dv: int = 6):
    x = make_inputs(1, T, 2, dk, dv, dtype=dtype, with_state=False)
    return [x[n].detach() for n in ("q", "k", "v", "beta")]


def _recording(name: str, calls: list):
    """A backend run that records its name and computes with the chunk form."""
    chunk = get_op("sum", "chunk").backend.run

    def run(*args):
        calls.append(name)
        return chunk(*args)

    return run


def test_auto_picks_the_training_form_on_cpu_and_says_so(caplog) -> None:
    """chunk where a rule has one (else checkpoint: the general FWPs, the channel-gated delta rule),
    logged and in ``last_impl``."""
    for rule in list_rules():
        expected = max(
            (b for b in list_backends(rule, device="cpu") if b.priority is not None and not b.emulated),
            key=lambda b: b.priority,
        ).name
        forms = {b.name for b in list_backends(rule, device="cpu")}
        assert expected == ("chunk" if "chunk" in forms else "checkpoint")
        op = get_op(rule)
        assert op.impl == "auto" and op.last_impl is None
        with caplog.at_level(logging.DEBUG, logger="fastweights.ops.registry"):
            op(*_inputs())
        assert op.last_impl == expected
        assert f"{rule} rule: impl '{expected}'" in caplog.text


def test_auto_takes_the_highest_priority_backend_that_supports_the_inputs(scratch_registries) -> None:
    calls: list = []
    register_backend(Backend("fast-narrow", "sum", _recording("fast-narrow", calls), max_d_k=8, priority=30))
    register_backend(Backend("fast-half", "sum", _recording("fast-half", calls), dtypes=(torch.bfloat16,), priority=40))
    op = get_op("sum")
    op(*_inputs(dk=8))
    op(*_inputs(dk=16))
    op(*_inputs(torch.bfloat16, dk=16))
    assert calls == ["fast-narrow", "fast-half"] and op.last_impl == "fast-half"
    op(*_inputs(dk=16))
    assert op.last_impl == "chunk"  # too wide for fast-narrow, not bf16 for fast-half: the torch fallback


def test_a_backend_may_decline_inputs_beyond_its_declared_limits(scratch_registries) -> None:
    """``Backend.check`` (the Triton kernels decline GPUs older than sm_80): auto takes the next backend,
    an explicit impl says why."""
    calls: list = []
    register_backend(
        Backend(
            "picky",
            "sum",
            _recording("picky", calls),
            priority=30,
            check=lambda q, d_v: "it needs d_v >= 8 here" if d_v < 8 else None,
        )
    )
    op = get_op("sum")
    op(*_inputs(dv=6))
    assert op.last_impl == "chunk" and calls == []
    op(*_inputs(dv=8))
    assert op.last_impl == "picky" and calls == ["picky"]
    with pytest.raises(ValueError, match=r"impl 'picky' of rule 'sum' cannot run these inputs: it needs d_v >= 8 here"):
        get_op("sum", "picky")(*_inputs(dv=6))


def test_explicit_impl_that_cannot_run_the_inputs_names_the_limit(scratch_registries) -> None:
    register_backend(
        Backend(
            "kernel",
            "delta",
            get_op("delta", "chunk").backend.run,
            devices=("cuda",),
            dtypes=(torch.bfloat16,),
            max_d_k=4,
            upcast=False,
        )
    )
    with pytest.raises(
        ValueError,
        match=r"impl 'kernel' of rule 'delta' cannot run these inputs: it runs on cuda, "
        r"the inputs are on cpu",
    ):
        get_op("delta", "kernel")(*_inputs())
    register_backend(Backend("kernel", "delta", get_op("delta", "chunk").backend.run, max_d_k=4))
    with pytest.raises(ValueError, match=r"its largest d_k is 4, got d_k = 8"):
        get_op("delta", "kernel")(*_inputs())
    assert ("delta", "kernel") in list_ops()


def test_missing_optional_backend_says_what_to_install() -> None:
    if fla.BACKENDS[0].available():
        pytest.skip("flash-linear-attention is installed")
    assert ("delta", "fla") not in list_ops()
    with pytest.raises(
        ValueError,
        match=r"impl 'fla' for rule 'delta' needs the optional package 'fla' "
        r"\(pip install 'fastweights\[fla\]'\)",
    ):
        get_op("delta", "fla")


def test_a_new_rule_is_one_spec_away(scratch_registries) -> None:
    """A registered rule (here: the sum rule at half rate, from the sum rule's forms) is usable by the
    layer, the attention-name grammar and impl='auto' with no other change."""
    sum_rule = get_rule("sum")

    def half_rate(run, call):
        return sum_rule.apply(run, call.replace(v=call.v * 0.5))

    forms = tuple(Backend(b.name, "half", b.run, one_token=b.one_token, priority=b.priority) for b in sum_rule.forms)
    register_rule(RuleSpec("half", "S_t = S_{t-1} + k_t v_t^T / 2", half_rate, forms, attn_norm=True))
    assert "half" in list_rules() and "linear+half" in list_attentions()
    assert parse_attention("dpfp-2+half").rule == "half"
    q, k, v, beta = _inputs()
    o, _ = get_op("half")(q, k, v)
    assert_close(o, get_op("sum", "naive")(q, k, v * 0.5)[0], "half-rate output", rtol=1e-5, atol=1e-6)
    layer = FastWeightAttention(16, 2, rule="half")
    assert layer.attn_norm and layer.beta_proj is None
    y, state = layer(torch.randn(1, 5, 16))
    assert y.shape == (1, 5, 16) and state["S"].shape == (1, 2, 8, 9)


# ---------------------------------------------------------------- the FLA adapter, against FLA's contract
def _fake_fla(monkeypatch, calls: list) -> None:
    """Modules ``fla.ops.delta_rule`` / ``fla.ops.gated_delta_rule`` / ``fla.ops.linear_attn`` whose
    functions follow FLA's documented contract ([B, T, H, D], scale defaults to d_k^-1/2, native
    cu_seqlens, float32 state, even d_v in the backward) and compute with fastweights' naive form, so
    the adapter's own work is tested."""

    def scale_of(q, scale):
        return q.shape[-1] ** -0.5 if scale is None else scale

    def chunk_delta_rule(q, k, v, beta, scale=None, initial_state=None, output_final_state=False, cu_seqlens=None):
        assert k.shape[-1] % 2 == 0 and v.shape[-1] % 2 == 0, "FLA's backward needs even widths"
        calls.append(("delta", cu_seqlens is not None))
        # FLA takes any rate: the attention-normalised variant hands it beta / (z . k), which may pass 2
        unbounded = Op(replace(get_rule("delta"), bounds={}), get_op("delta", "naive").backend)
        return unbounded(
            q,
            k,
            v,
            beta,
            scale=scale_of(q, scale),
            initial_state=initial_state,
            output_final_state=output_final_state,
            cu_seqlens=cu_seqlens,
        )

    def chunk_linear_attn(
        q, k, v, scale=None, initial_state=None, output_final_state=False, normalize=True, cu_seqlens=None
    ):
        assert not normalize and k.shape[-1] % 2 == 0 and v.shape[-1] % 2 == 0
        calls.append(("sum", cu_seqlens is not None))
        return get_op("sum", "naive")(
            q,
            k,
            v,
            scale=scale_of(q, scale),
            initial_state=initial_state,
            output_final_state=output_final_state,
            cu_seqlens=cu_seqlens,
        )

    def chunk_gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        scale=None,
        initial_state=None,
        output_final_state=False,
        use_qk_l2norm_in_kernel=False,
        cu_seqlens=None,
    ):
        assert k.shape[-1] % 2 == 0 and v.shape[-1] % 2 == 0 and not use_qk_l2norm_in_kernel
        calls.append(("gated_delta", cu_seqlens is not None))
        return get_op("gated_delta", "naive")(
            q,
            k,
            v,
            beta,
            g=g,
            scale=scale_of(q, scale),
            initial_state=initial_state,
            output_final_state=output_final_state,
            cu_seqlens=cu_seqlens,
        )

    for name, attrs in [
        ("fla", {}),
        ("fla.ops", {}),
        ("fla.ops.delta_rule", {"chunk_delta_rule": chunk_delta_rule}),
        ("fla.ops.gated_delta_rule", {"chunk_gated_delta_rule": chunk_gated_delta_rule}),
        ("fla.ops.linear_attn", {"chunk_linear_attn": chunk_linear_attn}),
    ]:
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))


@pytest.mark.parametrize("d_k", [8, 7])
def test_fla_adapter_passes_the_gated_rules_decays(monkeypatch, scratch_registries, d_k: int) -> None:
    """``chunk_gated_delta_rule`` takes the log decays before the rates; no decay given is ``g = 0``."""
    calls: list = []
    _fake_fla(monkeypatch, calls)
    b = next(b for b in fla.BACKENDS if b.rule == "gated_delta")
    register_backend(
        Backend("fla-cpu", "gated_delta", b.run, dtypes=(torch.float64,), upcast=False, native_varlen=True)
    )
    x = {n: t.detach() for n, t in make_inputs(1, 36, 2, d_k, 5, rule="gated_delta").items()}
    s0 = torch.cat([x["initial_state"]] * 3)  # [3, H, d_k, d_v]
    kw = dict(initial_state=s0, output_final_state=True, cu_seqlens=torch.tensor([0, 5, 35, 36]), scale=0.5)
    for g in (x["g"], None):
        o, s = get_op("gated_delta", "fla-cpu")(x["q"], x["k"], x["v"], x["beta"], g=g, **kw)
        o_ref, s_ref = get_op("gated_delta", "naive")(x["q"], x["k"], x["v"], x["beta"], g=g, **kw)
        assert_close(o, o_ref, "o")
        assert_close(s, s_ref, "final state")
    assert calls == [("gated_delta", True)] * 2


@pytest.mark.parametrize("d_k", [8, 7])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("rule", ["sum", "delta"])
def test_fla_adapter_keeps_the_contract(monkeypatch, scratch_registries, rule: str, normalize: bool, d_k: int) -> None:
    """Scale passed explicitly, rates, normalisation column, odd widths padded, initial state, varlen."""
    calls: list = []
    _fake_fla(monkeypatch, calls)
    b = next(b for b in fla.BACKENDS if b.rule == rule)
    register_backend(Backend("fla-cpu", rule, b.run, dtypes=(torch.float64,), upcast=False, native_varlen=True))
    lengths = [5, 30, 1]
    x = make_inputs(1, sum(lengths), 2, d_k, 5, positive=True, normalize=normalize)
    x = {n: t.detach() for n, t in x.items()}
    s0 = torch.cat([x["initial_state"]] * 3)  # [3, H, d_k, d_v (+1)]
    cu = torch.tensor([0, 5, 35, 36])
    kw = dict(initial_state=s0, output_final_state=True, cu_seqlens=cu, normalize=normalize, scale=0.5)
    o, s = get_op(rule, "fla-cpu")(x["q"], x["k"], x["v"], x["beta"], **kw)
    o_ref, s_ref = get_op(rule, "naive")(x["q"], x["k"], x["v"], x["beta"], **kw)
    assert calls == [(rule, True)]
    assert_close(o, o_ref, "o")
    assert_close(s, s_ref, "final state")


def test_the_one_token_form_answers_to_its_old_name_with_a_warning() -> None:
    """'recurrent' was the one-token form's impl name; it is 'step' now, so 'recurrent' only names the
    recurrent FWPs. The old name still gives the same backend, with a DeprecationWarning."""
    with pytest.warns(DeprecationWarning, match="impl 'recurrent' is deprecated; use 'step'"):
        op = get_op("delta", "recurrent")
    assert op.backend is get_op("delta", "step").backend


@pytest.mark.parametrize("rule", list_rules())
def test_auto_decodes_one_token_with_the_form_the_rule_declares(rule: str) -> None:
    """A single token goes to the rule's one_token form (its step); longer inputs never do."""
    x = make_inputs(2, 1, 2, 4, 4, rule=rule)
    extra = {n: x[n] for n in get_rule(rule).learned}
    op = get_op(rule)
    op(x["q"], x["k"], x["v"], x["beta"], **extra)
    steps = [b.name for b in list_backends(rule) if b.one_token]
    assert steps and op.last_impl == steps[0]
    y = make_inputs(2, 3, 2, 4, 4, rule=rule)
    op(y["q"], y["k"], y["v"], y["beta"], **{n: y[n] for n in get_rule(rule).learned})
    assert op.last_impl not in steps
