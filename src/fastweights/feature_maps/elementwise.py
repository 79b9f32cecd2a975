"""Elementwise feature maps: ``elu_p1`` (the paper's "Linear"), ``relu``, ``identity``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import FeatureMap


class EluPlusOne(FeatureMap):
    """``phi(x) = elu(x) + 1`` (Katharopoulos et al. 2020); positive, d_k = d."""

    non_negative = True

    def out_dim(self, d: int | None = None) -> int:
        return self.d if d is None else d

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return F.elu(x) + 1.0


class ReLU(FeatureMap):
    """``phi(x) = relu(x)``; non-negative, d_k = d."""

    non_negative = True

    def out_dim(self, d: int | None = None) -> int:
        return self.d if d is None else d

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return F.relu(x)


class Identity(FeatureMap):
    """``phi(x) = x`` (use with L2 key normalisation for the delta rule); d_k = d."""

    def out_dim(self, d: int | None = None) -> int:
        return self.d if d is None else d

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return x
