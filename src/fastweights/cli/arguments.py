"""Checks of command-line arguments that several commands share, made before any work: output
paths (so that a long run does not fail at its first write), devices and bounded integers."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path
from typing import Callable, Union

import torch

PathLike = Union[str, "os.PathLike[str]"]


def check_output_path(path: PathLike, option: str, folder: bool = False) -> None:
    """``path`` (given as ``option``, e.g. ``--json``) must be a place this process can write to.

    An existing ``path`` must be a folder if ``folder``, else a file; a new one is made inside its
    nearest existing parent (with any missing folders in between), which must be a folder.

    Raises:
        ValueError: a file where a folder is expected or the reverse, naming ``option``.
        PermissionError: the folder to write into is not writable, naming it.
    """
    path = Path(path)
    kind, other = ("folder", "file") if folder else ("file", "folder")
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"{option} {path} is a {other}; expected a {kind}")
    parent = next(p for p in path.parents if p.exists())  # the nearest existing parent ('.' or '/' at worst)
    if not parent.is_dir():
        raise ValueError(f"{option} {path} is inside {parent}, which is a file; expected a {kind} path")
    target = path if folder and path.exists() else parent  # the folder the first write goes into
    if not os.access(target, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(target))


def check_device(name: str, option: str = "--device") -> torch.device:
    """``torch.device(name)``, checked to exist on this machine (a ``ValueError`` naming ``option``)."""
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"{option}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{option} {name}: CUDA is not available on this machine")
    return device


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an int ``>= minimum`` (argparse then reports ``argument --x: must be >= 1, got 0``)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse
