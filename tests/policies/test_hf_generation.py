"""The hf backend's fast paths change nothing but speed: KV reuse across turns, shared-prompt
prefill, the inverse-CDF sampler, the in-place KV cache."""

from __future__ import annotations

import copy

import pytest
import torch

from agentrl.config import RolloutConfig
from agentrl.envpool import InProcessPool
from agentrl.policies.base import SamplingParams
from agentrl.policies.hf import HFPolicy, sample_inverse_cdf
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.prompts import PromptBuilder


def test_inverse_cdf_sampler_hand_computed() -> None:
    # p = [.5, .25, .25, 0] -> cdf [.5, .75, 1, 1]; token i is chosen for u in [cdf[i-1], cdf[i])
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.25, 0.0]])).expand(5, 4)
    u = torch.tensor([0.0, 0.4999, 0.5, 0.75, 1.0], dtype=torch.float64)
    # u = 1 cannot come from torch.rand; it stands for u * total rounding up to total: the
    # zero-probability token 3 must still not be chosen
    assert sample_inverse_cdf(logp, u).tolist() == [0, 0, 1, 2, 2]


def test_inverse_cdf_sampler_frequencies() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.1, 0.2, 0.3, 0.4])
    n = 40_000
    draws = sample_inverse_cdf(torch.log(p).expand(n, 4), torch.rand(n, generator=g,
                                                                    dtype=torch.float64))
    freq = torch.bincount(draws, minlength=4).float() / n
    # binomial std of a frequency: sqrt(.25 * .75 / 40000) = .0022; 5 std = .011
    assert (freq - p).abs().max().item() < 0.011


def _full_mode_run(tok, model, reuse: bool, constrained: bool, seeds: list[int]):
    cfg = RolloutConfig(max_turns=12, max_new_tokens=5, context="full", constrained=constrained,
                        action_format="raw", template="{observation}")
    pool = InProcessPool("test/Corridor-v0", {"length": 50}, len(seeds))
    pol = HFPolicy(model, tok, batch_size=4, reuse_kv=reuse)
    pol.seed(0)
    try:
        trajs = RolloutEngine(pol, pool, PromptBuilder(tok, cfg), cfg, "test").run(seeds)
    finally:
        pool.close()
    return trajs, pol.stats


@pytest.mark.parametrize("constrained", [False, True])
def test_kv_reuse_samples_the_same_tokens(tiny_tok, tiny_model, constrained) -> None:
    # 6 episodes of 12 turns in full context mode, chunks of 4 rows: with and without reuse,
    # the same seed gives the same replies; logprobs agree to float rounding of the cache.
    seeds = [0, 0, 0, 1, 1, 1]
    a, sa = _full_mode_run(tiny_tok, tiny_model, True, constrained, seeds)
    b, sb = _full_mode_run(tiny_tok, tiny_model, False, constrained, seeds)
    assert [len(t.turns) for t in a] == [12] * 6
    for ta, tb in zip(a, b):
        for x, y in zip(ta.turns, tb.turns, strict=True):
            assert x.action_ids == y.action_ids
            assert x.logprobs == pytest.approx(y.logprobs, abs=1e-5)
    assert sb["reused_tokens"] == 0
    assert sa["prompt_tokens"] == sb["prompt_tokens"]
    # with reuse each turn prefills about one observation; without, the whole conversation
    assert sa["reused_tokens"] > 0
    assert sa["prefill_tokens"] + sa["reused_tokens"] >= sa["prompt_tokens"] // 2
    assert sa["prefill_tokens"] * 4 < sb["prefill_tokens"]


def test_shared_prompts_are_prefilled_once(tiny_tok, tiny_model) -> None:
    p, q = tiny_tok.encode("You are in a room. go"), tiny_tok.encode("take coin")
    sp = SamplingParams(max_new_tokens=6, greedy=True)
    pol = HFPolicy(tiny_model, tiny_tok, batch_size=8, reuse_kv=False)
    gens = pol.generate([p, p, p, q, q, q, p, q], sp)
    assert pol.stats["prefill_tokens"] == len(p) + len(q)
    assert pol.stats["prompt_tokens"] == 4 * (len(p) + len(q))
    alone = HFPolicy(tiny_model, tiny_tok, reuse_kv=False)
    ref_p, ref_q = alone.generate([p], sp)[0], alone.generate([q], sp)[0]
    for g, ref in zip(gens, [ref_p] * 3 + [ref_q] * 3 + [ref_p, ref_q]):
        assert g.token_ids == ref.token_ids
        assert g.logprobs == pytest.approx(ref.logprobs, abs=1e-5)


def test_kept_prefixes_are_dropped_when_the_weights_change(tiny_tok, tiny_model) -> None:
    sp = SamplingParams(max_new_tokens=4, greedy=True)
    p = tiny_tok.encode("You are in a room. go")
    pol = HFPolicy(tiny_model, tiny_tok)
    g = pol.generate([p], sp)[0]
    longer = p + g.token_ids + tiny_tok.encode(" east")
    with torch.no_grad():  # an optimizer step, as the trainer does in place
        for w in tiny_model.parameters():
            w.add_(0.05 * torch.randn_like(w))
    out = pol.generate([longer], sp)[0]
    assert pol.stats["reused_tokens"] == 0
    fresh = HFPolicy(copy.deepcopy(tiny_model), tiny_tok).generate([longer], sp)[0]
    assert out.token_ids == fresh.token_ids
    assert out.logprobs == pytest.approx(fresh.logprobs, abs=1e-5)
    # unchanged weights: the extended prompt reuses the kept prefix
    pol.generate([longer + out.token_ids + tiny_tok.encode(" go")], sp)
    assert pol.stats["reused_tokens"] == len(longer) + len(out.token_ids) - 1
