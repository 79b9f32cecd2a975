"""Generate text from a trained language model: one parallel prefill, then one token per step.

The prompt is read by one parallel forward that hands its final state to decoding; each new token
is one `step`: fast-weight models update a fixed-size matrix per layer, the softmax baseline
appends to its KV cache. --save-state writes the state after the prompt and the generated text
(safetensors) and --load-state continues from such a file, so a stream can be paused and resumed.

Example:
  fastweights generate --checkpoint runs/shakespeare-delta --prompt "ROMEO:" --max-new-tokens 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..generate import generate
from ..models import load_model
from ..state import load_state, save_state
from ..tasks.text import load_tokenizer


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="model directory written by `fastweights train`")
    p.add_argument("--prompt", required=True, help="text to continue (at least one token)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (default: all)")
    p.add_argument("--seed", type=int, default=1337, help="sampler seed (default: 1337)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--load-state", type=Path, default=None, help="continue from a state saved by --save-state")
    p.add_argument("--save-state", type=Path, default=None, help="write the final state here (safetensors)")


def main(args: argparse.Namespace) -> int:
    try:
        model, _ = load_model(args.checkpoint, args.device)
        tokenizer = load_tokenizer(args.checkpoint)
        prompt = tokenizer.encode(args.prompt)
        state = load_state(args.load_state, args.device) if args.load_state is not None else None
        generator = torch.Generator(args.device).manual_seed(args.seed)
        new, state = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                              generator=generator, state=state)
    except (FileNotFoundError, ValueError) as e:
        print(f"fastweights generate: error: {e}", file=sys.stderr)
        return 2
    print(args.prompt + tokenizer.decode(new))
    if args.save_state is not None:
        save_state(args.save_state, state)
    return 0
