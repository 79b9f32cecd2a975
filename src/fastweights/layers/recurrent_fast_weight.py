"""Recurrent fast weight programmers (Irie, Schlag, Csordás & Schmidhuber, NeurIPS 2021).

The slow net also sees the layer's previous output: with ``o_{t-1}`` the fast net's output at the
previous token (heads concatenated, ``[H D]``)::

    [q_t, k_t, v_t, beta_t, ...] = W x_t + R o_{t-1}
    S_t = rule(S_{t-1}; phi(k_t), v_t, beta_t, ...),   o_t = S_t^T phi(q_t),   y_t = W_o o_t

With the delta rule this is the Recurrent Delta Net (RDN). Each token's projections depend on the
previous output, so the layer is sequential by construction: :meth:`forward` runs the one-token
step T times (training cost linear in T, but T dependent steps).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

from ._checks import check_sequence, check_token
from .fast_weight import FastWeightAttention, State


class RecurrentFastWeightAttention(FastWeightAttention):
    """A :class:`FastWeightAttention` whose slow net also reads its previous output ``o_{t-1}``.

    Same arguments as :class:`FastWeightAttention` (``rule='delta'`` gives the RDN); ``impl`` is not
    used (every token goes through ``decode_impl``). The state is ``{"S": fast weights, "o":
    [B, H D] previous output}``, both in the state's float32 (float64 for a float64 layer).
    """

    def __init__(self, d_model: int, n_heads: int, d_head: Optional[int] = None, **kwargs) -> None:
        super().__init__(d_model, n_heads, d_head, **kwargs)
        width = self.n_heads * self.d_head
        self.recurrent = nn.ModuleDict(
            {
                name: nn.Linear(width, x.shape[-1], bias=False)
                for name, x in self._slow(torch.zeros(1, 1, d_model)).items()
            }
        )

    def forward(
        self, x: Tensor, state: Optional[State] = None, cu_seqlens: Optional[Tensor] = None
    ) -> Tuple[Tensor, State]:
        """``x: [B, T, d_model]`` -> ``(y [B, T, d_model], state)``, one token after the other.

        With ``cu_seqlens`` (``B = 1``), each packed sequence starts from its own state (row i of
        each tensor of ``state``); the returned state holds one row per sequence.
        """
        check_sequence(x, self.d_model)
        if self.training:
            self.feature_map.training_step()
        if cu_seqlens is None:
            return self._scan(x, state)
        if x.shape[0] != 1:
            raise ValueError(f"with cu_seqlens the sequences are packed along T, so B must be 1, got B = {x.shape[0]}")
        cu = cu_seqlens.tolist()
        ys, states = [], []
        for i, (a, b) in enumerate(zip(cu, cu[1:])):
            y, s = self._scan(x[:, a:b], {n: t[i : i + 1] for n, t in state.items()} if state is not None else None)
            ys.append(y)
            states.append(s)
        return torch.cat(ys, 1), {n: torch.cat([s[n] for s in states]) for n in states[0]}

    def step(self, x_t: Tensor, state: Optional[State] = None) -> Tuple[Tensor, State]:
        """One token: ``x_t: [B, d_model] -> y_t: [B, d_model]``."""
        check_token(x_t)
        y, state = self._scan(x_t[:, None], state)
        return y[:, 0], state

    def init_state(self, batch_size: int, device: Optional[torch.device] = None) -> State:
        """An empty state: zero fast weights, zero previous output."""
        state = super().init_state(batch_size, device)
        state["o"] = torch.zeros(batch_size, self.n_heads * self.d_head, device=state["S"].device)
        return state

    def _scan(self, x: Tensor, state: Optional[State]) -> Tuple[Tensor, State]:
        """The tokens of ``x: [B, T, d_model]`` in order, each from the previous one's state."""
        if state is None:
            state = self.init_state(x.shape[0], x.device)
        pre_x = self._slow(x)  # the input's share of every projection, all tokens at once
        fast = {"S": state["S"]}
        o_prev, outs = state["o"], []
        for t in range(x.shape[1]):
            pre = {
                name: p[:, t : t + 1] + self.recurrent[name](o_prev.to(p.dtype))[:, None] for name, p in pre_x.items()
            }
            o, fast["S"] = self._fast(pre, fast, None, self.step_op)  # [B, 1, H D]
            o_prev = o[:, 0]
            outs.append(o)
        o = torch.cat(outs, 1)  # [B, T, H D]
        return self.dropout(self.out_proj(o)), {"S": fast["S"], "o": o_prev.to(fast["S"].dtype)}
