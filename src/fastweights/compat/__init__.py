"""Module paths of earlier versions, kept importable with a ``DeprecationWarning``.

The package was reorganised into sub-packages (``data``, ``train``, ``evaluation``,
``experiments``, ``files``, ``cli``, ``bench``). Code that still imports an old path, e.g.
``from fastweights.tasks.text import load_tokenizer``, gets the module at its new path
(``fastweights.data.text``), the same module object, and a warning naming that path. An old
package that no longer exists (``fastweights.tasks``) comes back as an empty package that only
holds the aliases of its old modules.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings
from typing import Dict, Optional

MOVED: Dict[str, str] = {
    "fastweights.tasks.text": "fastweights.data.text",
    "fastweights.tasks.capacity": "fastweights.experiments.capacity",
    "fastweights.tasks.capacity_report": "fastweights.experiments.capacity_report",
    "fastweights.tasks.capacity_sweep": "fastweights.experiments.capacity_sweep",
    "fastweights.tasks.retrieval": "fastweights.experiments.retrieval",
    "fastweights.corpora": "fastweights.data.corpora",
    "fastweights.state": "fastweights.files.state",
    "fastweights.evaluate": "fastweights.evaluation.loss",
    "fastweights.variants": "fastweights.layers.spec",
    "fastweights.streams": "fastweights.train.streams",
    "fastweights.checkpoints": "fastweights.train.checkpoints",
    "fastweights.benchmark": "fastweights.bench",
    "fastweights.benchmark.ops": "fastweights.bench.ops",
    "fastweights.benchmark.lm": "fastweights.bench.lm",
    "fastweights.benchmark.kernels": "fastweights.bench.kernels",
}
REMOVED_PACKAGES = ("fastweights.tasks",)  #: old packages whose modules all moved elsewhere


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module path of :data:`MOVED` and loads it as the module at its new path."""

    def find_spec(self, name: str, path=None, target=None) -> Optional[importlib.machinery.ModuleSpec]:
        if name in MOVED or name in REMOVED_PACKAGES:
            return importlib.util.spec_from_loader(name, self, is_package=name in REMOVED_PACKAGES)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        if spec.name in REMOVED_PACKAGES:
            return types.ModuleType(spec.name, f"Deprecated: the modules of {spec.name} moved (fastweights.compat).")
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} is deprecated; import {new} instead", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the module is the one at the new path, already executed."""


def install() -> None:
    """Make the old paths importable (once per process)."""
    if not any(isinstance(f, MovedModules) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedModules())  # before the path finders, which would load a second copy
