"""Attention layers: the fast weight programmer and the softmax baseline, one interface."""

from .fast_weight import FastWeightAttention
from .softmax import SoftmaxAttention

__all__ = ["FastWeightAttention", "SoftmaxAttention"]
