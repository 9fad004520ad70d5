"""`InProcessPool`: envs in this process; an exception ends that episode with ``env_error``
(nothing can interrupt a hung step, so there is no step timeout)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from agentrl.envpool.base import (
    EnvResult,
    _call,
    _close_quietly,
    _env_factory,
    _SlotPool,
    rss_bytes,
)

if TYPE_CHECKING:
    pass

class InProcessPool(_SlotPool):
    """``num_envs`` env slots in this process (see the module docstring).

    Args:
        env_id: registered id (``agentrl/...``, or any id registered in this process).
        env_kwargs: constructor arguments for every slot.
        num_envs: number of slots.
        recycle_after: replace a slot's env after this many episodes (None or 0 = never).
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None, num_envs: int, *,
                 recycle_after: int | None = None) -> None:
        super().__init__(env_id, env_kwargs, num_envs, recycle_after)
        self._make = _env_factory(env_id, self.env_kwargs, None)
        self._envs: dict[int, Any] = {}
        self._episodes = [0] * num_envs

    def memory(self) -> dict[str, int]:
        """``{"main": RSS bytes of this process}`` (empty where /proc does not exist)."""
        return {"main": rss_bytes("self")} if os.path.isdir("/proc") else {}

    def close(self) -> None:
        """Close every env. Safe to call twice."""
        for env in self._envs.values():
            _close_quietly(env)
        self._envs.clear()
        super().close()

    def _run_batch(self, reqs: list[tuple[int, str, Any, Any]]) -> list[EnvResult]:
        out = []
        for slot, cmd, arg, options in reqs:
            out.append(_call(self._envs, self._make, slot, cmd, arg, options))
            self.stats["restarts"] += out[-1].error is not None  # the env is rebuilt
        return out

    def _started(self, slot: int) -> None:
        self._episodes[slot] += 1

    def _recycle(self, resetting: set[int]) -> None:
        if not self.recycle_after:
            return
        for s in resetting:
            if self._episodes[s] >= self.recycle_after:
                _close_quietly(self._envs.pop(s, None))
                self._episodes[s] = 0
                self.stats["recycled"] += 1
