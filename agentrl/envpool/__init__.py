"""Env pools: N env slots stepped as a batch, with failures turned into episode endings.

The rollout engine only sees the `EnvPool` protocol:

    pool = make_pool(cfg.env, num_envs)                   # per the config's env: section
    results = pool.reset(slots=[0, 1], seeds=[7, 7])      # -> list[EnvResult]
    results = pool.step(slots=[0, 1], actions=["go east", "look"])
    pool.stats                                            # failure counters
    pool.close()

Implementations:

- `InProcessPool`: envs live in this process. An exception ends that episode with
  ``env_error``; nothing can interrupt a hung step, so there is no step timeout.
- `ThreadPool` (``env.pool=thread``): envs live in this process and every request of a batch
  runs on its own thread (``env.threads`` at once), for envs that wait on a network, a tool or
  a remote simulator: their waits overlap. Deadlines as the process pool's; a hung request's
  thread is abandoned with its env.
- `ProcessPool`: envs live in worker processes, ``envs_per_worker`` slots each. A batch is sent
  to every worker first and gathered afterwards, so workers step in parallel. A worker that runs
  past ``step_timeout``/``reset_timeout`` is killed (with everything it started, e.g. a JVM)
  and replaced: that slot's result is ``env_timeout``. A worker that dies (segfault,
  ``os._exit``, OOM killer) ends its slots with ``env_error`` and is replaced. Building an env in
  a worker and its first request (loading or generating games; starting a JVM, which
  ScienceWorld does at its first reset) have their own, longer limit (``build_timeout``), so a
  slow start does not count as a hung reset. An env exception inside a worker ends only that
  slot's episode; the worker keeps running.
- `agentrl.envpool.ray.RayPool` (``env.pool=ray``): the process pool's semantics with Ray actors in
  place of worker processes, placed across the nodes of a Ray cluster (the ``ray:`` section).
- your own: ``env.pool=pkg.module:Class``, built as ``Class(env_id, env_kwargs, num_envs,
  env_cfg)`` (``examples/custom_pool.py`` is a thread pool in one file).

`make_pool` builds the one ``env.pool`` names; ``auto`` (the default) follows the env's
registration: envs registered with ``isolate=True`` (ScienceWorld's JVM, ALFWorld's planner) run
in worker processes, the others in this process.

Every failure result has ``terminated=True`` and a ``message``; the env is rebuilt before the
slot's next reset, and the run goes on. ``recycle_after`` replaces an env (in-process) or a
worker after that many episodes, to bound slow memory leaks in env code.

The package: `base` (the protocol, `EnvResult`, slot bookkeeping), `inprocess`, `threads`, `process`
(worker processes) and `ray` (Ray actors, imported only for ``env.pool=ray``).

Workers get the env's registration (gymnasium ``EnvSpec``) from this process, so an env that a
user registered at runtime works in workers too, provided its entry point is a
``"pkg.module:Class"`` string or a module-level class/function (pickled by reference and imported
in the worker). A lambda or a locally defined class is rejected when the pool is built.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from agentrl.envpool.base import (
    ENV_BUILD_TIMEOUT,
    WORKER_START_TIMEOUT,
    EnvPool,
    EnvResult,
    rss_bytes,
)
from agentrl.envpool.inprocess import InProcessPool
from agentrl.envpool.process import CLOSE_GRACE, ProcessPool
from agentrl.envpool.threads import ThreadPool

if TYPE_CHECKING:
    from agentrl.config import EnvConfig, RayConfig


# ------------------------------------------------------------------------------ the factory

def isolated(env_id: str) -> bool:
    """Whether ``env_id`` was registered with ``isolate=True`` (``env.pool=auto`` then runs it
    in worker processes)."""
    from agentrl.registry import ENVS, load_builtin_envs

    load_builtin_envs()
    entry = ENVS.get(env_id)
    return bool(entry and entry.isolate)


#: ``env.pool=ray``: the Ray actor pool (a subclass of this module's slot pool)
RAY_POOL = "agentrl.envpool.ray:RayPool"


def _load_pool(entry_point: str) -> Any:

    mod, _, attr = entry_point.partition(":")
    return getattr(importlib.import_module(mod), attr)


def make_pool(env_cfg: EnvConfig, num_envs: int, env_kwargs: dict[str, Any] | None = None,
              ray_cfg: RayConfig | None = None) -> EnvPool:
    """The pool ``env_cfg.pool`` names, with ``num_envs`` slots of env ``env_cfg.id`` built with
    ``env_kwargs`` (default ``env_cfg.kwargs``; evaluation passes its own split); ``ray_cfg``
    is the cluster of ``env.pool=ray`` (None = a local one with the defaults)."""
    kwargs = dict(env_cfg.kwargs if env_kwargs is None else env_kwargs)
    kind = env_cfg.pool
    if kind == "auto":
        kind = "process" if isolated(env_cfg.id) else "inprocess"
    if kind == "inprocess":
        return InProcessPool(env_cfg.id, kwargs, num_envs, recycle_after=env_cfg.recycle_after)
    if kind == "thread":
        return ThreadPool(env_cfg.id, kwargs, num_envs, threads=env_cfg.threads or None,
                          step_timeout=env_cfg.step_timeout,
                          reset_timeout=env_cfg.reset_timeout,
                          build_timeout=env_cfg.build_timeout,
                          recycle_after=env_cfg.recycle_after)
    if kind == "process":
        return ProcessPool(env_cfg.id, kwargs, num_envs, step_timeout=env_cfg.step_timeout,
                           reset_timeout=env_cfg.reset_timeout,
                           envs_per_worker=env_cfg.envs_per_worker,
                           recycle_after=env_cfg.recycle_after,
                           build_timeout=env_cfg.build_timeout)
    if kind == "ray":  # by name, as a backend: Ray is an extra, and seconds to import
        return _load_pool(RAY_POOL)(
            env_cfg.id, kwargs, num_envs, step_timeout=env_cfg.step_timeout,
            reset_timeout=env_cfg.reset_timeout, envs_per_worker=env_cfg.envs_per_worker,
            recycle_after=env_cfg.recycle_after, build_timeout=env_cfg.build_timeout,
            ray_cfg=ray_cfg)
    if ":" in kind:  # a user's pool, loaded by name
        return _load_pool(kind)(env_cfg.id, kwargs, num_envs, env_cfg)
    raise ValueError(f"env.pool={kind!r}: use auto, inprocess, thread, process, ray or "
                     "'pkg.module:Class'")


__all__ = ["CLOSE_GRACE", "ENV_BUILD_TIMEOUT", "WORKER_START_TIMEOUT", "EnvPool", "EnvResult",
           "InProcessPool", "ProcessPool", "ThreadPool", "isolated", "make_pool", "rss_bytes"]
