"""AEPO: Agentic Entropy-balanced Policy Optimization.

Paper: Dong et al. 2025, arXiv 2510.14545 (official code: RUC-NLPIR/ARPO, folder ``AEPO/``).

What differs from GRPO:

1. **Entropy-balanced branching rollouts** (`AEPO.collect`). A task's budget of k samples
   (k = ``rollout.group_size``) is split between m global samples and k - m branch samples.
   *Entropy pre-monitoring* sets m = k·σ(β·(H_root − H̄_tool)) from one probe rollout per task
   (H_root: entropy of the first turn; H̄_tool: mean entropy of the turns after an env/tool
   response). Then, at every turn t ≥ 1 of a sample (in turn order across the group), a branch
   is made with probability test ``(U + w·ΔH_t)·(1 − 0.05·l) ≥ p_b``, ΔH_t = H_t − H_0 of that
   sample and l = its consecutive branches so far (reset to 0 when it does not branch). A branch
   re-runs the same seed, replays the parent's first t actions and samples turn t afresh
   (`RolloutEngine.run(prefixes=...)`), so it works on any deterministic env. Children may
   branch again for ``branch_rounds`` rounds; any budget left is filled with global samples, so
   every task gets exactly k samples. All branching state is local to one `collect` call.
2. **Stop-gradient clip** (`functional.sg_clip_policy_loss`): same forward value as PPO, but
   tokens with ratio > 1 + clip_high and A > 0 keep a (1 + clip_high)·∇logπ gradient.
3. **Entropy-aware advantage**: Ã = Ã_GRPO·(1 + a·z(H_tok)), z the z-score of the per-token
   entropy over the batch's action tokens.

Config fields that matter: ``global_samples`` (0 = pre-monitoring), ``premonitor_beta``,
``entropy_weight``, ``branch_threshold``, ``consecutive_penalty``, ``beam_size``,
``branch_rounds``, ``sg_clip``, ``entropy_advantage``, ``entropy_adv_coef``,
``entropy_adv_scope``; plus the GRPO fields (``use_std``, ``baseline``, ``stats``).

Deliberate departures from the official code:

- The entropy-aware advantage is really computed (the official scripts set
  ``entropy_coeff: 0``, so ``entropy`` is ``None`` and the term is silently skipped).
- Its z-score is taken over the whole batch under the rollout policy (no grad), so it does not
  depend on how the learner splits micro-batches; ``entropy_adv_scope: micro-batch``
  reproduces the official per-micro-batch z-score of the current policy's entropy.
- Turn entropy for branching is the mean sampler surprisal −log π(y_j) of the first
  ``entropy_tokens`` sampled tokens (an unbiased estimate of the token entropy that every
  backend provides), divided by log|V|; the official code sums top-10-logprob entropies over
  ≤20 tokens. The initial entropy H_0 is per sample and per batch (the official
  ``initial_entropy_dict`` is never reset).
- Branching happens after a turn is complete rather than mid-generation: the child resamples
  turn t given the same history, which is the same distribution as forking before turn t.
- The probe rollout counts as one of the task's global samples instead of being discarded.
- Shared prefixes are trained in every sample that holds them (as the official code does).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any, Literal

import torch

from agentrl.algorithms import functional as Fn
from agentrl.algorithms.base import Algorithm
from agentrl.algorithms.grpo import GRPOConfig, outcome_advantages, trajectory_scores
from agentrl.config import F
from agentrl.learn.batch import Batch, ModelOutputs
from agentrl.registry import register_algorithm
from agentrl.rollout.engine import RolloutEngine
from agentrl.types import Trajectory, Turn


@dataclass
class AEPOConfig(GRPOConfig):
    global_samples: int = F(0, "m, global samples per task (0 = entropy pre-monitoring decides)",
                            ge=0)
    premonitor_beta: float = F(0.5, "β in m = k·σ(β·(H_root − H̄_tool))")
    entropy_tokens: int = F(20, "sampled tokens per turn used to estimate its entropy", ge=1)
    entropy_weight: float = F(0.2, "w in the branch test (U + w·ΔH)·(1 − pen·l) ≥ p_b")
    branch_threshold: float = F(0.5, "p_b, branch when the test value reaches it", ge=0, le=1)
    consecutive_penalty: float = F(0.05, "pen: branch chance shrinks by this per consecutive "
                                   "branch of the same sample", ge=0)
    beam_size: int = F(2, "a branch point spawns up to beam_size − 1 branches", ge=2)
    branch_rounds: int = F(2, "rounds of branching (branches may branch again)", ge=1)
    sg_clip: bool = F(True, "stop-gradient upper clip (False: plain PPO clip)")
    entropy_advantage: bool = F(True, "Ã = Ã_GRPO·(1 + a·z(H_tok))")
    entropy_adv_coef: float = F(0.2, "a in the entropy-aware advantage")
    entropy_adv_scope: Literal["batch", "micro-batch"] = F(
        "batch", "z-score over the batch under the rollout policy, or per micro-batch of the "
        "current policy (official code)")
    branch_seed: int = F(0, "seed of the branching coin flips (the stream is checkpointed)")


def turn_entropy(turn: Turn, tokens: int, norm: float) -> float:
    """Entropy estimate of one turn: mean −logprob of its first ``tokens`` sampled tokens,
    divided by ``norm`` (log of the vocabulary size). 0 for an empty action."""
    lps = turn.logprobs[:tokens]
    return -sum(lps) / len(lps) / norm if lps else 0.0


def budget_split(entropies: list[float], k: int, beta: float) -> int:
    """Entropy pre-monitoring: global samples m for a task from a probe's turn entropies.

    m = int(k·σ(β·(H_root − H̄_tool))) + 1, clipped to [1, k] (official rounding). A probe
    without a turn after an env response has nowhere to branch: m = k."""
    if len(entropies) < 2:
        return k
    h_root, h_tool = entropies[0], sum(entropies[1:]) / (len(entropies) - 1)
    m = int(k / (1.0 + math.exp(-beta * (h_root - h_tool)))) + 1
    return max(1, min(k, m))


def branch_points(cands: list[tuple[list[float], int]], budget: int, cfg: AEPOConfig,
                  rng: random.Random) -> list[tuple[int, int]]:
    """Choose (candidate index, turn) branch points within ``budget`` new samples.

    Args:
        cands: per sample, its turn entropies and the first turn it may branch at.
        budget: samples left for this task.
    Turns are visited in time order across the samples (as the rollout would meet them);
    each sample keeps its own consecutive-branch count l.
    """
    out: list[tuple[int, int]] = []
    streak = [0] * len(cands)
    horizon = max((len(h) for h, _ in cands), default=0)
    for t in range(1, horizon):
        for i, (h, start) in enumerate(cands):
            if budget <= 0:
                return out
            if t < max(1, start) or t >= len(h):
                continue
            u = rng.random()
            prob = (u + cfg.entropy_weight * (h[t] - h[0])) * max(
                0.0, 1.0 - cfg.consecutive_penalty * streak[i])
            if min(1.0, max(0.0, prob)) >= cfg.branch_threshold:
                nb = min(cfg.beam_size - 1, budget)
                out += [(i, t)] * nb
                budget -= nb
                streak[i] += 1
            else:
                streak[i] = 0
    return out


@register_algorithm
class AEPO(Algorithm):
    name = "aepo"
    description = ("AEPO: entropy-balanced branching rollouts, stop-gradient clip, "
                   "entropy-aware advantage")
    Config = AEPOConfig
    # Branching decides where to re-sample from the entropies of the policy being trained and
    # replays its prefixes within the iteration; `collect` also keeps state (branch RNG, the
    # statistics `advantages` reports) that a rollout running ahead would overwrite.
    async_rollouts = "current"
    refuses_multiagent = (
        "its branching replays one trajectory's turns up to a high-entropy turn and re-samples "
        "from there; in a game those turns interleave with the other seats' moves, which a "
        "single-agent prefix cannot replay")

    def __init__(self, cfg: AEPOConfig) -> None:
        super().__init__(cfg)
        self.rng = random.Random(cfg.branch_seed)
        self.collect_stats: dict[str, float] = {}

    @property
    def requires(self) -> frozenset[str]:
        c = self.cfg
        batch_scope = c.entropy_advantage and c.entropy_adv_scope == "batch"
        return super().requires | ({"entropy"} if batch_scope else set())

    @property
    def loss_requires(self) -> frozenset[str]:
        c = self.cfg
        micro = c.entropy_advantage and c.entropy_adv_scope == "micro-batch"
        return super().loss_requires | ({"entropy"} if micro else set())

    # -- rollouts ------------------------------------------------------------------------
    def collect(self, engine: RolloutEngine, seeds: list[int], group_ids: list[str]
                ) -> list[Trajectory]:
        c = self.cfg
        tasks: dict[str, tuple[int, int]] = {}  # group id -> (seed, k); first-seen order
        for s, g in zip(seeds, group_ids):
            tasks[g] = (s, tasks.get(g, (s, 0))[1] + 1)
        norm = math.log(max(2, len(engine.policy.tokenizer)))

        def ent(t: Trajectory) -> list[float]:
            return [turn_entropy(x, c.entropy_tokens, norm) for x in t.turns]

        def run(reqs: list[tuple[str, list[Turn] | None]], kind: str) -> list[Trajectory]:
            if not reqs:
                return []
            out = engine.run([tasks[g][0] for g, _ in reqs], [g for g, _ in reqs],
                             prefixes=[p for _, p in reqs] if any(p for _, p in reqs) else None)
            for t in out:
                t.extra["sample_kind"] = kind
            return out

        by_task: dict[str, list[Trajectory]] = {g: [] for g in tasks}
        m: dict[str, int] = {}
        if c.global_samples == 0:
            for t in run([(g, None) for g in tasks], "global"):
                by_task[t.group_id].append(t)
                m[t.group_id] = budget_split(ent(t), tasks[t.group_id][1], c.premonitor_beta)
        else:
            m = {g: min(k, c.global_samples) for g, (_, k) in tasks.items()}
        for t in run([(g, None) for g in tasks for _ in range(m[g] - len(by_task[g]))], "global"):
            by_task[t.group_id].append(t)

        # Branch rounds: the previous round's samples are the candidates of the next.
        left = {g: tasks[g][1] - m[g] for g in tasks}
        frontier = {g: [(t, 0) for t in ts] for g, ts in by_task.items()}
        n_branch, rounds_used = 0, 0
        for rnd in range(c.branch_rounds):
            reqs: list[tuple[str, list[Turn] | None]] = []
            parents: list[tuple[Trajectory, int]] = []
            for g, cands in frontier.items():
                pts = branch_points([(ent(t), s) for t, s in cands], left[g], c, self.rng)
                for i, turn in pts:
                    parent = cands[i][0]
                    reqs.append((g, parent.turns[:turn]))
                    parents.append((parent, turn))
                left[g] -= len(pts)
            if not reqs:
                break
            rounds_used = rnd + 1
            children = run(reqs, "branch")
            frontier = {g: [] for g in tasks}
            for child, (parent, turn) in zip(children, parents):
                child.extra.update(parent_id=parent.trajectory_id, branch_turn=turn,
                                   branch_round=rnd)
                by_task[child.group_id].append(child)
                frontier[child.group_id].append((child, turn + 1))
            n_branch += len(children)
        for t in run([(g, None) for g in tasks for _ in range(left[g])], "fill"):
            by_task[t.group_id].append(t)

        out = [t for g in tasks for t in by_task[g]]
        assert len(out) == len(seeds), "AEPO budget accounting: one sample per requested slot"
        self.collect_stats = {
            "global_samples_mean": sum(m.values()) / max(1, len(m)),
            "branch_frac": n_branch / max(1, len(out)),
            "fill_frac": sum(left.values()) / max(1, len(out)),
            "branch_rounds": float(rounds_used)}
        return out

    # -- update --------------------------------------------------------------------------
    def advantages(self, batch: Batch) -> dict[str, float]:
        c = self.cfg
        adv_turn = outcome_advantages(batch, c)
        adv = batch.per_turn(adv_turn)  # (N, L)
        metrics = dict(self.collect_stats)
        if c.entropy_advantage and c.entropy_adv_scope == "batch" and batch.num_rows:
            ent = batch.entropy  # (N, L), rollout policy
            z = Fn.zscore(ent, batch.loss_mask)
            adv = adv * (1.0 + c.entropy_adv_coef * z)
            mask = batch.loss_mask > 0
            metrics["token_entropy_mean"] = float(ent[mask].mean()) if mask.any() else 0.0
        batch.advantages = adv
        scores = trajectory_scores(batch)
        metrics["score_mean"] = float(scores.mean()) if len(scores) else 0.0
        metrics["advantage_abs_mean"] = float(adv_turn.abs().mean()) if len(adv_turn) else 0.0
        return metrics

    def clipped_surrogate(self, logprobs: torch.Tensor, old_logprobs: torch.Tensor,
                          advantages: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.cfg
        if not c.sg_clip:
            return super().clipped_surrogate(logprobs, old_logprobs, advantages)
        return Fn.sg_clip_policy_loss(logprobs, old_logprobs, advantages, c.clip_low, c.clip_high,
                                      self.dual_clip)

    def loss(self, out: ModelOutputs, mb: Batch) -> dict[str, torch.Tensor]:
        c = self.cfg
        adv = mb.advantages.to(out.logprobs.device)
        if c.entropy_advantage and c.entropy_adv_scope == "micro-batch":
            # official: z-score of the current policy's (detached) entropy in this micro-batch
            z = Fn.zscore(out.entropy.detach(), mb.loss_mask.to(adv.device))
            adv = adv * (1.0 + c.entropy_adv_coef * z)
        return self.pg_loss(out, mb, adv)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("rng"):
            version, internal, gauss = state["rng"]
            self.rng.setstate((version, tuple(internal), gauss))
