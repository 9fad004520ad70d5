"""Truncated sampling (top-k / top-p): the sampler records the logprob of the distribution it
drew from, and the learner scores with the same truncation. Arithmetic in comments."""

from __future__ import annotations

import math

import pytest
import torch

from agentrl.policies.base import SamplingParams, truncate_logits
from agentrl.policies.hf import HFPolicy


def test_truncate_logits_hand_computed() -> None:
    # logits [2, 1, 0, −1]: e^2 = 7.38906, e^1 = 2.71828, 1, e^−1 = .36788; Σ 11.47522
    # p = [.64391, .23688, .08714, .03206]; mass before each: [0, .64391, .88079, .96794]
    z = torch.tensor([2.0, 1.0, 0.0, -1.0])
    # top-p .9 keeps tokens whose preceding mass < .9: the first three (kept mass .96794);
    # logp_0 = log(.64391/.96794) = −.40761 ; logp_2 = log(.08714/.96794) = −2.40761
    lp = torch.log_softmax(truncate_logits(z, 0, 0.9), -1)
    assert lp[:3].tolist() == pytest.approx([-.40761, -1.40761, -2.40761], abs=1e-5)
    assert math.exp(lp[3]) == 0.0
    # top-k 2: log(e^2 + e^1) = log 10.10734 = 2.31326 -> [−.31326, −1.31326]
    lp = torch.log_softmax(truncate_logits(z, 2), -1)
    assert lp[:2].tolist() == pytest.approx([-.31326, -1.31326], abs=1e-5)
    # top-k 3 then top-p .7 on the renormalised top 3: p = [.66524, .24473, .09003], mass
    # before the third = .90997 >= .7 -> dropped; same as top-k 2
    lp = torch.log_softmax(truncate_logits(z, 3, 0.7), -1)
    assert lp[:2].tolist() == pytest.approx([-.31326, -1.31326], abs=1e-5)
    # a token that must survive (the sampled one) keeps its logit: top-k 2 plus token 3:
    # log(e^2 + e^1 + e^−1) = log 10.47522 = 2.34901 -> logp_3 = −1 − 2.34901 = −3.34901
    lp = torch.log_softmax(truncate_logits(z, 2, 1.0, keep=torch.tensor(3)), -1)
    assert lp[3].item() == pytest.approx(-3.34901, abs=1e-5)
    # off: unchanged; entropy of a truncated distribution is finite (no −inf entries)
    assert torch.equal(truncate_logits(z), z)
    t = torch.log_softmax(truncate_logits(z, 1), -1)
    assert torch.isfinite(-(t.exp() * t).sum())


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (20, 1.0)])
def test_hf_sampler_records_the_truncated_logprob(tiny_tok, tiny_model, top_k, top_p) -> None:
    # Replay each reply through a plain forward pass: the recorded logprob must be the one of
    # the truncated, renormalised distribution, which differs from the untruncated one.
    pol = HFPolicy(tiny_model, tiny_tok, batch_size=4)
    prompts = [tiny_tok.encode("You are in a room. go"), tiny_tok.encode("take coin")] * 2
    gens = pol.generate(prompts, SamplingParams(max_new_tokens=8, temperature=1.3,
                                                top_k=top_k, top_p=top_p, seed=0))
    worst, moved = 0.0, 0.0
    with torch.no_grad():
        for p, g in zip(prompts, gens):
            ids = torch.tensor([p + g.token_ids])
            logits = tiny_model(input_ids=ids).logits[0, len(p) - 1:-1].float() / 1.3
            tok = torch.tensor(g.token_ids)
            full = torch.log_softmax(logits, -1).gather(-1, tok[:, None]).squeeze(-1)
            trunc = torch.log_softmax(truncate_logits(logits, top_k, top_p), -1)
            trunc = trunc.gather(-1, tok[:, None]).squeeze(-1)
            worst = max(worst, (trunc - torch.tensor(g.logprobs)).abs().max().item())
            moved = max(moved, (trunc - full).abs().max().item())
    assert worst < 1e-5, worst
    assert moved > 1e-3  # the truncation really removed mass on this model


@pytest.mark.parametrize("top_k,top_p", [(0, 0.9), (20, 1.0)])
@pytest.mark.parametrize("context", ["window", "full"])
def test_learner_scores_the_truncated_distribution(tiny_tok, tiny_model, top_k, top_p,
                                                   context) -> None:
    # Rollouts sampled with top-p .9 / top-k 20 (free text over the whole vocabulary); the
    # learner, truncating as the sampler did, must reproduce every sampler logprob within 1e-5.
    # Without the truncation it scores a different distribution (gap > 1e-3).
    from agentrl.config import RolloutConfig, TrainConfig
    from agentrl.envpool import InProcessPool
    from agentrl.learn.batch import make_batch
    from agentrl.learn.learner import LocalLearner
    from agentrl.registry import get_algorithm
    from agentrl.rollout.engine import RolloutEngine
    from agentrl.rollout.prompts import PromptBuilder

    cfg = RolloutConfig(max_turns=3, max_new_tokens=6, template="{last_actions} {observation}",
                        context=context, action_format="raw", temperature=1.3, top_k=top_k,
                        top_p=top_p)
    pool = InProcessPool("test/Corridor-v0", {}, 4)
    try:
        pol = HFPolicy(tiny_model, tiny_tok, batch_size=4)
        pol.seed(0)
        trajs = RolloutEngine(pol, pool, PromptBuilder(tiny_tok, cfg), cfg,
                              "test/Corridor-v0").run([0, 0, 1, 1])
    finally:
        pool.close()
    batch = make_batch(trajs, tiny_tok.pad_token_id)
    algo = get_algorithm("grpo")(get_algorithm("grpo").Config(name="grpo"))
    mask = batch.loss_mask > 0

    def gap(**kw) -> float:  # noqa: ANN003
        learner = LocalLearner(tiny_model, TrainConfig(micro_batch_tokens=64), 1.3, algo, **kw)
        lp = learner.score(batch, {"old_logprobs"}).logprobs
        return (lp[mask] - batch.sampler_logprobs[mask]).abs().max().item()

    assert gap(top_k=top_k, top_p=top_p) < 1e-5
    assert gap() > 1e-3
