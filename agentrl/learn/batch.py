"""`Batch`: trajectories turned into padded tensors, a flat table of turns, and typed tables.

One iteration writes a batch in three stages, each owning its fields:

1. `make_batch` (called by ``Algorithm.build_batch``): token tensors (N, L), the turn table (M,)
   and the algorithm's own extra columns in `Batch.row` / `Batch.traj` / `Batch.turn`.
2. The learner's scoring pass (`Batch.attach`): ``ref_logprobs``, ``entropy``, ``values`` and,
   when recomputed, ``old_logprobs`` (N, L), as the algorithm declared in ``requires``.
3. ``Algorithm.advantages``: ``advantages`` (and ``returns``) (N, L).

Algorithms compute credit per trajectory or per turn and broadcast it to tokens with
`Batch.per_turn` / `Batch.per_trajectory`; the learner slices rows into minibatches with
`Batch.select`, which cuts every per-row tensor (named fields and the `Batch.row` table) and
shares the per-trajectory and per-turn tables. Shapes: N = samples (rows), L = padded length,
M = turns, K = trajectories.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from agentrl.rollout.context import context_mode
from agentrl.types import Trajectory, Turn


@dataclass
class Sample:
    """One training sequence: ``input_ids`` with per-token training targets.

    All lists have the same length L. Position ``i`` describes token ``input_ids[i]``: whether it
    was sampled (``loss_mask``), its sampler logprob, which turn of which trajectory it belongs
    to (``turn_index``, -1 on context tokens) and, if constrained, the ids that were allowed.
    """

    input_ids: list[int]
    loss_mask: list[int]
    old_logprobs: list[float]
    turn_index: list[int]
    trajectory_index: int
    allowed_ids: dict[int, list[int]] = field(default_factory=dict)  # position -> allowed ids


def to_samples(trajectories: Sequence[Trajectory]) -> list[Sample]:
    """Flatten trajectories into training samples, as their context mode groups the turns (one
    per trajectory in ``full`` mode, one per turn in ``window`` mode). Pure bookkeeping: the ids
    are used exactly as sampled."""
    samples: list[Sample] = []
    for ti, traj in enumerate(trajectories):
        restarts = [k for k, t in enumerate(traj.turns) if t.context_reset]
        for turns in context_mode(traj.context_mode).samples(traj.num_turns, restarts):
            cur = _new_sample(ti)
            for k in turns:
                _append_turn(cur, traj.turns[k], k)
            samples.append(cur)
    return samples


def _new_sample(ti: int) -> Sample:
    return Sample(input_ids=[], loss_mask=[], old_logprobs=[], turn_index=[], trajectory_index=ti)


def _append_turn(s: Sample, turn: Turn, k: int) -> None:
    n_ctx = len(turn.context_ids)
    s.input_ids += turn.context_ids
    s.loss_mask += [0] * n_ctx
    s.old_logprobs += [0.0] * n_ctx
    s.turn_index += [-1] * n_ctx
    start = len(s.input_ids)
    s.input_ids += turn.action_ids
    s.loss_mask += [1] * len(turn.action_ids)
    s.old_logprobs += list(turn.logprobs)
    s.turn_index += [k] * len(turn.action_ids)
    if turn.allowed_ids is not None:
        for j, ids in enumerate(turn.allowed_ids):
            s.allowed_ids[start + j] = list(ids)


class Table(dict[str, torch.Tensor]):
    """Named tensors that share a leading shape (e.g. (N, L) for rows, (K,) for trajectories).

    Setting a tensor of another leading shape is an error, so a column can never be sliced
    with the wrong table.
    """

    def __init__(self, name: str, shape: tuple[int, ...],
                 columns: Mapping[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.name, self.shape = name, tuple(shape)
        for k, v in (columns or {}).items():
            self[k] = v

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        got = tuple(value.shape[:len(self.shape)])
        if got != self.shape:
            raise ValueError(f"Batch.{self.name}[{key!r}]: leading shape {got}, expected "
                             f"{self.shape}; put the column in the table of its shape "
                             "(row: (N, L), traj: (K,), turn: (M,))")
        super().__setitem__(key, value)

    def update(self, *args: Any, **kwargs: torch.Tensor) -> None:  # validate every entry
        for k, v in dict(*args, **kwargs).items():
            self[k] = v

    def __reduce__(self) -> tuple[Any, ...]:  # copy / deepcopy / pickle keep name and shape
        return Table, (self.name, self.shape, dict(self))


@dataclass
class ModelOutputs:
    """Per-token outputs aligned with ``Batch.input_ids`` (n, L); 0 off action tokens."""

    logprobs: torch.Tensor
    entropy: torch.Tensor | None = None
    hidden: torch.Tensor | None = None  # (n, L, H) last hidden state at the *predicting* position
    values: torch.Tensor | None = None  # (n, L) value head on ``hidden``


@dataclass
class Scores:
    """What one no-grad scoring pass of the learner returns; tensors (N, L), 0 off action tokens.

    Attributes:
        logprobs: the current weights' logprob of each sampled token, on the ``rows`` that were
            scored (0 elsewhere).
        rows: (N,) bool, the rows the policy pass scored (every row unless the caller wanted
            nothing but the sampler/trainer mismatch metric, which needs only a sample).
        entropy: per-token entropy of the current policy, if wanted.
        values: value-head output at each action token, if wanted.
        ref_logprobs: the frozen reference policy's logprobs, if wanted.
    """

    logprobs: torch.Tensor
    rows: torch.Tensor
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None


@dataclass
class Batch:
    """Token tensors (N, L), right-padded, the turn table (M,), and typed extra tables.

    Attributes:
        input_ids: (N, L) token ids.
        attention_mask: (N, L) 1 on real tokens.
        loss_mask: (N, L) 1 exactly on sampled action tokens.
        sampler_logprobs: (N, L) the sampler's logprobs on action tokens, 0 elsewhere.
        old_logprobs: (N, L) the denominator of the PPO ratio: the sampler's logprobs, or the
            learner's own when the scoring pass recomputes them.
        turn_id: (N, L) index into the turn table for action tokens, -1 elsewhere.
        row_traj: (N,) trajectory index of each row.
        turn_traj / turn_index: (M,) trajectory index and turn index (0-based) of each turn.
        turn_reward: (M,) the env's reward of each turn; turn_shaping: (M,) the rollout's
            shaping (step / invalid-action penalties). The shaped reward is their sum.
        turn_valid: (M,) action validity.
        allowed: row -> {position: allowed ids} for constrained turns.
        replayed: (N,) bool or None: rows replayed from an earlier iteration (self-imitation).
            Their ``sampler_logprobs`` are the behaviour policy of that time, so `attach` keeps
            them as ``old_logprobs`` (the ratio stays π_θ / π_collect) and the sampler/trainer
            mismatch metric leaves them out.
        ref_logprobs / entropy / values: (N, L) from the learner's scoring pass (`attach`).
        advantages / returns: (N, L) filled by the algorithm.
        row / traj / turn: an algorithm's own columns, (N, L, ...) / (K, ...) / (M, ...).
    """

    trajectories: list[Trajectory]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    sampler_logprobs: torch.Tensor
    old_logprobs: torch.Tensor
    turn_id: torch.Tensor
    row_traj: torch.Tensor
    turn_traj: torch.Tensor
    turn_index: torch.Tensor
    turn_reward: torch.Tensor
    turn_shaping: torch.Tensor
    turn_valid: torch.Tensor
    allowed: dict[int, dict[int, list[int]]] = field(default_factory=dict)
    replayed: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    values: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    row: Table = field(default_factory=dict)  # type: ignore[assignment]  # (N, L, ...)
    traj: Table = field(default_factory=dict)  # type: ignore[assignment]  # (K, ...)
    turn: Table = field(default_factory=dict)  # type: ignore[assignment]  # (M, ...)
    # Denominators for loss aggregation across the micro-batches of one minibatch.
    agg_tokens: float | None = None
    agg_seqs: float | None = None
    agg_len: float | None = None

    def __post_init__(self) -> None:
        self.row = Table("row", tuple(self.input_ids.shape), self.row)
        self.traj = Table("traj", (len(self.trajectories),), self.traj)
        self.turn = Table("turn", (int(self.turn_traj.shape[0]),), self.turn)

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
            (self.trajectories[i] for i in self.turn_traj.tolist()), self.turn_index.tolist())]

    def shaped_turn_reward(self) -> torch.Tensor:
        """Env reward plus shaping of each turn (M,)."""
        return self.turn_reward + self.turn_shaping

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

    def attach(self, scores: Scores, recompute_old_logprobs: bool = False) -> None:
        """Take the scoring pass's outputs. With ``recompute_old_logprobs`` the learner's own
        logprobs become ``old_logprobs`` (the first PPO ratio is then exactly 1 whatever the
        sampler's numerics); ``sampler_logprobs`` keeps the sampler's for truncated IS."""
        if recompute_old_logprobs:
            if not bool(scores.rows.all()):
                raise ValueError("Batch.attach: recomputing old_logprobs needs every row scored")
            lp = scores.logprobs * (self.loss_mask > 0)
            if self.replayed is not None:  # replayed rows keep their collection-time logprobs
                lp = torch.where(self.replayed[:, None], self.sampler_logprobs, lp)
            self.old_logprobs = lp
        self.ref_logprobs = scores.ref_logprobs
        self.entropy = scores.entropy
        self.values = scores.values

    def select(self, rows: Sequence[int]) -> Batch:
        """Rows ``rows`` as a new batch, trimmed to the longest selected row. Every per-row
        tensor is cut; the trajectories and the per-trajectory and per-turn tables are shared."""
        r = torch.as_tensor(list(rows), dtype=torch.long)
        length = int(self.attention_mask[r].sum(-1).max().item()) if len(r) else 0

        def cut(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x[r, :length]

        allowed = {i: self.allowed[int(old)] for i, old in enumerate(r.tolist())
                   if int(old) in self.allowed}
        return replace(
            self, input_ids=cut(self.input_ids), attention_mask=cut(self.attention_mask),
            loss_mask=cut(self.loss_mask), sampler_logprobs=cut(self.sampler_logprobs),
            old_logprobs=cut(self.old_logprobs), turn_id=cut(self.turn_id),
            row_traj=self.row_traj[r], allowed=allowed, ref_logprobs=cut(self.ref_logprobs),
            replayed=None if self.replayed is None else self.replayed[r],
            entropy=cut(self.entropy), values=cut(self.values),
            advantages=cut(self.advantages), returns=cut(self.returns),
            row={k: v[r, :length] for k, v in self.row.items()},
        )


def make_batch(trajectories: list[Trajectory], pad_id: int = 0) -> Batch:
    """Tensorize trajectories (one row per training sample of their context mode: one per
    trajectory in ``full`` mode, one per turn in ``window`` mode)."""
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
    turn_traj, turn_index, turn_reward, turn_shaping, turn_valid = [], [], [], [], []
    for ti, t in enumerate(trajectories):
        first_turn.append(len(turn_traj))
        for k, turn in enumerate(t.turns):
            turn_traj.append(ti)
            turn_index.append(k)
            turn_reward.append(turn.reward)
            turn_shaping.append(turn.shaping)
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
        loss_mask=loss_mask, sampler_logprobs=old_lp, old_logprobs=old_lp.clone(), turn_id=turn_id,
        row_traj=row_traj, turn_traj=torch.tensor(turn_traj, dtype=torch.long),
        turn_index=torch.tensor(turn_index, dtype=torch.long),
        turn_reward=torch.tensor(turn_reward, dtype=torch.float32),
        turn_shaping=torch.tensor(turn_shaping, dtype=torch.float32),
        turn_valid=torch.tensor(turn_valid, dtype=torch.bool), allowed=allowed,
    )
