"""One op call as every rule and backend receives it: :class:`OpCall`.

The dispatcher (:class:`fastweights.ops.registry.Op`) checks the user's arguments once, casts them
to the backend's compute dtype and hands one :class:`OpCall` to the rule's ``apply``, which hands
the same (or a :meth:`OpCall.replace`-d one: a scaled value, a normalised key, ...) to the backend's
``run``. Layout ``[B, T, H, D]``; the state ``[N, H, d_k, d_v]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Tuple

from torch import Tensor


@dataclass(frozen=True)
class OpCall:
    """The inputs of one op call, checked.

    Attributes:
        q, k: ``[B, T, H, d_k]``, feature-mapped (``q`` not yet scaled).
        v: ``[B, T, H, d_v]``.
        beta: ``[B, T, H]`` rate, or None (1).
        scale: multiplies ``q``.
        initial_state: ``[N, H, d_k, d_v]`` float32 (float64 for float64 inputs), or None (zeros).
        output_final_state: whether the final state is wanted.
        cu_seqlens: ``[N + 1]`` cumulative lengths of sequences packed along T (then ``B = 1``), or None.
        chunk_size: chunk length of the chunkwise forms.
        normalize, eps: the rule's attention normalisation (``apply`` does it; backends ignore both).
        inputs: the rule's other per-token inputs, each ``[B, T, H]`` (the gated delta rule's ``g``),
            or ``[B, T, H, d_k]`` for those it takes per key channel (:attr:`RuleSpec.per_channel`).
    """

    q: Tensor
    k: Tensor
    v: Tensor
    beta: Optional[Tensor] = None
    scale: float = 1.0
    initial_state: Optional[Tensor] = None
    output_final_state: bool = False
    cu_seqlens: Optional[Tensor] = None
    chunk_size: int = 64
    normalize: bool = False
    eps: float = 1e-6
    inputs: Mapping[str, Tensor] = field(default_factory=dict)

    def replace(self, **changes: Any) -> "OpCall":
        """A copy with ``changes`` (field names as keywords)."""
        return dataclasses.replace(self, **changes)

    def sequences(self, a: int, b: int, state_rows: slice) -> "OpCall":
        """The call restricted to tokens ``a:b`` (one packed sequence, without ``cu_seqlens``) and the
        initial-state rows ``state_rows``."""
        at = slice(a, b)
        return self.replace(
            q=self.q[:, at],
            k=self.k[:, at],
            v=self.v[:, at],
            beta=self.beta[:, at] if self.beta is not None else None,
            initial_state=self.initial_state[state_rows] if self.initial_state is not None else None,
            cu_seqlens=None,
            inputs={n: x[:, at] for n, x in self.inputs.items()},
        )


#: a backend's implementation: ``run(call) -> (o, S_T)``, ``o`` ``[B, T, H, d_v]`` in the dtype of
#: ``call.v``, ``S_T`` ``[N, H, d_k, d_v]`` (or None unless ``call.output_final_state``)
Run = Callable[[OpCall], Tuple[Tensor, Optional[Tensor]]]
