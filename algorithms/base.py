"""The Algorithm interface: credit assignment and loss, with state that survives checkpoints.

An algorithm is one file that subclasses `Algorithm`, declares a hyperparameter dataclass
(subclass of `AlgorithmConfig`, so every algorithm has the shared loss options) and registers
itself with `@register_algorithm`. The trainer calls, per iteration:

    trajectories = algo.collect(engine, seeds, group_ids)   # optional override (branching)
    batch        = algo.build_batch(trajectories, pad_id)   # optional override (replay)
    metrics      = algo.advantages(batch, learner)          # fills batch.advantages
    terms        = algo.loss(outputs, minibatch)            # {"loss": total, ...named terms}
    algo.on_iteration_end(iteration, metrics)

and never names an algorithm. State (histories, replay buffers) goes in `state_dict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from agentrl.algorithms import functional as Fn
from agentrl.config import F

if TYPE_CHECKING:
    from agentrl.batch import Batch
    from agentrl.learner import Learner, ModelOutputs
    from agentrl.rollout import RolloutEngine
    from agentrl.types import Trajectory


@dataclass
class AlgorithmConfig:
    """Loss options shared by every algorithm."""

    name: str = F("", "registered algorithm name (set from `algorithm.name`)")
    clip_low: float = F(0.2, "PPO clip: ratio lower bound is 1 - clip_low", ge=0, lt=1)
    clip_high: float = F(0.2, "PPO clip: ratio upper bound is 1 + clip_high (clip-higher > clip_low)",
                         ge=0)
    dual_clip: float = F(3.0, "dual-clip constant c for negative advantages (0 = off)", ge=0)
    loss_agg: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean",
                      "seq-mean-token-sum-norm"] = F("token-mean", "loss aggregation mode")
    kl_coef: float = F(0.0, "k3 KL penalty to the frozen initial policy (0 = off, no ref model)",
                       ge=0)
    entropy_coef: float = F(0.0, "entropy bonus coefficient (0 = off)")


class Algorithm:
    """Base class. Subclasses set ``name``, ``description``, ``Config`` and `advantages`."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = AlgorithmConfig

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def setup(self, model: torch.nn.Module) -> None:
        """Called once with the policy model before the optimizer exists (build heads here)."""

    # -- what the learner must provide ------------------------------------------------------
    @property
    def needs_reference(self) -> bool:
        """True if ``batch.ref_logprobs`` must be computed (KL to the initial policy)."""
        return self.cfg.kl_coef > 0

    @property
    def needs_entropy(self) -> bool:
        """True if the update forward pass must return per-token entropy."""
        return self.cfg.entropy_coef != 0

    @property
    def needs_hidden(self) -> bool:
        """True if the update forward pass must return last hidden states (value heads)."""
        return False

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
        trajectories, flagged in ``batch.extra``)."""
        from agentrl.batch import make_batch

        return make_batch(trajectories, pad_id)

    def advantages(self, batch: Batch, learner: Learner) -> dict[str, float]:
        """Fill ``batch.advantages`` (N, L) (and ``batch.returns`` if used); return metrics."""
        raise NotImplementedError

    def loss(self, out: ModelOutputs, mb: Batch) -> dict[str, torch.Tensor]:
        """Clipped policy-gradient loss + optional KL and entropy terms.

        Returns named scalar terms; ``loss`` is the total that is back-propagated.
        """
        return self.pg_loss(out, mb, mb.advantages)

    def pg_loss(self, out: ModelOutputs, mb: Batch, advantages: torch.Tensor
                ) -> dict[str, torch.Tensor]:
        """The shared surrogate: clipped PG on ``advantages`` (N, L), plus KL and entropy."""
        c = self.cfg
        per_tok, st = Fn.policy_loss(out.logprobs, mb.old_logprobs, advantages,
                                     c.clip_low, c.clip_high, c.dual_clip or None)
        agg = self._agg
        terms = {"pg_loss": agg(per_tok, mb)}
        total = terms["pg_loss"]
        if c.kl_coef > 0:
            terms["kl"] = agg(Fn.kl_k3(out.logprobs, mb.ref_logprobs), mb)
            total = total + c.kl_coef * terms["kl"]
        if out.entropy is not None:
            terms["entropy"] = agg(out.entropy, mb)
            if c.entropy_coef:
                total = total - c.entropy_coef * terms["entropy"]
        terms["clip_frac"] = agg(st["clipped"], mb).detach()
        terms["approx_kl_old"] = agg(0.5 * (out.logprobs - mb.old_logprobs) ** 2, mb).detach()
        terms["loss"] = total
        return terms

    def _agg(self, x: torch.Tensor, mb: Batch) -> torch.Tensor:
        return Fn.aggregate(x, mb.loss_mask, self.cfg.loss_agg, mb.agg_tokens, mb.agg_seqs,
                            mb.agg_len)

    def on_iteration_end(self, iteration: int, metrics: dict[str, float]) -> None:
        """Update state that spans iterations (histories, schedules, buffers)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
