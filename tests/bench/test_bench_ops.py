"""`fastweights bench ops`: dtypes, key widths, token budgets, skipped backends, ratios, the CUDA path.

The CPU tests replace the matmul peak and the per-cell memory subprocess with constants (both take
seconds; `tests/cli/test_cli.py` runs them for real), so they check what is run and reported.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
import torch

from fastweights.bench import ops
from fastweights.cli import build_parser, main
from fastweights.ops import get_op, get_rule, list_backends, list_rules, register_backend, registry

CPU_ONLY = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
TINY = ["--heads", "2", "--dim", "8", "--repeat", "1"]


@pytest.fixture
def fast_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant matmul peak (100 GFLOP/s) and peak memory (1 MB) instead of measuring them."""
    monkeypatch.setattr(ops, "matmul_peak", lambda dtype="float32", device="cpu": 100.0)
    monkeypatch.setattr(ops, "peak_memory_mb", lambda cell, cfg: 1.0)


def _out_of_memory(*args: object) -> None:
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 PiB")


@pytest.fixture
def throwaway_backends() -> Iterator[None]:
    """Sum-rule backends 'f64only' (the chunk form, declared for float64 only) and 'oom' (always out of memory)."""
    chunk = next(b for b in list_backends("sum") if b.name == "chunk")
    added = [
        dataclasses.replace(chunk, name="f64only", dtypes=(torch.float64,), priority=None),
        dataclasses.replace(chunk, name="oom", run=_out_of_memory, priority=None),
    ]
    for b in added:
        register_backend(b)
    yield
    for b in added:
        registry._BACKENDS.pop((b.rule, b.name))


def _bench(tmp_path: Path, *argv: str) -> Dict:
    path = tmp_path / "ops.json"
    assert main(["bench", "ops", *argv, *TINY, "--json", str(path)]) == 0
    return json.loads(path.read_text())


def _cells(rows: List[Dict], *keys: str) -> set:
    return {tuple(r[k] for k in keys) for r in rows}


def test_dtypes_and_key_widths_each_get_rows(tmp_path: Path, fast_cpu: None, capsys: pytest.CaptureFixture) -> None:
    result = _bench(
        tmp_path, "--rules", "delta", "--lengths", "64", "128", "--dtypes", "float32", "bfloat16", "--dk", "8", "16"
    )
    rows = result["rows"]
    assert _cells(rows, "form", "dtype", "d_k", "L") == {
        (f, dt, dk, L)
        for f in ("naive", "chunk")
        for dt in ("float32", "bfloat16")
        for dk in (8, 16)
        for L in (64, 128)
    }
    assert all("fwd_ms" in r and r["B"] == 1 and r["d_v"] == 8 and r["peak_mb"] == 1.0 for r in rows)
    assert [r["form"] for r in rows[:2]] == ["naive", "naive"]  # references first, as before
    meta = result["meta"]
    assert meta["device"] == "cpu" and meta["torch"] == torch.__version__
    assert meta["matmul_peak_gflops"] == {"float32": [100.0, 100.0]}  # cpu: the fp32 peak for every dtype
    assert {(e["dtype"], e["d_k"], e["L"]) for e in result["ratios"]} == _cells(rows, "dtype", "d_k", "L")
    out = capsys.readouterr().out
    assert "| delta | chunk | bfloat16 | 16 | 1 | 128 |" in out
    assert "- delta bfloat16 d_k=16 L=128: " in out and "% of peak: against the best float32 peak" in out


def test_tokens_fix_batch_times_length(tmp_path: Path, fast_cpu: None) -> None:
    result = _bench(tmp_path, "--rules", "sum", "--impls", "chunk", "--lengths", "64", "128", "--tokens", "256")
    assert _cells(result["rows"], "B", "L") == {(4, 64), (2, 128)}
    assert result["ratios"] == []  # one form: nothing to compare


def test_a_backend_that_cannot_run_a_cell_is_a_skipped_row(
    tmp_path: Path, fast_cpu: None, throwaway_backends: None
) -> None:
    result = _bench(
        tmp_path,
        "--rules",
        "sum",
        "--impls",
        "chunk",
        "f64only",
        "oom",
        "step",
        "fla",
        "--lengths",
        "64",
        "128",
        "--dtypes",
        "float32",
        "float64",
    )
    notes = {(r["form"], r["dtype"], r["L"]): r.get("note", "") for r in result["rows"]}
    assert all("fwd_ms" in r for r in result["rows"] if r["form"] == "chunk")
    assert notes[("f64only", "float32", 64)] == "skipped: it takes float64, the inputs are torch.float32"
    assert notes[("f64only", "float64", 64)] == ""  # its declared dtype: measured
    assert notes[("oom", "float32", 64)] == "skipped: out of memory: CUDA out of memory. Tried to allocate 1 PiB"
    assert notes[("oom", "float32", 128)] == "skipped: out of memory at L=64"  # longer lengths are not tried
    assert notes[("step", "float32", 64)].startswith("skipped: it takes one token")
    assert notes[("fla", "float32", 64)].startswith("skipped: it ")  # not installed, or not on cpu


def test_device_defaults() -> None:
    cuda = ops.configured("cuda")
    assert (cuda.lengths, cuda.tokens, cuda.heads, cuda.dim, cuda.d_ks, cuda.dtypes) == (
        [1024, 4096, 16384],
        32768,
        16,
        64,
        [64, 256],
        ["bfloat16"],
    )
    assert [cuda.batch_for(L) for L in cuda.lengths] == [32, 8, 2]
    assert cuda.json == "benchmarks/results/ops_cuda.json"
    assert ops.configured("cuda", batch=3, dim=32).tokens is None
    assert ops.configured("cuda", dim=32).d_ks == [32, 128]
    assert ops.configured("cpu") == ops.BenchConfig(json="benchmarks/results/ops.json")
    assert ops.BenchConfig(dim=16).d_ks == [16]


def test_ratios_compare_forms_fla_and_softmax() -> None:
    def row(rule: str, form: str, fwd: float, fwdbwd: float) -> Dict:
        return dict(rule=rule, form=form, dtype="bfloat16", d_k=64, d_v=64, B=8, L=4096, fwd_ms=fwd, fwdbwd_ms=fwdbwd)

    rows = [
        row("delta", "chunk", 4.0, 10.0),
        row("delta", "fla", 1.0, 2.0),
        row("softmax", "sdpa", 3.0, 8.0),
        dict(rule="delta", form="naive", dtype="bfloat16", d_k=64, d_v=64, B=8, L=4096, note="skipped: slow"),
    ]
    (entry,) = ops.ratios(rows)
    assert entry["fastest"] == "fla" and entry["relative"] == {"chunk": 5.0, "fla": 1.0}
    assert entry["fla_over_chunk"] == {"fwd_ms": 0.25, "fwdbwd_ms": 0.2}
    assert entry["softmax_over_fastest"] == 4.0
    (line,) = ops.format_ratios([entry])
    assert line == (
        "- delta bfloat16 d_k=64 L=4096: fla 1.00x, chunk 5.00x (fastest fla, 2.00 ms); "
        "fla / chunk 0.25 fwd, 0.20 fwd+bwd; softmax sdpa 4.00x"
    )


def test_help_lists_the_new_options(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "ops", "--help"])
    out = capsys.readouterr().out
    for option in ("--device", "--dtypes", "--tokens", "--batch", "--impls", "--dk"):
        assert option in out


@CPU_ONLY
def test_cuda_without_cuda_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "ops", "--device", "cuda", "--json", str(tmp_path / "x.json")]) == 2
    captured = capsys.readouterr()
    assert captured.err == "fastweights bench ops: error: --device cuda: CUDA is not available on this machine\n"
    assert captured.out == "" and not (tmp_path / "x.json").exists()


@pytest.mark.gpu
@NEEDS_CUDA
def test_tiny_cuda_benchmark(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = _bench(
        tmp_path,
        "--device",
        "cuda",
        "--impls",
        "naive",
        "chunk",
        "--lengths",
        "64",
        "128",
        "--tokens",
        "256",
        "--dk",
        "8",
        "16",
        "--dtypes",
        "float32",
        "bfloat16",
        "--peers",
    )
    rows = result["rows"]
    assert result["meta"]["device_name"] == torch.cuda.get_device_name()
    assert set(result["meta"]["matmul_peak_gflops"]) == {"float32", "bfloat16"}
    chunk = [r for r in rows if r["form"] == "chunk"]
    assert len(chunk) == 2 * 2 * 2 * 2 and all(r["peak_mb"] > 0 and r["frac_of_peak"] > 0 for r in chunk)
    softmax = [r for r in rows if r["rule"] == "softmax"]
    assert _cells(softmax, "form", "dtype", "d_k", "B", "L") == {
        ("sdpa", "bfloat16", 8, 4, 64),
        ("sdpa", "bfloat16", 8, 2, 128),
    }
    assert all("fwd_ms" in r for r in softmax)
    assert any("softmax_over_fastest" in e for e in result["ratios"])
    assert "cuda: " in capsys.readouterr().out


@pytest.mark.parametrize("rule", list_rules())
def test_every_rule_gets_its_inputs_in_their_shapes_and_runs(rule: str) -> None:
    """The inputs of a cell follow the rule's contract (per head, or per key channel), so every
    rule's default backend runs them."""
    cell = ops.Cell(rule, "naive", 1, 5, 2, 4, 3, "float64", "cpu")
    x = ops.make_inputs(cell)
    spec = get_rule(rule)
    for name in spec.learned:
        assert x[name].shape == ((1, 5, 2, 4) if name in spec.per_channel else (1, 5, 2))
    extra = {name: x[name] for name in spec.learned}
    o, _ = get_op(rule)(x["q"], x["k"], x["v"], x["beta"], **extra)
    assert o.shape == (1, 5, 2, 3)
