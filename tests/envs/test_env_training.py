"""The core trainer runs end to end on every mission env: ALFWorld, ScienceWorld, WebShop and
tool use, with the tiny model, two iterations of tiny groups, and a final evaluation.

These are loop checks, not learning checks: rollouts reach the real engines, turns produce
trainable samples, the update changes the weights, metrics and a checkpoint are written.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch

from agentrl.config import load_config
from agentrl.trainer import Trainer

# Shared by every env: 2 iterations of 2 groups x 2 rollouts, 3 turns, a 2-episode final eval.
TINY = ["rollout.groups=2", "rollout.group_size=2", "rollout.max_turns=3",
        "rollout.max_new_tokens=8", "rollout.action_format=raw", "rollout.constrained=false", "policy.tiny_hidden=32",
        "policy.tiny_corpus_episodes=2", "eval.episodes=2", "eval.every=0",
        "eval.before_training=false", "log.tensorboard=false", "log.progress=false",
        "log.trajectories_every=1", "train.iterations=2", "train.checkpoint_every=0",
        "train.lr=1e-3", "env.train_seeds=4",
        # All-zero rewards are likely at this size; the entropy term keeps a gradient.
        "algorithm.entropy_coef=0.01"]

ENVS: dict[str, list[str]] = {
    # Admissible actions constrain decoding: episodes are real plays of the generated games.
    "alfworld": ["env.id=agentrl/ALFWorld-v0", "env.kwargs={num_games: 2}",
                 "rollout.constrained=true"],
    # No valid-action list (it costs ~10 steps): the tiny model's free text goes to the
    # simulator's parser. One task keeps the JVM's task loading short.
    "sciworld": ["env.id=agentrl/ScienceWorld-v0",
                 "env.kwargs={task: find-living-thing, step_limit: 3}"],
    "webshop": ["env.id=agentrl/WebShop-v0", "env.kwargs={num_products: 300}"],
    "tooluse": ["env.id=agentrl/ToolUse-v0", "env.kwargs={max_steps: 3}"],
}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.java) if n == "sciworld"
                                  else n for n in ENVS])
def test_trainer_runs_on_env(name: str, tmp_path: Any) -> None:
    cfg = load_config(None, TINY + ENVS[name] + [f"output_dir={tmp_path}", f"run_name={name}"])
    tr = Trainer(cfg)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    out = tr.train()

    rows = [json.loads(line) for line in open(os.path.join(out["run_dir"], "metrics.jsonl"))]
    train_rows = [r for r in rows if "train/loss" in r]
    assert [r["iteration"] for r in train_rows] == [1, 2]
    for r in train_rows:
        assert torch.isfinite(torch.tensor(r["train/loss"]))
        assert r["rollout/episodes"] == 4 and r["rollout/turns"] >= 1
        # Every episode ended normally: no env_error / env_timeout from the engine.
        assert not any(k.startswith("rollout/termination/env_") for k in r), r
    after = tr.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no parameter changed"
    assert out["final"]["episodes"] == 2 and 0.0 <= out["final"]["success_rate"] <= 1.0
    assert os.path.exists(os.path.join(out["checkpoint"], "model", "model.safetensors"))
    # The dumped trajectories carry the env's task type and per-turn infos.
    dumps = sorted(os.listdir(os.path.join(out["run_dir"], "trajectories")))
    with open(os.path.join(out["run_dir"], "trajectories", dumps[0])) as f:
        traj = json.loads(f.readline())
    assert traj["task_type"] and traj["turns"]
