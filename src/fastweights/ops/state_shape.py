"""A rule's declared state shape: :class:`StateShape`, ``[N, H, *dims]`` from ``d_k`` and ``d_v``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Tuple


def _matrix(d_k: int, d_v: int) -> Tuple[int, ...]:
    return (d_k, d_v)


@dataclass(frozen=True)
class StateShape:
    """The shape of a rule's state: ``[N, H, *dims]``, one state per sequence and head.

    ``size(d_k, d_v)`` gives ``dims`` for keys of ``d_k`` and values of ``d_v`` columns (the
    normalisation column included, when the op adds it); ``text`` names them for errors and
    ``fastweights rules``. The default is one ``[d_k, d_v]`` matrix, read as ``o_t = S_t^T q_t``.
    The op checks ``initial_state`` against it, layers make their empty state from it
    (:meth:`~fastweights.layers.FastWeightAttention.init_state`), and the final state has it.

    Example, two matrices side by side (a fast and a slow memory):
    ``StateShape("d_k, 2 d_v", lambda d_k, d_v: (d_k, 2 * d_v))``.
    """

    text: str = "d_k, d_v"
    size: Callable[[int, int], Tuple[int, ...]] = _matrix

    def __call__(self, d_k: int, d_v: int) -> Tuple[int, ...]:
        return tuple(self.size(d_k, d_v))

    @property
    def is_matrix(self) -> bool:
        """Whether the state is one ``[d_k, d_v]`` matrix (what reading it as ``S^T q`` needs)."""
        return self.size is _matrix

    def __str__(self) -> str:
        return f"[N, H, {self.text}]"


MATRIX = StateShape()  #: one ``[d_k, d_v]`` matrix per sequence and head: every rule's unless it declares another
