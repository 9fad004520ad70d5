"""Packed micro-batches (several sequences per row, position ids restarting per sequence) give
the loss and gradients of padded ones; micro-batch plans cover every row once."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from agentrl.batch import make_batch
from agentrl.config import RolloutConfig, TrainConfig, load_config
from agentrl.envpool import InProcessPool
from agentrl.learner import LocalLearner, micro_batches, pack_rows, supports_packing
from agentrl.policies.hf import HFPolicy
from agentrl.prompts import PromptBuilder
from agentrl.registry import get_algorithm
from agentrl.rollout import RolloutEngine


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


def test_packed_loss_and_gradients_equal_padded(tiny_tok, tiny_model) -> None:
    trajs = _mixed_full_mode_trajs(tiny_tok, tiny_model)
    lengths = [sum(len(t.context_ids) + len(t.action_ids) for t in tr.turns) for tr in trajs]
    assert max(lengths) > 2 * min(lengths)  # really mixed
    results = []
    for pack in (False, True):
        model = type(tiny_model)(tiny_model.config)
        model.load_state_dict(tiny_model.state_dict())
        learner = _learner(model, pack)
        assert learner.pack == pack
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


def test_packed_update_equals_padded_update(tiny_tok, tiny_model) -> None:
    # a whole update (micro-batches planned differently) leaves the same weights
    trajs = _mixed_full_mode_trajs(tiny_tok, tiny_model)
    finals = []
    for pack in (False, True):
        model = type(tiny_model)(tiny_model.config)
        model.load_state_dict(tiny_model.state_dict())
        learner = _learner(model, pack)
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
