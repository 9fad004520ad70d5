"""One trained policy per role of a multi-agent game (``multiagent.policies=per_role``).

Each role of the game (its agents, `agentrl.rollout.lineup.env_roles`) gets its own LoRA adapter on one frozen base
model (`agentrl.models.lora.apply_lora` with one adapter per role; one model in memory):

- Generation: `RolePolicy` is the backend of one role's seats. It runs the role's adapter
  around the shared HF backend's ``generate``; the engine makes one generate call per backend
  (`agentrl.rollout.engine.RolloutEngine._generate`), so a call never mixes roles. The roles share the
  backend's sampler (one random stream, one ``policy.version``).
- Scoring and update (`RoleAdapters.score`, `RoleAdapters.update`): the batch is split by the
  role of each row's trajectory and the learner runs on each role's rows with that role's
  adapter active. Only the active adapter requires grad (`agentrl.models.lora.use_adapter`), so role
  r's loss gives gradients to adapter r alone; AdamW skips parameters without a gradient, so
  the other adapters, and their optimizer moments, stay bit-identical. Advantages are computed
  on the whole batch first (group baselines are per (seed, role): group ids
  ``<group>/<role>``).
- One iteration is, per role in turn, ``train.epochs x train.minibatches`` optimizer steps on
  that role's rows (loss normalised over that role's minibatch), every role at the same
  learning rate: the LR schedule steps once per iteration, after the last role. ``train/*``
  metrics are the means over the roles (``train/nonfinite_skipped`` their sum, ``train/lr``
  the schedule's next rate as without roles), ``train/<role>/loss`` and
  ``train/<role>/grad_norm`` each role's own.
- Checkpoints (`agentrl.models.lora.MergedCheckpoint`): ``adapter/<role>/`` for each adapter,
  ``roles/<role>/model/`` the base merged with that role's adapter, ``model/`` the first
  role's. `agentrl eval` plays each role's seats with its own ``roles/<role>/model/``, and so
  does the checkpoint as a frozen opponent (`agentrl.assemble.load_player`).

What the roles share: the frozen base, the sampler, and an algorithm's own parameters (a value
head or critic is updated in every role's pass). The HF backend keeps keys/values for prefix
reuse (``rollout.context=full``) under the adapter that computed them only, so when the roles
alternate turns a prompt is run in full rather than reused.

Adapter names are the role names with every character other than letters, digits, ``_`` and
``-`` replaced by ``_`` (`agentrl.rollout.lineup.adapter_name`).
"""

from __future__ import annotations

import random
from collections.abc import Set
from typing import Any

import torch
from torch import nn

from agentrl.learn.batch import Batch, Scores
from agentrl.models.lora import use_adapter
from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.rollout.lineup import adapter_name


class RolePolicy(Policy):
    """One role's view of a shared HF backend: ``generate`` runs with the role's adapter
    active. Sampler state, tokenizer and ``version`` are the shared backend's."""

    def __init__(self, base: Policy, model: nn.Module, adapter: str) -> None:
        self.base, self.model, self.adapter = base, model, adapter

    @property
    def tokenizer(self) -> Any:  # type: ignore[override]
        return self.base.tokenizer

    @property
    def version(self) -> int:  # type: ignore[override]
        return self.base.version

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: list[list[list[int]] | None] | None = None) -> list[Generation]:
        with use_adapter(self.model, self.adapter):
            return self.base.generate(prompts, sampling, candidates)

    def seed(self, seed: int) -> None:
        self.base.seed(seed)

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base.load_state_dict(state)


class RoleAdapters:
    """The roles of a game and their adapters on ``model`` (LoRA-injected with one adapter
    per role, `agentrl.models.lora.apply_lora`): per-role backends, and the learner's scoring and
    update run role by role (see the module docstring).

    Args:
        model: the learner's LoRA-injected model.
        roles: the game's roles, in adapter order (the first is ``model/``'s in checkpoints).
    """

    def __init__(self, model: nn.Module, roles: list[str]) -> None:
        self.model, self.roles = model, list(roles)
        self.adapters = {r: adapter_name(r) for r in self.roles}

    def policies(self, policy: Policy) -> dict[str, Policy]:
        """role -> the backend its trained seats generate with (``policy`` with its adapter)."""
        return {r: RolePolicy(policy, self.model, a) for r, a in self.adapters.items()}

    def rows(self, batch: Batch) -> dict[str, list[int]]:
        """role -> the batch rows (N,) of its trajectories, for the roles that have rows."""
        out: dict[str, list[int]] = {}
        for i, t in enumerate(batch.row_traj.tolist()):
            role = batch.trajectories[t].role
            if role not in self.adapters:
                raise ValueError(f"a trajectory of role {role!r}, which has no adapter "
                                 f"(roles: {self.roles})")
            out.setdefault(role, []).append(i)
        return {r: out[r] for r in self.roles if r in out}

    def score(self, learner: Any, batch: Batch, wants: Set[str]) -> Scores:
        """``learner.score`` of each role's rows with its adapter, assembled into (N, L)
        tensors for the whole batch (rows of no role stay unscored)."""
        N, L = batch.input_ids.shape
        logprobs = torch.zeros(N, L)
        scored = torch.zeros(N, dtype=torch.bool)
        extra: dict[str, torch.Tensor] = {}
        for role, rows in self.rows(batch).items():
            with use_adapter(self.model, self.adapters[role]):
                s = learner.score(batch.select(rows), wants)
            idx = torch.tensor(rows)
            ell = s.logprobs.shape[1]
            logprobs[idx, :ell] = s.logprobs.float().cpu()
            scored[idx] = s.rows.cpu()
            for k in ("entropy", "values", "ref_logprobs"):
                v = getattr(s, k)
                if v is not None:
                    extra.setdefault(k, torch.zeros(N, L))[idx, :ell] = v.float().cpu()
        return Scores(logprobs=logprobs, rows=scored, **extra)

    def update(self, learner: Any, batch: Batch, rng: random.Random) -> dict[str, float]:
        """``learner.update`` on each role's rows with its adapter active; the LR schedule
        steps once, after the last role. Returns the merged ``train/*`` metrics."""
        parts = list(self.rows(batch).items())
        if not parts:
            return learner.update(batch, rng)
        per: dict[str, dict[str, float]] = {}
        for i, (role, rows) in enumerate(parts):
            with use_adapter(self.model, self.adapters[role]):
                per[role] = learner.update(batch.select(rows), rng,
                                           step_schedule=i == len(parts) - 1)
        return merge_role_metrics(per)


class RoleLearner:
    """The learner contract over per-role adapters: `score` and `update` route each row to
    its role's adapter (`RoleAdapters`); everything else (export, state, the progress bar) is
    the wrapped learner's. The training loop sees one learner either way."""

    def __init__(self, learner: Any, adapters: RoleAdapters) -> None:
        self.inner, self.adapters = learner, adapters

    @property
    def progress(self) -> Any:
        return self.inner.progress

    @progress.setter
    def progress(self, bar: Any) -> None:
        self.inner.progress = bar

    def score(self, batch: Batch, wants: Set[str]) -> Scores:
        """Each role's rows scored with its adapter (`RoleAdapters.score`)."""
        return self.adapters.score(self.inner, batch, wants)

    def update(self, batch: Batch, rng: random.Random) -> dict[str, float]:
        """Each role's rows updated with its adapter, one LR schedule step
        (`RoleAdapters.update`)."""
        return self.adapters.update(self.inner, batch, rng)

    def update_steps(self, batch: Batch) -> int:
        """The wrapped learner's steps, once per role with rows in ``batch``."""
        return self.inner.update_steps(batch) * max(1, len(self.adapters.rows(batch)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def merge_role_metrics(per: dict[str, dict[str, float]]) -> dict[str, float]:
    """One ``train/*`` row from each role's update metrics (role order = update order): the
    mean over roles, ``train/nonfinite_skipped`` summed, ``train/lr`` the last role's (the
    rate after the iteration's schedule step); plus ``train/<role>/loss`` and
    ``train/<role>/grad_norm``."""
    out: dict[str, float] = {}
    keys = [k for m in per.values() for k in m]
    for k in dict.fromkeys(keys):
        vals = [m[k] for m in per.values() if k in m]
        out[k] = sum(vals) if k == "train/nonfinite_skipped" else sum(vals) / len(vals)
    last = list(per.values())[-1]
    if "train/lr" in last:
        out["train/lr"] = last["train/lr"]
    for role, m in per.items():
        for k in ("loss", "grad_norm"):
            if f"train/{k}" in m:
                out[f"train/{role}/{k}"] = m[f"train/{k}"]
    return out
