"""Atomic file writes: write a temporary file next to the target, fsync it, rename it over the target.

A reader (or a run killed with SIGKILL at any moment) sees either the old file or the complete new one.
Temporaries are named ``.<name>.<random>.tmp`` so that :func:`remove_temporaries` can clear what a
killed writer left, and are created like any other file: mode ``0o666 & ~umask`` (directories
``0o777 & ~umask``), not ``tempfile``'s private ``0o600``. A failed write raises an ``OSError`` that
names the file (a full disk: ``errno.ENOSPC``, "No space left on device"), whichever library wrote
the bytes: torch reports it as ``RuntimeError: ... unexpected pos``, safetensors as
``SafetensorError: ... (os error 28)``, and :func:`naming_os_errors` recovers the OS error behind them.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]
TEMP_SUFFIX = ".tmp"
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")  # how Rust's std::io::Error ends its message


def fsync_dir(path: PathLike) -> None:
    """Flush a directory entry (so a rename inside it survives a crash), where the OS allows it."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: PathLike) -> str:
    """The SHA-256 of a file's bytes, hex (to check a written file later, or to key a cache by content)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[0-9a-f]{8}" + re.escape(TEMP_SUFFIX))


def _temp_path(parent: Path, name: str) -> Path:
    return parent / f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def make_temp_dir(parent: PathLike, name: str) -> Path:
    """A new empty directory ``<parent>/.<name>.<random>.tmp`` (mode ``0o777 & ~umask``)."""
    while True:
        path = _temp_path(Path(parent), name)
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue


def _make_temp_file(parent: Path, name: str) -> Path:
    """A new empty file ``<parent>/.<name>.<random>.tmp`` (mode ``0o666 & ~umask``)."""
    while True:
        path = _temp_path(parent, name)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return path
        except FileExistsError:
            continue


def remove_temporaries(directory: PathLike, names: Optional[Iterable[str]] = None) -> List[Path]:
    """Delete the temporary files and directories that killed writers left in ``directory``: those
    named ``.<name>.<8 hex digits>.tmp``, for ``name`` in ``names`` (default: any name).

    Only safe while no other process writes there (e.g. under :func:`fastweights.files.runlock.run_lock`).
    Returns what was removed.
    """
    keep = None if names is None else set(names)
    removed = []
    for path in sorted(Path(directory).iterdir()):
        match = _TEMP_NAME.fullmatch(path.name)
        if match and (keep is None or match["name"] in keep):
            removed.append(path)
    for path in removed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return removed


def _os_error_behind(exc: BaseException) -> Optional[OSError]:
    """The ``OSError`` that ``exc`` is or was raised while handling, or one rebuilt from a Rust I/O error message."""
    seen = set()
    e: Optional[BaseException] = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno:
            return e
        match = _RUST_OS_ERROR.search(str(e))
        if match:
            code = int(match.group(1))
            return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
    return None


@contextmanager
def naming_os_errors(path: PathLike) -> Iterator[None]:
    """Re-raise an operating-system failure inside the block as an ``OSError`` naming ``path`` (unless
    it names a file already), including one a library wrapped in its own exception type."""
    try:
        yield
    except Exception as exc:
        err = _os_error_behind(exc)
        if err is None or (err is exc and err.filename is not None):
            raise
        raise OSError(err.errno, err.strerror, err.filename if err.filename is not None else os.fspath(path)) from exc


def atomic_write(path: PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` to produce the file, then fsync and atomically rename it to ``path``.

    Raises:
        OSError: the write failed for an OS reason (a full disk, a file-size limit, permissions),
            naming ``path``; ``path`` is then unchanged and no temporary file remains.
    """
    path = Path(path)
    with naming_os_errors(path):
        tmp = _make_temp_file(path.parent, path.name)
        mode = tmp.stat().st_mode  # 0o666 & ~umask
        try:
            write(str(tmp))
            os.chmod(tmp, mode)  # for writers that replace the file (safetensors writes its own, mode 0o600)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    fsync_dir(path.parent)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
