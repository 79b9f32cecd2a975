"""Text data: the named corpora (shipped or downloaded by ``fastweights data``), tokenizers, and
corpora cached as token ids."""

from .corpora import SOURCES, fetch, resolve
from .text import TOKENIZER_FILE, Corpus, Tokenizer, load_corpus, load_tokenizer, save_tokenizer

__all__ = [
    "SOURCES",
    "TOKENIZER_FILE",
    "Corpus",
    "Tokenizer",
    "fetch",
    "load_corpus",
    "load_tokenizer",
    "resolve",
    "save_tokenizer",
]
