"""Deterministic parameter-free projection, DPFP-nu (Schlag et al. 2021, eq. 20)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import FeatureMap


class DPFP(FeatureMap):
    """``r = [relu(x), relu(-x)]`` (size 2d); ``phi(x) = concat_{i=1..nu} r * roll(r, i)``.

    Non-negative by construction, d_k = 2 * nu * d; larger ``nu`` gives a larger memory.
    """

    non_negative = True

    def __init__(self, d: int, nu: int = 1) -> None:
        super().__init__(d)
        if not isinstance(nu, int) or nu < 1 or nu >= 2 * d:
            raise ValueError(f"dpfp nu must be an int in [1, 2d) = [1, {2 * d}), got {nu!r}")
        self.nu = nu

    def out_dim(self, d: int | None = None) -> int:
        return 2 * self.nu * (self.d if d is None else d)

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        r = torch.cat([F.relu(x), F.relu(-x)], dim=-1)  # [..., 2d]
        return torch.cat([r * r.roll(i, dims=-1) for i in range(1, self.nu + 1)], dim=-1)  # [..., 2 nu d]

    def extra_repr(self) -> str:
        return f"d={self.d}, nu={self.nu}, out_dim={self.out_dim()}"
