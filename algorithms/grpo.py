"""Multi-turn GRPO: group-relative, trajectory-level advantages broadcast to every turn.

Paper: Shao et al. 2024 (DeepSeekMath), arXiv 2402.03300; multi-turn form as in verl-agent.
Differs from PPO: no critic; the baseline is the mean score of the G rollouts of the same task
(same seed), optionally divided by their std.

Config fields that matter: ``stats`` (per trajectory, as in the paper, or over all per-turn
samples of the group, as verl-agent's default), ``use_std``, ``baseline`` (``grpo`` | ``rloo`` |
``rae``: SPIRAL's role-conditioned moving baseline per (env, role), for self-play games, with
``rae_decay``; needs no groups).
Scores: trajectory mode uses the episode's total shaped reward; turn mode gives each turn-sample
the episode's env reward plus that turn's own shaping (its invalid-action penalty, verl-agent).

Zero-turn trajectories (the first prompt already exceeded the context budget) take no part in
the group statistics: the policy never acted, so their reward of 0 is not an outcome to
compare against; they have no tokens to train either (``zero_turn_trajectories`` counts them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from agentrl.algorithms import functional as Fn
from agentrl.algorithms.base import Algorithm, AlgorithmConfig
from agentrl.config import F
from agentrl.learn.batch import Batch
from agentrl.registry import register_algorithm


@dataclass
class GRPOConfig(AlgorithmConfig):
    stats: Literal["trajectory", "turn"] = F("trajectory", "group statistics over trajectories "
                                             "(paper) or over all turn-samples (verl-agent)")
    use_std: bool = F(True, "divide by the group std (False: Dr.GRPO-style mean only)")
    baseline: Literal["grpo", "rloo", "rae"] = F(
        "grpo", "group mean (grpo), leave-one-out (rloo), or a moving baseline per (env, role) "
        "(rae: SPIRAL's role-conditioned advantage estimation, arXiv 2506.24119)")
    rae_decay: float = F(0.95, "rae: decay of the per-role moving baseline", ge=0, lt=1)


def trajectory_scores(batch: Batch, shaped: bool = True) -> torch.Tensor:
    """Total reward of each trajectory (K,): shaped (env reward + shaping) or the env's alone."""
    k = len(batch.trajectories)
    per_turn = batch.shaped_turn_reward() if shaped else batch.turn_reward
    return torch.zeros(k).index_add_(0, batch.turn_traj, per_turn)


def played(batch: Batch) -> torch.Tensor:
    """Bool (K,): the trajectory has at least one turn (zero-turn ones never acted)."""
    return torch.bincount(batch.turn_traj, minlength=len(batch.trajectories)) > 0


def rae_advantages(batch: Batch, baselines: dict[str, float], decay: float,
                   shaped: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-turn advantages (M,) against a moving baseline per (env, role) (RAE), and the
    baselines after this batch. Single-agent trajectories (role "") share one per env;
    zero-turn trajectories do not move a baseline."""
    idx = played(batch).nonzero(as_tuple=True)[0]
    keys = [f"{batch.trajectories[i].env_id}|{batch.trajectories[i].role}" for i in idx.tolist()]
    adv = torch.zeros(len(batch.trajectories))
    adv[idx], new = Fn.role_baseline_advantages(trajectory_scores(batch, shaped)[idx], keys,
                                                baselines, decay)
    return adv[batch.turn_traj], {str(k): v for k, v in new.items()}


def outcome_advantages(batch: Batch, cfg: GRPOConfig, shaped: bool = True) -> torch.Tensor:
    """Per-turn advantages (M,) from group-relative outcome scores.

    ``shaped=False`` scores episodes by the env's reward alone: the shaping then enters
    nowhere here (GiGPO puts it in each turn's own step return instead).
    """
    if cfg.baseline == "rae":  # stateless here: the moving baselines live in GRPO / GiGPO
        raise ValueError(f"algorithm.baseline=rae is an option of grpo and gigpo only; use "
                         f"grpo or rloo with algorithm.name={cfg.name or 'this algorithm'}")
    groups = batch.group_ids()
    traj_score = trajectory_scores(batch, shaped)
    if cfg.stats == "trajectory":
        idx = played(batch).nonzero(as_tuple=True)[0]  # zero-turn trajectories are not members
        members = [groups[i] for i in idx.tolist()]
        adv = torch.zeros(len(groups))
        adv[idx] = (Fn.rloo(traj_score[idx], members) if cfg.baseline == "rloo"
                    else Fn.group_normalize(traj_score[idx], members, cfg.use_std))
        return adv[batch.turn_traj]
    # turn mode: S_k = episode env reward (+ own shaping when shaped); statistics over all
    # turn-samples (a zero-turn trajectory has none).
    scores = trajectory_scores(batch, shaped=False)[batch.turn_traj]
    if shaped:
        scores = scores + batch.turn_shaping
    turn_groups = [groups[i] for i in batch.turn_traj.tolist()]
    if cfg.baseline == "rloo":
        return Fn.rloo(scores, turn_groups)
    return Fn.group_normalize(scores, turn_groups, cfg.use_std)


@register_algorithm
class GRPO(Algorithm):
    name = "grpo"
    description = "multi-turn GRPO: group-normalised episode return, broadcast to every turn"
    Config = GRPOConfig

    def __init__(self, cfg: GRPOConfig) -> None:
        super().__init__(cfg)
        if cfg.baseline == "rae" and cfg.stats != "trajectory":
            raise ValueError("algorithm.baseline=rae scores whole trajectories: set "
                             "algorithm.stats=trajectory")
        self.role_baselines: dict[str, float] = {}  # rae: (env, role) -> moving baseline

    def advantages(self, batch: Batch) -> dict[str, float]:
        if self.cfg.baseline == "rae":
            adv_turn, self.role_baselines = rae_advantages(batch, self.role_baselines,
                                                           self.cfg.rae_decay)
        else:
            adv_turn = outcome_advantages(batch, self.cfg)
        batch.advantages = batch.per_turn(adv_turn)
        return {"advantage_abs_mean": float(adv_turn.abs().mean()) if len(adv_turn) else 0.0,
                **{f"rae_baseline/{k}": v for k, v in self.role_baselines.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"role_baselines": dict(self.role_baselines)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.role_baselines = dict(state.get("role_baselines", {}))
