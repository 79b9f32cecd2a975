"""Peer implementations for ``fastweights bench ops --peers``, adapted to ``(q, k, v, beta) -> o``.

All take the public ``[B, T, H, D]`` layout, no scaling of q (fastweights' ops use ``scale=1``)
and no initial state; layout changes are part of what is timed, as they are for fastweights.
Peers are optional: a missing one is reported with the reason and skipped.

- fast-transformers (``pytorch-fast-transformers``): ``causal_dot_product``, its compiled C++
  CPU kernel of the sum rule.
- flash-linear-attention (``fla-core``): its pure-torch references ``naive_chunk_linear_attn``
  (sum rule, chunk 64) and ``delta_rule_chunkwise`` (delta rule, chunk 64; T must be a multiple).

These are the CPU peers (:func:`available`); FLA's CUDA kernels are a fastweights backend (impl
``fla``). On CUDA the yardstick is softmax causal attention, :func:`sdpa_causal`.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import torch.nn.functional as F
from torch import Tensor

Peer = Tuple[str, Optional[Callable[[Tensor, Tensor, Tensor, Optional[Tensor]], Tensor]], str]


def _fast_transformers(rule: str) -> List[Peer]:
    name = "fast-transformers causal_dot_product (C++)"
    if rule != "sum":
        return []
    try:
        from fast_transformers.causal_product import causal_dot_product
    except Exception as e:  # ImportError, or a build without its compiled kernel
        return [(name, None, f"not available ({type(e).__name__}: {e})")]

    def fn(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor]) -> Tensor:
        t = [x.transpose(1, 2).contiguous() for x in (q, k, v)]  # [B, H, T, D]
        return causal_dot_product(*t).transpose(1, 2)  # [B, T, H, D]

    return [(name, fn, "")]


def _flash_linear_attention(rule: str) -> List[Peer]:
    names = {"sum": "fla naive_chunk_linear_attn (torch)", "delta": "fla delta_rule_chunkwise (torch)"}
    if rule not in names:  # no torch reference of FLA's is wired up for the other rules
        return []
    name = names[rule]
    try:
        if rule == "sum":
            from fla.ops.linear_attn.naive import naive_chunk_linear_attn
        else:
            from fla.ops.delta_rule.naive import delta_rule_chunkwise
    except Exception as e:  # ImportError (fla needs triton to import)
        return [(name, None, f"not available ({type(e).__name__}: {e})")]

    if rule == "sum":

        def fn(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor]) -> Tensor:
            return naive_chunk_linear_attn(q, k, v, scale=1.0)  # [B, T, H, D]
    else:

        def fn(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor]) -> Tensor:
            d_k = q.shape[-1]
            t = [x.transpose(1, 2) for x in (q * d_k**0.5, k, v, beta)]  # it scales q by d_k^-1/2
            o, _ = delta_rule_chunkwise(*t, chunk_size=64)  # [B, H, T, D]
            return o.transpose(1, 2)

    return [(name, fn, "")]


def available(rule: str) -> List[Peer]:
    """``(name, fn or None, reason when None)`` for every known peer of ``rule``."""
    return _fast_transformers(rule) + _flash_linear_attention(rule)


def sdpa_causal(q: Tensor, k: Tensor, v: Tensor, beta: Optional[Tensor] = None) -> Tensor:
    """Softmax causal attention, torch's ``scaled_dot_product_attention`` (scale ``d_k^-1/2``; ``beta``
    ignored): ``q, k [B, T, H, d_k]``, ``v [B, T, H, d_v]`` -> ``o [B, T, H, d_v]``. It reads the
    ``[B, H, T, D]`` transposed views (no copy: its fused kernels take strided heads)."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return o.transpose(1, 2)
