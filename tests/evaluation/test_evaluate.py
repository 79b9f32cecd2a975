"""The two evaluation protocols against direct computations, and the `fastweights eval` command."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from fastweights.cli import main as cli_main
from fastweights.data.text import WordTokenizer, load_corpus
from fastweights.evaluation.loss import (
    carried_state_loss,
    evaluate,
    position_profile,
    sliding_window_loss,
    window_starts,
)
from fastweights.models import load_model

from ..tiny_lm import TEXT, tiny_model, write_model_dir


@pytest.mark.parametrize("n, context, stride", [(2, 4, 1), (10, 4, 1), (10, 4, 3), (10, 4, 4), (5, 8, 1), (40, 7, 5)])
def test_windows_score_every_target_once(n: int, context: int, stride: int) -> None:
    starts, n_scored = window_starts(n, context, stride)
    L = min(context, n - 1)
    scored = [t for a, k in zip(starts.tolist(), n_scored.tolist()) for t in range(a + L - k + 1, a + L + 1)]
    assert scored == list(range(1, n))
    assert starts.max() + L <= n - 1


@pytest.mark.parametrize("attention", ["softmax", "delta"])
def test_sliding_window_equals_direct_last_position_scoring(attention: str) -> None:
    model = tiny_model(attention, context=8)
    ids = torch.randint(0, model.cfg.vocab_size, (37,))
    nll = []
    with torch.no_grad():
        for t in range(1, len(ids)):  # each target from (at most) the 8 tokens before it
            logits = model(ids[max(0, t - 8) : t][None])[0][0, -1]  # [V]
            nll.append(-F.log_softmax(logits, -1)[ids[t]].item())
    result = sliding_window_loss(model, ids, context=8, stride=1, batch_size=5)
    assert result.tokens == 36 and result.context == 8
    assert result.nats == pytest.approx(sum(nll) / len(nll), rel=1e-5)
    assert result.bits == pytest.approx(result.nats / math.log(2)) and result.perplexity == pytest.approx(
        math.exp(result.nats)
    )


def test_stride_equal_to_context_scores_disjoint_blocks() -> None:
    model = tiny_model("linear", context=8)
    ids = torch.randint(0, model.cfg.vocab_size, (33,))  # 32 targets = 4 blocks of 8
    with torch.no_grad():
        losses = [model(ids[a : a + 8][None], targets=ids[a + 1 : a + 9][None])[1] for a in range(0, 32, 8)]
    result = sliding_window_loss(model, ids, context=8, stride=8)
    assert result.nats == pytest.approx(torch.stack(losses).mean().item(), rel=1e-5)


@pytest.mark.parametrize("attention", ["linear", "delta", "dpfp-2+delta"])
@pytest.mark.parametrize("segment", [7, 64])
def test_carried_state_equals_one_full_forward(attention: str, segment: int) -> None:
    # no positions: segments with the fast weights carried == the whole sequence in one pass
    model = tiny_model(attention, context=8)
    ids = torch.randint(0, model.cfg.vocab_size, (50,))
    with torch.no_grad():
        full = model(ids[None, :-1], targets=ids[None, 1:])[1].item()
    result = carried_state_loss(model, ids, segment=segment)
    assert result.tokens == 49 and result.nats == pytest.approx(full, rel=1e-5)


def test_carried_state_restarts_learned_positions_per_segment() -> None:
    model = tiny_model("delta", context=8, pos_emb="learned")
    ids = torch.randint(0, model.cfg.vocab_size, (21,))
    total, state = 0.0, None
    with torch.no_grad():
        for a in range(0, 20, 8):  # segments [0, 8), [8, 16), [16, 20), each at positions 0..
            if state is not None:
                state["pos"] = 0
            _, loss, state = model(
                ids[None, a : min(a + 8, 20)], targets=ids[None, a + 1 : min(a + 9, 21)], state=state
            )
            total += loss.item() * (min(a + 8, 20) - a)
    assert carried_state_loss(model, ids, segment=8).nats == pytest.approx(total / 20, rel=1e-5)


def test_evaluate_runs_both_protocols_and_skips_carried_state_for_softmax() -> None:
    ids = torch.randint(0, 23, (100,))
    fwp = evaluate(tiny_model("delta", context=8), ids, 8, stride=2, max_tokens=30)
    assert [r.protocol for r in fwp] == ["sliding-window", "carried-state"] and all(r.tokens == 30 for r in fwp)
    soft = evaluate(tiny_model("softmax", context=8), ids, 8)
    assert [r.protocol for r in soft] == ["sliding-window"] and soft[0].tokens == 99
    with pytest.raises(ValueError, match="softmax"):
        carried_state_loss(tiny_model("softmax", context=8), ids, 8)


def test_bad_arguments_are_clear_errors() -> None:
    model = tiny_model("delta", context=8)
    ids = torch.randint(0, 23, (20,))
    with pytest.raises(ValueError, match="stride"):
        sliding_window_loss(model, ids, context=8, stride=9)
    with pytest.raises(ValueError, match="stride"):
        sliding_window_loss(model, ids, context=8, stride=0)
    with pytest.raises(ValueError, match="ids"):
        sliding_window_loss(model, ids.float(), context=8)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        carried_state_loss(model, ids[:1], segment=8)
    with pytest.raises(ValueError, match="protocols"):
        evaluate(model, ids, 8, protocols=["nope"])


def test_eval_command_reports_both_protocols(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FASTWEIGHTS_CACHE", str(tmp_path / "cache"))
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT)
    write_model_dir(tmp_path / "delta", "delta")
    write_model_dir(tmp_path / "softmax", "softmax")
    out_json = tmp_path / "eval.json"
    args = [
        "eval",
        "--checkpoint",
        str(tmp_path / "delta"),
        "--data",
        str(text_file),
        "--max-tokens",
        "200",
        "--no-progress",
        "--json",
        str(out_json),
    ]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "sliding-window" in out and "carried-state" in out and "bits/char" in out
    doc = json.loads(out_json.read_text())
    model, _ = load_model(tmp_path / "delta")
    val = load_corpus(text_file, tokenizer_file=tmp_path / "delta" / "tokenizer.json", val_fraction=0.25).val
    expected = evaluate(model, val, model.cfg.context, max_tokens=200)
    assert [r["nats"] for r in doc["results"]] == pytest.approx([r.nats for r in expected], rel=1e-6)
    assert all(r["tokens"] == 200 for r in doc["results"])

    assert (
        cli_main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "softmax"),
                "--data",
                str(text_file),
                "--stride",
                "16",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "n/a" in capsys.readouterr().out
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "delta"), "--data", str(text_file), "--split", "test"]) == 2
    assert "no 'test' split" in capsys.readouterr().err
    assert cli_main(["eval", "--checkpoint", str(tmp_path / "nowhere"), "--data", str(text_file)]) == 2


def test_eval_command_on_a_word_level_corpus_reports_perplexity(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FASTWEIGHTS_CACHE", str(tmp_path / "cache"))
    corpus_dir = tmp_path / "wiki"
    corpus_dir.mkdir()
    lines = TEXT.splitlines()
    for name, part in (("train", lines[:50]), ("valid", lines[50:65]), ("test", lines[65:])):
        (corpus_dir / f"wiki.{name}.tokens").write_text("\n".join(part) + "\n")
    tokenizer = WordTokenizer.from_lines(lines[:50])
    write_model_dir(tmp_path / "model", "dpfp-2+delta", tokenizer)
    out_json = tmp_path / "eval.json"
    assert (
        cli_main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "model"),
                "--data",
                str(corpus_dir),
                "--split",
                "test",
                "--no-progress",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    assert "nats/token" in capsys.readouterr().out
    n_test = len(tokenizer.encode("\n".join(lines[65:]) + "\n"))
    assert [r["tokens"] for r in json.loads(out_json.read_text())["results"]] == [n_test - 1] * 2


@pytest.mark.parametrize("attention", ["delta", "linear", "rdn"])
def test_position_profile_averages_the_carried_loss_of_each_stream(attention: str) -> None:
    """Streams read side by side give, segment by segment, the carried-state loss each stream gets alone."""
    model = tiny_model(attention)
    ids = torch.randint(0, 23, (3 * 100 + 7,))
    profile = position_profile(model, ids, segment=16, stream_length=100)
    assert profile.streams == 3 and profile.start == list(range(0, 100, 16))
    tokens = [min(16, 100 - s) for s in profile.start]
    total = sum(n * t for n, t in zip(profile.nats, tokens)) / sum(tokens)
    alone = [carried_state_loss(model, ids[i * 100 : i * 100 + 101], 16).nats for i in range(3)]
    assert total == pytest.approx(sum(alone) / 3, rel=1e-5)
    assert all(n > 0 for n in profile.state_norm)
    assert [b[0] for b in profile.buckets((32, 64))] == ["0-32", "32-64", "64+"]


def test_position_profile_needs_fast_weights() -> None:
    with pytest.raises(ValueError, match="needs a fast-weight model"):
        position_profile(tiny_model("softmax"), torch.randint(0, 23, (200,)), 16)


def test_eval_by_position_prints_the_table_and_plots(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("FASTWEIGHTS_CACHE", str(tmp_path / "cache"))
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT * 4)
    write_model_dir(tmp_path / "delta", "delta")
    png = tmp_path / "plots" / "position.png"
    assert (
        cli_main(
            [
                "eval",
                "--checkpoint",
                str(tmp_path / "delta"),
                "--data",
                str(text_file),
                "--protocol",
                "carried-state",
                "--by-position",
                "--stream-length",
                "200",
                "--plot",
                str(png),
                "--no-progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| position | nats/char | mean ‖S‖_F |" in out and "| 0-64 |" in out and "| 64-256 |" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        cli_main(["eval", "--checkpoint", str(tmp_path / "delta"), "--data", str(text_file), "--plot", str(png)]) == 2
    )
    assert "--plot draws the --by-position profile" in capsys.readouterr().err
