"""The examples run end to end with tiny budgets."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def test_custom_env_example_trains(tmp_path) -> None:
    from examples import custom_env

    out = custom_env.main([f"output_dir={tmp_path}", "train.iterations=2", "eval.episodes=10",
                           "log.tensorboard=false"])
    assert 0.0 <= out["final"]["success_rate"] <= 1.0


def test_custom_algorithm_loads_by_module_path(tmp_path) -> None:
    from agentrl.config import load_config
    from examples import custom_algorithm

    cfg = load_config(None, ["algorithm.name=examples.custom_algorithm:REINFORCE",
                             "algorithm.normalize=true"])
    assert cfg.algorithm.normalize is True
    out = custom_algorithm.main([
        f"output_dir={tmp_path}", "train.iterations=1", "log.tensorboard=false",
        "env.kwargs={level: 3, split: train, num_games: 2}",
        "env.eval_kwargs={split: eval, num_games: 2}", "env.train_seeds=2",
        "rollout.groups=2", "rollout.group_size=2", "rollout.max_turns=4", "eval.episodes=2",
        "eval.every=0", "policy.tiny_corpus_episodes=2"])
    assert "final" in out
