"""Training checkpoints of a run directory: written atomically with a manifest of hashes, verified
before a resume, the newest two kept.

    <out>/checkpoints/step-00000100/model.safetensors   the weights
                                    trainer.pt          optimizer, scheduler, RNG and sampler states, step
                                                        (torch.save; read with weights_only=True)
                                    carry.safetensors   streamed training only: the carried states of every
                                                        process (fastweights.files.state, safetensors)
                                    manifest.json       {"step": 100,
                                                         "sha256": {"model.safetensors": ..., "trainer.pt": ...}}
    <out>/checkpoints/rejected-step-00000200/           one that failed verification, moved aside by a resume

A checkpoint is built in a temporary directory, fsynced and renamed into place, so a run killed at
any moment leaves complete checkpoints only (plus a temporary directory that the next start removes).
A resume still verifies one before trusting it (:func:`load_checkpoint`): a disk can truncate or
flip bytes after the fact. The model directory that ``eval`` and ``generate`` read (``<out>/config.json``,
``<out>/model.safetensors``) is :mod:`fastweights.models.directory`; ``<out>/model.safetensors`` is a
copy of the newest checkpoint's weights, whose SHA-256 ``<out>/config.json`` records (a checkpoint's
own are in its manifest).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from ..files.atomic import atomic_write, atomic_write_text, file_sha256, fsync_dir, make_temp_dir
from ..files.state import load_state, nonfinite, save_state
from ..models.directory import WEIGHTS_FILE, load_weights, save_weights, write_weights

PathLike = Union[str, "os.PathLike[str]"]
CHECKPOINTS_DIR = "checkpoints"
TRAINER_FILE = "trainer.pt"
CARRY_FILE = "carry.safetensors"
MANIFEST_FILE = "manifest.json"
REJECTED_PREFIX = "rejected-"
KEEP_CHECKPOINTS = 2
_STEP_DIR = re.compile(r"step-(\d{8,})")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names it and says why."""


def checkpoint_step(ckpt: PathLike) -> int:
    """The step of a ``step-XXXXXXXX`` checkpoint directory."""
    return int(_STEP_DIR.fullmatch(Path(ckpt).name).group(1))


def list_checkpoints(out_dir: PathLike) -> List[Path]:
    """The complete checkpoints of a run, oldest first."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    found = [p for p in root.iterdir() if _STEP_DIR.fullmatch(p.name) and p.is_dir()] if root.is_dir() else []
    return sorted(found, key=checkpoint_step)


def latest_checkpoint(out_dir: PathLike) -> Optional[Path]:
    """The newest complete checkpoint of a run, or ``None``."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def named_tensors(obj: Any, prefix: str = "") -> Iterator[Tuple[str, Tensor]]:
    """Every tensor in a nesting of dicts, lists and tuples (an optimizer state dict), with a dotted name."""
    if isinstance(obj, Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from named_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from named_tensors(value, f"{prefix}.{i}" if prefix else str(i))


def _torch_save(obj: Any, path: str) -> None:
    with open(path, "wb") as f:  # a file object: a failed write surfaces as the OSError behind torch's error
        torch.save(obj, f)


def save_checkpoint(
    out_dir: PathLike, model: nn.Module, trainer_state: Dict[str, Any], step: int, carry: Optional[Any] = None
) -> Path:
    """Write ``checkpoints/step-<step>`` (weights, trainer state, the ``carry`` states of streamed
    training if any, manifest), copy its weights to ``<out>/model.safetensors`` and delete all but
    the newest :data:`KEEP_CHECKPOINTS` checkpoints.

    The caller checks the weights are finite first (:func:`nonfinite`): a checkpoint is a point a
    run may go back to. Returns the checkpoint directory.
    """
    out = Path(out_dir)
    root = out / CHECKPOINTS_DIR
    root.mkdir(exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = make_temp_dir(root, final.name)
    try:
        save_weights(model, tmp / WEIGHTS_FILE)
        atomic_write(tmp / TRAINER_FILE, lambda p: _torch_save(trainer_state, p))
        files = [WEIGHTS_FILE, TRAINER_FILE]
        if carry is not None:
            save_state(tmp / CARRY_FILE, carry)
            files.append(CARRY_FILE)
        manifest = {"step": step, "sha256": {name: file_sha256(tmp / name) for name in files}}
        atomic_write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.filename is not None and Path(e.filename).parent == tmp:
            # name the file the checkpoint would have had, not the temporary directory just removed
            raise OSError(
                e.errno,
                f"{e.strerror} (writing the checkpoint of step {step})",
                os.fspath(final / Path(e.filename).name),
            ) from e
        raise
    fsync_dir(root)
    publish_weights(out, final)
    for old in list_checkpoints(out)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def publish_weights(out_dir: PathLike, ckpt: PathLike) -> None:
    """Atomically copy a checkpoint's weights to the model directory's ``<out>/model.safetensors``
    (recording its SHA-256 in ``<out>/config.json``: :func:`~fastweights.models.directory.write_weights`)."""
    write_weights(Path(out_dir) / WEIGHTS_FILE, lambda p: shutil.copyfile(Path(ckpt) / WEIGHTS_FILE, p))


def load_checkpoint(ckpt: PathLike, model: nn.Module, device: Union[str, torch.device]) -> Dict[str, Any]:
    """Verify a checkpoint and load its weights into ``model``; returns its trainer state (on the CPU),
    with the carried states of streamed training under ``"carry"`` when the checkpoint has them.

    Verified: the files' SHA-256 against the manifest (checkpoints written before manifests existed
    have none and skip this), the weights load into ``model`` with every tensor matching and are
    finite (:func:`~fastweights.models.directory.load_weights`), the trainer state loads with
    ``weights_only=True``, is finite and is for the directory's step.

    Raises:
        CheckpointError: any of these fails; ``model`` may then hold some of the checkpoint's weights.
    """
    ckpt = Path(ckpt)
    try:
        _verify_manifest(ckpt)
        load_weights(model, ckpt / WEIGHTS_FILE, device)
        state = torch.load(ckpt / TRAINER_FILE, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or state.get("step") != checkpoint_step(ckpt):
            raise CheckpointError(f"{TRAINER_FILE} is not the trainer state of step {checkpoint_step(ckpt)}")
        if (ckpt / CARRY_FILE).exists():
            state["carry"] = load_state(ckpt / CARRY_FILE)
        bad = nonfinite(named_tensors(state))
        if bad:
            raise CheckpointError(f"non-finite trainer state in {', '.join(bad[:3])}")
    except Exception as e:  # safetensors, torch.load and the file system each raise their own types
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"checkpoint {ckpt} is unusable: {reason}") from e
    return state


def _verify_manifest(ckpt: Path) -> None:
    path = ckpt / MANIFEST_FILE
    if not path.exists():
        return
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for name, expected in manifest["sha256"].items():
        if file_sha256(ckpt / name) != expected:
            raise CheckpointError(
                f"{name} does not match the SHA-256 in {MANIFEST_FILE} (the file changed after it was written)"
            )


def reject_checkpoint(ckpt: PathLike) -> Path:
    """Move a checkpoint that failed verification to ``rejected-step-XXXXXXXX`` next to it (replacing
    one of that name), out of :func:`list_checkpoints`' sight; returns the new path."""
    ckpt = Path(ckpt)
    dest = ckpt.with_name(REJECTED_PREFIX + ckpt.name)
    if dest.exists():
        shutil.rmtree(dest)
    os.rename(ckpt, dest)
    fsync_dir(ckpt.parent)
    return dest
