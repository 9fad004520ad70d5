"""The thread pool: the in-process pool's results with every request of a batch on its own
thread, so envs that wait overlap their waits; a hung request ends its own episode at the
deadline and the pool goes on with a new env; `make_pool` builds it for ``env.pool=thread``."""

from __future__ import annotations

import random
import time

from conftest import CorridorEnv

from agentrl.config import EnvConfig
from agentrl.envpool import InProcessPool, ThreadPool, make_pool
from agentrl.registry import make_env, register_env


class Waiting(CorridorEnv):
    """The corridor with a wait in every step (a remote tool's round trip)."""

    def __init__(self, wait: float = 0.01, **kw: object) -> None:
        super().__init__(**kw)
        self.wait = wait

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        time.sleep(self.wait)
        return super().step(action)


register_env("test/Waiting-v0", entry_point=Waiting, description="corridor that waits",
             max_episode_steps=20)


def _script() -> list[tuple[str, list[int], list]]:
    rng = random.Random(0)
    script = []
    for round_ in range(3):
        script.append(("reset", list(range(6)), [round_, 1, 2, 3, 4, 5]))
        for _ in range(4):
            script.append(("step", list(range(6)),
                           [rng.choice(["go east", "go west", "take coin", "jump"])
                            for _ in range(6)]))
    return script


def _play(pool: InProcessPool) -> list[list[tuple]]:
    with pool:
        return [[(r.observation, r.reward, r.terminated, r.truncated, r.info, r.error)
                 for r in getattr(pool, kind)(slots, args)] for kind, slots, args in _script()]


def test_threads_give_the_in_process_results() -> None:
    a = _play(InProcessPool("test/Corridor-v0", {"length": 2}, 6))
    b = _play(ThreadPool("test/Corridor-v0", {"length": 2}, 6, threads=3))
    assert a == b and any(v[2] for batch in a for v in batch)


def test_the_waits_of_a_batch_overlap() -> None:
    with ThreadPool("test/Waiting-v0", {"wait": 0.2}, 16) as pool:
        pool.reset(list(range(16)), list(range(16)))
        t0 = time.monotonic()
        res = pool.step(list(range(16)), ["go east"] * 16)
        seconds = time.monotonic() - t0
    assert [r.observation for r in res] == ["You are in room 1."] * 16
    assert seconds < 1.6  # one after another: 3.2 s


def test_a_hung_request_ends_its_episode_and_the_others_go_on() -> None:
    with ThreadPool("test/Corridor-v0", {"hang_on": "take coin", "hang_seconds": 3.0}, 3,
                    step_timeout=0.5) as pool:
        pool.reset([0, 1, 2], [0, 1, 2])
        t0 = time.monotonic()
        res = pool.step([0, 1, 2], ["take coin", "go east", "go east"])
        assert time.monotonic() - t0 < 2.0  # the deadline, not the 3 s hang
        assert res[0].error == "env_timeout" and res[0].terminated
        assert "longer than 0.5 s" in res[0].message
        assert [r.observation for r in res[1:]] == ["You are in room 1."] * 2
        # a new env serves the slot's next episode; the others keep theirs
        assert pool.reset([0], [0])[0].observation == "You are in room 0."
        assert [r.observation for r in pool.step([0, 1], ["go east"] * 2)] == [
            "You are in room 1.", "You are in room 2."]
        assert pool.stats == {"env_error": 0, "env_timeout": 1, "restarts": 1, "recycled": 0}


def test_an_exception_ends_only_its_episode() -> None:
    with ThreadPool("test/Corridor-v0", {"crash_on": "take coin"}, 2) as pool:
        pool.reset([0, 1], [0, 1])
        a, b = pool.step([0, 1], ["take coin", "go east"])
        assert a.error == "env_error" and "injected crash" in a.message
        assert b.observation == "You are in room 1."
        assert pool.reset([0], [0])[0].observation == "You are in room 0."


def test_make_pool_builds_it_with_the_configs_threads() -> None:
    pool = make_pool(EnvConfig(id="test/Corridor-v0", pool="thread", threads=2), 4)
    with pool:
        assert isinstance(pool, ThreadPool) and pool.threads == 2


def test_tooluse_tool_calls_wait_their_latency() -> None:
    env = make_env("agentrl/ToolUse-v0", tool_latency=0.3)
    env.reset(seed=0)
    t0 = time.monotonic()
    env.step("calculate[1 + 1]")
    assert time.monotonic() - t0 >= 0.3
