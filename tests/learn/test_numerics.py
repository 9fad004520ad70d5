"""Numerical faults: a non-finite loss or gradient skips that optimizer step (counted in
``train/nonfinite_skipped``, weights and optimizer state untouched); ``train.max_nonfinite_updates``
skipped steps in a row stop the run with a message saying what to try."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from agentrl.config import RolloutConfig, TrainConfig, load_config
from agentrl.envpool import InProcessPool
from agentrl.learn.batch import make_batch
from agentrl.learn.learner import LocalLearner, NonFiniteUpdates
from agentrl.policies.hf import HFPolicy
from agentrl.registry import get_algorithm
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.prompts import PromptBuilder


def _batch_and_learner(tok, model):
    """Four GRPO episodes of the corridor env and a learner for them."""
    rcfg = RolloutConfig(max_turns=3, max_new_tokens=5, template="{observation}",
                         action_format="raw", constrained=True)
    policy = HFPolicy(model, tok, batch_size=4)
    policy.seed(0)
    pool = InProcessPool("test/Corridor-v0", {}, 4)
    engine = RolloutEngine(policy, pool, PromptBuilder(tok, rcfg), rcfg, "test/Corridor-v0")
    batch = make_batch(engine.run([0, 0, 1, 1]), tok.pad_token_id)
    pool.close()
    algo = get_algorithm("grpo")(load_config(None, ["algorithm.name=grpo"]).algorithm)
    algo.setup(model)
    return batch, LocalLearner(model, TrainConfig(micro_batch_tokens=256), 1.0, algo)


def _poison(learner, what: str) -> None:
    """Make the algorithm's loss NaN/inf, or leave the loss finite and make a gradient NaN."""
    loss = learner.algorithm.loss

    def bad(out, mb):
        terms = loss(out, mb)
        if what == "loss":
            terms["loss"] = terms["loss"] * float("nan")
        elif what == "inf_loss":
            terms["loss"] = terms["loss"] + float("inf")
        else:  # a finite loss whose gradient is not: d/dx sqrt(x) at 0 is inf, times 0 = nan
            p = next(learner.model.parameters())
            terms["loss"] = terms["loss"] + 0.0 * torch.sqrt((p * 0).sum())
        return terms

    learner.algorithm.loss = bad


def _state(learner):
    return (copy.deepcopy(learner.optimizer.state_dict()),
            {k: v.clone() for k, v in learner.model.state_dict().items()})


def _same(a, b) -> bool:
    (opt_a, w_a), (opt_b, w_b) = a, b
    if opt_a["param_groups"] != opt_b["param_groups"] or opt_a["state"].keys() != opt_b["state"].keys():
        return False
    for k in opt_a["state"]:
        for name, v in opt_a["state"][k].items():
            if not torch.equal(torch.as_tensor(v), torch.as_tensor(opt_b["state"][k][name])):
                return False
    return all(torch.equal(w_a[k], w_b[k]) for k in w_a)


@pytest.mark.parametrize("what", ["loss", "inf_loss", "grad"])
def test_a_nonfinite_step_is_skipped_and_leaves_the_optimizer_untouched(
        tiny_tok, tiny_model, what: str) -> None:
    batch, learner = _batch_and_learner(tiny_tok, copy.deepcopy(tiny_model))
    learner.cfg.minibatches = 2
    learner.algorithm.credit(batch)
    m = learner.update(batch, random.Random(0))  # a normal update: AdamW state exists now
    assert m["train/nonfinite_skipped"] == 0.0 and learner.optimizer.state
    before = _state(learner)
    _poison(learner, what)
    m = learner.update(batch, random.Random(1))
    assert m["train/nonfinite_skipped"] == 2.0  # both minibatches' steps
    assert _same(before, _state(learner)), "a skipped step changed weights or optimizer state"
    assert all(p.grad is None for p in learner.model.parameters())  # nothing left to apply


def test_nonfinite_steps_in_a_row_stop_with_advice(tiny_tok, tiny_model) -> None:
    batch, learner = _batch_and_learner(tiny_tok, copy.deepcopy(tiny_model))
    learner.cfg.minibatches, learner.cfg.max_nonfinite_updates = 2, 3
    learner.algorithm.credit(batch)
    clean = learner.algorithm.loss
    _poison(learner, "loss")
    learner.update(batch, random.Random(0))  # 2 in a row
    learner.algorithm.loss = clean
    learner.update(batch, random.Random(0))  # finite steps reset the streak
    _poison(learner, "loss")
    learner.update(batch, random.Random(0))  # 2 in a row again: still under 3
    with pytest.raises(NonFiniteUpdates) as e:
        learner.update(batch, random.Random(0))
    msg = str(e.value)
    assert "3 optimizer steps in a row" in msg and "train.lr" in msg and "--resume" in msg
