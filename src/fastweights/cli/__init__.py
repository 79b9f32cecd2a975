"""The ``fastweights`` command line: one sub-command per module in :mod:`fastweights.cli.commands`.

Each command module has a docstring (its help, ending with an ``Examples:`` section),
``configure(parser)`` and ``main(args) -> int``, and may define ``hint(option) -> str | None`` to
suggest what an unknown option may have meant (before the closest real option). Every command gets ``--threads N``
(:mod:`fastweights.cli.threads`), applied before it runs and undone after.

A command reports a user error by raising ``ValueError`` (e.g. :class:`~fastweights.cli.errors.UsageError`):
:func:`main` prints it as one line ``fastweights <cmd>: error: ...`` and returns 2, as argparse does
for a malformed command line; an ``OSError`` is reported the same way with its path; Ctrl-C ends
any command with one line and status 130 (:class:`~fastweights.cli.errors.Interrupted` says where);
any other exception is an internal error and propagates (a traceback, exit status 1).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
from typing import Callable, List, Optional

import torch

from .errors import Interrupted, describe_os_error
from .threads import add_threads_argument, set_threads

COMMANDS = {
    "bench": "fastweights.cli.commands.bench",
    "demo": "fastweights.cli.commands.demo",
    "capacity": "fastweights.cli.commands.capacity",
    "data": "fastweights.cli.commands.data",
    "eval": "fastweights.cli.commands.eval",
    "generate": "fastweights.cli.commands.generate",
    "rules": "fastweights.cli.commands.rules",
    "synth": "fastweights.cli.commands.synth",
    "train": "fastweights.cli.commands.train",
}
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def add_command(
    sub: "argparse._SubParsersAction", name: str, module, hint: Optional[Callable] = None
) -> argparse.ArgumentParser:
    """Add sub-command ``name`` from ``module`` (its docstring as help, ``module.configure``,
    ``module.main``) with the shared ``--threads``; a module with sub-commands of its own adds the
    option to each of them instead (it sets ``HAS_SUBCOMMANDS``)."""
    doc = (module.__doc__ or "").strip()
    p = sub.add_parser(
        name,
        help=doc.splitlines()[0] if doc else None,
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.configure(p)
    if not getattr(module, "HAS_SUBCOMMANDS", False):
        add_threads_argument(p)
    p.set_defaults(_main=module.main, _prog=p.prog, _parser=p, _hint=hint or getattr(module, "hint", None))
    return p


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every sub-command)."""
    parser = argparse.ArgumentParser(
        prog="fastweights",
        description="Fast Weight Programmers and linear transformers (Schlag, Irie & Schmidhuber, ICML 2021).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        add_command(sub, name, importlib.import_module(module_name))
    return parser


def _reject_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: List[str]) -> None:
    """argparse's error for ``extras``, from the (sub-)command they were given to, with its usage and
    a "did you mean" for the first unknown option (exits 2)."""
    command: argparse.ArgumentParser = getattr(args, "_parser", None) or parser
    message = f"unrecognized arguments: {' '.join(extras)}"
    option = next((e.split("=", 1)[0] for e in extras if e.startswith("--")), None)
    if option is not None:
        hint = args._hint(option) if getattr(args, "_hint", None) else None
        close = difflib.get_close_matches(
            option, [o for o in command._option_string_actions if o.startswith("--")], n=1
        )
        if hint or close:
            message += f" (did you mean {hint or close[0]}?)"
    command.error(message)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``fastweights`` console script."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        _reject_unknown(parser, args, extras)
    if not getattr(args, "_main", None):
        parser.print_help()
        return 0
    threads = torch.get_num_threads()
    try:
        args.threads = set_threads(args.threads)
        return int(args._main(args) or 0)
    except KeyboardInterrupt as e:
        where = f": {e}" if isinstance(e, Interrupted) else ""
        print(f"\n{args._prog}: interrupted{where}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except ValueError as e:
        message = str(e)
    except OSError as e:
        message = describe_os_error(e)
    finally:
        torch.set_num_threads(threads)
    print(f"{args._prog}: error: {message}", file=sys.stderr)  # the (sub-)command's name, as argparse says it
    return 2
