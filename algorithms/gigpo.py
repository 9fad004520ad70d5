"""GiGPO: Group-in-Group Policy Optimization, turn-level credit from anchor states.

Paper: Feng, Xue, Liu, An 2025, arXiv 2505.10978 (NeurIPS 2025); official code
``langfengQ/verl-agent`` (``gigpo/core_gigpo.py``).

What differs from GRPO: the advantage of turn t of trajectory i has two parts,

    A = A^E(τ_i) + ω·A^S(a_t)

- A^E, episode level: the group-relative GRPO advantage of the episode's total *env* reward.
- A^S, step level: turns taken from the same environment state anywhere in the group (same
  task, same seed) form an *anchor group*; A^S normalises each turn's discounted step return
  R_t = Σ_{k≥t} γ^(k−t) r_k against the other turns of its anchor group. A singleton anchor group
  gives A^S = 0, so GiGPO falls back to GRPO where states never repeat.

The anchor is the env's history-free ``info["state_key"]`` (`Turn.state_key`), never the prompt
(which holds the last K steps, so every anchor group would be a singleton). Turns whose env
gives no ``state_key`` are singletons. Loss: the shared PPO surrogate (no critic).

Config fields that matter: ``step_weight`` (ω, 1), ``gamma`` (γ, 0.95), ``mode`` (F_norm:
``mean`` = 1, the default; ``mean_std`` = group std + 1e-6, both levels), ``stats`` (episode
statistics over trajectories, as the paper, or over all turn-samples, as verl-agent's default),
``similarity`` / ``similarity_threshold`` (cluster near-identical anchors, difflib ratio).

Deliberate departures from the official code:

- Episode statistics are per trajectory by default (paper); ``stats: turn`` gives the code's
  step-weighted statistics.
- Shaping (invalid-action penalty, step penalty: ``Turn.shaping``) enters a
  turn's step return undiscounted and only that turn's, as the code applies the penalty after
  discounting; the code has no step penalty. It is not part of the episode return that A^E
  uses (the code's per-step score S = R_ep − penalty puts it into A^E too, so one turn's
  penalty moved the episode advantage of every turn of the trajectory and, through the group
  mean/std, of the whole group). So a penalised turn in a singleton anchor group carries no
  penalty signal (A^S = 0 there); an invalid action usually leaves the state unchanged, which
  puts the next turn in the same anchor group.
- A one-member episode group gets A^E = 0 (the code gives it its raw score).
- No batch padding duplicates (the code copies random samples to fill the batch, which then
  enter the group statistics).
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from agentrl.algorithms import functional as Fn
from agentrl.algorithms.base import Algorithm, AlgorithmConfig
from agentrl.algorithms.grpo import GRPOConfig, outcome_advantages, rae_advantages
from agentrl.config import F
from agentrl.learn.batch import Batch
from agentrl.registry import register_algorithm


@dataclass
class GiGPOConfig(AlgorithmConfig):
    step_weight: float = F(1.0, "ω, weight of the step-level (anchor-state) advantage", ge=0)
    gamma: float = F(0.95, "γ of the discounted step return R_t", ge=0, le=1)
    mode: Literal["mean", "mean_std"] = F(
        "mean", "F_norm of both levels: 1 (mean, unbiased) or group std + 1e-6 (mean_std)")
    stats: Literal["trajectory", "turn"] = F(
        "trajectory", "episode statistics over trajectories (paper) or all turn-samples (code)")
    similarity: bool = F(False, "group anchors whose texts are similar, not only equal")
    similarity_threshold: float = F(0.95, "difflib ratio at or above which two anchors group",
                                    ge=0, le=1)
    baseline: Literal["grpo", "rae"] = F(
        "grpo", "episode level: group-relative (grpo) or a moving baseline per (env, role) "
        "(rae, SPIRAL's role-conditioned advantage estimation, for self-play games)")
    rae_decay: float = F(0.95, "rae: decay of the per-role moving baseline", ge=0, lt=1)


def step_returns(batch: Batch, gamma: float) -> torch.Tensor:
    """Discounted step return of every turn (M,).

    R_t = Σ_{k≥t} γ^(k−t) e_k + s_t, with e the env reward and s_t the turn's own shaping
    (penalties), not discounted back. A truncated episode uses the rewards it observed.
    """
    env, shaping = batch.turn_reward, batch.turn_shaping
    out = torch.zeros(batch.num_turns)
    for ti in range(len(batch.trajectories)):
        idx = (batch.turn_traj == ti).nonzero(as_tuple=True)[0]  # turns in order (make_batch)
        if len(idx):
            out[idx] = Fn.discounted_returns(env[idx], gamma) + shaping[idx]
    return out


def anchor_groups(group_ids: Sequence[Hashable], state_keys: Sequence[Any],
                  similarity: bool = False, threshold: float = 0.95) -> list[Hashable]:
    """Anchor group of each turn (M,): (episode group, state cluster).

    Turns from different episode groups never share an anchor group. A ``None`` key is its own
    singleton. With ``similarity``, a key joins the first cluster (in order of appearance) whose
    representative's ``difflib.SequenceMatcher`` ratio with it is at least ``threshold``.
    """
    out: list[Hashable] = []
    reps: dict[Hashable, list[str]] = {}  # episode group -> cluster representatives
    for j, (g, key) in enumerate(zip(group_ids, state_keys)):
        if key is None:
            out.append((g, "__no_state_key__", j))
            continue
        if not similarity:
            out.append((g, key))
            continue
        clusters = reps.setdefault(g, [])
        text = str(key)
        for c, rep in enumerate(clusters):
            if rep == text or difflib.SequenceMatcher(None, rep, text).ratio() >= threshold:
                out.append((g, c))
                break
        else:
            clusters.append(text)
            out.append((g, len(clusters) - 1))
    return out


def gigpo_turn_advantages(batch: Batch, cfg: GiGPOConfig, a_ep: torch.Tensor | None = None,
                          ) -> tuple[torch.Tensor, dict[str, float]]:
    """A = A^E + ω·A^S per turn (M,), and anchor-group statistics. ``a_ep`` (M,) replaces the
    group-relative episode level (e.g. by RAE's)."""
    use_std = cfg.mode == "mean_std"
    if a_ep is None:
        a_ep = outcome_advantages(batch, GRPOConfig(stats=cfg.stats, use_std=use_std),
                                  shaped=False)
    groups = batch.group_ids()
    turn_groups = [groups[i] for i in batch.turn_traj.tolist()]
    anchors = anchor_groups(turn_groups, batch.turn_state_keys(), cfg.similarity,
                            cfg.similarity_threshold)
    a_step = Fn.group_normalize(step_returns(batch, cfg.gamma), anchors, use_std)
    sizes: dict[Hashable, int] = {}
    for a in anchors:
        sizes[a] = sizes.get(a, 0) + 1
    per_turn = [sizes[a] for a in anchors]
    stats = {"step_group_size_mean": sum(per_turn) / max(1, len(per_turn)),
             "step_singleton_frac": sum(s == 1 for s in per_turn) / max(1, len(per_turn)),
             "step_groups": float(len(sizes)),
             "step_advantage_abs_mean": float(a_step.abs().mean()) if len(a_step) else 0.0,
             "episode_advantage_abs_mean": float(a_ep.abs().mean()) if len(a_ep) else 0.0}
    return a_ep + cfg.step_weight * a_step, stats


@register_algorithm
class GiGPO(Algorithm):
    name = "gigpo"
    description = "GiGPO: episode-level GRPO advantage + step-level advantage over anchor states"
    Config = GiGPOConfig
    # Anchor-state groups compare the actions the group's trajectories took from one state:
    # those must come from one policy, so no episode may span a weight push.
    async_rollouts = "whole"

    def __init__(self, cfg: GiGPOConfig) -> None:
        super().__init__(cfg)
        self._warned = False
        self.role_baselines: dict[str, float] = {}  # rae: (env, role) -> moving baseline

    def advantages(self, batch: Batch) -> dict[str, float]:
        if (not self._warned and batch.num_turns
                and all(k is None for k in batch.turn_state_keys())):
            warnings.warn("GiGPO: the env gives no info['state_key']; every anchor group is a "
                          "singleton and GiGPO reduces to GRPO (add a history-free state_key "
                          "to the env's info)", stacklevel=2)
            self._warned = True
        a_ep = None
        if self.cfg.baseline == "rae":
            a_ep, self.role_baselines = rae_advantages(batch, self.role_baselines,
                                                       self.cfg.rae_decay, shaped=False)
        adv, stats = gigpo_turn_advantages(batch, self.cfg, a_ep)
        batch.advantages = batch.per_turn(adv)
        return {**stats, **{f"rae_baseline/{k}": v for k, v in self.role_baselines.items()}}

    def state_dict(self) -> dict[str, Any]:
        return {"role_baselines": dict(self.role_baselines)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.role_baselines = dict(state.get("role_baselines", {}))
