"""Show a fast-weight layer at work: parallel forward == token-by-token decoding, constant state.

Builds a FastWeightAttention layer, runs one sequence through the chunkwise parallel form and the
same sequence token by token with the one-token step form, and prints the largest difference, the state
size and the time of each.

Examples:
  fastweights demo
  fastweights demo --rule sum --feature-map elu_p1 --length 2048
  fastweights demo --rule gated_delta --impl chunk --d-model 256 --heads 8
"""

from __future__ import annotations

import argparse
import time

import torch

from ...feature_maps import list_feature_maps
from ...layers import FastWeightAttention
from ...ops import list_backends, list_rules


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rule", choices=list_rules(), default="delta", help="update rule (default: delta)")
    impls = ["auto"] + sorted({b.name for b in list_backends(available=False) if not b.one_token})
    p.add_argument("--impl", default="auto", choices=impls, help="op backend of the parallel forward (default: auto)")
    p.add_argument("--feature-map", default="dpfp", choices=list_feature_maps(), help="feature map phi (default: dpfp)")
    p.add_argument("--nu", type=int, default=2, help="DPFP nu (default: 2)")
    p.add_argument("--length", type=int, default=512, help="sequence length T (default: 512)")
    p.add_argument("--d-model", type=int, default=128, help="model width (default: 128)")
    p.add_argument("--heads", type=int, default=4, help="number of heads (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")


def build_layer(args: argparse.Namespace) -> FastWeightAttention:
    """The demo's layer, its arguments checked first (a ``ValueError`` naming the option)."""
    for name in ("length", "d_model", "heads", "nu"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.d_model % args.heads:
        raise ValueError(f"--d-model ({args.d_model}) must be divisible by --heads ({args.heads})")
    kwargs = {"nu": args.nu} if args.feature_map == "dpfp" else {}
    try:
        return FastWeightAttention(
            args.d_model,
            args.heads,
            rule=args.rule,
            feature_map=args.feature_map,
            feature_map_kwargs=kwargs,
            impl=args.impl,
        ).eval()
    except ValueError as e:
        raise ValueError(f"--rule {args.rule} --impl {args.impl} --feature-map {args.feature_map}: {e}") from None


def main(args: argparse.Namespace) -> int:
    torch.manual_seed(args.seed)
    layer = build_layer(args)
    x = torch.randn(1, args.length, args.d_model)
    with torch.no_grad():
        t0 = time.perf_counter()
        y, state = layer(x)
        t_par = time.perf_counter() - t0
        s, ys = None, []
        t0 = time.perf_counter()
        for t in range(args.length):
            y_t, s = layer.step(x[:, t], s)
            ys.append(y_t)
        t_step = time.perf_counter() - t0
    print(layer)
    diff = (torch.stack(ys, 1) - y).abs().max().item()
    n_state = sum(v.numel() for v in state.values())
    print(
        f"tokens: {args.length}   parallel forward: {t_par * 1e3:.1f} ms   "
        f"token-by-token: {t_step * 1e3:.1f} ms ({t_step / args.length * 1e6:.0f} us/token)"
    )
    print(f"max |parallel - step by step| = {diff:.2e}")
    print(f"state: {n_state} floats per sequence, whatever the length (S: {list(state['S'].shape)})")
    return 0 if diff < 1e-4 else 1
