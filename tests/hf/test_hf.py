"""The transformers integration: loading run directories, save_pretrained, forward, generate (greedy
equal to fastweights' own decoding, left-padded batches, stop tokens, top-p, beam search), the
tokenizers, missing folders. Local directories only: nothing is fetched from the Hub (damaged
weights: tests/faults/test_weights_faults.py)."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from fastweights.data.text import WordTokenizer  # noqa: E402
from fastweights.files.atomic import file_sha256  # noqa: E402
from fastweights.hf import FastWeightCache, FastWeightsConfig, FastWeightsForCausalLM  # noqa: E402
from fastweights.hf.configuration import check_local_folder  # noqa: E402
from fastweights.hf.modeling import CACHE_ARG  # noqa: E402
from fastweights.models import load_model  # noqa: E402
from fastweights.models.directory import record_weights  # noqa: E402
from fastweights.models.generate import generate  # noqa: E402

from ..models.test_generate import PROMPTS, left_padded  # noqa: E402
from ..tiny_lm import TEXT, tiny_model, write_model_dir  # noqa: E402

GREEDY_VARIANTS = [
    "softmax",
    "linear",
    "delta",
    "rdn",
    "linear+gated_delta",
    "deltaproduct-2+neg",
    "linear+channel_gated_delta",
]


def hf_model(attention: str) -> FastWeightsForCausalLM:
    """The HF model holding :func:`tiny_model`'s weights."""
    lm = tiny_model(attention)
    model = FastWeightsForCausalLM(FastWeightsConfig.from_lm_config(lm.cfg)).eval()
    model.load_state_dict(lm.state_dict())
    return model


def test_run_directory_loads_and_save_pretrained_round_trips(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "run", "delta")
    record_weights(tmp_path / "run")  # as `fastweights train` records it
    model = FastWeightsForCausalLM.from_pretrained(tmp_path / "run")
    lm, cfg = load_model(tmp_path / "run")
    assert model.config.lm_config == cfg and model.config.tokenizer["kind"] == "char"
    ours, theirs = lm.state_dict(), model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert model.lm.wte.weight is model.lm.head.weight  # still tied
    model.save_pretrained(tmp_path / "saved")
    doc = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert doc["format"] == "fastweights-lm" and doc["model_type"] == "fastweights" and doc["model"] == cfg.to_dict()
    assert doc["tokenizer"] == {"kind": "char", "vocab_size": cfg.vocab_size}  # the run's other sections are kept
    weights = tmp_path / "saved" / "model.safetensors"  # not the run's file: its digest is not carried over
    assert doc["weights"] == {"sha256": file_sha256(weights), "bytes": weights.stat().st_size}
    assert file_sha256(weights) != file_sha256(tmp_path / "run" / "model.safetensors")
    again, _ = load_model(tmp_path / "saved")  # fastweights reads what transformers wrote
    assert all(torch.equal(again.state_dict()[k], ours[k]) for k in ours)
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    assert isinstance(auto, FastWeightsForCausalLM) and torch.equal(auto.lm.head.weight, lm.head.weight)


def test_auto_model_loads_a_run_directory(tmp_path: Path) -> None:
    write_model_dir(tmp_path / "run", "delta")
    assert isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "run"), FastWeightsForCausalLM)


@pytest.mark.parametrize("attention", GREEDY_VARIANTS)
def test_greedy_generate_equals_fastweights_decoding(attention: str) -> None:
    model = hf_model(attention)
    prompt = PROMPTS[0]
    out = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False)
    assert out[0, len(prompt) :].tolist() == generate(model.lm, prompt, 8, temperature=0.0)[0]
    ids, mask = left_padded(PROMPTS, pad=4)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=4)
    assert out[:, ids.shape[1] :].tolist() == generate(model.lm, PROMPTS, 8, temperature=0.0)[0]


@pytest.mark.parametrize("attention", ["softmax", "delta"])
def test_eos_token_stops_rows_as_stop_tokens_do(attention: str) -> None:
    model = hf_model(attention)
    free, _ = generate(model.lm, PROMPTS, 8, temperature=0.0)
    eos = free[2][1]
    ours, _ = generate(model.lm, PROMPTS, 8, temperature=0.0, stop_tokens=[eos])
    ids, mask = left_padded(PROMPTS)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=eos, pad_token_id=0)
    for row, mine in zip(out[:, ids.shape[1] :].tolist(), ours):
        assert row[: len(mine)] == mine and all(t == 0 for t in row[len(mine) :])


def test_top_p_sampling() -> None:
    model = hf_model("delta")
    ids, mask = left_padded(PROMPTS)
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    nucleus = model.generate(
        ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_p=1e-6, top_k=0, pad_token_id=0
    )  # the nucleus is the top token alone
    assert torch.equal(nucleus, greedy)
    draws = []
    for _ in range(2):
        torch.manual_seed(7)
        draws.append(
            model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=True, top_p=0.9, pad_token_id=0)
        )
    assert torch.equal(draws[0], draws[1])


@pytest.mark.parametrize("attention,prompt", [("softmax", [7, 2, 9, 11, 5]), ("delta", [3, 1, 4])])
def test_beam_search_equals_a_search_by_full_forwards(attention: str, prompt: list) -> None:
    """Beam search reorders the cache's rows every step; a reference search re-reads every beam
    (prompts for which the best beam changes parents, so an unordered cache gives other tokens)."""
    model, beams, steps = hf_model(attention), 3, 6
    out = model.generate(
        torch.tensor([prompt]), max_new_tokens=steps, num_beams=beams, do_sample=False, length_penalty=0.0
    )
    hyps, scores = [prompt], torch.zeros(1)
    with torch.no_grad():
        for _ in range(steps):
            logp = torch.log_softmax(model.lm(torch.tensor(hyps))[0][:, -1], -1)  # [n, V]
            scores, best = (scores[:, None] + logp).flatten().topk(beams)  # [beams]
            hyps = [hyps[i // logp.shape[1]] + [i % logp.shape[1]] for i in best.tolist()]
    assert out[0].tolist() == hyps[0]


def test_forward_logits_loss_and_cache() -> None:
    model = hf_model("softmax")
    ids, mask = left_padded(PROMPTS)
    out = model(ids, attention_mask=mask, labels=ids)
    P = ids.shape[1]
    losses = []
    for b, prompt in enumerate(PROMPTS):
        with torch.no_grad():
            ref = model.lm(torch.tensor([prompt]))[0][0]  # [len, V]
        torch.testing.assert_close(out.logits[b, P - len(prompt) :], ref, rtol=1e-5, atol=1e-5)
        assert not out.logits[b, : P - len(prompt)].any()  # padding: zeros
        losses.append(torch.nn.functional.cross_entropy(ref[:-1], torch.tensor(prompt[1:]), reduction="sum"))
    torch.testing.assert_close(out.loss, torch.stack(losses).sum() / sum(len(p) - 1 for p in PROMPTS))
    cache = getattr(out, CACHE_ARG)
    assert isinstance(cache, FastWeightCache) and cache.get_seq_length() == P
    assert cache.state["pos"].tolist() == [len(p) for p in PROMPTS]
    nxt = model(
        torch.tensor([[1], [2], [3]]),
        attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1),
        **{CACHE_ARG: cache},
    )
    for b, (prompt, t) in enumerate(zip(PROMPTS, [1, 2, 3])):
        with torch.no_grad():
            ref = model.lm(torch.tensor([prompt + [t]]))[0][0, -1]
        torch.testing.assert_close(nxt.logits[b, 0], ref, rtol=1e-5, atol=1e-5)


def test_fast_weight_cache_has_a_constant_size() -> None:
    model = hf_model("delta")
    out = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=30, do_sample=False, return_dict_in_generate=True)
    state = getattr(out, CACHE_ARG).state
    assert state["pos"] == 3 + 30 - 1  # transformers does not read the last sampled token
    assert [s["S"].shape for s in state["layers"]] == [s["S"].shape for s in model.lm.init_state(1)["layers"]]


def test_forward_errors() -> None:
    model = hf_model("delta")
    ids, mask = left_padded(PROMPTS)
    with pytest.raises(ValueError, match="attention_mask must be left padding"):
        model(ids, attention_mask=mask.flip(1))
    cache = getattr(model(ids, attention_mask=mask), CACHE_ARG)
    with pytest.raises(ValueError, match="may be 0 only before each row's first token"):
        model(
            ids[:, :1], attention_mask=torch.cat([mask, torch.zeros(3, 1, dtype=torch.long)], 1), **{CACHE_ARG: cache}
        )
    with pytest.raises(ValueError, match=r"does not take \['inputs_embeds'\]"):
        model(ids, inputs_embeds=torch.zeros(3, 7, 16))
    with pytest.raises(ValueError, match="cannot be cropped"):
        cache.crop(1)


@pytest.mark.parametrize("kind", ["char", "word"])
def test_tokenizer_json_loads_in_transformers(tmp_path: Path, kind: str) -> None:
    tokenizer = None if kind == "char" else WordTokenizer.from_lines(TEXT.splitlines())
    ours = write_model_dir(tmp_path / "run", "delta", tokenizer)
    FastWeightsForCausalLM.from_pretrained(tmp_path / "run").save_pretrained(tmp_path / "saved")
    (tmp_path / "saved" / "tokenizer.json").write_text((tmp_path / "run" / "tokenizer.json").read_text())
    for tok in (
        PreTrainedTokenizerFast(tokenizer_file=str(tmp_path / "run" / "tokenizer.json")),
        AutoTokenizer.from_pretrained(tmp_path / "saved"),
    ):
        text = TEXT[:200]
        ids = tok(text)["input_ids"]
        assert ids == ours.encode(text) and tok.decode(ids) == ours.decode(ids)


def _no_network(*args, **kwargs):
    raise AssertionError("the network was touched")


@pytest.mark.parametrize("name", ["runs/missing", "./missing", "{tmp}/missing", "~/no/such/folder"])
def test_a_missing_local_folder_is_reported_at_once(tmp_path: Path, monkeypatch, name: str) -> None:
    """transformers would take these for Hub repo ids (retrying the network, then blaming the Hub, or
    rejecting a malformed repo id); offline mode off, and any connection refused."""
    write_model_dir(tmp_path / "runs" / "other", "delta")  # runs/ holds fastweights runs
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket.socket, "connect", _no_network)
    name = name.format(tmp=tmp_path)
    for load in (
        AutoModelForCausalLM.from_pretrained,
        AutoConfig.from_pretrained,
        AutoTokenizer.from_pretrained,
        FastWeightsForCausalLM.from_pretrained,
        FastWeightsConfig.from_pretrained,
    ):
        with pytest.raises(FileNotFoundError, match=f"^no such folder: {re.escape(name)}$"):
            load(name)
    with pytest.raises(FileNotFoundError, match="^no such folder: "):
        AutoModelForCausalLM.from_pretrained(tmp_path / "missing")  # a path object


def test_hub_repo_ids_are_left_to_transformers(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "runs").mkdir()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Qwen" / "Qwen2-7B").mkdir(parents=True)  # a Hub download into a local Qwen/ folder
    (tmp_path / "Qwen" / "Qwen2-7B" / "config.json").write_text('{"model_type": "qwen2"}')
    for name in ["gpt2", "openai-community/gpt2", "runs", "runs/missing", "Qwen/Qwen2-0.5B"]:
        check_local_folder(name)  # no local folder of fastweights runs of that name (or it exists): not refused
