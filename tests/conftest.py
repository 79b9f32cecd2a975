"""Shared fixtures: devices to run on (CUDA only where present) and deterministic seeds.

Without CUDA, Triton kernels run under Triton's interpreter on CPU tensors: the variable must be set
before Triton is first imported, so it is set here, before any test module loads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=["cpu", "cuda"])
def device(request) -> str:
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    return request.param


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    """A small word-level text file (``corpus.txt``), the same for every test that asks for it."""
    rng = np.random.default_rng(0)
    words = ["to be", "or not", "that is", "the question", "whether", "'tis nobler", "in the mind"]
    path = tmp_path / "corpus.txt"
    path.write_text("".join(" ".join(rng.choice(words, 6)) + ".\n" for _ in range(300)))
    return path


@pytest.fixture
def scratch_registries():
    """Rules, backends, feature maps and synthetic tasks registered in a test are gone afterwards."""
    from fastweights import feature_maps
    from fastweights.experiments import synthetic
    from fastweights.ops import registry

    registry._discover()
    saved = [(d, dict(d)) for d in (registry._RULES, registry._BACKENDS, feature_maps._REGISTRY, synthetic._TASKS)]
    yield
    for registered, before in saved:
        registered.clear()
        registered.update(before)
