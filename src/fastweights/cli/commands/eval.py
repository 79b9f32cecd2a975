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

--by-position adds the loss and the size of the fast weights against the position in the text
under (b): does the model keep improving past its training context, does its state stay bounded?
--data defaults to the corpus the model was trained on.

Examples:
  fastweights eval --checkpoint runs/shakespeare-delta
  fastweights eval --checkpoint runs/shakespeare-gated-carried --protocol carried-state --by-position --plot pos.png
  fastweights eval --checkpoint runs/wt2-delta --data wikitext-2 --split test
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from ...data.corpora import resolve
from ...data.text import TOKENIZER_FILE, load_corpus
from ...evaluation.loss import PROTOCOLS, evaluate, position_profile
from ...evaluation.report import format_position_table, plot_position_profile
from ...models import load_model, read_config
from ..arguments import check_device, check_output_path


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="model directory written by `fastweights train`")
    p.add_argument(
        "--data",
        default=None,
        help="the corpus: a text file, a wiki.*.tokens directory or a corpus name "
        "(default: the one the model was trained on, as recorded in its config.json)",
    )
    p.add_argument("--split", default="val", choices=["train", "val", "test"], help="split to score (default: val)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        help="validation share of a single text file: as recorded in the checkpoint, else 0.1 (train's default)",
    )
    p.add_argument(
        "--protocol", default="both", choices=["both", *PROTOCOLS], help="protocol(s) to run (default: both)"
    )
    p.add_argument("--stride", type=int, default=1, help="sliding-window stride, 1..context (default: 1, the paper's)")
    p.add_argument("--segment", type=int, default=None, help="carried-state segment length (default: the context)")
    p.add_argument(
        "--max-tokens", type=int, default=None, help="score only the first N tokens of the split (default: all)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="windows per forward pass (default: 64)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument(
        "--by-position",
        action="store_true",
        help="also the loss and the fast weights' norm against the position (carried state; the split "
        "cut into streams of --stream-length tokens, read side by side)",
    )
    p.add_argument("--stream-length", type=int, default=8192, help="stream length of --by-position (default: 8192)")
    p.add_argument("--plot", type=Path, default=None, help="with --by-position: write its plot to this PNG")
    p.add_argument(
        "--reset-documents",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="carried-state: empty the state where a document starts (a ' = Title = ' line, as WikiText "
        "marks its articles) (default: as the model was trained, TrainConfig.reset_documents)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def check_args(args: argparse.Namespace) -> None:
    """The options that need no model or data, checked before any work (a ``ValueError`` naming the option)."""
    for name, least in (("stride", 1), ("segment", 1), ("max_tokens", 2), ("batch_size", 1), ("stream_length", 2)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise ValueError(f"--{name.replace('_', '-')} must be >= {least}, got {value}")
    if args.val_fraction is not None and not 0 < args.val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    check_device(args.device)
    if args.plot is not None and not args.by_position:
        raise ValueError("--plot draws the --by-position profile; add --by-position")
    for name in ("json", "plot"):
        if getattr(args, name) is not None:
            check_output_path(getattr(args, name), f"--{name}")


def main(args: argparse.Namespace) -> int:
    check_args(args)
    model, cfg = load_model(args.checkpoint, args.device)
    recorded = read_config(args.checkpoint).get("data") or {}
    val_fraction = args.val_fraction or recorded.get("val_fraction", 0.1)
    if args.data is None and "path" not in recorded:
        raise ValueError(f"--data: {args.checkpoint} does not record the corpus it was trained on; pass --data")
    data = resolve(args.data) if args.data is not None else Path(recorded["path"])
    if args.by_position and "sliding-window" == args.protocol:
        raise ValueError("--by-position scores the carried-state protocol; use --protocol carried-state or both")
    corpus = load_corpus(
        data,
        tokenizer_file=args.checkpoint / TOKENIZER_FILE,
        val_fraction=val_fraction,
        on_tokenize=lambda m: print(m, flush=True),
    )
    if args.split not in corpus.splits:
        raise ValueError(f"--data {data} has no {args.split!r} split; it has {sorted(corpus.splits)}")
    protocols = PROTOCOLS if args.protocol == "both" else (args.protocol,)
    reset = args.reset_documents
    marked = corpus.documents.get(args.split, np.zeros(0, dtype=np.int64))  # [n_docs] offsets
    if reset is None:
        reset = bool((read_config(args.checkpoint).get("train") or {}).get("reset_documents", False))
    elif reset and not len(marked):
        raise ValueError(
            f"--reset-documents: the {args.split} split of {data} marks no documents (lines ' = Title = ')"
        )
    documents = marked if reset else None
    results = evaluate(
        model,
        corpus.splits[args.split],
        cfg.context,
        protocols=protocols,
        stride=args.stride,
        segment=args.segment,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        progress=not args.no_progress,
        documents=documents,
    )
    for r in results:  # finite weights can still overflow: never print a NaN score, never exit 0 with one
        if not math.isfinite(r.nats):
            raise ValueError(
                f"the {r.protocol} loss of {args.checkpoint} on the {args.split} split of {data} is "
                f"{r.nats} (not finite): the model's outputs overflow; no score to report"
            )

    unit = "char" if corpus.tokenizer.kind == "char" else "token"
    print(
        f"{args.checkpoint} ({cfg.attention}, {model.num_params():,} parameters) on the {args.split} split of {data}"
        + (f"; carried state emptied at its {len(documents):,} document starts" if documents is not None else "")
    )
    print(f"| protocol | context | {unit}s scored | nats/{unit} | bits/{unit} | perplexity |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.protocol} | {r.context} | {r.tokens} | {r.nats:.4f} | {r.bits:.4f} | {r.perplexity:.2f} |")
    if "carried-state" in protocols and not any(r.protocol == "carried-state" for r in results):
        print("| carried-state | - | - | n/a: softmax attention's state (its KV cache) grows with the text | | |")
    profile = None
    if args.by_position:
        profile = position_profile(
            model,
            corpus.splits[args.split],
            args.segment or cfg.context,
            args.stream_length,
            progress=not args.no_progress,
        )
        print(
            f"\nby position (carried state, {profile.streams} stream(s) of {args.stream_length} {unit}s side by side):"
        )
        print("\n".join(format_position_table(profile, unit)))
        if args.plot is not None:
            plot_position_profile(
                profile, args.plot, cfg.context, f"{cfg.attention}: loss against position ({args.split})"
            )
            print(f"wrote {args.plot}")
    if args.json is not None:
        doc = {
            "checkpoint": str(args.checkpoint),
            "attention": cfg.attention,
            "data": str(data),
            "split": args.split,
            "stride": args.stride,
            "max_tokens": args.max_tokens,
            "reset_documents": reset,
            "results": [r.to_dict() for r in results],
        }
        if profile is not None:
            doc["by_position"] = dataclasses.asdict(profile)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0
