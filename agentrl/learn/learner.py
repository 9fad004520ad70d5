"""The learner: scoring passes and optimizer updates on the trainer's own model.

`Learner` is the protocol the trainer talks to; `LocalLearner` is the one-process
implementation (a distributed one, DDP / FSDP under torchrun, implements the same methods and
reduces everything global across ranks). Per iteration the trainer calls

    scores  = learner.score(batch, wants)   # one no-grad pass (+ one reference pass for KL)
    metrics = learner.update(batch, rng)    # epochs x minibatches of optimizer steps
    policy.update_weights(learner.export_weights())

``wants`` names what the algorithm declared in ``Algorithm.requires`` (`SCORE_NAMES`), plus
``old_logprobs`` when the config asks for recomputed old logprobs or truncated IS. The scoring
pass also yields the sampler/trainer mismatch metric: before any update both sides hold the
same weights, so a gap is numerics.

Logprobs are computed exactly as the sampler computes them: ``log_softmax(logits / T)`` at the
position that produced each token, restricted to the allowed ids on constrained turns. So on
CPU in fp32 the first PPO ratio is 1 (up to ~1e-6).

The forward pass itself (action-position logits, packing, micro-batch plans) is
`agentrl.learn.forward`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import random
import warnings
from collections.abc import Set
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from agentrl.config import TrainConfig
from agentrl.learn.batch import Batch, ModelOutputs, Scores
from agentrl.learn.forward import (
    Scorer,
    critic_hidden,
    micro_batches,
    supports_packing,
    token_outputs,
)
from agentrl.learn.varlen import enable_varlen
from agentrl.models.lora import adapters_disabled, has_adapters

#: What the scoring pass can compute, for ``Algorithm.requires``: the learner's own logprobs
#: as ``old_logprobs``, the frozen reference's logprobs, per-token entropy and value-head
#: outputs of the pre-update policy.
SCORE_NAMES = frozenset({"old_logprobs", "ref_logprobs", "entropy", "values"})
#: What the update's forward can return besides logprobs, for ``Algorithm.loss_requires``:
#: entropy with gradient, value-head outputs, last hidden states.
LOSS_NAMES = frozenset({"entropy", "values", "hidden"})
#: Rows scored for the mismatch metric alone (when nothing else needs a full pass).
MISMATCH_ROWS = 16


@dataclass
class _Step:
    """What one minibatch's optimizer step left: its loss terms (summed over micro-batches
    and ranks) and gradient norms; ``skipped``: not taken (non-finite)."""

    sums: dict[str, float]
    grad_norm: float
    algo_norm: float | None
    skipped: bool = False


class Objective(Protocol):
    """What the learner asks of an algorithm (`agentrl.algorithms.base.Algorithm` is one):
    what to score and return, extra parameters, the critic, and the loss. Algorithms build on
    `Batch` and `ModelOutputs` from this package, so the learner names them only through this
    protocol."""

    @property
    def requires(self) -> Set[str]: ...

    @property
    def loss_requires(self) -> Set[str]: ...

    @property
    def critic_model(self) -> nn.Module | None: ...

    def value(self, hidden: torch.Tensor) -> torch.Tensor: ...

    def param_groups(self) -> list[dict[str, Any]]: ...

    def loss(self, out: ModelOutputs, mb: Batch) -> dict[str, torch.Tensor]: ...


def spread_rows(n: int, k: int = MISMATCH_ROWS) -> list[int]:
    """At most ``k`` evenly spaced row indices out of ``n``."""
    return list(range(0, n, max(1, n // k)))[:k]


def _local_norm(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (FSDP2's is a replicated DTensor)."""
    full = getattr(norm, "full_tensor", None)  # a DTensor's, without importing DTensor here
    return full() if full is not None else norm


class NonFiniteUpdates(RuntimeError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""

    exit_code = 3  # of `agentrl train`

    def __init__(self, streak: int) -> None:
        super().__init__(
            f"{streak} optimizer steps in a row had a non-finite loss or gradient (each was "
            "skipped; weights and optimizer state are as before them). Try a lower train.lr, "
            "train.grad_clip > 0, policy.dtype=float32 instead of bf16/fp16, smaller rewards "
            "or advantages (check the env's reward scale), then continue with "
            "`agentrl train --resume RUN_DIR` (or raise train.max_nonfinite_updates)")


class Learner(Protocol):
    """What the trainer needs from a learner. `LocalLearner` is the one-process implementation;
    a distributed learner implements the same methods (global statistics reduced across
    ranks), and so do per-role adapters (`agentrl.learn.roles.RoleLearner`): the trainer does
    not change."""

    progress: Any  # anything with .update(n), advanced once per optimizer step (or None)

    def score(self, batch: Batch, wants: Set[str]) -> Scores:
        """One no-grad pass of the current weights over ``batch`` computing ``wants``
        (`SCORE_NAMES`), plus one pass of the reference model for ``ref_logprobs``."""
        ...

    def update(self, batch: Batch, rng: random.Random, step_schedule: bool = True
               ) -> dict[str, float]:
        """Optimizer steps on ``batch`` (advantages filled), then one LR schedule step unless
        ``step_schedule`` is false; returns ``train/*`` metrics."""
        ...

    def update_steps(self, batch: Batch) -> int:
        """How many optimizer steps `update` takes on ``batch`` at most (a progress bar's)."""
        ...

    def export_weights(self) -> nn.Module:
        """The updated weights, in the form ``Policy.update_weights`` takes."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, schedule and reference state (the model itself is saved separately)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


class LocalLearner:
    """Owns the trainable model, its optimizer and LR schedule, and the frozen reference."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, temperature: float,
                 algorithm: Objective, top_k: int = 0, top_p: float = 1.0,
                 response_budget: float | None = None) -> None:
        """``temperature`` / ``top_k`` / ``top_p``: the sampler's, so the learner scores the
        distribution the tokens were drawn from. ``response_budget``: action tokens a training
        row may hold (the constant of ``seq-mean-token-sum-norm``)."""
        self.model, self.cfg, self.temperature, self.algorithm = model, cfg, temperature, algorithm
        self.top_k, self.top_p, self.response_budget = top_k, top_p, response_budget
        for what, names, known in (("requires", algorithm.requires, SCORE_NAMES),
                                   ("loss_requires", algorithm.loss_requires, LOSS_NAMES)):
            if set(names) - known:
                raise ValueError(f"{type(algorithm).__name__}.{what}: unknown "
                                 f"{sorted(set(names) - known)}; choose from {sorted(known)}")
        if cfg.activation_checkpointing:  # recompute each layer in the backward
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
        self.reference: nn.Module | None = None
        self.progress: Any = None  # progress bar advanced once per optimizer step
        self.nonfinite_streak = 0  # optimizer steps skipped in a row (non-finite loss/grad)
        if "ref_logprobs" in algorithm.requires:
            self.reference = self._make_reference(model)
        self.pack = cfg.pack and supports_packing(model)
        # packed rows attend per sequence with no filler where the attention allows it
        self.varlen = self.pack and enable_varlen(model)
        if self.varlen and self.reference is not None:
            enable_varlen(self.reference)
        if cfg.pack and not self.pack:
            warnings.warn(f"train.pack: {type(model).__name__} does not mask sequences packed "
                          "in one row by position ids; training on padded rows instead",
                          stacklevel=2)
        # A distributed learner wraps the model here (DDP / FSDP), before the optimizer sees
        # its parameters; the one-process learner runs the model itself.
        self.scorer: Scorer | None = self._wrap(model)
        groups: list[dict[str, Any]] = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        groups += algorithm.param_groups()
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           betas=tuple(cfg.betas))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

    def _make_reference(self, model: nn.Module) -> nn.Module:
        """The frozen reference policy for KL: a copy of the initial weights, or with LoRA the
        model itself, run with its adapters off (`agentrl.models.lora.adapters_disabled`)."""
        if has_adapters(model):
            return model
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
        return ref

    def _wrap(self, model: nn.Module) -> Scorer | None:
        """Hook for a distributed learner: shard or replicate ``model`` and return what runs
        `action_outputs` on it. None: the model runs itself."""
        return None

    def _select(self, batch: Batch, rows: list[int]) -> Batch:
        """The micro-batch of ``rows`` (a distributed learner pads ranks with empty ones)."""
        return batch.select(rows)

    def _accumulating(self, last: bool) -> contextlib.AbstractContextManager[None]:
        """Around one micro-batch's forward and backward: a distributed learner reduces
        gradients across ranks only in the minibatch's ``last`` micro-batch."""
        return contextlib.nullcontext()

    def _backward(self, loss: torch.Tensor) -> None:
        """Back-propagate one micro-batch's loss."""
        loss.backward()

    def _reduce_sums(self, values: list[float]) -> list[float]:
        """Sums over ranks of per-rank sums (loss denominators, loss terms); one process: as is."""
        return values

    def _lr_factor(self, it: int) -> float:
        c = self.cfg
        if c.warmup_iterations and it < c.warmup_iterations:
            return (it + 1) / c.warmup_iterations
        if c.lr_schedule == "constant" or c.iterations <= c.warmup_iterations:
            return 1.0
        frac = min(1.0, (it - c.warmup_iterations) / max(1, c.iterations - c.warmup_iterations))
        if c.lr_schedule == "cosine":
            return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        return 1.0 - (1.0 - c.min_lr_ratio) * frac

    # -- forward passes ------------------------------------------------------------------
    def forward(self, mb: Batch, model: nn.Module | None = None, need_entropy: bool = False,
                need_hidden: bool = False, need_values: bool = False,
                entropy_grad: bool = True, pack_capacity: int = 0) -> ModelOutputs:
        """Outputs of ``model`` (default: the policy) on a micro-batch; ``need_values`` runs
        the algorithm's value head on the hidden states; with ``train.pack`` its rows are
        packed to rows of ``pack_capacity`` tokens (default: its longest)."""
        m = model or self.model
        critic = self.algorithm.critic_model if need_values else None
        out = token_outputs(m, mb.input_ids, mb.attention_mask, mb.loss_mask, mb.allowed,
                            self.temperature, need_entropy,
                            need_hidden or (need_values and critic is None), entropy_grad,
                            self.top_k, self.top_p, pack=self.pack, pack_capacity=pack_capacity,
                            scorer=self.scorer if m is self.model else None,
                            logits_chunk=self.cfg.logits_chunk)
        if need_values:
            if critic is not None:
                critic.train(m.training)  # the critic follows the policy's mode
            out.values = self.algorithm.value(out.hidden if critic is None
                                              else critic_hidden(critic, mb))
        return out

    def _micro_batches(self, batch: Batch, rows: list[int]) -> list[list[int]]:
        return micro_batches(batch, rows, self.cfg.micro_batch_tokens, self.pack,
                             self.cfg.sort_by_length, self.varlen)

    @torch.no_grad()
    def _pass(self, batch: Batch, rows: list[int], model: nn.Module, entropy: bool = False,
              values: bool = False) -> dict[str, torch.Tensor]:
        """No-grad outputs of ``model`` on ``rows`` in micro-batches: (N, L) tensors
        ``logprobs`` (and ``entropy`` / ``values``), 0 off action tokens and unscored rows."""
        was_training = model.training
        model.eval()
        N, L = batch.input_ids.shape
        names = ["logprobs"] + ["entropy"] * entropy + ["values"] * values
        out = {k: torch.zeros(N, L) for k in names}
        for mrows in self._micro_batches(batch, rows):
            mb = self._select(batch, mrows)
            o = self.forward(mb, model, need_entropy=entropy, need_values=values, pack_capacity=L)
            if not mrows:  # a distributed learner's filler: the ranks run equal passes
                continue
            idx, ell = torch.tensor(mrows), mb.input_ids.shape[1]
            for k in names:
                out[k][idx, :ell] = getattr(o, k).float().cpu()
        model.train(was_training)
        if values:
            out["values"] = out["values"] * (batch.loss_mask > 0)
        return out

    def score(self, batch: Batch, wants: Set[str]) -> Scores:
        """One no-grad pass of the current weights computing ``wants`` (`SCORE_NAMES`), and one
        pass of the reference model when ``ref_logprobs`` is wanted.

        The policy pass covers every row when anything but ``ref_logprobs`` is wanted, and
        otherwise `spread_rows` only: its logprobs then serve the mismatch metric alone.
        """
        if set(wants) - SCORE_NAMES:
            raise ValueError(f"Learner.score: unknown {sorted(set(wants) - SCORE_NAMES)}; "
                             f"choose from {sorted(SCORE_NAMES)}")
        N = batch.num_rows
        full = bool(set(wants) & {"old_logprobs", "entropy", "values"})
        rows = list(range(N)) if full else spread_rows(N)
        out = self._pass(batch, rows, self.model, "entropy" in wants, "values" in wants)
        scored = torch.zeros(N, dtype=torch.bool)
        scored[rows] = True
        ref = None
        if "ref_logprobs" in wants:
            if self.reference is None:
                raise ValueError("Learner.score: ref_logprobs wanted but the learner holds no "
                                 "reference model (the algorithm did not require one)")
            with adapters_disabled(self.model) if self.reference is self.model \
                    else contextlib.nullcontext():
                ref = self._pass(batch, list(range(N)), self.reference)["logprobs"]
        return Scores(logprobs=out["logprobs"], rows=scored, entropy=out.get("entropy"),
                      values=out.get("values"), ref_logprobs=ref)

    # -- update --------------------------------------------------------------------------
    def update_steps(self, batch: Batch) -> int:
        """How many optimizer steps `update` takes on ``batch`` at most (for a progress bar)."""
        return self.cfg.epochs * self.cfg.minibatches

    def update(self, batch: Batch, rng: random.Random, step_schedule: bool = True
               ) -> dict[str, float]:
        """Epochs x minibatches of optimizer steps on ``batch`` with gradient accumulation,
        then one step of the LR schedule (``step_schedule=False``: none, for a caller that
        splits one iteration's update into several calls, `agentrl.learn.roles`).

        Entropy is always computed, so ``train/entropy`` is logged for every algorithm; it
        carries gradient only when the loss needs it (``"entropy" in algorithm.loss_requires``),
        otherwise it costs no graph memory.
        """
        c = self.cfg
        self.model.train()
        N = batch.num_rows
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        grad_norms: list[float] = []
        algo_norms: list[float] = []
        skipped = 0
        for _ in range(c.epochs):
            order = list(range(N))
            rng.shuffle(order)
            k = min(c.minibatches, N)
            for m in range(k):
                step = self._minibatch_step(batch, order[m * N // k:(m + 1) * N // k])
                if step is None:
                    continue
                if step.skipped:
                    skipped += 1
                    continue
                for name, v in step.sums.items():  # each minibatch counts once
                    sums[name] = sums.get(name, 0.0) + v
                    counts[name] = counts.get(name, 0) + 1
                grad_norms.append(step.grad_norm)
                if step.algo_norm is not None:
                    algo_norms.append(step.algo_norm)
                if self.progress is not None:
                    self.progress.update(1)
        if step_schedule:
            self.scheduler.step()
        metrics = {f"train/{k}": sums[k] / max(1, counts[k]) for k in sums}
        metrics["train/grad_norm"] = sum(grad_norms) / max(1, len(grad_norms))
        if algo_norms:
            metrics["train/grad_norm_algorithm"] = sum(algo_norms) / len(algo_norms)
        metrics["train/lr"] = self.optimizer.param_groups[0]["lr"]
        metrics["train/nonfinite_skipped"] = float(skipped)
        return metrics

    def _minibatch_step(self, batch: Batch, rows: list[int]) -> _Step | None:
        """One optimizer step on ``rows`` of ``batch``, accumulated over its micro-batches;
        None when the rows hold nothing to train. A step whose loss or gradient is not finite
        is skipped (``_Step.skipped``)."""
        c, algo = self.cfg, self.algorithm
        needs = algo.loss_requires
        plan = self._micro_batches(batch, rows)
        if not plan:
            return None
        lm = batch.loss_mask[rows]
        # Denominators of the whole minibatch, over every rank's rows: the update is the same
        # however the minibatch is split into micro-batches and ranks.
        agg_tokens, agg_seqs = (max(1.0, x) for x in self._reduce_sums(
            [float(lm.sum()), float((lm.sum(-1) > 0).sum())]))
        agg_len = self.response_budget  # a constant, never the padded length
        self.optimizer.zero_grad(set_to_none=True)
        step_sums: dict[str, float] = {}  # this minibatch's terms (micro-batch sums)
        for i, mrows in enumerate(plan):
            with self._accumulating(last=i == len(plan) - 1):
                mb = self._select(batch, mrows)
                mb.agg_tokens, mb.agg_seqs, mb.agg_len = agg_tokens, agg_seqs, agg_len
                out = self.forward(mb, need_entropy=True, need_hidden="hidden" in needs,
                                   need_values="values" in needs,
                                   entropy_grad="entropy" in needs,
                                   pack_capacity=batch.input_ids.shape[1])
                terms = algo.loss(out, mb)
                self._backward(terms["loss"])
            for name, v in terms.items():
                step_sums[name] = step_sums.get(name, 0.0) + float(v.detach())
        names = sorted(step_sums)
        step_sums = dict(zip(names, self._reduce_sums([step_sums[n] for n in names])))
        # The policy and the algorithm's own parameters (a critic) are clipped apart, as
        # separate actor/critic optimizers are: a large value-loss gradient must not shrink
        # the policy's step.
        groups = self.optimizer.param_groups
        clip = c.grad_clip if c.grad_clip > 0 else float("inf")
        gn = _local_norm(torch.nn.utils.clip_grad_norm_(groups[0]["params"], clip))
        own = [p for g in groups[1:] for p in g["params"]]
        an = torch.nn.utils.clip_grad_norm_(own, clip) if own else None
        if not all(math.isfinite(float(x)) for x in (step_sums["loss"], gn, an or 0.0)):
            # Skip the step: no weight moves and AdamW's moments and step count stay as they
            # were, so one bad batch cannot poison the run.
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_streak += 1
            if self.nonfinite_streak >= c.max_nonfinite_updates:
                raise NonFiniteUpdates(self.nonfinite_streak)
            return _Step(step_sums, float(gn), None, skipped=True)
        self.nonfinite_streak = 0
        self.optimizer.step()
        return _Step(step_sums, float(gn), None if an is None else float(an))

    # -- weights and state ---------------------------------------------------------------
    def export_weights(self) -> nn.Module:
        return self.model

    def state_dict(self) -> dict[str, Any]:
        own_ref = self.reference is not None and self.reference is not self.model
        return {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "reference": self.reference.state_dict() if own_ref else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "optimizer" in state:  # absent from a sharded checkpoint: agentrl.learn.distributed
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("reference") is not None and self.reference not in (None, self.model):
            self.reference.load_state_dict(state["reference"])


# -- sampler/trainer mismatch correction ---------------------------------------------------

def truncated_is_weights(old_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                         loss_mask: torch.Tensor, cap: float) -> torch.Tensor:
    """Per-token ``min(pi_learner / pi_sampler, cap)`` on action tokens, 0 elsewhere (N, L).

    Truncated importance sampling (Yao et al. 2025, "Your efficient RL framework secretly brings
    you off-policy RL training"): the sampler (vLLM, bf16 kernels) drew the tokens, the learner
    scores them slightly differently; weighting the policy-gradient term by the capped ratio
    makes the update unbiased up to the cap.
    """
    w = torch.exp((old_logprobs - sampler_logprobs).clamp(max=math.log(cap)))
    return w * (loss_mask > 0)


def apply_tis(batch: Batch, cap: float) -> dict[str, float]:
    """Scale ``batch.advantages`` by `truncated_is_weights` (old logprobs recomputed by the
    scoring pass, `Batch.attach`)."""
    mask = batch.loss_mask > 0
    w = truncated_is_weights(batch.old_logprobs, batch.sampler_logprobs, batch.loss_mask, cap)
    batch.advantages = batch.advantages * w
    if not mask.any():
        return {}
    return {"train/tis_weight_mean": float(w[mask].mean()),
            "train/tis_capped_fraction": float((w[mask] >= cap).float().mean())}
