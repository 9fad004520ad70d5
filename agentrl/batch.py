"""`Batch`: trajectories turned into padded tensors plus a flat table of turns.

Algorithms compute credit per trajectory or per turn and broadcast it to tokens with
`Batch.per_turn` / `Batch.per_trajectory`; the learner slices rows into minibatches with
`Batch.select`. Shapes: N = samples (rows), L = padded length, M = turns, K = trajectories.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from agentrl.types import Trajectory, to_samples


@dataclass
class Batch:
    """Token tensors (N, L), right-padded, and the turn table (M,).

    Attributes:
        input_ids: (N, L) token ids.
        attention_mask: (N, L) 1 on real tokens.
        loss_mask: (N, L) 1 exactly on sampled action tokens.
        old_logprobs: (N, L) sampler logprobs on action tokens, 0 elsewhere.
        turn_id: (N, L) index into the turn table for action tokens, -1 elsewhere.
        row_traj: (N,) trajectory index of each row.
        turn_traj / turn_step: (M,) trajectory index and turn index (0-based) of each turn.
        turn_reward: (M,) shaped reward of each turn; turn_valid: (M,) action validity.
        allowed: row -> {position: allowed ids} for constrained turns.
        advantages / returns / ref_logprobs: (N, L) filled by the algorithm / trainer.
        extra: per-algorithm tensors (e.g. old values, old entropy), (N, L) unless stated.
    """

    trajectories: list[Trajectory]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    old_logprobs: torch.Tensor
    turn_id: torch.Tensor
    row_traj: torch.Tensor
    turn_traj: torch.Tensor
    turn_step: torch.Tensor
    turn_reward: torch.Tensor
    turn_valid: torch.Tensor
    allowed: dict[int, dict[int, list[int]]] = field(default_factory=dict)
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    # Denominators for loss aggregation across the micro-batches of one minibatch.
    agg_tokens: float | None = None
    agg_seqs: float | None = None
    agg_len: float | None = None

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_turns(self) -> int:
        return int(self.turn_traj.shape[0])

    def group_ids(self) -> list[str]:
        """Group id of each trajectory (K,)."""
        return [t.group_id for t in self.trajectories]

    def turn_state_keys(self) -> list[Any]:
        """History-free state key of each turn (M,), None where the env gave none."""
        return [t.turns[k].state_key for t, k in zip(
            (self.trajectories[i] for i in self.turn_traj.tolist()), self.turn_step.tolist())]

    def per_turn(self, values: torch.Tensor) -> torch.Tensor:
        """Broadcast one value per turn (M,) to its action tokens -> (N, L), 0 elsewhere."""
        idx = self.turn_id.clamp(min=0)
        return values.to(torch.float32)[idx] * (self.turn_id >= 0)

    def turn_mean(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of `per_turn`: mean of per-token ``values`` (N, L) over each turn's action
        tokens -> (mean (M,), token count (M,)), float64, detached; mean 0 where a turn has no
        action tokens."""
        sel = (self.turn_id >= 0) & (self.loss_mask > 0)
        idx = self.turn_id[sel].cpu()
        v = values[sel].detach().double().cpu()
        total = torch.zeros(self.num_turns, dtype=torch.float64).index_add_(0, idx, v)
        count = torch.zeros(self.num_turns, dtype=torch.float64).index_add_(
            0, idx, torch.ones_like(v))
        return total / count.clamp(min=1), count

    def per_trajectory(self, values: torch.Tensor) -> torch.Tensor:
        """Broadcast one value per trajectory (K,) to its action tokens -> (N, L)."""
        return values.to(torch.float32)[self.turn_traj][self.turn_id.clamp(min=0)] * (self.turn_id >= 0)

    def select(self, rows: Sequence[int]) -> Batch:
        """Rows ``rows`` as a new batch (shares the turn table and trajectories), trimmed to the
        longest selected row."""
        r = torch.as_tensor(list(rows), dtype=torch.long)
        length = int(self.attention_mask[r].sum(-1).max().item()) if len(r) else 0

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[r, :length]

        allowed = {i: self.allowed[int(old)] for i, old in enumerate(r.tolist())
                   if int(old) in self.allowed}
        return replace(
            self, input_ids=cut(self.input_ids), attention_mask=cut(self.attention_mask),
            loss_mask=cut(self.loss_mask), old_logprobs=cut(self.old_logprobs),
            turn_id=cut(self.turn_id), row_traj=self.row_traj[r], allowed=allowed,
            advantages=cut(self.advantages), returns=cut(self.returns),
            ref_logprobs=cut(self.ref_logprobs),
            extra={k: (v[r, :length] if v.dim() == 2 and v.shape[0] == self.num_rows else v)
                   for k, v in self.extra.items()},
        )


def make_batch(trajectories: list[Trajectory], pad_id: int = 0) -> Batch:
    """Tensorize trajectories (one row per trajectory in full mode, per turn in window mode)."""
    samples = to_samples(trajectories)
    n = len(samples)
    L = max((len(s.input_ids) for s in samples), default=1)
    input_ids = torch.full((n, L), pad_id, dtype=torch.long)
    attn = torch.zeros((n, L), dtype=torch.long)
    loss_mask = torch.zeros((n, L), dtype=torch.float32)
    old_lp = torch.zeros((n, L), dtype=torch.float32)
    turn_id = torch.full((n, L), -1, dtype=torch.long)
    row_traj = torch.zeros(n, dtype=torch.long)

    # Flat turn table, in trajectory order.
    first_turn: list[int] = []
    turn_traj, turn_step, turn_reward, turn_valid = [], [], [], []
    for ti, t in enumerate(trajectories):
        first_turn.append(len(turn_traj))
        for k, turn in enumerate(t.turns):
            turn_traj.append(ti)
            turn_step.append(k)
            turn_reward.append(turn.reward)
            turn_valid.append(turn.action_valid)

    allowed: dict[int, dict[int, list[int]]] = {}
    for i, s in enumerate(samples):
        m = len(s.input_ids)
        input_ids[i, :m] = torch.tensor(s.input_ids, dtype=torch.long)
        attn[i, :m] = 1
        loss_mask[i, :m] = torch.tensor(s.loss_mask, dtype=torch.float32)
        old_lp[i, :m] = torch.tensor(s.old_logprobs, dtype=torch.float32)
        ti_ = torch.tensor(s.turn_index, dtype=torch.long)
        turn_id[i, :m] = torch.where(ti_ >= 0, ti_ + first_turn[s.trajectory_index], ti_)
        row_traj[i] = s.trajectory_index
        if s.allowed_ids:
            allowed[i] = dict(s.allowed_ids)
    return Batch(
        trajectories=list(trajectories), input_ids=input_ids, attention_mask=attn,
        loss_mask=loss_mask, old_logprobs=old_lp, turn_id=turn_id, row_traj=row_traj,
        turn_traj=torch.tensor(turn_traj, dtype=torch.long),
        turn_step=torch.tensor(turn_step, dtype=torch.long),
        turn_reward=torch.tensor(turn_reward, dtype=torch.float32),
        turn_valid=torch.tensor(turn_valid, dtype=torch.bool), allowed=allowed,
    )
