"""How training runs across the processes of a ``torchrun`` job: replicated (DDP) or sharded (FSDP2).

``TrainConfig.data_parallel`` chooses, and with one process neither applies:

- ``'ddp'``: every process holds the whole model and optimizer; ``DistributedDataParallel``
  averages the gradients (all-reduce) after each backward.
- ``'fsdp'``: ``torch.distributed.fsdp.fully_shard`` (FSDP2) on every transformer block and on the
  model: each process holds 1/world of every parameter, gradient and optimizer state, all-gathers
  a block's parameters for its forward and backward and reduce-scatters its gradients. Memory per
  process falls with the number of processes; the numbers are those of DDP up to float32 rounding.

Checkpoints are the same files in both modes (the whole model in ``model.safetensors``, the
optimizer's state in ``trainer.pt``): with FSDP the full state is gathered onto the main process
through an unsharded copy of the model kept on the CPU, so a sharded run is read like any other
by ``generate``, ``eval`` and ``from_pretrained``. A run resumes in the mode it was started in.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Any, ContextManager, Dict, Iterable, Iterator, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

MODES = ("ddp", "fsdp")


class DataParallel:
    """The training model of one process and what the training loop asks of it across processes.

    Args:
        model: the model, already on this process's device (sharded in place with ``'fsdp'``).
        mode: ``'ddp'`` or ``'fsdp'``.
        world: the number of processes.
        device: this process's device.
        find_unused_parameters: DDP's option (an adaptive softmax leaves unused clusters).
    """

    def __init__(
        self, model: nn.Module, mode: str, world: int, device: torch.device, find_unused_parameters: bool = False
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"data_parallel must be one of {', '.join(MODES)}, got {mode!r}")
        self.model, self.device, self.find_unused = model, device, find_unused_parameters
        self.sharded = mode == "fsdp" and world > 1
        self.replicated = mode == "ddp" and world > 1
        self.replica: Optional[nn.Module] = None
        if self.sharded:
            from torch.distributed.fsdp import fully_shard

            self.replica = copy.deepcopy(model).cpu()  # the unsharded copy checkpoints are written from and read into
            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)

    def runner(self, module: nn.Module) -> nn.Module:
        """What the loop calls for a training forward: ``module`` (the model, or its compiled form),
        wrapped by DDP when replicated."""
        if not self.replicated:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, find_unused_parameters=self.find_unused)

    def accumulating(self, runner: nn.Module, last: bool) -> ContextManager:
        """Around micro-batch backwards: gradients are exchanged only after the ``last`` one."""
        if self.replicated and not last:
            return runner.no_sync()
        if self.sharded:
            self.model.set_requires_gradient_sync(last)
        return nullcontext()

    def clip_grad_norm(self, max_norm: float) -> Tensor:
        """Clip the global gradient norm to ``max_norm``; returns the norm before clipping ``[]`` (the
        same on every process)."""
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm

    def _resharded(self) -> None:
        """Sharded: put the parameters back in their shards. FSDP2 keeps the root module's parameters
        gathered after a forward without a backward (an evaluation), and the optimizer holds the shards."""
        if self.sharded:
            self.model.reshard()

    def named_tensors(self, optimizer: torch.optim.Optimizer) -> Iterator[Tuple[str, Tensor]]:
        """Every parameter and optimizer-state tensor, whole (gathered when sharded: every process must
        iterate all of them), for the finite check before a checkpoint."""
        from .checkpoints import named_tensors

        self._resharded()

        def whole(items: Iterable[Tuple[str, Tensor]]) -> Iterator[Tuple[str, Tensor]]:
            for name, t in items:
                yield name, t.full_tensor() if hasattr(t, "full_tensor") else t

        yield from whole(self.model.named_parameters())
        yield from whole(named_tensors(optimizer.state_dict()["state"], "optimizer"))

    def checkpoint_model(self) -> nn.Module:
        """The module whose weights a checkpoint writes: the model, or (sharded) the CPU replica filled
        with the gathered weights (on the main process; a collective: every process calls it)."""
        if not self.sharded:
            return self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        self._resharded()
        full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if dist.get_rank() == 0:
            self.replica.load_state_dict(full)
        return self.replica

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
        """The optimizer's state for ``trainer.pt`` (whole, keyed by parameter name when sharded; a
        collective when sharded)."""
        if not self.sharded:
            return optimizer.state_dict()
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        self._resharded()
        return get_optimizer_state_dict(
            self.model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )

    def weights_target(self) -> nn.Module:
        """The module a checkpoint's weights are loaded into before :meth:`load`: the model, or (sharded)
        the CPU replica."""
        return self.replica if self.sharded else self.model

    def load(self, optimizer: torch.optim.Optimizer, optimizer_state: Dict[str, Any]) -> None:
        """Load ``optimizer_state`` (as :meth:`optimizer_state` wrote it) and, sharded, distribute the
        replica's weights (loaded by the caller) to the shards."""
        if not self.sharded:
            optimizer.load_state_dict(optimizer_state)
            return
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        set_model_state_dict(self.model, self.replica.state_dict(), options=options)
        set_optimizer_state_dict(self.model, optimizer, optimizer_state, options=options)
