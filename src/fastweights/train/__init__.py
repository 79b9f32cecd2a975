"""Training: the loop (:func:`train`), its run directory and checkpoints, data parallelism, the
streams of carried-state training, the schedule and the non-finite guard."""

from .batches import check_splits, eval_windows, sample_batch
from .checkpoints import CheckpointError, latest_checkpoint, list_checkpoints
from .distributed import DistInfo, main_first, setup_distributed
from .guard import NonFiniteError
from .loop import train
from .metrics import read_metrics
from .optim import autocast_context, autocast_dtype, lr_at, make_optimizer
from .validation import carried_validation_loss, validation_loss

__all__ = [
    "CheckpointError",
    "DistInfo",
    "NonFiniteError",
    "autocast_context",
    "autocast_dtype",
    "carried_validation_loss",
    "check_splits",
    "eval_windows",
    "latest_checkpoint",
    "list_checkpoints",
    "lr_at",
    "main_first",
    "make_optimizer",
    "read_metrics",
    "sample_batch",
    "setup_distributed",
    "train",
    "validation_loss",
]
