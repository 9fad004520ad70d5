"""`ProcessPool`: envs in worker processes, ``envs_per_worker`` slots each, killed and
replaced when a step runs past its timeout or the worker dies (see `agentrl.envpool`)."""

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentrl.envpool.base import (
    ENV_BUILD_TIMEOUT,
    WORKER_START_TIMEOUT,
    EnvResult,
    _call,
    _close_quietly,
    _env_factory,
    _failure,
    _read_rss,
    _SlotPool,
)
from agentrl.progress import WORKER_ENV

if TYPE_CHECKING:
    pass

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
        boot = (list(sys.path), {**os.environ, WORKER_ENV: str(w)}, os.getcwd())
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
