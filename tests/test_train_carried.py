"""Streamed training with carried fast weights (``carry_state``): refused for softmax, exact resume,
accumulation, the carried validation protocol agreeing with ``fastweights eval``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from fastweights.checkpoints import CARRY_FILE, list_checkpoints
from fastweights.evaluate import evaluate
from fastweights.models import LMConfig, load_model
from fastweights.state import load_state
from fastweights.tasks.text import load_corpus
from fastweights.train import read_metrics, train

from .test_train import losses, text_file, tiny_cfgs  # noqa: F401 (text_file: a fixture)


def carried_cfgs(vocab_size: int, **kw) -> tuple:
    return tiny_cfgs(vocab_size, carry_state=True, **kw)


def test_softmax_cannot_carry_its_state_and_nothing_is_written(text_file: Path, tmp_path: Path) -> None:
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = carried_cfgs(corpus.tokenizer.vocab_size)
    softmax = LMConfig(**{**model_cfg.to_dict(), "attention": "softmax", "pos_emb": "learned"})
    with pytest.raises(ValueError, match="carry_state=true needs fast-weight attention, got attention='softmax'"):
        train(softmax, train_cfg, corpus, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_too_short_a_training_split_for_the_streams_is_refused_first(text_file: Path, tmp_path: Path) -> None:
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = carried_cfgs(corpus.tokenizer.vocab_size, batch_size=len(corpus.train) // 8)
    with pytest.raises(ValueError, match="too few for .* streams"):
        train(model_cfg, train_cfg, corpus, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resume_from_a_checkpoint_equals_the_uninterrupted_run(text_file: Path, tmp_path: Path) -> None:
    """Resuming from the step-6 checkpoint (stream position and carried states restored, over two
    accumulation micro-batches) gives the uninterrupted curve and weights bit for bit; the passes
    over the short split (states reset at each) are crossed several times."""
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = carried_cfgs(corpus.tokenizer.vocab_size, grad_accum=2, batch_size=8)
    full = tmp_path / "full"
    train(model_cfg, train_cfg, corpus, full, progress=False)
    ckpts = list_checkpoints(full)
    assert [c.name for c in ckpts] == ["step-00000006", "step-00000012"]
    carry = load_state(ckpts[0] / CARRY_FILE)["ranks"][0]
    assert len(carry) == 2 and carry[0]["layers"][0]["S"].shape[0] == 4  # two micro-batches of 4 streams
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000012")  # as if killed after step 6
    train(model_cfg, train_cfg, corpus, resumed, resume=True, progress=False)
    assert losses(resumed) == losses(full)
    a, b = (safetensors.torch.load_file(d / "model.safetensors") for d in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_carried_states_change_what_the_model_learns(text_file: Path, tmp_path: Path) -> None:
    """The same seed with and without carry_state: different batches and states, different weights."""
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    for carry in (False, True):
        model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, carry_state=carry, steps=4)
        train(model_cfg, train_cfg, corpus, tmp_path / str(carry), progress=False)
    a, b = (safetensors.torch.load_file(tmp_path / str(c) / "model.safetensors") for c in (False, True))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_grad_accumulation_matches_the_full_batch(text_file: Path, tmp_path: Path) -> None:
    """Micro-batch i takes streams [i m, (i + 1) m) with its own carried states: the same streams and
    states as one batch of all of them."""
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    for accum in (1, 2):
        model_cfg, train_cfg = carried_cfgs(corpus.tokenizer.vocab_size, grad_accum=accum, steps=6)
        train(model_cfg, train_cfg, corpus, tmp_path / f"acc{accum}", progress=False)
    a, b = losses(tmp_path / "acc1"), losses(tmp_path / "acc2")
    np.testing.assert_allclose([r[1] for r in a], [r[1] for r in b], rtol=1e-5)


def test_validation_uses_the_carried_protocol_as_eval_does(text_file: Path, tmp_path: Path) -> None:
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = carried_cfgs(corpus.tokenizer.vocab_size, steps=6, eval_every=6, eval_batches=3)
    out = tmp_path / "run"
    train(model_cfg, train_cfg, corpus, out, progress=False)
    rows = read_metrics(out)
    assert [r["val_protocol"] for r in rows if r["val_loss"]] == ["carried-state"]
    model, _ = load_model(out)
    max_tokens = train_cfg.eval_batches * train_cfg.batch_size * model_cfg.context
    (result,) = evaluate(model, torch.from_numpy(np.asarray(corpus.val, dtype=np.int64)), model_cfg.context,
                         protocols=("carried-state",), max_tokens=max_tokens)
    assert float(rows[-1]["val_loss"]) == pytest.approx(result.nats, rel=1e-6)
    assert result.tokens == min(max_tokens, len(corpus.val) - 1)
