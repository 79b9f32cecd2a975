"""The ``fastweights`` command line: one sub-command per module in :mod:`fastweights.commands`.

Each command module has a docstring (its help), ``configure(parser)`` and ``main(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import List, Optional

COMMANDS = {
    "bench": "fastweights.commands.bench",
    "demo": "fastweights.commands.demo",
    "capacity": "fastweights.commands.capacity",
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
        p.set_defaults(_main=module.main)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fastweights`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 0
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
