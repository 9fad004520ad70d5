"""Env pools: the in-process and worker-process pools give the same results; crashes, hangs
and exceptions end only their own episodes; workers are recycled, measured and always reaped;
`make_pool` builds the pool a config's ``env:`` section asks for (``auto`` by registration)."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
import types

import pytest
from conftest import CorridorEnv

from agentrl import envpool
from agentrl.config import EnvConfig, RolloutConfig, load_config
from agentrl.envpool import InProcessPool, ProcessPool, make_pool, process
from agentrl.policies.hf import HFPolicy
from agentrl.registry import register_env
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.prompts import PromptBuilder
from agentrl.run.metrics import rollout_metrics

# Workers fork from multiprocessing's forkserver and import conftest (for CorridorEnv), which
# imports torch: seconds per worker on a loaded machine. Preloading torch (via agentrl.models)
# in the server once makes each worker start in milliseconds. Tests are correct without it, only
# slower; it has no effect if something started the forkserver earlier. (conftest itself cannot
# be preloaded: Python 3.11's forkserver ignores the parent's sys.path.)
multiprocessing.get_context("forkserver").set_forkserver_preload(
    ["__main__", "agentrl.envpool", "agentrl.models"])

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _gone(pid: int) -> bool:
    """The process no longer exists (a zombie still has a /proc entry)."""
    return not os.path.exists(f"/proc/{pid}")


def _view(r: envpool.EnvResult) -> tuple:
    return (r.observation, r.reward, r.terminated, r.truncated, r.info, r.error)


def test_process_mode_gives_the_same_results_as_inprocess() -> None:
    rng = random.Random(0)
    script = []  # batches of (kind, slots, args), with episodes ending and restarting
    for round_ in range(3):
        script.append(("reset", [0, 1, 2, 3, 4], [round_, 1, 2, 3, 4]))
        for _ in range(4):
            script.append(("step", [0, 1, 2, 3, 4],
                           [rng.choice(["go east", "go west", "take coin", "jump"])
                            for _ in range(5)]))
    runs = []
    for pool in (InProcessPool("test/Corridor-v0", {"length": 2}, 5),
                 ProcessPool("test/Corridor-v0", {"length": 2}, 5, step_timeout=10,
                             envs_per_worker=2)):
        with pool:
            runs.append([[_view(r) for r in getattr(pool, kind)(slots, args)]
                         for kind, slots, args in script])
            assert pool.stats == {"env_error": 0, "env_timeout": 0, "restarts": 0, "recycled": 0}
    assert runs[0] == runs[1]
    assert any(v[2] for batch in runs[0] for v in batch)  # some episodes were won


def test_env_exception_in_a_worker_ends_only_that_episode() -> None:
    with ProcessPool("test/Corridor-v0", {"crash_on": "take coin"}, 2, step_timeout=10,
                     envs_per_worker=2) as pool:
        pool.reset([0, 1], [0, 1])
        pid = pool.worker_pid(0)
        a, b = pool.step([0, 1], ["take coin", "go east"])
        assert (a.error, a.terminated) == ("env_error", True)
        assert "injected crash" in a.message
        assert (b.error, b.observation) == (None, "You are in room 1.")
        assert pool.worker_pid(0) == pid  # the worker survives an env exception
        assert pool.step([1], ["go east"])[0].observation == "You are in room 2."
        assert pool.reset([0], [0])[0].observation == "You are in room 0."  # env rebuilt
        assert pool.stats["env_error"] == 1 and pool.stats["env_timeout"] == 0


def test_timeout_and_death_end_the_episodes_of_that_worker_only() -> None:
    with ProcessPool("test/Corridor-v0", {"hang_on": "take coin"}, 4, step_timeout=1.0,
                     reset_timeout=10, envs_per_worker=2) as pool:
        pool.reset([0, 1, 2, 3], [0, 1, 2, 3])
        pids = [pool.worker_pid(0), pool.worker_pid(2)]
        t0 = time.monotonic()
        res = pool.step([0, 1, 2, 3], ["take coin", "go east", "go east", "go east"])
        assert time.monotonic() - t0 < 5  # killed at the timeout, not after the 30 s hang
        assert res[0].error == "env_timeout" and "timeout" in res[0].message
        # slot 1 shares the hung worker: its step was queued behind slot 0's and is lost too
        assert res[1].error == "env_error" and "lost with its worker" in res[1].message
        assert [r.observation for r in res[2:]] == ["You are in room 1."] * 2
        assert pool.worker_pid(0) != pids[0] and _gone(pids[0])

        os.kill(pool.worker_pid(2), signal.SIGKILL)  # an OOM kill or a segfault, mid-episode
        (c,) = pool.step([2], ["go east"])
        assert c.error == "env_error" and "SIGKILL" in c.message and c.terminated
        (d,) = pool.step([3], ["go east"])  # its neighbour's env died with the worker
        assert d.error == "env_error" and "lost with its worker" in d.message
        assert pool.worker_pid(2) != pids[1] and _gone(pids[1])

        # Replacement workers serve new episodes in every slot.
        assert [r.error for r in pool.reset([0, 1, 2, 3], [0, 1, 2, 3])] == [None] * 4
        assert [r.observation for r in pool.step([0, 1, 2, 3], ["go east"] * 4)] == [
            "You are in room 1."] * 4
        assert pool.stats == {"env_error": 3, "env_timeout": 1, "restarts": 2, "recycled": 0}


def test_rollout_survives_a_killed_worker_and_a_hung_step(tiny_tok, tiny_model) -> None:
    cfg = RolloutConfig(max_turns=4, max_new_tokens=4, constrained=True, action_format="raw",
                        template="{observation}")
    pool = ProcessPool("test/Corridor-v0", {"length": 10, "hang_on": "HANG"}, 4,
                       step_timeout=1.0, reset_timeout=10)
    calls = []
    step = pool.step

    def faulty_step(slots: list[int], actions: list[str]) -> list[envpool.EnvResult]:
        calls.append(list(slots))
        if len(calls) == 2:  # second turn: kill slot 0's worker, make slot 1's env hang
            os.kill(pool.worker_pid(slots[0]), signal.SIGKILL)
            actions = [actions[0], "HANG", *actions[2:]]
        return step(slots, actions)

    pool.step = faulty_step  # type: ignore[method-assign]
    policy = HFPolicy(tiny_model, tiny_tok)
    engine = RolloutEngine(policy, pool, PromptBuilder(tiny_tok, cfg), cfg, "test/Corridor-v0")
    try:
        pids = [pool.worker_pid(s) for s in range(4)]
        t0 = time.monotonic()
        trajs = engine.run([0, 1, 2, 3])
        assert time.monotonic() - t0 < 20  # the hung step (30 s) was cut at its 1 s timeout
        assert [t.termination for t in trajs] == ["env_error", "env_timeout", "max_turns",
                                                  "max_turns"]
        assert [t.num_turns for t in trajs] == [2, 2, 4, 4]
        assert "SIGKILL" in trajs[0].extra["error"] and "timeout" in trajs[1].extra["error"]
        assert all(t.turns[-1].action_ids for t in trajs)  # the lost turn is kept, with tokens
        m = rollout_metrics(trajs)
        assert m["rollout/termination/env_error"] == m["rollout/termination/env_timeout"] == 0.25
        assert pool.stats == {"env_error": 1, "env_timeout": 1, "restarts": 2, "recycled": 0}
        # Only the two failed workers were replaced, and the old ones are gone.
        now = [pool.worker_pid(s) for s in range(4)]
        assert now[0] != pids[0] and now[1] != pids[1] and now[2:] == pids[2:]
        assert _gone(pids[0]) and _gone(pids[1])
        # The run goes on: the next rollout uses the replacement workers.
        again = engine.run([4, 5, 6, 7])
        assert [t.termination for t in again] == ["max_turns"] * 4
    finally:
        pool.close()


def test_recycling_replaces_workers_between_episodes_and_memory_is_reported() -> None:
    with ProcessPool("test/Corridor-v0", {}, 3, step_timeout=10, envs_per_worker=2,
                     recycle_after=2) as pool:
        mem = pool.memory()
        assert set(mem) == {"worker0", "worker1"}
        pool.reset([0, 1, 2], [0, 1, 2])
        mem = pool.memory()
        assert all(10 * 2**20 < v < 4 * 2**30 for v in mem.values()), mem  # plausible RSS
        first = [pool.worker_pid(s) for s in range(3)]
        pool.reset([0, 2], [0, 2])  # worker0: 3 episodes, but slot 1 is mid-episode: kept
        assert pool.worker_pid(0) == first[0] and pool.stats["recycled"] == 0
        pool.step([1], ["go east"])
        pool.reset([0, 1, 2], [0, 1, 2])  # now both workers are idle and past the limit
        assert pool.worker_pid(0) != first[0] and pool.worker_pid(2) != first[2]
        assert _gone(first[0]) and _gone(first[2])
        assert pool.stats["recycled"] == 2
        assert pool.step([1], ["go east"])[0].observation == "You are in room 1."
    with InProcessPool("test/Corridor-v0", {}, 1, recycle_after=1) as pool:
        pool.reset([0], [0])
        env = pool._envs[0]
        pool.reset([0], [0])
        assert pool._envs[0] is not env and pool.stats["recycled"] == 1
        assert pool.memory()["main"] > 10 * 2**20


class SlowBuild(CorridorEnv):
    """A corridor whose constructor is slow (loading games, starting a JVM)."""

    def __init__(self, build_seconds: float = 0.0, **kwargs: object) -> None:
        time.sleep(build_seconds)
        super().__init__(**kwargs)


def test_a_slow_env_build_is_not_a_reset_timeout() -> None:
    register_env("test/SlowBuild-v0", entry_point=SlowBuild, description="slow constructor")
    kw = {"build_seconds": 1.5, "hang_on": "take coin"}
    with ProcessPool("test/SlowBuild-v0", kw, 1, step_timeout=0.5) as pool:
        (r,) = pool.reset([0], [0])  # 1.5 s build, 0.5 s reset timeout: fine
        assert (r.error, r.observation) == (None, "You are in room 0."), r.message
        (r,) = pool.step([0], ["take coin"])  # a hung step of a built env still times out
        assert r.error == "env_timeout" and "step of slot 0" in r.message
        (r,) = pool.reset([0], [0])  # the replacement worker rebuilds it, again allowed
        assert r.error is None, r.message
    # The build has a limit of its own (env.build_timeout).
    with ProcessPool("test/SlowBuild-v0", kw, 1, step_timeout=10, build_timeout=0.5) as pool:
        (r,) = pool.reset([0], [0])
        assert r.error == "env_timeout" and "building the env of slot 0" in r.message


class CloseHangs(CorridorEnv):
    """A corridor whose close() never returns (an env stuck shutting down its backend)."""

    def close(self) -> None:
        time.sleep(60)


def test_close_kills_hung_workers_and_leaves_no_zombies(monkeypatch) -> None:
    monkeypatch.setattr(process, "CLOSE_GRACE", 0.5)  # read by the shutdown (`_stop`)
    # Registered here, after the forkserver started: the worker learns the id from the pool.
    register_env("test/CloseHangs-v0", entry_point=CloseHangs, description="close hangs")
    pool = ProcessPool("test/CloseHangs-v0", {}, 2, step_timeout=10)
    assert [r.observation for r in pool.reset([0, 1], [0, 1])] == ["You are in room 0."] * 2
    pids = [pool.worker_pid(0), pool.worker_pid(1)]
    t0 = time.monotonic()
    pool.close()
    assert time.monotonic() - t0 < 5
    assert all(_gone(p) for p in pids)
    assert not [p for p in multiprocessing.active_children() if p.pid in pids]
    pool.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        pool.reset([0], [0])


_USER_SCRIPT = """
import signal
import sys
import time

from agentrl.envpool import process
from agentrl.envs.base import TextEnv
from agentrl.registry import register_env


class Stuck(TextEnv):  # defined in the user's __main__, made in the workers
    def reset(self, *, seed=None, options=None):
        return "ready", {}

    def step(self, action):
        if action == "hang":
            time.sleep(60)
        return "ok", 0.0, False, False, {}

    def close(self):
        time.sleep(60)


def interrupt(*_):
    raise KeyboardInterrupt


if __name__ == "__main__":
    process.CLOSE_GRACE = 0.5  # read by the worker shutdown (`_stop`)
    register_env("user/Stuck-v0", entry_point=Stuck, description="close hangs")
    pool = process.ProcessPool("user/Stuck-v0", {}, 2)  # no step timeout
    print(pool.reset([0, 1], [0, 1])[0].observation, pool.worker_pid(0), pool.worker_pid(1),
          flush=True)
    if sys.argv[1] == "interrupt":  # Ctrl-C while slot 0 hangs in a step
        signal.signal(signal.SIGALRM, interrupt)
        signal.alarm(1)
        try:
            pool.step([0, 1], ["hang", "go"])
        finally:
            print(pool.worker_pid(0), pool.worker_pid(1), flush=True)
    # exits without pool.close(), every env's close() hanging
"""


@pytest.mark.parametrize("how", ["normal", "interrupt"])
def test_interpreter_exit_without_close_stops_hung_workers(tmp_path, how: str) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(_USER_SCRIPT)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, str(script), how], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    took = time.monotonic() - t0
    word, *pids = out.stdout.split()
    assert word == "ready", out.stderr
    if how == "normal":
        assert out.returncode == 0, out.stderr
        assert len(pids) == 2
    else:
        assert out.returncode != 0 and "KeyboardInterrupt" in out.stderr, out.stderr
        assert len(pids) == 4  # the hung worker was replaced, its neighbour kept
        assert pids[2] != pids[0] and pids[3] == pids[1]
    assert took < 30, took  # not held up by a hung close() or step (60 s each)
    deadline = time.monotonic() + 5
    while not all(_gone(int(p)) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(int(p)) for p in pids)


def test_envs_that_workers_cannot_load_are_refused_with_the_fix() -> None:
    register_env("test/Lambda-v0", entry_point=lambda: CorridorEnv(), description="lambda")
    with pytest.raises(ValueError, match="module:Class"):
        ProcessPool("test/Lambda-v0", {}, 1)
    InProcessPool("test/Lambda-v0", {}, 1).close()  # fine in-process
    # A class whose module exists only in this process: picklable here, not importable there.
    ghost = types.ModuleType("ghost_envs")
    ghost.Ghost = type("Ghost", (CorridorEnv,), {"__module__": "ghost_envs"})
    sys.modules["ghost_envs"] = ghost
    try:
        register_env("test/Ghost-v0", entry_point=ghost.Ghost, description="not importable")
        pool = ProcessPool("test/Ghost-v0", {}, 1, step_timeout=10)
        with pytest.raises(RuntimeError, match="ghost_envs"):
            pool.reset([0], [0])
        pool.close()
    finally:
        del sys.modules["ghost_envs"]
    with pytest.raises(KeyError, match="did you mean 'test/Corridor-v0'"):
        ProcessPool("test/Coridor-v0", {}, 1)


class Isolated(CorridorEnv):
    """A corridor whose registration asks for worker processes (as a JVM env's does)."""


def test_make_pool_follows_the_config_and_the_registration() -> None:
    register_env("test/Isolated-v0", entry_point=Isolated, description="isolated corridor",
                 isolate=True)
    env = EnvConfig(id="test/Isolated-v0", envs_per_worker=3, step_timeout=5.0,
                    reset_timeout=7.0, build_timeout=9.0, recycle_after=4)
    with make_pool(env, 7) as pool:  # pool: auto (the default) -> worker processes
        assert isinstance(pool, ProcessPool) and len(pool._workers) == 3
        assert (pool.step_timeout, pool.reset_timeout, pool.build_timeout, pool.recycle_after) \
            == (5.0, 7.0, 9.0, 4)
        assert pool.reset([6], [0])[0].observation == "You are in room 0."
    with make_pool(EnvConfig(id="test/Corridor-v0", recycle_after=2), 2, {"length": 5}) as pool:
        assert isinstance(pool, InProcessPool) and pool.env_kwargs == {"length": 5}
        assert pool.recycle_after == 2
    forced = EnvConfig(id="test/Isolated-v0", pool="inprocess")
    with make_pool(forced, 1) as pool:
        assert isinstance(pool, InProcessPool)
    assert envpool.isolated("agentrl/ScienceWorld-v0") and envpool.isolated("agentrl/ALFWorld-v0")
    assert not envpool.isolated("agentrl/TextWorld-CoinCollector-v0")
    assert not envpool.isolated("agentrl/WebShop-v0") and not envpool.isolated("agentrl/ToolUse-v0")


def test_paper_configs_share_workers_between_envs() -> None:
    """ScienceWorld starts one JVM per worker process: 128 training envs must not mean 128 JVMs."""
    cfg = load_config(os.path.join(ROOT, "configs", "sciworld_epo_qwen2.5-7b.yaml"))
    assert cfg.env.pool == "auto" and envpool.isolated(cfg.env.id)
    n = cfg.rollout.groups * cfg.rollout.group_size
    assert n == 128 and -(-n // cfg.env.envs_per_worker) <= 16


class SlowStep(CorridorEnv):
    """Every step takes 0.3 s."""

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        time.sleep(0.3)
        return super().step(action)


register_env("test/SlowStep-v0", entry_point=SlowStep, description="slow steps",
             max_episode_steps=20)


def test_env_seconds_of_turns_add_up_to_wall_time_not_worker_time(tiny_model, tiny_tok) -> None:
    # Four envs in four workers, every step 0.3 s: stepped in parallel, a batch takes ~0.3 s
    # of wall time, not 4 x 0.3. The turns' env seconds must add up to the wall time.
    cfg = RolloutConfig(max_turns=3, max_new_tokens=4, constrained=True, action_format="raw",
                        template="{observation}")
    with ProcessPool("test/SlowStep-v0", {"length": 9}, 4, step_timeout=30) as pool:
        pool.reset([0, 1, 2, 3], [0, 1, 2, 3])  # workers started before timing
        engine = RolloutEngine(HFPolicy(tiny_model, tiny_tok), pool,
                               PromptBuilder(tiny_tok, cfg), cfg, "test/SlowStep-v0")
        t0 = time.perf_counter()
        trajs = engine.run([0, 1, 2, 3])
        wall = time.perf_counter() - t0
    turns = [t for tr in trajs for t in tr.turns]
    assert len(turns) == 12
    env = sum(t.seconds_env for t in turns)
    assert 3 * 0.3 <= env <= wall  # three batched steps of >= 0.3 s; never the 3.6 s sum


class WhichWorker(CorridorEnv):
    """Reports the env worker index the pool gave its process."""

    def reset(self, *, seed: int | None = None, options: object = None) -> tuple[str, dict]:
        from agentrl.progress import worker_index

        obs, info = super().reset(seed=seed, options=options)
        return obs, {**info, "worker": worker_index()}


register_env("test/WhichWorker-v0", entry_point=WhichWorker, description="worker index",
             max_episode_steps=20)


def test_each_worker_process_knows_its_index() -> None:
    with ProcessPool("test/WhichWorker-v0", {}, 4, step_timeout=30, envs_per_worker=2) as pool:
        assert [r.info["worker"] for r in pool.reset([0, 1, 2, 3], [0] * 4)] == [0, 0, 1, 1]
    pool = InProcessPool("test/WhichWorker-v0", {}, 1)
    assert pool.reset([0], [0])[0].info["worker"] is None
