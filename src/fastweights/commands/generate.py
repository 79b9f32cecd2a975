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
from pathlib import Path
from typing import Any, Dict

import torch
from torch import Tensor

from ..arguments import check_output_path
from ..errors import UsageError
from ..generate import generate
from ..models import LanguageModel, load_model
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


def _leaves(node: Any, name: str = "") -> Dict[str, Any]:
    """The leaves of a nested state (dicts and lists) by dotted name: ``{"layers.0.S": tensor, "pos": 5}``."""
    if not isinstance(node, (dict, list)):
        return {name: node}
    items = node.items() if isinstance(node, dict) else enumerate(node)
    return {leaf: x for key, child in items for leaf, x in _leaves(child, f"{name}.{key}" if name else str(key)).items()}


def check_loaded_state(state: Any, model: LanguageModel, path: Path) -> None:
    """``state`` (read from ``--load-state path``) must be one of ``model``'s: the entries of its empty
    state, each tensor of the same widths (the batch and a growing cache dimension aside)."""
    got, want = _leaves(state), _leaves(model.init_state(1))
    if set(got) != set(want):
        raise UsageError(f"--load-state {path} is not a state of this model ({model.cfg.attention}): it has "
                         f"{sorted(set(got) - set(want))[:4]}, the model's state has {sorted(set(want) - set(got))[:4]}")
    for name, empty in want.items():
        loaded = got[name]
        if isinstance(empty, Tensor) and not (
                isinstance(loaded, Tensor) and loaded.dim() == empty.dim()
                and all(w in (0, g) for g, w in zip(loaded.shape[1:], empty.shape[1:]))):
            shape = list(loaded.shape) if isinstance(loaded, Tensor) else type(loaded).__name__
            raise UsageError(f"--load-state {path} is not a state of this model ({model.cfg.attention}): its {name} "
                             f"is {shape}, the model's [B, {', '.join(map(str, empty.shape[1:]))}]")


def main(args: argparse.Namespace) -> int:
    if args.save_state is not None:
        check_output_path(args.save_state, "--save-state")
    model, _ = load_model(args.checkpoint, args.device)
    tokenizer = load_tokenizer(args.checkpoint)
    prompt = tokenizer.encode(args.prompt)
    state = load_state(args.load_state, args.device) if args.load_state is not None else None
    if state is not None:
        check_loaded_state(state, model, args.load_state)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    new, state = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                          generator=generator, state=state)
    print(args.prompt + tokenizer.decode(new))
    if args.save_state is not None:
        save_state(args.save_state, state)
    return 0
