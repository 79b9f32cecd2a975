"""The model directory: what training writes and evaluation/generation read.

    <dir>/config.json        {"format": "fastweights-lm", "version": 1, "model": LMConfig dict,
                              "tokenizer": {"kind": ..., "vocab_size": ...}, "data": {...}, "train": {...}}
    <dir>/model.safetensors  the weights (tied tensors stored once)
    <dir>/tokenizer.json     the tokenizer (see :func:`fastweights.data.text.load_tokenizer`)

Nothing is unpickled: weights are safetensors, the rest JSON.

Weights are checked wherever they are read (:func:`load_weights`, and ``fastweights.hf``'s
``from_pretrained``): the file must exist, be a complete safetensors file, match the SHA-256 that
``config.json`` records for it and hold no NaN or inf; each failure is one ``ValueError`` (or
``FileNotFoundError``) naming the file. The digest lives in ``config.json``, as
``"weights": {"sha256": ..., "bytes": ...}``, because that file is what makes a directory a model
directory: it travels with the weights wherever the directory is copied (a sidecar file is easily
left behind), and it is written atomically like the weights. It is written whenever fastweights
writes ``<dir>/model.safetensors`` of a directory that has a ``config.json`` (:func:`save_weights`,
:func:`write_weights`: the checkpoint ``fastweights train`` publishes, ``save_pretrained``); the
record is removed before the weights are replaced, so a crash in between leaves weights without a
digest, never a digest of other weights. Directories without one (written before it existed) get
the other checks only. ``FASTWEIGHTS_VERIFY_WEIGHTS=0`` skips the SHA-256 (a full read of the file)
for very large files; the size, structure and finiteness are still checked.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import safetensors.torch
import torch
from safetensors import SafetensorError

from ..files.atomic import atomic_write, atomic_write_text, file_sha256
from ..files.state import nonfinite, read_safetensors_header
from .config import LMConfig
from .lm import LanguageModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "fastweights-lm"
#: the section of config.json that records the digest of model.safetensors
WEIGHTS_RECORD = "weights"
#: set to 0 to skip the SHA-256 of the weights when loading (the other checks still run)
VERIFY_ENV = "FASTWEIGHTS_VERIFY_WEIGHTS"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    """Atomically write the model's weights as safetensors (shared/tied tensors once); see :func:`write_weights`
    for the digest recorded in a model directory's ``config.json``."""
    write_weights(path, lambda tmp: safetensors.torch.save_model(model, tmp))


def write_weights(path: Union[str, Path], write: Callable[[str], None]) -> None:
    """Atomically write a weights file with ``write(tmp_path)``; when it is the ``model.safetensors``
    of a directory with a ``config.json``, record its SHA-256 and size there (see the module docstring)."""
    path = Path(path)
    recorded = path.name == WEIGHTS_FILE and _is_model_directory(path.parent)
    if recorded:
        _set_weights_record(path.parent, None)
    atomic_write(path, write)
    if recorded:
        record_weights(path.parent)


def _is_model_directory(directory: Path) -> bool:
    """Whether ``directory`` has a fastweights ``config.json`` (another program's, or none: no digest to keep)."""
    try:
        read_config(directory)
    except (OSError, ValueError):
        return False
    return True


def record_weights(directory: Union[str, Path]) -> None:
    """Record the SHA-256 and size of ``<directory>/model.safetensors`` in its ``config.json``."""
    path = Path(directory) / WEIGHTS_FILE
    _set_weights_record(directory, {"sha256": file_sha256(path), "bytes": path.stat().st_size})


def _set_weights_record(directory: Union[str, Path], record: Optional[Dict[str, Any]]) -> None:
    """Atomically rewrite ``config.json`` with ``record`` as its weights section (``None``: without one)."""
    doc = read_config(directory)
    if record is None and WEIGHTS_RECORD not in doc:
        return
    doc = {k: v for k, v in doc.items() if k != WEIGHTS_RECORD}
    if record is not None:
        doc[WEIGHTS_RECORD] = record
    atomic_write_text(Path(directory) / CONFIG_FILE, json.dumps(doc, indent=2) + "\n")


def check_weights_file(path: Union[str, Path], record: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """Check a weights file before it is read: it exists, is a complete safetensors file and, given
    ``record`` (the ``"weights"`` section of ``config.json``), has the recorded size and SHA-256
    (the SHA-256 unless ``FASTWEIGHTS_VERIFY_WEIGHTS=0``). Returns the file's safetensors header.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: any other failure, one line naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    header = read_safetensors_header(path, "weights file")
    if record is None:
        return header
    config = path.parent / CONFIG_FILE
    if not (
        isinstance(record, Mapping)
        and isinstance(record.get("bytes"), int)
        and isinstance(record.get("sha256"), str)
        and _SHA256.fullmatch(record["sha256"])
    ):
        raise ValueError(
            f"{config}: its {WEIGHTS_RECORD!r} section must hold 'sha256' (64 hex digits) and "
            f"'bytes' (an int), got {record!r}"
        )
    size = path.stat().st_size
    if size != record["bytes"]:
        raise ValueError(
            f"weights file {path} is {size:,} bytes, {config} records {record['bytes']:,}: "
            "it changed after it was written"
        )
    if os.environ.get(VERIFY_ENV, "1") != "0" and file_sha256(path) != record["sha256"]:
        raise ValueError(
            f"weights file {path} does not match the SHA-256 recorded in {config}: "
            "it changed after it was written (damaged on disk or in a copy)"
        )
    return header


def check_finite_weights(model: torch.nn.Module, path: Union[str, Path]) -> None:
    """``ValueError`` naming ``path`` (the file the weights came from) if a weight of ``model`` is NaN or inf."""
    bad = nonfinite(itertools.chain(model.named_parameters(), model.named_buffers()))  # tied tensors once
    if bad:
        raise ValueError(
            f"weights file {path} holds non-finite values (NaN or inf) in {', '.join(bad[:3])}"
            + (f" and {len(bad) - 3} more tensors" if len(bad) > 3 else "")
        )


def load_weights(
    model: torch.nn.Module,
    path: Union[str, Path],
    device: Union[str, torch.device] = "cpu",
    record: Optional[Mapping[str, Any]] = None,
) -> None:
    """Load safetensors weights into ``model`` (strict: every tensor must match), after
    :func:`check_weights_file` (with ``record``, the digest ``config.json`` holds); they must be finite.

    Raises:
        FileNotFoundError, ValueError: one line naming the file; ``model`` may then hold some of its weights.
    """
    header = check_weights_file(path, record)
    shapes = {name: list(t.shape) for name, t in model.state_dict().items()}
    wrong = [
        f"{name} is {entry.get('shape')}, the model's {shapes[name]}"
        for name, entry in header.items()
        if name in shapes and entry.get("shape") != shapes[name]
    ]
    if wrong:
        raise ValueError(f"weights file {path} does not fit the model: {'; '.join(wrong[:3])}")
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(path), strict=False, device=str(device))
    except SafetensorError as e:  # a tensor entry the header check lets through (an unknown dtype, ...)
        raise ValueError(f"cannot read weights file {path}: {e}") from None
    if missing or unexpected:
        raise ValueError(f"{path} does not match the model: missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    check_finite_weights(model, path)


def load_model(directory: Union[str, Path], device: Union[str, torch.device] = "cpu") -> Tuple[LanguageModel, LMConfig]:
    """Rebuild the model of a model directory from its ``config.json`` and ``model.safetensors``
    (checked as :func:`load_weights` says).

    Returns ``(model, cfg)`` with the model on ``device`` in eval mode.
    """
    for attempt in range(2):
        doc = read_config(directory)
        cfg = LMConfig.from_dict(doc["model"])
        model = LanguageModel(cfg)
        try:
            load_weights(model, Path(directory) / WEIGHTS_FILE, device, doc.get(WEIGHTS_RECORD))
        except ValueError:
            if attempt == 0 and read_config(directory).get(WEIGHTS_RECORD) != doc.get(WEIGHTS_RECORD):
                continue  # a training run replaced the weights while they were read: read the new ones
            raise
        break
    return model.to(device).eval(), cfg
