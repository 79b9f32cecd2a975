"""The training loop: AdamW, linear warm-up then cosine decay, clipping, accumulation, bf16 autocast,
periodic evaluation, metrics, atomic checkpoints and bit-for-bit resume, on one or many processes.

Nothing runs at import. :func:`train` trains a :class:`~fastweights.models.LanguageModel` on a
:class:`~fastweights.tasks.text.Corpus` and writes to ``out_dir``:

    config.json, tokenizer.json, model.safetensors   the model directory (see fastweights.models.directory)
    loss.png                                         the training and validation loss curves, at the end
    metrics.csv                                      step, lr, train_loss, val_loss, tokens_per_s, elapsed_s,
                                                     val_protocol (windows; carried-state with carry_state,
                                                     "carried-state (reset at documents)" with reset_documents)
    checkpoints/step-XXXXXXXX/                       weights, trainer state (optimizer, scheduler, RNG states,
                                                     data-sampler state, step), manifest; the last two kept
                                                     (see fastweights.checkpoints)
    .lock                                            the run lock (see fastweights.runlock)
    tensorboard/                                     when TensorBoard is installed

Each optimiser step draws ``batch_size`` windows of ``context + 1`` tokens at random from the
training ids with a dedicated generator (identical on every process; process r of W takes its
slice), so the data position is that generator's state and a run on W processes sees the same
global batch as a run on one.

With ``carry_state`` (fast-weight models) the step instead reads the next ``context`` tokens of
``batch_size`` contiguous streams (:class:`~fastweights.streams.TokenStreams`; micro-batch i of an
accumulated step takes rows ``[i m, (i + 1) m)``, process r its slice of those), each row starting
from the state its stream ended the previous step with, detached: truncated back-propagation
through time. The states are reset to empty at the start of each pass over the data (and, with
``reset_documents``, where a document of the split starts: the model's ``resets``), and a
checkpoint holds the stream position and every process's states, so a resume is exact. Validation
then scores the validation split with the carried-state protocol
(:func:`fastweights.evaluate.carried_state_loss`: one stream, segments of ``context`` tokens, reset
at documents as in training), the headline number of such a model and what ``fastweights eval
--protocol carried-state`` reports.

Checkpoints are written into a temporary directory, fsynced and renamed, and loaded with
``torch.load(weights_only=True)`` (no unpickling of arbitrary objects).

Failures:

- Everything is checked before ``out_dir`` is created or touched: the configs, the vocabulary, the
  split lengths against the context, the process count, and the model itself (built first).
- One writer: the main process holds :func:`~fastweights.runlock.run_lock` on ``out_dir`` for the
  whole run (another run on it is refused at once) and removes the temporaries a killed run left.
- Non-finite guard: a step whose loss or global gradient norm is NaN or infinite makes no update
  (a warning on the ``fastweights.train`` logger) up to ``max_bad_steps`` times in a row; one more
  raises :class:`NonFiniteError` naming the step and the last good checkpoint. A checkpoint is only
  written when the weights and the optimizer state are finite, so the kept ones are always good.
- Resume verifies the newest checkpoint (hashes, finite, loads into this model and optimizer) and
  falls back to the one before with a warning, moving the bad one aside.

Multi-process: launch the same command with ``torchrun``; the process group uses NCCL on GPUs and
gloo on CPUs; ``TrainConfig.data_parallel`` chooses ``DistributedDataParallel`` (``'ddp'``) or FSDP2
sharding (``'fsdp'``), see :mod:`fastweights.data_parallel`.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from .atomic import atomic_write, atomic_write_text, naming_os_errors, remove_temporaries
from .checkpoints import (
    CHECKPOINTS_DIR,
    CheckpointError,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    nonfinite,
    publish_weights,
    reject_checkpoint,
    save_checkpoint,
)
from .data_parallel import DataParallel
from .errors import Interrupted, describe_os_error
from .evaluate import carried_state_loss, is_fast_weight_model
from .models import LanguageModel, LMConfig, TrainConfig, read_config, write_config
from .models.directory import CONFIG_FILE, WEIGHTS_FILE
from .runlock import run_lock
from .state import map_tensors
from .streams import TokenStreams
from .tasks.text import TOKENIZER_FILE, Corpus, check_same_tokenizer, save_tokenizer

METRICS_FILE = "metrics.csv"
LOSS_PLOT = "loss.png"
METRICS_FIELDS = ["step", "lr", "train_loss", "val_loss", "tokens_per_s", "elapsed_s", "val_protocol"]
_ADDED_FIELDS = ("val_protocol",)  # absent from the metrics of runs written before it
RUN_FILES = (CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, METRICS_FILE, LOSS_PLOT)
RESUMABLE_CHANGES = (
    "steps",
    "compile",
)  #: training settings a --resume may change (steps: only more)  # what the run directory's top level holds
T = TypeVar("T")
log = logging.getLogger(__name__)


class NonFiniteError(ValueError):
    """Training produced a NaN or an infinity; the message names the step and the last good checkpoint."""


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
    ``min_lr`` at ``cfg.steps``: ``min_lr + (lr - min_lr) (1 + cos(pi p)) / 2``,
    ``p = (step - warmup) / (steps - warmup)``."""
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
def _require_tokens(split: str, n_tokens: int, context: int, extra: int) -> None:
    if n_tokens < context + extra:
        raise ValueError(
            f"the {split} has {n_tokens} tokens, fewer than context + {extra} = {context + extra}; "
            f"use more data or a smaller context"
        )


def check_splits(corpus: Corpus, context: int) -> None:
    """``ValueError`` unless the training split holds a batch window (``context + 2`` ids, see
    :func:`sample_batch`) and the validation split an evaluation window (``context + 1``, see :func:`eval_windows`)."""
    _require_tokens(f"training split of {corpus.source}", len(corpus.train), context, 2)
    _require_tokens(f"validation split of {corpus.source}", len(corpus.val), context, 1)


def sample_batch(data: np.ndarray, batch_size: int, context: int, generator: torch.Generator) -> Tensor:
    """``batch_size`` random windows of ``context + 1`` consecutive ids: ``[batch_size, context + 1]`` int64."""
    _require_tokens("training split", len(data), context, 2)
    starts = torch.randint(len(data) - context - 1, (batch_size,), generator=generator).tolist()
    return torch.from_numpy(np.stack([np.asarray(data[s : s + context + 1], dtype=np.int64) for s in starts]))


def eval_windows(n_tokens: int, context: int, max_windows: int) -> np.ndarray:
    """Start offsets of at most ``max_windows`` windows of ``context + 1`` ids, evenly spread over the
    split and never overlapping in their targets (all of them when the split is short): deterministic."""
    _require_tokens("validation split", n_tokens, context, 1)
    n_all = (n_tokens - 1) // context
    n = min(n_all, max_windows)
    return (np.arange(n) * (n_all // n)) * context


@torch.no_grad()
def validation_loss(
    model: nn.Module,
    data: np.ndarray,
    context: int,
    batch_size: int,
    max_windows: int,
    info: DistInfo,
    amp: Optional[torch.dtype] = None,
) -> float:
    """Mean next-token cross-entropy (nats) over :func:`eval_windows` of ``data``, split over processes."""
    starts = eval_windows(len(data), context, max_windows)[info.rank :: info.world]
    was_training = model.training
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=info.device)  # [sum of losses, count]
    for i in range(0, len(starts), batch_size):
        win = torch.from_numpy(
            np.stack([np.asarray(data[s : s + context + 1], dtype=np.int64) for s in starts[i : i + batch_size]])
        )
        win = win.to(info.device)  # [b, context + 1]
        with autocast_context(info.device, amp):
            _, loss, _ = model(win[:, :-1], win[:, 1:], return_logits=False)
        total += torch.stack(
            [
                loss.double() * win[:, 1:].numel(),
                torch.tensor(float(win[:, 1:].numel()), dtype=torch.float64, device=info.device),
            ]
        )
    if info.world > 1:
        dist.all_reduce(total)
    model.train(was_training)
    return (total[0] / total[1]).item()


def autocast_context(device: torch.device, amp: Optional[torch.dtype]):
    """``torch.autocast`` to ``amp`` on ``device``, or a no-op context when ``amp`` is None."""
    return torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()


# ---------------------------------------------------------------------------- metrics
def read_metrics(out_dir: Union[str, Path]) -> List[Dict[str, str]]:
    """The rows of a run's ``metrics.csv`` (empty list when there is none)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot_losses(rows: List[Dict[str, str]], path: Path) -> Path:
    """The training and validation loss of ``metrics.csv`` rows against the step, written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(
        [int(r["step"]) for r in rows],
        [float(r["train_loss"]) for r in rows],
        lw=1,
        label="train (mean since the last row)",
    )
    val = [r for r in rows if r.get("val_loss")]
    protocol = next((r.get("val_protocol") for r in val if r.get("val_protocol")), "")
    ax.plot(
        [int(r["step"]) for r in val], [float(r["val_loss"]) for r in val], "o-", label=f"validation {protocol}".strip()
    )
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


class _Metrics:
    """Appends rows to ``metrics.csv`` (and TensorBoard when installed) on the main process."""

    def __init__(self, out_dir: Path, enabled: bool, resume_step: Optional[int]) -> None:
        self.path = out_dir / METRICS_FILE
        self.enabled = enabled
        self.tb = None
        if not enabled:
            return
        rows = read_metrics(out_dir) if resume_step is not None else []
        # drop rows a killed run wrote past its checkpoint, and a row it was killed (or ran out of disk) writing
        rows = [
            r
            for r in rows
            if all(r.get(k) is not None for k in METRICS_FIELDS if k not in _ADDED_FIELDS)
            and r["step"].isdigit()
            and int(r["step"]) <= (resume_step or 0)
        ]
        lines = [",".join(METRICS_FIELDS)] + [",".join(r.get(k) or "" for k in METRICS_FIELDS) for r in rows]
        atomic_write_text(self.path, "\n".join(lines) + "\n")
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            return
        self.tb = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step)

    def log(self, step: int, val_protocol: Optional[str] = None, **values: Optional[float]) -> None:
        if not self.enabled:
            return
        row = [str(step)] + ["" if values.get(k) is None else repr(float(values[k])) for k in METRICS_FIELDS[1:-1]]
        row.append(val_protocol or "")
        with naming_os_errors(self.path), open(self.path, "a") as f:
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
        resume: continue from the newest checkpoint in ``out_dir`` that verifies; the configs and
            the tokenizer must equal the saved ones.
        device: ``'cpu'``, ``'cuda'`` or ``None`` (CUDA when available).
        progress: show a progress bar (main process only).

    Returns:
        the last logged ``{"step", "train_loss", "val_loss", "tokens_per_s"}``.

    Raises:
        ValueError: a setting, the data or the run directory does not fit (nothing was written);
            :class:`~fastweights.runlock.RunLockedError`: another process trains in ``out_dir``;
            :class:`NonFiniteError`: the loss, gradients or weights stopped being finite;
            :class:`~fastweights.checkpoints.CheckpointError`: ``resume`` found no usable checkpoint.
        OSError: writing failed (e.g. a full disk), naming the file; the checkpoints are intact.
    """
    if model_cfg.vocab_size != corpus.tokenizer.vocab_size:
        raise ValueError(
            f"vocabulary mismatch: model vocab_size {model_cfg.vocab_size}, "
            f"corpus tokenizer {corpus.tokenizer.vocab_size}"
        )
    info = setup_distributed(device)
    micro = train_cfg.batch_size // train_cfg.grad_accum
    if micro % info.world:
        raise ValueError(
            f"batch_size / grad_accum = {micro} must be divisible by the number of processes ({info.world})"
        )
    local = micro // info.world
    if train_cfg.data_parallel == "fsdp" and info.world > 1:
        if train_cfg.reset_documents:
            raise ValueError(
                "data_parallel=fsdp with reset_documents=true: the processes would run different "
                "numbers of block calls per step (each resets at its own streams' documents); "
                "use data_parallel=ddp"
            )
        if model_cfg.adaptive_cutoffs is not None and not model_cfg.tie_embeddings:
            raise ValueError(
                "data_parallel=fsdp with an untied adaptive softmax: a cluster no target of a process "
                "fell into gets no gradient there, and FSDP needs every parameter's gradient on every "
                "process; tie the embeddings (tie_embeddings=true) or use data_parallel=ddp"
            )
    check_splits(corpus, model_cfg.context)
    out = Path(out_dir)
    if resume and not (out / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"--resume: {out} holds no run (no {CONFIG_FILE})")

    torch.manual_seed(train_cfg.seed)
    model = LanguageModel(model_cfg).to(info.device)
    streams = _streams(model, corpus, model_cfg, train_cfg)
    # an adaptive softmax leaves the clusters no target fell into without gradients
    parallel = DataParallel(
        model,
        train_cfg.data_parallel,
        info.world,
        info.device,
        find_unused_parameters=model_cfg.adaptive_cutoffs is not None,
    )
    carried: List[Optional[Dict[str, Any]]] = [None] * train_cfg.grad_accum  # per micro-batch: this process's rows
    optimizer = make_optimizer(model, train_cfg, info.device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s, train_cfg) / train_cfg.lr)
    data_gen = torch.Generator().manual_seed(train_cfg.seed)
    torch.manual_seed(train_cfg.seed + 1 + info.rank)  # dropout differs between processes
    step, window, elapsed = 0, [0.0, 0], 0.0
    guard = _NonFiniteGuard(out, train_cfg.max_bad_steps)
    with ExitStack() as held:
        _on_main(info, lambda: held.enter_context(run_lock(out, "fastweights train")))
        _on_main(info, lambda: _prepare_out_dir(out, model_cfg, train_cfg, corpus, resume))
        if train_cfg.warmup >= train_cfg.steps and info.is_main:  # once the run is sure to start
            log.warning(
                "warmup (%d) >= steps (%d): the learning rate never reaches lr = %g",
                train_cfg.warmup,
                train_cfg.steps,
                train_cfg.lr,
            )
        state = _restore(out, parallel, optimizer, scheduler, info) if resume else None
        if state is not None:
            data_gen.set_state(state["data_rng"])
            if len(state["rng"]) != info.world:
                raise ValueError(
                    f"the checkpoint was written by {len(state['rng'])} processes, this run has {info.world}"
                )
            torch.set_rng_state(state["rng"][info.rank]["cpu"])
            if info.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"][info.rank]["cuda"], info.device)
            step, window, elapsed = state["step"], list(state["loss_window"]), state["elapsed_s"]
            if streams is not None:
                streams.load_state_dict(state["streams"])
                carried = map_tensors(lambda t: t.to(info.device), state["carry"]["ranks"][info.rank])
            guard.bad_steps, guard.last_good = (
                state.get("bad_steps", 0),
                step,
            )  # no bad_steps in checkpoints older than the guard
        ddp = parallel.runner(torch.compile(model) if train_cfg.compile else model)
        eval_info = DistInfo(0, 1, info.device) if parallel.sharded else info  # sharded: every process evaluates alike
        amp = autocast_dtype(train_cfg, info.device)
        metrics = _Metrics(out, info.is_main, step if state is not None else None)
        tokens_per_step = train_cfg.batch_size * model_cfg.context
        max_norm = train_cfg.grad_clip if train_cfg.grad_clip > 0 else math.inf  # inf: measure the norm only
        last: Dict[str, float] = {}
        bar = tqdm(
            total=train_cfg.steps,
            initial=step,
            disable=not (progress and info.is_main),
            dynamic_ncols=True,
            unit="step",
        )
        t_log, tok_log = time.perf_counter(), 0
        postfix: Dict[str, str] = {}  # what the bar shows after the step number; a status while validating or saving
        model.train()
        try:
            while step < train_cfg.steps:
                t_step = time.perf_counter()
                loss_sum = torch.zeros((), device=info.device)
                if streams is not None:
                    segments, reset, doc_starts = streams.next()  # [batch_size, context + 1], _, [batch_size, context]
                    if reset:  # a new pass over the data: every stream starts from an empty state
                        carried = [None] * train_cfg.grad_accum
                for i in range(train_cfg.grad_accum):
                    resets = None
                    if streams is None:
                        batch = sample_batch(corpus.train, micro, model_cfg.context, data_gen)  # [micro, context + 1]
                    else:
                        batch = segments[i * micro : (i + 1) * micro]  # [micro, context + 1]: micro-batch i's streams
                        if doc_starts is not None:
                            mine = doc_starts[i * micro : (i + 1) * micro][info.rank * local : (info.rank + 1) * local]
                            resets = mine.to(info.device)  # [local, context]
                    batch = batch[info.rank * local : (info.rank + 1) * local].to(info.device)  # [local, context + 1]
                    with parallel.accumulating(ddp, last=i == train_cfg.grad_accum - 1):
                        with autocast_context(info.device, amp):
                            _, loss, new_state = ddp(
                                batch[:, :-1], batch[:, 1:], state=carried[i], return_logits=False, resets=resets
                            )
                        (loss / train_cfg.grad_accum).backward()  # outside autocast, as PyTorch recommends
                    if streams is not None:  # truncated BPTT: the state carries on, its graph does not
                        carried[i] = {"pos": 0, "layers": map_tensors(Tensor.detach, new_state["layers"])}
                    loss_sum += loss.detach().float()
                grad_norm = parallel.clip_grad_norm(max_norm)  # [], the same on every process
                if info.world > 1:
                    dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
                loss_total, norm = torch.stack([loss_sum, grad_norm.to(loss_sum)]).tolist()  # one device sync
                step_loss = loss_total / (train_cfg.grad_accum * info.world)
                lr = optimizer.param_groups[0]["lr"]
                if guard.allows_update(step + 1, step_loss, norm, warn=info.is_main):
                    optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                window = [window[0] + step_loss, window[1] + 1]
                elapsed += time.perf_counter() - t_step
                tok_log += tokens_per_step
                bar.update(1)
                val_loss = None
                if step % train_cfg.eval_every == 0 or step == train_cfg.steps:
                    bar.set_postfix_str("validating...", refresh=True)
                    t_eval = time.perf_counter()
                    if streams is None:
                        val_loss = validation_loss(
                            model,
                            corpus.val,
                            model_cfg.context,
                            micro // info.world,
                            train_cfg.eval_batches * micro,
                            eval_info,
                            amp,
                        )
                    else:
                        val_loss = carried_validation_loss(
                            model,
                            corpus.val,
                            model_cfg.context,
                            train_cfg.eval_batches * micro * model_cfg.context,  # the windows' tokens
                            corpus.documents.get("val") if train_cfg.reset_documents else None,
                        )
                    t_log += time.perf_counter() - t_eval  # evaluation time is not training throughput
                if step % train_cfg.log_every == 0 or val_loss is not None:
                    now = time.perf_counter()
                    tps = tok_log / max(now - t_log, 1e-9)
                    last = {
                        "step": step,
                        "train_loss": window[0] / window[1],
                        "val_loss": val_loss,
                        "tokens_per_s": tps,
                    }
                    metrics.log(
                        step,
                        val_protocol=None
                        if val_loss is None
                        else "windows"
                        if streams is None
                        else "carried-state (reset at documents)"
                        if train_cfg.reset_documents
                        else "carried-state",
                        lr=lr,
                        train_loss=last["train_loss"],
                        val_loss=val_loss,
                        tokens_per_s=tps,
                        elapsed_s=elapsed,
                    )
                    postfix = {"loss": f"{last['train_loss']:.4f}", "tok/s": f"{tps:,.0f}"}
                    if val_loss is not None:
                        postfix["val"] = f"{val_loss:.4f}"
                    bar.set_postfix(postfix, refresh=False)
                    window, t_log, tok_log = [0.0, 0], now, 0
                if step % train_cfg.ckpt_every == 0 or step == train_cfg.steps:
                    bar.set_postfix_str(f"writing checkpoint step-{step:08d}...", refresh=True)
                    guard.check_finite(step, parallel.named_tensors(optimizer))
                    progress_state = {
                        "step": step,
                        "loss_window": window,
                        "elapsed_s": elapsed,
                        "bad_steps": guard.bad_steps,
                    }
                    if streams is not None:
                        progress_state["streams"] = streams.state_dict()
                    _checkpoint(
                        out,
                        parallel,
                        optimizer,
                        scheduler,
                        data_gen,
                        info,
                        progress_state,
                        carried if streams is not None else None,
                    )
                    guard.last_good = step
                    bar.set_postfix(postfix, refresh=False)
        except KeyboardInterrupt:
            written = list_checkpoints(out)  # what is on disk, whatever the signal interrupted
            saved = (
                f"its last checkpoint is step {checkpoint_step(written[-1])}: the same command with --resume "
                "continues from there"
                if written
                else "no checkpoint was written yet"
            )
            raise Interrupted(f"training stopped at step {step} of {train_cfg.steps}; {saved}") from None
        finally:
            bar.close()
            metrics.close()
        if info.is_main:
            plot_losses(read_metrics(out), out / LOSS_PLOT)
    return last


class _NonFiniteGuard:
    """The non-finite policy: a step whose loss or gradient norm is NaN or infinite makes no update, up
    to ``max_bad_steps`` in a row (a warning each); one more, or non-finite weights or optimizer state
    at a checkpoint, raise :class:`NonFiniteError` naming the step and ``last_good``, the newest checkpoint."""

    def __init__(self, out: Path, max_bad_steps: int) -> None:
        self.out, self.max_bad_steps = out, max_bad_steps
        self.bad_steps = 0  # in a row, up to now
        self.last_good: Optional[int] = None

    def allows_update(self, step: int, loss: float, grad_norm: float, warn: bool) -> bool:
        """Whether step ``step`` (1-based) may update the weights; raises when it is one bad step too many.
        Every process passes the same loss and norm, so all skip or stop together."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.bad_steps = 0
            return True
        self.bad_steps += 1
        what = (
            f"non-finite loss at step {step} (loss {loss})"
            if not math.isfinite(loss)
            else f"non-finite gradient norm at step {step} (loss {loss:.4f}, gradient norm {grad_norm})"
        )
        if self.bad_steps > self.max_bad_steps:
            skipped = (
                f" after {self.max_bad_steps} skipped step(s) in a row (max_bad_steps={self.max_bad_steps})"
                if self.max_bad_steps
                else ""
            )
            raise NonFiniteError(what + skipped + self._last_good())
        if warn:
            log.warning(
                "%s: update skipped (%d of max_bad_steps=%d in a row)", what, self.bad_steps, self.max_bad_steps
            )
        return False

    def check_finite(self, step: int, named: Iterable[Tuple[str, Tensor]]) -> None:
        """Raise unless every tensor about to be checkpointed after ``step`` is finite."""
        bad = nonfinite(named)
        if bad:
            raise NonFiniteError(
                f"non-finite values after step {step} in {', '.join(bad[:3])}; not checkpointed" + self._last_good()
            )

    def _last_good(self) -> str:
        if self.last_good is None:
            return f"; no checkpoint was written to {self.out} yet"
        return f"; the last good checkpoint is step {self.last_good} in {self.out}"


def _checkpoint(
    out: Path,
    parallel: DataParallel,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    data_gen: torch.Generator,
    info: DistInfo,
    progress: Dict[str, Any],
    carried: Optional[List[Any]] = None,
) -> None:
    """Write a checkpoint (main process) of the model, the optimizer, the scheduler, the data sampler,
    every process's RNG states, ``progress`` (step, loss window, elapsed time, bad steps, stream
    position) and, in streamed training, every process's ``carried`` states (one per micro-batch)."""
    rng = {"cpu": torch.get_rng_state()}
    if info.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(info.device)
    rngs, carries = [rng], [map_tensors(Tensor.cpu, carried)]
    if info.world > 1:
        rngs, carries = [None] * info.world, [None] * info.world
        dist.all_gather_object(rngs, {k: v.cpu() for k, v in rng.items()})
        dist.all_gather_object(carries, carries[0])
    state = {
        "optimizer": parallel.optimizer_state(optimizer),
        "scheduler": scheduler.state_dict(),
        "data_rng": data_gen.get_state(),
        "rng": rngs,
        **progress,
    }
    carry = {"ranks": carries} if carried is not None else None
    model = parallel.checkpoint_model()  # sharded: the weights gathered onto the main process
    _on_main(info, lambda: save_checkpoint(out, model, state, progress["step"], carry))


def _streams(model: nn.Module, corpus: Corpus, model_cfg: LMConfig, train_cfg: TrainConfig) -> Optional[TokenStreams]:
    """The training streams of a ``carry_state`` run (``None`` otherwise), checked before anything is written."""
    if not train_cfg.carry_state:
        return None
    if not is_fast_weight_model(model):
        raise ValueError(
            f"carry_state=true needs fast-weight attention, got attention={model_cfg.attention!r}: softmax "
            f"attention's state (its KV cache) grows with the text; train it on windows (carry_state=false)"
        )
    documents = None
    if train_cfg.reset_documents:
        documents = corpus.documents.get("train", np.zeros(0, dtype=np.int64))
        if not len(documents):
            raise ValueError(
                "reset_documents=true, but the training split marks no documents (lines ' = Title = ', "
                "as WikiText marks its articles); set reset_documents=false"
            )
    return TokenStreams(
        corpus.train,
        train_cfg.batch_size,
        model_cfg.context,
        documents,
        shift_seed=train_cfg.seed if train_cfg.shift_streams else None,
    )


def carried_validation_loss(
    model: nn.Module, data: np.ndarray, context: int, max_tokens: int, documents: Optional[np.ndarray] = None
) -> float:
    """Validation loss of a streamed run: the carried-state protocol over the first ``max_tokens + 1``
    ids of ``data`` (all of it when shorter), the state emptied at ``documents`` (offsets) when
    given, as ``fastweights eval --protocol carried-state --max-tokens`` computes it. Every process
    computes the same number."""
    was_training = model.training
    ids = torch.from_numpy(np.asarray(data[: max_tokens + 1], dtype=np.int64))  # [n + 1]
    loss = carried_state_loss(model, ids, context, documents=documents).nats
    model.train(was_training)
    return loss


def _on_main(info: DistInfo, fn: Callable[[], T]) -> Optional[T]:
    """``fn()`` on the main process only, as a collective: a ``ValueError`` or ``OSError`` it raises is
    raised on every process (the others would wait for the main one forever). ``None`` on the others."""
    result, error = None, None
    if info.is_main:
        try:
            result = fn()
        except (ValueError, OSError) as e:
            error = e
    if info.world > 1:
        message = [None if error is None else describe_os_error(error) if isinstance(error, OSError) else str(error)]
        dist.broadcast_object_list(message, src=0)
        if message[0] is not None and not info.is_main:
            raise ValueError(message[0])
    if error is not None:
        raise error
    return result


def _prepare_out_dir(out: Path, model_cfg: LMConfig, train_cfg: TrainConfig, corpus: Corpus, resume: bool) -> None:
    """Under the run lock: check the run directory for a resume, or start a new run in it (the
    tokenizer, then ``config.json``, which marks a run); remove the temporaries a killed run left."""
    has_run = (out / CONFIG_FILE).is_file()
    if resume:
        if not has_run:
            raise FileNotFoundError(f"--resume: {out} holds no run (no {CONFIG_FILE})")
        saved = read_config(out)
        for name, cls, cfg, key in (
            ("model", LMConfig, model_cfg, "model"),
            ("training", TrainConfig, train_cfg, "train"),
        ):
            try:  # the saved config as this version reads it: fields added since take their defaults
                saved_cfg = cls.from_dict(saved.get(key, {}))
            except (TypeError, ValueError) as e:
                raise ValueError(f"--resume: the {name} config saved in {out} is not valid: {e}") from None
            old, new = saved_cfg.to_dict(), cfg.to_dict()
            diff = {
                k: (old[k], v)
                for k, v in new.items()
                if old[k] != v and not (cls is TrainConfig and k in RESUMABLE_CHANGES and (k != "steps" or v > old[k]))
            }
            if diff:
                raise ValueError(
                    f"--resume: the {name} config differs from the saved run in {out} (saved, given): {diff}"
                )
        check_same_tokenizer(corpus.tokenizer, out)
        if saved.get("train") != train_cfg.to_dict():  # e.g. more steps: the run directory says what it now is
            write_config(
                out,
                model_cfg,
                **{
                    **{k: v for k, v in saved.items() if k not in ("format", "version", "model_type", "model")},
                    "train": train_cfg.to_dict(),
                },
            )
    elif has_run:
        raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    remove_temporaries(out, RUN_FILES)  # only ours: --out may be a directory that holds other files
    if (out / CHECKPOINTS_DIR).is_dir():
        remove_temporaries(out / CHECKPOINTS_DIR)
    if not resume:
        save_tokenizer(corpus.tokenizer, out)
        write_config(
            out,
            model_cfg,
            tokenizer={"kind": corpus.tokenizer.kind, "vocab_size": corpus.tokenizer.vocab_size},
            data=corpus.info,
            train=train_cfg.to_dict(),
        )


def _restore(
    out: Path, parallel: DataParallel, optimizer: torch.optim.Optimizer, scheduler: Any, info: DistInfo
) -> Optional[Dict[str, Any]]:
    """Load the newest checkpoint that verifies into the model, ``optimizer`` and ``scheduler`` and
    return its trainer state (``None`` when the run has none yet).

    A checkpoint that fails (see :func:`~fastweights.checkpoints.load_checkpoint`, and the optimizer
    state must fit this optimizer) is reported with a warning and the previous one is tried; once
    every process has chosen, the main one moves the failed ones aside and republishes the chosen
    weights as the model directory's. Every process reads the same files, so all choose alike.
    """
    candidates = list_checkpoints(out)
    rejected: List[Path] = []
    for ckpt in reversed(candidates):
        try:
            target = parallel.weights_target()  # sharded: the CPU replica, then distributed by parallel.load
            state = load_checkpoint(ckpt, target, next(target.parameters()).device)
            try:
                parallel.load(optimizer, state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(
                    f"checkpoint {ckpt} is unusable: its optimizer state does not fit this model: {e}"
                ) from e
        except CheckpointError as e:
            if info.is_main:
                log.warning("%s; trying the previous checkpoint", e)
            rejected.append(ckpt)
            continue
        if rejected:
            _on_main(info, lambda: _set_aside(out, rejected, ckpt))  # noqa: B023 (used within this iteration)
        return state
    if candidates:
        raise CheckpointError(
            f"--resume: no usable checkpoint in {out / CHECKPOINTS_DIR} (see the warnings above); "
            f"move them away to restart the run from step 0"
        )
    return None


def _set_aside(out: Path, rejected: List[Path], chosen: Path) -> None:
    """Move the rejected checkpoints aside and make the chosen one's weights the model directory's."""
    moved = [reject_checkpoint(p) for p in rejected]
    publish_weights(out, chosen)
    log.warning(
        "resuming from step %d (%s); moved the unusable checkpoints aside: %s",
        checkpoint_step(chosen),
        chosen,
        ", ".join(str(p) for p in moved),
    )
