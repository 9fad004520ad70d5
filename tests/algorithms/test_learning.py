"""Slow learning tests: each agentic algorithm (GiGPO, EPO, EMPG, AEPO, SPEAR) raises held-out
success of a tiny model on a small TextWorld task (coin collector, level 3) within a fixed
budget. Run: pytest -m slow tests/algorithms/test_learning.py."""

from __future__ import annotations

import pytest

from agentrl.config import load_config
from agentrl.trainer import Trainer

# Shared budget: 6 groups x 4 rollouts, 8 turns, constrained decoding over admissible actions.
TASK = ["env.kwargs={level: 3, split: train, num_games: 40}",
        "env.eval_kwargs={split: eval, num_games: 40}", "env.train_seeds=40",
        "rollout.groups=6", "rollout.group_size=4", "rollout.max_turns=8",
        "train.lr=3e-3", "eval.episodes=40", "eval.every=0", "log.tensorboard=false",
        "log.progress=false", "train.checkpoint_every=0"]


def _learn(tmp_path, iterations: int, *algo: str) -> tuple[float, float]:  # noqa: ANN001
    cfg = load_config(None, TASK + [f"train.iterations={iterations}", f"output_dir={tmp_path}",
                                    *algo])
    res = Trainer(cfg).train()
    return res["before"]["success_rate"], res["final"]["success_rate"]


# name -> (overrides, held-out success it must reach after 15 iterations)
CASES = {
    "aepo": ([], 0.7),
    # replay/intrinsic schedules scaled to a 15-iteration run
    "spear": (["algorithm.replay_size=16", "algorithm.replay_warmup_steps=5",
               "algorithm.tool_reward_steps=5", "algorithm.tool_reward_coef=0.02"], 0.7),
    "gigpo": ([], 0.7),
    # Measured 0.150 -> 0.650 with a constant LR (GRPO 0.825 on that budget) and 0.725 with the
    # quickstart's cosine LR: EPO's corridor lowers late entropy here, so its bar is lower than
    # the others'. It still must clearly learn.
    "epo": (["algorithm.phase_total=15"], 0.5),
    "empg": ([], 0.7),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_algorithm_learns_coin_collector(tmp_path, name: str) -> None:
    overrides, bar = CASES[name]
    before, after = _learn(tmp_path, 15, f"algorithm.name={name}", *overrides)
    print(f"{name.upper()} held-out success {before:.3f} -> {after:.3f}")
    assert after >= bar and after > before + 0.15
