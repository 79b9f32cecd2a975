"""Generate text from a trained language model: one parallel prefill, then one token per step.

The prompt is read by one parallel forward that hands its final state to decoding; each new token
is one `step`: fast-weight models update a fixed-size matrix per layer, the softmax baseline
appends to its KV cache. The text is printed as it is generated. --stop ends the text at a token
(e.g. a newline); --save-state writes the state after the prompt and the generated text
(safetensors) and --load-state continues from such a file, so a stream can be paused and resumed.

Examples:
  fastweights generate --checkpoint runs/shakespeare-delta --prompt "ROMEO:" --max-new-tokens 300 --top-p 0.9
  fastweights generate --checkpoint runs/shakespeare-delta --prompt "ROMEO:" --temperature 0 --stop $'\\n'
  fastweights generate --checkpoint runs/shakespeare-delta --prompt "ROMEO:" --save-state stream.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, TextIO

import torch
from torch import Tensor

from ...data.text import Tokenizer, load_tokenizer
from ...files.state import load_state, save_state
from ...models import LanguageModel, load_model
from ...models.generate import check_sampling, generate
from ..arguments import check_device, check_output_path
from ..errors import UsageError


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, type=Path, help="model directory written by `fastweights train`")
    p.add_argument("--prompt", required=True, help="text to continue (at least one token)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, default=0.8, help="softmax temperature; 0 = greedy (default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (default: all)")
    p.add_argument(
        "--top-p",
        type=float,
        default=None,
        help="sample among the most likely tokens holding probability p, in (0, 1] (default: all)",
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop after generating this token (text of exactly one token, e.g. a newline); repeatable",
    )
    p.add_argument("--seed", type=int, default=1337, help="sampler seed (default: 1337)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--load-state", type=Path, default=None, help="continue from a state saved by --save-state")
    p.add_argument("--save-state", type=Path, default=None, help="write the final state here (safetensors)")


class TextStream:
    """Prints the text of tokens as they arrive, after a prompt.

    The continuation is the decoded prompt-plus-tokens minus the decoded prompt, so word-level text
    gets its separating space (``"the"`` + ``"come"`` -> ``"the come"``); text ending in an
    incomplete character (a byte-level BPE token cut inside a UTF-8 sequence) waits for the next token.
    """

    def __init__(self, tokenizer: Tokenizer, prompt_ids: List[int], out: TextIO) -> None:
        self.tokenizer, self.ids, self.out = tokenizer, list(prompt_ids), out
        self.shown = len(tokenizer.decode(self.ids))

    def __call__(self, row: int, token: int) -> None:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):
            self.out.write(text[self.shown :])
            self.out.flush()
            self.shown = len(text)


def stop_ids(tokenizer: Tokenizer, texts: List[str]) -> List[int]:
    """The token id of each ``--stop`` text (a ``UsageError`` unless it is exactly one token)."""
    ids = []
    for text in texts:
        encoded = tokenizer.encode(text)
        if len(encoded) != 1:
            raise UsageError(f"--stop must be the text of one token, got {text!r} ({len(encoded)} tokens: {encoded})")
        ids.append(encoded[0])
    return ids


def _leaves(node: Any, name: str = "") -> Dict[str, Any]:
    """The leaves of a nested state (dicts and lists) by dotted name: ``{"layers.0.S": tensor, "pos": 5}``."""
    if not isinstance(node, (dict, list)):
        return {name: node}
    items = node.items() if isinstance(node, dict) else enumerate(node)
    return {
        leaf: x for key, child in items for leaf, x in _leaves(child, f"{name}.{key}" if name else str(key)).items()
    }


def check_loaded_state(state: Any, model: LanguageModel, path: Path) -> None:
    """``state`` (read from ``--load-state path``) must be one of ``model``'s: the entries of its empty
    state, each tensor of the same widths (the batch and a growing cache dimension aside)."""
    got, want = _leaves(state), _leaves(model.init_state(1))
    if set(got) != set(want):
        raise UsageError(
            f"--load-state {path} is not a state of this model ({model.cfg.attention}): it has "
            f"{sorted(set(got) - set(want))[:4]}, the model's state has {sorted(set(want) - set(got))[:4]}"
        )
    for name, empty in want.items():
        loaded = got[name]
        if isinstance(empty, Tensor) and not (
            isinstance(loaded, Tensor)
            and loaded.dim() == empty.dim()
            and all(w in (0, g) for g, w in zip(loaded.shape[1:], empty.shape[1:]))
        ):
            shape = list(loaded.shape) if isinstance(loaded, Tensor) else type(loaded).__name__
            raise UsageError(
                f"--load-state {path} is not a state of this model ({model.cfg.attention}): its {name} "
                f"is {shape}, the model's [B, {', '.join(map(str, empty.shape[1:]))}]"
            )


def check_args(args: argparse.Namespace) -> None:
    """The options that need no model, checked before anything is loaded or printed (a ``ValueError``
    naming the option)."""
    if args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    if not -(2**63) <= args.seed < 2**64:
        raise UsageError(f"--seed must be in [-2**63, 2**64) (a 64-bit seed), got {args.seed}")
    check_sampling(args.temperature, args.top_k, args.top_p)
    check_device(args.device)
    if args.save_state is not None:
        check_output_path(args.save_state, "--save-state")


def main(args: argparse.Namespace) -> int:
    check_args(args)
    model, _ = load_model(args.checkpoint, args.device)
    tokenizer = load_tokenizer(args.checkpoint)
    prompt = tokenizer.encode(args.prompt)
    if not prompt:
        raise UsageError(f"--prompt must hold at least one token, got {args.prompt!r}")
    stop = stop_ids(tokenizer, args.stop)
    state = load_state(args.load_state, args.device) if args.load_state is not None else None
    if state is not None:
        check_loaded_state(state, model, args.load_state)
    generator = torch.Generator(args.device).manual_seed(args.seed)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    _, state = generate(
        model,
        prompt,
        args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        generator=generator,
        state=state,
        top_p=args.top_p,
        stop_tokens=stop,
        on_token=TextStream(tokenizer, prompt, sys.stdout),
    )
    print()
    if args.save_state is not None:
        save_state(args.save_state, state)
    return 0
