"""LM training benchmark: tokens/s and peak memory of training steps of a decoder LM per attention variant.

For each attention variant (default: softmax, linear = sum rule, delta = delta rule) and context T,
a pre-LN decoder LM (``--d-model --layers --heads --d-ff``, vocabulary ``--vocab``; learned
positions for softmax, none for the fast weight programmers) is trained on random token ids for
``--warmup`` untimed steps, then ``--steps`` timed ones. A step is what the trainer does
(``fastweights.train``): forward under autocast (``--dtype auto``: bf16 on CUDA, float32 on CPU),
backward, gradient clipping and a fused (CUDA) AdamW step, on a batch of ``--tokens // T``
sequences of T tokens::

    tokens/s    batch x T over the median step time (CUDA steps end with torch.cuda.synchronize())
    peak MB     CUDA: torch.cuda.max_memory_allocated over the timed steps (weights, optimiser state,
                activations); CPU: the RSS high-water mark of the timed steps above the RSS before
                them (glibc told to return every freed block >= 64 KiB, so RSS tracks live memory)
    impl        the op backend the first layer ran (``--impl``, default auto; sdpa for softmax)
    loss        the loss of the last step (a non-finite loss is noted)
    warm-up s   the untimed steps, which include one-time kernel compilation and autotuning

A cell that raises (an out-of-memory error is noted as OOM) is reported in its row's note and the
run goes on. After the table, each variant's tokens/s relative to softmax at every context.
Results go to ``--json`` (default benchmarks/results/lm_<device>.json).

Examples:
  fastweights bench lm
  fastweights bench lm --attentions softmax delta linear+gated_delta --contexts 64 256 --steps 10
  fastweights bench lm --device cuda --contexts 512 4096 16384
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..cli.arguments import at_least, check_device, check_output_path
from ..layers.spec import AttentionSpec
from ..models import LanguageModel
from ..models.config import LMConfig, TrainConfig
from ..ops import list_backends
from ..train import autocast_context, autocast_dtype, make_optimizer
from .ops import peak_rss_mb, return_freed_memory

#: Defaults that depend on ``--device``: the GPU setting of our GPU issue, a small one for CPUs.
DEVICE_DEFAULTS: Dict[str, Dict[str, object]] = {
    "cuda": dict(contexts=[512, 4096, 16384], tokens=32768, d_model=512, layers=8, heads=8, d_ff=2048),
    "cpu": dict(contexts=[128, 512], tokens=4096, d_model=128, layers=2, heads=4, d_ff=512),
}
BASELINE = "softmax"  #: the variant the others' tokens/s are divided by


@dataclass
class LMBenchConfig:
    """What to measure (defaults: the CPU setting of :data:`DEVICE_DEFAULTS`)."""

    device: str = "cpu"
    attentions: List[str] = field(default_factory=lambda: ["softmax", "linear", "delta"])
    contexts: List[int] = field(default_factory=lambda: [128, 512])
    tokens: int = 4096
    d_model: int = 128
    layers: int = 2
    heads: int = 4
    d_ff: int = 512
    vocab: int = 256
    impl: str = "auto"
    steps: int = 5
    warmup: int = 2
    dtype: str = "auto"
    json: Optional[str] = None


def model_config(cfg: LMBenchConfig, attention: str, context: int) -> LMConfig:
    """The LM of one cell: learned positions for softmax (covering ``context``), none for FWPs."""
    return LMConfig(
        vocab_size=cfg.vocab,
        d_model=cfg.d_model,
        n_layers=cfg.layers,
        n_heads=cfg.heads,
        d_ff=cfg.d_ff,
        context=context,
        attention=attention,
        impl=cfg.impl,
        pos_emb="none" if AttentionSpec(attention).is_fast_weight else "learned",
    )


def op_impl(model: LanguageModel) -> str:
    """The backend the first layer's attention ran: its sequence op's ``last_impl`` (its one-token
    op's for a recurrent FWP, which steps through every token), or ``'sdpa'`` for softmax."""
    attn = model.blocks[0].attn
    if getattr(attn, "op", None) is None:
        return "sdpa"
    return str(attn.op.last_impl or attn.step_op.last_impl)


def measure_cell(cfg: LMBenchConfig, attention: str, context: int, batch: int) -> Dict[str, object]:
    """Train one model for ``cfg.warmup`` then ``cfg.steps`` steps; returns the measured row fields.

    Raises whatever the model raises (building it or training it)."""
    device = torch.device(cfg.device)
    train_cfg = TrainConfig(dtype=cfg.dtype)
    amp = autocast_dtype(train_cfg, device)
    torch.manual_seed(0)
    model = LanguageModel(model_config(cfg, attention, context)).to(device)
    optimizer = make_optimizer(model, train_cfg, device)
    data = torch.randint(cfg.vocab, (batch, context + 1), device=device)  # [B, T + 1]
    losses: List[Tensor] = []

    def step() -> float:
        """One training step; its wall time in seconds."""
        t0 = time.perf_counter()
        with autocast_context(device, amp):
            _, loss, _ = model(data[:, :-1], data[:, 1:], return_logits=False)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), train_cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        losses.append(loss.detach())
        return time.perf_counter() - t0

    model.train()
    warmup_s = sum(step() for _ in range(cfg.warmup))
    times: List[float] = []

    def timed() -> None:
        times.extend(step() for _ in range(cfg.steps))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        timed()
        peak_mb = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak_mb = peak_rss_mb(timed)
    step_s = statistics.median(times)
    return dict(
        tokens_per_s=batch * context / step_s,
        step_ms=step_s * 1e3,
        peak_mb=peak_mb,
        impl=op_impl(model),
        loss=float(losses[-1]),
        warmup_s=warmup_s,
    )


def bench_cell(cfg: LMBenchConfig, attention: str, context: int) -> Dict[str, object]:
    """One table row: :func:`measure_cell`, with a failure (OOM, exception, non-finite loss) in ``note``."""
    batch = max(1, cfg.tokens // context)
    row: Dict[str, object] = dict(attention=attention, context=context, batch=batch, note="")
    try:
        row.update(measure_cell(cfg, attention, context, batch))
        if not math.isfinite(row["loss"]):
            row["note"] = "non-finite loss"
    except torch.cuda.OutOfMemoryError:
        row["note"] = "OOM"
    except Exception as e:  # a failing cell is a result: report it and go on with the next
        traceback.print_exc(file=sys.stderr)
        first_line = (str(e).strip().splitlines() or [""])[0]
        row["note"] = f"{type(e).__name__}: {first_line}"[:300]
    finally:
        gc.collect()
        if cfg.device == "cuda":
            torch.cuda.empty_cache()
    return row


def ratios(rows: List[Dict[str, object]]) -> Dict[int, Dict[str, float]]:
    """``{context: {variant: tokens/s over softmax's}}`` for the cells where both ran."""
    speed = {(r["attention"], r["context"]): r["tokens_per_s"] for r in rows if "tokens_per_s" in r}
    out: Dict[int, Dict[str, float]] = {}
    for (attention, context), tps in speed.items():
        base = speed.get((BASELINE, context))
        if attention != BASELINE and base:
            out.setdefault(context, {})[attention] = tps / base
    return out


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's as the platform reports it."""
    return torch.cuda.get_device_name() if device == "cuda" else (platform.processor() or platform.machine())


def run(cfg: LMBenchConfig, log: Callable[[str], None] = print) -> Dict:
    """Run every (attention, context) cell, logging table rows as they finish; returns
    ``{"meta": ..., "rows": [...], "ratios": {...}}`` (also written to ``cfg.json`` after each cell)."""
    amp = autocast_dtype(TrainConfig(dtype=cfg.dtype), torch.device(cfg.device))
    meta = dict(
        device=device_name(cfg.device),
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        autocast=str(amp).replace("torch.", "") if amp else None,
        rss_tracks_live_memory=cfg.device == "cpu" and return_freed_memory(),
        config=asdict(cfg),
    )
    log(
        f"{meta['device']}, torch {meta['torch']}, {meta['threads']} threads, autocast {meta['autocast'] or 'off'}; "
        f"d_model {cfg.d_model}, {cfg.layers} layers, "
        f"{cfg.heads} heads, d_ff {cfg.d_ff}, vocab {cfg.vocab}, {cfg.tokens} tokens per step, "
        f"{cfg.warmup} warm-up + {cfg.steps} timed steps\n\n{HEADER}\n{SEPARATOR}"
    )
    rows: List[Dict[str, object]] = []
    result = dict(meta=meta, rows=rows, ratios={})
    for context in cfg.contexts:
        for attention in cfg.attentions:
            rows.append(bench_cell(cfg, attention, context))
            log(format_row(rows[-1]))
            result["ratios"] = {str(c): r for c, r in ratios(rows).items()}
            if cfg.json:  # after every cell, so that a run killed by a time limit keeps what it measured
                Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
                Path(cfg.json).write_text(json.dumps(result, indent=1))
    return result


HEADER = "| attention | context | batch | tokens/s | peak MB | impl | loss | warm-up s | note |"
SEPARATOR = "|---" * (HEADER.count("|") - 1) + "|"


def format_row(r: Dict[str, object]) -> str:
    """One markdown table row (measured fields empty for a failed cell)."""
    head = f"| {r['attention']} | {r['context']} | {r['batch']} |"
    if "tokens_per_s" not in r:
        return f"{head} | | | | | {r['note']} |"
    peak = "n/a" if math.isnan(r["peak_mb"]) else f"{r['peak_mb']:.0f}"
    return (
        f"{head} {r['tokens_per_s']:.0f} | {peak} | {r['impl']} | {r['loss']:.3f} | {r['warmup_s']:.1f} | {r['note']} |"
    )


def format_ratios(result: Dict) -> str:
    """``context T: linear / softmax = 1.12x, ...`` lines (empty without a softmax row)."""
    return "\n".join(
        f"context {c}: " + ", ".join(f"{a} / {BASELINE} = {x:.2f}x" for a, x in r.items())
        for c, r in result["ratios"].items()
    )


def configure(p: argparse.ArgumentParser) -> None:
    """Command-line options of ``fastweights bench lm`` (``None`` defaults depend on ``--device``)."""
    d, gpu, cpu = LMBenchConfig(), DEVICE_DEFAULTS["cuda"], DEVICE_DEFAULTS["cpu"]
    positive = at_least(1)

    def per_device(key: str) -> str:
        show = (lambda v: " ".join(map(str, v))) if isinstance(gpu[key], list) else str
        return f"(default: cuda {show(gpu[key])}, cpu {show(cpu[key])})"

    p.add_argument("--device", choices=["cpu", "cuda"], default=d.device, help="where to train (default: cpu)")
    p.add_argument(
        "--attentions",
        nargs="+",
        default=d.attentions,
        metavar="ATTENTION",
        help=f"attention variants, see fastweights.layers.spec.list_attentions (default: {' '.join(d.attentions)})",
    )
    p.add_argument("--contexts", nargs="+", type=positive, help="contexts T " + per_device("contexts"))
    p.add_argument("--tokens", type=positive, help="tokens per step; batch = tokens // T " + per_device("tokens"))
    p.add_argument("--d-model", type=positive, help="model width " + per_device("d_model"))
    p.add_argument("--layers", type=positive, help="blocks " + per_device("layers"))
    p.add_argument("--heads", type=positive, help="attention heads " + per_device("heads"))
    p.add_argument("--d-ff", type=positive, help="feed-forward width " + per_device("d_ff"))
    p.add_argument(
        "--vocab", type=positive, default=d.vocab, help="vocabulary of the random token ids (default: %(default)s)"
    )
    p.add_argument("--impl", default=d.impl, help="op backend of the FWP layers, LMConfig.impl (default: auto)")
    p.add_argument(
        "--steps", type=positive, default=d.steps, help="timed steps; the median is kept (default: %(default)s)"
    )
    p.add_argument(
        "--warmup",
        type=at_least(0),
        default=d.warmup,
        help="untimed steps first, once per cell: compilation, autotuning (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16"],
        default=d.dtype,
        help="autocast dtype as in training; auto: bf16 on CUDA, float32 on CPU (default: auto)",
    )
    p.add_argument(
        "--json", help="where to write the results; '' for nowhere (default: benchmarks/results/lm_<device>.json)"
    )


def check_config(cfg: LMBenchConfig) -> None:
    """A ``ValueError`` naming the option, before any work, for what is wrong whatever the cell: an
    unknown attention or impl, a width the heads do not divide, a ``--json`` that cannot be
    written. (An impl that one variant's rule lacks, such as ``parallel`` for delta, is that
    variant's failing row.)"""
    check_device(cfg.device)
    for attention in cfg.attentions:
        try:
            AttentionSpec(attention)
        except ValueError as e:
            raise ValueError(f"--attentions {attention}: {e}") from None
    impls = sorted({b.name for b in list_backends(available=False)})
    if cfg.impl != "auto" and cfg.impl not in impls:
        raise ValueError(f"--impl must be 'auto' or one of {impls}, got {cfg.impl!r}")
    if cfg.d_model % cfg.heads:
        raise ValueError(f"--d-model ({cfg.d_model}) must be divisible by --heads ({cfg.heads})")
    if cfg.json:
        check_output_path(cfg.json, "--json")


def main(args: argparse.Namespace) -> int:
    """Run :func:`run` from parsed arguments (checked by :func:`check_config`); print the table and
    the ratios to softmax."""
    given = {k: getattr(args, k) for k in DEVICE_DEFAULTS[args.device]}
    sized = {k: DEVICE_DEFAULTS[args.device][k] if v is None else v for k, v in given.items()}
    cfg = LMBenchConfig(
        device=args.device,
        attentions=args.attentions,
        vocab=args.vocab,
        impl=args.impl,
        steps=args.steps,
        warmup=args.warmup,
        dtype=args.dtype,
        json=f"benchmarks/results/lm_{args.device}.json" if args.json is None else args.json,
        **sized,
    )
    check_config(cfg)
    result = run(cfg, log=print)
    if result["ratios"]:
        print(f"\ntokens/s relative to {BASELINE}:\n{format_ratios(result)}")
    if cfg.json:
        print(f"\nwrote {cfg.json}")
    return 0
