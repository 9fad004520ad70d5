"""Batch tables: each column lives in the table of its shape, `select` cuts the per-row table and
shares the per-trajectory and per-turn ones, and the scoring pass attaches its outputs."""

from __future__ import annotations

import copy

import pytest
import torch

from agentrl.learn.batch import Scores, Table, make_batch
from agentrl.types import Trajectory, Turn


def _turn(n: int, reward: float = 0.0, shaping: float = 0.0) -> Turn:
    return Turn(observation="o", context_ids=[5, 6], action_ids=[7] * n, logprobs=[-0.5] * n,
                reward=reward, shaping=shaping)


def _batch():  # noqa: ANN202
    # window mode: rows are turns. τ0: turns of 1 and 3 tokens; τ1: one turn of 2 tokens.
    return make_batch([Trajectory("a", "g", "x", 0, "window", [_turn(1, 0.0, -0.1), _turn(3, 1.0)]),
                       Trajectory("b", "g", "x", 0, "window", [_turn(2, 0.0, -0.01)])])


def test_columns_must_match_their_table_shape() -> None:
    b = _batch()
    assert (b.row.shape, b.traj.shape, b.turn.shape) == ((3, 5), (2,), (3,))
    b.row["flag"] = torch.ones(3, 5)
    b.traj["score"] = torch.tensor([1.0, 2.0])
    b.turn["weight"] = torch.tensor([0.5, 1.0, 2.0])
    with pytest.raises(ValueError, match=r"Batch.traj\['x'\]: leading shape \(3,\), expected \(2,\)"):
        b.traj["x"] = torch.zeros(3)
    with pytest.raises(ValueError, match="Batch.row"):
        b.row.update(y=torch.zeros(2, 5))
    # a copy keeps the tables' names and shapes
    assert copy.deepcopy(b).row.shape == (3, 5) and isinstance(copy.deepcopy(b).traj, Table)


def test_select_cuts_rows_and_shares_trajectory_and_turn_tables() -> None:
    b = _batch()
    b.row["rowid"] = torch.arange(3, dtype=torch.float32)[:, None].expand(3, 5).clone()
    b.traj["score"] = torch.tensor([1.0, 2.0])
    b.turn["weight"] = torch.tensor([0.5, 1.0, 2.0])
    sub = b.select([2, 0])  # rows of 4 and 3 tokens: trimmed to 4 columns
    assert sub.input_ids.shape == (2, 4) and sub.row.shape == (2, 4)
    assert sub.row["rowid"][:, 0].tolist() == [2.0, 0.0]
    assert sub.traj["score"] is b.traj["score"] and sub.turn["weight"] is b.turn["weight"]
    assert sub.sampler_logprobs.shape == sub.old_logprobs.shape == (2, 4)


def test_shaping_is_a_column_beside_the_env_reward() -> None:
    b = _batch()
    assert b.turn_reward.tolist() == [0.0, 1.0, 0.0]
    assert b.turn_shaping.tolist() == pytest.approx([-0.1, 0.0, -0.01])
    assert b.shaped_turn_reward().tolist() == pytest.approx([-0.1, 1.0, -0.01])
    assert b.trajectories[0].total_reward == pytest.approx(0.9)
    assert b.trajectories[0].env_return == 1.0


def test_attach_takes_the_scores_and_recomputes_old_logprobs_only_from_a_full_pass() -> None:
    b = _batch()
    lp = torch.full_like(b.old_logprobs, -0.25)
    ent = torch.ones_like(lp)
    b.attach(Scores(logprobs=lp, rows=torch.ones(3, dtype=torch.bool), entropy=ent),
             recompute_old_logprobs=True)
    mask = b.loss_mask > 0
    assert torch.all(b.old_logprobs[mask] == -0.25) and torch.all(b.old_logprobs[~mask] == 0)
    assert torch.all(b.sampler_logprobs[mask] == -0.5)  # the sampler's stay for truncated IS
    assert b.entropy is ent and b.values is None and b.ref_logprobs is None
    partial = Scores(logprobs=lp, rows=torch.tensor([True, False, True]))
    with pytest.raises(ValueError, match="every row scored"):
        _batch().attach(partial, recompute_old_logprobs=True)
