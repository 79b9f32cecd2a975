"""Corpora and tokenizers: char / word / BPE on tiny generated files and on ../shared/data, the cache, errors."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from fastweights.data import text
from fastweights.data.text import (
    BPETokenizer,
    CharTokenizer,
    WordTokenizer,
    check_same_tokenizer,
    load_corpus,
    load_tokenizer,
    save_tokenizer,
)

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"
WIKI_TEST = DATA / "wikitext-2" / "wiki.test.tokens"


def sample_text(n_lines: int = 200, seed: int = 0) -> str:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "on", "a", "mat", "and", "dog", "ran", "far", "away", ",", "."]
    return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(0, 9))) + "\n" for _ in range(n_lines))


def test_char_corpus_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "t.txt"
    content = sample_text()
    src.write_text(content)
    corpus = load_corpus(src, cache_dir=tmp_path / "cache")
    tok = corpus.tokenizer
    assert tok.kind == "char" and tok.vocab == sorted(set(content))
    cut = int(len(content) * 0.9)
    assert len(corpus.train) == cut and len(corpus.val) == len(content) - cut
    assert isinstance(corpus.train, np.memmap)
    assert corpus.info["val_fraction"] == 0.1  # recorded, so evaluation re-splits the same way
    assert tok.decode(corpus.train.tolist()) + tok.decode(corpus.val.tolist()) == content
    # a second load opens the cache without tokenizing again
    monkeypatch.setattr(text, "_build_cache", lambda *a, **k: pytest.fail("cache not reused"))
    again = load_corpus(src, cache_dir=tmp_path / "cache")
    assert np.array_equal(again.train, corpus.train) and again.cache == corpus.cache
    # a changed file is a different corpus
    monkeypatch.undo()
    src.write_text(content + "zebra\n")
    assert load_corpus(src, cache_dir=tmp_path / "cache").cache != corpus.cache


def test_word_corpus_from_directory(tmp_path: Path) -> None:
    (tmp_path / "wiki.train.tokens").write_text(" = A = \n\n the cat sat the \n the dog \n")
    (tmp_path / "wiki.valid.tokens").write_text(" the cow sat \n")
    (tmp_path / "wiki.test.tokens").write_text(" cat \n")
    corpus = load_corpus(tmp_path, cache_dir=tmp_path / "cache")
    tok = corpus.tokenizer
    assert tok.kind == "word" and tok.vocab[:2] == ["<eos>", "the"]  # most frequent first (4 lines, 3 x "the")
    assert set(corpus.splits) == {"train", "val", "test"}
    assert tok.decode(corpus.train.tolist()) == "= A =\n\nthe cat sat the\nthe dog\n"
    assert tok.decode(corpus.val.tolist()) == "the <unk> sat\n"  # "cow" is not in the training vocabulary
    assert corpus.splits["test"].tolist() == [tok.vocab.index("cat"), tok.eos_id]
    assert tok.encode("the dog\nthe") == [tok.vocab.index(w) for w in ["the", "dog", "<eos>", "the"]]


@pytest.mark.parametrize("kind", ["word", "char", "bpe"])
def test_documents_start_at_the_title_lines(tmp_path: Path, kind: str) -> None:
    """A `` = Title = `` line starts a document (offset of its first token); section headings
    (`` = = S = = ``), an ``=`` inside a line and text without titles do not."""
    train = " = A = \n\n the cat = sat \n = = Section = = \n the dog \n = Bb cc = \n cat \n"
    (tmp_path / "wiki.train.tokens").write_text(train)
    (tmp_path / "wiki.valid.tokens").write_text(" the cow sat \n = = S = = \n")
    corpus = load_corpus(tmp_path, kind=kind, cache_dir=tmp_path / "cache", bpe_vocab_size=300)
    lines = train.splitlines(keepends=True)
    starts = []
    for i in (0, 5):  # the title lines
        prefix = "".join(lines[:i])
        if kind == "word":
            starts.append(sum(len(line.split()) + 1 for line in lines[:i]))
        elif kind == "char":
            starts.append(len(prefix))
        else:
            starts.append(sum(len(corpus.tokenizer.encode(line)) for line in lines[:i]))
    assert corpus.documents["train"].tolist() == starts and corpus.documents["train"].dtype == np.int64
    assert corpus.documents["val"].tolist() == []
    assert corpus.tokenizer.decode(corpus.train[starts[1] :].tolist()).lstrip().startswith("= Bb cc =")


@pytest.mark.skipif(not WIKI_TEST.is_file(), reason="../shared/data/wikitext-2 not present")
def test_word_corpus_on_real_wikitext(tmp_path: Path) -> None:
    lines = WIKI_TEST.read_text(encoding="utf-8").splitlines(keepends=True)
    (tmp_path / "wiki.train.tokens").write_text("".join(lines[:3000]), encoding="utf-8")
    (tmp_path / "wiki.valid.tokens").write_text("".join(lines[3000:3400]), encoding="utf-8")
    corpus = load_corpus(tmp_path, cache_dir=tmp_path / "cache")
    assert len(corpus.train) == sum(len(line.split()) + 1 for line in lines[:3000])
    assert len(corpus.val) == sum(len(line.split()) + 1 for line in lines[3000:3400])
    tok = corpus.tokenizer
    assert tok.decode(corpus.train[: len(lines[1].split()) + 2].tolist()) == "\n" + " ".join(lines[1].split()) + "\n"
    titles = [i for i, line in enumerate(lines[:3000]) if line.startswith(" = ") and not line.startswith(" = = ")]
    assert len(titles) > 5 and len(corpus.documents["train"]) == len(titles)  # its articles
    for offset in corpus.documents["train"]:
        assert tok.decode(corpus.train[offset : offset + 1].tolist()) == "=" and corpus.train[offset - 1] == tok.eos_id
    # the real directory has only the test split: a clear error
    with pytest.raises(FileNotFoundError, match="wiki.train.tokens"):
        load_corpus(WIKI_TEST.parent, cache_dir=tmp_path / "cache")


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason="../shared/data/tinyshakespeare not present")
def test_char_corpus_on_tiny_shakespeare(tmp_path: Path) -> None:
    corpus = load_corpus(SHAKESPEARE, cache_dir=tmp_path)
    assert corpus.tokenizer.vocab_size == 65
    assert len(corpus.train) + len(corpus.val) == len(SHAKESPEARE.read_text(encoding="utf-8"))
    assert corpus.tokenizer.decode(corpus.train[:14].tolist()) == "First Citizen:"
    assert corpus.train.dtype == np.uint16


def test_bpe_train_and_load(tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    content = sample_text(400)
    src.write_text(content)
    corpus = load_corpus(src, "bpe", bpe_vocab_size=300, cache_dir=tmp_path / "cache")
    tok = corpus.tokenizer
    assert isinstance(tok, BPETokenizer) and tok.vocab_size <= 300
    assert tok.decode(corpus.train.tolist()) + tok.decode(corpus.val.tolist()) == content
    assert len(corpus.train) < int(len(content) * 0.9)  # merges compress
    save_tokenizer(tok, tmp_path)
    again = load_corpus(src, tokenizer_file=tmp_path / "tokenizer.json", cache_dir=tmp_path / "cache")
    assert again.tokenizer.kind == "bpe" and np.array_equal(again.train, corpus.train)
    assert load_tokenizer(tmp_path).encode("the cat") == tok.encode("the cat")
    with pytest.raises(ValueError, match="holds a 'bpe' tokenizer"):
        load_corpus(src, "char", tokenizer_file=tmp_path / "tokenizer.json", cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match="bpe_vocab_size"):
        load_corpus(src, "bpe", bpe_vocab_size=100, cache_dir=tmp_path / "cache")


@pytest.mark.parametrize("tok", [CharTokenizer(list("abc \n")), WordTokenizer(["<eos>", "<unk>", "hi", "there"])])
def test_tokenizer_save_load_and_mismatch(tmp_path: Path, tok) -> None:
    save_tokenizer(tok, tmp_path)
    loaded = load_tokenizer(tmp_path)
    assert loaded.kind == tok.kind and loaded.vocab == tok.vocab
    assert loaded.decode(loaded.encode("hi there\nhi" if tok.kind == "word" else "abc ba")) == (
        "hi there\nhi" if tok.kind == "word" else "abc ba"
    )
    check_same_tokenizer(loaded, tmp_path)
    with pytest.raises(ValueError, match="vocabulary mismatch"):
        check_same_tokenizer(CharTokenizer(list("abcd")), tmp_path)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "nope.txt", cache_dir=tmp_path)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(ValueError, match="is empty"):
        load_corpus(tmp_path / "empty.txt", cache_dir=tmp_path)
    (tmp_path / "blank.txt").write_text(" \n\n ")
    with pytest.raises(ValueError, match="is empty"):
        load_corpus(tmp_path / "blank.txt", cache_dir=tmp_path)
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00abc" * 10)
    with pytest.raises(ValueError, match="UTF-8"):
        load_corpus(tmp_path / "binary.txt", cache_dir=tmp_path)
    (tmp_path / "short.txt").write_text("a")
    with pytest.raises(ValueError, match="the train split .* has no tokens"):
        load_corpus(tmp_path / "short.txt", cache_dir=tmp_path)
    d = tmp_path / "wiki"
    d.mkdir()
    (d / "wiki.train.tokens").write_text("a b\n")
    with pytest.raises(FileNotFoundError, match="wiki.valid.tokens"):
        load_corpus(d, cache_dir=tmp_path)
    (d / "wiki.valid.tokens").write_text("")
    with pytest.raises(ValueError, match="the val split .* has no tokens"):
        load_corpus(d, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="kind must be"):
        load_corpus(d, "sentencepiece", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="val_fraction"):
        load_corpus(tmp_path / "short.txt", val_fraction=1.0, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="character 'z' is not in the vocabulary"):
        CharTokenizer(list("ab")).encode("abz")
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "tok.json").write_text(json.dumps({"version": "1.0"}))
    with pytest.raises(ValueError, match="neither a fastweights nor a `tokenizers` tokenizer"):
        load_tokenizer(tmp_path / "tok.json")
    assert not list(tmp_path.glob(".*")), "a failed build left temporary files"


# ---------------------------------------------------------------------------- tokenizer.json as `tokenizers` JSON
TRICKY = [
    "",
    "\n",
    "the cat\nsat",
    "\n the  cat \t\n\n<eos> x<eos>y dog\r\n",
    "a\x1cb\u3000c\u2028d\xa0e",
    "ünï cödé ☃\n\n",
]


@pytest.mark.parametrize("kind", ["char", "word"])
def test_tokenizer_json_is_a_tokenizers_json_with_our_ids(tmp_path: Path, kind: str) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    text = "".join(TRICKY) + sample_text(30)
    ours = CharTokenizer.from_text(text) if kind == "char" else WordTokenizer.from_lines(text.splitlines())
    save_tokenizer(ours, tmp_path)
    theirs = HFTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert theirs.get_vocab_size() == ours.vocab_size
    for s in TRICKY + [sample_text(5, seed=1), "the zebra\n" if kind == "word" else "cat"]:
        ids = ours.encode(s)
        assert theirs.encode(s).ids == ids
        assert theirs.decode(ids) == ours.decode(ids)
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(ours) and loaded.vocab == ours.vocab


def test_whitespace_is_pythons() -> None:
    import re
    import sys

    python = {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()}
    matched = {c for c in map(chr, range(sys.maxunicode + 1)) if re.fullmatch(f"[{text.WHITESPACE}]", c)}
    assert matched == python


@pytest.mark.parametrize("tok", [CharTokenizer(list("abc \n")), WordTokenizer(["<eos>", "<unk>", "hi", "there"])])
def test_earlier_tokenizer_files_are_still_read(tmp_path: Path, tok) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps({"fastweights_tokenizer": tok.kind, "vocab": tok.vocab}))
    loaded = load_tokenizer(tmp_path)
    assert type(loaded) is type(tok) and loaded.vocab == tok.vocab
    check_same_tokenizer(tok, tmp_path)


def test_other_word_level_tokenizers_stay_generic(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    tok = HFTokenizer.from_str(WordTokenizer(["<eos>", "<unk>", "hi"]).to_json())
    tok.add_special_tokens(["<pad>"])  # not what WordTokenizer writes: read as a plain `tokenizers` tokenizer
    (tmp_path / "tokenizer.json").write_text(tok.to_str())
    loaded = load_tokenizer(tmp_path)
    assert isinstance(loaded, BPETokenizer) and loaded.vocab_size == 4
