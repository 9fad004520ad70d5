"""End to end on a real env (TextWorld): training changes every parameter, checkpoints round-trip,
a killed run resumes where it stopped and ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import SMALL
from safetensors.torch import load_file

from agentrl.config import load_config
from agentrl.run import checkpoint
from agentrl.trainer import Trainer


def _cfg(tmp_path, *extra: str):
    return load_config(None, SMALL + [f"output_dir={tmp_path}", *extra])


def test_train_changes_every_parameter_and_checkpoint_roundtrips(tmp_path) -> None:
    cfg = _cfg(tmp_path, "train.iterations=2", "run_name=e2e")
    tr = Trainer(cfg)
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    out = tr.train()
    after = tr.model.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    rows = [json.loads(line) for line in open(os.path.join(out["run_dir"], "metrics.jsonl"))]
    train_rows = [r for r in rows if "train/loss" in r]
    assert len(train_rows) == 2 and all(torch.isfinite(torch.tensor(r["train/loss"])) for r in train_rows)
    assert 0.0 <= out["final"]["success_rate"] <= 1.0 and "per_task_type" in out["final"]
    cp = checkpoint.latest(out["run_dir"])
    saved = load_file(os.path.join(cp, "model", "model.safetensors"))
    for k, v in saved.items():
        assert torch.equal(v, after[k])
    assert os.path.exists(os.path.join(out["run_dir"], "curve.png"))
    assert os.path.exists(os.path.join(cp, "config.yaml"))


def _weights(run_dir: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(checkpoint.latest(run_dir), "model", "model.safetensors"))


def test_resume_continues_exactly(tmp_path) -> None:
    full = Trainer(_cfg(tmp_path, "train.iterations=3", "run_name=full")).train()
    part = Trainer(_cfg(tmp_path, "train.iterations=2", "run_name=part")).train()
    cfg3 = _cfg(tmp_path, "train.iterations=3", "run_name=part")
    resumed = Trainer(cfg3, resume=True, run_dir=part["run_dir"])
    assert resumed.iteration == 2
    resumed.train()
    a, b = _weights(full["run_dir"]), _weights(part["run_dir"])
    for k in a:
        assert torch.equal(a[k], b[k]), k
    its = [json.loads(line)["iteration"] for line in open(os.path.join(part["run_dir"], "metrics.jsonl"))
           if "train/loss" in line]
    assert its == [1, 2, 3]


def test_killed_run_resumes_from_last_checkpoint(tmp_path) -> None:
    run_dir = tmp_path / "killed"
    args = [sys.executable, "-m", "agentrl.cli", "train", *SMALL, "train.iterations=40",
            f"output_dir={tmp_path}", "run_name=killed"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.time() + 600  # generous: shared CI machines
        while time.time() < deadline and len(checkpoint.list_checkpoints(str(run_dir))) < 1:
            time.sleep(0.5)
        assert checkpoint.list_checkpoints(str(run_dir)), "no checkpoint was written"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    last = checkpoint.latest(str(run_dir))
    done = checkpoint.checkpoint_iteration(last)
    cfg = load_config(str(run_dir / "config.yaml"), [f"train.iterations={done + 1}"])
    tr = Trainer(cfg, resume=True, run_dir=str(run_dir))
    assert tr.iteration == done
    tr.train()
    its = [json.loads(line)["iteration"] for line in open(run_dir / "metrics.jsonl")
           if "train/loss" in line]
    assert its == list(range(1, done + 2))  # no completed iteration lost, none duplicated


def test_episodes_lost_to_a_crashed_env_are_logged_but_not_trained_on(tmp_path) -> None:
    cfg = load_config(None, [
        "env.id=test/Corridor-v0", "env.kwargs={crash_on: go west}", "env.eval_kwargs={}",
        "env.train_seeds=1", "rollout.groups=2", "rollout.group_size=4", "rollout.max_turns=6",
        "rollout.action_format=raw", "rollout.constrained=true", "rollout.max_new_tokens=6",
        "policy.tiny_corpus_episodes=4", "eval.before_training=false", "eval.every=0",
        "eval.episodes=2", "log.tensorboard=false", "log.progress=false",
        "train.iterations=1", f"output_dir={tmp_path}", "run_name=crash"])
    tr = Trainer(cfg)
    seen: list = []
    build = tr.algorithm.build_batch
    tr.algorithm.build_batch = lambda trajs, pad: (seen.extend(trajs), build(trajs, pad))[1]
    m = tr.train_iteration()
    lost = m.get("rollout/termination/env_error", 0.0)
    assert lost > 0, "a random policy among 3 actions should hit 'go west' in 8 episodes"
    assert m["env/env_error"] == round(lost * 8)
    assert len(seen) == 8 - m["env/env_error"]
    assert all(t.termination != "env_error" for t in seen)
    tr.close()


def test_the_training_sampler_follows_the_run_seed(tmp_path) -> None:
    """Runs with different seeds sample from different streams (and one seed, one stream)."""
    states = []
    for i, seed in enumerate((1, 2, 1)):
        tr = Trainer(_cfg(tmp_path, f"seed={seed}", f"run_name=s{i}"))
        states.append(tr.policy.state_dict()["generator"])
        tr.close()
    assert not torch.equal(states[0], states[1])
    assert torch.equal(states[0], states[2])


def test_a_failed_set_up_closes_the_env_pools_it_built(tmp_path, monkeypatch) -> None:
    # The eval pool cannot be built (as when its Ray actors do not fit): the training pool,
    # built first, is closed before the error reaches the caller, so its workers (or a Ray
    # cluster's CPUs) are not left held.
    import agentrl.assemble as assemble_mod

    built: list = []
    real = assemble_mod.make_pool

    def make_pool(*args, **kwargs):
        if built:
            raise RuntimeError("the eval pool does not fit")
        pool = real(*args, **kwargs)
        closes = []
        real_close = pool.close
        pool.close = lambda: (closes.append(1), real_close())[1]
        built.append((pool, closes))
        return pool

    monkeypatch.setattr(assemble_mod, "make_pool", make_pool)
    with pytest.raises(RuntimeError, match="does not fit"):
        Trainer(_cfg(tmp_path, "env.pool=process"))
    assert len(built) == 1 and built[0][1] == [1]
