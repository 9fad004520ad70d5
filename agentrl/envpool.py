"""EnvPool: a batch of env slots stepped together, with failures turned into episode endings.

The rollout engine only sees this interface:

    pool = EnvPool(env_id, env_kwargs, num_envs, mode="inprocess")
    results = pool.reset(slots=[0, 1], seeds=[7, 7])      # -> list[EnvResult]
    results = pool.step(slots=[0, 1], actions=["go east", "look"])
    pool.close()

An env that raises (or, in worker mode, dies or hangs past ``step_timeout``) yields an
`EnvResult` with ``error`` set to ``"env_error"`` / ``"env_timeout"`` and ``terminated=True``;
its slot is rebuilt before its next reset. The rollout ends that episode and carries on.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any


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


class EnvPool:
    """``num_envs`` independent env slots.

    Args:
        env_id: registered id (``agentrl/...``).
        env_kwargs: constructor arguments for every slot.
        num_envs: number of slots.
        mode: ``inprocess`` (envs live in this process; exceptions are caught, no timeout).
        step_timeout: seconds a step may take (enforced in worker modes).
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None, num_envs: int,
                 mode: str = "inprocess", step_timeout: float | None = None) -> None:
        if mode != "inprocess":
            raise ValueError(f"unknown EnvPool mode {mode!r}; available: 'inprocess'")
        self.env_id, self.env_kwargs, self.num_envs = env_id, dict(env_kwargs or {}), num_envs
        self.step_timeout = step_timeout
        self.stats = {"env_error": 0, "env_timeout": 0, "restarts": 0}
        self._envs: list[Any] = [None] * num_envs

    def _make(self) -> Any:
        from agentrl.registry import make_env

        return make_env(self.env_id, **self.env_kwargs)

    def _env(self, slot: int) -> Any:
        if self._envs[slot] is None:
            self._envs[slot] = self._make()
        return self._envs[slot]

    def _fail(self, slot: int, e: BaseException, t0: float) -> EnvResult:
        self.stats["env_error"] += 1
        self.stats["restarts"] += 1
        try:
            if self._envs[slot] is not None:
                self._envs[slot].close()
        except Exception:
            pass
        self._envs[slot] = None
        msg = "".join(traceback.format_exception_only(type(e), e)).strip()
        return EnvResult(observation="", terminated=True, error="env_error", message=msg,
                         seconds=time.perf_counter() - t0)

    def reset(self, slots: list[int], seeds: list[int | None],
              options: list[dict[str, Any] | None] | None = None) -> list[EnvResult]:
        out = []
        for i, (slot, seed) in enumerate(zip(slots, seeds)):
            t0 = time.perf_counter()
            try:
                obs, info = self._env(slot).reset(seed=seed, options=(options or [None] * len(slots))[i])
                out.append(EnvResult(observation=obs, info=info, seconds=time.perf_counter() - t0))
            except Exception as e:
                out.append(self._fail(slot, e, t0))
        return out

    def step(self, slots: list[int], actions: list[str]) -> list[EnvResult]:
        out = []
        for slot, action in zip(slots, actions):
            t0 = time.perf_counter()
            try:
                obs, r, term, trunc, info = self._env(slot).step(action)
                out.append(EnvResult(observation=obs, reward=float(r), terminated=bool(term),
                                     truncated=bool(trunc), info=info,
                                     seconds=time.perf_counter() - t0))
            except Exception as e:
                out.append(self._fail(slot, e, t0))
        return out

    def close(self) -> None:
        for e in self._envs:
            if e is not None:
                try:
                    e.close()
                except Exception:
                    pass
        self._envs = [None] * self.num_envs

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
