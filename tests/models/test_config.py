"""LMConfig / TrainConfig validation, attention-variant parsing, presets and --set overrides."""

from __future__ import annotations

import copy
import json
import pickle
import re

import pytest

from fastweights.layers.spec import FeatureMapSpec
from fastweights.models import (
    AttentionSpec,
    LMConfig,
    TrainConfig,
    get_preset,
    get_run_preset,
    list_attentions,
    list_presets,
    parse_attention,
)
from fastweights.ops import list_rules


@pytest.mark.parametrize(
    "name, parts",
    [
        ("softmax", ("softmax", None, None)),
        ("linear", ("fwp", "sum", FeatureMapSpec("elu_p1"))),
        ("delta", ("fwp", "delta", FeatureMapSpec("elu_p1"))),
        ("linear+delta", ("fwp", "delta", FeatureMapSpec("elu_p1"))),
        ("relu+delta", ("fwp", "delta", FeatureMapSpec("relu"))),
        ("dpfp-2+delta", ("fwp", "delta", FeatureMapSpec("dpfp", {"nu": 2}))),
        ("dpfp-3", ("fwp", "sum", FeatureMapSpec("dpfp", {"nu": 3}))),
        ("favor-64", ("fwp", "sum", FeatureMapSpec("favor", {"m": 64}))),
        ("favor-16+delta", ("fwp", "delta", FeatureMapSpec("favor", {"m": 16}))),
        ("rdn", ("recurrent", "delta", FeatureMapSpec("elu_p1"))),
    ],
)
def test_parse_attention(name: str, parts: tuple) -> None:
    spec = parse_attention(name)
    assert (spec.kind, spec.rule, spec.feature_map) == parts
    assert spec == name and str(spec) == name and AttentionSpec(spec) is spec  # the name itself, parsed once


def test_the_config_holds_the_parsed_spec_and_writes_its_name() -> None:
    cfg = LMConfig(vocab_size=10, attention="dpfp-2+delta")
    assert isinstance(cfg.attention, AttentionSpec) and cfg.attention.feature_map == FeatureMapSpec("dpfp", {"nu": 2})
    d = cfg.to_dict()
    assert type(d["attention"]) is str and d["attention"] == "dpfp-2+delta"  # config.json as before
    again = LMConfig.from_dict(json.loads(json.dumps(d)))
    assert again == cfg and again.attention.rule == "delta"
    assert copy.deepcopy(cfg).attention.feature_map == cfg.attention.feature_map
    assert pickle.loads(pickle.dumps(cfg)).attention.kind == "fwp"
    assert LMConfig.parse_field("attention", "rdn").kind == "recurrent"  # --set attention=rdn
    with pytest.raises(ValueError, match=r"^LMConfig.attention: unknown attention variant 'nope'"):
        LMConfig(vocab_size=10, attention="nope")
    with pytest.raises(ValueError, match=r"^LMConfig.attention must be an attention variant name, got 3"):
        LMConfig(vocab_size=10, attention=3)


@pytest.mark.parametrize(
    "name",
    ["", "foo", "dpfp", "dpfp-0", "dpfp-02", "linear-3", "favor+delta", "softmax+delta", "delta+delta", "DPFP-2"],
)
def test_unknown_attention_lists_valid_ones(name: str) -> None:
    with pytest.raises(ValueError, match=r"expected 'softmax', or '<map>\[\+<rule>\]") as e:
        parse_attention(name)
    assert "dpfp-<nu>" in str(e.value) and all(r in str(e.value) for r in list_rules())


def test_every_listed_attention_parses() -> None:
    for name in list_attentions():
        parse_attention(name.replace("<nu>", "2").replace("<m>", "8").replace("<n>", "3"))


def test_presets() -> None:
    assert list_presets() == [
        "shakespeare-char",
        "shakespeare-char-carried",
        "wt103-medium",
        "wt103-small",
        "wt2-small",
    ]
    run = get_run_preset("shakespeare-char", "dpfp-2+delta")
    m, t = run.model, run.train
    assert (m.n_layers, m.n_heads, m.d_model, m.context, m.dropout, m.attention) == (4, 4, 128, 64, 0.0, "dpfp-2+delta")
    assert (t.batch_size, t.steps, t.lr) == (12, 2000, 1e-3)
    small, medium = get_preset("wt103-small", "delta"), get_preset("wt103-medium", "softmax")
    assert (small.n_layers, small.d_model, small.head_dim, small.d_ff, small.norm, small.context) == (
        16,
        128,
        16,
        2048,
        "post",
        256,
    )
    assert (medium.d_model, medium.head_dim, medium.context) == (256, 32, 384)
    assert small.adaptive_cutoffs == [20000, 40000, 200000] and small.tie_embeddings
    # a smaller vocabulary keeps only the cutoffs below it
    assert get_preset("wt103-small", vocab_size=33278).adaptive_cutoffs == [20000]
    assert get_preset("wt103-small", vocab_size=5000).adaptive_cutoffs is None
    # the carried presets: streams, and unit keys for the delta rules (a bounded carried state)
    carried = get_run_preset("shakespeare-char-carried", "delta")
    assert carried.train.carry_state and carried.model.qk_norm == "l2" and carried.data == "tinyshakespeare"
    assert get_run_preset("shakespeare-char-carried", "linear").model.qk_norm == "auto"
    wt2 = {a: get_run_preset("wt2-small", a) for a in ("softmax", "delta")}
    assert not wt2["softmax"].train.carry_state and wt2["delta"].train.carry_state
    assert wt2["softmax"].model.pos_emb == "learned" and wt2["delta"].model.adaptive_cutoffs == [2000, 10000]
    with pytest.raises(ValueError, match="unknown preset 'tiny'"):
        get_preset("tiny")
    with pytest.raises(ValueError, match="unknown attention"):
        get_preset("shakespeare-char", attention="cosine")


def test_config_round_trip_and_errors() -> None:
    cfg = get_preset("wt103-small", "favor-8+delta")
    assert LMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown LMConfig fields \\['n_layer'\\]"):
        LMConfig.from_dict({**cfg.to_dict(), "n_layer": 3})
    for bad in [
        dict(vocab_size=0),
        dict(norm="sandwich"),
        dict(pos_emb="rope"),
        dict(d_model=30, n_heads=4),
        dict(dropout=1.0),
        dict(adaptive_cutoffs=[50, 20]),
        dict(adaptive_cutoffs=[100]),
        dict(n_layers=2.0),
    ]:
        with pytest.raises(ValueError, match="LMConfig"):
            LMConfig(**{"vocab_size": 100, **bad})
    with pytest.raises(ValueError, match="divisible by grad_accum"):
        TrainConfig(batch_size=12, grad_accum=5)
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="fp16")


def test_overrides() -> None:
    run = get_run_preset("shakespeare-char").with_overrides(
        [
            "steps=10",
            "model.d_model=64",
            "train.lr=3e-4",
            "attention=dpfp-2+delta",
            "adaptive_cutoffs=null",
            "tie_embeddings=false",
        ]
    )
    assert (run.train.steps, run.model.d_model, run.train.lr, run.model.attention, run.model.tie_embeddings) == (
        10,
        64,
        3e-4,
        "dpfp-2+delta",
        False,
    )
    for bad, msg in [
        ("steps", "key=value"),
        ("=3", "key=value"),
        ("nope=1", "unknown setting"),
        ("train.d_model=4", "unknown setting"),
        ("steps=0", "positive int"),
        ("attention=foo", "unknown attention"),
        ("lr=abc", "TrainConfig.lr must be"),
    ]:
        with pytest.raises(ValueError, match=msg):
            get_run_preset("shakespeare-char").with_overrides([bad])


def test_set_values_are_read_as_the_field_type() -> None:
    for text, value in [("true", True), ("False", False), ("YES", True), ("no", False), ("1", True), ("0", False)]:
        assert LMConfig.parse_field("tie_embeddings", text) is value
    assert LMConfig.parse_field("d_head", "null") is None and LMConfig.parse_field("d_head", "None") is None
    assert LMConfig.parse_field("d_head", "32") == 32
    assert (
        LMConfig.parse_field("adaptive_cutoffs", "[20000, 40000]")
        == [20000, 40000]
        == LMConfig.parse_field("adaptive_cutoffs", "20000,40000")
    )
    assert TrainConfig.parse_field("lr", "3e-4") == 3e-4 and TrainConfig.parse_field("steps", "10") == 10
    assert LMConfig.parse_field("attention", "dpfp-2+delta") == "dpfp-2+delta"
    run = get_run_preset("shakespeare-char").with_overrides(["tie_embeddings=False", "bias=no", "train.lr=5e-4"])
    assert run.model.tie_embeddings is False and run.model.bias is False and run.train.lr == 5e-4


@pytest.mark.parametrize(
    "cls, name, text, message",
    [
        (TrainConfig, "lr", "abc", "TrainConfig.lr must be a finite number, got 'abc'"),
        (TrainConfig, "lr", "inf", "TrainConfig.lr must be a finite number, got inf"),
        (TrainConfig, "grad_clip", "NaN", "TrainConfig.grad_clip must be a finite number, got nan"),
        (TrainConfig, "warmup", "1.5", "TrainConfig.warmup must be an int, got '1.5'"),
        (LMConfig, "bias", "False!", "LMConfig.bias must be a bool (true/false, yes/no, 1/0), got 'False!'"),
        (LMConfig, "adaptive_cutoffs", "[20000, 4e4]", "LMConfig.adaptive_cutoffs[1] must be an int, got '40000.0'"),
        (
            LMConfig,
            "adaptive_cutoffs",
            "[20000,",
            "LMConfig.adaptive_cutoffs must be a list of ints (JSON or comma-separated), got '[20000,'",
        ),
        (LMConfig, "adaptive_cutoffs", "20000;40000", "LMConfig.adaptive_cutoffs[0] must be an int, got '20000;40000'"),
    ],
)
def test_set_values_of_the_wrong_type_are_errors(cls, name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        cls.parse_field(name, text)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: TrainConfig(beta1=2.0), "TrainConfig.beta1 must be in [0, 1), got 2.0"),
        (lambda: TrainConfig(beta2=1.0), "TrainConfig.beta2 must be in [0, 1), got 1.0"),
        (lambda: TrainConfig(lr=1e-3, min_lr=1e-2), "TrainConfig.min_lr must be in [0, lr=0.001], got 0.01"),
        (lambda: TrainConfig(weight_decay=-1), "TrainConfig.weight_decay must be in [0, inf), got -1.0"),
        (lambda: TrainConfig(grad_clip=-0.5), "TrainConfig.grad_clip must be in [0, inf), got -0.5"),
        (lambda: TrainConfig(seed=-1), "TrainConfig.seed must be an int in [0, 2**63), got -1"),
        (lambda: TrainConfig(seed=2**63), "TrainConfig.seed must be an int in [0, 2**63)"),
        (lambda: TrainConfig(max_bad_steps=-1), "TrainConfig.max_bad_steps must be an int >= 0, got -1"),
        (lambda: TrainConfig(lr=float("inf")), "TrainConfig.lr must be a finite number, got inf"),
        (lambda: TrainConfig(lr="abc"), "TrainConfig.lr must be a finite number, got 'abc'"),
        (lambda: TrainConfig(steps=True), "TrainConfig.steps must be an int, got True"),
        (
            lambda: LMConfig(vocab_size=10, bias="False"),
            "LMConfig.bias must be a bool (true/false, yes/no, 1/0), got 'False'",
        ),
        (lambda: LMConfig(vocab_size=10, d_head=0), "LMConfig.d_head must be a positive int or null, got 0"),
        (lambda: LMConfig(vocab_size=10, dropout=-0.1), "LMConfig.dropout must be in [0, 1), got -0.1"),
        (
            lambda: LMConfig(vocab_size=10, adaptive_div_value=0),
            "LMConfig.adaptive_div_value must be in (0, inf), got 0.0",
        ),
    ],
)
def test_ranges_name_the_field_the_range_and_the_value(make, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


def test_saved_configs_read_with_the_fields_added_since() -> None:
    cfg = TrainConfig.from_dict({"lr": 1, "steps": 10})  # a config.json written before max_bad_steps existed
    assert cfg.max_bad_steps == 0 and cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_configs_saved_with_the_old_one_token_form_name_load_as_step() -> None:
    """Run directories written before the rename say decode_impl='recurrent'; they load, as 'step',
    with no warning (the user did nothing wrong), and are written back under the new name."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cfg = LMConfig.from_dict({"vocab_size": 11, "attention": "delta", "decode_impl": "recurrent"})
    assert cfg.decode_impl == "step" and cfg.to_dict()["decode_impl"] == "step"
