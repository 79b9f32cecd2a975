"""The ``fastweights`` command line: one sub-command per module in :mod:`fastweights.commands`.

Each command module has a docstring (its help), ``configure(parser)`` and ``main(args) -> int``.
A command reports a user error by raising ``ValueError`` (e.g. :class:`~fastweights.errors.UsageError`):
:func:`main` prints it as one line ``fastweights <cmd>: error: ...`` and returns 2, as argparse does
for a malformed command line; an ``OSError`` is reported the same way with its path; any other
exception is an internal error and propagates (a traceback, exit status 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

from .errors import describe_os_error

COMMANDS = {
    "bench": "fastweights.commands.bench",
    "demo": "fastweights.commands.demo",
    "capacity": "fastweights.commands.capacity",
    "data": "fastweights.commands.data",
    "eval": "fastweights.commands.eval",
    "generate": "fastweights.commands.generate",
    "train": "fastweights.commands.train",
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every sub-command)."""
    parser = argparse.ArgumentParser(
        prog="fastweights",
        description="Fast Weight Programmers and linear transformers (Schlag, Irie & Schmidhuber, ICML 2021).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0] if doc else None,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(p)
        p.set_defaults(_main=module.main, _prog=p.prog)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fastweights`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 0
    try:
        return int(args._main(args) or 0)
    except ValueError as e:
        message = str(e)
    except OSError as e:
        message = describe_os_error(e)
    print(f"{args._prog}: error: {message}", file=sys.stderr)  # the (sub-)command's name, as argparse says it
    return 2


if __name__ == "__main__":
    sys.exit(main())
