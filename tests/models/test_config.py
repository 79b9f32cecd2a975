"""LMConfig / TrainConfig validation, attention-variant parsing, presets and --set overrides."""

from __future__ import annotations

import pytest

from fastweights.models import (AttentionSpec, LMConfig, TrainConfig, get_preset, get_run_preset, list_attentions,
                                list_presets, parse_attention)
from fastweights.ops import list_rules


@pytest.mark.parametrize("name, spec", [
    ("softmax", AttentionSpec("softmax")),
    ("linear", AttentionSpec("fwp", "sum", "elu_p1", {})),
    ("delta", AttentionSpec("fwp", "delta", "elu_p1", {})),
    ("linear+delta", AttentionSpec("fwp", "delta", "elu_p1", {})),
    ("relu+delta", AttentionSpec("fwp", "delta", "relu", {})),
    ("dpfp-2+delta", AttentionSpec("fwp", "delta", "dpfp", {"nu": 2})),
    ("dpfp-3", AttentionSpec("fwp", "sum", "dpfp", {"nu": 3})),
    ("favor-64", AttentionSpec("fwp", "sum", "favor", {"m": 64})),
    ("favor-16+delta", AttentionSpec("fwp", "delta", "favor", {"m": 16})),
])
def test_parse_attention(name: str, spec: AttentionSpec) -> None:
    assert parse_attention(name) == spec


@pytest.mark.parametrize("name", ["", "foo", "dpfp", "dpfp-0", "dpfp-02", "linear-3", "favor+delta", "softmax+delta", "delta+delta", "DPFP-2"])
def test_unknown_attention_lists_valid_ones(name: str) -> None:
    with pytest.raises(ValueError, match=r"expected 'softmax', or '<map>\[\+<rule>\]") as e:
        parse_attention(name)
    assert "dpfp-<nu>" in str(e.value) and all(r in str(e.value) for r in list_rules())


def test_every_listed_attention_parses() -> None:
    for name in list_attentions():
        parse_attention(name.replace("<nu>", "2").replace("<m>", "8"))


def test_presets() -> None:
    assert list_presets() == ["shakespeare-char", "wt103-medium", "wt103-small"]
    run = get_run_preset("shakespeare-char", "dpfp-2+delta")
    m, t = run.model, run.train
    assert (m.n_layers, m.n_heads, m.d_model, m.context, m.dropout, m.attention) == (4, 4, 128, 64, 0.0, "dpfp-2+delta")
    assert (t.batch_size, t.steps, t.lr) == (12, 2000, 1e-3)
    small, medium = get_preset("wt103-small", "delta"), get_preset("wt103-medium", "softmax")
    assert (small.n_layers, small.d_model, small.head_dim, small.d_ff, small.norm, small.context) == (16, 128, 16, 2048, "post", 256)
    assert (medium.d_model, medium.head_dim, medium.context) == (256, 32, 384)
    assert small.adaptive_cutoffs == [20000, 40000, 200000] and small.tie_embeddings
    # a smaller vocabulary keeps only the cutoffs below it
    assert get_preset("wt103-small", vocab_size=33278).adaptive_cutoffs == [20000]
    assert get_preset("wt103-small", vocab_size=5000).adaptive_cutoffs is None
    with pytest.raises(ValueError, match="unknown preset 'tiny'"):
        get_preset("tiny")
    with pytest.raises(ValueError, match="unknown attention"):
        get_preset("shakespeare-char", attention="cosine")


def test_config_round_trip_and_errors() -> None:
    cfg = get_preset("wt103-small", "favor-8+delta")
    assert LMConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown LMConfig fields \\['n_layer'\\]"):
        LMConfig.from_dict({**cfg.to_dict(), "n_layer": 3})
    for bad in [dict(vocab_size=0), dict(norm="sandwich"), dict(pos_emb="rope"), dict(d_model=30, n_heads=4),
                dict(dropout=1.0), dict(adaptive_cutoffs=[50, 20]), dict(adaptive_cutoffs=[100]), dict(n_layers=2.0)]:
        with pytest.raises(ValueError, match="LMConfig"):
            LMConfig(**{"vocab_size": 100, **bad})
    with pytest.raises(ValueError, match="divisible by grad_accum"):
        TrainConfig(batch_size=12, grad_accum=5)
    with pytest.raises(ValueError, match="dtype"):
        TrainConfig(dtype="fp16")


def test_overrides() -> None:
    run = get_run_preset("shakespeare-char").with_overrides(
        ["steps=10", "model.d_model=64", "train.lr=3e-4", "attention=dpfp-2+delta", "adaptive_cutoffs=null", "tie_embeddings=false"])
    assert (run.train.steps, run.model.d_model, run.train.lr, run.model.attention, run.model.tie_embeddings) == (10, 64, 3e-4, "dpfp-2+delta", False)
    for bad, msg in [("steps", "key=value"), ("=3", "key=value"), ("nope=1", "unknown setting"), ("train.d_model=4", "unknown setting"),
                     ("steps=0", "positive int"), ("attention=foo", "unknown attention")]:
        with pytest.raises(ValueError, match=msg):
            get_run_preset("shakespeare-char").with_overrides([bad])
