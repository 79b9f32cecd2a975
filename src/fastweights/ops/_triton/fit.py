"""Whether a kernel's launch configuration fits a GPU, known before it ever runs.

:func:`measure` compiles one kernel with one configuration ahead of time for a GPU architecture
(Triton's compiler with a ``GPUTarget``: no GPU needed) and reads its registers per thread and the
bytes it spills to local memory from the ``ptxas`` Triton runs (``-v``), and its shared memory from
Triton's metadata. It *fits* when nothing spills and the shared memory is within the architecture's
per-block limit (:data:`.launch.SHARED_LIMIT`).

:func:`choose` walks a kernel's candidate configurations (:func:`.launch.plan`, the preferred one
first) and takes the first that fits; only candidates before it are ever compiled. The backend
does this on a GPU the first time it meets a shape (and :func:`unfit` for ``impl="auto"``, which
then takes the torch path where no candidate fits); ``fastweights bench kernels`` does the same
offline, so its table is what the backend launches. Results are cached in memory and on disk
(``$XDG_CACHE_HOME/fastweights/kernels``, keyed on the kernels' source, Triton's version, the
configuration and the shape).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch

from . import default_cache_dir
from .launch import SHARED_LIMIT, KernelConfig, family, plan, signature

log = logging.getLogger(__name__)

#: per-call flags, measured at their most demanding setting
FLAGS = {"HAS_H0": True, "STORE_FINAL": True, "HAS_DHT": True}
#: ints a launch passes (``H`` as a multiple of 16: a launch specialises ints divisible by 16)
HEADS = 16


@dataclass(frozen=True)
class Resources:
    """What one compiled kernel uses per thread / per block, and the architecture's shared-memory limit."""

    registers: int
    spilled: int
    shared: int
    limit: int

    @property
    def fits(self) -> bool:
        return self.spilled == 0 and self.shared <= self.limit

    def why_not(self) -> str:
        """Why it does not fit (empty when it does)."""
        reasons = []
        if self.spilled:
            reasons.append(f"spills {self.spilled:,} bytes of registers to local memory ({self.registers} registers)")
        if self.shared > self.limit:
            reasons.append(f"needs {self.shared:,} bytes of shared memory, the limit is {self.limit:,}")
        return " and ".join(reasons)


def _sources_digest() -> str:
    """The kernels' and this module's source (what a measurement depends on besides Triton)."""
    from . import backward, blocks, common, forward, launch

    h = hashlib.sha256()
    for module in (common, blocks, forward, backward, launch, sys.modules[__name__]):
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()


def _ptxas_usage(ptx: str, arch: int) -> Tuple[int, int]:
    """Registers per thread and bytes of spill stores that Triton's own ptxas reports for ``ptx``."""
    from triton.backends.nvidia.compiler import get_ptxas, sm_arch_from_capability

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        cmd = [
            get_ptxas(arch).path,
            "-lineinfo",
            "-v",
            "--regAllocOptLevel=2",
            f"--gpu-name={sm_arch_from_capability(arch)}",
            str(src),
            "-o",
            str(Path(tmp) / "kernel.cubin"),
        ]
        log = subprocess.run(cmd, capture_output=True, text=True, check=True).stderr
    registers = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores", log)
    if registers is None or spills is None:
        raise RuntimeError(f"ptxas reported no register usage: {log!r}")
    return int(registers.group(1)), int(spills.group(1))


def measure(
    kernel: str,
    config: KernelConfig,
    dtype: torch.dtype,
    d_k: int,
    d_v: int,
    arch: int,
    cache_dir: Optional[Path] = None,
) -> Resources:
    """Compile ``kernel`` with ``config`` for ``dtype`` inputs of widths ``d_k``, ``d_v`` on ``arch``
    (e.g. 90) and return its resources (read from ``cache_dir`` when measured before)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .chunk import KERNELS

    key = hashlib.sha256(
        repr(
            (
                _sources_digest(),
                triton.__version__,
                kernel,
                sorted(config.constexprs.items()),
                config.num_warps,
                config.num_stages,
                str(dtype),
                d_k,
                d_v,
                arch,
            )
        ).encode()
    ).hexdigest()
    cache = Path(cache_dir) / f"{key[:32]}.json" if cache_dir is not None else None
    if cache is not None and cache.exists():
        return Resources(**json.loads(cache.read_text()))
    fn = KERNELS[kernel]
    if not isinstance(fn, triton.JITFunction):
        raise RuntimeError("the kernels were imported under TRITON_INTERPRET=1: they can be run, not compiled")
    constexprs = dict(config.constexprs, **{f: v for f, v in FLAGS.items() if f in fn.arg_names})
    sig = signature(fn, dtype, constexprs)
    ints = {"H": HEADS, "K": d_k, "V": d_v}
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if sig[name].startswith("*") or (name in ints and ints[name] % 16 == 0)
    }
    compiled = triton.compile(
        ASTSource(fn, sig, constexprs=constexprs, attrs=attrs),
        target=GPUTarget("cuda", arch, 32),
        options=dict(num_warps=config.num_warps, num_stages=config.num_stages),
    )
    registers, spilled = _ptxas_usage(compiled.asm["ptx"], arch)
    result = Resources(registers, spilled, compiled.metadata.shared, SHARED_LIMIT[arch])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(result)))
        tmp.replace(cache)
    return result


def choose(
    kernel: str,
    candidates: Sequence[KernelConfig],
    dtype: torch.dtype,
    d_k: int,
    d_v: int,
    arch: int,
    cache_dir: Optional[Path] = None,
) -> Tuple[int, KernelConfig, Resources]:
    """The first of ``candidates`` that fits, its index and its resources; when none fits, the first
    candidate (index 0) and its resources."""
    first = None
    for i, config in enumerate(candidates):
        resources = measure(kernel, config, dtype, d_k, d_v, arch, cache_dir)
        if resources.fits:
            return i, config, resources
        first = first or (0, config, resources)
    return first


@functools.lru_cache(maxsize=None)
def chosen(
    kernel: str, delta: bool, gated: bool, dtype: torch.dtype, d_k: int, d_v: int, chunk: int, capability: int
) -> Tuple[KernelConfig, Optional[Resources]]:
    """The configuration the backend launches ``kernel`` with on a GPU of ``capability`` (see
    :func:`choose`; the disk cache at :func:`default_cache_dir`). With the environment variable
    ``FASTWEIGHTS_TRITON_FIT=preferred`` nothing is measured: the preferred candidate, resources None
    (they fit for ``d_k = d_v`` in 16..256 on sm_80/86/89/90, docs/kernels.md); so too, with a
    warning, when measuring fails."""
    candidates = plan(delta, dtype, d_k, d_v, chunk, capability, gated)[kernel]
    if os.environ.get("FASTWEIGHTS_TRITON_FIT") == "preferred":
        return candidates[0], None
    arch = capability if capability in SHARED_LIMIT else family(capability)  # measured as its family where unknown
    try:
        _, config, resources = choose(kernel, candidates, dtype, d_k, d_v, arch, default_cache_dir())
    except (OSError, RuntimeError, subprocess.CalledProcessError) as e:  # no ptxas, an unwritable cache, ...
        log.warning(
            "could not measure the Triton kernel %s (%s: %s); launching its preferred configuration",
            kernel,
            type(e).__name__,
            e,
        )
        return candidates[0], None
    return config, resources


def unfit(
    delta: bool, gated: bool, dtype: torch.dtype, d_k: int, d_v: int, capability: int, chunk: int = 64
) -> Optional[str]:
    """Why the kernels of a call cannot run on a GPU of ``capability`` (no candidate of some kernel
    fits), or ``None``."""
    for kernel in plan(delta, dtype, d_k, d_v, chunk, capability, gated):
        config, resources = chosen(kernel, delta, gated, dtype, d_k, d_v, chunk, capability)
        if resources is not None and not resources.fits:
            return (
                f"its Triton kernel {kernel} has no launch configuration that fits sm_{capability} for "
                f"d_k = {d_k}, d_v = {d_v} in {str(dtype).replace('torch.', '')}: with {config.num_warps} warps "
                f"it {resources.why_not()}"
            )
    return None
