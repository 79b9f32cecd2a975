"""Download a corpus (WikiText-2, WikiText-103, tiny Shakespeare) and show where it is.

Each file is checked against its published checksum; an interrupted download resumes where it
stopped. Afterwards `--data NAME` (train, eval) finds the corpus by its name. Tiny Shakespeare
ships with fastweights, so it needs no download. Corpora go to $FASTWEIGHTS_DATA, else
~/.cache/fastweights/data.

Examples:
  fastweights data --list
  fastweights data wikitext-2
  fastweights train --preset wt103-small --attention delta --data wikitext-103 --out runs/wt103-delta
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ...data.corpora import SOURCES, bundled_path, data_dir, fetch


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("names", nargs="*", metavar="NAME", help=f"corpora to download: {', '.join(SOURCES)}")
    p.add_argument("--list", action="store_true", help="list the corpora and whether they are here")
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to put them (default: $FASTWEIGHTS_DATA or ~/.cache/fastweights/data)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    unknown = [n for n in args.names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown corpus {unknown[0]!r}; expected one of {', '.join(SOURCES)}")
    root = args.dir.expanduser() if args.dir is not None else data_dir()
    if args.list or not args.names:
        for source in SOURCES.values():
            here = source.path(root)
            where = (
                here
                if here.exists()
                else (
                    f"shipped ({bundled_path(source.name)})"
                    if source.bundled
                    else f"not downloaded (fastweights data {source.name})"
                )
            )
            print(f"{source.name:16} {source.summary}\n{'':16} {where}")
        return 0
    for name in args.names:
        print(f"{name}: ready at {fetch(name, root, progress=not args.no_progress)}")
    return 0
