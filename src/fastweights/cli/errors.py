"""The command line's error path.

A user error (a bad argument, a missing or malformed file, a configuration out of range) is a
:class:`UsageError` or any other ``ValueError``; the command line prints it as one line,
``fastweights <cmd>: error: <message>``, and exits with status 2. An operating-system error
(``OSError``: no space left, permission denied, not a directory) is reported the same way with its
path. Anything else is an internal error: a traceback and exit status 1.
"""

from __future__ import annotations

import errno
import os


class UsageError(ValueError):
    """A user error: the message names the argument, the expected and the received value."""


def describe_os_error(e: OSError) -> str:
    """One line for an ``OSError``: ``<what went wrong>: <path>`` (e.g. ``No space left on device: runs/x``)."""
    reason = e.strerror or (os.strerror(e.errno) if e.errno else None) or (errno.errorcode.get(e.errno or 0)) or str(e)
    paths = [p for p in (e.filename, e.filename2) if p is not None]
    return f"{reason}: {' -> '.join(os.fsdecode(p) for p in paths)}" if paths else str(reason)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with where the command stopped and how to go on (e.g. the step a training run reached
    and its ``--resume``); the command line prints it as ``fastweights <cmd>: interrupted: <message>``."""
