"""Evaluate a trained language model: perplexity, or nats and bits per character.

Scores a split of --data (tokenized with the checkpoint's tokenizer; a single text file is split
into train/val as in training) with the paper's two protocols:

  (a) sliding-window: each token predicted from the L = context tokens before it, every window
      from an empty state, scoring the window's last position. --stride S advances the window by
      S tokens and scores its last S positions: S = 1 (default) is the paper's protocol and costs
      one L-token forward per token; S = L is ~L times faster (disjoint blocks, less context for
      early positions). --max-tokens N scores only the first N tokens of the split: both make
      (a) practical on a CPU.
  (b) carried-state (fast-weight models only): the split in consecutive segments of L tokens, the
      fast weights carried from one segment to the next, in constant memory.

Example:
  fastweights eval --checkpoint runs/shakespeare-delta --data input.txt
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..arguments import check_device, check_output_path
from ..evaluate import PROTOCOLS, evaluate
from ..models import load_model, read_config
from ..tasks.text import TOKENIZER_FILE, load_corpus


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="model directory written by `fastweights train`")
    p.add_argument("--data", required=True, type=Path, help="the corpus: a text file or a wiki.*.tokens directory")
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="split to score (default: val)")
    p.add_argument("--val-fraction", type=float, default=None,
                   help="validation share of a single text file: as recorded in the checkpoint, else 0.1 (train's default)")
    p.add_argument("--protocol", default="both", choices=["both", *PROTOCOLS], help="protocol(s) to run (default: both)")
    p.add_argument("--stride", type=int, default=1, help="sliding-window stride, 1..context (default: 1, the paper's)")
    p.add_argument("--segment", type=int, default=None, help="carried-state segment length (default: the context)")
    p.add_argument("--max-tokens", type=int, default=None, help="score only the first N tokens of the split (default: all)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass (default: 64)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def check_args(args: argparse.Namespace) -> None:
    """The options that need no model or data, checked before any work (a ``ValueError`` naming the option)."""
    for name, least in (("stride", 1), ("segment", 1), ("max_tokens", 2), ("batch_size", 1)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    check_device(args.device)
    if args.json is not None:
        check_output_path(args.json, "--json")


def main(args: argparse.Namespace) -> int:
    check_args(args)
    model, cfg = load_model(args.checkpoint, args.device)
    val_fraction = args.val_fraction or (read_config(args.checkpoint).get("data") or {}).get("val_fraction", 0.1)
    corpus = load_corpus(args.data, tokenizer_file=args.checkpoint / TOKENIZER_FILE, val_fraction=val_fraction)
    if args.split not in corpus.splits:
        raise ValueError(f"--data {args.data} has no {args.split!r} split; it has {sorted(corpus.splits)}")
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    results = evaluate(model, corpus.splits[args.split], cfg.context, protocols=protocols, stride=args.stride,
                       segment=args.segment, batch_size=args.batch_size, max_tokens=args.max_tokens,
                       progress=not args.no_progress)

    unit = "char" if corpus.tokenizer.kind == "char" else "token"
    print(f"{args.checkpoint} ({cfg.attention}, {model.num_params():,} parameters) on the {args.split} split of {args.data}")
    print(f"| protocol | context | {unit}s scored | nats/{unit} | bits/{unit} | perplexity |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.protocol} | {r.context} | {r.tokens} | {r.nats:.4f} | {r.bits:.4f} | {r.perplexity:.2f} |")
    if "carried-state" in protocols and not any(r.protocol == "carried-state" for r in results):
        print("| carried-state | - | - | n/a: softmax attention's state (its KV cache) grows with the text | | |")
    if args.json is not None:
        doc = {"checkpoint": str(args.checkpoint), "attention": cfg.attention, "data": str(args.data), "split": args.split,
               "stride": args.stride, "max_tokens": args.max_tokens, "results": [r.to_dict() for r in results]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0
