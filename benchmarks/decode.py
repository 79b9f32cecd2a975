"""Per-token decode latency and memory against context length: fast weights vs a KV cache.

For a delta-rule language model and a softmax one of the same size (same widths, layers, heads;
no position embeddings, so both can read past any training context), and each context length
T (default 1k, 4k, 16k, 64k): fill the state with T random tokens by prefill in chunks (the
chunkwise parallel form / SDPA against the growing cache; T is never decoded token by token),
then decode ``--decode`` more tokens with ``step`` (the first ``--warmup`` untimed) and report

- the median latency of one decode step (ms),
- the state's size (the fast weights, or the KV cache) in MB,
- the process's resident memory (RSS, MB) after decoding,
- the prefill time (s).

Each (model, T) runs in a fresh process so that one's memory does not show in another's RSS.
The delta-rule model's figures should stay flat while the softmax model's grow with T.
Prints a markdown table, writes it as JSON, and plots latency and memory to a PNG::

    python benchmarks/decode.py      # ~13 min on a shared 2-core CPU (10 of them: the quadratic softmax 64k prefill)
    python benchmarks/decode.py --lengths 1024 4096 --decode 16 --png /tmp/decode.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """Resident set size of this process in MB (Linux ``/proc``; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def measure(attention: str, length: int, args: Dict) -> Dict:
    """Build the model, prefill ``length`` tokens in chunks, time ``args['decode']`` decode steps."""
    import torch

    from fastweights.models import LanguageModel, LMConfig

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    cfg = LMConfig(
        vocab_size=args["vocab"],
        d_model=args["d_model"],
        n_layers=args["layers"],
        n_heads=args["heads"],
        d_ff=4 * args["d_model"],
        pos_emb="none",
        context=args["chunk"],
        attention=attention,
    )
    model = LanguageModel(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (1, length + args["decode"]))  # [1, T + decode]
    state = None
    with torch.inference_mode():
        t0 = time.perf_counter()
        for a in range(0, length, args["chunk"]):
            _, _, state = model(tokens[:, a : min(a + args["chunk"], length)], state=state, return_logits=False)
        prefill_s = time.perf_counter() - t0
        times = []
        for i, t in enumerate(range(length, length + args["decode"])):
            t0 = time.perf_counter()
            _, state = model.step(tokens[:, t], state)
            if i >= args["warmup"]:
                times.append(time.perf_counter() - t0)
    state_mb = sum(x.numel() * x.element_size() for layer in state["layers"] for x in layer.values()) / 2**20
    return {
        "attention": attention,
        "context": length,
        "ms_per_token": 1e3 * statistics.median(times),
        "state_mb": state_mb,
        "rss_mb": rss_mb(),
        "prefill_s": prefill_s,
        "params": model.num_params(),
    }


def plot(rows: List[Dict], path: Path) -> None:
    """Latency and memory against context length, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, attention in enumerate(dict.fromkeys(r["attention"] for r in rows)):
        mine = [r for r in rows if r["attention"] == attention]
        x, color = [r["context"] for r in mine], f"C{i}"
        axes[0].plot(x, [r["ms_per_token"] for r in mine], "o-", color=color, label=attention)
        axes[1].plot(x, [r["rss_mb"] for r in mine], "o-", color=color, label=f"{attention}: process RSS")
        axes[1].plot(x, [r["state_mb"] for r in mine], "s--", color=color, label=f"{attention}: state")
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="context length (tokens already read)",
        ylabel="ms per decoded token",
        title="decode latency",
    )
    axes[1].set(
        xscale="log",
        yscale="log",
        xlabel="context length (tokens already read)",
        ylabel="MB",
        title="memory while decoding",
    )
    for ax in axes:
        ticks = sorted({r["context"] for r in rows})
        ax.set_xticks(ticks, [f"{t // 1024}k" if t >= 1024 else str(t) for t in ticks])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attentions", nargs="+", default=["delta", "softmax"], help="variants (default: delta softmax)")
    p.add_argument("--lengths", nargs="+", type=int, default=[1024, 4096, 16384, 65536], help="context lengths")
    p.add_argument("--decode", type=int, default=40, help="decode steps after the prefill (default 40)")
    p.add_argument("--warmup", type=int, default=8, help="of which untimed warm-up steps (default 8)")
    p.add_argument("--chunk", type=int, default=512, help="prefill chunk length (default 512)")
    p.add_argument("--d-model", type=int, default=128, help="width (default 128, as shakespeare-char)")
    p.add_argument("--layers", type=int, default=4, help="layers (default 4)")
    p.add_argument("--heads", type=int, default=4, help="heads (default 4)")
    p.add_argument("--vocab", type=int, default=256, help="vocabulary size (default 256)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run (default 1)")
    p.add_argument("--json", type=Path, default=None, help="write the rows here (default: next to the PNG)")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "decode.png", help="plot path (default docs/decode.png)")
    args = p.parse_args()
    if not 0 <= args.warmup < args.decode:
        p.error(f"--warmup must be in [0, --decode={args.decode}), got {args.warmup}")
    config = {
        "decode": args.decode,
        "warmup": args.warmup,
        "chunk": args.chunk,
        "d_model": args.d_model,
        "layers": args.layers,
        "heads": args.heads,
        "vocab": args.vocab,
        "threads": args.threads,
    }

    rows = []
    print("| attention | context | ms / token | state MB | RSS MB | prefill s |")
    print("|---|---:|---:|---:|---:|---:|")
    for attention in args.attentions:
        for length in args.lengths:
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:  # fresh process: clean RSS
                r = pool.submit(measure, attention, length, config).result()
            rows.append(r)
            print(
                f"| {attention} | {length} | {r['ms_per_token']:.2f} | {r['state_mb']:.2f} | {r['rss_mb']:.0f} "
                f"| {r['prefill_s']:.1f} |",
                flush=True,
            )
    params = ", ".join(f"{a} {r['params']:,}" for a, r in {r["attention"]: r for r in rows}.items())
    print(
        f"\nparameters: {params}; d_model {args.d_model}, {args.layers} layers, {args.heads} heads; "
        f"{args.threads} thread(s); median of {args.decode - args.warmup} decode steps"
    )
    plot(rows, args.png)
    json_path = args.json or args.png.with_suffix(".json")
    json_path.write_text(json.dumps({"config": config, "rows": rows}, indent=1))
    print(f"plot: {args.png}\nrows: {json_path}")


if __name__ == "__main__":
    main()
