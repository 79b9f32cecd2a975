"""This process's place in a ``torchrun`` job, and collectives that keep the processes in step."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from ..cli.errors import describe_os_error

T = TypeVar("T")


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


def on_main(info: DistInfo, fn: Callable[[], T]) -> Optional[T]:
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
