"""`ThreadPool`: envs in this process, each request on its own thread, for envs that *wait*
(web APIs, search, code runners, remote simulators, served envs): a 200 ms tool call in each
of 48 episodes takes 200 ms of wall time, not 9.6 s. The envs must be safe to step from
several threads at once (one env per slot; most pure-Python and network envs are); CPU-bound
envs gain nothing (the interpreter lock) and belong in worker processes.

Each request runs on a private copy of its slot's entry, so a request that outlives its
deadline (``step_timeout``, ``reset_timeout``, ``build_timeout`` for an env's first request)
ends its episode as ``env_timeout`` and its env is abandoned to the hung thread (a thread
cannot be killed; the next reset builds a new env), while the other slots go on.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from agentrl.envpool.base import ENV_BUILD_TIMEOUT, EnvResult, _call, _failure
from agentrl.envpool.inprocess import InProcessPool


class ThreadPool(InProcessPool):
    """``num_envs`` env slots in this process, stepped by up to ``threads`` threads at once.

    Args:
        env_id, env_kwargs, num_envs, recycle_after: as `InProcessPool`.
        threads: requests in flight at once (None = one per slot).
        step_timeout / reset_timeout / build_timeout: seconds before a step, a reset (None =
            ``step_timeout``) or an env's first request counts as hung.
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None, num_envs: int, *,
                 threads: int | None = None, step_timeout: float = 60.0,
                 reset_timeout: float | None = None,
                 build_timeout: float = ENV_BUILD_TIMEOUT,
                 recycle_after: int | None = None) -> None:
        super().__init__(env_id, env_kwargs, num_envs, recycle_after=recycle_after)
        self.threads = max(1, threads or num_envs)
        self.timeouts = {"step": step_timeout, "reset": reset_timeout or step_timeout}
        self.build_timeout = build_timeout
        self._pool = self._executor()

    def _executor(self) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="agentrl-env")

    def close(self) -> None:
        """Close every env and stop the threads (a hung one is left behind). Safe twice."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        super().close()

    def _run_batch(self, reqs: list[tuple[int, str, Any, Any]]) -> list[EnvResult]:
        boxes = [{slot: self._envs[slot]} if slot in self._envs else {}
                 for slot, *_ in reqs]
        futures = [self._pool.submit(_call, box, self._make, slot, cmd, arg, options)
                   for box, (slot, cmd, arg, options) in zip(boxes, reqs)]
        t0, hung = time.monotonic(), False
        out = []
        for box, fut, (slot, cmd, _, _) in zip(boxes, futures, reqs):
            limit = self.timeouts[cmd] if slot in self._envs else self.build_timeout
            res = self._result(fut, limit - (time.monotonic() - t0), cmd, limit)
            if res.error == "env_timeout":
                hung = True
                self._envs.pop(slot, None)  # left to the hung thread
            elif box.get(slot) is not None:
                self._envs[slot] = box[slot]
            else:
                self._envs.pop(slot, None)  # the request failed and dropped its env
            self.stats["restarts"] += res.error is not None
            out.append(res)
        if hung:  # a fresh set of threads: the hung ones keep theirs busy
            self._pool.shutdown(wait=False)
            self._pool = self._executor()
        return out

    @staticmethod
    def _result(fut: Future, wait: float, cmd: str, limit: float) -> EnvResult:
        try:
            return fut.result(timeout=max(0.0, wait))
        except FutureTimeout:
            return _failure("env_timeout", f"{cmd} took longer than {limit:g} s", limit)
