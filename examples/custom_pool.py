"""An env pool of your own, in one file: every slot's env in this process, each batch of resets
and steps run on a thread pool. Worth it when envs wait on I/O (an env that calls a web
service or a remote simulator): the waits overlap, where `InProcessPool` steps slot after slot.
Nothing in agentrl is edited; the config names the class:

    PYTHONPATH=. agentrl train env.pool=examples.custom_pool:ThreadPool    # from the repo root
    python examples/custom_pool.py                                          # the same

A pool is anything with ``num_envs``, ``stats``, ``reset``, ``step`` and ``close`` (the
`agentrl.envpool.EnvPool` protocol), built as ``Class(env_id, env_kwargs, num_envs, env_cfg)``.
Failures are results, never exceptions: an env that raises ends its episode with
``env_error``, and one that runs past ``env.step_timeout`` with ``env_timeout`` (its thread
cannot be killed: the env is abandoned to it and a fresh one is built for the next reset).
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from agentrl import EnvResult, make_env


class ThreadPool:
    """``num_envs`` env slots stepped concurrently by ``num_envs`` threads."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any], num_envs: int,
                 env_cfg: Any) -> None:
        self.env_id, self.env_kwargs, self.num_envs = env_id, dict(env_kwargs), num_envs
        self.timeout = env_cfg.step_timeout
        self.stats = {"env_error": 0, "env_timeout": 0, "restarts": 0, "recycled": 0}
        self._envs: dict[int, Any] = {}
        self._threads = ThreadPoolExecutor(num_envs, thread_name_prefix="env")

    def _one(self, slot: int, cmd: str, arg: Any, options: Any) -> EnvResult:
        t0 = time.perf_counter()
        if slot not in self._envs:
            self._envs[slot] = make_env(self.env_id, **self.env_kwargs)
        env = self._envs[slot]
        if cmd == "reset":
            obs, info = env.reset(seed=arg, options=options)
            return EnvResult(obs, info=info, seconds=time.perf_counter() - t0)
        obs, r, term, trunc, info = env.step(arg)
        return EnvResult(obs, float(r), bool(term), bool(trunc), info,
                         seconds=time.perf_counter() - t0)

    def _batch(self, cmd: str, slots: list[int], args: list[Any],
               options: list[Any] | None = None) -> list[EnvResult]:
        opts = options or [None] * len(slots)
        futures = [self._threads.submit(self._one, s, cmd, a, o)
                   for s, a, o in zip(slots, args, opts)]
        deadline = time.monotonic() + self.timeout
        out, hung = [], False
        for slot, fut in zip(slots, futures):
            try:
                out.append(fut.result(timeout=max(0.0, deadline - time.monotonic())))
                continue
            except FutureTimeout:
                hung = True
                res = EnvResult("", terminated=True, error="env_timeout",
                                message=f"{cmd} of slot {slot} exceeded {self.timeout}s")
            except Exception as e:  # the env raised: only this episode ends
                res = EnvResult("", terminated=True, error="env_error",
                                message=f"{type(e).__name__}: {e}")
            self._envs.pop(slot, None)  # rebuilt at the next reset (a hung one is abandoned)
            self.stats[res.error] += 1
            self.stats["restarts"] += 1
            out.append(res)
        if hung:  # the hung thread keeps running: later batches get fresh threads
            self._threads.shutdown(wait=False)
            self._threads = ThreadPoolExecutor(self.num_envs, thread_name_prefix="env")
        return out

    def reset(self, slots: list[int], seeds: list[int | None],
              options: list[dict[str, Any] | None] | None = None) -> list[EnvResult]:
        return self._batch("reset", slots, seeds, options)

    def step(self, slots: list[int], actions: list[str]) -> list[EnvResult]:
        return self._batch("step", slots, actions)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        for env in self._envs.values():
            env.close()
        self._envs.clear()


def main(argv: list[str]) -> dict[str, Any]:
    from agentrl import Trainer, load_config

    cfg = load_config(None, [f"env.pool={__name__}:ThreadPool", "run_name=threadpool",
                             "log.progress=false", *argv])
    return Trainer(cfg).train()


if __name__ == "__main__":
    main(sys.argv[1:])
