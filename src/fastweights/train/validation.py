"""The validation loss that training logs: mean loss over fixed windows, or the carried-state protocol."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..evaluation.loss import carried_state_loss
from .batches import eval_windows
from .distributed import DistInfo
from .optim import autocast_context


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
