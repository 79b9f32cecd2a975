"""Attention layers: the fast weight programmer, its recurrent form and the softmax baseline, one interface."""

from .fast_weight import FastWeightAttention
from .recurrent_fast_weight import RecurrentFastWeightAttention
from .softmax import SoftmaxAttention

__all__ = ["FastWeightAttention", "RecurrentFastWeightAttention", "SoftmaxAttention"]
