"""Named corpora: tiny Shakespeare ships with the package; WikiText-2 and -103 are downloaded.

A command's ``--data`` takes a path or one of these names (:func:`resolve`):

==================  ==================================================  =========================
name                what                                                where it comes from
==================  ==================================================  =========================
``tinyshakespeare``  1.1 MB of Shakespeare's plays (Karpathy's char-rnn)  inside the package
``wikitext-2``       WikiText-2 (v1, tokenized), 2M training words          ``fastweights data``
``wikitext-103``     WikiText-103 (v1, tokenized), 103M training words      ``fastweights data``
==================  ==================================================  =========================

``fastweights data NAME`` (:func:`fetch`) downloads a corpus from its canonical address into
:func:`data_dir`, resumes a partial download, checks every file against its published checksum
and unpacks an archive; :func:`resolve` then finds it there.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

from ..cli.errors import UsageError
from .download import check_file, download

PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class Source:
    """A named corpus.

    Attributes:
        name: its ``--data`` name.
        summary: one line for ``fastweights data --list``.
        urls: addresses of one file or a zip archive, tried in order (mirrors).
        files: the corpus's files (names inside ``<data_dir>/<name>/``) and their checksums,
            ``"sha1:<hex>"`` or ``"sha256:<hex>"``.
        archive: the zip's directory that holds ``files`` (``None``: ``urls`` point at the one file).
        bundled: the file shipped in this package (``None``: download only).
    """

    name: str
    summary: str
    urls: Tuple[str, ...]
    files: Dict[str, str]
    archive: Optional[str] = None
    bundled: Optional[str] = None

    def path(self, root: Path) -> Path:
        """What ``--data NAME`` reads: the file itself, or the directory of a WikiText's splits."""
        return root / self.name / next(iter(self.files)) if self.archive is None else root / self.name


SOURCES: Dict[str, Source] = {
    s.name: s
    for s in (
        Source(
            "tinyshakespeare",
            "tiny Shakespeare, 1.1 MB of plays (character level; shipped with fastweights)",
            ("https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",),
            {"input.txt": "sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"},
            bundled="tinyshakespeare.txt",
        ),
        Source(
            "wikitext-2",
            "WikiText-2 v1 (word level, 4 MB): wiki.{train,valid,test}.tokens",
            (
                "https://wikitext.smerity.com/wikitext-2-v1.zip",
                "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-v1.zip",
            ),
            {
                "wiki.train.tokens": "sha1:863f29c46ef9d167fff4940ec821195882fe29d1",
                "wiki.valid.tokens": "sha1:0418625c8b4da6e4b5c7a0b9e78d4ae8f7ee5422",
                "wiki.test.tokens": "sha1:c7b8ce0aa086fb34dab808c5c49224211eb2b172",
            },
            archive="wikitext-2",
        ),
        Source(
            "wikitext-103",
            "WikiText-103 v1 (word level, 180 MB download, 516 MB unpacked): wiki.{train,valid,test}.tokens",
            (
                "https://wikitext.smerity.com/wikitext-103-v1.zip",
                "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-103-v1.zip",
            ),
            {
                "wiki.train.tokens": "sha1:b7497e2dfe77e72cfef5e3dbc61b7b53712ac211",
                "wiki.valid.tokens": "sha1:c326ac59dc587676d58c422eb8a03e119582f92b",
                "wiki.test.tokens": "sha1:8a5befc548865cec54ed4273cf87dbbad60d1e47",
            },
            archive="wikitext-103",
        ),
    )
}


def data_dir() -> Path:
    """Where ``fastweights data`` puts corpora: ``$FASTWEIGHTS_DATA`` or ``~/.cache/fastweights/data``."""
    env = os.environ.get("FASTWEIGHTS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fastweights" / "data"


def bundled_path(name: str) -> Path:
    """The file of a corpus shipped inside the package (e.g. ``tinyshakespeare``)."""
    source = SOURCES[name]
    if source.bundled is None:
        raise ValueError(f"{name} is not shipped with fastweights; download it with `fastweights data {name}`")
    return Path(str(resources.files(__package__).joinpath(source.bundled)))


def resolve(data: PathLike, root: Optional[Path] = None) -> Path:
    """The path a ``--data`` value names: a corpus name (:data:`SOURCES`) or a path.

    A name gives the downloaded copy in ``root`` (default :func:`data_dir`) if there is one, else
    the bundled file; a corpus that is neither raises a ``UsageError`` saying how to get it.
    """
    text = os.fspath(data)
    source = SOURCES.get(text)
    if source is None or Path(text).exists():
        return Path(text).expanduser()
    local = source.path(root or data_dir())
    if local.exists():
        return local
    if source.bundled is not None:
        return bundled_path(source.name)
    raise UsageError(
        f"--data {text}: the corpus is not downloaded yet; run `fastweights data {text}` "
        f"(it goes to {local}), or pass the path of a copy you have"
    )


def fetch(
    name: str, root: Optional[Path] = None, *, urls: Optional[Tuple[str, ...]] = None, progress: bool = True
) -> Path:
    """Download corpus ``name`` into ``<root>/<name>/`` (default root :func:`data_dir`) and return
    :func:`resolve`'s path for it.

    Already present and verified: nothing is downloaded. A partial download (``*.part``) is
    resumed with an HTTP range request. Every file is checked against :attr:`Source.files`; a
    mismatch deletes the download and raises ``ValueError``. ``urls`` replaces the source's
    addresses (tests serve the files locally).
    """
    if name not in SOURCES:
        raise UsageError(f"unknown corpus {name!r}; expected one of {sorted(SOURCES)}")
    source = SOURCES[name]
    target = (root or data_dir()) / name
    if all((target / f).is_file() for f in source.files):
        for f, checksum in source.files.items():
            check_file(target / f, checksum)
        return source.path(root or data_dir())
    target.mkdir(parents=True, exist_ok=True)
    part = target / ((f"{source.archive}.zip" if source.archive else next(iter(source.files))) + ".part")
    download(urls or source.urls, part, progress=progress)
    if source.archive is None:
        f, checksum = next(iter(source.files.items()))
        check_file(part, checksum, delete=True)
        os.replace(part, target / f)
    else:
        try:
            _unpack(part, source, target)
        finally:  # unpacked, or not the archive it should be: either way the next run starts afresh
            part.unlink()
    return source.path(root or data_dir())


def _unpack(archive: Path, source: Source, target: Path) -> None:
    """Extract ``source.files`` from the zip's ``source.archive/`` into ``target``, each checked
    (all or none: they are moved into ``target`` once every one matches)."""
    try:
        with zipfile.ZipFile(archive) as z, tempfile.TemporaryDirectory(dir=target) as tmp:
            for f, checksum in source.files.items():
                member = f"{source.archive}/{f}"
                if member not in z.namelist():
                    raise ValueError(f"{archive.name} has no {member}: not the {source.name} archive")
                with z.open(member) as src, open(Path(tmp) / f, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                check_file(Path(tmp) / f, checksum, delete=True)
            for f in source.files:
                os.replace(Path(tmp) / f, target / f)
    except zipfile.BadZipFile:
        raise ValueError(
            f"{archive.name} is not a zip archive (a proxy's error page?); deleted, run the command again"
        ) from None
