"""Streamed training with carried fast weights (``carry_state``): refused for softmax, exact resume,
accumulation, resets at document starts, the carried validation protocol agreeing with ``fastweights eval``."""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from fastweights.cli import main as cli_main
from fastweights.data.text import load_corpus
from fastweights.evaluation.loss import evaluate
from fastweights.files.state import load_state
from fastweights.models import LMConfig, TrainConfig, load_model
from fastweights.train import read_metrics, train
from fastweights.train.checkpoints import CARRY_FILE, list_checkpoints

from .test_train import losses, tiny_cfgs


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


@pytest.fixture
def wiki_dir(tmp_path: Path) -> Path:
    """A WikiText-like directory: articles of 3-8 lines under `` = Title = `` lines."""
    rng = np.random.default_rng(1)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "far", "away", "and", "then"]
    docs = [
        f" = Article {d} = \n"
        + "".join(" " + " ".join(rng.choice(words, 8)) + " \n" for _ in range(rng.integers(3, 9)))
        for d in range(30)
    ]
    root = tmp_path / "wiki"
    root.mkdir()
    (root / "wiki.train.tokens").write_text("".join(docs[:24]))
    (root / "wiki.valid.tokens").write_text("".join(docs[24:]))
    return root


def check_option_resumes_exactly_and_changes_training(corpus, tmp_path: Path, name: str, **kw) -> None:
    """Carried training with the bool option ``name`` on: a resume from the step-6 checkpoint equals
    the uninterrupted run bit for bit, and the run differs from the one with the option off."""
    runs = {}
    for on in (True, False):
        model_cfg, train_cfg = carried_cfgs(corpus.tokenizer.vocab_size, **{name: on}, **kw)
        runs[on] = tmp_path / f"{name}-{on}"
        train(model_cfg, train_cfg, corpus, runs[on], progress=False)
    assert losses(runs[True]) != losses(runs[False])
    resumed = tmp_path / "resumed"
    shutil.copytree(runs[True], resumed)
    shutil.rmtree(resumed / "checkpoints" / "step-00000012")  # as if killed after step 6
    model_cfg, train_cfg = carried_cfgs(corpus.tokenizer.vocab_size, **{name: True}, **kw)
    train(model_cfg, train_cfg, corpus, resumed, resume=True, progress=False)
    assert losses(resumed) == losses(runs[True])


def test_resets_at_documents_resume_exactly_and_change_training(wiki_dir: Path, tmp_path: Path) -> None:
    """reset_documents over 24 articles, several inside the segments of each step."""
    corpus = load_corpus(wiki_dir, cache_dir=tmp_path / "cache")
    assert len(corpus.documents["train"]) == 24
    check_option_resumes_exactly_and_changes_training(corpus, tmp_path, "reset_documents", grad_accum=2)


def test_shifted_streams_resume_exactly_and_change_training(text_file: Path, tmp_path: Path) -> None:
    """shift_streams over a split read several times (160 streams: passes of a few steps)."""
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    check_option_resumes_exactly_and_changes_training(corpus, tmp_path, "shift_streams", batch_size=160)
    with pytest.raises(ValueError, match="TrainConfig.shift_streams must be false unless carry_state is true"):
        TrainConfig(shift_streams=True)


def test_resets_at_documents_need_carried_state_and_marked_documents(text_file: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="TrainConfig.reset_documents must be false unless carry_state is true"):
        TrainConfig(reset_documents=True)
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = carried_cfgs(corpus.tokenizer.vocab_size, reset_documents=True)
    with pytest.raises(ValueError, match="reset_documents=true, but the training split marks no documents"):
        train(model_cfg, train_cfg, corpus, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_carried_states_change_what_the_model_learns(text_file: Path, tmp_path: Path) -> None:
    """The same seed with and without carry_state: different batches and states, different weights."""
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    for carry in (False, True):
        model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, carry_state=carry, steps=4)
        train(model_cfg, train_cfg, corpus, tmp_path / str(carry), progress=False)
    a, b = (safetensors.torch.load_file(tmp_path / str(c) / "model.safetensors") for c in (False, True))
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_validation_uses_the_carried_protocol_as_eval_does(text_file: Path, tmp_path: Path) -> None:
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = carried_cfgs(corpus.tokenizer.vocab_size, steps=6, eval_every=6, eval_batches=3)
    out = tmp_path / "run"
    train(model_cfg, train_cfg, corpus, out, progress=False)
    rows = read_metrics(out)
    assert [r["val_protocol"] for r in rows if r["val_loss"]] == ["carried-state"]
    model, _ = load_model(out)
    max_tokens = train_cfg.eval_batches * train_cfg.batch_size * model_cfg.context
    (result,) = evaluate(
        model,
        torch.from_numpy(np.asarray(corpus.val, dtype=np.int64)),
        model_cfg.context,
        protocols=("carried-state",),
        max_tokens=max_tokens,
    )
    assert float(rows[-1]["val_loss"]) == pytest.approx(result.nats, rel=1e-6)
    assert result.tokens == min(max_tokens, len(corpus.val) - 1)


def test_validation_with_resets_at_documents_is_what_eval_reports(
    wiki_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A reset_documents run validates with the state emptied at the validation split's article
    starts (its metrics say so); `fastweights eval` does the same by default and differs with
    --no-reset-documents."""
    monkeypatch.setenv("FASTWEIGHTS_CACHE", str(tmp_path / "cache"))
    corpus = load_corpus(wiki_dir)
    model_cfg, train_cfg = carried_cfgs(
        corpus.tokenizer.vocab_size, reset_documents=True, steps=6, eval_every=6, eval_batches=3
    )
    out = tmp_path / "run"
    train(model_cfg, train_cfg, corpus, out, progress=False)
    rows = [r for r in read_metrics(out) if r["val_loss"]]
    assert [r["val_protocol"] for r in rows] == ["carried-state (reset at documents)"]
    max_tokens = train_cfg.eval_batches * train_cfg.batch_size * model_cfg.context
    assert (corpus.documents["val"][1:] < max_tokens).any()  # resets inside the scored tokens
    scores = {}
    for flag in ("--reset-documents", "--no-reset-documents", None):
        args = [
            "eval",
            "--checkpoint",
            str(out),
            "--protocol",
            "carried-state",
            "--max-tokens",
            str(max_tokens),
            "--json",
            str(tmp_path / "eval.json"),
            "--no-progress",
        ]
        assert cli_main(args + ([flag] if flag else [])) == 0
        scores[flag] = json.loads((tmp_path / "eval.json").read_text())["results"][0]["nats"]
    assert scores[None] == scores["--reset-documents"] == pytest.approx(float(rows[-1]["val_loss"]), rel=1e-6)
    assert scores["--no-reset-documents"] != scores[None]
    assert "emptied at its" in capsys.readouterr().out
    other = tmp_path / "plain.txt"  # a text without title lines
    other.write_text(" the cat sat on the mat \n" * 50)
    assert cli_main(["eval", "--checkpoint", str(out), "--data", str(other), "--reset-documents", "--no-progress"]) == 2
    assert "fastweights eval: error: --reset-documents: the val split of" in capsys.readouterr().err


RECALL_LETTERS = "ABCDEFGH"  #: the letters a recall document is about (chance: ln 8 nats)


def recall_text(n_docs: int, max_gap: int, max_queries: int, seed: int) -> str:
    """``n_docs`` documents ``X (.{g} ? X){k}``: a letter ``X`` of :data:`RECALL_LETTERS`, then ``k``
    in ``[1, max_queries]`` queries ``?``, each after ``g`` in ``[0, max_gap]`` dots and answered by
    ``X``. The token after a ``?`` is the most recent letter; once that letter lies before the
    current segment of ``L`` tokens, only a state carried into the segment can know it."""
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        x = rng.choice(RECALL_LETTERS)
        docs.append(x + "".join("." * rng.randint(0, max_gap) + "?" + x for _ in range(rng.randint(1, max_queries))))
    return "".join(docs)


@torch.no_grad()
def segment_nll(model: nn.Module, ids: torch.Tensor, segment: int, carry: bool) -> torch.Tensor:
    """``-log p(ids[:, t + 1] | ...)`` for every ``t``, ``[S, N - 1]``: the ``S`` streams ``ids``
    ``[S, N]`` read side by side in segments of ``segment`` tokens, each from the state the previous
    one ended with (``carry``, the carried-state protocol) or from an empty state (the windows a
    windowed model is trained on)."""
    model.eval()
    state, nll = None, []
    for a in range(0, ids.shape[1] - 1, segment):
        chunk = ids[:, a : a + segment + 1]  # [S, T + 1]
        state = {**state, "pos": 0} if carry and state is not None else None  # positions restart in every segment
        logits, _, state = model(chunk[:, :-1], state=state)  # [S, T, V]
        nll.append(F.cross_entropy(logits.float().transpose(1, 2), chunk[:, 1:], reduction="none"))  # [S, T]
    return torch.cat(nll, dim=1)


def recall_targets(ids: np.ndarray, letters: List[int], query: int, segment: int) -> np.ndarray:
    """Mask ``[S, N - 1]`` over the predictions ``t -> ids[:, t + 1]`` of the streams ``ids`` ``[S, N]``
    that answer a query (``ids[:, t] == query``) whose letter lies before the segment of ``t``: only
    a carried state can know it (queries before any letter of their stream are left out)."""
    t = np.arange(ids.shape[1] - 1)  # [N - 1]
    at_letters = np.where(np.isin(ids, letters), np.arange(ids.shape[1]), -1)  # [S, N]: t at a letter, else -1
    last = np.maximum.accumulate(at_letters, axis=1)[:, :-1]  # [S, N - 1]: the last letter <= t
    return (ids[:, :-1] == query) & (0 <= last) & (last < t // segment * segment)  # [S, N - 1]


def recall_losses(tmp_path: Path, seed: int, data_seed: int) -> Tuple[Dict[Tuple[bool, str], float], float]:
    """Train a one-layer DeltaNet on :func:`recall_text` with ``carry_state`` and without (seed
    ``seed``) and score each model as it was trained (carried states, or windows from an empty
    state) on the validation split cut into streams of 512 tokens, shorter than the training streams.

    Returns:
        ``(losses, share)``: ``losses[carry, "train"]`` the training loss of the last 100 steps,
        ``losses[carry, "recall"]`` the mean nats of the answers only a carried state can know (see
        :func:`recall_targets`); ``share`` the fraction of the scored predictions that are such answers.
    """
    path = tmp_path / "recall.txt"
    path.write_text(recall_text(n_docs=3000, max_gap=8, max_queries=4, seed=data_seed))
    corpus = load_corpus(path, cache_dir=tmp_path / "cache")
    letters, (query,) = corpus.tokenizer.encode(RECALL_LETTERS), corpus.tokenizer.encode("?")
    context, steps, n = 8, 1500, 512
    model_cfg = LMConfig(
        vocab_size=corpus.tokenizer.vocab_size,
        d_model=64,
        n_layers=1,
        n_heads=4,
        d_ff=128,
        context=context,
        attention="identity+delta",
        pos_emb="none",
        chunk_size=context,
    )
    starts = range(0, len(corpus.val) - n - 1, n)
    ids = np.stack([np.asarray(corpus.val[a : a + n + 1], dtype=np.int64) for a in starts])  # [S, n + 1]
    recall = recall_targets(ids, letters, query, context)  # [S, n]
    assert recall.sum() > 100
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        losses = {}
        for carry in (True, False):
            run = tmp_path / f"carry-{carry}"
            train(
                model_cfg,
                TrainConfig(
                    batch_size=16,
                    steps=steps,
                    lr=3e-2,
                    min_lr=3e-3,
                    warmup=20,
                    eval_every=steps,
                    eval_batches=1,
                    ckpt_every=steps,
                    log_every=100,
                    seed=seed,
                    carry_state=carry,
                ),
                corpus,
                run,
                progress=False,
            )
            model, _ = load_model(run)
            nll = segment_nll(model, torch.from_numpy(ids), context, carry=carry).numpy()  # [S, n]
            losses[carry, "train"] = float(read_metrics(run)[-1]["train_loss"])
            losses[carry, "recall"] = float(nll[recall].mean())
    finally:
        torch.set_num_threads(threads)
    return losses, float(recall.mean())


def test_a_carried_state_recalls_what_no_window_holds(tmp_path: Path) -> None:
    """Recall across segments (see :func:`recall_text`). Trained on carried streams, a one-layer
    DeltaNet answers the queries whose letter lies before the current segment far below chance
    (ln 8) under the carried-state protocol, and its training loss is lower by about what those
    answers are worth (the states flowed in training); trained on windows, the same model is at
    chance on them. With truncated BPTT the recall is learned from the queries inside a segment
    and used across segments."""
    losses, share = recall_losses(tmp_path, seed=1, data_seed=0)
    chance = math.log(len(RECALL_LETTERS))
    assert losses[True, "recall"] < 0.1 * chance
    assert losses[False, "recall"] > 0.9 * chance
    assert losses[False, "train"] - losses[True, "train"] > 0.5 * share * chance
