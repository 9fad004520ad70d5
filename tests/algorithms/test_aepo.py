"""AEPO: stop-gradient clip, entropy-aware advantage, pre-monitoring budget split, branch
choice, and branching rollouts on the deterministic corridor env. Arithmetic in comments."""

from __future__ import annotations

import json
import math

import pytest
import torch

from agentrl.algorithms import functional as Fn
from agentrl.algorithms.aepo import AEPO, AEPOConfig, branch_points, budget_split, turn_entropy
from agentrl.config import RolloutConfig
from agentrl.envpool import InProcessPool
from agentrl.learn.batch import ModelOutputs, make_batch
from agentrl.policies.hf import HFPolicy
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.prompts import PromptBuilder
from agentrl.types import Trajectory, Turn

# --------------------------------------------------------------------------- sg-clip


def _grad(fn, logp: float, adv: float, **kw) -> tuple[float, float]:  # noqa: ANN001
    lp = torch.tensor([[logp]], requires_grad=True)
    loss, _ = fn(lp, torch.zeros(1, 1), torch.tensor([[adv]]), **kw)
    loss.sum().backward()
    return loss.item(), lp.grad.item()


def test_sg_clip_passes_bounded_gradient_where_ppo_passes_none() -> None:
    kw = {"clip_low": 0.2, "clip_high": 0.28, "dual_clip": None}
    # A = 1, logp - old = .5 -> ratio e^.5 = 1.6487 > 1.28: both losses = max(-1.6487, -1.28) = -1.28
    # PPO: the clipped branch is constant -> d/dlogp = 0
    # AEPO: -A (1.28) ratio / sg(ratio) -> d/dlogp = -1.28 * ratio / ratio = -1.28
    ppo = _grad(Fn.policy_loss, 0.5, 1.0, **kw)
    sg = _grad(Fn.sg_clip_policy_loss, 0.5, 1.0, **kw)
    assert ppo == pytest.approx((-1.28, 0.0))
    assert sg == pytest.approx((-1.28, -1.28))
    # inside the trust region both are -A ratio: logp .1 -> loss -e^.1 = -1.10517, grad -1.10517
    assert _grad(Fn.sg_clip_policy_loss, 0.1, 1.0, **kw) == pytest.approx((-1.10517, -1.10517),
                                                                           abs=1e-5)
    # A = -1, ratio e^-.5 = .60653 < .8: loss max(.60653, .8) = .8, constant -> grad 0 (as PPO)
    assert _grad(Fn.sg_clip_policy_loss, -0.5, -1.0, **kw) == pytest.approx((0.8, 0.0))
    # A = -1, ratio 1.6487 > 1.28: max(1.6487, 1.28) = 1.6487 = -A ratio -> grad = -A ratio = 1.6487
    assert _grad(Fn.sg_clip_policy_loss, 0.5, -1.0, **kw) == pytest.approx(
        (math.exp(0.5), math.exp(0.5)), abs=1e-5)


def test_sg_clip_with_dual_clip_matches_ppo_forward() -> None:
    lp = torch.tensor([[0.5, -0.5, 1.5, 0.0]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, -1.0, 2.0]])
    a, _ = Fn.policy_loss(lp, old, adv, 0.2, 0.28, 3.0)
    b, _ = Fn.sg_clip_policy_loss(lp, old, adv, 0.2, 0.28, 3.0)
    assert torch.allclose(a, b)


# --------------------------------------------------------------------------- budget and branching


def test_budget_split_hand_computed() -> None:
    # k = 8, beta .5, H = [.9, .3, .5]: H_root - mean(H_tool) = .9 - .4 = .5
    # sigma(.25) = .562177 ; 8 * .562177 = 4.497 -> int 4, + 1 = 5
    assert budget_split([0.9, 0.3, 0.5], 8, 0.5) == 5
    # a low-entropy root: H = [0, 1]: sigma(-.5) = .377541 ; 8 * .3775 = 3.02 -> 3 + 1 = 4
    assert budget_split([0.0, 1.0], 8, 0.5) == 4
    # single-turn probe (nowhere to branch): all global
    assert budget_split([0.7], 8, 0.5) == 8 and budget_split([], 8, 0.5) == 8
    # clipped to k
    assert budget_split([10.0, 0.0], 2, 5.0) == 2


class _Coins:
    def __init__(self, us: list[float]) -> None:
        self.us = list(us)

    def random(self) -> float:
        return self.us.pop(0)


def test_branch_points_hand_computed_with_consecutive_penalty() -> None:
    cfg = AEPOConfig(name="aepo")  # w .2, p_b .5, penalty .05, beam 2
    h = [0.2, 0.7, 0.9, 0.1]
    # t=1: dH = .5 ; (.45 + .1) * (1 - 0)   = .55  >= .5 -> branch, l = 1
    # t=2: dH = .7 ; (.38 + .14) * (1 - .05) = .494 <  .5 -> no branch (.52 would without penalty), l = 0
    # t=3: dH = -.1; (.52 - .02) * (1 - 0)  = .50  >= .5 -> branch
    assert branch_points([(h, 0)], 5, cfg, _Coins([0.45, 0.38, 0.52])) == [(0, 1), (0, 3)]
    # the budget caps the branches
    assert branch_points([(h, 0)], 1, cfg, _Coins([0.45, 0.38, 0.52])) == [(0, 1)]
    # beam 3: two branches per point, still within budget 3 -> 2 at t=1, 1 at t=3
    cfg3 = AEPOConfig(name="aepo", beam_size=3)
    assert branch_points([(h, 0)], 3, cfg3, _Coins([0.45, 0.38, 0.52])) == [(0, 1), (0, 1), (0, 3)]
    # turns are met in time order across samples; a branch child may only branch after `start`
    two = [([0.0, 0.0, 0.0], 0), ([0.0, 0.0, 0.0], 2)]
    # t=1: sample 0 only (U .9 -> branch) ; t=2: sample 0 (U .1, no), sample 1 (U .6 -> branch)
    assert branch_points(two, 5, cfg, _Coins([0.9, 0.1, 0.6])) == [(0, 1), (1, 2)]


def test_turn_entropy_is_mean_surprisal_over_first_tokens() -> None:
    t = Turn(observation="o", context_ids=[1], action_ids=[1, 2, 3], logprobs=[-1.0, -2.0, -6.0])
    # first 2 tokens: (1 + 2)/2 = 1.5 ; / log(4) = 1.5 / 1.386294 = 1.082021
    assert turn_entropy(t, 2, math.log(4)) == pytest.approx(1.082021, abs=1e-5)
    assert turn_entropy(Turn(observation="o", context_ids=[], action_ids=[], logprobs=[]), 2, 1.0) == 0.0


# --------------------------------------------------------------------------- entropy-aware advantage


def _turn(reward: float, n: int = 2) -> Turn:
    return Turn(observation="o", context_ids=[5], action_ids=[7] * n, logprobs=[-0.5] * n,
                reward=reward)


def test_entropy_aware_advantage_hand_computed() -> None:
    # GRPO: rewards 1, 0 -> +-.70711. Token entropies [1, 3] in both rows: mean 2, Bessel std over
    # 4 tokens = sqrt(4/3) = 1.1547 -> z = -+.86603
    # A~ = .70711 * (1 + .2 * -.86603) = .70711 * .82679 = .58463 ; .70711 * 1.17321 = .82958
    b = make_batch([Trajectory("a", "g", "x", 0, "window", [_turn(1.0)]),
                    Trajectory("b", "g", "x", 0, "window", [_turn(0.0)])])
    ent = torch.zeros_like(b.old_logprobs)
    ent[b.loss_mask > 0] = torch.tensor([1.0, 3.0, 1.0, 3.0])
    b.entropy = ent  # what the learner's scoring pass would attach
    AEPO(AEPOConfig(name="aepo")).advantages(b)
    got = b.advantages[b.loss_mask > 0].tolist()
    assert got == pytest.approx([0.58463, 0.82958, -0.58463, -0.82958], abs=1e-4)
    # switched off: plain GRPO
    AEPO(AEPOConfig(name="aepo", entropy_advantage=False)).advantages(b)
    assert b.advantages[b.loss_mask > 0].tolist() == pytest.approx([0.70711] * 2 + [-0.70711] * 2,
                                                                   abs=1e-4)


def test_micro_batch_scope_uses_current_entropy_in_loss() -> None:
    # official scope: same numbers, but z comes from out.entropy inside the loss. At ratio 1 the
    # token-mean loss is -mean(A~) = -(.58463 + .82958 - .58463 - .82958)/4 = 0; check the grads:
    # d loss / d logp_i = -A~_i / 4
    b = make_batch([Trajectory("a", "g", "x", 0, "window", [_turn(1.0)]),
                    Trajectory("b", "g", "x", 0, "window", [_turn(0.0)])])
    algo = AEPO(AEPOConfig(name="aepo", entropy_adv_scope="micro-batch"))
    assert "entropy" in algo.loss_requires and "entropy" not in algo.requires
    algo.advantages(b)  # batch scope off: no scored entropy needed
    ent = torch.zeros_like(b.old_logprobs)
    ent[b.loss_mask > 0] = torch.tensor([1.0, 3.0, 1.0, 3.0])
    lp = b.old_logprobs.clone().requires_grad_(True)
    algo.loss(ModelOutputs(logprobs=lp, entropy=ent), b)["loss"].backward()
    assert (-4 * lp.grad[b.loss_mask > 0]).tolist() == pytest.approx(
        [0.58463, 0.82958, -0.58463, -0.82958], abs=1e-4)


# --------------------------------------------------------------------------- branching rollouts


def _engine(tok, model, context: str = "window", max_turns: int = 4) -> RolloutEngine:  # noqa: ANN001
    cfg = RolloutConfig(max_turns=max_turns, max_new_tokens=6, constrained=True,
                        action_format="raw", context=context, history=2,
                        template="{last_actions} {observation}")
    pol = HFPolicy(model, tok, batch_size=8)
    pol.seed(0)
    return RolloutEngine(pol, InProcessPool("test/Corridor-v0", {"length": 3}, 8), PromptBuilder(tok, cfg),
                         cfg, "test/Corridor-v0")


def _groups(k: int, seeds: tuple[int, ...]) -> tuple[list[int], list[str]]:
    return [s for s in seeds for _ in range(k)], [f"g{s}" for s in seeds for _ in range(k)]


@pytest.mark.parametrize("context", ["window", "full"])
def test_branch_prefix_is_identical_to_parent(tiny_tok, tiny_model, context: str) -> None:
    eng = _engine(tiny_tok, tiny_model, context)
    # always branch (U + 0 >= 0), one global sample: 3 of the 4 samples per task are branches
    algo = AEPO(AEPOConfig(name="aepo", global_samples=1, branch_threshold=0.0, entropy_weight=0.0))
    seeds, gids = _groups(4, (0, 1))
    trajs = algo.collect(eng, seeds, gids)
    by_id = {t.trajectory_id: t for t in trajs}
    branches = [t for t in trajs if t.extra["sample_kind"] == "branch"]
    assert branches, "the random corridor walk should leave turns to branch at"
    for child in branches:
        parent = by_id[child.extra["parent_id"]]
        t = child.extra["branch_turn"]
        assert child.group_id == parent.group_id and child.seed == parent.seed
        assert child.extra["prefix_turns"] == t >= 1
        for a, b in zip(child.turns[:t], parent.turns[:t]):
            assert (a.action_ids, a.logprobs, a.context_ids, a.observation, a.action) == (
                b.action_ids, b.logprobs, b.context_ids, b.observation, b.action)
        # the branch turn's observation came from the replayed env, not from a copy
        assert child.turns[t].observation == parent.turns[t].observation
        if context == "window":  # same history -> same prompt at the branch turn
            assert child.turns[t].context_ids == parent.turns[t].context_ids
        assert child.termination not in ("env_error", "env_timeout")


@pytest.mark.parametrize("kw", [
    {"global_samples": 1, "branch_threshold": 0.0, "entropy_weight": 0.0},  # branch everywhere
    {"global_samples": 2, "branch_threshold": 1.0, "entropy_weight": 0.0},  # never: fill
    {"global_samples": 0},  # pre-monitoring + random branching
    {"global_samples": 0, "beam_size": 4, "branch_threshold": 0.0, "branch_rounds": 3},
])
def test_budget_never_exceeds_k_samples_per_task(tiny_tok, tiny_model, kw) -> None:
    eng = _engine(tiny_tok, tiny_model)
    algo = AEPO(AEPOConfig(name="aepo", **kw))
    seeds, gids = _groups(3, (0, 1))
    seeds, gids = seeds + [2], gids + ["g2"]  # a one-member group too
    trajs = algo.collect(eng, seeds, gids)
    counts = {g: sum(t.group_id == g for t in trajs) for g in set(gids)}
    assert counts == {"g0": 3, "g1": 3, "g2": 1}
    assert all(t.seed == int(t.group_id[1:]) for t in trajs)
    st = algo.collect_stats
    assert 0 <= st["branch_frac"] <= 1 and st["global_samples_mean"] >= 1


def test_single_turn_episodes_get_no_branches(tiny_tok, tiny_model) -> None:
    eng = _engine(tiny_tok, tiny_model, max_turns=1)
    algo = AEPO(AEPOConfig(name="aepo", branch_threshold=0.0))
    seeds, gids = _groups(4, (0,))
    trajs = algo.collect(eng, seeds, gids)
    assert len(trajs) == 4 and all(len(t.turns) == 1 for t in trajs)
    assert all(t.extra["sample_kind"] == "global" for t in trajs)  # probe says m = k


def test_prefix_replay_detects_a_nondeterministic_env(tiny_tok, tiny_model) -> None:
    eng = _engine(tiny_tok, tiny_model)
    (parent,) = eng.run([0])
    assert len(parent.turns) >= 3  # the untrained tiny model wanders for several turns
    bad = [Turn(**{**t.__dict__}) for t in parent.turns[:2]]
    bad[1].observation = "You are in a different room."  # what a non-deterministic env would do
    (child,) = eng.run([0], prefixes=[bad])
    assert child.termination == "env_error" and "diverged" in child.extra["error"]


def test_branching_rng_state_round_trips_through_json() -> None:
    a = AEPO(AEPOConfig(name="aepo"))
    a.rng.random()
    state = json.loads(json.dumps(a.state_dict()))
    b = AEPO(AEPOConfig(name="aepo"))
    b.load_state_dict(state)
    assert [a.rng.random() for _ in range(3)] == [b.rng.random() for _ in range(3)]
