"""Text corpora as token-id arrays cached on disk, and their tokenizers.

Three tokenizations, one interface (``encode(str) -> list[int]``, ``decode(list[int]) -> str``,
``vocab_size``, ``kind``, saved as ``tokenizer.json``):

- ``'char'``: one id per character; the vocabulary is the sorted set of characters of the file.
- ``'word'``: WikiText style: whitespace-separated words, every line ends with ``<eos>``; the
  vocabulary comes from the training split, most frequent first (so adaptive-softmax cutoffs put
  frequent words in the head); unseen words map to ``<unk>``.
- ``'bpe'``: byte-level BPE from the ``tokenizers`` library, trained on the training split or
  loaded from a ``tokenizer.json``.

Every ``tokenizer.json`` is a ``tokenizers`` JSON (char and word as WordLevel models whose
pre-tokenizer and decoder reproduce the rules above), so ``tokenizers.Tokenizer.from_file`` and
``transformers.PreTrainedTokenizerFast(tokenizer_file=...)`` read it with the same ids; the earlier
``{"fastweights_tokenizer": kind, "vocab": [...]}`` files are still read.

:func:`load_corpus` reads a directory of ``wiki.{train,valid,test}.tokens`` (WikiText-2/-103) or a
single text file (split deterministically: the first ``1 - val_fraction`` of the characters train,
the rest validate), tokenizes it once and caches the ids as flat ``uint16``/``uint32`` files that
later runs open as ``numpy.memmap`` at once. The cache is keyed by the files' contents (SHA-256), so
a file rewritten in place, even with its old size and modification time, is tokenized afresh.

Documents: a line ``" = Title = "`` (one ``=`` on each side: WikiText's article titles; its section
headings have two or more) starts a document. The cache keeps, per split, the token offsets of
those lines (:attr:`Corpus.documents`), which carried-state training can reset its states at.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..files.atomic import atomic_write_text, file_sha256, fsync_dir, make_temp_dir

PathLike = Union[str, "os.PathLike[str]"]
TOKENIZER_FILE = "tokenizer.json"
#: the characters ``str.split()`` splits words at (Python's whitespace), as the body of a regex class
WHITESPACE = "\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
WIKITEXT_SPLITS = {"train": "wiki.train.tokens", "val": "wiki.valid.tokens", "test": "wiki.test.tokens"}
#: a line that starts a document: WikiText's `` = Title = `` (section headings are `` = = Section = = ``)
DOCUMENT_TITLE = re.compile(r" = [^=](?:.*[^=])? = ")
_CACHE_VERSION = 2  # 2: document offsets per split
_LINES_PER_CHUNK = 20000


# ---------------------------------------------------------------------------- tokenizers
class CharTokenizer:
    """One id per character of a fixed vocabulary (``vocab[i]`` is the character of id i)."""

    kind = "char"

    def __init__(self, vocab: Sequence[str]) -> None:
        if not vocab or any(not isinstance(c, str) or len(c) != 1 for c in vocab) or len(set(vocab)) != len(vocab):
            raise ValueError("a char vocabulary must be a non-empty list of distinct single characters")
        self.vocab = list(vocab)
        self._ids = {c: i for i, c in enumerate(self.vocab)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> List[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as e:
            raise ValueError(f"character {e.args[0]!r} is not in the vocabulary of this char tokenizer") from None

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.vocab[i] for i in ids)

    def to_json(self) -> str:
        """``tokenizers`` JSON: WordLevel over the characters, text split into single characters, ids
        decoded by concatenation."""
        from tokenizers import Regex, decoders, pre_tokenizers

        return _word_level_json(
            self.vocab, None, pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated"), decoders.Fuse()
        )


class WordTokenizer:
    """Whitespace-separated words; a newline is the token ``<eos>``; unknown words are ``<unk>``."""

    kind = "word"
    eos, unk = "<eos>", "<unk>"

    def __init__(self, vocab: Sequence[str]) -> None:
        if len(set(vocab)) != len(vocab) or self.eos not in vocab or self.unk not in vocab:
            raise ValueError(f"a word vocabulary must hold distinct words including {self.eos!r} and {self.unk!r}")
        self.vocab = list(vocab)
        self._ids = {w: i for i, w in enumerate(self.vocab)}
        self.eos_id, self.unk_id = self._ids[self.eos], self._ids[self.unk]

    @classmethod
    def from_lines(cls, lines: Iterable[str]) -> "WordTokenizer":
        """Vocabulary of the words in ``lines``, most frequent first (ties: first seen), plus ``<eos>``/``<unk>``."""
        counts: Counter = Counter()
        n_lines = 0
        for line in lines:
            counts.update(line.split())
            n_lines += 1
        counts[cls.eos] += n_lines
        counts.setdefault(cls.unk, 0)
        return cls([w for w, _ in counts.most_common()])

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode_line(self, line: str) -> List[int]:
        """The ids of one line's words (no ``<eos>``)."""
        get, unk = self._ids.get, self.unk_id
        return [get(w, unk) for w in line.split()]

    def encode(self, text: str) -> List[int]:
        lines = text.split("\n")
        ids: List[int] = []
        for i, line in enumerate(lines):
            ids.extend(self.encode_line(line))
            if i < len(lines) - 1:
                ids.append(self.eos_id)
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        lines: List[str] = []
        words: List[str] = []
        for i in ids:
            if i == self.eos_id:
                lines.append(" ".join(words))
                words = []
            else:
                words.append(self.vocab[i])
        return "\n".join(lines + [" ".join(words)])

    def to_json(self) -> str:
        """``tokenizers`` JSON: WordLevel over the words; a newline becomes a ``<eos>`` word, words split
        at whitespace; decoding joins words with spaces and turns ``<eos>`` into a newline without
        spaces around it."""
        from tokenizers import Regex, decoders, normalizers, pre_tokenizers

        decoder = decoders.Sequence(
            [
                decoders.Replace(Regex(f"^{self.eos}$"), " \n"),  # " "-prefixed: glued to the word before
                decoders.WordPiece(prefix=" ", cleanup=False),  # the other words get a space before them
                decoders.Fuse(),
                decoders.Replace("\n ", "\n"),  # no space after a newline
                decoders.Strip(" ", 1, 0),  # nor before a leading one
            ]
        )
        return _word_level_json(
            self.vocab,
            normalizers.Replace("\n", f" {self.eos} "),
            pre_tokenizers.Split(Regex(f"[{WHITESPACE}]+"), behavior="removed"),
            decoder,
            unk=self.unk,
        )


class BPETokenizer:
    """Byte-level BPE (a ``tokenizers.Tokenizer``)."""

    kind = "bpe"

    def __init__(self, tokenizer: "tokenizers.Tokenizer") -> None:  # noqa: F821
        self.tokenizer = tokenizer

    @classmethod
    def train(cls, lines: Iterable[str], vocab_size: int) -> "BPETokenizer":
        """Train a byte-level BPE of ``vocab_size`` tokens on ``lines``."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if not isinstance(vocab_size, int) or vocab_size < 257:
            raise ValueError(f"bpe_vocab_size must be an int >= 257 (256 bytes + merges), got {vocab_size!r}")
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
        )
        tok.train_from_iterator(lines, trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> List[int]:
        return self.tokenizer.encode(text).ids

    def encode_lines(self, lines: List[str]) -> List[List[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(lines)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def to_json(self) -> str:
        return self.tokenizer.to_str()


Tokenizer = Union[CharTokenizer, WordTokenizer, BPETokenizer]


def _word_level_json(
    vocab: List[str], normalizer: object, pre_tokenizer: object, decoder: object, unk: str = "<unk>"
) -> str:
    """The ``tokenizers`` JSON of a WordLevel model (id i = ``vocab[i]``) with these parts."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    tok = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token=unk))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer, tok.decoder = pre_tokenizer, decoder
    return tok.to_str()


def _as_word_level(canonical: dict) -> Optional[Tokenizer]:
    """The char or word tokenizer whose :meth:`to_json` is ``canonical`` (a parsed ``tokenizers``
    JSON, as the installed ``tokenizers`` writes it), or ``None``."""
    model = canonical.get("model") or {}
    if model.get("type") != "WordLevel":
        return None
    vocab = sorted(model["vocab"], key=model["vocab"].__getitem__)
    for cls in (CharTokenizer, WordTokenizer):
        try:
            tok = cls(vocab)
        except ValueError:
            continue
        if json.loads(tok.to_json()) == canonical:
            return tok
    return None


def tokenizer_from_json(text: str, source: str = "tokenizer") -> Tokenizer:
    """Rebuild a tokenizer from :meth:`to_json` output, the earlier fastweights format, or any
    ``tokenizers`` JSON (as :class:`BPETokenizer`)."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source} is not valid JSON: {e}") from None
    kind = doc.get("fastweights_tokenizer") if isinstance(doc, dict) else None
    if kind == "char":
        return CharTokenizer(doc["vocab"])
    if kind == "word":
        return WordTokenizer(doc["vocab"])
    from tokenizers import Tokenizer as HFTokenizer

    try:
        tok = HFTokenizer.from_str(text)
    except Exception as e:  # tokenizers raises its own exception types
        raise ValueError(f"{source} is neither a fastweights nor a `tokenizers` tokenizer: {e}") from None
    return _as_word_level(json.loads(tok.to_str())) or BPETokenizer(tok)


def load_tokenizer(path: PathLike) -> Tokenizer:
    """The tokenizer of a model directory (its ``tokenizer.json``) or of a ``tokenizer.json`` file."""
    p = Path(path)
    file = p / TOKENIZER_FILE if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"no tokenizer at {file}")
    return tokenizer_from_json(_read_text(file), str(file))


def save_tokenizer(tokenizer: Tokenizer, directory: PathLike) -> None:
    """Atomically write ``<directory>/tokenizer.json``."""
    atomic_write_text(Path(directory) / TOKENIZER_FILE, tokenizer.to_json())


def check_same_tokenizer(tokenizer: Tokenizer, directory: PathLike) -> None:
    """Raise ``ValueError`` unless ``tokenizer`` equals the one saved in ``directory`` (e.g. a checkpoint)."""
    saved = load_tokenizer(directory)
    if (
        saved.kind != tokenizer.kind
        or saved.vocab_size != tokenizer.vocab_size
        or saved.to_json() != tokenizer.to_json()
    ):
        raise ValueError(
            f"vocabulary mismatch: the data gives a {tokenizer.kind} tokenizer with {tokenizer.vocab_size} tokens, "
            f"but {directory} was trained with a {saved.kind} tokenizer with {saved.vocab_size} tokens"
        )


# ---------------------------------------------------------------------------- corpora
@dataclass
class Corpus:
    """Token ids per split (``'train'``, ``'val'``, optionally ``'test'``) as read-only memmaps, and
    per split the offsets ``[n_documents]`` (int64, increasing) of the tokens that start a document
    (a :data:`DOCUMENT_TITLE` line; empty for a text without such lines)."""

    tokenizer: Tokenizer
    splits: Dict[str, np.ndarray]
    source: str
    cache: str
    info: Dict[str, object] = field(default_factory=dict)
    documents: Dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def train(self) -> np.ndarray:
        return self.splits["train"]

    @property
    def val(self) -> np.ndarray:
        return self.splits["val"]


def default_cache_dir() -> Path:
    """``$FASTWEIGHTS_CACHE`` or ``~/.cache/fastweights/corpora``."""
    env = os.environ.get("FASTWEIGHTS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "fastweights" / "corpora"


def load_corpus(
    path: PathLike,
    kind: str = "auto",
    *,
    tokenizer_file: Optional[PathLike] = None,
    bpe_vocab_size: int = 4096,
    val_fraction: float = 0.1,
    cache_dir: Optional[PathLike] = None,
    on_tokenize: Optional[Callable[[str], None]] = None,
) -> Corpus:
    """Tokenize a corpus once (cached) and open its splits as memmaps.

    Args:
        path: a directory with ``wiki.train.tokens`` and ``wiki.valid.tokens`` (and optionally
            ``wiki.test.tokens``), or one text file (split into train/val by ``val_fraction``).
        kind: ``'char'``, ``'word'``, ``'bpe'`` or ``'auto'`` (``'word'`` for a directory, ``'char'``
            for a file; ``'bpe'`` when ``tokenizer_file`` is given).
        tokenizer_file: a ``tokenizer.json`` to use instead of building a vocabulary.
        bpe_vocab_size: vocabulary size of a BPE trained on the training split.
        val_fraction: share of a single file's characters (at its end) used for validation.
        cache_dir: where the ids are cached (default :func:`default_cache_dir`).
        on_tokenize: called with a one-line status before a corpus is tokenized (not when cached).

    Raises:
        FileNotFoundError: ``path`` (or a required split file) does not exist.
        ValueError: unreadable (not UTF-8) or empty corpus, a split without tokens, bad arguments.
    """
    src = Path(path).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"corpus path {str(path)!r} does not exist")
    if kind not in ("auto", "char", "word", "bpe"):
        raise ValueError(f"kind must be 'auto', 'char', 'word' or 'bpe', got {kind!r}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
    files = _split_files(src)
    tok_text = None
    if tokenizer_file is not None:
        if not Path(tokenizer_file).is_file():
            raise FileNotFoundError(f"tokenizer_file {str(tokenizer_file)!r} does not exist")
        tok_text = _read_text(Path(tokenizer_file))
        given = tokenizer_from_json(tok_text, str(tokenizer_file)).kind
        if kind not in ("auto", given):
            raise ValueError(f"kind={kind!r} but tokenizer_file {tokenizer_file} holds a {given!r} tokenizer")
        kind = given
    elif kind == "auto":
        kind = "word" if src.is_dir() else "char"
    key = {
        "version": _CACHE_VERSION,
        "kind": kind,
        "bpe_vocab_size": bpe_vocab_size if kind == "bpe" else None,
        "val_fraction": val_fraction if src.is_file() else None,
        "files": {s: file_sha256(f) for s, f in files.items()},
        "tokenizer": hashlib.sha256(tok_text.encode()).hexdigest() if tok_text is not None else None,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache = root / f"{src.name}-{kind}-{digest}"
    if not (cache / "meta.json").is_file():
        if on_tokenize is not None:
            on_tokenize(f"tokenizing {src} ({kind}) once; the ids are cached in {cache}")
        _build_cache(cache, files, src.is_file(), kind, tok_text, bpe_vocab_size, val_fraction)
    meta = json.loads((cache / "meta.json").read_text())
    tokenizer = load_tokenizer(cache)
    splits = {
        s: np.memmap(cache / f"{s}.bin", dtype=meta["dtype"], mode="r", shape=(n,)) for s, n in meta["lengths"].items()
    }
    documents = {s: np.load(cache / f"{s}.docs.npy", allow_pickle=False) for s in meta["lengths"]}
    info = {"path": str(src), "kind": kind, "vocab_size": tokenizer.vocab_size, "tokens": dict(meta["lengths"])}
    if src.is_file():
        info["val_fraction"] = val_fraction  # so evaluation re-splits the file exactly as training did
    return Corpus(tokenizer, splits, str(src), str(cache), info, documents)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"cannot read {path} as UTF-8 text: {e}") from None
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None


def _split_files(src: Path) -> Dict[str, Path]:
    if src.is_file():
        return {"all": src}
    found = {s: src / name for s, name in WIKITEXT_SPLITS.items() if (src / name).is_file()}
    missing = [WIKITEXT_SPLITS[s] for s in ("train", "val") if s not in found]
    if missing:
        raise FileNotFoundError(
            f"{src} is a directory but lacks {missing}; expected wiki.train.tokens, wiki.valid.tokens "
            f"(and optionally wiki.test.tokens), or pass a single text file"
        )
    for f in found.values():
        if not os.access(f, os.R_OK):
            raise ValueError(f"cannot read {f}: permission denied")
    return found


def _lines(path: Path) -> Iterator[str]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            yield from f
    except UnicodeDecodeError as e:
        raise ValueError(f"cannot read {path} as UTF-8 text: {e}") from None


def _build_cache(
    cache: Path,
    files: Dict[str, Path],
    single_file: bool,
    kind: str,
    tok_text: Optional[str],
    bpe_vocab_size: int,
    val_fraction: float,
) -> None:
    """Tokenize every split into a temporary directory, then rename it into place (atomic)."""
    if single_file:
        text = _read_text(files["all"])
        if not text.strip():
            raise ValueError(f"corpus {files['all']} is empty")
        cut = int(len(text) * (1.0 - val_fraction))
        texts = {"train": text[:cut], "val": text[cut:]}
        split_lines = {s: (lambda t=t: iter(t.splitlines(keepends=True))) for s, t in texts.items()}
    else:
        split_lines = {s: (lambda f=f: _lines(f)) for s, f in files.items()}

    if tok_text is not None:
        tokenizer = tokenizer_from_json(tok_text, "tokenizer_file")
    elif kind == "char":
        tokenizer = CharTokenizer.from_text(
            text if single_file else "".join("".join(split_lines[s]()) for s in split_lines)
        )
    elif kind == "word":
        tokenizer = WordTokenizer.from_lines(split_lines["train"]())
    else:
        tokenizer = BPETokenizer.train(split_lines["train"](), bpe_vocab_size)

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(cache.parent, cache.name)
    try:
        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
        lengths = {}
        for s, lines in split_lines.items():
            lengths[s], documents = _write_ids(tmp / f"{s}.bin", _encode_lines(tokenizer, lines()), dtype)
            np.save(tmp / f"{s}.docs.npy", documents, allow_pickle=False)
        for s, n in lengths.items():
            if n == 0:
                where = files.get(s, files.get("all"))
                raise ValueError(f"the {s} split of {where} has no tokens (empty corpus or file too short)")
        save_tokenizer(tokenizer, tmp)
        atomic_write_text(
            tmp / "meta.json", json.dumps({"dtype": np.dtype(dtype).name, "lengths": lengths, "kind": kind})
        )
        fsync_dir(tmp)
        try:
            os.rename(tmp, cache)
        except OSError:  # another process built the same cache first
            if not (cache / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(cache.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _encode_lines(tokenizer: Tokenizer, lines: Iterator[str]) -> Iterator[Tuple[List[int], List[int]]]:
    """Ids of consecutive chunks of lines (their concatenation is the ids of the whole text), each
    with the offsets (into its ids) of its lines that start a document."""
    buf: List[str] = []
    for line in lines:
        buf.append(line)
        if len(buf) == _LINES_PER_CHUNK:
            yield _encode_chunk(tokenizer, buf)
            buf = []
    if buf:
        yield _encode_chunk(tokenizer, buf)


def _encode_chunk(tokenizer: Tokenizer, lines: List[str]) -> Tuple[List[int], List[int]]:
    if isinstance(tokenizer, WordTokenizer):  # every line (with or without its newline) ends with <eos>
        per_line = [tokenizer.encode_line(line) + [tokenizer.eos_id] for line in lines]
    elif isinstance(tokenizer, BPETokenizer):
        per_line = tokenizer.encode_lines(lines)
    else:
        per_line = [tokenizer.encode(line) for line in lines]
    ids: List[int] = []
    starts: List[int] = []
    for line, line_ids in zip(lines, per_line):
        if DOCUMENT_TITLE.fullmatch(line.rstrip("\r\n")):
            starts.append(len(ids))
        ids.extend(line_ids)
    return ids, starts


def _write_ids(path: Path, chunks: Iterable[Tuple[List[int], List[int]]], dtype: type) -> Tuple[int, np.ndarray]:
    """Write the ids of ``chunks`` to ``path``; their count and the documents' offsets ``[n_docs]``."""
    n, documents = 0, []
    with open(path, "wb") as f:
        for ids, starts in chunks:
            np.asarray(ids, dtype=dtype).tofile(f)
            documents.extend(n + i for i in starts)
            n += len(ids)
        f.flush()
        os.fsync(f.fileno())
    return n, np.asarray(documents, dtype=np.int64)
