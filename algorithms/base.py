"""The Algorithm interface: credit assignment and loss, with state that survives checkpoints.

An algorithm is one file that subclasses `Algorithm`, declares a hyperparameter dataclass
(subclass of `AlgorithmConfig`, so every algorithm has the shared loss options) and registers
itself with `@register_algorithm`. The trainer calls, per iteration:

    trajectories = algo.collect(engine, seeds, group_ids)   # optional override (branching)
    batch        = algo.build_batch(trajectories, pad_id)   # optional override (replay)
    scores       = learner.score(batch, algo.requires)      # one no-grad pass, see below
    batch.attach(scores)
    metrics      = algo.credit(batch)                       # calls `advantages(batch)`
    terms        = algo.loss(outputs, minibatch)            # {"loss": total, ...named terms}
    algo.on_iteration_end(iteration, metrics)

and never names an algorithm. State (histories, replay buffers) goes in `state_dict`.

An algorithm never runs the model. It declares what it needs and the learner computes it:
``requires`` (before `advantages`, all in one no-grad scoring pass of the pre-update policy:
``entropy``, ``values``, ``old_logprobs``, and ``ref_logprobs`` from the frozen reference) and
``loss_requires`` (what the update's forward returns besides logprobs: ``entropy`` with
gradient, ``values``, ``hidden``). `advantages` is then a pure function of the batch and the
algorithm's own state. A value head is the algorithm's (`param_groups`, `value`); the learner
applies it in both passes.

`credit` is the template around `advantages`: it checks the declared inputs are there and adds
the group statistics every algorithm logs (``zero_variance_groups``, and with ``filter_groups``
the filter's counts), so no algorithm can forget them.

Shared options every algorithm gets from `AlgorithmConfig`: clip-higher (``clip_low`` /
``clip_high``), dual clip, loss aggregation, k3 KL, entropy bonus, ``loss_mode`` (vanilla PPO,
Clip-Cov or KL-Cov, applied in `Algorithm.surrogate`) and ``filter_groups`` (DAPO dynamic
filtering of zero-variance groups, applied in the base `build_batch`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from agentrl.algorithms import functional as Fn
from agentrl.config import F

if TYPE_CHECKING:
    from agentrl.learn.batch import Batch, ModelOutputs
    from agentrl.rollout.engine import RolloutEngine
    from agentrl.types import Trajectory


#: Metrics `Algorithm.credit` adds for every algorithm (``algo/<name>`` in the logs).
SHARED_METRICS = ("zero_variance_groups", "zero_turn_trajectories",
                  "groups_dropped_zero_variance", "groups_kept_frac")


@dataclass
class AlgorithmConfig:
    """Loss options shared by every algorithm."""

    name: str = F("", "registered algorithm name (set from `algorithm.name`)")
    clip_low: float = F(0.2, "PPO clip: ratio lower bound is 1 - clip_low", ge=0, lt=1)
    clip_high: float = F(0.2, "PPO clip: ratio upper bound is 1 + clip_high (clip-higher > clip_low)",
                         ge=0)
    dual_clip: float | None = F(None, "dual-clip constant c for negative advantages (0 = off; "
                                "unset = 3.0 with loss_mode vanilla, off with clip_cov/kl_cov, "
                                "as their official code)", ge=0)
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                      "seq-mean-token-sum-norm"] = F("token-mean", "loss aggregation mode")
    kl_coef: float = F(0.0, "k3 KL penalty to the frozen initial policy (0 = off, no ref model)",
                       ge=0)
    entropy_coef: float = F(0.0, "entropy bonus coefficient (0 = off)")
    loss_mode: Literal["vanilla", "clip_cov", "kl_cov"] = F(
        "vanilla", "policy surrogate: clipped PPO, or Clip-Cov / KL-Cov (arXiv 2505.22617)")
    clip_cov_ratio: float = F(2e-4, "Clip-Cov: fraction of tokens whose gradient is detached",
                              ge=0, le=1)
    clip_cov_lb: float = F(1.0, "Clip-Cov: lower covariance bound of the candidates")
    clip_cov_ub: float = F(5.0, "Clip-Cov: upper covariance bound of the candidates")
    kl_cov_ratio: float = F(2e-3, "KL-Cov: fraction of top-covariance tokens that get the KL "
                            "term (the official k_percent 0.2 = 0.002)", ge=0, le=1)
    kl_cov_coef: float = F(1.0, "KL-Cov: weight of |logp - old_logp| on the selected tokens",
                           ge=0)
    filter_groups: bool = F(False, "DAPO dynamic filtering: drop groups whose trajectories all "
                            "have the same total reward (they carry no group-relative signal)")


class Algorithm:
    """Base class. Subclasses set ``name``, ``description``, ``Config`` and `advantages`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = AlgorithmConfig
    #: What asynchronous training (``train.max_staleness >= 1``) may feed it: "partial"
    #: (stale trajectories, and episodes whose turns span a weight push), "whole" (stale
    #: trajectories, each group sampled by one version: no partial rollouts), "current"
    #: (on-policy groups only: the synchronous loop). The config refuses what it does not allow.
    async_rollouts: ClassVar[Literal["partial", "whole", "current"]] = "partial"
    #: its credit comes from the episodes' rewards, so group statistics (zero-variance
    #: groups, filter_groups) and the reward alarms apply; False for imitation (SFT), which
    #: reports them as NaN
    learns_from_rewards: ClassVar[bool] = True
    #: why it cannot train on multi-agent games ('' = it can); the config refuses the
    #: combination with this reason
    refuses_multiagent: ClassVar[str] = ""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        # Group statistics of this iteration's trajectories (`filter_trajectories`), merged into
        # the metrics by `credit`.
        self.group_stats: dict[str, float] = {}

    def setup(self, model: torch.nn.Module) -> None:
        """Called once with the policy model before the optimizer exists (build heads here)."""

    # -- what the learner must provide ------------------------------------------------------
    @property
    def requires(self) -> frozenset[str]:
        """What the learner's scoring pass must put in the batch before `advantages`
        (``agentrl.learn.learner.SCORE_NAMES``). Base: ``ref_logprobs`` when the KL term is on."""
        return frozenset({"ref_logprobs"}) if self.cfg.kl_coef > 0 else frozenset()

    @property
    def loss_requires(self) -> frozenset[str]:
        """What the update's forward must return to `loss` besides logprobs
        (``agentrl.learn.learner.LOSS_NAMES``). Base: ``entropy`` (with gradient) for the bonus."""
        return frozenset({"entropy"}) if self.cfg.entropy_coef != 0 else frozenset()

    @property
    def critic_model(self) -> torch.nn.Module | None:
        """A model of the algorithm's own whose last hidden states `value` reads (a separate
        critic); the learner runs it on the same rows as the policy in both passes. None: the
        policy's own hidden states."""
        return None

    def value(self, hidden: torch.Tensor) -> torch.Tensor:
        """The value head: last hidden states (n, L, H) -> values (n, L). Only for algorithms
        that require ``values``."""
        raise NotImplementedError(f"{type(self).__name__} requires 'values' but has no value head")

    def param_groups(self) -> list[dict[str, Any]]:
        """Extra trainable parameters owned by the algorithm (e.g. a value head)."""
        return []

    # -- the iteration ------------------------------------------------------------------
    def collect(self, engine: RolloutEngine, seeds: list[int], group_ids: list[str]
                ) -> list[Trajectory]:
        """Produce this iteration's trajectories. Default: one rollout per (seed, group id)."""
        return engine.run(seeds, group_ids)

    def build_batch(self, trajectories: list[Trajectory], pad_id: int) -> Batch:
        """Tensorize this iteration's trajectories. Override to add rows (e.g. replayed
        trajectories, flagged in ``batch.traj`` / ``batch.row``)."""
        from agentrl.learn.batch import make_batch

        return make_batch(self.filter_trajectories(trajectories), pad_id)

    def filter_trajectories(self, trajectories: list[Trajectory]) -> list[Trajectory]:
        """Shared pre-batch filters (``filter_groups``). Records the group statistics of the
        trajectories it was given in ``self.group_stats``: the share of groups whose rewards
        are all equal (before any filtering, so the alarm still sees them) and, when
        filtering, how many groups were dropped."""
        self.group_stats = group_statistics(trajectories)
        flat, total = zero_variance_groups(trajectories)
        if not self.cfg.filter_groups:
            return trajectories
        kept = [t for t in trajectories if t.group_id not in flat]
        self.group_stats.update(groups_dropped_zero_variance=float(len(flat)),
                                groups_kept_frac=(total - len(flat)) / max(1, total))
        if trajectories and not kept:
            warnings.warn("filter_groups: every group has zero reward variance; this iteration "
                          "has nothing to train on (raise the group size or the task difficulty "
                          "range)", stacklevel=2)
        return kept

    def credit(self, batch: Batch) -> dict[str, float]:
        """Fill ``batch.advantages`` with `advantages` and return its metrics plus the group
        statistics every algorithm logs. The trainer calls this, after the scoring pass."""
        missing = [n for n in ("ref_logprobs", "entropy", "values")
                   if n in self.requires and getattr(batch, n) is None]
        if missing:
            raise ValueError(f"{type(self).__name__} requires {missing} in the batch: score it "
                             "first (batch.attach(learner.score(batch, algorithm.requires)))")
        stats, self.group_stats = self.group_stats, {}
        if "zero_variance_groups" not in stats:  # a build_batch that skipped the shared filter
            stats.update(group_statistics(batch.trajectories))
        own = self.advantages(batch)
        if set(own) & set(SHARED_METRICS):
            raise ValueError(f"{type(self).__name__}.advantages returned "
                             f"{sorted(set(own) & set(SHARED_METRICS))}: these names belong to "
                             "the shared group statistics; rename the algorithm's metric")
        return {**own, **stats}

    def advantages(self, batch: Batch) -> dict[str, float]:
        """Fill ``batch.advantages`` (N, L) (and ``batch.returns`` if used); return metrics.

        A pure function of the batch (with the scores declared in ``requires``) and the
        algorithm's own state: no model access.
        """
        raise NotImplementedError

    def loss(self, out: ModelOutputs, mb: Batch) -> dict[str, torch.Tensor]:
        """Clipped policy-gradient loss + optional KL and entropy terms.

        Returns named scalar terms; ``loss`` is the total that is back-propagated.
        """
        return self.pg_loss(out, mb, mb.advantages)

    @property
    def dual_clip(self) -> float | None:
        """The dual-clip constant in force: ``dual_clip`` when set (0 = off), else 3.0 (verl's
        default) for the vanilla surrogate and none for Clip-Cov/KL-Cov, whose official losses
        have no dual clip."""
        c = self.cfg.dual_clip
        if c is None:
            return 3.0 if self.cfg.loss_mode == "vanilla" else None
        return c or None

    def clipped_surrogate(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                          advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-token clipped objective (B, T) and stats; PPO here (AEPO: stop-gradient clip)."""
        c = self.cfg
        return Fn.policy_loss(logprobs, old_logprobs, advantages, c.clip_low, c.clip_high,
                              self.dual_clip)

    def surrogate(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                  advantages: torch.Tensor, mask: torch.Tensor,
                  cov: tuple[float, float, float] | None = None,
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-token policy loss (B, T) per ``loss_mode``; the covariance statistics use the
        tokens where ``mask`` (B, T) > 0. ``cov`` = (ratio, lb, ub) overrides the Clip-Cov
        settings (ratio alone for KL-Cov), e.g. for SPEAR's replay rows."""
        c = self.cfg
        if c.loss_mode == "kl_cov":
            return Fn.kl_cov_loss(logprobs, old_logprobs, advantages, mask,
                                  cov[0] if cov else c.kl_cov_ratio, c.kl_cov_coef)
        per_tok, st = self.clipped_surrogate(logprobs, old_logprobs, advantages)
        if c.loss_mode == "clip_cov":
            ratio, lb, ub = cov or (c.clip_cov_ratio, c.clip_cov_lb, c.clip_cov_ub)
            # tokens the PPO clip already holds are excluded; the chosen ones lose their gradient
            sel = Fn.clip_cov_select(Fn.token_covariance(logprobs, advantages, mask), mask,
                                     st["clipped"] == 0, ratio, lb, ub)
            per_tok = per_tok * (~sel)
            st["cov_selected"] = sel.float()
        return per_tok, st

    def pg_loss(self, out: ModelOutputs, mb: Batch, advantages: torch.Tensor,
                mask: torch.Tensor | None = None, cov: tuple[float, float, float] | None = None,
                ) -> dict[str, torch.Tensor]:
        """The shared surrogate on ``advantages`` (N, L), plus KL and entropy.

        ``mask`` (N, L) restricts every term to a subset of the action tokens while keeping the
        whole minibatch's aggregation denominators, so losses of disjoint subsets add up.
        """
        c = self.cfg
        dev = out.logprobs.device  # the learner's micro-batches stay on the CPU
        m = (mb.loss_mask if mask is None else mask).to(dev)
        per_tok, st = self.surrogate(out.logprobs, mb.old_logprobs.to(dev), advantages.to(dev),
                                     m, cov)

        def agg(x: torch.Tensor) -> torch.Tensor:
            return self._agg(x, mb, mask)

        terms = {"pg_loss": agg(per_tok)}
        total = terms["pg_loss"]
        if c.kl_coef > 0:
            terms["kl"] = agg(Fn.kl_k3(out.logprobs, mb.ref_logprobs.to(dev)))
            total = total + c.kl_coef * terms["kl"]
        if out.entropy is not None:
            terms["entropy"] = agg(out.entropy)
            if c.entropy_coef:
                total = total - c.entropy_coef * terms["entropy"]
        terms["clip_frac"] = agg(st["clipped"]).detach()
        if "cov_selected" in st:
            terms["cov_selected_frac"] = agg(st["cov_selected"]).detach()
        terms["approx_kl_old"] = agg(0.5 * (out.logprobs - mb.old_logprobs.to(dev)) ** 2).detach()
        terms["loss"] = total
        return terms

    def _agg(self, x: torch.Tensor, mb: Batch, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Aggregate (n, L) over ``mb.loss_mask``, or over a subset ``mask`` with the denominators
        of the whole micro-batch (the learner's minibatch totals when it set them)."""
        if mask is None:
            return Fn.aggregate(x, mb.loss_mask.to(x.device), self.cfg.loss_agg, mb.agg_tokens,
                                mb.agg_seqs, mb.agg_len)
        full = mb.loss_mask
        tokens = mb.agg_tokens if mb.agg_tokens is not None else float(full.sum().clamp(min=1))
        seqs = mb.agg_seqs if mb.agg_seqs is not None else float(
            (full.sum(-1) > 0).sum().clamp(min=1))
        return Fn.aggregate(x, mask.to(x.device), self.cfg.loss_agg, tokens, seqs, mb.agg_len)

    def on_iteration_end(self, iteration: int, metrics: dict[str, float]) -> None:
        """Update state that spans iterations (histories, schedules, buffers)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def zero_variance_groups(trajectories: list[Trajectory]) -> tuple[set[str], int]:
    """(ids of the groups whose total rewards are all equal, number of groups). A group of one
    is flat too: it has no spread. Zero-turn trajectories (the context limit was hit before the
    first turn: the policy never acted) are not members; a group of only those is flat."""
    by_group: dict[str, list[float]] = {}
    for t in trajectories:
        r = by_group.setdefault(t.group_id, [])
        if t.turns:
            r.append(t.total_reward)
    return {g for g, r in by_group.items() if not r or max(r) - min(r) < 1e-9}, len(by_group)


def group_statistics(trajectories: list[Trajectory]) -> dict[str, float]:
    """The group statistics every algorithm logs: the share of zero-variance groups and the
    number of zero-turn trajectories left out of every group statistic."""
    flat, total = zero_variance_groups(trajectories)
    return {"zero_variance_groups": len(flat) / max(1, total),
            "zero_turn_trajectories": float(sum(not t.turns for t in trajectories))}
