"""Prefill + token-by-token decoding == one full forward, for every attention variant; sampling;
the `fastweights generate` command."""

from __future__ import annotations

import pytest
import torch

from fastweights.cli import main as cli_main
from fastweights.generate import generate, sample_next
from fastweights.state import load_state

from .tiny_lm import VARIANTS, tiny_model, write_model_dir


@pytest.mark.parametrize("attention", VARIANTS)
def test_prefill_then_steps_equal_full_forward(attention: str) -> None:
    model = tiny_model(attention)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 15))
    with torch.no_grad():
        full, _, full_state = model(idx)  # [2, 15, V]
        logits, _, state = model(idx[:, :6])  # prefill
        decoded = [logits]
        for t in range(6, idx.shape[1]):
            step_logits, state = model.step(idx[:, t], state)  # [2, V]
            decoded.append(step_logits[:, None])
    torch.testing.assert_close(torch.cat(decoded, 1), full, rtol=1e-4, atol=1e-4)
    assert state["pos"] == full_state["pos"] == 15
    for mine, ref in zip(state["layers"], full_state["layers"]):
        for key in ref:
            torch.testing.assert_close(mine[key], ref[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attention", ["softmax", "delta", "dpfp-2+delta"])
def test_greedy_generation_follows_the_full_forward(attention: str) -> None:
    model = tiny_model(attention)
    prompt = [3, 1, 4, 1, 5]
    new, state = generate(model, prompt, 8, temperature=0.0)
    assert len(new) == 8 and state["pos"] == len(prompt) + 8
    seq = prompt + new
    with torch.no_grad():
        logits = model(torch.tensor([seq]))[0][0]  # [13, V]
    assert new == logits[len(prompt) - 1:-1].argmax(-1).tolist()


def test_learned_positions_slide_a_window_past_the_context() -> None:
    model = tiny_model("softmax", context=8)
    prompt = [2, 7, 1, 8, 2]
    new, _ = generate(model, prompt, 12, temperature=0.0)
    seq = prompt + new
    with torch.no_grad():
        for i in range(len(prompt), len(seq)):  # nanoGPT: each token from the last `context` tokens
            window = torch.tensor([seq[max(0, i - 8):i]])
            assert seq[i] == int(model(window)[0][0, -1].argmax())


def test_fast_weights_decode_past_the_training_context() -> None:
    model = tiny_model("delta", context=8)
    new, state = generate(model, [1, 2, 3], 30, temperature=0.0)
    assert len(new) == 30 and state["pos"] == 33
    assert state["layers"][0]["S"].shape == model.init_state(1)["layers"][0]["S"].shape


def test_sampling_is_seeded_and_respects_top_k_and_temperature() -> None:
    model = tiny_model("delta")
    a, _ = generate(model, [1, 2], 20, generator=torch.Generator().manual_seed(5))
    b, _ = generate(model, [1, 2], 20, generator=torch.Generator().manual_seed(5))
    assert a == b
    logits = torch.randn(3, 10)
    assert torch.equal(sample_next(logits, temperature=0.0), logits.argmax(-1))
    assert torch.equal(sample_next(logits, top_k=1), logits.argmax(-1))
    top2 = logits.topk(2, -1).indices  # [3, 2]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, top_k=2, generator=g) for _ in range(200)], 1)  # [3, 200]
    assert ((draws[:, :, None] == top2[:, None, :]).any(-1)).all()
    assert all(len(set(row.tolist())) == 2 for row in draws)


def test_generate_rejects_bad_arguments() -> None:
    model = tiny_model("delta")
    with pytest.raises(ValueError, match="prompt"):
        generate(model, [], 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, [1], -1)
    with pytest.raises(ValueError, match="temperature"):
        sample_next(torch.zeros(1, 4), temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(torch.zeros(1, 4), top_k=0)


def test_generate_command_pauses_and_resumes_a_stream(tmp_path, capsys) -> None:
    write_model_dir(tmp_path / "model", "delta")
    saved = tmp_path / "stream.safetensors"
    common = ["--checkpoint", str(tmp_path / "model"), "--temperature", "0"]
    assert cli_main(["generate", *common, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--save-state", str(saved)]) == 0
    first = capsys.readouterr().out.rstrip("\n")
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 12
    assert load_state(saved)["pos"] == len("ROMEO:") + 12
    assert cli_main(["generate", *common, "--prompt", " the", "--max-new-tokens", "10", "--load-state", str(saved)]) == 0
    resumed = capsys.readouterr().out.rstrip("\n")
    # uninterrupted: the whole text read at once, then the same 10 tokens
    assert cli_main(["generate", *common, "--prompt", first + " the", "--max-new-tokens", "10"]) == 0
    at_once = capsys.readouterr().out.rstrip("\n")
    assert at_once == first + resumed
    assert cli_main(["generate", *common, "--prompt", "~unknown~"]) == 2
    assert "not in the vocabulary" in capsys.readouterr().err
