"""Tiny language models and model directories for the evaluation, generation and state tests."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import torch

from fastweights.data.text import CharTokenizer, Tokenizer, save_tokenizer
from fastweights.models import LanguageModel, LMConfig, list_attentions, save_weights, write_config

#: every attention variant of list_attentions(), with its parameter filled in
VARIANTS: List[str] = [a.replace("<nu>", "2").replace("<m>", "8").replace("<n>", "2") for a in list_attentions()]

TEXT = "".join(
    f"{w} the {v} of line {i}.\n"
    for i, (w, v) in enumerate(
        zip(["To be", "Or not", "ROMEO:", "JULIET:"] * 20, ["end", "tale", "heart", "night", "sea"] * 16)
    )
)


def tiny_model(
    attention: str, vocab_size: int = 23, context: int = 16, pos_emb: str = "auto", seed: int = 0
) -> LanguageModel:
    """A 2-layer width-16 model in eval mode; ``pos_emb='auto'``: learned for softmax, none otherwise."""
    if pos_emb == "auto":
        pos_emb = "learned" if attention == "softmax" else "none"
    torch.manual_seed(seed)
    cfg = LMConfig(
        vocab_size=vocab_size,
        d_model=16,
        n_layers=2,
        n_heads=2,
        d_ff=32,
        context=context,
        attention=attention,
        pos_emb=pos_emb,
        chunk_size=4,
    )
    model = LanguageModel(cfg).eval()
    with torch.no_grad():  # larger weights than the init so that logits differ visibly between tokens
        for p in model.parameters():
            p.mul_(4.0)
    return model


def write_model_dir(directory: Path, attention: str, tokenizer: Optional[Tokenizer] = None) -> Tokenizer:
    """A model directory as `fastweights train` writes it: config.json, model.safetensors, tokenizer.json
    (default tokenizer: the characters of :data:`TEXT`)."""
    tokenizer = tokenizer or CharTokenizer.from_text(TEXT)
    model = tiny_model(attention, vocab_size=tokenizer.vocab_size)
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model, directory / "model.safetensors")
    write_config(
        directory,
        model.cfg,
        tokenizer={"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size},
        data={"val_fraction": 0.25},
    )
    save_tokenizer(tokenizer, directory)
    return tokenizer
