"""Old module paths still import, as the module at the new path, with a DeprecationWarning."""

from __future__ import annotations

import importlib
import sys

import pytest

import fastweights  # noqa: F401  (installs the aliases)
from fastweights.compat import MOVED


@pytest.mark.parametrize("old", sorted(MOVED))
def test_an_old_path_is_the_new_module_with_a_warning(old: str, monkeypatch) -> None:
    for name in [n for n in sys.modules if n == old or n.startswith(old + ".")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated; import {MOVED[old]} instead"):
        module = importlib.import_module(old)
    assert module is importlib.import_module(MOVED[old])


def test_the_documented_old_import_still_works(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "fastweights.tasks.text", raising=False)
    with pytest.warns(DeprecationWarning):
        from fastweights.tasks.text import load_tokenizer
    from fastweights.data.text import load_tokenizer as new

    assert load_tokenizer is new


def test_unknown_old_paths_are_not_invented() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("fastweights.tasks.nothing_here")
