"""The model directory: what training writes and evaluation/generation read.

    <dir>/config.json        {"format": "fastweights-lm", "version": 1, "model": LMConfig dict,
                              "tokenizer": {"kind": ..., "vocab_size": ...}, "data": {...}, "train": {...}}
    <dir>/model.safetensors  the weights (tied tensors stored once)
    <dir>/tokenizer.json     the tokenizer (see :func:`fastweights.tasks.text.load_tokenizer`)

Nothing is unpickled: weights are safetensors, the rest JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import safetensors.torch
import torch

from ..atomic import atomic_write, atomic_write_text
from .config import LMConfig
from .lm import LanguageModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "fastweights-lm"


def write_config(directory: Union[str, Path], cfg: LMConfig, **extra: Any) -> None:
    """Atomically write ``config.json`` with the model config and ``extra`` sections (tokenizer, data, train).

    ``model_type`` lets ``transformers.AutoModelForCausalLM.from_pretrained`` load the directory
    (after ``import fastweights.hf``)."""
    doc: Dict[str, Any] = {"format": FORMAT, "version": 1, "model_type": "fastweights", "model": cfg.to_dict(), **extra}
    atomic_write_text(Path(directory) / CONFIG_FILE, json.dumps(doc, indent=2) + "\n")


def read_config(directory: Union[str, Path]) -> Dict[str, Any]:
    """The parsed ``config.json`` of a model directory (clear errors when missing or not ours)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {CONFIG_FILE} in {directory}: not a fastweights model directory")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read {path}: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "model" not in doc:
        raise ValueError(f"{path} is not a fastweights LM config (expected format {FORMAT!r})")
    return doc


def save_weights(model: torch.nn.Module, path: Union[str, Path]) -> None:
    """Atomically write the model's weights as safetensors (shared/tied tensors once)."""
    atomic_write(path, lambda tmp: safetensors.torch.save_model(model, tmp))


def load_weights(model: torch.nn.Module, path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> None:
    """Load safetensors weights into ``model`` (strict: every tensor must match)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    missing, unexpected = safetensors.torch.load_model(model, str(path), strict=False, device=str(device))
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")


def load_model(directory: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Tuple[LanguageModel, LMConfig]:
    """Rebuild the model of a model directory from its ``config.json`` and ``model.safetensors``.

    Returns ``(model, cfg)`` with the model on ``device`` in eval mode.
    """
    cfg = LMConfig.from_dict(read_config(directory)["model"])
    model = LanguageModel(cfg)
    load_weights(model, Path(directory) / WEIGHTS_FILE, device)
    return model.to(device).eval(), cfg
