"""The training loop: AdamW, linear warm-up then cosine decay, clipping, accumulation, bf16 autocast,
periodic evaluation, metrics, atomic checkpoints and bit-for-bit resume, on one or many processes.

Nothing runs at import. :func:`train` trains a :class:`~fastweights.models.LanguageModel` on a
:class:`~fastweights.tasks.text.Corpus` and writes to ``out_dir``:

    config.json, tokenizer.json, model.safetensors   the model directory (see fastweights.models.checkpoint)
    metrics.csv                                      step, lr, train_loss, val_loss, tokens_per_s, elapsed_s
    checkpoints/step-XXXXXXXX/                       model.safetensors + trainer.pt (optimizer, scheduler,
                                                     RNG states, data-sampler state, step); the last two kept
    tensorboard/                                     when TensorBoard is installed

Each optimiser step draws ``batch_size`` windows of ``context + 1`` tokens at random from the
training ids with a dedicated generator (identical on every process; process r of W takes its
slice), so the data position is that generator's state and a run on W processes sees the same
global batch as a run on one. Checkpoints are written into a temporary directory, fsynced and
renamed, and loaded with ``torch.load(weights_only=True)`` (no unpickling of arbitrary objects).

Multi-process: launch the same command with ``torchrun``; the process group uses NCCL on GPUs and
gloo on CPUs, gradients are averaged by ``DistributedDataParallel``.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, TypeVar, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from .atomic import atomic_write, atomic_write_text, fsync_dir
from .models import LanguageModel, LMConfig, TrainConfig, read_config, save_weights, write_config
from .models.checkpoint import WEIGHTS_FILE, load_weights
from .tasks.text import Corpus, check_same_tokenizer, save_tokenizer

METRICS_FILE = "metrics.csv"
METRICS_FIELDS = ["step", "lr", "train_loss", "val_loss", "tokens_per_s", "elapsed_s"]
CHECKPOINTS_DIR = "checkpoints"
TRAINER_FILE = "trainer.pt"
KEEP_CHECKPOINTS = 2
T = TypeVar("T")


# ---------------------------------------------------------------------------- processes and devices
@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: ``rank`` of ``world`` processes, running on ``device``."""

    rank: int
    world: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: Optional[str] = None) -> DistInfo:
    """Join the ``torchrun`` process group when launched by it (NCCL on CUDA, gloo on CPU).

    ``device``: ``'cpu'``, ``'cuda'`` (each process takes ``cuda:LOCAL_RANK``) or ``None`` (CUDA when
    available). Safe to call twice.
    """
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if use_cuda:
        dev = torch.device(device) if device not in (None, "cuda") else torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    return DistInfo(rank, dist.get_world_size() if dist.is_initialized() else 1, dev)


def main_first(info: DistInfo, fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0, then on the other ranks (e.g. to build a shared cache once)."""
    if info.is_main:
        result = fn()
    if info.world > 1:
        dist.barrier()
    if not info.is_main:
        result = fn()
    return result


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> Optional[torch.dtype]:
    """``torch.bfloat16`` when autocast is on for ``device`` (``'auto'``: CUDA with bf16), else ``None``."""
    if cfg.dtype == "bfloat16":
        return torch.bfloat16
    if cfg.dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


# ---------------------------------------------------------------------------- schedule and optimiser
def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up ``lr * (step + 1) / warmup`` for ``step < warmup``, then cosine from ``lr`` to
    ``min_lr`` at ``cfg.steps``: ``min_lr + (lr - min_lr) (1 + cos(pi p)) / 2``, ``p = (step - warmup) / (steps - warmup)``."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    p = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * p))


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on parameters of rank >= 2 (matrices, embeddings) only."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")


# ---------------------------------------------------------------------------- data
def sample_batch(data: np.ndarray, batch_size: int, context: int, generator: torch.Generator) -> Tensor:
    """``batch_size`` random windows of ``context + 1`` consecutive ids: ``[batch_size, context + 1]`` int64."""
    if len(data) < context + 2:
        raise ValueError(f"the training split has {len(data)} tokens, fewer than context + 2 = {context + 2}")
    starts = torch.randint(len(data) - context - 1, (batch_size,), generator=generator).tolist()
    return torch.from_numpy(np.stack([np.asarray(data[s : s + context + 1], dtype=np.int64) for s in starts]))


def eval_windows(n_tokens: int, context: int, max_windows: int) -> np.ndarray:
    """Start offsets of at most ``max_windows`` windows of ``context + 1`` ids, evenly spread over the
    split and never overlapping in their targets (all of them when the split is short): deterministic."""
    n_all = (n_tokens - 1) // context
    if n_all < 1:
        raise ValueError(f"the validation split has {n_tokens} tokens, fewer than context + 1 = {context + 1}")
    n = min(n_all, max_windows)
    return (np.arange(n) * (n_all // n)) * context


@torch.no_grad()
def evaluate(model: nn.Module, data: np.ndarray, context: int, batch_size: int, max_windows: int, info: DistInfo,
             amp: Optional[torch.dtype] = None) -> float:
    """Mean next-token cross-entropy (nats) over :func:`eval_windows` of ``data``, split over processes."""
    starts = eval_windows(len(data), context, max_windows)[info.rank :: info.world]
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=info.device)  # [sum of losses, count]
    for i in range(0, len(starts), batch_size):
        win = torch.from_numpy(np.stack([np.asarray(data[s : s + context + 1], dtype=np.int64) for s in starts[i : i + batch_size]]))
        win = win.to(info.device)  # [b, context + 1]
        with autocast_context(info.device, amp):
            _, loss, _ = model(win[:, :-1], win[:, 1:], return_logits=False)
        total += torch.stack([loss.double() * win[:, 1:].numel(), torch.tensor(float(win[:, 1:].numel()), dtype=torch.float64, device=info.device)])
    if info.world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


def autocast_context(device: torch.device, amp: Optional[torch.dtype]):
    """``torch.autocast`` to ``amp`` on ``device``, or a no-op context when ``amp`` is None."""
    return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()


# ---------------------------------------------------------------------------- checkpoints and metrics
def latest_checkpoint(out_dir: Union[str, Path]) -> Optional[Path]:
    """The newest complete ``checkpoints/step-*`` directory of a run, or ``None``."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    steps = sorted(root.glob("step-*")) if root.is_dir() else []
    return steps[-1] if steps else None


def _save_checkpoint(out_dir: Path, model: nn.Module, trainer_state: Dict, step: int) -> None:
    root = out_dir / CHECKPOINTS_DIR
    root.mkdir(exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=".step-", dir=root))
    try:
        save_weights(model, tmp / WEIGHTS_FILE)
        atomic_write(tmp / TRAINER_FILE, lambda p: torch.save(trainer_state, p))
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(root)
    atomic_write(out_dir / WEIGHTS_FILE, lambda p: shutil.copyfile(final / WEIGHTS_FILE, p))
    for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)


def read_metrics(out_dir: Union[str, Path]) -> List[Dict[str, str]]:
    """The rows of a run's ``metrics.csv`` (empty list when there is none)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class _Metrics:
    """Appends rows to ``metrics.csv`` (and TensorBoard when installed) on the main process."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: Optional[int]) -> None:
        self.path = out_dir / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        rows = read_metrics(out_dir) if resume_step is not None else []
        rows = [r for r in rows if int(r["step"]) <= (resume_step or 0)]  # drop rows a killed run wrote past its checkpoint
        lines = [",".join(METRICS_FIELDS)] + [",".join(r[k] for k in METRICS_FIELDS) for r in rows]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return
        self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, **values: Optional[float]) -> None:
        if not self.enabled:
            return
        row = [str(step)] + ["" if values.get(k) is None else repr(float(values[k])) for k in METRICS_FIELDS[1:]]
        with open(self.path, "a") as f:
            f.write(",".join(row) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                if v is not None:
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


# ---------------------------------------------------------------------------- the loop
def train(
    model_cfg: LMConfig,
    train_cfg: TrainConfig,
    corpus: Corpus,
    out_dir: Union[str, Path],
    *,
    resume: bool = False,
    device: Optional[str] = None,
    progress: bool = True,
) -> Dict[str, float]:
    """Train (or, with ``resume``, continue training) a language model; see the module docstring.

    Args:
        model_cfg: the model; its ``vocab_size`` must equal the corpus tokenizer's.
        train_cfg: optimisation settings.
        corpus: training and validation ids and their tokenizer.
        out_dir: the run directory (created; must not hold a run unless ``resume``).
        resume: continue from the newest checkpoint in ``out_dir``; the configs and the tokenizer
            must equal the saved ones.
        device: ``'cpu'``, ``'cuda'`` or ``None`` (CUDA when available).
        progress: show a progress bar (main process only).

    Returns:
        the last logged ``{"step", "train_loss", "val_loss", "tokens_per_s"}``.
    """
    if model_cfg.vocab_size != corpus.tokenizer.vocab_size:
        raise ValueError(f"vocabulary mismatch: model vocab_size {model_cfg.vocab_size}, corpus tokenizer {corpus.tokenizer.vocab_size}")
    info = setup_distributed(device)
    micro = train_cfg.batch_size // train_cfg.grad_accum
    if micro % info.world:
        raise ValueError(f"batch_size / grad_accum = {micro} must be divisible by the number of processes ({info.world})")
    local = micro // info.world
    out = Path(out_dir)
    ckpt = _prepare_out_dir(out, model_cfg, train_cfg, corpus, resume, info)

    torch.manual_seed(train_cfg.seed)
    model = LanguageModel(model_cfg).to(info.device)
    optimizer = make_optimizer(model, train_cfg, info.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, train_cfg) / train_cfg.lr)
    data_gen = torch.Generator().manual_seed(train_cfg.seed)
    torch.manual_seed(train_cfg.seed + 1 + info.rank)  # dropout differs between processes
    step, window, elapsed = 0, [0.0, 0], 0.0
    if ckpt is not None:
        load_weights(model, ckpt / WEIGHTS_FILE, info.device)
        state = torch.load(ckpt / TRAINER_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data_gen.set_state(state["data_rng"])
        if len(state["rng"]) != info.world:
            raise ValueError(f"the checkpoint was written by {len(state['rng'])} processes, this run has {info.world}")
        torch.set_rng_state(state["rng"][info.rank]["cpu"])
        if info.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"][info.rank]["cuda"], info.device)
        step, window, elapsed = state["step"], list(state["loss_window"]), state["elapsed_s"]
    ddp = model
    if info.world > 1:  # an adaptive softmax leaves the clusters no target fell into without gradients
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                                                  find_unused_parameters=model_cfg.adaptive_cutoffs is not None)
    amp = autocast_dtype(train_cfg, info.device)
    metrics = _Metrics(out, info.is_main, step if ckpt is not None else None)
    tokens_per_step = train_cfg.batch_size * model_cfg.context
    last: Dict[str, float] = {}
    bar = tqdm(total=train_cfg.steps, initial=step, disable=not (progress and info.is_main), dynamic_ncols=True, unit="step")
    t_log, tok_log = time.perf_counter(), 0
    model.train()
    try:
        while step < train_cfg.steps:
            t_step = time.perf_counter()
            loss_sum = torch.zeros((), device=info.device)
            for i in range(train_cfg.grad_accum):
                batch = sample_batch(corpus.train, micro, model_cfg.context, data_gen)  # [micro, context + 1]
                batch = batch[info.rank * local : (info.rank + 1) * local].to(info.device)  # [local, context + 1]
                sync = ddp.no_sync() if info.world > 1 and i < train_cfg.grad_accum - 1 else nullcontext()
                with sync:
                    with autocast_context(info.device, amp):
                        _, loss, _ = ddp(batch[:, :-1], batch[:, 1:], return_logits=False)
                    (loss / train_cfg.grad_accum).backward()  # outside autocast, as PyTorch recommends
                loss_sum += loss.detach().float()
            if train_cfg.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if info.world > 1:
                dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
            step_loss = loss_sum.item() / (train_cfg.grad_accum * info.world)
            step += 1
            window = [window[0] + step_loss, window[1] + 1]
            elapsed += time.perf_counter() - t_step
            tok_log += tokens_per_step
            bar.update(1)
            val_loss = None
            if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
                t_eval = time.perf_counter()
                val_loss = evaluate(model, corpus.val, model_cfg.context, micro // info.world,
                                    train_cfg.eval_batches * micro, info, amp)
                t_log += time.perf_counter() - t_eval  # evaluation time is not training throughput
            if step % train_cfg.log_every == 0 or val_loss is not None:
                now = time.perf_counter()
                tps = tok_log / max(now - t_log, 1e-9)
                last = {"step": step, "train_loss": window[0] / window[1], "val_loss": val_loss, "tokens_per_s": tps}
                metrics.log(step, lr=lr, train_loss=last["train_loss"], val_loss=val_loss, tokens_per_s=tps, elapsed_s=elapsed)
                postfix = {"loss": f"{last['train_loss']:.4f}", "tok/s": f"{tps:,.0f}"}
                if val_loss is not None:
                    postfix["val"] = f"{val_loss:.4f}"
                bar.set_postfix(postfix, refresh=False)
                window, t_log, tok_log = [0.0, 0], now, 0
            if step % train_cfg.ckpt_every == 0 or step == train_cfg.steps:
                rng = {"cpu": torch.get_rng_state()}
                if info.device.type == "cuda":
                    rng["cuda"] = torch.cuda.get_rng_state(info.device)
                rngs = [rng]
                if info.world > 1:
                    rngs = [None] * info.world
                    dist.all_gather_object(rngs, {k: v.cpu() for k, v in rng.items()})
                if info.is_main:
                    _save_checkpoint(out, model, {
                        "step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "data_rng": data_gen.get_state(), "rng": rngs, "loss_window": window, "elapsed_s": elapsed,
                    }, step)
                if info.world > 1:
                    dist.barrier()
    finally:
        bar.close()
        metrics.close()
    return last


def _prepare_out_dir(out: Path, model_cfg: LMConfig, train_cfg: TrainConfig, corpus: Corpus, resume: bool,
                     info: DistInfo) -> Optional[Path]:
    """Create the run directory (or check it for a resume); returns the checkpoint to resume from."""
    has_run = (out / "config.json").is_file()
    if resume:
        if not has_run:
            raise FileNotFoundError(f"--resume: {out} holds no run (no config.json)")
        saved = read_config(out)
        for name, cfg, key in (("model", model_cfg, "model"), ("training", train_cfg, "train")):
            if saved.get(key) != cfg.to_dict():
                diff = {k: (saved.get(key, {}).get(k), v) for k, v in cfg.to_dict().items() if saved.get(key, {}).get(k) != v}
                raise ValueError(f"--resume: the {name} config differs from the saved run in {out} (saved, given): {diff}")
        check_same_tokenizer(corpus.tokenizer, out)
        return latest_checkpoint(out)
    if has_run:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_tokenizer(corpus.tokenizer, out)
        write_config(out, model_cfg, tokenizer={"kind": corpus.tokenizer.kind, "vocab_size": corpus.tokenizer.vocab_size},
                     data=corpus.info, train=train_cfg.to_dict())
    if info.world > 1:
        dist.barrier()
    return None
