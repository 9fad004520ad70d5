"""EMPG: Entropy-Modulated Policy Gradients.

Paper: Wang, Liu, Fu et al. 2025 (ByteDance Seed), arXiv 2509.09265. No official code was
found; the formulas follow the paper.

What differs from GRPO: the trajectory-level outcome advantage A(τ_i) of a base estimator
(multi-turn GRPO, Dr.GRPO without std, or RLOO: ``baseline`` / ``use_std`` / ``stats``) is
modulated per turn t by the turn's entropy H_{i,t} (mean token entropy of the response under the
rollout policy, detached):

    H̃      = (H − min_B H) / (max_B H − min_B H + ε)         min-max over every turn of the batch
    g(H)   = exp(−k·H̃) / mean_B exp(−k·H̃)                   self-calibrating: mean_B g = 1
    f(H')  = exp(−k'·H̃_{i,t+1}),  0 for the episode's last turn (no next step)
    A_mod  = g(H_{i,t})·A(τ_i) + ζ·f(H_{i,t+1})
    A      = A_mod − mean_B A_mod                              re-centred over the batch's turns

Confident turns (low entropy) get g > 1, uncertain ones g < 1; f rewards turns that lead to a
confident next turn. The loss is the shared PPO surrogate, unchanged.

Config fields that matter: ``k`` (1), ``k_future`` (k', 1), ``zeta`` (ζ, 0.05), ``recenter``
(True), ``eps``; plus the base estimator's ``baseline``, ``use_std``, ``stats``.

Deliberate choices (the paper leaves them open): all batch statistics (min, max, mean of g,
re-centring mean) are over the whole update batch, never per shard or micro-batch; means are
over turns (each turn counts once, whatever its length); a truncated episode's last observed
turn gets no future bonus, like a terminated one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agentrl import collectives as C
from agentrl.algorithms.base import Algorithm
from agentrl.algorithms.grpo import GRPOConfig, outcome_advantages
from agentrl.config import F
from agentrl.learn.batch import Batch
from agentrl.registry import register_algorithm


@dataclass
class EMPGConfig(GRPOConfig):
    k: float = F(1.0, "k, sharpness of the self-calibrating scale g", ge=0)
    k_future: float = F(1.0, "k', sharpness of the future-clarity bonus f", ge=0)
    zeta: float = F(0.05, "ζ, weight of the future-clarity bonus", ge=0)
    recenter: bool = F(True, "subtract the batch mean of the modulated advantages")
    eps: float = F(1e-8, "ε of the min-max normalisation", gt=0)


def turn_mean_entropy(entropy: torch.Tensor, batch: Batch) -> torch.Tensor:
    """Mean token entropy of each turn (M,) from per-token entropy (N, L); 0 for empty turns."""
    return batch.turn_mean(entropy)[0].float()


def next_turn_index(turn_traj: torch.Tensor) -> torch.Tensor:
    """Index of the same trajectory's next turn for each turn (M,), −1 for its last turn
    (turns are stored in trajectory order, as `make_batch` does)."""
    nxt = torch.arange(1, len(turn_traj) + 1)
    same = torch.zeros(len(turn_traj), dtype=torch.bool)
    same[:-1] = turn_traj[1:] == turn_traj[:-1]
    return torch.where(same, nxt, torch.full_like(nxt, -1))


def empg_modulate(advantage: torch.Tensor, step_entropy: torch.Tensor, next_index: torch.Tensor,
                  k: float = 1.0, k_future: float = 1.0, zeta: float = 0.05,
                  recenter: bool = True, eps: float = 1e-8
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """EMPG advantages per turn.

    Args:
        advantage: (M,) base outcome advantage A(τ_i) of each turn's trajectory.
        step_entropy: (M,) mean token entropy of each turn; detached here (a weight, not a loss).
        next_index: (M,) index of the trajectory's next turn, −1 for the last turn.
    Returns:
        (M,) final advantages and the (M,) weights ``g`` and bonus ``f`` (of the next turn).
    """
    h = step_entropy.detach().double()
    a = advantage.detach().double()
    if len(h) == 0 and not C.is_distributed():  # a rank must join the collectives below
        return advantage.detach().float(), {"g": h.float(), "f": h.float()}
    # Batch statistics over every rank's turns (`agentrl.collectives`): the update must not
    # depend on how the batch is sharded.
    h_min, h_max = C.global_min(h), C.global_max(h)
    h_norm = (h - h_min) / (h_max - h_min + eps)
    w = torch.exp(-k * h_norm)
    g = w / C.global_mean(w)
    f_all = torch.exp(-k_future * h_norm)
    has_next = next_index >= 0
    f = torch.where(has_next, f_all[next_index.clamp(min=0)], torch.zeros_like(f_all))
    mod = g * a + zeta * f
    if recenter:
        mod = mod - C.global_mean(mod)
    return mod.float(), {"g": g.float(), "f": f.float()}


@register_algorithm
class EMPG(Algorithm):
    name = "empg"
    description = ("EMPG: outcome advantages scaled per turn by entropy confidence, plus a "
                   "future-clarity bonus, re-centred")
    Config = EMPGConfig

    @property
    def requires(self) -> frozenset[str]:
        return super().requires | {"entropy"}  # turn entropies of the rollout policy

    def advantages(self, batch: Batch) -> dict[str, float]:
        c = self.cfg
        base = outcome_advantages(batch, c)  # (M,)
        h = turn_mean_entropy(batch.entropy, batch)  # (M,), rollout policy, no grad
        adv, parts = empg_modulate(base, h, next_turn_index(batch.turn_traj), c.k, c.k_future,
                                   c.zeta, c.recenter, c.eps)
        batch.advantages = batch.per_turn(adv)
        n = max(1, len(adv))
        return {"turn_entropy_mean": float(h.mean()) if len(h) else 0.0,
                "g_min": float(parts["g"].min()) if len(h) else 0.0,
                "g_max": float(parts["g"].max()) if len(h) else 0.0,
                "future_bonus_mean": float(parts["f"].sum()) / n,
                "base_advantage_abs_mean": float(base.abs().mean()) if len(base) else 0.0,
                "advantage_abs_mean": float(adv.abs().mean()) if len(adv) else 0.0}
