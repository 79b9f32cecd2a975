"""fastweights' Triton kernels (imported only where Triton is installed; this package root needs none)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """Where kernel fitness measurements are kept (shared by the backend and ``fastweights bench kernels``)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fastweights" / "kernels"
