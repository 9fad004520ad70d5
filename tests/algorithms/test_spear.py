"""SPEAR: schedules, intrinsic reward, P50 recalibration, replay rows and loss, Dr.BoT options,
buffer checkpoint/resume. Arithmetic in comments."""

from __future__ import annotations

import json

import pytest
import torch

from agentrl.algorithms.spear import (
    SPEAR,
    SPEARConfig,
    is_incomplete,
    is_repetitive,
    replay_weight,
    tool_calls,
    tool_reward_scale,
    top_std_groups,
)
from agentrl.learn.batch import ModelOutputs
from agentrl.types import Trajectory, Turn


def turn(reward: float = 0.0, n: int = 2, **kw) -> Turn:  # noqa: ANN003
    return Turn(observation="o", context_ids=[5, 6], action_ids=[7] * n, logprobs=[-0.5] * n,
                reward=reward, **kw)


_ids = iter(range(10**6))


def traj(gid: str, rewards: list[float], mode: str = "window", **kw) -> Trajectory:  # noqa: ANN003
    return Trajectory(f"{gid}-{next(_ids)}", gid, "x", 0, mode, [turn(r, **kw) for r in rewards])


def spear(**kw) -> SPEAR:  # noqa: ANN003
    # no intrinsic reward and plain PPO unless a test asks: the numbers stay hand-checkable
    return SPEAR(SPEARConfig(name="spear", **{"tool_reward_schedule": "none",
                                              "loss_mode": "vanilla", **kw}))


def test_replay_weight_warmup_schedule() -> None:
    # gamma(t) = (1 - cos(pi t / 200)) / 2: t=0 -> 0 ; t=50 -> (1 - .70711)/2 = .14645
    # t=100 -> (1 - 0)/2 = .5 ; t >= 200 -> c
    got = [replay_weight(t, 1.0, 200) for t in (0, 50, 100, 200, 300)]
    assert got == pytest.approx([0.0, 0.146447, 0.5, 1.0, 1.0], abs=1e-6)
    assert replay_weight(10, 2.0, 0) == 2.0 and replay_weight(100, 2.0, 200) == pytest.approx(1.0)


def test_tool_reward_cosine_decay() -> None:
    # mu(t) = (cos(pi t/200) + 1)/2: t=0 -> 1 ; 100 -> .5 ; 150 -> (-.70711 + 1)/2 = .14645 ;
    # 200 -> 0 ; past T -> 0
    got = [tool_reward_scale(t, "cosine", 200) for t in (0, 100, 150, 200, 201)]
    assert got == pytest.approx([1.0, 0.5, 0.146447, 0.0, 0.0], abs=1e-6)
    assert tool_reward_scale(500, "constant", 200) == 1.0 and tool_reward_scale(0, "none", 200) == 0.0


def test_intrinsic_reward_uses_tool_calls_else_episode_length() -> None:
    plain = traj("g", [0.0, 0.0, 1.0])  # 3 steps, no tool_calls info -> n = 3
    tools = traj("g", [0.0, 1.0])
    tools.turns[0].info["tool_calls"] = 1
    tools.turns[1].info["tool_calls"] = 4  # running count: 4 calls
    assert tool_calls(plain) == 3 and tool_calls(tools) == 4
    # t = 100 of 200 -> mu = .5 ; S = R + .5 * min(1, .1 n): plain 1 + .5*.3 = 1.15, tools 1 + .5*.4 = 1.2
    # long episodes hit the cap: 12 steps -> min(1, 1.2) = 1 -> 0 + .5 * 1 = .5
    algo = SPEAR(SPEARConfig(name="spear", tool_reward_schedule="cosine", tool_reward_steps=200))
    algo.step = 100
    long = traj("g", [0.0] * 12)
    assert algo.scores([plain, tools, long]).tolist() == pytest.approx([1.15, 1.2, 0.5])


def test_dr_bot_checks() -> None:
    # (1, 2) occurs 3 times in [1,2,1,2,1,2]: repetitive for n=2, count=3 ; not for count=4
    assert is_repetitive([1, 2, 1, 2, 1, 2], 2, 3) and not is_repetitive([1, 2, 1, 2, 1, 2], 2, 4)
    assert not is_repetitive([1, 2], 20, 10)
    # parse failure: invalid turn while the env itself reported action_valid True
    assert is_incomplete(turn(action_valid=False, info={"action_valid": True}))
    assert not is_incomplete(turn(action_valid=False, info={"action_valid": False}))
    assert not is_incomplete(turn())
    # group std: a [0, 2] std 1.414 ; b [0, 1] .707 ; c [1, 1] 0 ; d [0, 0, 3] 1.732
    # top 75% of 4 groups -> int(3) = 3 groups: d, a, b
    scores = {"a": [0.0, 2.0], "b": [0.0, 1.0], "c": [1.0, 1.0], "d": [0.0, 0.0, 3.0]}
    assert top_std_groups(scores, 0.75) == {"d", "a", "b"}
    assert top_std_groups(scores, 0.1) == {"d"}  # at least one group


def test_group_filter_and_masks_in_build_batch() -> None:
    algo = spear(group_filter_ratio=0.5, mask_overlong=True, mask_incomplete=True)
    over = traj("a", [1.0])
    over.turns[0].finish_reason = "length"
    bad = traj("a", [0.0])
    bad.turns[0].action_valid = False  # parse failure (no env info saying otherwise)
    trajs = [over, bad, traj("flat", [1.0]), traj("flat", [1.0])]
    b = algo.build_batch(trajs, 0)
    # group "flat" has std 0: the top-50% filter keeps only "a"; both of its turns are masked
    assert [t.group_id for t in b.trajectories] == ["a", "a"]
    assert b.loss_mask.sum() == 0 and algo.stats["masked_turn_frac"] == 1.0
    # the P50 history still saw both groups: means (1 + 0)/2 = .5 and 1
    assert list(algo.baseline) == [0.5, 1.0]


def _fill(algo: SPEAR, scores: list[float], step: int = 0) -> None:
    algo.buffer = [{"trajectory": traj(f"old{i}", [s]), "score": s, "advantage": 0.3,
                    "step": step} for i, s in enumerate(scores)]


def test_p50_recalibration_and_trigger() -> None:
    algo = spear(replay_size=2, replay_trigger=1.0)
    algo.baseline.extend([0.0, 1.0, 2.0, 5.0])  # P50 = (1 + 2)/2 = 1.5
    # 3 stored scores beat 1.5 (3 > 1.0 * 2): fires. A~ = S - 1.5 = [1.5, .5, .25, -.5];
    # positives 3 -> power of two <= min(3, replay_size 2) = 2 samples, buffer cleared
    _fill(algo, [3.0, 2.0, 1.75, 1.0])
    rows, adv = algo._draw_replay()
    assert len(rows) == 2 and set(adv) <= {1.5, 0.5, 0.25} and algo.buffer == []
    # only 2 beat P50 (not > 2): no replay, buffer kept
    _fill(algo, [3.0, 2.0, 1.0, 1.0])
    assert algo._draw_replay() == ([], []) and len(algo.buffer) == 4
    # official option: stored advantage x decay (.3 * .5 = .15), no recalibration
    algo.cfg.replay_adv_decay = 0.5
    _fill(algo, [3.0, 2.0, 1.75])
    assert algo._draw_replay()[1] == pytest.approx([0.15, 0.15])
    # empty history / empty buffer: nothing to replay, no crash
    empty = spear()
    assert empty._draw_replay() == ([], [])
    empty.baseline.append(0.0)
    assert empty._draw_replay() == ([], [])


def test_replay_rows_join_the_batch_with_recalibrated_advantages() -> None:
    algo = spear(replay_size=1, replay_trigger=0.0)
    algo.baseline.extend([0.0, 1.0])  # P50 = .5
    _fill(algo, [1.0])  # A~ = 1 - .5 = .5
    on = [traj("g", [1.0]), traj("g", [0.0]), traj("solo", [1.0])]
    b = algo.build_batch(on, 0)
    assert b.num_rows == 4 and b.replayed.tolist() == [False, False, False, True]
    algo.advantages(b)
    first = [b.advantages[r][b.loss_mask[r] > 0][0].item() for r in range(4)]
    # on-policy, no std: g mean .5 -> +-.5 ; one-member group -> 0 ; replay row -> .5.
    # The replayed trajectory (its own old group id) is not part of any on-policy group.
    assert first == pytest.approx([0.5, -0.5, 0.0, 0.5])
    # stored after the update: the one positive on-policy turn
    assert len(algo.buffer) == 1 and algo.buffer[0]["score"] == 1.0


def test_loss_weights_replay_rows_by_gamma() -> None:
    algo = spear(replay_size=1, replay_trigger=0.0, replay_warmup_steps=200)
    algo.baseline.extend([0.0, 1.0])
    _fill(algo, [1.0])
    b = algo.build_batch([traj("g", [1.0]), traj("g", [0.0])], 0)
    algo.advantages(b)
    algo.step = 100  # gamma = .5
    lp = b.old_logprobs.clone().requires_grad_(True)
    terms = algo.loss(ModelOutputs(logprobs=lp), b)
    # ratio 1: per-token -A ; token-mean over all 6 tokens of the minibatch:
    # on-policy (-.5 -.5 +.5 +.5)/6 = 0 ; replay (-.5 -.5)/6 = -.16667, weighted by .5 -> -.08333
    assert terms["replay_loss"].item() == pytest.approx(-1 / 6, abs=1e-6)
    assert terms["loss"].item() == pytest.approx(-1 / 12, abs=1e-6)
    terms["loss"].backward()
    # grads per token: on-policy -A/6 = -+.08333 ; replay -gamma * A~ / 6 = -.04167
    g = lp.grad[b.loss_mask > 0].tolist()
    assert g == pytest.approx([-1 / 12] * 2 + [1 / 12] * 2 + [-1 / 24] * 2, abs=1e-6)


def test_replay_keeps_its_behaviour_logprobs_under_recompute_and_tis() -> None:
    # On-policy rows g (returns 1, 0) sampled now at logprob −.5 per token; the replayed row
    # was collected earlier at −1.0 per token. The learner's recomputed logprob is −.3 on every
    # token. After attach(recompute): on-policy old = −.3 (ratio 1), replayed old stays −1.0:
    # replay ratio = exp(−.3 − (−1.0)) = exp(.7) = 2.013753 (π_θ / π_collect; overwriting it
    # would have made it 1). Mismatch metric over on-policy rows only: |−.3 − (−.5)| = .2
    # (the replayed rows' .7 would have raised the mean to (4·.2 + 2·.7)/6 = .36667).
    # TIS (cap 2): on-policy weight exp(−.3 + .5) = exp(.2) = 1.221403; replayed exp(0) = 1.
    from agentrl.learn.batch import Scores
    from agentrl.learn.learner import apply_tis
    from agentrl.run.alarms import logprob_mismatch

    algo = spear(replay_size=1, replay_trigger=0.0)
    algo.baseline.extend([0.0, 1.0])
    algo.buffer = [{"trajectory": traj("old", [1.0]), "score": 1.0, "advantage": .3, "step": 0}]
    for t in algo.buffer[0]["trajectory"].turns:
        t.logprobs = [-1.0] * len(t.logprobs)
    b = algo.build_batch([traj("g", [1.0]), traj("g", [0.0])], 0)
    assert b.replayed.tolist() == [False, False, True]
    mask = b.loss_mask > 0
    learner_lp = torch.where(mask, torch.full_like(b.old_logprobs, -0.3), torch.zeros_like(
        b.old_logprobs))
    scores = Scores(logprobs=learner_lp, rows=torch.ones(b.num_rows, dtype=torch.bool))
    m = logprob_mismatch(scores, b)
    assert m["train/logprob_mismatch"] == pytest.approx(0.2, abs=1e-6)
    assert m["train/logprob_mismatch_max"] == pytest.approx(0.2, abs=1e-6)
    b.attach(scores, recompute_old_logprobs=True)
    ratio = torch.exp(learner_lp - b.old_logprobs)
    assert ratio[:2][mask[:2]].tolist() == pytest.approx([1.0] * 4)
    assert ratio[2][mask[2]].tolist() == pytest.approx([2.013753] * 2, abs=1e-6)
    algo.advantages(b)
    adv = b.advantages.clone()
    tis = apply_tis(b, 2.0)
    w = (b.advantages[mask] / adv[mask]).tolist()
    assert w == pytest.approx([1.221403] * 4 + [1.0] * 2, abs=1e-6)
    assert tis["train/tis_weight_mean"] == pytest.approx((4 * 1.221403 + 2) / 6, abs=1e-6)


def test_no_replay_rows_gives_plain_grpo_loss() -> None:
    algo = spear()
    b = algo.build_batch([traj("g", [1.0]), traj("g", [0.0])], 0)  # empty buffer
    assert not b.replayed.any()
    algo.advantages(b)
    lp = b.old_logprobs.clone().requires_grad_(True)
    terms = algo.loss(ModelOutputs(logprobs=lp), b)
    assert terms["replay_loss"].item() == 0.0 and terms["loss"].item() == pytest.approx(0.0)


def test_all_equal_rewards_store_nothing() -> None:
    algo = spear()
    b = algo.build_batch([traj("g", [1.0]), traj("g", [1.0])], 0)
    algo.advantages(b)
    assert torch.all(b.advantages == 0) and algo.buffer == []


def test_window_mode_stores_turns_full_mode_stores_trajectories() -> None:
    for mode, units in (("window", 2), ("full", 1)):
        algo = spear()
        b = algo.build_batch([traj("g", [0.0, 1.0], mode), traj("g", [0.0], mode)], 0)
        algo.advantages(b)
        assert len(algo.buffer) == units
        assert all(len(e["trajectory"].turns) == 2 // units for e in algo.buffer)


def test_stale_entries_expire() -> None:
    algo = spear(replay_tolerate_steps=2)
    _fill(algo, [1.0, 1.0], step=0)
    algo.step = 3  # 3 - 0 > 2: stale
    b = algo.build_batch([traj("g", [1.0]), traj("g", [0.0])], 0)
    algo.advantages(b)
    assert [e["step"] for e in algo.buffer] == [3]


def test_buffer_checkpoint_resume_restores_exactly() -> None:
    algo = spear(replay_size=2, replay_trigger=0.5)
    for it in range(3):
        b = algo.build_batch([traj("g", [1.0, 0.0]), traj("g", [0.0]), traj("h", [2.0]),
                              traj("h", [0.0, 0.0])], 0)
        algo.advantages(b)
        algo.on_iteration_end(it, {})
    algo.rng.random()
    state = json.loads(json.dumps(algo.state_dict()))  # must be plain JSON
    assert state["buffer"] and state["step"] == 3
    again = spear(replay_size=2, replay_trigger=0.5)
    again.load_state_dict(state)
    assert json.dumps(again.state_dict(), sort_keys=True) == json.dumps(algo.state_dict(),
                                                                        sort_keys=True)
    # and both draw the same replay next
    r1, a1 = algo._draw_replay()
    r2, a2 = again._draw_replay()
    assert r1 and [t.to_dict() for t in r1] == [t.to_dict() for t in r2] and a1 == a2
