"""FAVOR+ positive orthogonal random features (Choromanski et al. 2021, Performer)."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from .base import FeatureMap


def orthogonal_gaussian(m: int, d: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """``[m, d]`` random matrix: blocks of orthogonal rows, each row with a chi(d)-distributed norm,
    so every row is marginally N(0, I_d) while rows within a block are exactly orthogonal."""
    blocks = []
    for _ in range(math.ceil(m / d)):
        g = torch.randn(d, d, generator=generator)
        qmat, _ = torch.linalg.qr(g)
        blocks.append(qmat.T)
    w = torch.cat(blocks, dim=0)[:m]  # [m, d] unit rows
    norms = torch.randn(m, d, generator=generator).norm(dim=1, keepdim=True)
    return w * norms


class Favor(FeatureMap):
    """``phi(x) = (2m)^{-1/2} [exp(W x - |x|^2/2), exp(-W x - |x|^2/2)]``, d_k = 2m.

    ``E[phi(q) . phi(k)] = exp(q . k)`` (positive, antithetic features). ``W`` ``[m, d]`` is a
    buffer (saved in the ``state_dict``). ``redraw``: ``'step'`` (every training forward),
    an int N (every N training forwards) or ``'never'``; nothing is redrawn in eval mode.
    ``input_scale`` multiplies x first (``d**-0.25`` makes phi(q).phi(k) estimate softmax's
    ``exp(q . k / sqrt(d))``).

    Draw number i of ``W`` is a function of ``(seed, i)`` only, and both are buffers: replicas
    built alike (DDP ranks) redraw the same matrix, and a run resumed from a ``state_dict``
    redraws what the uninterrupted run would have. ``seed=None`` takes one from torch's global RNG.
    """

    non_negative = True

    def __init__(
        self,
        d: int,
        m: int = 64,
        redraw: Union[str, int] = "never",
        input_scale: float = 1.0,
        seed: Optional[int] = None,
    ) -> None:
        super().__init__(d)
        if not isinstance(m, int) or m < 1:
            raise ValueError(f"favor m (number of random features) must be a positive int, got {m!r}")
        if not (
            redraw in ("step", "never") or (isinstance(redraw, int) and not isinstance(redraw, bool) and redraw >= 1)
        ):
            raise ValueError(f"favor redraw must be 'step', 'never' or a positive int N, got {redraw!r}")
        self.m = m
        self.redraw = redraw
        self.input_scale = float(input_scale)
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, ()))
        self.register_buffer("seed", torch.tensor(seed, dtype=torch.long))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))  # matrices drawn so far
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training forwards seen
        self.register_buffer("weight", self._draw(0))  # [m, d]

    def out_dim(self, d: int | None = None) -> int:
        return 2 * self.m

    def _draw(self, index: int) -> Tensor:
        """Draw number ``index``: ``[m, d]``, from a generator seeded by ``(seed, index)``."""
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + index)
        return orthogonal_gaussian(self.m, self.d, g)

    def resample(self) -> None:
        self.draws += 1
        self.weight.copy_(self._draw(int(self.draws)).to(self.weight))

    def training_step(self) -> None:
        if self.redraw == "never":
            return
        self.steps += 1
        every = 1 if self.redraw == "step" else int(self.redraw)
        if int(self.steps) % every == 0:
            self.resample()

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        x = x * self.input_scale
        proj = x @ self.weight.to(x.dtype).T  # [..., m]
        sq = 0.5 * (x * x).sum(-1, keepdim=True)  # [..., 1]
        feats = torch.cat([proj - sq, -proj - sq], dim=-1).exp()  # [..., 2m]
        return feats * (2 * self.m) ** -0.5

    def extra_repr(self) -> str:
        return f"d={self.d}, m={self.m}, redraw={self.redraw!r}, out_dim={self.out_dim()}"
