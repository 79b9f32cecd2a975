"""The run directory over a run's life: started or checked for a resume, checkpointed, restored."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import Tensor

from ..data.text import TOKENIZER_FILE, Corpus, check_same_tokenizer, save_tokenizer
from ..files.atomic import remove_temporaries
from ..files.state import map_tensors
from ..models import LMConfig, TrainConfig, read_config, write_config
from ..models.directory import CONFIG_FILE, WEIGHTS_FILE
from .checkpoints import (
    CHECKPOINTS_DIR,
    CheckpointError,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    publish_weights,
    reject_checkpoint,
    save_checkpoint,
)
from .data_parallel import DataParallel
from .distributed import DistInfo, on_main
from .metrics import LOSS_PLOT, METRICS_FILE

RUN_FILES = (CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE, METRICS_FILE, LOSS_PLOT)  # the run directory's top level
RESUMABLE_CHANGES = ("steps", "compile")  # training settings a --resume may change (steps: only more)
DECODING_SETTINGS = ("decode_impl",)  # model settings that change no training, which a --resume may change too
log = logging.getLogger(__name__)


def prepare_run_dir(out: Path, model_cfg: LMConfig, train_cfg: TrainConfig, corpus: Corpus, resume: bool) -> None:
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
            may_change = RESUMABLE_CHANGES if cls is TrainConfig else DECODING_SETTINGS
            diff = {
                k: (old[k], v)
                for k, v in new.items()
                if old[k] != v and not (k in may_change and (k != "steps" or v > old[k]))
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


def write_checkpoint(
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
    on_main(info, lambda: save_checkpoint(out, model, state, progress["step"], carry))


def restore(
    out: Path, parallel: DataParallel, optimizer: torch.optim.Optimizer, scheduler: Any, info: DistInfo
) -> Optional[Dict[str, Any]]:
    """Load the newest checkpoint that verifies into the model, ``optimizer`` and ``scheduler`` and
    return its trainer state (``None`` when the run has none yet).

    A checkpoint that fails (see :func:`~fastweights.train.checkpoints.load_checkpoint`, and the optimizer
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
            on_main(info, lambda: set_aside(out, rejected, ckpt))  # noqa: B023 (used within this iteration)
        return state
    if candidates:
        raise CheckpointError(
            f"--resume: no usable checkpoint in {out / CHECKPOINTS_DIR} (see the warnings above); "
            f"move them away to restart the run from step 0"
        )
    return None


def set_aside(out: Path, rejected: List[Path], chosen: Path) -> None:
    """Move the rejected checkpoints aside and make the chosen one's weights the model directory's."""
    moved = [reject_checkpoint(p) for p in rejected]
    publish_weights(out, chosen)
    log.warning(
        "resuming from step %d (%s); moved the unusable checkpoints aside: %s",
        checkpoint_step(chosen),
        chosen,
        ", ".join(str(p) for p in moved),
    )
