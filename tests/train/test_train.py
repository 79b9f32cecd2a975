"""The training loop: schedule, batches, a tiny run end to end, errors, SIGKILL + resume == uninterrupted,
gradient accumulation and 2-process DDP == 1 process, and the CLI."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
import safetensors.torch
import torch
import torch.distributed as dist

from fastweights import cli
from fastweights.data.text import load_corpus, load_tokenizer
from fastweights.models import LMConfig, TrainConfig, get_run_preset, load_model, read_config
from fastweights.ops import list_rules
from fastweights.train import eval_windows, lr_at, read_metrics, sample_batch, train
from fastweights.train.checkpoints import latest_checkpoint

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--set",
    "d_model=16",
    "--set",
    "n_layers=2",
    "--set",
    "n_heads=2",
    "--set",
    "d_ff=32",
    "--set",
    "context=16",
    "--set",
    "chunk_size=8",
    "--set",
    "batch_size=4",
    "--set",
    "warmup=5",
    "--set",
    "eval_batches=2",
    "--set",
    "log_every=1",
    "--no-progress",
]


def tiny_cfgs(vocab_size: int, **train_kw) -> tuple:
    model = LMConfig(
        vocab_size=vocab_size,
        d_model=16,
        n_layers=2,
        n_heads=2,
        d_ff=32,
        context=16,
        attention="delta",
        pos_emb="none",
        chunk_size=8,
    )
    return model, TrainConfig(
        **{
            **dict(batch_size=4, steps=12, warmup=3, eval_every=6, eval_batches=2, ckpt_every=6, log_every=1),
            **train_kw,
        }
    )


def losses(out: Path) -> List[tuple]:
    return [(int(r["step"]), float(r["train_loss"]), r["val_loss"]) for r in read_metrics(out)]


def run_cli(args: List[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


def test_schedule() -> None:
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup=10, steps=110)
    assert lr_at(0, cfg) == pytest.approx(1e-4) and lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(60, cfg) == pytest.approx(0.5 * (1e-3 + 1e-4))
    assert lr_at(110, cfg) == pytest.approx(1e-4) and lr_at(500, cfg) == pytest.approx(1e-4)
    after = [lr_at(s, cfg) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(after, after[1:]))


def test_batches_and_eval_windows() -> None:
    data = np.arange(1000, dtype=np.uint16)
    b = sample_batch(data, 5, 16, torch.Generator().manual_seed(0))
    assert b.shape == (5, 17) and b.dtype == torch.int64
    assert torch.equal(b - b[:, :1], torch.arange(17).expand(5, 17))  # consecutive ids
    assert torch.equal(b, sample_batch(data, 5, 16, torch.Generator().manual_seed(0)))
    starts = eval_windows(1000, 16, 10_000)
    assert len(starts) == 999 // 16 and (np.diff(starts) == 16).all() and starts[-1] + 17 <= 1000
    assert len(eval_windows(1000, 16, 7)) == 7
    with pytest.raises(ValueError, match="fewer than context \\+ 2"):
        sample_batch(data[:10], 2, 16, torch.Generator())
    with pytest.raises(ValueError, match="fewer than context \\+ 1"):
        eval_windows(10, 16, 5)


def test_train_end_to_end(text_file: Path, tmp_path: Path) -> None:
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, steps=40, eval_every=20, ckpt_every=20, lr=1e-2)
    out = tmp_path / "run"
    result = train(model_cfg, train_cfg, corpus, out, progress=False)
    rows = losses(out)
    assert [r[0] for r in rows] == list(range(1, 41)) and result["step"] == 40
    assert rows[-1][1] < rows[0][1] - 0.5  # it learns
    assert [r[0] for r in rows if r[2]] == [20, 40] and result["val_loss"] == float(rows[-1][2])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000020", "step-00000040"]
    model, cfg = load_model(out)
    assert cfg == model_cfg and load_tokenizer(out).vocab == corpus.tokenizer.vocab
    ckpt = safetensors.torch.load_file(latest_checkpoint(out) / "model.safetensors")
    assert all(torch.equal(ckpt[k], v) for k, v in safetensors.torch.load_file(out / "model.safetensors").items())
    # errors: the run exists; resuming with other settings or another vocabulary
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(model_cfg, train_cfg, corpus, out, progress=False)
    with pytest.raises(ValueError, match="training config differs .*'lr'"):
        train(model_cfg, TrainConfig(**{**train_cfg.to_dict(), "lr": 1e-3}), corpus, out, resume=True, progress=False)
    other = tmp_path / "other.txt"
    other.write_text(text_file.read_text().upper())
    upper = load_corpus(other, cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        train(model_cfg, train_cfg, upper, out, resume=True, progress=False)
    with pytest.raises(FileNotFoundError, match="holds no run"):
        train(model_cfg, train_cfg, corpus, tmp_path / "fresh", resume=True, progress=False)
    with pytest.raises(ValueError, match="vocabulary mismatch: model vocab_size 99"):
        train(LMConfig(**{**model_cfg.to_dict(), "vocab_size": 99}), train_cfg, corpus, tmp_path / "x", progress=False)


@pytest.mark.parametrize("carry", [False, True])
def test_grad_accumulation_matches_full_batch(text_file: Path, tmp_path: Path, carry: bool) -> None:
    """Windowed, or streamed (micro-batch i takes streams [i m, (i + 1) m) with its own carried
    states: the same streams and states as one batch of all of them)."""
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    for accum in (1, 2):
        model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, grad_accum=accum, steps=6, carry_state=carry)
        train(model_cfg, train_cfg, corpus, tmp_path / f"acc{accum}", progress=False)
    a, b = losses(tmp_path / "acc1"), losses(tmp_path / "acc2")
    np.testing.assert_allclose([r[1] for r in a], [r[1] for r in b], rtol=1e-5)
    wa, wb = (safetensors.torch.load_file(tmp_path / f"acc{k}" / "model.safetensors") for k in (1, 2))
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-5, rtol=1e-4)


def test_bf16_autocast_on_cpu(text_file: Path, tmp_path: Path) -> None:
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, steps=3, dtype="bfloat16")
    result = train(model_cfg, train_cfg, corpus, tmp_path / "bf16", progress=False)
    assert math.isfinite(result["train_loss"]) and math.isfinite(result["val_loss"])


def test_sigkill_then_resume_equals_uninterrupted(text_file: Path, tmp_path: Path) -> None:
    args = [
        "-m",
        "fastweights.cli",
        "train",
        "--preset",
        "shakespeare-char",
        "--attention",
        "delta",
        "--data",
        str(text_file),
        "--cache-dir",
        str(tmp_path / "cache"),
        *TINY,
        "--set",
        "steps=150",
        "--set",
        "ckpt_every=10",
        "--set",
        "eval_every=50",
        "--set",
        "d_model=32",
        "--set",
        "dropout=0.1",
    ]
    full = run_cli(args + ["--out", str(tmp_path / "full")])
    assert full.wait(timeout=300) == 0, full.stdout.read()
    killed_out = tmp_path / "killed"
    proc = run_cli(args + ["--out", str(killed_out)])
    while latest_checkpoint(killed_out) is None and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    stopped = int(latest_checkpoint(killed_out).name.split("-")[1])
    assert stopped < 150
    resumed = run_cli(args + ["--out", str(killed_out), "--resume"])
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert losses(killed_out) == losses(tmp_path / "full")  # the same curve, bit for bit
    a, b = (safetensors.torch.load_file(d / "model.safetensors") for d in (tmp_path / "full", killed_out))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
@pytest.mark.parametrize("carry,mode", [("false", "ddp"), ("true", "ddp"), ("false", "fsdp"), ("true", "fsdp")])
def test_two_processes_match_one(text_file: Path, tmp_path: Path, carry: str, mode: str) -> None:
    """DDP and FSDP2 on 2 processes equal 1 process (losses to 1e-5, weights to 1e-4), windowed or
    streamed (each process its own streams and states); the sharded run's checkpoint is whole."""
    args = [
        "train",
        "--preset",
        "shakespeare-char",
        "--attention",
        "dpfp-2+delta",
        "--data",
        str(text_file),
        "--cache-dir",
        str(tmp_path / "cache"),
        *TINY,
        "--set",
        "steps=5",
        "--set",
        "eval_every=5",
        "--set",
        "ckpt_every=5",
        "--set",
        f"carry_state={carry}",
        "--set",
        "grad_accum=2",
        "--device",
        "cpu",
    ]
    one = run_cli(["-m", "fastweights.cli", *args, "--out", str(tmp_path / "one")])
    assert one.wait(timeout=300) == 0, one.stdout.read()
    two = run_cli(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "fastweights.cli",
            *args,
            "--set",
            f"data_parallel={mode}",
            "--out",
            str(tmp_path / "two"),
        ]
    )
    assert two.wait(timeout=300) == 0, two.stdout.read()
    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [r[0] for r in a] == [r[0] for r in b] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r[1] for r in b], [r[1] for r in a], rtol=1e-5)
    np.testing.assert_allclose(float(b[-1][2]), float(a[-1][2]), rtol=1e-5)
    wa, wb = (safetensors.torch.load_file(tmp_path / d / "model.safetensors") for d in ("one", "two"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_sharded_run_resumes_where_it_stopped(text_file: Path, tmp_path: Path) -> None:
    """FSDP2 on 2 processes: 3 steps, then --resume to 5, equals 5 steps in one go (the optimizer's
    sharded state goes through the whole-model checkpoint and back)."""
    args = [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "fastweights.cli",
        "train",
        "--preset",
        "shakespeare-char",
        "--attention",
        "linear+gated_delta",
        "--data",
        str(text_file),
        "--cache-dir",
        str(tmp_path / "cache"),
        *TINY,
        "--set",
        "eval_every=5",
        "--set",
        "ckpt_every=1",
        "--set",
        "data_parallel=fsdp",
        "--device",
        "cpu",
    ]
    for out, steps, extra in (("full", 5, []), ("cut", 3, []), ("cut", 5, ["--resume"])):
        run = run_cli([*args, "--set", f"steps={steps}", "--out", str(tmp_path / out), *extra])
        assert run.wait(timeout=300) == 0, run.stdout.read()
    a, b = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert [r[0] for r in b] == [1, 2, 3, 4, 5]
    np.testing.assert_allclose([r[1] for r in b], [r[1] for r in a], rtol=1e-6)
    wa, wb = (safetensors.torch.load_file(tmp_path / d / "model.safetensors") for d in ("full", "cut"))
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], atol=1e-6, rtol=1e-5)


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo")
def test_sharding_what_it_cannot_shard_is_refused_before_writing(text_file: Path, tmp_path: Path) -> None:
    """FSDP with an untied adaptive softmax (unused clusters get no gradient on some processes): one line
    from each process, exit 2 (torchrun adds its own report), --out untouched."""
    run = run_cli(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "fastweights.cli",
            "train",
            "--preset",
            "shakespeare-char",
            "--attention",
            "delta",
            "--data",
            str(text_file),
            "--cache-dir",
            str(tmp_path / "cache"),
            *TINY,
            "--set",
            "adaptive_cutoffs=[4]",
            "--set",
            "tie_embeddings=false",
            "--set",
            "data_parallel=fsdp",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
        ]
    )
    out = run.stdout.read()
    assert run.wait(timeout=300) != 0
    assert "fastweights train: error: data_parallel=fsdp with an untied adaptive softmax" in out
    assert "fastweights/train.py" not in out  # no traceback of ours
    assert not (tmp_path / "run").exists()


def test_cli_help_lists_presets_and_attentions(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    help_text = "".join(capsys.readouterr().out.split())  # argparse wraps lines at hyphens
    for name in ["shakespeare-char", "wt103-small", "wt103-medium", "softmax", "dpfp-<nu>", "favor-<m>"] + list_rules():
        assert name in help_text


def test_cli_errors(text_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    base = [
        "train",
        "--preset",
        "shakespeare-char",
        "--data",
        str(text_file),
        "--out",
        str(tmp_path / "o"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--no-progress",
    ]
    for args, message in [
        (["--attention", "cosine"], "unknown attention variant 'cosine'"),
        (["--set", "vocab_size=10"], "vocab_size comes from the data"),
        (["--set", "layers=3"], "unknown setting 'layers'"),
        (base[:3] + ["--data", str(tmp_path / "missing.txt")] + base[5:], "does not exist"),
    ]:
        assert cli.main(args if args[0] == "train" else base + args) == 2
        err = capsys.readouterr().err
        assert err.startswith("fastweights train: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    assert get_run_preset("shakespeare-char").train.steps == 2000  # overrides never leak into presets


def test_a_preset_trains_on_its_own_corpus_without_data(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """shakespeare-char names tiny Shakespeare, which ships with fastweights: no --data needed."""
    out = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--preset",
                "shakespeare-char",
                "--attention",
                "linear",
                "--out",
                str(out),
                "--cache-dir",
                str(tmp_path / "cache"),
                *TINY,
                "--set",
                "steps=2",
                "--set",
                "eval_batches=1",
            ]
        )
        == 0
    )
    data = read_config(out)["data"]
    assert data["path"].endswith("tinyshakespeare.txt") and data["tokens"]["train"] > 1_000_000
    assert "tinyshakespeare.txt (char, vocabulary 65" in capsys.readouterr().out


def test_resume_may_extend_steps_and_the_run_ends_with_a_loss_plot(text_file: Path, tmp_path: Path) -> None:
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, steps=6)
    out = tmp_path / "run"
    train(model_cfg, train_cfg, corpus, out, progress=False)
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    longer = TrainConfig(**{**train_cfg.to_dict(), "steps": 9})
    result = train(model_cfg, longer, corpus, out, resume=True, progress=False)
    assert result["step"] == 9 and [r[0] for r in losses(out)] == list(range(1, 10))
    assert read_config(out)["train"]["steps"] == 9
    with pytest.raises(ValueError, match=r"differs from the saved run .*'steps': \(9, 7\)"):
        train(model_cfg, TrainConfig(**{**train_cfg.to_dict(), "steps": 7}), corpus, out, resume=True, progress=False)


def test_a_run_saved_with_the_old_decoding_form_name_resumes(text_file: Path, tmp_path: Path) -> None:
    """Runs written before 'recurrent' became 'step' (and 'auto' the default) resume with today's
    defaults: the decoding backend changes no training, so it may differ."""
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, steps=3, eval_every=3, ckpt_every=3)
    out = tmp_path / "run"
    train(model_cfg, train_cfg, corpus, out, progress=False)
    saved = json.loads((out / "config.json").read_text())
    saved["model"]["decode_impl"] = "recurrent"  # as an earlier version wrote it
    (out / "config.json").write_text(json.dumps(saved))
    result = train(
        model_cfg, TrainConfig(**{**train_cfg.to_dict(), "steps": 4}), corpus, out, resume=True, progress=False
    )
    assert result["step"] == 4 and model_cfg.decode_impl == "auto"


def test_tensorboard_gets_the_metrics_when_installed(text_file: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, steps=3)
    train(model_cfg, train_cfg, corpus, tmp_path / "run", progress=False)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train_loss")] == [1, 2, 3]


def test_d_ff_follows_d_model_and_warmup_past_steps_warns(text_file: Path, tmp_path: Path, caplog) -> None:
    preset = get_run_preset("shakespeare-char", "delta").with_overrides(["d_model=64"])
    assert (preset.model.d_model, preset.model.d_ff) == (64, 256)
    assert get_run_preset("shakespeare-char", "delta").with_overrides(["d_model=64", "d_ff=100"]).model.d_ff == 100
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, steps=2, warmup=5)
    with caplog.at_level("WARNING", logger="fastweights.train"):
        train(model_cfg, train_cfg, corpus, tmp_path / "run", progress=False)
    assert "warmup (5) >= steps (2)" in caplog.text


@pytest.mark.slow
def test_compiled_training_matches_eager(text_file: Path, tmp_path: Path) -> None:
    corpus = load_corpus(text_file, cache_dir=tmp_path / "cache")
    for compile_ in (False, True):
        model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, steps=3, compile=compile_)
        train(model_cfg, train_cfg, corpus, tmp_path / str(compile_), progress=False)
    a, b = losses(tmp_path / "False"), losses(tmp_path / "True")
    np.testing.assert_allclose([r[1] for r in a], [r[1] for r in b], rtol=1e-4)
