"""The `Algorithm.credit` template: every registered algorithm logs the group statistics
(``zero_variance_groups`` always, the ``filter_groups`` counts when it filters), and refuses a
batch that lacks the scores it declared in ``requires``."""

from __future__ import annotations

import math

import pytest
import torch
from trajs import traj

from agentrl.algorithms.base import Algorithm
from agentrl.config import load_config
from agentrl.learn.batch import Batch
from agentrl.learn.learner import LOSS_NAMES, SCORE_NAMES
from agentrl.registry import ALGORITHMS, get_algorithm

get_algorithm("grpo")  # imports agentrl.algorithms, which registers every algorithm
NAMES = sorted(ALGORITHMS)
#: the algorithms whose credit comes from rewards (group statistics apply; not SFT)
REWARD_NAMES = [n for n in NAMES if get_algorithm(n).learns_from_rewards]


def _algo(name: str, *overrides: str) -> Algorithm:
    cfg = load_config(None, [f"algorithm.name={name}", *overrides]).algorithm
    return get_algorithm(name)(cfg)


def _scored(algo: Algorithm, b: Batch) -> Batch:
    """Attach what the scoring pass would: 0.5 entropy and 0 values on every action token."""
    if "entropy" in algo.requires:
        b.entropy = 0.5 * b.loss_mask
    if "values" in algo.requires:
        b.values = torch.zeros_like(b.loss_mask)
    if "ref_logprobs" in algo.requires:
        b.ref_logprobs = b.old_logprobs.clone()
    return b


def _trajectories() -> list:
    # group g: returns 1 and 0 (spread); group h: 1 and 1 (flat); group s: one member (flat)
    return [traj("g", [0.0, 1.0]), traj("g", [0.0]), traj("h", [1.0]), traj("h", [0.0, 1.0]),
            traj("s", [1.0])]


def test_every_algorithm_is_registered() -> None:
    assert {"grpo", "ppo", "gigpo", "epo", "empg", "aepo", "spear"} <= set(NAMES)


def test_group_statistics_of_imitation_are_nan() -> None:
    """SFT learns from demos, not rewards: its group statistics are NaN (no alarm fires)."""
    assert "sft" in NAMES and "sft" not in REWARD_NAMES and "grpo" in REWARD_NAMES
    algo = _algo("sft")
    algo.build_batch(_trajectories(), 0)
    assert math.isnan(algo.group_stats["zero_variance_groups"])


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_filter_groups_statistics_for_every_algorithm(name: str) -> None:
    algo = _algo(name, "algorithm.filter_groups=true")
    b = _scored(algo, algo.build_batch(_trajectories(), 0))
    assert sorted({t.group_id for t in b.trajectories}) == ["g"]
    m = algo.credit(b)
    # 2 of 3 groups are flat: both dropped, one kept
    assert m["zero_variance_groups"] == pytest.approx(2 / 3)
    assert m["groups_dropped_zero_variance"] == 2.0
    assert m["groups_kept_frac"] == pytest.approx(1 / 3)
    assert b.advantages is not None and b.advantages.shape == b.loss_mask.shape


@pytest.mark.parametrize("name", REWARD_NAMES)
def test_zero_variance_groups_logged_for_every_algorithm_without_filtering(name: str) -> None:
    algo = _algo(name)
    b = _scored(algo, algo.build_batch(_trajectories(), 0))
    assert len(b.trajectories) == 5
    m = algo.credit(b)
    assert m["zero_variance_groups"] == pytest.approx(2 / 3)
    assert "groups_dropped_zero_variance" not in m
    # the statistics belong to one iteration: a batch built without the shared filter is
    # measured by credit itself
    b2 = _scored(algo, algo.build_batch([traj("g", [0.0]), traj("g", [1.0])], 0))
    algo.group_stats = {}
    assert algo.credit(b2)["zero_variance_groups"] == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_declared_needs_are_known_names(name: str) -> None:
    for overrides in ([], ["algorithm.kl_coef=0.1", "algorithm.entropy_coef=0.01"]):
        algo = _algo(name, *overrides)
        assert set(algo.requires) <= SCORE_NAMES and set(algo.loss_requires) <= LOSS_NAMES
        assert ("ref_logprobs" in algo.requires) == bool(overrides)


def test_credit_refuses_a_batch_without_the_declared_scores() -> None:
    algo = _algo("empg")
    b = algo.build_batch(_trajectories(), 0)
    with pytest.raises(ValueError, match=r"requires \['entropy'\].*learner.score"):
        algo.credit(b)
