"""Supervised warm start: the negative log-likelihood of the action tokens of recorded episodes.

Behaviour cloning as in the warm starts that agentic-RL papers begin from (expert or filtered
successful trajectories, then RL), here with the RL run's own learner: the same packing,
micro-batching, LoRA, torchrun and checkpoints, the same held-out evaluation before and after,
and a checkpoint whose ``model/`` directory `agentrl train` starts from
(``policy.model=RUN/checkpoints/step_N/model``).

Instead of rollouts, `SFT.collect` hands the trainer ``episodes_per_iteration`` episodes of the
``data`` files per iteration (shuffled once per epoch with the algorithm's own seed; the
position is checkpointed, so a resumed run continues exactly). The data is any trajectory
JSONL: `agentrl collect` (the env's expert through the engine), an earlier run's dumps or
evaluation trajectories (``success_only`` keeps the successes: rejection sampling), or a
stronger model's episodes. Only tokens the policy sampled are trained (``loss_mask``), under
the run's behaviour distribution (temperature, constrained-decoding allowed ids).

Config fields that matter: ``data``, ``episodes_per_iteration``, ``success_only``,
``max_demos`` (how many demos: the warm start's strength), ``val_demos`` (held-out episodes
whose NLL is logged each iteration: where imitation stops generalising).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from agentrl import collectives as C
from agentrl.algorithms import functional as Fn
from agentrl.algorithms.base import Algorithm, AlgorithmConfig
from agentrl.config import F
from agentrl.registry import register_algorithm

if TYPE_CHECKING:
    from agentrl.learn.batch import Batch, ModelOutputs
    from agentrl.rollout.engine import RolloutEngine
    from agentrl.types import Trajectory


@dataclass
class SFTConfig(AlgorithmConfig):
    data: list[str] = F(default_factory=list, help="trajectory JSONL files to imitate "
                        "(`agentrl collect`, a run's trajectories/ or eval/*_trajectories.jsonl)")
    episodes_per_iteration: int = F(32, "episodes per iteration (one update of "
                                    "train.epochs x train.minibatches steps)", ge=1)
    success_only: bool = F(True, "train only on episodes that succeeded (rejection sampling)")
    max_demos: int = F(0, "use the first N episodes after filtering (0 = all)", ge=0)
    shuffle_seed: int = F(0, "seed of the per-epoch episode order")
    val_demos: int = F(0, "episodes held out of training (the last N after filtering): their "
                       "action-token NLL, before each update, is logged as algo/val_nll "
                       "(temperature 1, under the recorded constraints)", ge=0)


@register_algorithm
class SFT(Algorithm):
    name = "sft"
    description = "supervised warm start: NLL of recorded action tokens (expert demos, successes)"
    Config = SFTConfig
    async_rollouts: ClassVar[Literal["partial", "whole", "current"]] = "current"
    learns_from_rewards: ClassVar[bool] = False  # imitation: no group statistics

    def __init__(self, cfg: SFTConfig) -> None:
        super().__init__(cfg)
        self.demos: list[Trajectory] | None = None
        self.val: list[Trajectory] = []
        self.model: torch.nn.Module | None = None
        self.pad_id = 0
        self.epoch, self.cursor = 0, 0
        self.order: list[int] = []

    # -- data ------------------------------------------------------------------------------
    def _load(self, tokenizer: Any) -> list[Trajectory]:
        from agentrl.rollout.collect import tokenizer_fingerprint
        from agentrl.types import read_jsonl

        c = self.cfg
        if not c.data:
            raise ValueError("algorithm.name=sft needs algorithm.data: trajectory JSONL files "
                             "(agentrl collect CONFIG --out FILE writes the env's expert)")
        demos = [t for path in c.data for t in read_jsonl(path)
                 if t.turns and t.termination not in ("env_error", "env_timeout")]
        if c.success_only:
            demos = [t for t in demos if t.success]
        if c.val_demos:
            if c.val_demos >= len(demos):
                raise ValueError(f"algorithm.val_demos={c.val_demos} leaves nothing to train on "
                                 f"({len(demos)} episodes in algorithm.data)")
            demos, self.val = demos[:-c.val_demos], demos[-c.val_demos:]
        demos = demos[:c.max_demos] if c.max_demos else demos
        for t in demos + self.val:  # the recording run's timings: nothing is generated here
            for turn in t.turns:
                turn.seconds_generate = turn.seconds_env = 0.0
        if not demos:
            raise ValueError(f"algorithm.data {c.data}: no episode to train on"
                             + (" (success_only: none succeeded)" if c.success_only else ""))
        mark = tokenizer_fingerprint(tokenizer)
        other = {t.extra.get("tokenizer") for t in demos} - {mark, None}
        if other:
            raise ValueError(f"algorithm.data {c.data}: recorded with another tokenizer "
                             f"({sorted(other)} vs this run's {mark}); collect them with this "
                             "run's config (same policy.model, tiny_* and env settings)")
        return demos[C.rank()::C.world_size()] or demos  # each rank its share

    def _next(self, n: int) -> list[Trajectory]:
        assert self.demos is not None
        out: list[Trajectory] = []
        while len(out) < n:
            if not self.order or self.cursor >= len(self.order):
                if self.order:
                    self.epoch += 1
                self.order = list(range(len(self.demos)))
                random.Random(f"{self.cfg.shuffle_seed}-{self.epoch}").shuffle(self.order)
                self.cursor = 0
            out.append(self.demos[self.order[self.cursor]])
            self.cursor += 1
        return out

    def setup(self, model: torch.nn.Module) -> None:
        self.model = model  # for the held-out NLL

    def val_nll(self) -> float:
        """Mean NLL of the held-out episodes' action tokens under the current policy
        (temperature 1, the recorded constraints), 16 episodes at a time, no gradient."""
        from agentrl.learn.batch import make_batch
        from agentrl.learn.forward import token_outputs

        assert self.model is not None
        total, n = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(self.val), 16):
                b = make_batch(self.val[i:i + 16], self.pad_id)
                out = token_outputs(self.model, b.input_ids, b.attention_mask, b.loss_mask,
                                    b.allowed, 1.0)
                mask = b.loss_mask.to(out.logprobs.device) > 0
                total -= float(out.logprobs[mask].sum())
                n += int(mask.sum())
        return total / max(n, 1)

    def collect(self, engine: RolloutEngine, seeds: list[int], group_ids: list[str]
                ) -> list[Trajectory]:
        """This iteration's episodes from the data (no env is stepped)."""
        if self.demos is None:
            self.demos = self._load(engine.policy.tokenizer)
        return self._next(self.cfg.episodes_per_iteration)

    def build_batch(self, trajectories: list[Trajectory], pad_id: int) -> Batch:
        """The episodes as rows, flagged as replayed (their sampler logprobs are another
        policy's, e.g. the expert's 0, so the sampler/trainer mismatch metric leaves them out).
        Group statistics do not apply to demos: NaN, which no alarm reads as firing."""
        from agentrl.learn.batch import make_batch

        self.pad_id = pad_id
        batch = make_batch(trajectories, pad_id)
        batch.replayed = torch.ones(batch.num_rows, dtype=torch.bool)
        self.group_stats = {"zero_variance_groups": float("nan"),
                            "zero_turn_trajectories": 0.0}
        return batch

    # -- credit and loss ---------------------------------------------------------------------
    def advantages(self, batch: Batch) -> dict[str, float]:
        batch.advantages = torch.zeros_like(batch.loss_mask, dtype=torch.float32)
        m = {"demos": float(len(batch.trajectories)), "epoch": float(self.epoch)}
        if self.val and self.model is not None:
            m["val_nll"] = self.val_nll()
        return m

    def loss(self, out: ModelOutputs, mb: Batch) -> dict[str, torch.Tensor]:
        """Mean NLL of the action tokens (``loss_agg``), plus the shared entropy/KL terms."""
        nll = self._agg(-out.logprobs, mb)
        terms: dict[str, torch.Tensor] = {"nll": nll}
        total = nll
        if self.cfg.kl_coef > 0:
            terms["kl"] = self._agg(Fn.kl_k3(out.logprobs, mb.ref_logprobs.to(nll.device)), mb)
            total = total + self.cfg.kl_coef * terms["kl"]
        if out.entropy is not None:
            terms["entropy"] = self._agg(out.entropy, mb)
            if self.cfg.entropy_coef:
                total = total - self.cfg.entropy_coef * terms["entropy"]
        terms["loss"] = total
        return terms

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "order": list(self.order)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = int(state.get("epoch", 0)), int(state.get("cursor", 0))
        self.order = [int(i) for i in state.get("order", [])]
