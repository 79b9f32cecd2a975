"""Prefill + token-by-token decoding == one full forward, for every attention variant; sampling;
the `fastweights generate` command."""

from __future__ import annotations

import pytest
import torch

from fastweights.cli import main as cli_main
from fastweights.data.text import WordTokenizer
from fastweights.files.state import load_state
from fastweights.models import load_model
from fastweights.models.generate import generate, sample_next

from ..tiny_lm import VARIANTS, tiny_model, write_model_dir


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
    assert_same_state(state, full_state)


def assert_same_state(mine: dict, ref: dict) -> None:
    """Equal LM states: fast weights tensor by tensor, KV caches over the slots they use."""
    for a, b in zip(mine["layers"], ref["layers"]):
        if "length" in b:  # a KV cache: buffers may differ in capacity
            assert a["length"] == b["length"]
            for key in ("k", "v"):
                torch.testing.assert_close(
                    a[key][:, :, : a["length"]], b[key][:, :, : b["length"]], rtol=1e-4, atol=1e-4
                )
        else:
            for key in b:
                torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("attention", ["softmax", "delta", "dpfp-2+delta"])
def test_greedy_generation_follows_the_full_forward(attention: str) -> None:
    model = tiny_model(attention)
    prompt = [3, 1, 4, 1, 5]
    new, state = generate(model, prompt, 8, temperature=0.0)
    assert len(new) == 8 and state["pos"] == len(prompt) + 8
    seq = prompt + new
    with torch.no_grad():
        logits = model(torch.tensor([seq]))[0][0]  # [13, V]
    assert new == logits[len(prompt) - 1 : -1].argmax(-1).tolist()


def test_learned_positions_slide_a_window_past_the_context() -> None:
    model = tiny_model("softmax", context=8)
    prompt = [2, 7, 1, 8, 2]
    new, _ = generate(model, prompt, 12, temperature=0.0)
    seq = prompt + new
    with torch.no_grad():
        for i in range(len(prompt), len(seq)):  # nanoGPT: each token from the last `context` tokens
            window = torch.tensor([seq[max(0, i - 8) : i]])
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
    assert (
        cli_main(["generate", *common, "--prompt", "ROMEO:", "--max-new-tokens", "12", "--save-state", str(saved)]) == 0
    )
    first = capsys.readouterr().out.rstrip("\n")
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 12
    assert load_state(saved)["pos"] == len("ROMEO:") + 12
    assert (
        cli_main(["generate", *common, "--prompt", " the", "--max-new-tokens", "10", "--load-state", str(saved)]) == 0
    )
    resumed = capsys.readouterr().out.rstrip("\n")
    # uninterrupted: the whole text read at once, then the same 10 tokens
    assert cli_main(["generate", *common, "--prompt", first + " the", "--max-new-tokens", "10"]) == 0
    at_once = capsys.readouterr().out.rstrip("\n")
    assert at_once == first + resumed
    assert cli_main(["generate", *common, "--prompt", "~unknown~"]) == 2
    assert "not in the vocabulary" in capsys.readouterr().err


# ---------------------------------------------------------------------------- batches, stop tokens, top-p, streams
BATCH_VARIANTS = ["softmax", "linear", "delta", "rdn"]
PROMPTS = [[3, 1, 4, 1, 5, 9, 2], [2, 7], [6, 2, 8, 3]]


def left_padded(prompts: list, pad: int = 0) -> tuple:
    """``([B, P] ids, [B, P] mask)`` of prompts left-padded with ``pad``."""
    P = max(map(len, prompts))
    ids = torch.tensor([[pad] * (P - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in prompts])
    return ids, mask


@pytest.mark.parametrize("attention", BATCH_VARIANTS)
def test_batched_prompts_decode_as_if_alone(attention: str) -> None:
    model = tiny_model(attention)
    alone = [generate(model, p, 6, temperature=0.0) for p in PROMPTS]
    batch, state = generate(model, PROMPTS, 6, temperature=0.0)
    assert batch == [new for new, _ in alone]
    ids, mask = left_padded(PROMPTS, pad=5)
    assert generate(model, ids, 6, temperature=0.0, attention_mask=mask)[0] == batch
    assert state["pos"].tolist() == [len(p) + 6 for p in PROMPTS]  # each row at its own position
    # the batch state continues each row as its own state does
    more, _ = generate(model, [[4], [4, 4], [1]], 3, temperature=0.0, state=state)
    assert more == [generate(model, p, 3, temperature=0.0, state=s)[0] for p, (_, s) in zip([[4], [4, 4], [1]], alone)]


def test_padding_tokens_would_change_the_state() -> None:
    """What the left-padded path avoids: reading the padding moves a fast-weight state."""
    model = tiny_model("delta")
    with torch.no_grad():
        plain = model(torch.tensor([[2, 7]]))[0][0, -1]
        padded = model(torch.tensor([[5, 5, 2, 7]]))[0][0, -1]
    assert not torch.allclose(plain, padded, atol=1e-3)


def test_learned_positions_slide_per_row() -> None:
    model = tiny_model("softmax", context=8)
    prompts = [[2, 7, 1, 8, 2, 8], [1, 4]]
    batch, _ = generate(model, prompts, 10, temperature=0.0)
    assert batch == [generate(model, p, 10, temperature=0.0)[0] for p in prompts]


@pytest.mark.parametrize("attention", ["softmax", "delta"])
def test_stop_tokens_end_a_row_and_its_state(attention: str) -> None:
    model = tiny_model(attention)
    free, _ = generate(model, PROMPTS, 8, temperature=0.0)
    stop = free[1][2]  # a token row 1 samples third
    new, state = generate(model, PROMPTS, 8, temperature=0.0, stop_tokens=[stop])
    for row, full in zip(new, free):
        cut = full.index(stop) + 1 if stop in full else len(full)
        assert row == full[:cut]
    # each row's state has read its prompt and its own tokens, stop token included
    assert state["pos"].tolist() == [len(p) + len(row) for p, row in zip(PROMPTS, new)]
    single, single_state = generate(model, PROMPTS[1], 8, temperature=0.0, stop_tokens=[stop])
    assert single == new[1] and single_state["pos"] == state["pos"][1]


def test_on_token_streams_every_token_in_order() -> None:
    model = tiny_model("delta")
    seen: list = []
    new, _ = generate(
        model,
        PROMPTS,
        5,
        generator=torch.Generator().manual_seed(3),
        on_token=lambda row, token: seen.append((row, token)),
    )
    assert [[t for r, t in seen if r == row] for row in range(len(PROMPTS))] == new
    assert [r for r, _ in seen[:3]] == [0, 1, 2]  # one token per row per step, as sampled


def test_top_p_keeps_the_nucleus() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.05, 0.1, 0.8]])
    logits = probs.log()
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, top_p=0.7, generator=g) for _ in range(300)], 1)  # [2, 300]
    assert set(draws[0].tolist()) == {0, 1}  # 0.5 < 0.7 <= 0.5 + 0.3
    assert set(draws[1].tolist()) == {3}  # 0.8 >= 0.7 alone
    assert torch.equal(sample_next(logits, top_p=1e-6), logits.argmax(-1))
    with pytest.raises(ValueError, match="top_p must be in"):
        sample_next(logits, top_p=0.0)


def test_batch_errors() -> None:
    model = tiny_model("delta")
    ids, mask = left_padded(PROMPTS)
    with pytest.raises(ValueError, match="attention_mask must be left padding"):
        generate(model, ids, 2, attention_mask=mask.flip(1))
    with pytest.raises(ValueError, match="attention_mask needs a"):
        generate(model, [1, 2], 2, attention_mask=torch.ones(1, 2))
    with pytest.raises(ValueError, match="every prompt"):
        generate(model, [[1], []], 2)
    with pytest.raises(ValueError, match=r"stop_tokens must be ids in \[0, vocab_size=23\)"):
        generate(model, [1], 2, stop_tokens=[23])
    _, state = generate(model, [1, 2], 1)
    with pytest.raises(ValueError, match="state holds 1 rows, but 3 prompts"):
        generate(model, PROMPTS, 2, state=state)


def test_generate_command_streams_word_level_text(tmp_path, capsys) -> None:
    tokenizer = WordTokenizer.from_lines(["the come of the night", "to be or not to be"])
    write_model_dir(tmp_path / "model", "delta", tokenizer)
    model, _ = load_model(tmp_path / "model")
    prompt = tokenizer.encode("the")
    new, _ = generate(model, prompt, 6, temperature=0.0)
    args = ["generate", "--checkpoint", str(tmp_path / "model"), "--temperature", "0", "--prompt", "the"]
    assert cli_main([*args, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == tokenizer.decode(prompt + new) + "\n"  # "the come ...", not "thecome ..."
    stop = tokenizer.decode([new[2]])
    assert cli_main([*args, "--max-new-tokens", "6", "--stop", stop, "--top-p", "0.5"]) == 0
    assert capsys.readouterr().out == tokenizer.decode(prompt + new[: new.index(new[2]) + 1]) + "\n"
    assert cli_main([*args, "--stop", "to be"]) == 2
    assert "--stop must be the text of one token" in capsys.readouterr().err
    assert cli_main([*args, "--top-p", "1.5"]) == 2
    assert "top_p must be in (0, 1]" in capsys.readouterr().err
