"""The non-finite policy of training: skip a bad step, stop after too many, never checkpoint NaNs."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Optional, Tuple

from torch import Tensor

from ..files.state import nonfinite

log = logging.getLogger(__name__)


class NonFiniteError(ValueError):
    """Training produced a NaN or an infinity; the message names the step and the last good checkpoint."""


class NonFiniteGuard:
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
