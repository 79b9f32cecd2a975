"""Resumable HTTP downloads with a progress bar, and checksum checks (standard library + tqdm)."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from ..cli.errors import UsageError

BLOCK = 1 << 16  #: bytes read per call
TIMEOUT = 30.0  #: seconds a connection may stay silent


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file's bytes (``algorithm``: a :mod:`hashlib` name such as ``sha256``)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_file(path: Path, checksum: str, delete: bool = False) -> None:
    """Raise ``ValueError`` unless ``path`` has ``checksum`` (``"<algorithm>:<hex>"``); with
    ``delete`` a mismatching file is removed first (so the next attempt starts afresh)."""
    algorithm, expected = checksum.split(":")
    got = file_digest(path, algorithm)
    if got != expected:
        if delete:
            path.unlink()
        raise ValueError(
            f"{path.name}: {algorithm} {got} does not match the published {expected} "
            f"(a corrupted or changed download{'; deleted' if delete else ''})"
        )


def download(urls: Sequence[str], part: Path, *, progress: bool = True) -> None:
    """Download the first address of ``urls`` that answers into ``part``, resuming a partial file.

    A ``part`` that already holds bytes is continued with ``Range: bytes=<size>-``; a server that
    ignores the range (status 200) sends the whole file again, which replaces the part. Addresses
    that cannot be reached are tried in turn; when none can, a ``UsageError`` names them and the
    reason (e.g. no network).
    """
    failures = []
    for url in urls:
        try:
            _download_one(url, part, progress)
            return
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            failures.append(f"{url} ({getattr(e, 'reason', None) or e})")
    kept = (
        f"; the {part.stat().st_size} bytes received are kept in {part} and the next run resumes"
        if part.exists() and part.stat().st_size
        else ""
    )
    raise UsageError(
        f"cannot download {part.name[:-5]}: {'; '.join(failures)}. Are you offline? You can also "
        f"download it yourself and pass its path to --data{kept}"
    )


def _download_one(url: str, part: Path, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as e:
        if e.code != 416:  # 416: range not satisfiable, i.e. the part is already complete
            raise
        return
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            open(part, "ab" if resumed else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.name[:-5],
                disable=not progress,
                dynamic_ncols=True,
            ) as bar,
        ):
            for block in iter(lambda: response.read(BLOCK), b""):
                f.write(block)
                bar.update(len(block))
            f.flush()
            os.fsync(f.fileno())
        if total is not None and part.stat().st_size != total:
            raise ConnectionError(f"connection closed after {part.stat().st_size} of {total} bytes")
