"""One writer per directory: an exclusive lock that a run holds on its output directory while it runs.

    with run_lock("runs/x", "fastweights train"):   # creates runs/x and locks runs/x/.lock
        ...                                         # another process entering run_lock("runs/x") fails at once

The lock is ``fcntl.flock`` on ``<dir>/.lock`` (POSIX): the kernel releases it when its holder exits
in any way, SIGKILL included, so a lock never outlives its process and needs no stale-lock
clean-up. Its content names the holder (PID, host, command, start time) for the refusal message.
A holder that ends normally (or by an exception, Ctrl-C included) deletes the file while it still
holds the lock, so finished run directories hold no ``.lock``; a process that locked the file
just before it was deleted sees that the file it locked has no name any more and starts over,
so two processes never hold locks on two files of the same name. A killed holder leaves the file,
unlocked, and the next run takes it. Locks are per open file, so a second :func:`run_lock` on the
same directory in the same process is refused too.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

from ..cli.errors import UsageError

PathLike = Union[str, "os.PathLike[str]"]
LOCK_FILE = ".lock"


class RunLockedError(UsageError):
    """The directory is locked by another run (the message names it)."""


def describe_holder(lock_path: PathLike) -> str:
    """``pid 123 on host (fastweights train, since 2024-05-01 12:00:00)``, from a lock file's content
    (``another process`` when it cannot be read: the holder may not have written it yet)."""
    try:
        info = json.loads(Path(lock_path).read_text(encoding="utf-8"))
        return f"pid {info['pid']} on {info['host']} ({info['command']}, since {info['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def run_lock(directory: PathLike, command: str) -> Iterator[Path]:
    """Hold the exclusive lock of ``directory`` (created if missing) for the duration of the block.

    Args:
        directory: the output directory (``--out``) that only one process may write.
        command: what holds it, for the message another process gets (e.g. ``"fastweights train"``).

    Yields:
        the lock file ``<directory>/.lock``.

    Raises:
        RunLockedError: another process (or another :func:`run_lock` of this one) holds the lock.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_FILE
    fd = _lock(path, directory)
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # still locked, so still ours
        os.close(fd)  # closing the last descriptor of the open file releases the lock


def _lock(path: Path, directory: Path) -> int:
    """A descriptor of ``path`` holding its exclusive lock, on a file that still has its name (a holder
    deletes it on the way out: a lock taken on the deleted file is dropped and taken again on the new one)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"--out {directory} is in use by {describe_holder(path)}: one directory has one writer; "
                f"wait for that run to end or choose another --out"
            ) from None
        if os.fstat(fd).st_nlink > 0:  # not deleted by the holder that just finished
            return fd
        os.close(fd)
