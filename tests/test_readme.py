"""The README's usage examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _usage_blocks() -> list[str]:
    text = README.read_text()
    section = text.split("## Usage", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_usage_section_has_examples() -> None:
    assert len(_usage_blocks()) >= 2


def test_usage_examples_run(capsys: pytest.CaptureFixture) -> None:
    namespace: dict = {}
    for block in _usage_blocks():
        exec(compile(block, str(README), "exec"), namespace)  # blocks build on each other
    out = capsys.readouterr().out
    assert "True" in out and "torch.Size([2, 4, 128, 32])" in out
    assert "\nchunk\n" in out and "('delta', 'chunk')" in out
