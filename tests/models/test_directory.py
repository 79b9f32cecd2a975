"""The model directory: write, load back (same outputs), clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fastweights.files.atomic import file_sha256
from fastweights.models import LanguageModel, LMConfig, load_model, read_config, save_weights, write_config


@pytest.mark.parametrize(
    "kw",
    [
        dict(attention="dpfp-2+delta"),
        dict(attention="softmax", tie_embeddings=False),
        dict(attention="favor-8", vocab_size=120, adaptive_cutoffs=[10, 50]),
    ],
)
def test_round_trip(tmp_path: Path, kw: dict) -> None:
    torch.manual_seed(0)
    cfg = LMConfig(**{**dict(vocab_size=37, d_model=16, n_layers=2, n_heads=2, d_ff=32, context=8), **kw})
    model = LanguageModel(cfg).eval()
    write_config(tmp_path, cfg, tokenizer={"kind": "char", "vocab_size": cfg.vocab_size})
    save_weights(model, tmp_path / "model.safetensors")
    loaded, cfg2 = load_model(tmp_path, "cpu")
    assert cfg2 == cfg and not loaded.training
    assert read_config(tmp_path)["tokenizer"] == {"kind": "char", "vocab_size": cfg.vocab_size}
    idx = torch.randint(0, cfg.vocab_size, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(idx)[0], model(idx)[0])
    if cfg.tie_embeddings and cfg.adaptive_cutoffs is None:
        assert loaded.wte.weight is loaded.head.weight  # still tied after loading


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model": {}}))
    with pytest.raises(ValueError, match="not a fastweights LM config"):
        load_model(tmp_path)
    small = LMConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=8)
    write_config(tmp_path, small)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)
    save_weights(
        LanguageModel(LMConfig(vocab_size=10, d_model=8, n_layers=2, n_heads=2, d_ff=8)), tmp_path / "model.safetensors"
    )
    with pytest.raises(ValueError, match="does not match the model: .*unexpected"):
        load_model(tmp_path)


def test_weights_of_other_shapes_and_a_malformed_digest_are_clear_errors(tmp_path: Path) -> None:
    small = dict(d_model=8, n_layers=1, n_heads=2, d_ff=8)
    write_config(tmp_path, LMConfig(vocab_size=10, **small))
    save_weights(LanguageModel(LMConfig(vocab_size=12, **small)), tmp_path / "model.safetensors")
    assert read_config(tmp_path)["weights"]["sha256"] == file_sha256(tmp_path / "model.safetensors")  # recorded
    with pytest.raises(ValueError, match=r"does not fit the model: \S+ is \[12, 8\], the model's \[10, 8\]"):
        load_model(tmp_path)
    doc = read_config(tmp_path)
    doc["weights"]["sha256"] = "not a digest"
    (tmp_path / "config.json").write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"config.json: its 'weights' section must hold 'sha256' \(64 hex digits\)"):
        load_model(tmp_path)


def test_weights_replaced_while_they_are_read_are_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training run publishing new weights between a reader's config.json and its weights file:
    the reader sees a digest mismatch, finds a new digest recorded and loads the new weights."""
    from fastweights.models import directory

    cfg = LMConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=8)
    write_config(tmp_path, cfg)
    save_weights(LanguageModel(cfg), tmp_path / "model.safetensors")
    stale = read_config(tmp_path)  # what the reader read before the new weights came
    torch.manual_seed(1)
    newer = LanguageModel(cfg)
    save_weights(newer, tmp_path / "model.safetensors")
    reads = []
    real = directory.read_config

    def first_stale(path):
        reads.append(path)
        return stale if len(reads) == 1 else real(path)

    monkeypatch.setattr(directory, "read_config", first_stale)
    loaded, _ = load_model(tmp_path)
    assert len(reads) == 3  # the stale read, the check that the record changed, the fresh read
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), newer.state_dict().values()))


def test_weights_beside_another_programs_config_are_written_without_a_digest(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    save_weights(
        LanguageModel(LMConfig(vocab_size=10, d_model=8, n_layers=1, n_heads=2, d_ff=8)), tmp_path / "model.safetensors"
    )
    assert (tmp_path / "config.json").read_text() == '{"model_type": "gpt2"}' and (
        tmp_path / "model.safetensors"
    ).is_file()
