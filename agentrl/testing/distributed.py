"""Check that an algorithm's update does not depend on the number of ranks.

The same batch is fed to one process (`LocalLearner`) and, split by groups with unequal token
counts, to the ranks of a ``torchrun`` launch (`DistributedLearner`, DDP or FSDP2); the loss
and every gradient must agree. Run the ranks with

    OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 -m agentrl.testing.distributed OUT.pt \\
        grpo,ppo,empg

and compare ``OUT.pt`` with `reference` (``tests/learn/test_distributed.py`` does both). A custom
algorithm whose `advantages` uses batch-wide statistics passes only if it reduces them with
`agentrl.collectives`.
"""

from __future__ import annotations

import os
import random
import sys
from typing import Any

import torch

from agentrl.types import Trajectory, Turn

AGG_MODES = ("token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
STRATEGIES = ("ddp", "fsdp")
VOCAB = 48
#: Rank of each group: rank 0 holds one group of short turns, rank 1 two groups of long turns
#: (unequal token, row and micro-batch counts).
GROUP_RANK = {"g0": 0, "g1": 1, "g2": 1}


def make_trajectories(seed: int = 0) -> list[Trajectory]:
    """Three groups of four 2-3 turn window-mode trajectories with random tokens, rewards and
    sampler logprobs (so PPO ratios differ from 1 and clipping happens)."""
    rng = random.Random(seed)
    out = []
    for g, (lo, hi) in {"g0": (2, 4), "g1": (5, 9), "g2": (4, 8)}.items():
        for i in range(4):
            turns = []
            for _ in range(rng.randint(2, 3)):
                n = rng.randint(lo, hi)
                turns.append(Turn(observation="o",
                                  context_ids=[rng.randrange(2, VOCAB) for _ in range(rng.randint(3, 7))],
                                  action_ids=[rng.randrange(2, VOCAB) for _ in range(n)],
                                  logprobs=[-rng.uniform(2.5, 4.5) for _ in range(n)],
                                  reward=rng.choice([0.0, 0.0, 1.0]) + rng.uniform(-0.1, 0.1)))
            out.append(Trajectory(trajectory_id=f"{g}-{i}", group_id=g, env_id="synthetic",
                                  seed=int(g[1:]), context_mode="window", turns=turns))
    return out


def _learner(algo_name: str, agg: str, strategy: str) -> tuple[Any, Any, Any]:
    from agentrl.config import TrainConfig
    from agentrl.models import build_tiny_model
    from agentrl.registry import get_algorithm

    name, _, variant = algo_name.partition("+")  # "grpo+lora": LoRA adapters, KL reference
    cls = get_algorithm(name)
    algo = cls(cls.Config(name=name, loss_agg=agg, kl_coef=0.1 if variant else 0.0))
    torch.manual_seed(0)
    model = build_tiny_model(VOCAB, hidden=32, layers=2, heads=4, seed=0)
    if variant == "lora":
        from agentrl.models.lora import LoraSettings, apply_lora

        model = apply_lora(model, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj",
                                                                             "down_proj"]))
        with torch.no_grad():  # B = 0 would leave A without gradient
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.linspace(-0.2, 0.2, p.numel()).reshape(p.shape))
    algo.setup(model)
    # A small token budget: several micro-batches per rank, more on rank 1; logits formed
    # three positions at a time (checkpointed chunks under DDP / FSDP too).
    cfg = TrainConfig(lr=1e-3, micro_batch_tokens=48, strategy=strategy, logits_chunk=3 * VOCAB)
    if strategy == "single":
        from agentrl.learn.learner import LocalLearner as L
    else:
        from agentrl.learn.distributed import DistributedLearner as L
    return L(model, cfg, 1.0, algo, response_budget=10.0), algo, model


def run_case(algo_name: str, agg: str, strategy: str, trajs: list[Trajectory],
             ) -> tuple[float, dict[str, torch.Tensor]]:
    """One update on ``trajs`` (this rank's share); returns the global ``train/loss`` and every
    full gradient (policy, then the algorithm's own parameters as ``algo.<i>``), plus the
    optimizer's first moments after the step as ``exp_avg.<i>`` (what a checkpoint holds:
    under FSDP gathered from the shards)."""
    learner, algo, model = _learner(algo_name, agg, strategy)
    batch = algo.build_batch(trajs, 0)
    batch.attach(learner.score(batch, algo.requires))
    algo.credit(batch)
    metrics = learner.update(batch, random.Random(0))
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad
        if g is None:  # a frozen base weight (LoRA)
            continue
        g = g.full_tensor() if hasattr(g, "full_tensor") else g  # FSDP2: a sharded DTensor
        grads[name] = g.detach().clone()
    own = [p for grp in learner.optimizer.param_groups[1:] for p in grp["params"]]
    for i, p in enumerate(own):
        if p.grad is not None:
            grads[f"algo.{i}"] = p.grad.detach().clone()
    state = learner.state_dict()["optimizer"]["state"]
    for k, st in state.items():
        grads[f"exp_avg.{k}"] = st["exp_avg"].detach().clone()
    return metrics["train/loss"], grads


def checkpoint_roundtrip(strategy: str) -> dict[str, Any]:
    """Optimizer state of a one-process update, loaded into a learner of ``strategy`` and
    written back out (FSDP: cut into shards, then gathered): must come back unchanged."""
    single, algo, _ = _learner("grpo", "token-mean", "single")
    batch = algo.build_batch(make_trajectories(), 0)
    batch.attach(single.score(batch, algo.requires))
    algo.credit(batch)
    single.update(batch, random.Random(0))
    saved = single.state_dict()
    learner, _, _ = _learner("grpo", "token-mean", strategy)
    learner.load_state_dict(saved)
    return {"saved": saved["optimizer"]["state"],
            "loaded": learner.state_dict()["optimizer"]["state"]}


def sharded_checkpoint(strategy: str, trajs: list[Trajectory], path: str) -> dict[str, Any]:
    """One GRPO update on this rank's ``trajs``, then the model and optimizer state written with
    torch.distributed.checkpoint to ``path`` (each rank its shards); returns the full optimizer
    state (gathered), which a learner on another number of ranks must load back."""
    from agentrl.learn.distributed import save_sharded

    learner, algo, _ = _learner("grpo", "token-mean", strategy)
    batch = algo.build_batch(trajs, 0)
    batch.attach(learner.score(batch, algo.requires))
    algo.credit(batch)
    learner.update(batch, random.Random(0))
    save_sharded(learner, path)
    return learner.state_dict()["optimizer"]["state"]


def load_sharded_single(path: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A one-process learner loaded from the sharded checkpoint ``path``: (its optimizer
    state, its model state)."""
    from agentrl.learn.distributed import load_sharded

    learner, _, model = _learner("grpo", "token-mean", "single")
    load_sharded(learner, path)
    return learner.optimizer.state_dict()["state"], model.state_dict()


def reference(algo_name: str, agg: str) -> tuple[float, dict[str, torch.Tensor]]:
    """The one-process result on the whole batch."""
    return run_case(algo_name, agg, "single", make_trajectories())


def main(argv: list[str]) -> None:
    import torch.distributed as dist

    from agentrl.learn.distributed import init_distributed

    out_path = argv[0]
    algos = argv[1].split(",") if len(argv) > 1 else ["grpo", "ppo", "empg"]
    strategies = argv[2].split(",") if len(argv) > 2 else list(STRATEGIES)
    init_distributed("ddp")
    rank = dist.get_rank()
    mine = [t for t in make_trajectories() if GROUP_RANK[t.group_id] == rank]
    results = {}
    for strategy in strategies:
        for algo_name in algos:
            for agg in AGG_MODES:
                results[(strategy, algo_name, agg)] = run_case(algo_name, agg, strategy, mine)
        results[(strategy, "roundtrip")] = checkpoint_roundtrip(strategy)
        results[(strategy, "sharded")] = sharded_checkpoint(
            strategy, mine, os.path.join(os.path.dirname(out_path), f"dcp-{strategy}"))
    if rank == 0:
        torch.save(results, out_path)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
