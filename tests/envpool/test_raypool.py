"""The Ray env pool on a local Ray instance with 2 CPUs: the same results and trajectories as
the in-process pool; a hung step, a killed actor and an env exception end only their own
episodes and the actor is replaced; a training run with env.pool=ray goes on through a killed
actor; closing the pool, or killing the driver, leaves no actor behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from conftest import CorridorEnv

from agentrl.config import EnvConfig, RayConfig, RolloutConfig, load_config
from agentrl.envpool import InProcessPool, make_pool
from agentrl.envpool import ray as raypool
from agentrl.policies.hf import HFPolicy
from agentrl.registry import register_env
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.prompts import PromptBuilder
from agentrl.trainer import Trainer

TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(TESTS)


class DyingCorridor(CorridorEnv):
    """A corridor whose process dies (as if SIGKILLed or OOM-killed) at step ``die_step`` of
    an episode started with seed ``die_seed``, when it runs in a Ray actor: a dead actor,
    mid-episode. (In the driver, e.g. where the tiny tokenizer reads env text, it lives.)"""

    def __init__(self, die_seed: int = -1, die_step: int = 1, **kw: Any) -> None:
        super().__init__(**kw)
        self.die_seed, self.die_step, self.seed_, self.t = die_seed, die_step, None, 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[str, dict]:
        self.seed_, self.t = seed, 0
        return super().reset(seed=seed, options=options)

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        self.t += 1
        in_actor = ray.is_initialized() and ray.get_runtime_context().get_actor_id()
        if self.seed_ == self.die_seed and self.t == self.die_step and in_actor:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().step(action)


register_env("test/DyingCorridor-v0", entry_point=DyingCorridor, description="dies mid-episode",
             max_episode_steps=20)


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    """One local instance (2 CPUs) for the module; pools join it; stopped at the end."""
    raypool.connect("", num_cpus=2)
    yield
    raypool.disconnect()
    assert not ray.is_initialized()


def _pids(pool: raypool.RayPool) -> list[int]:
    """Process ids of the pool's actors."""
    return [pool.worker_pid(s) for s in range(0, pool.num_envs, pool.envs_per_worker)]


def _running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _all_gone(pids: list[int], seconds: float = 60) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(_running(p) for p in pids):
        time.sleep(0.2)
    return not any(_running(p) for p in pids)


def _view(r: Any) -> tuple:
    return (r.observation, r.reward, r.terminated, r.truncated, r.info, r.error)


def test_ray_pool_gives_the_same_results_as_inprocess() -> None:
    script = []
    for round_ in range(2):
        script.append(("reset", [0, 1, 2], [round_, 1, 2]))
        for acts in (["go east", "take coin", "go west"], ["go east", "go east", "jump"]):
            script.append(("step", [0, 1, 2], acts))
    runs, pids = [], []
    for pool in (InProcessPool("test/Corridor-v0", {"length": 2}, 3),
                 make_pool(EnvConfig(id="test/Corridor-v0", pool="ray", envs_per_worker=2,
                                     step_timeout=30), 3, {"length": 2},
                           RayConfig(worker_cpus=0.5))):
        try:
            runs.append([[_view(r) for r in getattr(pool, kind)(slots, args)]
                         for kind, slots, args in script])
            assert pool.stats == {"env_error": 0, "env_timeout": 0, "restarts": 0,
                                  "recycled": 0}
            if isinstance(pool, raypool.RayPool):
                pids = _pids(pool)
        finally:
            pool.close()
    assert runs[0] == runs[1]
    assert any(v[2] for batch in runs[0] for v in batch)  # some episodes were won
    assert len(set(pids)) == 2 and _all_gone(pids)  # close() ended both actors


def test_hang_kill_and_exception_end_only_their_episodes() -> None:
    pool = raypool.RayPool("test/Corridor-v0", {"hang_on": "HANG", "crash_on": "take coin"}, 4,
                           step_timeout=2.0, reset_timeout=60, envs_per_worker=2,
                           ray_cfg=RayConfig(worker_cpus=0.5))
    try:
        assert [r.error for r in pool.reset([0, 1, 2, 3], [0, 1, 2, 3])] == [None] * 4
        pids = [pool.worker_pid(0), pool.worker_pid(2)]
        t0 = time.monotonic()
        res = pool.step([0, 1, 2, 3], ["HANG", "go east", "take coin", "go east"])
        assert time.monotonic() - t0 < 20  # cut at the 2 s timeout, not after the 30 s hang
        assert res[0].error == "env_timeout" and "timeout" in res[0].message
        # slot 1 shares the hung actor: its step was queued behind slot 0's and is lost too
        assert res[1].error == "env_error" and "lost with its actor" in res[1].message
        # an env exception ends only that slot's episode; its actor lives on
        assert res[2].error == "env_error" and "injected crash" in res[2].message
        assert res[3].observation == "You are in room 1." and res[3].error is None
        assert pool.worker_pid(2) == pids[1]
        new0 = pool.worker_pid(0)
        assert new0 != pids[0]

        os.kill(pids[1], signal.SIGKILL)  # the actor's process dies mid-episode
        (d,) = pool.step([3], ["go east"])
        assert d.error == "env_error" and d.terminated and "died" in d.message
        assert pool.worker_pid(0) == new0  # the other actor is untouched
        # Replacements serve new episodes in every slot.
        assert [r.error for r in pool.reset([0, 1, 2, 3], [0, 1, 2, 3])] == [None] * 4
        assert [r.observation for r in pool.step([0, 1, 2, 3], ["go east"] * 4)] == [
            "You are in room 1."] * 4
        assert pool.stats == {"env_error": 3, "env_timeout": 1, "restarts": 3, "recycled": 0}
        last = _pids(pool)
    finally:
        pool.close()
    assert _all_gone([*pids, new0, *last])


def _rollout(tiny_model: Any, tiny_tok: Any, pool: Any, seeds: list[int]) -> list[tuple]:
    cfg = RolloutConfig(max_turns=5, max_new_tokens=4, constrained=True, action_format="raw",
                        template="{observation}")
    policy = HFPolicy(tiny_model, tiny_tok)
    engine = RolloutEngine(policy, pool, PromptBuilder(tiny_tok, cfg), cfg, "test/Corridor-v0")
    trajs = engine.run(seeds, greedy=True)
    return [(t.seed, t.termination, t.success,
             [(x.observation, x.action, x.reward, x.action_ids, x.logprobs) for x in t.turns])
            for t in trajs]


def test_same_seeds_same_trajectories_as_inprocess(tiny_model: Any, tiny_tok: Any) -> None:
    seeds = [3, 3, 5, 8]
    base = _rollout(tiny_model, tiny_tok, InProcessPool("test/Corridor-v0", {"length": 3}, 4),
                    seeds)
    pool = raypool.RayPool("test/Corridor-v0", {"length": 3}, 4, step_timeout=30,
                           envs_per_worker=2)
    try:
        assert _rollout(tiny_model, tiny_tok, pool, seeds) == base
    finally:
        pool.close()
    assert sum(len(t[3]) for t in base) >= 8  # real multi-turn episodes were compared


def test_training_with_ray_pool_goes_on_through_a_killed_actor(tmp_path: Any) -> None:
    # Every episode of seed 1 kills its actor at its second step; the other envs of the
    # iteration live in other actors (one env per actor).
    cfg = load_config(None, [
        "env.id=test/DyingCorridor-v0", "env.kwargs={length: 3, die_seed: 1, die_step: 2}",
        "env.pool=ray", "env.envs_per_worker=2", "env.train_seeds=2", "ray.worker_cpus=0.5",
        "env.step_timeout=60", "rollout.groups=2", "rollout.group_size=2",
        "rollout.max_turns=4", "rollout.constrained=true", "rollout.max_new_tokens=8",
        "train.iterations=2", "eval.episodes=2", "eval.every=0", "eval.before_training=false",
        "log.tensorboard=false", "log.progress=false", "train.checkpoint_every=0",
        "policy.tiny_corpus_episodes=2", f"output_dir={tmp_path}", "run_name=ray", "seed=1"])
    tr = Trainer(cfg)
    seen: list[list[Any]] = []
    collect = tr._collect

    def recording() -> list[Any]:
        trajs = collect()
        seen.append(trajs)
        return trajs

    tr._collect = recording  # type: ignore[method-assign]
    pids = _pids(tr.pool)
    out = tr.train()
    rows = [json.loads(line) for line in open(os.path.join(out["run_dir"], "metrics.jsonl"))]
    rows = [r for r in rows if "train/loss" in r or "train/skipped" in r]
    assert len(rows) == 2  # both iterations ran
    lost = [t for trajs in seen for t in trajs if t.termination == "env_error"]
    assert lost and all(t.seed == 1 and "died" in t.extra["error"] for t in lost)
    assert all(t.num_turns == 2 for t in lost)  # ended at the step that killed its actor
    # only those episodes ended early; the others played to their own end
    others = [t for trajs in seen for t in trajs if t.seed != 1]
    assert others and all(t.termination in ("success", "max_turns") for t in others)
    assert rows[-1]["env/env_error"] == len(lost)  # cumulative counts of the training pool
    assert any("train/loss" in r for r in rows)  # the loss came from the other episodes
    assert _all_gone(pids)  # the run closed its pools


def test_killed_driver_leaves_no_actor(tmp_path: Any) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {TESTS!r})
        import conftest
        from agentrl.envpool.ray import RayPool
        pool = RayPool("test/Corridor-v0", {{}}, 2, step_timeout=30)
        pool.reset([0, 1], [0, 1])
        print(pool.worker_pid(0), pool.worker_pid(1), flush=True)
        time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=str(tmp_path))
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]  # type: ignore[union-attr]
        assert len(pids) == 2 and all(os.path.exists(f"/proc/{p}") for p in pids)
    finally:
        proc.kill()
        proc.wait()
    assert _all_gone(pids), "env actors outlived their driver"


def test_clear_errors() -> None:
    with pytest.raises(ValueError, match="do not fit the cluster"):
        raypool.RayPool("test/Corridor-v0", {}, 5, ray_cfg=RayConfig(worker_cpus=1.0))
    cfg = load_config(None, ["env.pool=ray", "ray.address=auto", "ray.worker_cpus=0.25"])
    assert cfg.ray.address == "auto" and cfg.env.pool == "ray"


def test_auto_layout_keeps_half_of_the_free_cpus() -> None:
    # 32 CPUs free, one rank: 16 for this pool; 72 envs at >= 1 per actor -> 16 actors of
    # ceil(72/16) = 5 envs, 1 CPU each
    assert raypool.auto_layout(72, 1, 32.0, 32.0) == (5, 1.0)
    # the configured envs per actor is a floor: 72 envs at 8 -> 9 actors, all fit in 16
    assert raypool.auto_layout(72, 8, 32.0, 32.0) == (8, 1.0)
    # 2 CPUs (this machine): 1 for the training pool, one actor; then 1 free: 0.5 for the
    # evaluation pool's single actor
    assert raypool.auto_layout(72, 1, 2.0, 2.0) == (72, 1.0)
    assert raypool.auto_layout(64, 1, 1.0, 2.0) == (64, 0.5)
    # 8 torchrun ranks joining 32 free CPUs: 32 / (2 * 8) = 2 actors each
    assert raypool.auto_layout(72, 1, 32.0, 32.0, ranks=8) == (36, 1.0)
    with pytest.raises(raypool.PlacementError, match="no CPU of the Ray cluster is free"):
        raypool.auto_layout(4, 1, 0.0, 2.0)


def test_quickstart_sized_pools_fit_side_by_side_by_default() -> None:
    # The quickstart's training pool (12 x 6 envs) and evaluation pool (64) with the default
    # ray: section, on this module's 2-CPU instance: both are placed and answer at once.
    train = make_pool(EnvConfig(id="test/Corridor-v0", pool="ray"), 72, ray_cfg=RayConfig())
    try:
        t0 = time.monotonic()
        ev = make_pool(EnvConfig(id="test/Corridor-v0", pool="ray"), 64, ray_cfg=RayConfig())
        try:
            assert [r.error for r in ev.reset([0, 63], [0, 1])] == [None, None]
            assert [r.error for r in train.reset([0, 71], [0, 1])] == [None, None]
        finally:
            ev.close()
        assert time.monotonic() - t0 < 60
        assert (train.worker_cpus, ev.worker_cpus) == (1.0, 0.5)  # type: ignore[attr-defined]
    finally:
        train.close()


def test_actors_that_cannot_be_placed_fail_fast_in_one_line(monkeypatch: Any) -> None:
    deadline = time.monotonic() + 30  # the CPUs of closed pools come back asynchronously
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    full = raypool.RayPool("test/Corridor-v0", {}, 2, ray_cfg=RayConfig(worker_cpus=1.0))
    try:
        # the run's own instance, all of it held: refused before any actor starts
        t0 = time.monotonic()
        with pytest.raises(raypool.PlacementError, match="0 of 2 CPUs of the local cluster") as e:
            raypool.RayPool("test/Corridor-v0", {}, 1, ray_cfg=RayConfig(worker_cpus=1.0))
        assert e.value.exit_code == 2 and "\n" not in str(e.value)
        # a joined cluster whose CPUs others hold: the actor waits for its placement until
        # the deadline, then the pool says what does not fit
        monkeypatch.setitem(raypool._LOCAL, "started", False)
        monkeypatch.setattr(raypool, "WORKER_START_TIMEOUT", 3.0)
        with pytest.raises(raypool.PlacementError,
                           match=r"1 of 1 env actors \(1 CPUs each\) did not start within 3s: "
                           "they need 1 CPUs and the cluster has 0 of 2 free"):
            raypool.RayPool("test/Corridor-v0", {}, 1, ray_cfg=RayConfig(worker_cpus=1.0))
        assert time.monotonic() - t0 < 30
    finally:
        full.close()
