"""`fastweights bench lm`: a tiny CPU run writes every cell; failing cells are rows, not crashes; CUDA checks."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List

import pytest
import torch

from fastweights.bench import lm
from fastweights.cli import main
from fastweights.ops import list_backends

TINY = [
    "--d-model",
    "16",
    "--layers",
    "1",
    "--heads",
    "2",
    "--d-ff",
    "32",
    "--vocab",
    "32",
    "--tokens",
    "64",
    "--steps",
    "1",
    "--warmup",
    "1",
]
RULES = {"linear": "sum", "delta": "delta"}


def _bench(tmp_path: Path, *args: str) -> Dict:
    out = tmp_path / "lm.json"
    assert main(["bench", "lm", *TINY, "--json", str(out), *args]) == 0
    return json.loads(out.read_text())


def _check_rows(rows: List[Dict], contexts: List[int], device: str) -> None:
    assert {(r["attention"], r["context"]) for r in rows} == {(a, c) for a in ["softmax", *RULES] for c in contexts}
    for r in rows:
        assert r["note"] == "", r
        assert r["batch"] == max(1, 64 // r["context"])
        assert r["tokens_per_s"] > 0 and math.isfinite(r["loss"])
        if r["attention"] in RULES:
            assert r["impl"] in {b.name for b in list_backends(RULES[r["attention"]], device=device)}
        else:
            assert r["impl"] == "sdpa"


def test_tiny_cpu_run_writes_table_and_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    result = _bench(tmp_path, "--contexts", "16", "32")
    out = capsys.readouterr().out
    _check_rows(result["rows"], [16, 32], "cpu")
    assert result["meta"]["torch"] == torch.__version__ and result["meta"]["config"]["contexts"] == [16, 32]
    assert set(result["ratios"]) == {"16", "32"} and set(result["ratios"]["16"]) == {"linear", "delta"}
    assert lm.HEADER in out and "context 32: linear / softmax = " in out
    for r in result["rows"]:
        assert f"| {r['attention']} | {r['context']} | {r['batch']} | {r['tokens_per_s']:.0f} |" in out


def test_failing_cell_is_a_row(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The delta rule has no 'parallel' form: its cell fails with a note, the others still run."""
    rows = _bench(tmp_path, "--contexts", "16", "--impl", "parallel")["rows"]
    by_name = {r["attention"]: r for r in rows}
    assert by_name["linear"]["impl"] == "parallel" and by_name["softmax"]["tokens_per_s"] > 0
    assert "tokens_per_s" not in by_name["delta"] and by_name["delta"]["note"].startswith("ValueError: LMConfig.impl")
    assert "| delta | 16 | 4 | | | | | | ValueError: LMConfig.impl" in capsys.readouterr().out


def test_oom_and_non_finite_loss_are_noted(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(cfg: lm.LMBenchConfig, attention: str, context: int, batch: int) -> Dict:
        if attention == "delta":
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return dict(tokens_per_s=1.0, step_ms=1.0, peak_mb=1.0, impl="chunk", loss=float("nan"), warmup_s=0.0)

    monkeypatch.setattr(lm, "measure_cell", fake)
    cfg = lm.LMBenchConfig(attentions=["linear", "delta"], contexts=[16], tokens=64)
    rows = lm.run(cfg, log=lambda line: None)["rows"]
    assert [r["note"] for r in rows] == ["non-finite loss", "OOM"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "lm.json"
    assert main(["bench", "lm", "--device", "cuda", "--json", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err == "fastweights bench lm: error: --device cuda: CUDA is not available on this machine\n"
    assert captured.out == "" and not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tiny_cuda_run(tmp_path: Path) -> None:
    result = _bench(tmp_path, "--device", "cuda", "--contexts", "16", "32")
    _check_rows(result["rows"], [16, 32], "cuda")
    assert result["meta"]["autocast"] == ("bfloat16" if torch.cuda.is_bf16_supported() else None)
    assert all(r["peak_mb"] > 0 for r in result["rows"])
