"""SPEAR: Self-imitation with Progressive Exploration for Agentic RL.

Paper: Qin, Tan et al. 2025, arXiv 2509.22601 (official code: TencentYoutuResearch/SPEAR,
``verl-agent/``). Built on multi-turn GRPO (trajectory-level group statistics).

What differs from GRPO:

1. **Self-imitation replay.** Samples with positive on-policy advantage go into a replay buffer
   (with their sampler logprobs, the iteration they came from and their score). A FIFO of
   recent group-mean scores gives a baseline P50. Once more than ``replay_trigger ×
   replay_size`` stored samples beat P50, a power-of-two subset (≤ ``replay_size``) whose
   recalibrated advantage Ã = S − P50 is positive is replayed and the buffer is cleared.
   Replayed samples are extra rows of this iteration's batch (`build_batch`, flagged in
   ``batch.traj["is_replay"]`` and `Batch.replayed`); their ratio is π_θ / π_collect against
   the stored collection-time logprobs, also under ``policy.recompute_old_logprobs`` and
   ``train.tis_cap`` (which recompute old logprobs for on-policy rows only; a replayed row's
   truncated-IS weight is 1), and they stay out of the sampler/trainer mismatch metric.
2. **Loss**: J = J_GRPO(on-policy rows) + γ(t)·J_replay(replay rows), γ(t) a cosine warm-up to
   ``replay_coef`` over ``replay_warmup_steps``; Clip-Cov on both parts with separate
   settings (``clip_cov_*`` on-policy, ``replay_clip_cov_*`` replay); no KL on replay rows.
3. **Intrinsic reward** S = R + μ(t)·min(cap, coef·n), n = the env's ``info["tool_calls"]``
   when it reports it, else the episode length (as the official ALFWorld/WebShop code), with
   μ(t) a cosine decay to 0 over ``tool_reward_steps``.
4. **Dr.BoT options**: keep the top ``group_filter_ratio`` of groups by score std; loss-mask
   overlong (hit the token limit), incomplete (the reply did not parse into an action) and
   repetitive (a ``repeat_ngram``-gram of token ids occurs ``repeat_count`` times) turns.

Config fields that matter: ``replay_size``, ``replay_trigger``, ``replay_tolerate_steps``,
``baseline_size``, ``replay_coef``, ``replay_warmup_steps``, ``replay_clip_cov_*``,
``tool_reward_*``, ``group_filter_ratio``, ``mask_*``; plus ``loss_mode`` (``clip_cov`` by
default), ``use_std`` (False, Dr.GRPO style, as the SPEAR scripts), ``baseline``.

The unit of storage is a training row: in ``window`` context one turn (stored as a one-turn
trajectory, whose prompt is self-contained), in ``full`` context one trajectory.

Deliberate departures from the official code:

- Replay rows are trained in the same minibatches as on-policy rows, the replay term weighted
  per token by γ(t) with the minibatch's aggregation denominators; the official actor runs
  separate replay minibatches with their own optimizer steps.
- ``replay_tolerate_steps`` is not capped at 10; ``replay_adv_decay`` in (0, 1] reproduces the
  official ``weight_decay_trajectory_replay`` (stored advantage × factor) instead of P50.
- A replayed sample must have Ã > 0 (paper) rather than Ã ≥ 0 (code); Ã = 0 carries no signal.
- The P50 history records every group of the iteration, including groups the Dr.BoT filter
  drops, so filtering does not bias the baseline upwards.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any, Literal

import torch

from agentrl import collectives as C
from agentrl.algorithms import functional as Fn
from agentrl.algorithms.base import Algorithm, AlgorithmConfig
from agentrl.config import F
from agentrl.learn.batch import Batch, ModelOutputs, make_batch
from agentrl.registry import register_algorithm
from agentrl.types import Trajectory, Turn


@dataclass
class SPEARConfig(AlgorithmConfig):
    loss_mode: Literal["vanilla", "clip_cov", "kl_cov"] = F(
        "clip_cov", "policy surrogate (SPEAR uses Clip-Cov on both losses)")
    use_std: bool = F(False, "divide group advantages by the group std (SPEAR scripts: no)")
    baseline: Literal["grpo", "rloo"] = F("grpo", "group mean (grpo) or leave-one-out (rloo)")
    replay_size: int = F(2048, "max samples per replay (a power of two is drawn)", ge=1)
    replay_trigger: float = F(1.5, "replay when more than this × replay_size stored samples "
                              "beat the P50 baseline", ge=0)
    replay_tolerate_steps: int = F(5, "drop stored samples older than this many iterations",
                                   ge=0)
    baseline_size: int = F(10240, "FIFO length of recent group-mean scores (P50 baseline)", ge=1)
    replay_coef: float = F(1.0, "c, the replay loss weight after warm-up", ge=0)
    replay_warmup_steps: int = F(200, "γ(t) = c·(1 − cos(π t/T))/2 for t ≤ T, else c", ge=0)
    replay_clip_cov_ratio: float = F(0.02, "Clip-Cov ratio on replay rows", ge=0, le=1)
    replay_clip_cov_lb: float = F(2.0, "Clip-Cov lower covariance bound on replay rows")
    replay_clip_cov_ub: float = F(60.0, "Clip-Cov upper covariance bound on replay rows")
    replay_adv_decay: float = F(0.0, "0: recalibrate Ã = S − P50 (paper); in (0, 1]: stored "
                                "advantage × factor (official option)", ge=0, le=1)
    tool_reward_schedule: Literal["cosine", "constant", "none"] = F(
        "cosine", "μ(t) of the intrinsic tool-call/step reward")
    tool_reward_steps: int = F(200, "cosine: μ(t) = (cos(π t/T) + 1)/2 for t ≤ T, else 0", ge=0)
    tool_reward_coef: float = F(0.1, "intrinsic reward per tool call (or step)", ge=0)
    tool_reward_cap: float = F(1.0, "cap on the intrinsic reward per episode", ge=0)
    group_filter_ratio: float = F(1.0, "Dr.BoT: keep this top fraction of groups by score std "
                                  "(1 = off, Dr.BoT 0.75)", gt=0, le=1)
    mask_overlong: bool = F(False, "Dr.BoT: loss-mask turns that hit the token limit")
    mask_incomplete: bool = F(False, "Dr.BoT: loss-mask turns whose reply did not parse")
    mask_repetitive: bool = F(False, "Dr.BoT: loss-mask turns with a heavily repeated n-gram")
    repeat_ngram: int = F(20, "n of the repetition check (token ids)", ge=1)
    repeat_count: int = F(10, "occurrences of one n-gram that make a turn repetitive", ge=2)
    replay_seed: int = F(0, "seed of the replay subset draw (the stream is checkpointed)")


# --------------------------------------------------------------------------- schedules

def replay_weight(t: int, coef: float, warmup: int) -> float:
    """γ(t) = coef·(1 − cos(π t/T))/2 for t ≤ T, else coef (T = 0: always coef)."""
    if warmup <= 0 or t >= warmup:
        return coef
    return coef * (1.0 - math.cos(math.pi * t / warmup)) / 2.0


def tool_reward_scale(t: int, schedule: str, steps: int) -> float:
    """μ(t): cosine = (cos(π t/T) + 1)/2 for t ≤ T, else 0; constant = 1; none = 0."""
    if schedule == "none":
        return 0.0
    if schedule == "constant":
        return 1.0
    if t > steps:
        return 0.0
    return (math.cos(math.pi * t / steps) + 1.0) / 2.0 if steps > 0 else 0.0


def tool_calls(traj: Trajectory) -> int:
    """Tool calls of an episode: the env's running ``info["tool_calls"]`` when it reports it,
    else the number of env steps."""
    counts = [t.info["tool_calls"] for t in traj.turns
              if isinstance(t.info.get("tool_calls"), (int, float))]
    return int(max(counts)) if counts else len(traj.turns)


def p50(values: list[float]) -> float:
    """Median (the 50th percentile with linear interpolation)."""
    return float(statistics.median(values))


# --------------------------------------------------------------------------- Dr.BoT checks

def is_repetitive(ids: list[int], n: int, count: int) -> bool:
    """True if some n-gram of ``ids`` occurs at least ``count`` times."""
    if len(ids) < n:
        return False
    grams = Counter(tuple(ids[i:i + n]) for i in range(len(ids) - n + 1))
    return max(grams.values()) >= count


def is_incomplete(turn: Turn) -> bool:
    """The reply did not parse into an action: the turn is invalid although the env itself did
    not reject anything (the env reports ``action_valid`` in its info)."""
    return not turn.action_valid and bool(turn.info.get("action_valid", True))


def top_std_groups(scores: dict[str, list[float]], ratio: float) -> set[str]:
    """The max(1, int(ratio·G)) groups of largest score std (ties: first seen)."""
    def std(v: list[float]) -> float:
        return statistics.stdev(v) if len(v) > 1 else 0.0

    order = sorted(scores, key=lambda g: -std(scores[g]))
    return set(order[:max(1, int(ratio * len(order)))])


@register_algorithm
class SPEAR(Algorithm):
    name = "spear"
    description = ("SPEAR: self-imitation replay with P50 recalibration, intrinsic tool-call "
                   "reward, Clip-Cov, Dr.BoT filters")
    Config = SPEARConfig

    def __init__(self, cfg: SPEARConfig) -> None:
        super().__init__(cfg)
        self.buffer: list[dict[str, Any]] = []  # {trajectory, score, advantage, step}
        self.baseline: deque[float] = deque(maxlen=cfg.baseline_size)
        self.step = 0  # index of the current iteration
        self.rng = random.Random(cfg.replay_seed)
        self.stats: dict[str, float] = {}

    # -- scores ----------------------------------------------------------------------------
    def scores(self, trajs: list[Trajectory]) -> torch.Tensor:
        """S = total shaped reward + μ(t)·min(cap, coef·tool calls), one per trajectory (K,)."""
        c = self.cfg
        mu = tool_reward_scale(self.step, c.tool_reward_schedule, c.tool_reward_steps)
        return torch.tensor([t.total_reward + mu * min(c.tool_reward_cap,
                                                       c.tool_reward_coef * tool_calls(t))
                             for t in trajs], dtype=torch.float32)

    # -- batch: filters, masks and replay rows -----------------------------------------------
    def build_batch(self, trajectories: list[Trajectory], pad_id: int) -> Batch:
        c = self.cfg
        s = self.scores(trajectories).tolist()
        by_group: dict[str, list[float]] = {}
        for t, v in zip(trajectories, s):
            by_group.setdefault(t.group_id, []).append(v)
        keep = top_std_groups(by_group, c.group_filter_ratio) if c.group_filter_ratio < 1 \
            else set(by_group)
        on = self.filter_trajectories([t for t in trajectories if t.group_id in keep])
        replay, replay_adv = self._draw_replay()
        # The baseline learns this iteration's groups only after the replay used the older ones.
        # Under torchrun every rank's groups join it (in rank order), so the P50 is global;
        # each rank replays from its own buffer.
        self.baseline.extend(C.gather_lists([sum(v) / len(v) for v in by_group.values()]))

        batch = make_batch(on + replay, pad_id)
        K, n_on = len(batch.trajectories), len(on)
        traj_rep = torch.zeros(K)
        traj_rep[n_on:] = 1.0
        adv = torch.zeros(K)
        adv[n_on:] = torch.tensor(replay_adv, dtype=torch.float32)
        batch.traj["is_replay"] = traj_rep  # (K,)
        batch.traj["replay_advantage"] = adv  # (K,)
        row_rep = traj_rep[batch.row_traj]  # (N,)
        # Replayed rows keep their collection-time logprobs as old_logprobs even when the
        # scoring pass recomputes them, and stay out of the sampler/trainer mismatch metric.
        batch.replayed = row_rep > 0

        masked = torch.tensor([self._masked(batch.trajectories[i].turns[k])
                               for i, k in zip(batch.turn_traj.tolist(), batch.turn_index.tolist())],
                              dtype=torch.bool)  # (M,)
        masked &= traj_rep[batch.turn_traj] == 0  # replayed rows were checked when stored
        if masked.any():
            tok = masked[batch.turn_id.clamp(min=0)] & (batch.turn_id >= 0)  # (N, L)
            batch.loss_mask = batch.loss_mask * (~tok)
        self.stats = {"std_filter_kept_frac": len(keep) / max(1, len(by_group)),
                      "masked_turn_frac": float(masked.float().mean()) if len(masked) else 0.0,
                      "replay_rows": float(row_rep.sum()), "buffer_size": float(len(self.buffer)),
                      "baseline_p50": p50(list(self.baseline)) if self.baseline else 0.0,
                      "replay_weight": replay_weight(self.step, c.replay_coef,
                                                     c.replay_warmup_steps),
                      "tool_reward_scale": tool_reward_scale(self.step, c.tool_reward_schedule,
                                                             c.tool_reward_steps)}
        return batch

    def _masked(self, turn: Turn) -> bool:
        c = self.cfg
        return ((c.mask_overlong and turn.finish_reason == "length")
                or (c.mask_incomplete and is_incomplete(turn))
                or (c.mask_repetitive and is_repetitive(turn.action_ids, c.repeat_ngram,
                                                        c.repeat_count)))

    def _draw_replay(self) -> tuple[list[Trajectory], list[float]]:
        """The replay rows of this iteration (and their advantages), or none; clears the buffer
        when it fires."""
        c = self.cfg
        if not self.buffer or not self.baseline:
            return [], []
        base = p50(list(self.baseline))
        if sum(e["score"] > base for e in self.buffer) <= c.replay_trigger * c.replay_size:
            return [], []
        if c.replay_adv_decay > 0:
            pool = [(e, c.replay_adv_decay * e["advantage"]) for e in self.buffer]
        else:
            pool = [(e, e["score"] - base) for e in self.buffer]
        pool = [(e, a) for e, a in pool if a > 0]
        self.buffer = []
        if not pool:
            return [], []
        n = 1 << int(math.floor(math.log2(min(len(pool), c.replay_size))))
        chosen = self.rng.sample(pool, n)
        return [e["trajectory"] for e, _ in chosen], [a for _, a in chosen]

    def _store(self, batch: Batch, traj_adv: torch.Tensor, scores: torch.Tensor,
               on_idx: list[int]) -> None:
        """Drop stale entries, then store this iteration's positive-advantage rows."""
        c = self.cfg
        self.buffer = [e for e in self.buffer if self.step - e["step"] <= c.replay_tolerate_steps]
        for j, i in enumerate(on_idx):
            if traj_adv[j] <= 0:
                continue
            t = batch.trajectories[i]
            turns = [(k, x) for k, x in enumerate(t.turns) if not self._masked(x)]
            if t.context_mode == "window":  # one row per turn: a one-turn trajectory each
                units = [dataclasses.replace(t, trajectory_id=f"{t.trajectory_id}-t{k}",
                                             turns=[x], extra={**t.extra, "replay_turn": k})
                         for k, x in turns]
            else:
                units = [t] if len(turns) == len(t.turns) else []
            self.buffer += [{"trajectory": u, "score": float(scores[j]),
                             "advantage": float(traj_adv[j]), "step": self.step} for u in units]

    # -- credit ------------------------------------------------------------------------------
    def advantages(self, batch: Batch) -> dict[str, float]:
        c = self.cfg
        K = len(batch.trajectories)
        rep = batch.traj.get("is_replay", torch.zeros(K)) > 0
        # zero-turn trajectories (context limit before the first turn) are not group members
        on_idx = [i for i in range(K) if not rep[i] and batch.trajectories[i].turns]
        on = [batch.trajectories[i] for i in on_idx]
        scores = self.scores(on)
        groups = [t.group_id for t in on]
        adv_on = (Fn.rloo(scores, groups) if c.baseline == "rloo"
                  else Fn.group_normalize(scores, groups, c.use_std))
        adv = torch.zeros(K)
        adv[on_idx] = adv_on
        if rep.any():
            adv[rep] = batch.traj["replay_advantage"][rep]
        batch.advantages = batch.per_trajectory(adv)
        self._store(batch, adv_on, scores, on_idx)
        return {**self.stats,
                "score_mean": float(scores.mean()) if len(scores) else 0.0,
                "advantage_abs_mean": float(adv_on.abs().mean()) if len(adv_on) else 0.0,
                "buffer_size_after": float(len(self.buffer))}

    # -- loss --------------------------------------------------------------------------------
    def loss(self, out: ModelOutputs, mb: Batch) -> dict[str, torch.Tensor]:
        c = self.cfg
        dev = out.logprobs.device
        lm = mb.loss_mask.to(dev)
        rep = (torch.zeros_like(lm) if mb.replayed is None
               else mb.replayed.to(dev, lm.dtype)[:, None].expand_as(lm))
        on_mask, rep_mask = lm * (1 - rep), lm * rep
        terms = self.pg_loss(out, mb, mb.advantages, mask=on_mask)
        cov = ((c.replay_clip_cov_ratio, c.replay_clip_cov_lb, c.replay_clip_cov_ub)
               if c.loss_mode == "clip_cov" else None)
        if rep_mask.any():
            per_tok, _ = self.surrogate(out.logprobs, mb.old_logprobs.to(dev),
                                        mb.advantages.to(dev), rep_mask, cov)
            replay_loss = self._agg(per_tok, mb, rep_mask)
        else:
            replay_loss = out.logprobs.new_zeros(())
        gamma = replay_weight(self.step, c.replay_coef, c.replay_warmup_steps)
        terms["replay_loss"] = replay_loss.detach()
        terms["loss"] = terms["loss"] + gamma * replay_loss
        return terms

    # -- state -------------------------------------------------------------------------------
    def on_iteration_end(self, iteration: int, metrics: dict[str, float]) -> None:
        self.step = iteration + 1

    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"buffer": [{**e, "trajectory": e["trajectory"].to_dict()} for e in self.buffer],
                "baseline": list(self.baseline), "step": self.step,
                "rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = [{**e, "trajectory": Trajectory.from_dict(e["trajectory"])}
                       for e in state.get("buffer", [])]
        self.baseline = deque(state.get("baseline", []), maxlen=self.cfg.baseline_size)
        self.step = int(state.get("step", 0))
        if state.get("rng"):
            version, internal, gauss = state["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
