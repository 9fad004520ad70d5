"""Shared loss options: Clip-Cov / KL-Cov token selection and losses, dynamic group filtering.
Arithmetic in comments."""

from __future__ import annotations

import pytest
import torch

from agentrl.algorithms import functional as Fn
from agentrl.algorithms.base import zero_variance_groups
from agentrl.algorithms.grpo import GRPO, GRPOConfig
from agentrl.learn.batch import ModelOutputs, make_batch
from agentrl.types import Trajectory, Turn

# One sequence of 4 tokens. A = [2, 2, 0, 0] -> mean 1 -> A - mean = [1, 1, -1, -1]
# logp = [-.1, -3.1, -.5, -3.1] -> mean -1.7 -> logp - mean = [1.6, -1.4, 1.2, -1.4]
# Cov = [1.6, -1.4, -1.2, 1.4]
ADV = torch.tensor([[2.0, 2.0, 0.0, 0.0]])
LOGP = torch.tensor([[-0.1, -3.1, -0.5, -3.1]])
MASK = torch.ones(1, 4)


def test_token_covariance_hand_computed() -> None:
    cov = Fn.token_covariance(LOGP, ADV, MASK)
    assert cov.tolist()[0] == pytest.approx([1.6, -1.4, -1.2, 1.4], abs=1e-6)
    # a masked-out token neither counts in the means nor gets a covariance
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # A means over 3 tokens: 4/3 ; logp mean: -3.7/3 = -1.23333
    # token 0: (2 - 1.33333) * (-.1 + 1.23333) = .66667 * 1.13333 = .75556
    assert Fn.token_covariance(LOGP, ADV, m)[0, 0].item() == pytest.approx(0.75556, abs=1e-4)
    assert Fn.token_covariance(LOGP, ADV, m)[0, 3].item() == 0.0


def test_clip_cov_selects_within_bounds_and_excludes_clipped() -> None:
    cov = Fn.token_covariance(LOGP, ADV, MASK)
    everyone = torch.ones(1, 4, dtype=torch.bool)
    # lb 1 < Cov < ub 5: tokens 0 (1.6) and 3 (1.4); ratio .5 -> max(1, int(.5*4)) = 2 -> both
    assert Fn.clip_cov_select(cov, MASK, everyone, 0.5, 1.0, 5.0).tolist() == [[True, False, False, True]]
    # ub 1.5 leaves only token 3
    assert Fn.clip_cov_select(cov, MASK, everyone, 0.5, 1.0, 1.5).tolist() == [[False, False, False, True]]
    # ratio 2e-4 -> int(.0008) = 0 -> at least 1 token, one of the two candidates
    one = Fn.clip_cov_select(cov, MASK, everyone, 2e-4, 1.0, 5.0)
    assert one.sum() == 1 and (one[0, 0] or one[0, 3])
    # a token the PPO clip already holds is not a candidate
    not_clipped = torch.tensor([[False, True, True, True]])
    assert Fn.clip_cov_select(cov, MASK, not_clipped, 0.5, 1.0, 5.0).tolist() == [[False, False, False, True]]
    # no candidate at all: nothing selected
    assert not Fn.clip_cov_select(cov, MASK, everyone, 0.5, 10.0, 20.0).any()


def test_clip_cov_loss_through_pg_loss_detaches_selected_tokens() -> None:
    # ratio 1 everywhere (logp = old): per-token loss -A rho = [-2, -2, 0, 0]; Clip-Cov (ratio .5,
    # cov in (1, 5)) zeroes tokens 0 and 3 -> [0, -2, 0, 0]; token-mean = -2/4 = -.5
    # grad wrt logp: token 1: -A * rho / 4 = -.5 ; token 0: 0 (selected) ; tokens 2, 3: A = 0
    algo = GRPO(GRPOConfig(name="grpo", loss_mode="clip_cov", clip_cov_ratio=0.5))
    b = make_batch([Trajectory("t", "g", "x", 0, "window", [
        Turn(observation="o", context_ids=[5], action_ids=[7, 7, 7, 7],
             logprobs=LOGP[0].tolist())])])
    lp = b.old_logprobs.clone().requires_grad_(True)
    adv = torch.zeros_like(lp)
    adv[b.loss_mask > 0] = ADV.flatten()
    terms = algo.pg_loss(ModelOutputs(logprobs=lp), b, adv)
    assert terms["loss"].item() == pytest.approx(-0.5)
    assert terms["cov_selected_frac"].item() == pytest.approx(0.5)
    terms["loss"].backward()
    assert lp.grad[b.loss_mask > 0].tolist() == pytest.approx([0.0, -0.5, 0.0, 0.0])


def test_kl_cov_selects_top_covariance_and_adds_abs_kl() -> None:
    cov = Fn.token_covariance(LOGP, ADV, MASK)
    # ratio .25 -> max(1, int(1)) = 1 token of largest Cov: token 0 (1.6)
    assert Fn.kl_cov_select(cov, MASK, 0.25).tolist() == [[True, False, False, False]]
    # ratio .5 -> 2 tokens: 0 (1.6) and 3 (1.4)
    assert Fn.kl_cov_select(cov, MASK, 0.5).tolist() == [[True, False, False, True]]
    # official k_percent 0.2 (= ratio .002) on 4 tokens still selects 1
    assert Fn.kl_cov_select(cov, MASK, 0.002).sum() == 1
    # token 0 moved by logp - old = .2: loss = -2 * e^.2 + 1 * |.2| = -2.442806 + .2 = -2.242806
    # token 1 (not selected, ratio e^.2 too): unclipped -2 * 1.221403 = -2.442806
    old = LOGP - torch.tensor([[0.2, 0.2, 0.0, 0.0]])
    loss, st = Fn.kl_cov_loss(LOGP, old, ADV, MASK, ratio=0.25, coef=1.0)
    assert loss[0].tolist() == pytest.approx([-2.242806, -2.442806, 0.0, 0.0], abs=1e-5)
    assert st["clipped"].tolist() == [[1.0, 0.0, 0.0, 0.0]]


def _traj(gid: str, reward: float) -> Trajectory:
    return Trajectory(f"{gid}{reward}{id(object())}", gid, "x", 0, "window", [
        Turn(observation="o", context_ids=[5], action_ids=[7], logprobs=[-0.5], reward=reward)])


def test_filter_groups_drops_zero_variance_groups() -> None:
    # g: rewards 1, 0 (kept) ; h: 1, 1 (all equal, dropped) ; s: one member (no spread, dropped)
    trajs = [_traj("g", 1.0), _traj("g", 0.0), _traj("h", 1.0), _traj("h", 1.0), _traj("s", 1.0)]
    flat, total = zero_variance_groups(trajs)
    assert flat == {"h", "s"} and total == 3
    # zero-turn trajectories (context limit before turn 0) are no members: one in h leaves h
    # flat (its 0 would have made a spread), a group z of only one is flat too
    empty = [Trajectory(f"{g}-empty", g, "x", 0, "window", []) for g in ("h", "z")]
    flat, total = zero_variance_groups(trajs + empty)
    assert flat == {"h", "s", "z"} and total == 4
    algo = GRPO(GRPOConfig(name="grpo", filter_groups=True))
    b = algo.build_batch(trajs + empty, 0)
    assert [t.group_id for t in b.trajectories] == ["g", "g"] and b.num_rows == 2
    assert algo.group_stats == {"zero_variance_groups": 3 / 4, "zero_turn_trajectories": 2.0,
                                "groups_dropped_zero_variance": 3.0, "groups_kept_frac": 1 / 4}
    # off by default: all five rows stay
    assert GRPO(GRPOConfig(name="grpo")).build_batch(trajs, 0).num_rows == 5


def test_filter_groups_all_flat_warns_and_gives_an_empty_batch() -> None:
    algo = GRPO(GRPOConfig(name="grpo", filter_groups=True))
    with pytest.warns(UserWarning, match="zero reward variance"):
        b = algo.build_batch([_traj("h", 1.0), _traj("h", 1.0)], 0)
    assert b.num_rows == 0


def test_clip_cov_has_no_dual_clip_unless_asked() -> None:
    # One token, A = −1, ratio e^(log 5) = 5: PPO term max(−A·5, −A·clip(5, .8, 1.2)) = 5.
    # vanilla (dual clip 3.0 by default): min(5, −A·3) = 3. Clip-Cov (covariance bounds that
    # select nothing): no dual clip unless configured -> 5; dual_clip=3 asked -> 3.
    lp, old = torch.log(torch.tensor([[5.0]])), torch.zeros(1, 1)
    adv, mask = torch.tensor([[-1.0]]), torch.ones(1, 1)

    def loss(**kw) -> float:  # noqa: ANN003
        algo = GRPO(GRPOConfig(name="grpo", clip_cov_lb=10.0, clip_cov_ub=20.0, **kw))
        return float(algo.surrogate(lp, old, adv, mask)[0])

    assert loss() == pytest.approx(3.0)
    assert loss(loss_mode="clip_cov") == pytest.approx(5.0)
    assert loss(loss_mode="clip_cov", dual_clip=3.0) == pytest.approx(3.0)
    assert loss(dual_clip=0.0) == pytest.approx(5.0)  # 0 turns it off for vanilla too
