"""PPO with a learned critic: GAE inside turns and across turns.

Paper: Schulman et al. 2017, arXiv 1707.06347; multi-turn agent setting as in verl-agent.
Differs from GRPO: a critic predicts V at every action token; the advantage comes from GAE, so
credit differs between turns of one episode.

The critic (``critic``): ``separate`` (default, as verl and the GiGPO/EPO papers' PPO runs) is
a value network of its own, a copy of the policy's initial weights (or ``critic_model``, a
smaller model sharing the tokenizer) with a value head, trained at ``critic_lr``; ``shared`` is
a value head on the policy's last hidden states whose loss also trains the policy backbone
(with returns of 10 its gradient can dominate the policy's); ``detached`` is the same head on
detached hidden states, so the value loss never reaches the policy.

GAE runs over the action tokens of a trajectory in order (observation tokens are skipped, they
are the environment's move). Each turn's shaped reward sits on its last token. The old values
come from the learner's scoring pass (``requires = {"values"}``), which applies this file's
value head; the update's forward applies it again with gradient. Between two tokens of
one turn the discount/trace are ``token_gamma``/``token_lam``; from a turn's last token to the
next turn's first they are ``gamma``/``lam``. The step after the final turn is terminal (V=0),
also for episodes cut by the turn limit (a deliberate simplification; noted in the docs).

Config fields that matter: ``critic``, ``critic_model``, ``gamma``, ``lam``, ``vf_coef``,
``critic_lr``, ``value_clip``, ``whiten``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from agentrl import collectives as C
from agentrl.algorithms import functional as Fn
from agentrl.algorithms.base import Algorithm, AlgorithmConfig
from agentrl.config import F
from agentrl.learn.batch import Batch, ModelOutputs
from agentrl.registry import register_algorithm


@dataclass
class PPOConfig(AlgorithmConfig):
    gamma: float = F(1.0, "discount between turns", ge=0, le=1)
    lam: float = F(1.0, "GAE trace between turns", ge=0, le=1)
    token_gamma: float = F(1.0, "discount between tokens of one turn", ge=0, le=1)
    token_lam: float = F(1.0, "GAE trace between tokens of one turn", ge=0, le=1)
    critic: Literal["separate", "shared", "detached"] = F(
        "separate", "value network: its own copy of the model (separate), a head on the "
        "policy backbone trained through it (shared), or on detached hidden states (detached)")
    critic_model: str = F("", "critic: separate: a smaller model sharing the policy's "
                          "tokenizer (path or hub name; '' = a copy of the policy)")
    vf_coef: float = F(0.5, "value loss weight", ge=0)
    value_clip: float = F(0.2, "value clipping range around the old values (0 = off)", ge=0)
    critic_lr: float = F(1e-5, "learning rate of the critic (its head, and its own model when "
                         "separate; papers: 1e-5 with actor 1e-6)", gt=0)
    whiten: bool = F(True, "normalise advantages over the batch's action tokens")


def trajectory_token_order(batch: Batch) -> list[list[tuple[int, int]]]:
    """For each trajectory, its action-token (row, col) positions in temporal order."""
    per: list[list[tuple[int, int]]] = [[] for _ in batch.trajectories]
    rows_by_traj: dict[int, list[int]] = {}
    for r, t in enumerate(batch.row_traj.tolist()):
        rows_by_traj.setdefault(t, []).append(r)
    for t, rows in rows_by_traj.items():
        # window mode: rows are the turns in order (make_batch keeps turn order)
        for r in rows:
            cols = (batch.turn_id[r] >= 0).nonzero(as_tuple=True)[0].tolist()
            per[t] += [(r, c) for c in cols]
    return per


@register_algorithm
class PPO(Algorithm):
    name = "ppo"
    description = "PPO with a value head: token- and turn-level GAE (credit differs per turn)"
    Config = PPOConfig

    def __init__(self, cfg: PPOConfig) -> None:
        super().__init__(cfg)
        self.value_head: nn.Module | None = None
        self._critic: nn.Module | None = None

    def setup(self, model: nn.Module) -> None:
        p = next(model.parameters())
        if self.cfg.critic == "separate":
            if self.cfg.critic_model:
                from agentrl.models import load_pretrained

                critic = load_pretrained(self.cfg.critic_model, str(p.dtype).split(".")[-1])[0]
            else:  # verl initialises the critic from the actor's checkpoint
                critic = copy.deepcopy(model)
            self._critic = critic.to(p.device)
            for q in self._critic.parameters():
                q.requires_grad_(True)
        source = self._critic if self._critic is not None else model
        self.value_head = nn.Linear(source.config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.value_head.to(p.device)

    @property
    def critic_model(self) -> nn.Module | None:
        return self._critic

    @property
    def requires(self) -> frozenset[str]:
        return super().requires | {"values"}

    @property
    def loss_requires(self) -> frozenset[str]:
        return super().loss_requires | {"values"}

    def param_groups(self) -> list[dict[str, Any]]:
        assert self.value_head is not None, "PPO.setup(model) must run before the learner"
        params = list(self.value_head.parameters())
        if self._critic is not None:
            params += [q for q in self._critic.parameters() if q.requires_grad]
        return [{"params": params, "lr": self.cfg.critic_lr, "weight_decay": 0.0}]

    def value(self, hidden: torch.Tensor) -> torch.Tensor:
        """(n, L, H) -> (n, L). ``hidden``: the critic's own (separate) or the policy's."""
        if self.cfg.critic == "detached":
            hidden = hidden.detach()  # the value loss trains the head only
        return self.value_head(hidden.float()).squeeze(-1)

    def advantages(self, batch: Batch) -> dict[str, float]:
        c = self.cfg
        old_values = batch.values  # (N, L), pre-update value head at action tokens
        reward = batch.shaped_turn_reward()  # (M,)
        adv = torch.zeros_like(old_values)
        ret = torch.zeros_like(old_values)
        for positions in trajectory_token_order(batch):
            if not positions:
                continue
            rows = torch.tensor([p[0] for p in positions])
            cols = torch.tensor([p[1] for p in positions])
            tid = batch.turn_id[rows, cols]
            T = len(positions)
            last_of_turn = torch.ones(T, dtype=torch.bool)
            last_of_turn[:-1] = tid[1:] != tid[:-1]
            rewards = torch.where(last_of_turn, reward[tid], torch.zeros(T))
            gammas = torch.where(last_of_turn, torch.full((T,), c.gamma), torch.full((T,), c.token_gamma))
            lams = torch.where(last_of_turn, torch.full((T,), c.lam), torch.full((T,), c.token_lam))
            a, r = Fn.gae(rewards, old_values[rows, cols], gammas, lams)
            adv[rows, cols] = a
            ret[rows, cols] = r
        mask = batch.loss_mask > 0
        if c.whiten and C.sum_floats([float(mask.sum())])[0] > 1:
            m, s = C.global_mean_std(adv[mask])  # over every rank's tokens
            adv = torch.where(mask, (adv - m) / (s + 1e-8), torch.zeros_like(adv))
        batch.advantages, batch.returns = adv, ret
        return {"value_mean": float(old_values[mask].mean()) if mask.any() else 0.0,
                "return_mean": float(ret[mask].mean()) if mask.any() else 0.0}

    def loss(self, out: ModelOutputs, mb: Batch) -> dict[str, torch.Tensor]:
        terms = self.pg_loss(out, mb, mb.advantages)
        values = out.values
        vl = Fn.value_loss(values, mb.values.to(values.device), mb.returns.to(values.device),
                           self.cfg.value_clip or None)
        terms["value_loss"] = self._agg(vl, mb)
        terms["loss"] = terms["loss"] + self.cfg.vf_coef * terms["value_loss"]
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {"value_head": self.value_head.state_dict() if self.value_head else None,
                "critic_model": self._critic.state_dict() if self._critic is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("value_head") is not None and self.value_head is not None:
            self.value_head.load_state_dict(state["value_head"])
        if state.get("critic_model") is not None and self._critic is not None:
            self._critic.load_state_dict(state["critic_model"])
