"""Role-conditioned advantage estimation (SPIRAL's RAE): hand-computed numbers, order invariance,
and the option on GRPO / GiGPO only."""

from __future__ import annotations

import pytest
import torch

from agentrl.algorithms import functional as Fn
from agentrl.algorithms.gigpo import GiGPO, GiGPOConfig
from agentrl.algorithms.grpo import GRPO, GRPOConfig, outcome_advantages
from agentrl.learn.batch import make_batch
from agentrl.types import Trajectory, Turn


def test_role_baseline_by_hand() -> None:
    # keys a, a, b, b; baselines before: a = 0.5, b unseen (0); decay 0.9, two members each
    adv, new = Fn.role_baseline_advantages(torch.tensor([1.0, 0.0, -1.0, 0.0]),
                                           ["a", "a", "b", "b"], {"a": 0.5}, 0.9)
    # A = s - b (read before the update): [1 - .5, 0 - .5, -1 - 0, 0 - 0]
    assert adv.tolist() == pytest.approx([0.5, -0.5, -1.0, 0.0])
    # b_a = .81 * .5 + .19 * mean(1, 0) = .405 + .095 = .5; b_b = .81 * 0 + .19 * (-.5) = -.095
    assert new["a"] == pytest.approx(0.5) and new["b"] == pytest.approx(-0.095)
    # the batch order does not matter
    adv2, new2 = Fn.role_baseline_advantages(torch.tensor([0.0, -1.0, 0.0, 1.0]),
                                             ["b", "b", "a", "a"], {"a": 0.5}, 0.9)
    assert adv2.tolist() == pytest.approx([0.0, -1.0, -0.5, 0.5]) and new2 == pytest.approx(new)


def _traj(role: str, reward: float, gid: str = "g") -> Trajectory:
    t = Trajectory(trajectory_id=f"{role}{reward}", group_id=f"{gid}/{role}", env_id="e", seed=0,
                   context_mode="window", role=role)
    t.turns.append(Turn(observation="o", context_ids=[1, 2], action_ids=[3], logprobs=[-0.1],
                        reward=reward, state_key=role))
    return t


@pytest.mark.parametrize("cls,cfg", [(GRPO, GRPOConfig(baseline="rae", rae_decay=0.5)),
                                     (GiGPO, GiGPOConfig(baseline="rae", rae_decay=0.5,
                                                         step_weight=0.0))])
def test_rae_on_grpo_and_gigpo(cls: type, cfg: object) -> None:
    algo = cls(cfg)
    batch = make_batch([_traj("x", 1.0), _traj("x", -1.0), _traj("o", 1.0)])
    algo.advantages(batch)
    adv, _ = batch.turn_mean(batch.advantages)
    assert adv.tolist() == pytest.approx([1.0, -1.0, 1.0])  # baselines start at 0
    assert algo.role_baselines == pytest.approx({"e|x": 0.0, "e|o": 0.5})
    batch = make_batch([_traj("o", 1.0)])
    algo.advantages(batch)
    adv, _ = batch.turn_mean(batch.advantages)
    assert adv.tolist() == pytest.approx([0.5])  # 1 - b_o
    restored = cls(cfg)
    restored.load_state_dict(algo.state_dict())
    assert restored.role_baselines == algo.role_baselines


def test_rae_is_refused_where_no_moving_baseline_is_kept() -> None:
    with pytest.raises(ValueError, match="grpo and gigpo only"):
        outcome_advantages(make_batch([_traj("x", 1.0)]), GRPOConfig(baseline="rae"))
    with pytest.raises(ValueError, match="stats=trajectory"):
        GRPO(GRPOConfig(baseline="rae", stats="turn"))
