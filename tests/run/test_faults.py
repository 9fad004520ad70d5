"""Fault injection on the real CLI: one run is SIGKILLed during a rollout, a checkpoint write,
an update and an evaluation, then SIGTERMed (preemption), resumed with ``--resume`` after each;
it must end exactly where an uninterrupted run ends, with metrics.jsonl, trajectory dumps and
eval files agreeing with it (nothing lost, nothing twice)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from helpers import SMALL
from safetensors.torch import load_file

from agentrl.run import checkpoint
from agentrl.types import read_jsonl

RUN = [*SMALL, "train.iterations=3", "train.checkpoint_every=2", "log.trajectories_every=1",
       "eval.every=2"]


def _train(out, name: str, fault: str | None = None, resume: bool = False):
    env = {k: v for k, v in os.environ.items() if k != "AGENTRL_FAULT"}
    if fault:
        env["AGENTRL_FAULT"] = fault
    cmd = [sys.executable, "-m", "agentrl.cli", "train",
           *(["--resume", os.path.join(out, name)] if resume else []), *RUN,
           f"output_dir={out}", f"run_name={name}"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("ref")
    r = _train(out, "ref")
    assert r.returncode == 0, r.stderr[-3000:]
    return os.path.join(out, "ref")


def _rows(run_dir: str) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def _dumps(run_dir: str) -> dict[str, list]:
    """Every JSONL dump (training and eval), trajectories without their wall-clock timings
    and random ids."""
    out = {}
    for sub in ("trajectories", "eval"):
        for name in sorted(os.listdir(os.path.join(run_dir, sub))):
            if name.endswith(".jsonl"):
                trajs = [t.to_dict() for t in read_jsonl(os.path.join(run_dir, sub, name))]
                for t in trajs:
                    t.pop("trajectory_id"), t.pop("episode_id")
                    for u in t["turns"]:
                        u.pop("seconds_generate"), u.pop("seconds_env")
                out[f"{sub}/{name}"] = trajs
    return out


def test_kills_at_every_stage_and_sigterm_then_resume_match_an_uninterrupted_run(
        tmp_path, reference: str) -> None:
    run = str(tmp_path / "chaos")
    cps = lambda: [os.path.basename(p) for p in checkpoint.list_checkpoints(run)]  # noqa: E731

    # 1. Killed in the first rollout: nothing to resume from yet.
    r = _train(tmp_path, "chaos", "rollout@1:kill")
    assert r.returncode == -9 and cps() == []
    # 2. Killed half-way through writing the first checkpoint (step_2): it is not used.
    r = _train(tmp_path, "chaos", "checkpoint_write@1:kill", resume=True)
    assert r.returncode == -9 and cps() == [], r.stderr[-2000:]
    assert os.path.isdir(os.path.join(run, "checkpoints", "step_2.tmp"))
    # 3. Killed in the update of iteration 3 (step_2 is complete now).
    r = _train(tmp_path, "chaos", "update@3:kill", resume=True)
    assert r.returncode == -9 and cps() == ["step_2"], r.stderr[-2000:]
    # 4. Killed during the final evaluation, after iteration 3 was logged.
    r = _train(tmp_path, "chaos", "eval@1:kill", resume=True)
    assert r.returncode == -9 and cps() == ["step_2"], r.stderr[-2000:]
    assert [row["iteration"] for row in _rows(run) if "train/loss" in row] == [1, 2, 3]
    # 5. SIGTERM during iteration 3's rollout: it finishes the iteration, checkpoints, exits 75.
    r = _train(tmp_path, "chaos", "rollout@1:term", resume=True)
    assert r.returncode == 75, (r.returncode, r.stderr[-2000:])
    assert "SIGTERM" in r.stderr and "--resume" in r.stderr and cps() == ["step_2", "step_3"]
    assert not os.path.exists(os.path.join(run, "eval", "final.json"))
    # 6. The last resume finishes the run.
    r = _train(tmp_path, "chaos", resume=True)
    assert r.returncode == 0, r.stderr[-3000:]

    a = load_file(os.path.join(checkpoint.latest(run), "model", "model.safetensors"))
    b = load_file(os.path.join(checkpoint.latest(reference), "model", "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = _rows(run), _rows(reference)
    assert [x["iteration"] for x in ra] == [x["iteration"] for x in rb]  # each row once
    for x, y in zip(ra, rb):
        assert {k: v for k, v in x.items() if not k.startswith("perf/")} == \
               {k: v for k, v in y.items() if not k.startswith("perf/")}
    assert _dumps(run) == _dumps(reference)
    evals = sorted(os.listdir(os.path.join(run, "eval")))
    assert evals == sorted(os.listdir(os.path.join(reference, "eval")))
    for name in evals:
        if name.endswith(".json"):
            x, y = (json.load(open(os.path.join(d, "eval", name))) for d in (run, reference))
            assert x["success_rate"] == y["success_rate"] and x["iteration"] == y["iteration"]


def test_second_signal_exits_at_once(tmp_path) -> None:
    """Two SIGTERMs: no waiting for the iteration to end, no checkpoint."""
    r = _train(tmp_path, "twice", "rollout@1:term,rollout@1:term")
    assert r.returncode == -15, (r.returncode, r.stderr[-2000:])
    assert checkpoint.list_checkpoints(str(tmp_path / "twice")) == []


def test_the_resume_command_follows_the_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentrl.run.faults import Interrupted, resume_command

    for k in ("WORLD_SIZE", "RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert resume_command("runs/x") == "agentrl train --resume runs/x"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    msg = str(Interrupted(signal.SIGTERM, 4, "runs/x/checkpoints/step_4", "runs/x"))
    assert msg == ("stopped by SIGTERM after iteration 4; checkpoint runs/x/checkpoints/step_4. "
                   "Continue with: agentrl launch --standalone --nproc_per_node=2 train --resume "
                   "runs/x (or: torchrun --standalone --nproc_per_node=2 -m agentrl train --resume "
                   "runs/x; in one process: agentrl train --resume runs/x train.strategy=single)")
    monkeypatch.setenv("RANK", "1")  # one resume command per launch, from rank 0
    assert str(Interrupted(signal.SIGTERM, 4, "cp", "runs/x")) == (
        "rank 1 stopped by SIGTERM after iteration 4 (rank 0 says how to continue)")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert resume_command("r").startswith("agentrl launch --nnodes=2 --nproc_per_node=8 train "
                                          "--resume r on every node, with its --node_rank")
