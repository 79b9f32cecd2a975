"""The training loop: AdamW, linear warm-up then cosine decay, clipping, accumulation, bf16 autocast,
periodic evaluation, metrics, atomic checkpoints and bit-for-bit resume, on one or many processes.

Nothing runs at import. :func:`train` trains a :class:`~fastweights.models.LanguageModel` on a
:class:`~fastweights.data.text.Corpus` and writes to ``out_dir``:

    config.json, tokenizer.json, model.safetensors   the model directory (see fastweights.models.directory)
    loss.png                                         the training and validation loss curves, at the end
    metrics.csv                                      step, lr, train_loss, val_loss, tokens_per_s, elapsed_s,
                                                     val_protocol (windows; carried-state with carry_state,
                                                     "carried-state (reset at documents)" with reset_documents)
    checkpoints/step-XXXXXXXX/                       weights, trainer state (optimizer, scheduler, RNG states,
                                                     data-sampler state, step), manifest; the last two kept
                                                     (see fastweights.train.checkpoints)
    .lock                                            the run lock (see fastweights.files.runlock)
    tensorboard/                                     when TensorBoard is installed

Each optimiser step draws ``batch_size`` windows of ``context + 1`` tokens at random from the
training ids with a dedicated generator (identical on every process; process r of W takes its
slice), so the data position is that generator's state and a run on W processes sees the same
global batch as a run on one.

With ``carry_state`` (fast-weight models) the step instead reads the next ``context`` tokens of
``batch_size`` contiguous streams (:class:`~fastweights.train.streams.TokenStreams`; micro-batch i of an
accumulated step takes rows ``[i m, (i + 1) m)``, process r its slice of those), each row starting
from the state its stream ended the previous step with, detached: truncated back-propagation
through time. The states are reset to empty at the start of each pass over the data (and, with
``reset_documents``, where a document of the split starts: the model's ``resets``), and a
checkpoint holds the stream position and every process's states, so a resume is exact. Validation
then scores the validation split with the carried-state protocol
(:func:`fastweights.evaluation.loss.carried_state_loss`: one stream, segments of ``context`` tokens, reset
at documents as in training), the headline number of such a model and what ``fastweights eval
--protocol carried-state`` reports.

Checkpoints are written into a temporary directory, fsynced and renamed, and loaded with
``torch.load(weights_only=True)`` (no unpickling of arbitrary objects).

Failures:

- Everything is checked before ``out_dir`` is created or touched: the configs, the vocabulary, the
  split lengths against the context, the process count, and the model itself (built first).
- One writer: the main process holds :func:`~fastweights.files.runlock.run_lock` on ``out_dir`` for the
  whole run (another run on it is refused at once) and removes the temporaries a killed run left.
- Non-finite guard: a step whose loss or global gradient norm is NaN or infinite makes no update
  (a warning on the ``fastweights.train`` logger) up to ``max_bad_steps`` times in a row; one more
  raises :class:`NonFiniteError` naming the step and the last good checkpoint. A checkpoint is only
  written when the weights and the optimizer state are finite, so the kept ones are always good.
- Resume verifies the newest checkpoint (hashes, finite, loads into this model and optimizer) and
  falls back to the one before with a warning, moving the bad one aside.

Ctrl-C: on one process, the first stops training before the next step (the step in progress, its
validation and checkpoint complete, so no write is cut in the middle) and raises
:class:`~fastweights.cli.errors.Interrupted` naming the last checkpoint; a second stops at once.

Multi-process: launch the same command with ``torchrun``; the process group uses NCCL on GPUs and
gloo on CPUs; ``TrainConfig.data_parallel`` chooses ``DistributedDataParallel`` (``'ddp'``) or FSDP2
sharding (``'fsdp'``), see :mod:`fastweights.train.data_parallel`.
"""

from __future__ import annotations

import logging
import math
import signal
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..cli.errors import Interrupted
from ..data.text import Corpus
from ..files.runlock import run_lock
from ..files.state import map_tensors
from ..models import LanguageModel, LMConfig, TrainConfig
from ..models.directory import CONFIG_FILE
from .batches import check_splits, sample_batch, training_streams
from .checkpoints import checkpoint_step, list_checkpoints
from .data_parallel import DataParallel
from .distributed import DistInfo, on_main, setup_distributed
from .guard import NonFiniteGuard
from .metrics import LOSS_PLOT, Metrics, plot_losses, read_metrics
from .optim import autocast_context, autocast_dtype, lr_at, make_optimizer
from .run_dir import prepare_run_dir, restore, write_checkpoint
from .validation import carried_validation_loss, validation_loss

log = logging.getLogger(__name__)


class _SigintBetweenSteps:
    """Ctrl-C between steps: while it is held (from construction to :meth:`release`), the first
    SIGINT only sets ``requested``, which the loop checks before each step, so that no write (a
    checkpoint, a metrics row, TensorBoard's queue) is cut in the middle; a second SIGINT raises
    ``KeyboardInterrupt`` at once. Outside the main thread, or where SIGINT is not Python's default
    handler, nothing is held."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = None
        if threading.current_thread() is threading.main_thread():
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                self.previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def release(self) -> None:
        """Give SIGINT back to the handler it had."""
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
            self.previous = None


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
            :class:`~fastweights.files.runlock.RunLockedError`: another process trains in ``out_dir``;
            :class:`~fastweights.train.guard.NonFiniteError`: the loss, gradients or weights stopped being finite;
            :class:`~fastweights.train.checkpoints.CheckpointError`: ``resume`` found no usable checkpoint.
        OSError: writing failed (e.g. a full disk), naming the file; the checkpoints are intact.
    """
    info = setup_distributed(device)
    _check_settings(model_cfg, train_cfg, corpus, info)
    out = Path(out_dir)
    if resume and not (out / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"--resume: {out} holds no run (no {CONFIG_FILE})")
    run = _Run(model_cfg, train_cfg, corpus, out, info)
    with ExitStack() as held:
        on_main(info, lambda: held.enter_context(run_lock(out, "fastweights train")))
        on_main(info, lambda: prepare_run_dir(out, model_cfg, train_cfg, corpus, resume))
        if train_cfg.warmup >= train_cfg.steps and info.is_main:  # once the run is sure to start
            log.warning(
                "warmup (%d) >= steps (%d): the learning rate never reaches lr = %g",
                train_cfg.warmup,
                train_cfg.steps,
                train_cfg.lr,
            )
        if resume:
            run.restore()
        last = run.loop(progress)
        if info.is_main:
            plot_losses(read_metrics(out), out / LOSS_PLOT)
    return last


def _check_settings(model_cfg: LMConfig, train_cfg: TrainConfig, corpus: Corpus, info: DistInfo) -> None:
    """``ValueError`` for settings that cannot train together, before anything is built or written."""
    if model_cfg.vocab_size != corpus.tokenizer.vocab_size:
        raise ValueError(
            f"vocabulary mismatch: model vocab_size {model_cfg.vocab_size}, "
            f"corpus tokenizer {corpus.tokenizer.vocab_size}"
        )
    micro = train_cfg.batch_size // train_cfg.grad_accum
    if micro % info.world:
        raise ValueError(
            f"batch_size / grad_accum = {micro} must be divisible by the number of processes ({info.world})"
        )
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


class _Run:
    """One training run in progress on this process: the model and its optimiser, the data position,
    the carried states of streamed training, and the progress (step, loss window, elapsed time).

    Each global step reads ``batch_size`` rows in ``grad_accum`` micro-batches of ``micro`` rows,
    of which this process takes ``local = micro / world``.
    """

    def __init__(self, model_cfg: LMConfig, train_cfg: TrainConfig, corpus: Corpus, out: Path, info: DistInfo) -> None:
        self.model_cfg, self.cfg, self.corpus, self.out, self.info = model_cfg, train_cfg, corpus, out, info
        self.micro = train_cfg.batch_size // train_cfg.grad_accum
        self.local = self.micro // info.world
        torch.manual_seed(train_cfg.seed)
        self.model = LanguageModel(model_cfg).to(info.device)
        self.streams = training_streams(self.model, corpus, model_cfg, train_cfg)
        # an adaptive softmax leaves the clusters no target fell into without gradients
        self.parallel = DataParallel(
            self.model,
            train_cfg.data_parallel,
            info.world,
            info.device,
            find_unused_parameters=model_cfg.adaptive_cutoffs is not None,
        )
        self.carried: List[Optional[Dict[str, Any]]] = [None] * train_cfg.grad_accum  # per micro-batch: our rows
        self.optimizer = make_optimizer(self.model, train_cfg, info.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_at(s, train_cfg) / train_cfg.lr)
        self.data_gen = torch.Generator().manual_seed(train_cfg.seed)
        torch.manual_seed(train_cfg.seed + 1 + info.rank)  # dropout differs between processes
        self.step, self.window, self.elapsed = (
            0,
            [0.0, 0],
            0.0,
        )  # window: [sum of step losses, steps] since the last row
        self.guard = NonFiniteGuard(out, train_cfg.max_bad_steps)
        self.resumed = False
        self.amp = autocast_dtype(train_cfg, info.device)

    def restore(self) -> None:
        """Continue from the newest checkpoint that verifies (none yet: from step 0)."""
        info = self.info
        state = restore(self.out, self.parallel, self.optimizer, self.scheduler, info)
        if state is None:
            return
        self.data_gen.set_state(state["data_rng"])
        if len(state["rng"]) != info.world:
            raise ValueError(f"the checkpoint was written by {len(state['rng'])} processes, this run has {info.world}")
        torch.set_rng_state(state["rng"][info.rank]["cpu"])
        if info.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"][info.rank]["cuda"], info.device)
        self.step, self.window, self.elapsed = state["step"], list(state["loss_window"]), state["elapsed_s"]
        if self.streams is not None:
            self.streams.load_state_dict(state["streams"])
            self.carried = map_tensors(lambda t: t.to(info.device), state["carry"]["ranks"][info.rank])
        self.guard.bad_steps = state.get("bad_steps", 0)  # none in checkpoints older than the guard
        self.guard.last_good = self.step
        self.resumed = True

    def loop(self, progress: bool) -> Dict[str, float]:
        """Train from ``self.step`` to ``steps``: validate, log and checkpoint as configured."""
        cfg, info = self.cfg, self.info
        runner = self.parallel.runner(torch.compile(self.model) if cfg.compile else self.model)
        metrics = Metrics(self.out, info.is_main, self.step if self.resumed else None)
        bar = tqdm(
            total=cfg.steps, initial=self.step, disable=not (progress and info.is_main), dynamic_ncols=True, unit="step"
        )
        tokens_per_step = cfg.batch_size * self.model_cfg.context
        t_log, tok_log = time.perf_counter(), 0
        last: Dict[str, float] = {}
        postfix: Dict[str, str] = {}  # what the bar shows after the step number; a status while validating or saving
        self.model.train()
        stop = _SigintBetweenSteps() if info.world == 1 else None  # one process: Ctrl-C waits for the step's end
        try:
            while self.step < cfg.steps:
                if stop is not None and stop.requested:
                    raise KeyboardInterrupt
                t_step = time.perf_counter()
                lr = self.optimizer.param_groups[0]["lr"]
                self._optimizer_step(runner)
                self.elapsed += time.perf_counter() - t_step
                tok_log += tokens_per_step
                bar.update(1)
                val_loss = None
                if self._due(cfg.eval_every):
                    bar.set_postfix_str("validating...", refresh=True)
                    t_eval = time.perf_counter()
                    val_loss = self._validation_loss()
                    t_log += time.perf_counter() - t_eval  # evaluation time is not training throughput
                if self.step % cfg.log_every == 0 or val_loss is not None:
                    now = time.perf_counter()
                    last = self._log(metrics, lr, val_loss, tokens_per_s=tok_log / max(now - t_log, 1e-9))
                    postfix = {"loss": f"{last['train_loss']:.4f}", "tok/s": f"{last['tokens_per_s']:,.0f}"}
                    if val_loss is not None:
                        postfix["val"] = f"{val_loss:.4f}"
                    bar.set_postfix(postfix, refresh=False)
                    t_log, tok_log = now, 0
                if self._due(cfg.ckpt_every):
                    bar.set_postfix_str(f"writing checkpoint step-{self.step:08d}...", refresh=True)
                    self._checkpoint()
                    bar.set_postfix(postfix, refresh=False)
        except KeyboardInterrupt:
            written = list_checkpoints(self.out)  # what is on disk, whatever the signal interrupted
            saved = (
                f"its last checkpoint is step {checkpoint_step(written[-1])}: the same command with --resume "
                "continues from there"
                if written
                else "no checkpoint was written yet"
            )
            raise Interrupted(f"training stopped at step {self.step} of {cfg.steps}; {saved}") from None
        finally:
            if stop is not None:
                stop.release()
            bar.close()
            metrics.close()
        return last

    def _due(self, every: int) -> bool:
        """Whether the step just taken is a multiple of ``every`` or the last one."""
        return self.step % every == 0 or self.step == self.cfg.steps

    def _optimizer_step(self, runner: nn.Module) -> None:
        """One global step: forward and backward over every micro-batch, clip, then update unless the
        non-finite guard skips it; the scheduler advances either way."""
        cfg, info = self.cfg, self.info
        loss_sum = torch.zeros((), device=info.device)
        segments, doc_starts = None, None
        if self.streams is not None:
            segments, reset, doc_starts = self.streams.next()  # [batch_size, context + 1], _, [batch_size, context]
            if reset:  # a new pass over the data: every stream starts from an empty state
                self.carried = [None] * cfg.grad_accum
        for i in range(cfg.grad_accum):
            batch, resets = self._micro_batch(i, segments, doc_starts)  # [local, context + 1], [local, context]
            with self.parallel.accumulating(runner, last=i == cfg.grad_accum - 1):
                with autocast_context(info.device, self.amp):
                    _, loss, new_state = runner(
                        batch[:, :-1], batch[:, 1:], state=self.carried[i], return_logits=False, resets=resets
                    )
                (loss / cfg.grad_accum).backward()  # outside autocast, as PyTorch recommends
            if self.streams is not None:  # truncated BPTT: the state carries on, its graph does not
                self.carried[i] = {"pos": 0, "layers": map_tensors(Tensor.detach, new_state["layers"])}
            loss_sum += loss.detach().float()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else math.inf  # inf: measure the norm only
        grad_norm = self.parallel.clip_grad_norm(max_norm)  # [], the same on every process
        if info.world > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.SUM)
        loss_total, norm = torch.stack([loss_sum, grad_norm.to(loss_sum)]).tolist()  # one device sync
        step_loss = loss_total / (cfg.grad_accum * info.world)
        if self.guard.allows_update(self.step + 1, step_loss, norm, warn=info.is_main):
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.window = [self.window[0] + step_loss, self.window[1] + 1]

    def _micro_batch(
        self, i: int, segments: Optional[Tensor], doc_starts: Optional[Tensor]
    ) -> Tuple[Tensor, Optional[Tensor]]:
        """This process's rows of micro-batch ``i`` on its device: ``[local, context + 1]`` ids and, in
        streamed training with document resets, ``[local, context]`` document-start flags."""
        rows = slice(self.info.rank * self.local, (self.info.rank + 1) * self.local)
        if segments is None:
            batch = sample_batch(
                self.corpus.train, self.micro, self.model_cfg.context, self.data_gen
            )  # [micro, context + 1]
            return batch[rows].to(self.info.device), None
        mine = slice(i * self.micro, (i + 1) * self.micro)  # micro-batch i's streams
        resets = None if doc_starts is None else doc_starts[mine][rows].to(self.info.device)
        return segments[mine][rows].to(self.info.device), resets

    def _validation_loss(self) -> float:
        """The validation loss: windows of the validation split, or the carried-state protocol."""
        cfg, context = self.cfg, self.model_cfg.context
        if self.streams is not None:
            documents = self.corpus.documents.get("val") if cfg.reset_documents else None
            tokens = cfg.eval_batches * self.micro * context  # as many as the windows would hold
            return carried_validation_loss(self.model, self.corpus.val, context, tokens, documents)
        eval_info = DistInfo(0, 1, self.info.device) if self.parallel.sharded else self.info  # sharded: all alike
        return validation_loss(
            self.model,
            self.corpus.val,
            context,
            self.micro // self.info.world,
            cfg.eval_batches * self.micro,
            eval_info,
            self.amp,
        )

    def _log(self, metrics: Metrics, lr: float, val_loss: Optional[float], tokens_per_s: float) -> Dict[str, float]:
        """Write a metrics row (the mean training loss since the last one) and start a new window."""
        protocol = None
        if val_loss is not None:
            protocol = "windows" if self.streams is None else "carried-state"
            if self.streams is not None and self.cfg.reset_documents:
                protocol += " (reset at documents)"
        train_loss = self.window[0] / self.window[1]
        metrics.log(
            self.step,
            val_protocol=protocol,
            lr=lr,
            train_loss=train_loss,
            val_loss=val_loss,
            tokens_per_s=tokens_per_s,
            elapsed_s=self.elapsed,
        )
        self.window = [0.0, 0]
        return {"step": self.step, "train_loss": train_loss, "val_loss": val_loss, "tokens_per_s": tokens_per_s}

    def _checkpoint(self) -> None:
        """Checkpoint the run after a finiteness check of everything it would save."""
        self.guard.check_finite(self.step, self.parallel.named_tensors(self.optimizer))
        progress = {
            "step": self.step,
            "loss_window": self.window,
            "elapsed_s": self.elapsed,
            "bad_steps": self.guard.bad_steps,
        }
        if self.streams is not None:
            progress["streams"] = self.streams.state_dict()
        carried = self.carried if self.streams is not None else None
        write_checkpoint(
            self.out, self.parallel, self.optimizer, self.scheduler, self.data_gen, self.info, progress, carried
        )
        self.guard.last_good = self.step
