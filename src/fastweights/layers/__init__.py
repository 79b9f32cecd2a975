"""Attention layers: the fast weight programmer, its recurrent variant and the softmax baseline, one
interface; and the attention spec (:mod:`~fastweights.layers.spec`) that names which to build.

Every attention layer offers the same methods, so that generation, evaluation and carried-state
training never ask which kind of layer they hold (``x``: ``[B, T, d_model]``; a state is a dict of
batch-major tensors, ``State``):

- ``forward(x, state=None, cu_seqlens=None) -> (y, state)``: the parallel form over a sequence,
  continuing from ``state``;
- ``step(x_t, state=None) -> (y_t, state)``: one token, ``x_t`` ``[B, d_model]``;
- ``init_state(batch_size, device=None) -> state``: the empty state;
- ``state_batch_size(state)``, ``select_state(state, rows)``, ``stack_states(states)``: a state's
  rows, some of them (``rows``: ``[b]`` indices), or the rows of several states in order;
- ``fixed_size_state``: whether the state keeps its size whatever the number of tokens read (the
  fast weights) or grows with it (the softmax layer's KV cache).
"""

from .fast_weight import FastWeightAttention
from .recurrent_fast_weight import RecurrentFastWeightAttention
from .softmax import SoftmaxAttention
from .spec import AttentionSpec, FeatureMapSpec, describe_attentions, list_attentions, parse_attention

__all__ = [
    "AttentionSpec",
    "FastWeightAttention",
    "FeatureMapSpec",
    "RecurrentFastWeightAttention",
    "SoftmaxAttention",
    "describe_attentions",
    "list_attentions",
    "parse_attention",
]
