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

Workers get the env's registration (gymnasium ``EnvSpec``) from this process, so an env that a
user registered at runtime works in workers too, provided its entry point is a
``"pkg.module:Class"`` string or a module-level class/function (pickled by reference and imported
in the worker). A lambda or a locally defined class is rejected when the pool is built.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection as mpc
import multiprocessing.util
import os
import pickle
import signal
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from agentrl.config import EnvConfig, RayConfig

#: Seconds a new worker may take to boot (interpreter, imports, the env's module) before it
#: counts as failed. Kept apart from step/reset timeouts so a slow import on a loaded machine
#: is not mistaken for a hung env.
WORKER_START_TIMEOUT = 120.0
#: Default seconds a worker may take to build an env and serve its first request (load or
#: generate games, start a JVM: ScienceWorld starts its JVM at the first reset), as
#: ``env.build_timeout``; later requests have their own timeouts, so a slow start is not taken
#: for a hung step.
ENV_BUILD_TIMEOUT = 600.0
#: Seconds `close()` and recycling give a worker to close its envs before it is killed.
CLOSE_GRACE = 5.0

# Start method: never "fork". The parent holds torch's thread pools (and maybe a CUDA context,
# vLLM threads); forking a multi-threaded process can copy a lock held by another thread and
# deadlock the child, and CUDA cannot be used after fork. "forkserver" forks workers from a
# small single-threaded server started clean, which is as safe as "spawn" but makes replacing a
# worker cheap (no new interpreter); "spawn" is the fallback where forkserver is unavailable.
# Workers start their own helpers (ScienceWorld's JVM) after they are created, from a clean
# process, so those see no inherited locks either.
_CTX = multiprocessing.get_context(
    "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn")
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


# ------------------------------------------------------------------------------ worker side

def _isolate() -> None:
    """Make this worker the leader of its own process group, so that killing the group also
    kills helpers the env started (a JVM) and the terminal's Ctrl-C reaches only the trainer,
    which then closes the pool. On Linux, ask to be killed if the parent dies, so a trainer
    killed with SIGKILL leaves no orphaned workers."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except Exception:
            pass


def _worker_main(conn: Any, boot: tuple[list[str], dict[str, str], str], blob: bytes) -> None:
    """Worker loop: receive a list of ``(slot, cmd, arg, options)``, answer one ``(slot,
    EnvResult)`` per request as each finishes (so the pool can time each one), and
    ``("built", slot)`` just before the answer to the first request of a newly built env;
    repeat until ``None`` or the pool's end of the pipe closes."""
    _isolate()
    # A forkserver was started earlier than this pool: take the pool's current import path,
    # environment and directory, as a spawned child would.
    path, environ, cwd = boot
    sys.path[:] = path
    os.environ.clear()
    os.environ.update(environ)
    envs: dict[int, Any] = {}
    try:
        try:
            os.chdir(cwd)
            env_id, env_kwargs, spec = pickle.loads(blob)
            make = _env_factory(env_id, env_kwargs, spec)
        except BaseException as e:
            conn.send(("fatal", "".join(traceback.format_exception_only(type(e), e)).strip()))
            return
        conn.send(("ready", os.getpid()))
        while True:
            try:
                batch = conn.recv()
            except (EOFError, OSError):
                return  # the pool is gone
            if batch is None:
                return
            for slot, cmd, arg, options in batch:
                res = _call(envs, make, slot, cmd, arg, options,
                            lambda s: conn.send(("built", s)))
                try:
                    conn.send((slot, res))
                except OSError:
                    return
                except Exception as e:  # info held something that cannot be pickled
                    _close_quietly(envs.pop(slot, None))
                    conn.send((slot, _failure(
                        "env_error", f"the env's {cmd} result could not be sent to the pool "
                        f"({type(e).__name__}: {e}); keep info values picklable", res.seconds)))
    finally:
        for env in envs.values():
            _close_quietly(env)


# ------------------------------------------------------------------------------ pool side

@dataclass
class _Worker:
    proc: Any  # multiprocessing process
    conn: Any  # our end of its pipe
    started: float
    ready: bool = False
    episodes: int = 0  # successful resets since it started (recycling)


def _kill(wk: _Worker) -> None:
    """SIGKILL the worker's process group (the worker and what it started), then reap it."""
    try:
        os.killpg(wk.proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # killed before it became a group leader, or already gone
    try:
        wk.proc.kill()
    except Exception:
        pass
    wk.proc.join(timeout=10)
    wk.conn.close()


def _stop(workers: list[_Worker | None], grace: float | None = None) -> None:
    """Ask workers to close their envs, wait up to ``grace`` seconds (default `CLOSE_GRACE`)
    for all of them together, then kill what is left. Reaps every one (no zombies)."""
    grace = CLOSE_GRACE if grace is None else grace
    live = [wk for wk in workers if wk is not None]
    for wk in live:
        try:
            wk.conn.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + grace
    for wk in live:
        wk.proc.join(timeout=max(0.0, deadline - time.monotonic()))
    for wk in live:
        _kill(wk)  # also clears helpers left in its process group after a clean exit


#: Priority of the exit hook that stops an unclosed pool's workers (see `ProcessPool.__init__`).
_EXIT_PRIORITY = 10


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


class _WorkerSlots(_SlotPool):
    """What the isolated pools share (`ProcessPool`; `agentrl.envpool.ray.RayPool`): slots grouped
    ``envs_per_worker`` to a worker (a process, a Ray actor), the request timeouts, the env
    registration sent to workers, the slots whose env was lost with a replaced worker, and
    recycling. Subclasses start (`_start`) and stop (`_stop_workers`) workers, objects with an
    ``episodes`` counter kept in ``self._workers``."""

    #: where envs run, for the message when an env cannot be sent there
    where = "worker processes"

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None, num_envs: int,
                 step_timeout: float | None, reset_timeout: float | None,
                 envs_per_worker: int, recycle_after: int | None,
                 build_timeout: float | None) -> None:
        if envs_per_worker < 1:
            raise ValueError("envs_per_worker must be >= 1")
        super().__init__(env_id, env_kwargs, num_envs, recycle_after)
        self.step_timeout = step_timeout
        self.reset_timeout = reset_timeout if reset_timeout is not None else step_timeout
        self.build_timeout = ENV_BUILD_TIMEOUT if build_timeout is None else build_timeout
        self.envs_per_worker = envs_per_worker
        self._lost: dict[int, str] = {}  # slot -> why its env is gone (its worker was replaced)
        self._built: set[int] = set()  # slots whose env exists in their worker, as far as known
        try:
            self._blob = pickle.dumps((env_id, self.env_kwargs, self.spec))
        except Exception as e:
            raise ValueError(
                f"{env_id}: its entry point {self.spec.entry_point!r} or kwargs cannot be sent "
                f"to {self.where} ({type(e).__name__}: {e}). Register it with a "
                "'package.module:Class' string or a module-level class, keep kwargs "
                "picklable, or use env.pool=inprocess.") from e
        self._workers: list[Any] = [None] * -(-num_envs // envs_per_worker)

    def _start(self, w: int) -> None:
        """Start worker ``w`` (replacing what ``self._workers[w]`` held)."""
        raise NotImplementedError

    def _stop_workers(self, old: list[Any]) -> None:
        """Stop these (replaced) workers."""
        raise NotImplementedError

    def _started(self, slot: int) -> None:
        self._lost.pop(slot, None)
        self._workers[slot // self.envs_per_worker].episodes += 1

    def _recycle(self, resetting: set[int]) -> None:
        if not self.recycle_after:
            return
        old = []
        for w, wk in enumerate(self._workers):
            busy = [s for s in self._slots_of(w) if self._active[s] and s not in resetting]
            if wk is not None and wk.episodes >= self.recycle_after and not busy:
                old.append(wk)
                self._start(w)
        self._stop_workers(old)
        self.stats["recycled"] += len(old)

    def _slots_of(self, w: int) -> range:
        return range(w * self.envs_per_worker, min((w + 1) * self.envs_per_worker, self.num_envs))

    def _replace(self, w: int, why: str) -> None:
        """Kill worker ``w`` and start another; its slots' steps fail with ``why`` until reset."""
        raise NotImplementedError

    def _expire(self, w: int, q: Any, reqs: list[tuple[int, str, Any, Any]],
                out: list[EnvResult | None]) -> None:
        """Worker ``w`` ran past the deadline of its first queued request ``q[0]``."""
        raise NotImplementedError

    def _pump(self, queues: dict[int, Any], deadlines: dict[int, float],
              reqs: list[tuple[int, str, Any, Any]], out: list[EnvResult | None],
              serve: Callable[[float | None], None]) -> None:
        """Until every worker's queue of requests is answered: ``serve(timeout)`` waits up to
        ``timeout`` seconds (None = no limit) for answers and takes them; a worker past its
        deadline expires (`_expire`). Interrupted (Ctrl-C) or fatal: answers still in flight
        would be read by the next batch as its own, so workers with pending requests are
        replaced."""
        try:
            while queues:
                wait = min(deadlines[w] for w in queues) - time.monotonic()
                serve(None if wait == float("inf") else max(wait, 0))
                now = time.monotonic()
                for w in [w for w in queues if deadlines[w] <= now]:
                    self._expire(w, queues.pop(w), reqs, out)
        except BaseException:
            for w in list(queues):
                if not self._closed:
                    self._replace(w, "the pool was interrupted while this env was running")
            raise


class ProcessPool(_WorkerSlots):
    """``num_envs`` env slots in worker processes (see the module docstring).

    Args:
        env_id: registered id (``agentrl/...``, or any id registered in this process).
        env_kwargs: constructor arguments for every slot.
        num_envs: number of slots.
        step_timeout: seconds a step may take; None = no limit.
        reset_timeout: seconds a reset may take; None = ``step_timeout``. Building the env in a
            worker (first use, or after a failure) and that env's first request have their own
            limit, ``build_timeout``.
        envs_per_worker: slots per worker process (slot ``s`` lives in worker
            ``s // envs_per_worker``); a crash or timeout ends every episode in that worker.
        recycle_after: replace a worker after this many episodes, to bound memory leaks; None
            or 0 = never. A worker is recycled at a reset, once none of its other slots is
            mid-episode.
        build_timeout: seconds a worker may take to build an env and serve its first request
            (None = `ENV_BUILD_TIMEOUT`).
    """

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None, num_envs: int, *,
                 step_timeout: float | None = None, reset_timeout: float | None = None,
                 envs_per_worker: int = 1, recycle_after: int | None = None,
                 build_timeout: float | None = None) -> None:
        super().__init__(env_id, env_kwargs, num_envs, step_timeout, reset_timeout,
                         envs_per_worker, recycle_after, build_timeout)
        for w in range(len(self._workers)):
            self._start(w)
        # Stops the workers when an unclosed pool is garbage-collected or the interpreter
        # exits; holds the worker list, not the pool. Workers are not daemons (a daemon
        # process may not start children, and envs do: TextWorld's game generator uses a
        # process pool), so at exit multiprocessing joins them, and would wait forever on a
        # hung one. multiprocessing runs finalizers that have an exit priority before that
        # join, whatever the order of atexit hooks; `weakref.finalize` and a plain atexit
        # hook give no such guarantee (weakref's exit hook disables finalizers it has not
        # run, and multiprocessing moves its own hook to the front when it sets up logging).
        self._finalizer = multiprocessing.util.Finalize(
            self, _stop, args=(self._workers,), exitpriority=_EXIT_PRIORITY)

    def memory(self) -> dict[str, int]:
        """Resident memory in bytes, ``{"worker<i>": ...}``, where worker ``i`` holds slots
        ``[i*envs_per_worker, (i+1)*envs_per_worker)`` and its figure includes the processes it
        started (its process group, e.g. a JVM). Read from /proc; empty where it does not
        exist."""
        if not os.path.isdir("/proc"):
            return {}
        groups = _read_rss()
        return {f"worker{w}": groups.get(wk.proc.pid, 0)
                for w, wk in enumerate(self._workers) if wk is not None}

    def worker_pid(self, slot: int) -> int:
        """Process id of the worker holding ``slot``."""
        return self._workers[slot // self.envs_per_worker].proc.pid  # type: ignore[union-attr]

    def close(self) -> None:
        """Stop every worker (killing hung ones after `CLOSE_GRACE` seconds) and reap them.
        Safe to call twice."""
        if not self._closed:
            self._finalizer()  # runs _stop once; a no-op afterwards
        super().close()

    def _stop_workers(self, old: list[Any]) -> None:
        _stop(old)

    def _run_batch(self, reqs: list[tuple[int, str, Any, Any]]) -> list[EnvResult]:
        if self._closed:
            raise RuntimeError("this EnvPool is closed; create a new one")
        return self._gather(reqs)

    def _start(self, w: int) -> None:
        self._built.difference_update(self._slots_of(w))
        ours, theirs = _CTX.Pipe()
        boot = (list(sys.path), dict(os.environ), os.getcwd())
        proc = _CTX.Process(target=_worker_main, args=(theirs, boot, self._blob),
                            name=f"agentrl-env-{self.env_id}-{w}", daemon=False)
        proc.start()
        theirs.close()  # only the worker holds its end, so its death reads as EOF here
        self._workers[w] = _Worker(proc, ours, started=time.monotonic())

    def _replace(self, w: int, why: str) -> None:
        """Kill worker ``w`` and start a new one; its slots' envs are gone, so their next step
        fails with ``why`` until they are reset."""
        _kill(self._workers[w])  # type: ignore[arg-type]
        self.stats["restarts"] += 1
        for s in self._slots_of(w):
            self._lost[s] = why
        self._start(w)

    def _deadline(self, wk: _Worker, req: tuple[int, str, Any, Any], now: float) -> float:
        slot, cmd = req[0], req[1]
        if not wk.ready:
            return wk.started + WORKER_START_TIMEOUT
        if slot not in self._built:  # a new env: its build and first request ("built" after)
            return now + self.build_timeout
        limit = self.reset_timeout if cmd == "reset" else self.step_timeout
        return now + limit if limit is not None else float("inf")

    def _gather(self, reqs: list[tuple[int, str, Any, Any]]) -> list[EnvResult]:
        """Send each worker its share of the batch, then collect results as they come, timing
        each request from the moment its worker could start it."""
        out: list[EnvResult | None] = [None] * len(reqs)
        queues: dict[int, deque[int]] = {}  # worker -> request indices, in the order sent
        for i, (slot, cmd, _, _) in enumerate(reqs):
            if cmd == "step" and slot in self._lost:
                out[i] = _failure("env_error", self._lost[slot])
            else:
                queues.setdefault(slot // self.envs_per_worker, deque()).append(i)
        now = time.monotonic()
        deadlines = {}
        for w, q in queues.items():
            wk = self._workers[w]
            try:
                wk.conn.send([reqs[i] for i in q])  # type: ignore[union-attr]
            except OSError:
                pass  # a dead worker shows up below as EOF on its pipe
            deadlines[w] = self._deadline(wk, reqs[q[0]], now)  # type: ignore[arg-type]

        def serve(timeout: float | None) -> None:
            by_handle = {}
            for w in queues:
                wk = self._workers[w]
                by_handle[wk.conn] = by_handle[wk.proc.sentinel] = w
            for w in {by_handle[h] for h in mpc.wait(list(by_handle), timeout)}:
                self._drain(w, queues, deadlines, reqs, out)

        self._pump(queues, deadlines, reqs, out, serve)
        return out  # type: ignore[return-value]

    def _drain(self, w: int, queues: dict[int, deque[int]], deadlines: dict[int, float],
               reqs: list[tuple[int, str, Any, Any]], out: list[EnvResult | None]) -> None:
        wk = self._workers[w]
        assert wk is not None
        eof = False
        try:
            while w in queues and wk.conn.poll():
                msg = wk.conn.recv()
                q = queues[w]
                if msg[0] == "fatal":
                    self.close()
                    raise RuntimeError(
                        f"env worker for {self.env_id} could not load the env: {msg[1]}. The "
                        "entry point must be importable in a fresh process: register it as "
                        "'package.module:Class' from an installed module, or use "
                        "env.pool=inprocess.")
                if msg[0] == "ready":
                    wk.ready = True
                elif msg[0] == "built":
                    self._built.add(msg[1])
                else:
                    i = q.popleft()
                    out[i] = msg[1]
                    if msg[1].error:
                        self.stats["restarts"] += 1  # the worker rebuilds that env
                        self._built.discard(msg[0])
                    else:
                        self._built.add(msg[0])
                    if not q:
                        del queues[w]
                        return
                deadlines[w] = self._deadline(wk, reqs[q[0]], time.monotonic())
        except (EOFError, OSError):
            eof = True  # its end of the pipe closed: it died
        if w in queues and (eof or not wk.proc.is_alive()):
            self._died(w, queues.pop(w), reqs, out)

    def _died(self, w: int, q: deque[int], reqs: list[tuple[int, str, Any, Any]],
              out: list[EnvResult | None]) -> None:
        wk = self._workers[w]
        assert wk is not None
        wk.proc.join(timeout=5)
        code = wk.proc.exitcode
        how = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
               else f"exit code {code}")
        slot, cmd = reqs[q[0]][0], reqs[q[0]][1]
        why = f"env worker (pid {wk.proc.pid}) died ({how}) during {cmd} of slot {slot}"
        for i in q:
            out[i] = _failure("env_error", why)
        self._replace(w, f"lost with its worker: {why}")

    def _expire(self, w: int, q: deque[int], reqs: list[tuple[int, str, Any, Any]],
                out: list[EnvResult | None]) -> None:
        wk = self._workers[w]
        assert wk is not None
        slot, cmd = reqs[q[0]][0], reqs[q[0]][1]
        if not wk.ready:
            why = (f"env worker (pid {wk.proc.pid}) did not start within "
                   f"{WORKER_START_TIMEOUT:.0f}s")
            for i in q:
                out[i] = _failure("env_error", why)
        else:
            if slot not in self._built:
                limit = self.build_timeout
                what = f"building the env of slot {slot} (for a {cmd})"
            else:
                limit = self.reset_timeout if cmd == "reset" else self.step_timeout
                what = f"{cmd} of slot {slot}"
            why = (f"{what} exceeded its {limit}s timeout; env worker "
                   f"(pid {wk.proc.pid}) killed and replaced")
            out[q[0]] = _failure("env_timeout", why, float(limit or 0.0))
            for i in list(q)[1:]:
                out[i] = _failure("env_error", f"lost with its worker: {why}")
        self._replace(w, f"lost with its worker: {why}")


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
    import importlib

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
    raise ValueError(f"env.pool={kind!r}: use auto, inprocess, process, ray or "
                     "'pkg.module:Class'")
