"""EPO: Entropy-regularized Policy Optimization for multi-turn agents.

Paper: Xu, Zhao, Wang et al. 2025, arXiv 2509.22576; official code ``WujiangXu/EPO`` (a fork of
verl-agent). EPO is a plug-in on a base algorithm: ``base: grpo`` (default) or ``base: ppo``
(the paper's strongest ScienceWorld results); credit assignment is the base's, unchanged.

What it adds to the base loss, for each turn of turn index t:

    L = L_base − λ·H + λ_s·β_k·( [κ_l·H̄_t − H_turn]_+ + [H_turn − κ_r·H̄_t]_+ )

- λ·H: the entropy bonus (``entropy_coef``, 0.001 as verl-agent), over action tokens.
- The smoothing corridor: H_turn is the turn's mean token entropy under the current policy
  (with gradient); H̄_t is the cumulative mean over *past* iterations of the batch's mean
  token entropy at turn index t, computed from the turns that happened (no zero padding); a
  turn index never seen before gets no penalty. The hinge penalises a turn whose entropy
  *level* leaves (κ_l·H̄_t, κ_r·H̄_t), which is the paper's intent: damp oscillations of the
  entropy across iterations. A turn's penalty is broadcast to its action tokens and aggregated
  like every other term (``loss_agg``), so with token-mean each token of an out-of-corridor
  turn gets ±λ_s·β_k/N of gradient on its entropy. ``smooth_granularity: token`` compares each
  token's entropy with H̄_t instead (the official ``token`` mask mode, but with gradient); with
  constrained decoding about half the action tokens have entropy ≈ 0, so the turn mean is small
  and a per-token upper hinge fires on a quarter or more of the tokens of a stationary policy,
  acting as a permanent entropy reducer on exactly the decision-bearing tokens.
- λ_s (``smooth_coef``) = 0.001: the official code multiplies the smoothing term by the
  entropy coefficient (λ·c with c = 1).
- β_k: phase weight of iteration k. ``two_phase`` (default, as the official code, K =
  ``phase_total``, h = ⌊K/2⌋, k clamped to [0, K]): β = 1 − 0.2·(1 − exp(−2k/h)) for k ≤ h,
  else 0.8·exp(−3(k − h)/(K − h)); ``constant``: β = 1.

The entropy history is algorithm state (`state_dict`); per-turn entropy is logged as
``algo/entropy_turn_<t>``.

Config fields that matter: ``base``, ``entropy_coef``, ``smooth_coef`` (λ_s),
``smooth_granularity``, ``kappa_low`` (κ_l, 0 as the reported runs), ``kappa_high`` (κ_r, 2.0),
``phase_schedule``, ``phase_total``, ``smooth_min_turn``; plus the base's fields (GRPO
``stats``/``use_std``/``baseline``, PPO ``gamma``/``lam``/``critic_lr``/...). Setting a field
of the other base (e.g. ``gamma`` with ``base: grpo``) is a config error.

Deliberate departures from the official code:

- The smoothing penalty is a differentiable hinge. The code's penalty is an indicator times a
  constant (no gradient), so its only gradient-bearing EPO term is the λ·H bonus.
- H_turn is the mean over the turn's action tokens (the code's ``seq`` mode averages over the
  padded response length).
- H̄_t comes from active turns only, aligned by turn index (the code left-pads each
  iteration's per-turn list with zeros, shifting indices and diluting early turns), from past
  iterations only, and from the update batch under the rollout policy (no extra forward pass
  per environment step).
- The smoothing is not gated by turn index; ``smooth_min_turn: 25`` reproduces the code's
  effective gate (a micro-batch gets the penalty only if it holds a turn with index ≥ 25),
  applied per turn here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from agentrl import collectives as C
from agentrl.algorithms import functional as Fn
from agentrl.algorithms.base import Algorithm, AlgorithmConfig
from agentrl.algorithms.grpo import GRPO, GRPOConfig
from agentrl.algorithms.ppo import PPO, PPOConfig
from agentrl.config import F
from agentrl.learn.batch import Batch, ModelOutputs
from agentrl.registry import register_algorithm

_SHARED = {f.name for f in dataclasses.fields(AlgorithmConfig)}
_PPO_ONLY = [f for f in dataclasses.fields(PPOConfig) if f.name not in _SHARED]
_GRPO_ONLY = [f for f in dataclasses.fields(GRPOConfig) if f.name not in _SHARED]


@dataclass
class EPOConfig(PPOConfig, GRPOConfig):
    base: Literal["grpo", "ppo"] = F("grpo", "base algorithm whose advantages and loss EPO "
                                     "regularises")
    entropy_coef: float = F(0.001, "λ, entropy bonus coefficient")
    smooth_coef: float = F(0.001, "λ_s, weight of the entropy-smoothing hinge (official: λ·c)",
                           ge=0)
    smooth_granularity: Literal["turn", "token"] = F(
        "turn", "hinge on each turn's mean entropy (default) or on every token's entropy")
    kappa_low: float = F(0.0, "κ_l, lower corridor bound as a multiple of H̄_t", ge=0)
    kappa_high: float = F(2.0, "κ_r, upper corridor bound as a multiple of H̄_t", ge=0)
    phase_schedule: Literal["two_phase", "constant"] = F(
        "two_phase", "β_k: the official two-phase decay over phase_total iterations, or 1")
    phase_total: int = F(150, "K of the two-phase schedule (the code hard-codes 150)", ge=2)
    smooth_min_turn: int = F(0, "turns with a smaller index get no smoothing (code: 25)", ge=0)

    def __post_init__(self) -> None:
        # One dataclass carries both bases' fields; a field of the base not in use would be
        # silently ignored, so setting one away from its default is an error.
        unused, owner = (_PPO_ONLY, "ppo") if self.base == "grpo" else (_GRPO_ONLY, "grpo")
        for f in unused:
            if getattr(self, f.name) != f.default:
                raise ValueError(f"{f.name} is a setting of base {owner!r}, which EPO with "
                                 f"base {self.base!r} does not use: remove it or set "
                                 f"algorithm.base={owner}")


def phase_weight(k: int, schedule: str, total: int) -> float:
    """β_k. two_phase, with k clamped to [0, K] and h = ⌊K/2⌋ (integer, as the official code):
    1 − 0.2(1 − e^(−2k/h)) for k ≤ h, else 0.8·e^(−3(k − h)/(K − h))."""
    if schedule == "constant":
        return 1.0
    k = max(0, min(k, total))
    h = total // 2
    if k <= h:
        return 1.0 - 0.2 * (1.0 - math.exp(-2.0 * k / h)) if h else 1.0
    return 0.8 * math.exp(-3.0 * (k - h) / (total - h))


def turn_entropy_means(entropy: torch.Tensor, batch: Batch) -> dict[int, tuple[float, int]]:
    """Token-mean entropy per turn index over the batch's action tokens.

    Args:
        entropy: (N, L) per-token entropy under the rollout policy.
    Returns:
        {turn index: (mean entropy, number of tokens)} for the indices present.
    """
    mask = batch.loss_mask > 0
    tid = batch.turn_id[mask]  # (P,)
    step = batch.turn_index[tid]  # (P,)
    ent = entropy[mask].double()
    out: dict[int, tuple[float, int]] = {}
    for t in step.unique().tolist():
        sel = step == t
        out[int(t)] = (float(ent[sel].mean()), int(sel.sum()))
    return out


def smoothing_penalty(entropy: torch.Tensor, reference: torch.Tensor, kappa_low: float,
                      kappa_high: float) -> torch.Tensor:
    """Corridor hinge [κ_l·H̄ − H]_+ + [H − κ_r·H̄]_+ per position; 0 where ``reference`` is NaN
    (no history). All (B, T); differentiable in ``entropy``."""
    has = ~torch.isnan(reference)
    ref = torch.where(has, reference, torch.zeros_like(reference))
    pen = torch.relu(kappa_low * ref - entropy) + torch.relu(entropy - kappa_high * ref)
    return torch.where(has, pen, torch.zeros_like(pen))


@register_algorithm
class EPO(Algorithm):
    name = "epo"
    description = ("EPO: entropy bonus + differentiable entropy-smoothing corridor against "
                   "per-turn historical entropy, on GRPO or PPO")
    Config = EPOConfig

    def __init__(self, cfg: EPOConfig) -> None:
        super().__init__(cfg)
        self.inner: Algorithm = (PPO if cfg.base == "ppo" else GRPO)(cfg)
        self.hist_sum: dict[int, float] = {}  # turn index -> Σ over iterations of h_k(t)
        self.hist_count: dict[int, int] = {}  # turn index -> iterations where t occurred
        self.iteration = 0
        self._pending: dict[int, float] = {}  # this iteration's h_k(t), committed at its end

    # -- the base algorithm's needs --------------------------------------------------------
    def setup(self, model: nn.Module) -> None:
        self.inner.setup(model)

    @property
    def requires(self) -> frozenset[str]:
        return self.inner.requires | {"entropy"}  # per-turn entropy of the rollout policy

    @property
    def loss_requires(self) -> frozenset[str]:
        return self.inner.loss_requires | {"entropy"}  # the hinge carries gradient

    @property
    def critic_model(self) -> nn.Module | None:
        return self.inner.critic_model

    def value(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.inner.value(hidden)

    def param_groups(self) -> list[dict[str, Any]]:
        return self.inner.param_groups()

    # -- credit ------------------------------------------------------------------------------
    def reference(self) -> dict[int, float]:
        """H̄_t for every turn index with history."""
        return {t: self.hist_sum[t] / self.hist_count[t] for t in self.hist_sum}

    def advantages(self, batch: Batch) -> dict[str, float]:
        c = self.cfg
        metrics = self.inner.advantages(batch)
        ref = self.reference()
        ref_turn = torch.tensor([ref.get(int(t), math.nan) if t >= c.smooth_min_turn else math.nan
                                 for t in batch.turn_index.tolist()], dtype=torch.float32)  # (M,)
        tok = ref_turn[batch.turn_id.clamp(min=0)]
        batch.row["epo_reference"] = torch.where(batch.turn_id >= 0, tok,
                                                 torch.full_like(tok, math.nan))  # (N, L)
        ent = batch.entropy  # (N, L), rollout policy
        means = C.merge_means(turn_entropy_means(ent, batch))  # over every rank's turns
        self._pending = {t: m for t, (m, _) in means.items()}
        for t, m in sorted(self._pending.items()):
            metrics[f"entropy_turn_{t}"] = m
        mask = batch.loss_mask > 0
        metrics["token_entropy_mean"] = float(ent[mask].mean()) if mask.any() else 0.0
        metrics["phase_weight"] = phase_weight(self.iteration, c.phase_schedule, c.phase_total)
        return metrics

    # -- loss --------------------------------------------------------------------------------
    def loss(self, out: ModelOutputs, mb: Batch) -> dict[str, torch.Tensor]:
        c = self.cfg
        terms = self.inner.loss(out, mb)  # includes −λ·H (shared entropy bonus)
        ent = out.entropy
        ref = mb.row["epo_reference"].to(ent.device)
        if c.smooth_granularity == "turn":
            # every token of a turn carries that turn's mean entropy (gradient split 1/n)
            ent = Fn.segment_mean(ent, mb.turn_id.to(ent.device), mb.loss_mask.to(ent.device))
        pen = smoothing_penalty(ent, ref, c.kappa_low, c.kappa_high)
        terms["entropy_smooth"] = self._agg(pen, mb)
        beta = phase_weight(self.iteration, c.phase_schedule, c.phase_total)
        terms["loss"] = terms["loss"] + c.smooth_coef * beta * terms["entropy_smooth"]
        terms["entropy_smooth"] = terms["entropy_smooth"].detach()
        return terms

    # -- state -------------------------------------------------------------------------------
    def on_iteration_end(self, iteration: int, metrics: dict[str, float]) -> None:
        for t, m in self._pending.items():
            self.hist_sum[t] = self.hist_sum.get(t, 0.0) + m
            self.hist_count[t] = self.hist_count.get(t, 0) + 1
        self._pending = {}
        self.iteration = iteration + 1
        self.inner.on_iteration_end(iteration, metrics)

    def state_dict(self) -> dict[str, Any]:
        return {"hist_sum": {str(k): v for k, v in self.hist_sum.items()},
                "hist_count": {str(k): v for k, v in self.hist_count.items()},
                "iteration": self.iteration, "inner": self.inner.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hist_sum = {int(k): float(v) for k, v in state.get("hist_sum", {}).items()}
        self.hist_count = {int(k): int(v) for k, v in state.get("hist_count", {}).items()}
        self.iteration = int(state.get("iteration", 0))
        self.inner.load_state_dict(state.get("inner", {}))
