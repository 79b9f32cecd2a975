"""The decoder LM: every attention variant trains, step == forward, segments carry state, adaptive softmax, errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fastweights.models import LanguageModel, LMConfig

VARIANTS = ["softmax", "linear", "delta", "dpfp-2+delta", "dpfp-1", "favor-8", "favor-8+delta", "relu+delta"]


def tiny(attention: str = "delta", **kw) -> LanguageModel:
    torch.manual_seed(0)
    base = dict(
        vocab_size=37, d_model=16, n_layers=2, n_heads=2, d_ff=32, context=16, attention=attention, chunk_size=4
    )
    return LanguageModel(LMConfig(**{**base, **kw}))


@pytest.mark.parametrize("attention", VARIANTS)
def test_forward_backward_every_variant(attention: str) -> None:
    model = tiny(attention, dropout=0.1).train()
    idx = torch.randint(0, 37, (3, 11))
    logits, loss, state = model(idx, idx.roll(-1, 1))
    assert logits.shape == (3, 11, 37) and state["pos"] == 11 and len(state["layers"]) == 2
    assert torch.isfinite(loss) and abs(loss.item() - math.log(37)) < 1.0  # near uniform at init
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("attention", VARIANTS)
def test_step_equals_forward(attention: str, norm: str) -> None:
    model = tiny(attention, norm=norm, pos_emb="learned" if attention == "softmax" else "none").eval()
    idx = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        logits, _, _ = model(idx)
        state, steps = None, []
        for t in range(idx.shape[1]):
            out, state = model.step(idx[:, t], state)
            steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits, atol=1e-5, rtol=1e-4)
    assert state["pos"] == 9


@pytest.mark.parametrize("attention", ["softmax", "delta", "linear"])
def test_segments_with_state_equal_one_pass(attention: str) -> None:
    model = tiny(attention, pos_emb="learned").eval()
    idx = torch.randint(0, 37, (2, 14))
    with torch.no_grad():
        full, _, _ = model(idx)
        a, _, state = model(idx[:, :5])
        b, _, state = model(idx[:, 5:], state=state)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-4)
    assert state["pos"] == 14


@pytest.mark.parametrize("attention", ["delta", "linear+gated_delta", "rdn"])
def test_resets_start_those_rows_from_the_empty_state(attention: str) -> None:
    """Row 0 resets before tokens 3 and 7, row 1 never, row 2 at token 0: each row's logits, loss
    and final state equal running its pieces on their own (a reset piece from no state), and the
    gradients equal those of that piecewise computation."""
    model = tiny(attention).double()
    idx = torch.randint(0, 37, (3, 10))
    _, _, state = model(torch.randint(0, 37, (3, 5)))  # a carried state
    state = {"pos": 0, "layers": [{k: v.detach() for k, v in layer.items()} for layer in state["layers"]]}
    resets = torch.zeros(3, 10, dtype=torch.bool)
    resets[0, [3, 7]] = True
    resets[2, 0] = True
    logits, loss, final = model(idx, idx.roll(-1, 1), state=state, resets=resets)
    grads = torch.autograd.grad(loss, list(model.parameters()))

    def row_state(b: int) -> dict:
        return {"pos": 0, "layers": [{k: v[b : b + 1] for k, v in layer.items()} for layer in state["layers"]]}

    pieces = {0: [(0, 3, True), (3, 7, False), (7, 10, False)], 1: [(0, 10, True)], 2: [(0, 10, False)]}
    total, expected_logits = 0.0, []
    for b, spans in pieces.items():
        st, outs = None, []
        for a, e, carry in spans:
            out, nll, st = model(
                idx[b : b + 1, a:e], idx.roll(-1, 1)[b : b + 1, a:e], state=row_state(b) if carry else None
            )
            outs.append(out)
            total = total + nll * (e - a)
        expected_logits.append(torch.cat(outs, 1))
        for got, want in zip(final["layers"], st["layers"]):
            for k in want:
                torch.testing.assert_close(got[k][b : b + 1], want[k])
    torch.testing.assert_close(logits, torch.cat(expected_logits))
    torch.testing.assert_close(loss, total / 30)
    for g, w in zip(grads, torch.autograd.grad(total / 30, list(model.parameters()))):
        torch.testing.assert_close(g, w)


def test_resets_without_any_equal_no_resets_and_bad_resets_are_errors() -> None:
    model = tiny("delta").eval()
    idx = torch.randint(0, 37, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(model(idx, resets=torch.zeros(2, 9, dtype=torch.bool))[0], model(idx)[0])
    with pytest.raises(
        ValueError, match=r"resets must be a bool tensor of the shape of idx \[2, 9\], got torch.int64 \[2, 9\]"
    ):
        model(idx, resets=torch.zeros(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="resets need fast-weight attention .* attention='softmax'"):
        tiny("softmax")(idx, resets=torch.zeros(2, 9, dtype=torch.bool))


def test_the_lm_keeps_the_rules_starting_values_of_learned_inputs() -> None:
    """The LM re-initialises every Linear (biases to zero); the gated delta rule's decay bias must
    come back to the rule's 5 (alpha ~ 0.993), not stay at 0 (alpha = 0.5: a two-token memory)."""
    model = tiny("linear+gated_delta")
    for blk in model.blocks:
        assert torch.equal(blk.attn.input_projs["g"].bias, torch.full((2,), 5.0))


def test_out_norm_makes_the_output_independent_of_the_states_scale() -> None:
    """With ``out_norm``, values (hence fast weights and outputs) 100x larger leave the logits as they
    were, and the heads reach ``out_proj`` with unit RMS; without it the logits change. Step equals
    forward; softmax attention refuses the option."""
    idx = torch.randint(0, 37, (2, 9))
    for out_norm in (True, False):
        model = tiny("delta", out_norm=out_norm).eval()
        seen = []
        model.blocks[0].attn.out_proj.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))  # noqa: B023 (used within this iteration)
        with torch.no_grad():
            for blk in model.blocks:
                blk.attn.qkv.weight[32:] *= 100.0  # the value rows of [q; k; v]: outputs well above eps
            before = model(idx)[0]
            for blk in model.blocks:
                blk.attn.qkv.weight[32:] *= 100.0
            after = model(idx)[0]
        if out_norm:
            torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)
            rms = seen[-1].view(2, 9, 2, 8).pow(2).mean(-1)  # [B, T, H]
            torch.testing.assert_close(rms, torch.ones(2, 9, 2), atol=1e-3, rtol=0)
        else:
            assert (after - before).abs().max() > 1e-2
    model = tiny("delta", out_norm=True).eval()
    with torch.no_grad():
        logits, _, _ = model(idx)
        state, steps = None, []
        for t in range(9):
            out, state = model.step(idx[:, t], state)
            steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="LMConfig.out_norm must be false for softmax attention"):
        tiny("softmax", out_norm=True)


def test_positions_start_at_state_pos() -> None:
    model = tiny("softmax", pos_emb="learned").eval()
    idx = torch.randint(0, 37, (1, 4))
    with torch.no_grad():
        fresh, _, _ = model(idx)
        moved, _, _ = model(idx, state={"pos": 3, "layers": [None, None]})
    assert not torch.allclose(fresh, moved)


def test_targets_ignore_index_and_tied_weights() -> None:
    model = tiny("linear").eval()
    assert model.wte.weight is model.head.weight
    idx = torch.randint(0, 37, (2, 6))
    targets = idx.clone()
    targets[0, :3] = -100
    logits, loss, _ = model(idx, targets)
    torch.testing.assert_close(
        loss,
        F.cross_entropy(
            logits.reshape(-1, 37)[targets.reshape(-1) != -100], targets.reshape(-1)[targets.reshape(-1) != -100]
        ),
    )
    untied = tiny("linear", tie_embeddings=False)
    assert untied.wte.weight is not untied.head.weight


@pytest.mark.parametrize("tie", [True, False])
def test_adaptive_softmax(tie: bool) -> None:
    model = tiny(
        "delta", vocab_size=300, adaptive_cutoffs=[20, 100], norm="post", pos_emb="none", tie_embeddings=tie
    ).eval()
    assert (model.wte is None) == tie
    idx = torch.randint(0, 300, (2, 12))
    idx[0, :4] = torch.tensor([0, 25, 150, 299])  # every cluster
    targets = idx.roll(-1, 1)
    targets[1, 5] = -100
    logits, loss, _ = model(idx, targets)  # log-probabilities
    torch.testing.assert_close(logits.exp().sum(-1), torch.ones(2, 12))
    torch.testing.assert_close(loss, F.nll_loss(logits.reshape(-1, 300), targets.reshape(-1), ignore_index=-100))
    none, loss2, _ = model(idx, targets, return_logits=False)
    assert none is None and torch.equal(loss, loss2)
    with torch.no_grad():
        state, steps = None, []
        for t in range(12):
            out, state = model.step(idx[:, t], state)
            steps.append(out)
    torch.testing.assert_close(torch.stack(steps, 1), logits.detach(), atol=1e-5, rtol=1e-4)
    loss.backward()
    if tie:  # the input side of a tail token trains the tail weights of the softmax
        assert model.head.tail[1][1].weight.grad.abs().sum() > 0


def test_bad_input() -> None:
    model = tiny("softmax", pos_emb="learned")
    with pytest.raises(ValueError, match="integer tensor of shape \\[B, T\\]"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="integer tensor of shape \\[B\\]"):
        model.step(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="outside \\[0, vocab_size=37\\)"):
        model(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match="targets must have the shape"):
        model(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="learned positions cover 16 tokens"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="state must be an LMState"):
        model(torch.zeros(1, 3, dtype=torch.long), state={"layers": []})
    with pytest.raises(TypeError, match="cfg must be an LMConfig"):
        LanguageModel({"vocab_size": 3})


def test_adaptive_input_and_softmax_under_bf16_autocast() -> None:
    """The wt103 presets' tied adaptive input/softmax trains under autocast (as on a bf16 GPU)."""
    model = tiny("delta", vocab_size=300, adaptive_cutoffs=[20, 100], norm="post", pos_emb="none", tie_embeddings=True)
    idx = torch.randint(0, 300, (2, 12))
    idx[0, :3] = torch.tensor([0, 150, 299])  # head and both tail clusters
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss, _ = model(idx, idx.roll(-1, 1), return_logits=False)
    loss.backward()
    assert torch.isfinite(loss)
