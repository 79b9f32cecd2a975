"""Train a language model on a text corpus (one process, or many under torchrun).

Each preset names the corpus it is made for, read when --data is not given: tiny Shakespeare
(shipped with fastweights) for shakespeare-char*, WikiText-2 / -103 for wt2-small / wt103-*
(downloaded once with `fastweights data wikitext-2`).

Examples:
  fastweights train --preset shakespeare-char --attention dpfp-2+delta --out runs/shakespeare-dpfp
  fastweights train --preset shakespeare-char --attention dpfp-2+delta --out runs/shakespeare-dpfp --resume
      (continue after a stop, Ctrl-C or crash)
  fastweights train --preset shakespeare-char-carried --attention linear+gated_delta --out runs/shakespeare-carried
      (carried fast weights: each step starts from the state the last one ended with, see carry_state;
      a rule that can forget, such as the gated delta rule, trains best this way)
  fastweights train --preset wt2-small --attention linear+gated_delta --set reset_documents=true --out runs/wt2-gated
      (carried, and the state emptied where a WikiText article starts, at its ' = Title = ' line)
  fastweights train --preset shakespeare-char --attention delta --data my.txt --out runs/mine
  torchrun --nproc_per_node 4 -m fastweights.cli train --preset wt103-small --attention delta --out runs/wt103
      (the same command on 1 process, 1 GPU or many machines; --data DIR: a directory with
      wiki.{train,valid,test}.tokens)
  torchrun --nproc_per_node 4 -m fastweights.cli train --preset wt103-medium --attention delta \
      --set data_parallel=fsdp --out runs/wt103-fsdp
      (FSDP2: parameters, gradients and optimizer state sharded over the processes instead of
      replicated (DDP, the default); the same numbers, the same checkpoint files)

The run directory gets config.json, tokenizer.json, model.safetensors (what `fastweights eval` and
`generate` read, and transformers' AutoModelForCausalLM after `import fastweights.hf`),
metrics.csv, loss.png (at the end), checkpoints/, and tensorboard/ when TensorBoard is installed
(pip install "fastweights[tensorboard]"). --resume continues a run; it may raise the number of
steps (--set steps=N). --set compile=true trains through torch.compile.

Everything (settings, data, tokenizer) is checked before --out is touched; one run at a time may
write a --out (a second one is refused at once). A NaN or infinite loss or gradient norm stops the
run (--set max_bad_steps=N first skips up to N such steps in a row, with a warning each) and no
checkpoint with non-finite weights is ever written; --resume verifies the newest checkpoint and
falls back to the one before it with a warning. Exit status: 0 done; 2 an error (a bad setting or
file, a locked --out, a diverged run, a full disk), reported in one line.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import sys
from contextlib import contextmanager
from typing import Iterator, Optional

import torch.distributed as dist

from ...data.corpora import SOURCES, resolve
from ...data.text import load_corpus
from ...layers.spec import describe_attentions
from ...models import get_run_preset, list_presets
from ...models.config import LMConfig, TrainConfig, parse_overrides
from ...train import main_first, setup_distributed, train
from ..threads import describe_threads


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", required=True, choices=list_presets(), help="named configuration: %(choices)s")
    p.add_argument(
        "--attention",
        default="softmax",
        metavar="VARIANT",
        help="attention variant (default: softmax): "
        + describe_attentions()
        + " (<nu>, <m>: positive integers, e.g. dpfp-2+delta, favor-64)",
    )
    p.add_argument(
        "--data",
        metavar="PATH|NAME",
        help="a text file (split 90/10 into train/val), a directory with wiki.{train,valid,test}.tokens, or a "
        f"corpus name ({', '.join(SOURCES)}; default: the preset's)",
    )
    p.add_argument("--out", required=True, metavar="DIR", help="run directory (checkpoints, metrics, model)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model or training setting, read as its type, e.g. --set steps=500 --set lr=3e-4 "
        "--set tie_embeddings=false --set max_bad_steps=3 (repeatable)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument(
        "--tokenizer",
        default="auto",
        choices=["auto", "char", "word", "bpe"],
        help="tokenization (default auto: word for a directory, char for a file)",
    )
    p.add_argument("--tokenizer-file", metavar="JSON", help="use this tokenizer.json instead of building a vocabulary")
    p.add_argument("--bpe-vocab-size", type=int, default=4096, help="vocabulary of a trained BPE (default: 4096)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share of a single file (default: 0.1)")
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="token-id cache (default: $FASTWEIGHTS_CACHE or ~/.cache/fastweights/corpora)",
    )
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def hint(option: str) -> Optional[str]:
    """``--set FIELD=VALUE`` for an unknown option that names a model or training setting or has one
    as a word, e.g. ``--lr`` -> ``--set lr=VALUE``, ``--max-steps`` -> ``--set steps=VALUE``; else None."""
    name = option.lstrip("-").replace("-", "_")
    fields = [f.name for cls in (LMConfig, TrainConfig) for f in dataclasses.fields(cls)]
    found = [name] if name in fields else [f for f in fields if f in name.split("_")]
    return f"--set {found[0]}=VALUE" if found else None


@contextmanager
def _warnings_to_stderr() -> Iterator[None]:
    """Print the trainer's warnings (skipped steps, checkpoint fall-backs) as ``fastweights train: warning: ...``."""
    logger = logging.getLogger("fastweights")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("fastweights train: warning: %(message)s"))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def main(args: argparse.Namespace) -> int:
    if "vocab_size" in parse_overrides(args.set)["model"]:  # types checked before the data is read
        raise ValueError("vocab_size comes from the data's tokenizer and cannot be --set")
    data = resolve(args.data if args.data is not None else get_run_preset(args.preset, args.attention).data)
    info = setup_distributed(args.device)
    try:
        corpus = main_first(
            info,
            lambda: load_corpus(
                data,
                args.tokenizer,
                tokenizer_file=args.tokenizer_file,
                bpe_vocab_size=args.bpe_vocab_size,
                val_fraction=args.val_fraction,
                cache_dir=args.cache_dir,
                on_tokenize=lambda m: print(m, flush=True),
            ),
        )
        preset = get_run_preset(args.preset, args.attention, vocab_size=corpus.tokenizer.vocab_size).with_overrides(
            args.set
        )
        if info.is_main:
            tokens = corpus.info["tokens"]
            print(
                f"data: {data} ({corpus.tokenizer.kind}, vocabulary {corpus.tokenizer.vocab_size}, "
                f"train {tokens['train']:,} / val {tokens['val']:,} tokens); {info.world} process(es) on {info.device}"
                + (f", {describe_threads()} (--threads N to change)" if info.device.type == "cpu" else "")
            )
            print(f"model: {preset.model}")
            print(f"train: {preset.train}")
        with _warnings_to_stderr():
            result = train(
                preset.model,
                preset.train,
                corpus,
                args.out,
                resume=args.resume,
                device=args.device,
                progress=not args.no_progress,
            )
        if info.is_main and result:
            print(
                f"step {result['step']}: train loss {result['train_loss']:.4f}, val loss {result['val_loss']:.4f}, "
                f"{result['tokens_per_s']:,.0f} tokens/s -> {args.out}"
            )
        if dist.is_initialized():
            dist.barrier()  # every process done with its collectives before the group is torn down
    finally:
        if dist.is_initialized():
            gc.collect()  # the DDP/FSDP wrappers' reference cycles hold the group: free them first
            dist.destroy_process_group()
    return 0
