"""Rollout + learner: token-exact trajectories and on-policy consistency (ratio 1)."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import CorridorEnv

from agentrl.config import RolloutConfig, TrainConfig, load_config
from agentrl.envpool import InProcessPool
from agentrl.learn.batch import make_batch, to_samples
from agentrl.learn.learner import LocalLearner
from agentrl.policies.hf import HFPolicy
from agentrl.registry import get_algorithm, register_env
from agentrl.rollout.context import CONTEXT_MODES, context_mode
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.prompts import PromptBuilder, parse_action
from agentrl.types import read_jsonl, write_jsonl


def _engine(tok, model, **kw) -> RolloutEngine:
    cfg = RolloutConfig(**{"max_turns": 4, "max_new_tokens": 6, "template": "{last_actions} {observation}",
                           **kw})
    pool = InProcessPool("test/Corridor-v0", {}, 6)
    pol = HFPolicy(model, tok, batch_size=4)
    pol.seed(0)
    return RolloutEngine(pol, pool, PromptBuilder(tok, cfg), cfg, "test/Corridor-v0")


def _learner(model, algo="grpo", **kw) -> LocalLearner:
    cfg = load_config(None, [f"algorithm.name={algo}"]).algorithm
    for k, v in kw.items():
        setattr(cfg, k, v)
    a = get_algorithm(algo)(cfg)
    a.setup(model)
    return LocalLearner(model, TrainConfig(micro_batch_tokens=64), 1.0, a)


@pytest.mark.parametrize("context", ["window", "full"])
@pytest.mark.parametrize("constrained", [True, False])
def test_trainer_logprobs_equal_sampler_logprobs(tiny_tok, tiny_model, context, constrained) -> None:
    eng = _engine(tiny_tok, tiny_model, context=context, constrained=constrained,
                  action_format="raw", history=1)
    trajs = eng.run([0, 0, 1, 1, 2, 2])
    assert all(t.turns for t in trajs)
    batch = make_batch(trajs, tiny_tok.pad_token_id)
    lp = _learner(tiny_model).score(batch, {"old_logprobs"}).logprobs
    mask = batch.loss_mask > 0
    gap = (lp[mask] - batch.old_logprobs[mask]).abs().max().item()
    assert gap < 1e-5, gap
    if constrained:  # only admissible actions were produced
        assert all(t.action in ("go east", "go west", "take coin") for tr in trajs for t in tr.turns)


def test_first_ppo_ratio_is_one(tiny_tok, tiny_model) -> None:
    trajs = _engine(tiny_tok, tiny_model, constrained=True, action_format="raw").run([0, 0, 1, 1])
    batch = make_batch(trajs, tiny_tok.pad_token_id)
    learner = _learner(tiny_model)
    learner.algorithm.credit(batch)
    out = learner.forward(batch.select(range(batch.num_rows)))
    ratio = torch.exp(out.logprobs - batch.old_logprobs)[batch.loss_mask > 0]
    assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-5)


def test_micro_batch_split_gives_the_same_gradient(tiny_tok, tiny_model) -> None:
    trajs = _engine(tiny_tok, tiny_model, constrained=True, action_format="raw").run([0, 0, 1, 1, 2, 2])
    grads = []
    for budget in (10_000, 40):  # one micro-batch vs several
        model = type(tiny_model)(tiny_model.config)
        model.load_state_dict(tiny_model.state_dict())
        learner = _learner(model)
        learner.cfg.micro_batch_tokens = budget
        batch = make_batch(trajs, tiny_tok.pad_token_id)
        learner.algorithm.credit(batch)
        learner.cfg.lr = 0.0
        for g in learner.optimizer.param_groups:
            g["lr"] = 0.0
        learner.update(batch, random.Random(0))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_padding_and_observation_tokens_do_not_change_the_loss(tiny_tok, tiny_model) -> None:
    trajs = _engine(tiny_tok, tiny_model, constrained=True, action_format="raw").run([0, 0, 1, 1])
    learner = _learner(tiny_model)
    b1 = make_batch(trajs, tiny_tok.pad_token_id)
    learner.algorithm.credit(b1)
    b2 = make_batch(trajs, pad_id=3)  # a different pad id
    b2.advantages = b1.advantages.clone()
    # garbage in old_logprobs/advantages on observation tokens must not matter
    off = b2.loss_mask == 0
    b2.old_logprobs[off] = 123.0
    b2.advantages[off] = -55.0
    losses = []
    for b in (b1, b2):
        mb = b.select(range(b.num_rows))
        losses.append(learner.algorithm.loss(learner.forward(mb), mb)["loss"].item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_group_order_does_not_change_advantages(tiny_tok, tiny_model) -> None:
    trajs = _engine(tiny_tok, tiny_model, constrained=True, action_format="raw").run(
        [0, 0, 0, 1, 1, 1], ["a", "a", "a", "b", "b", "b"])
    learner = _learner(tiny_model)
    b1 = make_batch(trajs, 0)
    learner.algorithm.credit(b1)
    perm = [4, 1, 5, 0, 3, 2]
    b2 = make_batch([trajs[i] for i in perm], 0)
    learner.algorithm.credit(b2)
    per_traj1 = {t.trajectory_id: b1.advantages[b1.row_traj == i].sum().item()
                 for i, t in enumerate(b1.trajectories)}
    per_traj2 = {t.trajectory_id: b2.advantages[b2.row_traj == i].sum().item()
                 for i, t in enumerate(b2.trajectories)}
    for k in per_traj1:
        assert per_traj1[k] == pytest.approx(per_traj2[k], abs=1e-6)


def test_jsonl_roundtrip_and_samples(tmp_path, tiny_tok, tiny_model) -> None:
    for context in ("window", "full"):
        trajs = _engine(tiny_tok, tiny_model, context=context, constrained=True,
                        action_format="raw").run([0, 1])
        p = tmp_path / f"{context}.jsonl"
        write_jsonl(str(p), trajs)
        back = read_jsonl(str(p))
        assert [t.to_dict() for t in back] == [t.to_dict() for t in trajs]
        samples = to_samples(back)
        n_turns = sum(t.num_turns for t in trajs)
        assert len(samples) == (n_turns if context == "window" else len(trajs))
        for s in samples:
            assert len(s.input_ids) == len(s.loss_mask) == len(s.old_logprobs)
            # action tokens in the sample are exactly the sampled ids
        toks = [tok for t in back for turn in t.turns for tok in turn.action_ids]
        flat = [tid for s in samples for tid, m in zip(s.input_ids, s.loss_mask) if m]
        assert toks == flat


def test_full_mode_context_is_the_exact_conversation(tiny_tok, tiny_model) -> None:
    eng = _engine(tiny_tok, tiny_model, context="full", constrained=True, action_format="raw")
    (traj,) = eng.run([0])
    (s,) = to_samples([traj])
    # Re-running the policy on the stored sample's context reproduces what it saw.
    pos = 0
    for turn in traj.turns:
        pos += len(turn.context_ids)
        assert s.input_ids[pos:pos + len(turn.action_ids)] == turn.action_ids
        pos += len(turn.action_ids)
    assert pos == len(s.input_ids)


def test_finished_episodes_stop_generating_and_errors_end_one_episode(tiny_tok, tiny_model) -> None:
    cfg = RolloutConfig(max_turns=6, max_new_tokens=4, constrained=True, action_format="raw",
                        template="{observation}")
    pool = InProcessPool("test/Corridor-v0", {"length": 1, "crash_on": "take coin"}, 8)
    pol = HFPolicy(tiny_model, tiny_tok)
    calls = []
    orig = pol.generate

    def counting(prompts, sampling, candidates=None):
        calls.append(len(prompts))
        return orig(prompts, sampling, candidates)

    pol.generate = counting
    trajs = RolloutEngine(pol, pool, PromptBuilder(tiny_tok, cfg), cfg, "x").run(list(range(8)))
    reasons = {t.termination for t in trajs}
    assert calls == sorted(calls, reverse=True)  # live set only shrinks
    assert sum(t.num_turns for t in trajs) == sum(calls)
    assert reasons <= {"success", "env_error", "max_turns"}
    errs = [t for t in trajs if t.termination == "env_error"]
    assert all("injected crash" in t.extra["error"] for t in errs)
    assert pool.stats["env_error"] == len(errs)


def test_context_budget_ends_the_episode(tiny_tok, tiny_model) -> None:
    eng = _engine(tiny_tok, tiny_model, context="full", constrained=True, action_format="raw",
                  max_context_tokens=40, max_turns=10)
    trajs = eng.run([0, 1])
    assert {t.termination for t in trajs} <= {"context_limit", "success"}
    assert any(t.termination == "context_limit" for t in trajs)


@pytest.mark.parametrize("text,fmt,expected", [
    ("<think>x</think><action>go east</action>", "tags", ("go east", True)),
    ("no tags here at all, just rambling text", "tags", ("just rambling text"[-30:], False)),
    ("", "tags", ("", False)),
    ("\x00\xff binary", "tags", ("\x00\xff binary", False)),
    ("  go west \n", "raw", ("go west", True)),
])
def test_parse_action_never_raises(text, fmt, expected) -> None:
    action, ok = parse_action(text, fmt)
    assert ok == expected[1]
    if ok:
        assert action == expected[0]


def test_context_modes_are_shared_objects_and_unknown_modes_fail_clearly() -> None:
    assert set(CONTEXT_MODES) == {"window", "full"}
    assert [list(r) for r in context_mode("window").samples(3)] == [[0], [1], [2]]
    assert [list(r) for r in context_mode("full").samples(3)] == [[0, 1, 2]]
    assert context_mode("full").samples(0) == []
    with pytest.raises(ValueError, match="unknown context mode 'chat'.*full, window"):
        context_mode("chat")


def test_info_keys_an_env_registers_as_unrecorded_are_not_stored(tiny_tok, tiny_model) -> None:
    register_env("test/CorridorQuiet-v0", entry_point=CorridorEnv, description="quiet corridor",
                 max_episode_steps=20, unrecorded_info=("task", "admissible_actions"))
    cfg = RolloutConfig(max_turns=2, max_new_tokens=6, template="{observation}",
                        constrained=True, action_format="raw")
    pol = HFPolicy(tiny_model, tiny_tok)
    pool = InProcessPool("test/CorridorQuiet-v0", {}, 2)
    quiet = RolloutEngine(pol, pool, PromptBuilder(tiny_tok, cfg), cfg,
                          "test/CorridorQuiet-v0").run([0, 1])
    loud = _engine(tiny_tok, tiny_model, max_turns=2, constrained=True,
                   action_format="raw").run([0, 1])
    assert all("task" in u.info and "admissible_actions" in u.info for t in loud for u in t.turns)
    infos = [u.info for t in quiet for u in t.turns]
    assert infos and all("task" not in i and "admissible_actions" not in i and "state_key" in i
                         for i in infos)
    assert quiet[0].task  # the engine still reads the key; it only does not store it


def test_dumps_from_before_shaping_had_its_own_field_still_load(tmp_path) -> None:
    # older dumps stored the shaped reward as `reward` and the env's as `env_reward`
    old = {"trajectory_id": "a", "group_id": "g", "env_id": "x", "seed": 0,
           "context_mode": "window",
           "turns": [{"observation": "o", "context_ids": [1], "action_ids": [2],
                      "logprobs": [-0.1], "reward": 0.89, "env_reward": 1.0},
                     {"observation": "o", "context_ids": [1], "action_ids": [2],
                      "logprobs": [-0.1], "reward": -0.11, "env_reward": 0.0}]}
    p = tmp_path / "old.jsonl"
    p.write_text(json.dumps(old) + "\n", encoding="utf-8")
    (t,) = read_jsonl(str(p))
    assert [u.reward for u in t.turns] == [1.0, 0.0]
    assert [u.shaping for u in t.turns] == pytest.approx([-0.11, -0.11])
    assert t.total_reward == pytest.approx(0.78) and t.env_return == 1.0
    assert "env_reward" not in t.turns[0].__dict__ and read_jsonl(str(p))[0].to_dict() == t.to_dict()


def test_constrained_replies_are_never_cut_by_the_token_limit(tiny_tok, tiny_model) -> None:
    """Under constrained decoding the budget stretches to the longest admissible action: with
    max_new_tokens=1 (shorter than every Corridor action) each reply still completes an action,
    and the learner scores the longer replies as the sampler did."""
    eng = _engine(tiny_tok, tiny_model, constrained=True, action_format="raw", max_new_tokens=1)
    trajs = eng.run([0, 0, 1, 1])
    turns = [t for tr in trajs for t in tr.turns]
    assert turns and all(len(t.action_ids) > 1 for t in turns)
    assert all(t.finish_reason != "length" and t.action_valid for t in turns)
    assert all(t.action in ("go east", "go west", "take coin") for t in turns)
    batch = make_batch(trajs, tiny_tok.pad_token_id)
    lp = _learner(tiny_model).score(batch, {"old_logprobs"}).logprobs
    mask = batch.loss_mask > 0
    assert (lp[mask] - batch.old_logprobs[mask]).abs().max().item() < 1e-5
