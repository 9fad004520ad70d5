"""Packed micro-batches (several sequences per row, position ids restarting per sequence) give
the loss and gradients of padded ones; micro-batch plans cover every row once."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn

from agentrl.config import RolloutConfig, TrainConfig, load_config
from agentrl.envpool import InProcessPool
from agentrl.learn.batch import make_batch
from agentrl.learn.forward import micro_batches, pack_rows, supports_packing
from agentrl.learn.learner import LocalLearner
from agentrl.learn.varlen import VARLEN, boundaries, enable_varlen, runs_varlen, varlen_attention
from agentrl.policies.hf import HFPolicy
from agentrl.registry import get_algorithm
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.prompts import PromptBuilder


def _mixed_full_mode_trajs(tok, model) -> list:
    """Full-context episodes of 2 to 7 turns (free decoding: episodes run to the limit)."""
    trajs = []
    for turns in (2, 7, 4, 5, 3):
        cfg = RolloutConfig(max_turns=turns, max_new_tokens=5, context="full",
                            constrained=False, action_format="raw", template="{observation}")
        pool = InProcessPool("test/Corridor-v0", {"length": 50}, 2)
        pol = HFPolicy(model, tok)
        pol.seed(turns)
        try:
            trajs += RolloutEngine(pol, pool, PromptBuilder(tok, cfg), cfg, "t").run(
                [turns, turns], [f"g{turns}", f"g{turns}"])
        finally:
            pool.close()
    return trajs


def _credit(learner: LocalLearner, batch) -> None:
    # the corridor gives no reward in these episodes: arbitrary advantages exercise the loss
    learner.algorithm.credit(batch)
    g = torch.Generator().manual_seed(0)
    batch.advantages = torch.randn(batch.loss_mask.shape, generator=g) * batch.loss_mask


def _learner(model: nn.Module, pack: bool, algo: str = "grpo") -> LocalLearner:
    acfg = load_config(None, [f"algorithm.name={algo}"]).algorithm
    a = get_algorithm(algo)(acfg)
    a.setup(model)
    return LocalLearner(model, TrainConfig(micro_batch_tokens=100_000, pack=pack,
                                           sort_by_length=False), 1.0, a)


def test_pack_rows_first_fit_decreasing() -> None:
    # lengths 5, 3, 4, 2, 6 into capacity 8: 6 -> [6], 5 -> [5], 4 -> new bin, 3 -> after 5,
    # 2 -> after 6
    assert pack_rows([5, 3, 4, 2, 6], 8) == [[4, 3], [0, 1], [2]]


def _bins_only(learner: LocalLearner) -> LocalLearner:
    """The learner packing into bins with sdpa's block-diagonal mask (no varlen attention)."""
    learner.model.config._attn_implementation = "sdpa"
    learner.varlen = False
    return learner


@pytest.mark.parametrize("varlen", [True, False], ids=["varlen", "bins"])
def test_packed_loss_and_gradients_equal_padded(tiny_tok, tiny_model, varlen) -> None:
    trajs = _mixed_full_mode_trajs(tiny_tok, tiny_model)
    lengths = [sum(len(t.context_ids) + len(t.action_ids) for t in tr.turns) for tr in trajs]
    assert max(lengths) > 2 * min(lengths)  # really mixed
    results = []
    for pack in (False, True):
        model = type(tiny_model)(copy.deepcopy(tiny_model.config))
        model.load_state_dict(tiny_model.state_dict())
        learner = _learner(model, pack)
        assert learner.pack == pack and learner.varlen == pack  # sdpa models run varlen
        if pack and not varlen:
            _bins_only(learner)
        batch = make_batch(trajs, tiny_tok.pad_token_id)
        _credit(learner, batch)
        mb = batch.select(range(batch.num_rows))
        mb.agg_tokens = float(batch.loss_mask.sum())
        mb.agg_seqs, mb.agg_len = float(batch.num_rows), float(batch.input_ids.shape[1])
        out = learner.forward(mb, need_entropy=True, pack_capacity=batch.input_ids.shape[1])
        terms = learner.algorithm.loss(out, mb)
        terms["loss"].backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results.append((out.logprobs, out.entropy, terms["loss"].item(), grads))
    (lp0, e0, l0, g0), (lp1, e1, l1, g1) = results
    # fp32 on CPU: only the order of float sums differs (attention over a packed row)
    assert torch.allclose(lp0, lp1, atol=1e-5)
    assert torch.allclose(e0, e1, atol=1e-5)
    assert l0 == pytest.approx(l1, abs=1e-6)
    assert torch.allclose(g0, g1, atol=1e-6, rtol=1e-4)
    assert g0.abs().sum() > 0


@pytest.mark.parametrize("varlen", [True, False], ids=["varlen", "bins"])
def test_packed_update_equals_padded_update(tiny_tok, tiny_model, varlen) -> None:
    # a whole update (micro-batches planned differently) leaves the same weights
    trajs = _mixed_full_mode_trajs(tiny_tok, tiny_model)
    finals = []
    for pack in (False, True):
        model = type(tiny_model)(copy.deepcopy(tiny_model.config))
        model.load_state_dict(tiny_model.state_dict())
        learner = _learner(model, pack)
        if pack and not varlen:
            _bins_only(learner)
        learner.cfg.micro_batch_tokens = 300  # several micro-batches either way
        batch = make_batch(trajs, tiny_tok.pad_token_id)
        _credit(learner, batch)
        learner.update(batch, random.Random(0))
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.allclose(finals[0], finals[1], atol=1e-6)


def test_micro_batch_plans_cover_every_row_once(tiny_tok, tiny_model) -> None:
    batch = make_batch(_mixed_full_mode_trajs(tiny_tok, tiny_model), tiny_tok.pad_token_id)
    lengths = batch.attention_mask.sum(-1).tolist()
    rows = list(range(batch.num_rows))
    L = batch.input_ids.shape[1]
    for packed, by_length in ((False, False), (False, True), (True, False)):
        plan = micro_batches(batch, rows, 2 * L, packed=packed, by_length=by_length)
        assert sorted(r for mb in plan for r in mb) == rows
        for mb in plan:
            if packed:  # whole bins of capacity L, two per micro-batch
                assert len(pack_rows([lengths[r] for r in mb], L)) <= 2
            elif len(mb) > 1:
                assert max(lengths[r] for r in mb) * len(mb) <= 2 * L
    sorted_plan = micro_batches(batch, rows, 2 * L, by_length=True)
    firsts = [lengths[mb[0]] for mb in sorted_plan]
    assert firsts == sorted(firsts, reverse=True)
    # varlen: a micro-batch is its real tokens, within the budget (a longer row goes alone)
    budget = int(1.5 * L)
    plan = micro_batches(batch, rows, budget, packed=True, varlen=True)
    assert sorted(r for mb in plan for r in mb) == rows
    assert all(sum(lengths[r] for r in mb) <= budget or len(mb) == 1 for mb in plan)
    assert len(plan) < len(rows)


class _NoPackingLM(nn.Module):
    """A causal LM whose decoder always gets an all-ones attention mask: it cannot see where
    packed sequences start, so packing must be refused."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

        class Dec(nn.Module):
            def forward(self_, input_ids, attention_mask=None, position_ids=None, **kw):
                return inner.model(input_ids=input_ids, position_ids=position_ids,
                                   attention_mask=torch.ones_like(input_ids), **kw)

        self.model = Dec()

    def get_input_embeddings(self) -> nn.Module:
        return self.inner.get_input_embeddings()

    def get_output_embeddings(self) -> nn.Module:
        return self.inner.get_output_embeddings()


def test_models_that_cannot_pack_train_padded(tiny_model) -> None:
    assert supports_packing(tiny_model)
    bad = _NoPackingLM(tiny_model)
    assert not supports_packing(bad)
    with pytest.warns(UserWarning, match="train.pack"):
        learner = _learner(bad, pack=True)
    assert learner.pack is False


def test_varlen_attention_is_sdpa_without_boundaries(tiny_tok, tiny_model) -> None:
    # generation and padded training through a varlen model: bitwise sdpa's outputs
    model = type(tiny_model)(copy.deepcopy(tiny_model.config))
    model.load_state_dict(tiny_model.state_dict())
    model.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        assert enable_varlen(model) and runs_varlen(model)
        assert model.config._attn_implementation == VARLEN
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(before, after)


def _reference_attention(q, k, v, lengths, window=None):
    """Each sequence alone through plain softmax attention (GQA by repeating key heads)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    outs, a = [], 0
    for n in lengths:
        s = q[:, :, a:a + n] @ k[:, :, a:a + n].transpose(-1, -2) / q.shape[-1] ** 0.5
        i = torch.arange(n)
        keep = i[:, None] >= i[None, :]
        if window is not None:
            keep &= i[:, None] - i[None, :] < window
        outs.append(s.masked_fill(~keep, float("-inf")).softmax(-1) @ v[:, :, a:a + n])
        a += n
    return torch.cat(outs, 2).transpose(1, 2)


@pytest.mark.parametrize("window", [None, 3])
def test_varlen_attention_attends_within_each_sequence(window) -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [4, 7, 1, 5]
    T = sum(lengths)
    q = torch.randn(1, 4, T, 8, generator=g, requires_grad=True)
    k = torch.randn(1, 2, T, 8, generator=g, requires_grad=True)  # grouped-query: 2 kv heads
    v = torch.randn(1, 2, T, 8, generator=g, requires_grad=True)
    out, _ = varlen_attention(nn.Module(), q, k, v, None, sliding_window=window,
                              **boundaries(lengths, "cpu"))
    ref = _reference_attention(q, k, v, lengths, window)
    assert out.shape == (1, T, 4, 8)
    assert torch.allclose(out, ref, atol=1e-5)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_grads = torch.autograd.grad(ref.square().sum(), (q, k, v))
    for a, b in zip(grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-4)
