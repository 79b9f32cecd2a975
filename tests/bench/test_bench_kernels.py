"""`fastweights bench kernels`: the Triton kernels the backend launches fit real GPUs (compiled offline).

The command compiles for sm_80 and sm_90 with no GPU, in processes started without
``TRITON_INTERPRET``; CI runs a subset (the full grid is ``fastweights bench kernels`` with its
defaults, a few minutes on two cores): the delta rule, which launches every kernel, in bf16 at
d_k = 64 and in fp32 at d_k = 256, the sum rule at odd widths (also on sm_86's smaller shared
memory) and the gated delta rule at d_k = 128.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "fastweights.cli",
            "bench",
            "kernels",
            "--workers",
            "2",
            "--cache-dir",
            str(tmp_path / "cache"),
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
    )


@pytest.mark.parametrize(
    "archs,args",
    [
        ("sm_80,sm_90", ("--rules", "delta", "--dtype", "bf16", "--dk", "64")),
        ("sm_80,sm_90", ("--rules", "delta", "--dtype", "fp32", "--dk", "256")),
        ("sm_86,sm_90", ("--rules", "sum", "--dtype", "fp16", "--dk", "32,48", "--dv", "100")),
        ("sm_80,sm_90", ("--rules", "gated_delta", "--dtype", "bf16,fp32", "--dk", "128")),
    ],
    ids=["delta-bf16-64", "delta-fp32-256", "sum-fp16-32x100", "gated-bf16-fp32-128"],
)
def test_launched_kernels_fit(tmp_path: Path, archs: str, args) -> None:
    out = tmp_path / "rows.json"
    result = _bench(tmp_path, "--arch", archs, *args, "--json", str(out))
    rows = json.loads(out.read_text())
    kernels = {r["kernel"] for r in rows}
    assert {"state_fwd", "output_fwd", "dv_local", "state_bwd", "grads_qk"} <= kernels
    assert {r["arch"] for r in rows} == set(archs.split(","))
    bad = [r for r in rows if not r["fits"]]
    assert not bad and result.returncode == 0, f"kernels that do not fit: {bad}\n{result.stdout[-2000:]}"
    assert all(r["spilled"] == 0 and 0 < r["shared"] <= r["limit"] and r["registers"] <= 255 for r in rows)


def test_a_kernel_that_does_not_fit_is_reported() -> None:
    """The check can fail: output_fwd forced to one 256 x 256 fp32 tile with 4 stages spills and
    overflows sm_86's shared memory."""
    from fastweights.bench.kernels import Job, run

    job = Job(
        "sum",
        "output_fwd",
        86,
        "fp32",
        256,
        256,
        64,
        override=(("BK", 256), ("BV", 256), ("num_stages", 4), ("PRECISION", "ieee")),
    )
    (row,) = run([job], workers=1, progress=False)
    assert not row.fits and (row.spilled > 0 or row.shared > row.limit)


def test_bad_arguments_are_one_line(tmp_path: Path) -> None:
    result = _bench(tmp_path, "--arch", "sm_75")
    assert result.returncode == 2 and "'sm_75' is not one of" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_shape_no_candidate_fits_is_declined_naming_the_limit(monkeypatch) -> None:
    """Where no candidate of some kernel fits, the backend declines the inputs with one line naming the
    kernel, the GPU, the shape and what overflows (the measurements stubbed here: nothing compiles)."""
    import torch

    from fastweights.ops._triton import fit

    def chosen(kernel, delta, gated, dtype, d_k, d_v, chunk, capability):
        config = fit.plan(delta, dtype, d_k, d_v, chunk, capability, gated)[kernel][0]
        return config, fit.Resources(255, 16 if kernel == "state_bwd" else 0, 6144, 166_912)

    monkeypatch.setattr(fit, "chosen", chosen)
    assert fit.unfit(True, True, torch.bfloat16, 256, 20, 80) == (
        "its Triton kernel state_bwd has no launch configuration that fits sm_80 for d_k = 256, d_v = 20 in "
        "bfloat16: with 4 warps it spills 16 bytes of registers to local memory (255 registers)"
    )
    monkeypatch.setattr(fit, "chosen", lambda kernel, *args: (None, fit.Resources(128, 0, 6144, 166_912)))
    assert fit.unfit(False, False, torch.bfloat16, 64, 64, 80) is None


def test_preferred_mode_measures_nothing(monkeypatch) -> None:
    """FASTWEIGHTS_TRITON_FIT=preferred (the GPU script's test step): the preferred candidate, unmeasured."""
    import torch

    from fastweights.ops._triton import fit

    monkeypatch.setenv("FASTWEIGHTS_TRITON_FIT", "preferred")
    monkeypatch.setattr(fit, "measure", lambda *args: pytest.fail("measured"))
    fit.chosen.cache_clear()
    config, resources = fit.chosen("state_bwd", True, True, torch.bfloat16, 256, 20, 64, 80)
    assert resources is None and config == fit.plan(True, torch.bfloat16, 256, 20, 64, 80, True)["state_bwd"][0]
    assert fit.unfit(True, True, torch.bfloat16, 256, 20, 80) is None
    fit.chosen.cache_clear()
