"""Write your own algorithm in one file and train with it, without touching agentrl.

    python examples/custom_algorithm.py
    agentrl train algorithm.name=examples.custom_algorithm:REINFORCE   # from the repo root

REINFORCE with a leave-one-out baseline and no clipping: the advantage is the episode return
minus the mean return of the other rollouts of the same task.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch

from agentrl import Algorithm, AlgorithmConfig, F
from agentrl.algorithms import functional as Fn


@dataclass
class REINFORCEConfig(AlgorithmConfig):
    normalize: bool = F(False, "divide advantages by their batch std")


class REINFORCE(Algorithm):
    name = "reinforce-loo"
    description = "REINFORCE with a leave-one-out group baseline"
    Config = REINFORCEConfig

    def advantages(self, batch: Any) -> dict[str, float]:
        returns = torch.zeros(len(batch.trajectories)).index_add_(
            0, batch.turn_traj, batch.shaped_turn_reward())  # (K,)
        adv = Fn.rloo(returns, batch.group_ids())  # (K,)
        if self.cfg.normalize and len(adv) > 1:
            adv = adv / (adv.std() + 1e-6)
        batch.advantages = batch.per_trajectory(adv)  # (N, L)
        return {"return_mean": float(returns.mean())}

    def loss(self, out: Any, mb: Any) -> dict[str, torch.Tensor]:
        pg = self._agg(-mb.advantages * out.logprobs, mb)  # plain policy gradient
        return {"loss": pg, "pg_loss": pg.detach()}


def main(argv: list[str]) -> dict[str, Any]:
    from agentrl import Trainer, load_config

    cfg = load_config(None, ["algorithm.name=examples.custom_algorithm:REINFORCE",
                             "run_name=reinforce", "log.progress=false", *argv])
    return Trainer(cfg).train()


if __name__ == "__main__":
    main(sys.argv[1:])
