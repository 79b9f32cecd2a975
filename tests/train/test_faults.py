"""Fault injection for `fastweights train`: kill -9 at random moments then resume (byte-identical),
corrupted or truncated checkpoints (fall back), a full disk (clear error, nothing corrupt), a second
writer (refused), NaN/inf (stop or skip, good checkpoints kept), and bad input (refused before --out
is touched)."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import math
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Set

import pytest
import safetensors.torch
import torch

from fastweights import cli
from fastweights.data.text import load_corpus
from fastweights.files.atomic import atomic_write
from fastweights.files.runlock import run_lock
from fastweights.models import LanguageModel, TrainConfig
from fastweights.train import NonFiniteError, train
from fastweights.train.checkpoints import CheckpointError, checkpoint_step, latest_checkpoint, list_checkpoints

from ..tiny_lm import TEXT
from .test_train import REPO, losses, run_cli, tiny_cfgs

#: test_train.py's tiny model and schedule (tiny_cfgs), as --set overrides of the shakespeare-char preset
TINY_SET = dict(
    d_model=16,
    n_layers=2,
    n_heads=2,
    d_ff=32,
    context=16,
    chunk_size=8,
    batch_size=4,
    warmup=3,
    eval_batches=2,
    log_every=1,
)
STEPS = 8


def cli_args(data: Path, out: Path, cache: Path, *extra: str, **settings) -> List[str]:
    """`fastweights train` arguments for the tiny delta-rule model, with ``settings`` as --set overrides."""
    sets = [a for k, v in {**TINY_SET, **settings}.items() for a in ("--set", f"{k}={v}")]
    return [
        "train",
        "--preset",
        "shakespeare-char",
        "--attention",
        "delta",
        "--data",
        str(data),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        "--no-progress",
        *sets,
        *extra,
    ]


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The one line `fastweights train` printed to stderr (there must be exactly one)."""
    err = capsys.readouterr().err
    assert err.startswith("fastweights train: error: ") and err.count("\n") == 1, err
    return err.strip()


def temporaries(out: Path) -> List[Path]:
    return [p for p in out.rglob(".*.tmp")]


def all_finite(path: Path) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in safetensors.torch.load_file(path).values())


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """A text file, its token cache, and a finished reference run of STEPS steps (checkpoints every 4)."""
    root = tmp_path_factory.mktemp("faults")
    text = root / "text.txt"
    text.write_text(TEXT * 4)
    corpus = load_corpus(text, cache_dir=root / "cache")
    model_cfg, train_cfg = tiny_cfgs(corpus.tokenizer.vocab_size, steps=STEPS, ckpt_every=4, eval_every=4)
    train(model_cfg, train_cfg, corpus, root / "reference", progress=False)
    return {"text": text, "cache": root / "cache", "reference": root / "reference"}


def tiny_run(data: Dict[str, Path], **train_kw):
    corpus = load_corpus(data["text"], cache_dir=data["cache"])
    return (
        corpus,
        *tiny_cfgs(corpus.tokenizer.vocab_size, **{"steps": STEPS, "ckpt_every": 4, "eval_every": 4, **train_kw}),
    )


# ---------------------------------------------------------------------------- corrupted checkpoints
def overwrite_ff(path: Path) -> None:
    """400 bytes of 0xFF in the middle of the file (float32 NaNs where tensor data lies)."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(b"\xff" * 400)


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


CORRUPTIONS: Dict[str, Callable[[Path], None]] = {
    "weights-0xff": lambda c: overwrite_ff(c / "model.safetensors"),
    "weights-truncated": lambda c: truncate(c / "model.safetensors"),
    "trainer-truncated": lambda c: truncate(c / "trainer.pt"),
    # without the manifest's hashes the NaNs themselves must be caught
    "weights-nan-no-manifest": lambda c: (overwrite_ff(c / "model.safetensors"), (c / "manifest.json").unlink()),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_newest_checkpoint_falls_back_to_the_previous(
    data, tmp_path: Path, corruption: str, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    shutil.copytree(data["reference"], out)
    CORRUPTIONS[corruption](out / "checkpoints" / "step-00000008")
    (out / "checkpoints" / ".step-00000009.0badf00d.tmp").mkdir()  # what a run killed while checkpointing leaves
    (out / ".metrics.csv.0badf00d.tmp").write_text("half a file")
    (out / ".notes.0badf00d.tmp").write_text("not ours: kept")
    corpus, model_cfg, train_cfg = tiny_run(data)
    with caplog.at_level(logging.WARNING, logger="fastweights.train"):
        train(model_cfg, train_cfg, corpus, out, resume=True, progress=False)
    assert "step-00000008 is unusable" in caplog.text and "resuming from step 4" in caplog.text
    assert (out / "checkpoints" / "rejected-step-00000008").is_dir()  # moved aside, not deleted
    assert [c.name for c in list_checkpoints(out)] == ["step-00000004", "step-00000008"]
    assert temporaries(out) == [out / ".notes.0badf00d.tmp"]
    # steps 5..8 again from step 4: the same weights and curve as the run that was never corrupted
    assert (out / "model.safetensors").read_bytes() == (data["reference"] / "model.safetensors").read_bytes()
    assert losses(out) == losses(data["reference"])


def test_checkpoints_without_manifest_still_resume(data, tmp_path: Path) -> None:
    """Runs written before checkpoints had manifests: the newest is dropped (a run killed after step 4)."""
    out = tmp_path / "run"
    shutil.copytree(data["reference"], out)
    shutil.rmtree(out / "checkpoints" / "step-00000008")
    (out / "checkpoints" / "step-00000004" / "manifest.json").unlink()
    corpus, model_cfg, train_cfg = tiny_run(data)
    train(model_cfg, train_cfg, corpus, out, resume=True, progress=False)
    assert (out / "model.safetensors").read_bytes() == (data["reference"] / "model.safetensors").read_bytes()


def test_no_usable_checkpoint_is_an_error_and_moves_nothing(data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(data["reference"], out)
    for ckpt in list_checkpoints(out):
        truncate(ckpt / "model.safetensors")
    corpus, model_cfg, train_cfg = tiny_run(data)
    with pytest.raises(CheckpointError, match="no usable checkpoint in .*checkpoints"):
        train(model_cfg, train_cfg, corpus, out, resume=True, progress=False)
    assert [c.name for c in list_checkpoints(out)] == ["step-00000004", "step-00000008"]


# ---------------------------------------------------------------------------- NaN and inf
class _InfiniteGradient(torch.autograd.Function):
    """Identity forward; the backward multiplies the gradient by infinity (a finite loss, infinite gradients)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad * math.inf


def poison_steps(
    monkeypatch: pytest.MonkeyPatch, steps: Set[int], poison: Callable[[torch.Tensor], torch.Tensor]
) -> None:
    """Apply ``poison`` to the training loss of the given steps (1-based, one micro-step per step)."""
    forward, calls = LanguageModel.forward, itertools.count(1)

    def poisoned(self, *args, **kwargs):
        logits, loss, state = forward(self, *args, **kwargs)
        if self.training and next(calls) in steps:
            loss = poison(loss)
        return logits, loss, state

    monkeypatch.setattr(LanguageModel, "forward", poisoned)


def nan_loss(loss: torch.Tensor) -> torch.Tensor:
    return loss * math.nan


def test_nan_loss_stops_the_run_and_keeps_the_good_checkpoints(
    data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    corpus, model_cfg, train_cfg = tiny_run(data, ckpt_every=1)
    poison_steps(monkeypatch, {6}, nan_loss)
    with pytest.raises(
        NonFiniteError,
        match=re.escape(f"non-finite loss at step 6 (loss nan); the last good checkpoint is step 5 in {out}"),
    ):
        train(model_cfg, train_cfg, corpus, out, progress=False)
    assert [c.name for c in list_checkpoints(out)] == ["step-00000004", "step-00000005"]
    assert all(all_finite(c / "model.safetensors") for c in list_checkpoints(out)) and all_finite(
        out / "model.safetensors"
    )
    monkeypatch.undo()  # the cause is gone: resuming finishes the run as if nothing had happened
    train(model_cfg, train_cfg, corpus, out, resume=True, progress=False)
    assert (out / "model.safetensors").read_bytes() == (data["reference"] / "model.safetensors").read_bytes()


@pytest.mark.parametrize(
    "poison, what",
    [
        (nan_loss, r"loss at step 3 \(loss nan\)"),
        (_InfiniteGradient.apply, r"gradient norm at step 3 \(loss [0-9.]+, gradient norm (inf|nan)\)"),
    ],
)
def test_bad_steps_are_skipped_up_to_max_bad_steps(
    data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, poison, what: str
) -> None:
    corpus, model_cfg, train_cfg = tiny_run(data, max_bad_steps=1, steps=4)
    poison_steps(monkeypatch, {3}, poison)
    with caplog.at_level(logging.WARNING, logger="fastweights.train"):
        train(model_cfg, train_cfg, corpus, tmp_path / "one", progress=False)
    assert re.search(f"non-finite {what}: update skipped \\(1 of max_bad_steps=1 in a row\\)", caplog.text)
    assert all_finite(tmp_path / "one" / "model.safetensors") and len(losses(tmp_path / "one")) == 4
    poison_steps(monkeypatch, {3, 4}, poison)  # two in a row: one more than allowed
    with pytest.raises(
        NonFiniteError,
        match=r"at step 4 .*after 1 skipped step\(s\) in a row \(max_bad_steps=1\); "
        r"no checkpoint was written to .* yet",
    ):
        train(model_cfg, train_cfg, corpus, tmp_path / "two", progress=False)


def test_non_finite_weights_are_never_checkpointed(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus, model_cfg, train_cfg = tiny_run(data, ckpt_every=2)
    step, calls = torch.optim.AdamW.step, itertools.count(1)

    def poisoning_step(
        self, *args, **kwargs
    ):  # the 4th update leaves an infinite weight (its loss and gradients were finite)
        result = step(self, *args, **kwargs)
        if next(calls) == 4:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = math.inf
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoning_step)
    with pytest.raises(
        NonFiniteError,
        match=r"non-finite values after step 4 in .*; not checkpointed; the last good checkpoint is step 2",
    ):
        train(model_cfg, train_cfg, corpus, tmp_path / "run", progress=False)
    assert [c.name for c in list_checkpoints(tmp_path / "run")] == ["step-00000002"]


def test_a_diverging_run_exits_2_with_one_line(data, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert cli.main(cli_args(data["text"], out, data["cache"], steps=20, lr=1e30, ckpt_every=1)) == 2
    message = error_line(capsys)
    match = re.fullmatch(
        rf"fastweights train: error: non-finite loss at step (\d+) \(loss nan\); "
        rf"the last good checkpoint is step (\d+) in {re.escape(str(out))}",
        message,
    )
    assert match and int(match[2]) == int(match[1]) - 1 == int(latest_checkpoint(out).name[5:]), message
    assert all(all_finite(c / "model.safetensors") for c in list_checkpoints(out))


# ---------------------------------------------------------------------------- one writer
def test_a_second_writer_is_refused_at_once(data, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    with run_lock(out, "another fastweights train"):
        assert cli.main(cli_args(data["text"], out, data["cache"], steps=2)) == 2
    message = error_line(capsys)
    assert (
        f"--out {out} is in use by pid {os.getpid()} on {socket.gethostname()} (another fastweights train, since "
        in message
    )
    assert list(out.iterdir()) == []  # nothing written, and the lock gone
    assert cli.main(cli_args(data["text"], out, data["cache"], steps=2)) == 0  # free again


@pytest.mark.slow
def test_a_lock_taken_on_a_deleted_lock_file_is_taken_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process that opened ``.lock`` just before its holder finished (and deleted it) must not hold
    a lock on the deleted file while a third process locks the new one."""
    from fastweights.files import runlock

    out = tmp_path / "run"
    with run_lock(out, "first"):
        stale = os.open(out / ".lock", os.O_RDWR)  # opened while the first run still holds it
    assert not (out / ".lock").exists()  # the first run deleted it on its way out
    real_open, opened = os.open, []

    def open_stale_first(path, flags, mode=0o777):
        opened.append(path)
        return stale if len(opened) == 1 else real_open(path, flags, mode)

    monkeypatch.setattr(runlock.os, "open", open_stale_first)
    with run_lock(out, "second") as lock:
        monkeypatch.setattr(runlock.os, "open", real_open)
        assert len(opened) == 2 and lock.exists()  # the stale descriptor was dropped, the new file locked
        with pytest.raises(runlock.RunLockedError):
            with run_lock(out, "third"):
                pass


def test_sigkill_at_random_moments_then_resume_is_byte_identical(
    data, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Checkpoint every step, kill -9 twice at random moments (during a step or a checkpoint write),
    resume each time; meanwhile a second writer is refused, naming the running process."""
    seed = int(os.environ.get("FASTWEIGHTS_FAULT_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    settings = dict(steps=60, ckpt_every=1, eval_every=20, dropout=0.1)
    args = ["-m", "fastweights.cli"] + cli_args(data["text"], tmp_path / "full", data["cache"], **settings)
    full = run_cli(args)
    assert full.wait(timeout=300) == 0, full.stdout.read()
    out = tmp_path / "killed"
    args = ["-m", "fastweights.cli"] + cli_args(data["text"], out, data["cache"], **settings)
    proc, seen = run_cli(args), 0
    for kill in range(2):
        while (
            latest_checkpoint(out) is None or checkpoint_step(latest_checkpoint(out)) <= seen
        ) and proc.poll() is None:
            time.sleep(0.005)  # until this process has trained and checkpointed
        seen = checkpoint_step(latest_checkpoint(out))
        if kill == 0:
            assert cli.main(args[2:] + ["--resume"]) == 2
            assert f"is in use by pid {proc.pid} on " in error_line(capsys)
        time.sleep(rng.uniform(0.0, 0.6))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL, f"the run finished before kill {kill} (seed {seed})"
        proc = run_cli(args + ["--resume"])
    assert proc.wait(timeout=300) == 0, proc.stdout.read()
    assert losses(out) == losses(tmp_path / "full"), f"seed {seed}"
    for name in ["model.safetensors", "checkpoints/step-00000060/model.safetensors"]:
        assert (out / name).read_bytes() == (tmp_path / "full" / name).read_bytes(), f"{name} differs (seed {seed})"
    assert not temporaries(out)


# ---------------------------------------------------------------------------- full disk
@pytest.fixture
def file_size_limit() -> Iterator[int]:
    """Writes past 10,000 bytes fail with EFBIG in this process (RLIMIT_FSIZE; Python ignores SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, hard))
    try:
        yield 10_000
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


@pytest.mark.parametrize(
    "write",
    [
        lambda path: torch.save(
            {"w": torch.zeros(10_000)}, open(path, "wb")
        ),  # RuntimeError 'unexpected pos' over the OSError
        lambda path: safetensors.torch.save_file(
            {"w": torch.zeros(10_000)}, path
        ),  # SafetensorError '... (os error 27)'
    ],
    ids=["torch", "safetensors"],
)
def test_library_write_errors_become_os_errors_naming_the_file(tmp_path: Path, file_size_limit: int, write) -> None:
    target = tmp_path / "weights.bin"
    with pytest.raises(OSError) as e:
        atomic_write(target, write)
    assert e.value.errno == errno.EFBIG and e.value.filename == str(target)
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))  # the run's small files fit, its checkpoint does not


def test_a_write_failure_is_one_clear_line_and_leaves_nothing_corrupt(data, tmp_path: Path) -> None:
    """The kernel refuses the checkpoint's writes (RLIMIT_FSIZE: EFBIG, the path of ENOSPC in torch and safetensors)."""
    out = tmp_path / "run"
    proc = run_cli(
        ["-m", "fastweights.cli"] + cli_args(data["text"], out, data["cache"], steps=4, ckpt_every=2),
        preexec_fn=_limit_file_size,
    )
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 2, output
    assert output.splitlines()[-1] == (
        f"fastweights train: error: File too large (writing the checkpoint of step 2): "
        f"{out}/checkpoints/step-00000002/model.safetensors"
    )
    assert list_checkpoints(out) == [] and not temporaries(out)
    assert (out / "config.json").is_file() and "Traceback" not in output


@pytest.mark.slow
def test_a_full_disk_is_one_clear_line_and_leaves_nothing_corrupt(data, tmp_path: Path) -> None:
    """A real ENOSPC: --out on an 80 KiB tmpfs mounted in a user namespace (skipped where those are not allowed)."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("needs unprivileged user namespaces (unshare -rm)")
    disk = tmp_path / "disk"
    disk.mkdir()
    out = disk / "run"
    train_args = " ".join(cli_args(data["text"], out, data["cache"], steps=4, ckpt_every=2))
    script = (
        f"mount -t tmpfs -o size=80k tmpfs {disk} && cd {REPO} && {sys.executable} -m fastweights.cli {train_args}; "
        f"echo rc=$?; find {disk} | sort"
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert "rc=2" in proc.stdout, proc.stdout + proc.stderr
    assert re.fullmatch(
        rf"fastweights train: error: No space left on device \(writing the checkpoint of step 2\): "
        rf"{re.escape(str(out))}/checkpoints/step-00000002/(model.safetensors|trainer.pt)",
        proc.stderr.splitlines()[-1],
    ), proc.stderr
    listing = proc.stdout.split("rc=2", 1)[1].split()
    assert f"{out}/config.json" in listing and not [p for p in listing if "step-" in p or p.endswith(".tmp")], listing


# ---------------------------------------------------------------------------- bad input
BAD_INPUT = [
    (["--set", "lr=abc"], "TrainConfig.lr must be a finite number, got 'abc'"),
    (["--set", "lr=Infinity"], "TrainConfig.lr must be a finite number, got inf"),
    (["--set", "grad_clip=nan"], "TrainConfig.grad_clip must be a finite number, got nan"),
    (["--set", "warmup=1.5"], "TrainConfig.warmup must be an int, got '1.5'"),
    (["--set", "weight_decay=-1"], "TrainConfig.weight_decay must be in [0, inf), got -1.0"),
    (["--set", "seed=-1"], "TrainConfig.seed must be an int in [0, 2**63), got -1"),
    (["--set", "beta1=2"], "TrainConfig.beta1 must be in [0, 1), got 2.0"),
    (["--set", "max_bad_steps=-1"], "TrainConfig.max_bad_steps must be an int >= 0, got -1"),
    (["--set", "d_head=0"], "LMConfig.d_head must be a positive int or null, got 0"),
    (
        ["--set", "tie_embeddings=maybe"],
        "LMConfig.tie_embeddings must be a bool (true/false, yes/no, 1/0), got 'maybe'",
    ),
    (["--set", "context=100000"], "tokens, fewer than context + 2 = 100002; use more data or a smaller context"),
    (["--val-fraction", "0.001"], "the validation split of "),
    (["--resume"], "holds no run (no config.json)"),
]


@pytest.mark.parametrize("args, message", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_is_refused_before_out_is_touched(
    data, tmp_path: Path, capsys: pytest.CaptureFixture, args: List[str], message: str
) -> None:
    out = tmp_path / "run"
    assert cli.main(cli_args(data["text"], out, data["cache"], *args, steps=2)) == 2
    assert message in error_line(capsys)
    assert not out.exists()


def test_the_corrected_command_is_accepted(data, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    assert cli.main(cli_args(data["text"], out, data["cache"], "--set", "beta1=2", steps=2)) == 2
    assert cli.main(cli_args(data["text"], out, data["cache"], steps=2)) == 0


def test_set_reads_each_field_as_its_type(data, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert (
        cli.main(
            cli_args(data["text"], out, data["cache"], "--set", "tie_embeddings=False", "--set", "bias=no", steps=1)
        )
        == 0
    )
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"]["tie_embeddings"] is False and saved["model"]["bias"] is False
    weights = safetensors.torch.load_file(out / "model.safetensors")
    assert "wte.weight" in weights and "head.weight" in weights  # untied
    assert "blocks.0.ln_1.bias" not in weights and "blocks.0.ff.fc.bias" not in weights
    assert TrainConfig.from_dict(saved["train"]).max_bad_steps == 0


# ---------------------------------------------------------------------------- files
def test_rewritten_data_file_is_tokenized_again(tmp_path: Path) -> None:
    """Same size, same modification time, other bytes: the cache must not serve the old ids."""
    path = tmp_path / "data.txt"
    path.write_text("abcabcabcabc\n" * 20)
    stat = path.stat()
    old = load_corpus(path, cache_dir=tmp_path / "cache")
    path.write_text("cbacbacbacba\n" * 20)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    new = load_corpus(path, cache_dir=tmp_path / "cache")
    assert new.tokenizer.decode(new.train[:4].tolist()) == "cbac" != old.tokenizer.decode(old.train[:4].tolist())


def test_run_files_follow_the_umask(data, tmp_path: Path) -> None:
    corpus, model_cfg, train_cfg = tiny_run(data, steps=2, ckpt_every=1)
    old = os.umask(0o027)
    try:
        train(model_cfg, train_cfg, corpus, tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    paths = [tmp_path / "run", *(tmp_path / "run").rglob("*")]
    modes = {p.relative_to(tmp_path): oct(p.stat().st_mode & 0o777) for p in paths}
    assert {m for p, m in modes.items() if (tmp_path / p).is_file()} == {"0o640"}, modes
    assert {m for p, m in modes.items() if (tmp_path / p).is_dir()} == {"0o750"}, modes
