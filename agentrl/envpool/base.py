"""What every env pool shares: the `EnvPool` protocol and its `EnvResult`, the slot
bookkeeping of the in-process and worker-process pools (`_SlotPool`), one reset or step of a
slot with failures turned into results (`_call`), and process memory readings."""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    pass

#: Seconds a new worker may take to boot (interpreter, imports, the env's module) before it
#: counts as failed. Kept apart from step/reset timeouts so a slow import on a loaded machine
#: is not mistaken for a hung env.
WORKER_START_TIMEOUT = 120.0
#: Default seconds a worker may take to build an env and serve its first request (load or
#: generate games, start a JVM: ScienceWorld starts its JVM at the first reset), as
#: ``env.build_timeout``; later requests have their own timeouts, so a slow start is not taken
#: for a hung step.
ENV_BUILD_TIMEOUT = 600.0
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass
class EnvResult:
    """Outcome of one reset or step of one slot."""

    observation: str
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None  # None | "env_error" | "env_timeout"
    message: str = ""  # the exception text / reason, when error is set
    seconds: float = 0.0


def _failure(error: str, message: str, seconds: float = 0.0) -> EnvResult:
    return EnvResult(observation="", terminated=True, error=error, message=message,
                     seconds=seconds)


def _close_quietly(env: Any) -> None:
    try:
        if env is not None:
            env.close()
    except Exception:
        pass  # a failing env's close() must not take the run down with it


def _call(envs: dict[int, Any], make: Callable[[], Any], slot: int, cmd: str, arg: Any,
          options: Any, built: Callable[[int], None] | None = None) -> EnvResult:
    """Run one reset/step on ``envs[slot]``, building the env first if needed; after the first
    request of a new env, ``built(slot)`` is called. Shared by both pools, so an env behaves
    identically in-process and in a worker. An exception drops the env."""
    t0 = time.perf_counter()
    try:
        env = envs.get(slot)
        new = env is None
        if new:
            env = envs[slot] = make()
        if cmd == "reset":
            obs, info = env.reset(seed=arg, options=options)
            res = EnvResult(observation=obs, info=info, seconds=time.perf_counter() - t0)
        else:
            obs, r, term, trunc, info = env.step(arg)
            res = EnvResult(observation=obs, reward=float(r), terminated=bool(term),
                            truncated=bool(trunc), info=info, seconds=time.perf_counter() - t0)
        if new and built is not None:
            built(slot)
        return res
    except Exception as e:
        _close_quietly(envs.pop(slot, None))
        msg = "".join(traceback.format_exception_only(type(e), e)).strip()
        return _failure("env_error", msg, time.perf_counter() - t0)


def _env_factory(env_id: str, env_kwargs: dict[str, Any], spec: Any) -> Callable[[], Any]:
    """``make_env(env_id, **env_kwargs)``, after installing the parent's registration (``spec``),
    so ids registered at runtime (tests, users' scripts) resolve in a fresh worker."""
    import functools

    import gymnasium as gym

    from agentrl.registry import load_builtin_envs, make_env

    load_builtin_envs()
    if spec is not None:
        gym.registry[env_id] = spec
    return functools.partial(make_env, env_id, **env_kwargs)


def rss_bytes(pid: int | str) -> int:
    """Resident set size of a process (``"self"`` for this one) from /proc; 0 if it vanished."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _read_rss() -> dict[int, int]:
    """Process group id -> summed RSS bytes of its members, from /proc (Linux)."""
    groups: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                pgrp = int(f.read().rpartition(")")[2].split()[2])  # comm may hold spaces
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        groups[pgrp] = groups.get(pgrp, 0) + rss_bytes(name)
    return groups


class EnvPool(Protocol):
    """What the rollout engine steps: ``num_envs`` independent env slots.

    ``reset`` and ``step`` take a batch of slots and return one `EnvResult` per slot, in order;
    a failure is a result (``error`` set, ``terminated=True``), never an exception. ``stats``
    counts ``env_error`` and ``env_timeout`` results, ``restarts`` (envs or workers rebuilt
    after a failure) and ``recycled`` (planned replacements); the trainer logs it as ``env/*``.
    """

    num_envs: int
    stats: dict[str, int]

    def reset(self, slots: list[int], seeds: list[int | None],
              options: list[dict[str, Any] | None] | None = None) -> list[EnvResult]:
        """Start an episode in each slot with its seed."""
        ...

    def step(self, slots: list[int], actions: list[str]) -> list[EnvResult]:
        """Apply one action per slot."""
        ...

    def close(self) -> None:
        """Close every env and whatever runs them; safe to call twice."""
        ...


def _spec(env_id: str) -> Any:
    """The gymnasium registration of ``env_id`` (built-ins loaded); an unknown id raises the
    registry's "unknown environment ... did you mean"."""
    import gymnasium as gym

    from agentrl.registry import load_builtin_envs, make_env

    load_builtin_envs()
    spec = gym.registry.get(env_id)
    if spec is None:
        make_env(env_id)  # raises the registry's message
    return spec


class _SlotPool:
    """What both built-in pools share: the slots' episode state, the counters, recycling
    bookkeeping and the reset/step entry points; subclasses run the requests (`_run_batch`)."""

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None, num_envs: int,
                 recycle_after: int | None) -> None:
        if num_envs < 1:
            raise ValueError("num_envs must be >= 1")
        self.spec = _spec(env_id)
        self.env_id, self.env_kwargs, self.num_envs = env_id, dict(env_kwargs or {}), num_envs
        self.recycle_after = recycle_after or 0
        self.stats = {"env_error": 0, "env_timeout": 0, "restarts": 0, "recycled": 0}
        self._active = [False] * num_envs  # mid-episode (reset done, not yet ended)
        self._closed = False

    def reset(self, slots: list[int], seeds: list[int | None],
              options: list[dict[str, Any] | None] | None = None) -> list[EnvResult]:
        """Start an episode in each slot with its seed; returns one result per slot."""
        opts = options or [None] * len(slots)
        reqs = [(s, "reset", seed, o) for s, seed, o in zip(slots, seeds, opts)]
        self._recycle(set(slots))
        out = self._run(reqs)
        for s, r in zip(slots, out):
            self._active[s] = r.error is None
            if r.error is None:
                self._started(s)
        return out

    def step(self, slots: list[int], actions: list[str]) -> list[EnvResult]:
        """Apply one action per slot; returns one result per slot."""
        out = self._run([(s, "step", a, None) for s, a in zip(slots, actions)])
        for s, r in zip(slots, out):
            self._active[s] = not (r.error or r.terminated or r.truncated)
        return out

    def close(self) -> None:
        self._closed = True
        self._active = [False] * self.num_envs

    def __enter__(self) -> _SlotPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self, reqs: list[tuple[int, str, Any, Any]]) -> list[EnvResult]:
        out = self._run_batch(reqs)
        for r in out:
            if r.error:
                self.stats[r.error] += 1
        return out

    def _run_batch(self, reqs: list[tuple[int, str, Any, Any]]) -> list[EnvResult]:
        raise NotImplementedError

    def _started(self, slot: int) -> None:
        """An episode began in ``slot`` (for recycling)."""

    def _recycle(self, resetting: set[int]) -> None:
        """Replace envs or workers past ``recycle_after`` episodes before ``resetting``."""
