"""save_state / load_state: exact round trips, and a paused-and-restored stream == an uninterrupted one."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from fastweights.files.state import load_state, save_state

from ..tiny_lm import tiny_model


def test_round_trip_keeps_nesting_dtypes_and_scalars(tmp_path) -> None:
    state = {
        "pos": 41,
        "layers": [
            {"S": torch.randn(2, 3, 4, 5), "z": torch.randn(2, 3, 4, dtype=torch.float64)},
            {"k": torch.zeros(2, 3, 0, 4), "v": torch.randn(6, 4)[:, :2]},  # empty, and a strided view
            {"h": torch.randn(3).to(torch.bfloat16), "n": torch.arange(5)},
        ],
        "note": None,
        "scale": 0.5,
        "flag": True,
    }
    path = tmp_path / "s.safetensors"
    save_state(path, state)
    back = load_state(path)
    assert back.keys() == state.keys() and back["pos"] == 41 and back["scale"] == 0.5
    assert back["note"] is None and back["flag"] is True
    for mine, ref in zip(back["layers"], state["layers"]):
        assert mine.keys() == ref.keys()
        for key in ref:
            assert mine[key].dtype == ref[key].dtype and torch.equal(mine[key], ref[key])


@pytest.mark.parametrize("attention", ["softmax", "linear", "delta", "dpfp-2+delta"])
def test_restored_stream_continues_as_if_never_stopped(tmp_path, attention: str) -> None:
    model = tiny_model(attention, context=32)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 30))
    with torch.no_grad():
        reference = model(idx)[0]  # [2, 30, V]: uninterrupted
        first, _, state = model(idx[:, :11])
        save_state(tmp_path / "paused.safetensors", state)
        del state
        restored = load_state(tmp_path / "paused.safetensors")
        stepped, restored = model.step(idx[:, 11], restored)  # one token with the step ...
        rest, _, _ = model(idx[:, 12:], state=restored)  # ... then a parallel segment
    torch.testing.assert_close(torch.cat([first, stepped[:, None], rest], 1), reference, rtol=1e-5, atol=1e-5)


def test_bad_states_and_files_are_clear_errors(tmp_path) -> None:
    with pytest.raises(TypeError, match="leaves"):
        save_state(tmp_path / "a", {"x": "text"})
    with pytest.raises(TypeError, match="keys must be str"):
        save_state(tmp_path / "a", {1: torch.zeros(1)})
    with pytest.raises(ValueError, match="may not contain"):
        save_state(tmp_path / "a", {"a.b": torch.zeros(1)})
    with pytest.raises(FileNotFoundError):
        load_state(tmp_path / "missing.safetensors")
    save_file({"w": torch.zeros(2)}, str(tmp_path / "weights.safetensors"))
    with pytest.raises(ValueError, match="not a state"):
        load_state(tmp_path / "weights.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]  # no half-written files


def test_damaged_and_non_finite_states_are_refused_and_old_files_load(tmp_path) -> None:
    path = tmp_path / "s.safetensors"
    save_state(path, {"S": torch.full((2, 3), float("inf")), "pos": 4})
    with pytest.raises(ValueError, match=r"^state file \S+s.safetensors holds non-finite values \(NaN or inf\) in S$"):
        load_state(path)
    save_state(path, {"S": torch.ones(64), "pos": 4})
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(8)  # finite zeros: only the digest in the metadata sees them
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"^state file \S+ does not match the SHA-256 in its metadata"):
        load_state(path)
    structure = json.dumps({"S": {"__tensor__": "S"}, "pos": 4})
    save_file({"S": torch.ones(64)}, str(path), metadata={"fastweights.files.state": structure})  # before the digest
    assert load_state(path)["pos"] == 4


def test_state_files_follow_the_umask(tmp_path) -> None:
    old = os.umask(0o027)
    try:
        save_state(tmp_path / "s.safetensors", {"S": torch.zeros(2, 3)})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "s.safetensors").stat().st_mode) == 0o640  # not tempfile's 0o600
