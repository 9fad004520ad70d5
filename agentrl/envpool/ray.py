"""`RayPool`: env slots in Ray actors, placed by Ray across the nodes of a cluster.

    pool = make_pool(cfg.env, 16, ray_cfg=cfg.ray)          # env.pool=ray
    pool.reset([0, 1], [7, 7]); pool.step([0, 1], ["look", "go east"]); pool.close()

The semantics are the process pool's (`agentrl.envpool.ProcessPool`), with a Ray actor in the
place of a worker process: ``env.envs_per_worker`` slots per actor, each actor reserving
``ray.worker_cpus`` CPUs. With ``ray.worker_cpus=0`` (auto, the default) a pool sizes itself to
the CPUs free when it is built (`auto_layout`: at most half of them, so that the evaluation
pool fits beside the training pool). The pool waits for its actors to start for at most
``WORKER_START_TIMEOUT`` seconds; actors the cluster cannot place end it with a
`PlacementError` that names what does not fit, never a silent wait. Every request of a batch is submitted at once (actors step in
parallel; one actor runs its own requests in order) and each is timed from the moment its actor
could start it: ``env.step_timeout`` / ``env.reset_timeout``, and ``env.build_timeout`` for an
env's build and first request. An actor past its timeout is killed (``ray.kill``) and replaced;
that request ends its episode with ``env_timeout``, the requests queued behind it with
``env_error``. An actor that dies (its process killed, a segfault, a lost node) ends the
episodes of its slots with ``env_error`` and is replaced. An env exception ends only that
slot's episode. The rollout engine and the trainer treat these results like the process pool's:
the episode's termination reason is recorded and it is left out of the loss.

Cluster (`agentrl.config.RayConfig`): ``ray.address=""`` (default) starts a local Ray instance
with ``ray.num_cpus`` CPUs for this process and shuts it down when the last pool using it
closes; ``ray.address=auto`` (or ``host:port``) joins a running cluster (``ray start --head``
on one machine, ``ray start --address=...`` on the others), which is left running. Actors are
owned by this process: if it dies, even by SIGKILL, Ray ends them (non-detached actors share
their owner's fate), and a local instance started here goes with it.

Env code must be importable on every node (install the package there); the driver's import
path is appended to each actor's, so on one machine modules that the driver can import
(tests, scripts run from a repository) resolve as well.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentrl.envpool.base import (
    WORKER_START_TIMEOUT,
    EnvResult,
    _call,
    _close_quietly,
    _env_factory,
    _failure,
)
from agentrl.envpool.process import CLOSE_GRACE, _WorkerSlots

if TYPE_CHECKING:
    from agentrl.config import RayConfig

_RAY_HINT = "env.pool=ray needs Ray: pip install 'agentrl[ray]' (or pip install 'ray>=2.40')"

# A local instance started by this process, shared by its pools (the trainer's and the
# evaluator's) and shut down with the last of them.
_LOCAL = {"pools": 0, "started": False}
_LOCAL_LOCK = threading.Lock()


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as e:
        raise ImportError(_RAY_HINT) from e
    return ray


def connect(address: str = "", num_cpus: int = 2) -> Any:
    """Join the Ray cluster at ``address`` ("" = start a local instance with ``num_cpus``
    CPUs, unless this process is already connected); returns the ``ray`` module. Counts one
    user of a local instance (`disconnect` releases it)."""
    ray = _import_ray()
    with _LOCAL_LOCK:
        if not ray.is_initialized():
            kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=True,
                                      namespace="agentrl")
            if address:
                _check_reachable(address)
                ray.init(address=address, **kw)
            else:
                # The environment variable keeps Ray from joining a cluster it finds running
                # (RAY_ADDRESS, or a head started on this machine): "" means a private one.
                ray.init(address="local", num_cpus=num_cpus, **kw)
                _LOCAL["started"] = True
        _LOCAL["pools"] += 1
    return ray


class ClusterError(ConnectionError):
    """No Ray cluster answers at ``ray.address`` (a start-up error: exit status 2)."""

    exit_code = 2


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Raise `ClusterError` unless a Ray cluster answers at ``address`` (``auto``, or
    ``host:port``; ``RAY_ADDRESS`` wins, as in Ray): ``ray.init`` itself would retry a dead
    address forever. Ray client addresses (``ray://``) are left to Ray."""
    import socket

    if address.startswith("ray://") or os.environ.get("RAY_ADDRESS", "").startswith("ray://"):
        return
    fix = ("start one (`ray start --head --port=6379`, then `ray start --address=HEAD:6379` on "
           "the other machines), or set ray.address=\"\" for a private local instance")
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # a Ray without this helper: ray.init finds out itself
        return
    try:
        found = canonicalize_bootstrap_address(address)
    except ConnectionError:  # ``auto`` with no cluster running on this machine
        raise ClusterError(f"ray.address={address}: no running Ray cluster found; {fix}"
                           ) from None
    if not found:
        return
    host, _, port = found.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ClusterError(f"ray.address={address}: no Ray cluster answers at {found} "
                           f"({type(e).__name__}: {e}); {fix}") from None


def disconnect() -> None:
    """Release one user of the Ray connection; the last one shuts a local instance down."""
    ray = _import_ray()
    with _LOCAL_LOCK:
        _LOCAL["pools"] = max(0, _LOCAL["pools"] - 1)
        if _LOCAL["pools"] == 0 and _LOCAL["started"] and ray.is_initialized():
            ray.shutdown()
            _LOCAL["started"] = False


class PlacementError(ValueError):
    """Env actors that the Ray cluster cannot hold (a start-up error: exit status 2)."""

    exit_code = 2


def auto_layout(num_envs: int, envs_per_worker: int, free: float, total: float,
                ranks: int = 1) -> tuple[int, float]:
    """(envs per actor, CPUs per actor) with ``ray.worker_cpus=0`` (auto): a pool takes at most
    half of the CPUs ``free`` now, split among ``ranks`` torchrun ranks joining one cluster, so
    that the evaluation pool, built after the training pool, fits beside it. Actors reserve
    1 CPU each while the share holds them, with at least ``envs_per_worker`` envs each;
    envs are packed into fewer actors when it does not, down to one actor reserving a
    fraction of a CPU (Ray's resolution: 1e-4)."""
    share = free / (2 * max(1, ranks))
    n = min(-(-num_envs // envs_per_worker), max(1, int(share)))
    cpus = 1.0 if n <= share else int(share / n * 10_000) / 10_000
    if cpus <= 0:
        raise PlacementError(
            f"env.pool=ray: no CPU of the Ray cluster is free for {num_envs} envs ({free:g} of "
            f"{total:g} free); add CPUs (ray.num_cpus for a local cluster) or free them")
    return -(-num_envs // n), cpus


class EnvActor:
    """The body of one Ray actor: the envs of its slots, built on first use (the Ray class is
    made from this one in `RayPool`, so importing this module does not need Ray)."""

    def __init__(self, path: list[str], blob: bytes) -> None:
        # The driver's import path after the actor's own: modules the driver imported from a
        # checkout or a test directory resolve here too on the same machine.
        sys.path.extend(p for p in path if p not in sys.path and os.path.isdir(p))
        env_id, env_kwargs, spec = pickle.loads(blob)
        self._make = _env_factory(env_id, env_kwargs, spec)
        self._envs: dict[int, Any] = {}

    def pid(self) -> int:
        """This actor's process id."""
        return os.getpid()

    def run(self, slot: int, cmd: str, arg: Any, options: Any) -> EnvResult:
        """One reset or step of ``slot`` (``agentrl.envpool.base._call``, as in a worker)."""
        return _call(self._envs, self._make, slot, cmd, arg, options)

    def close(self) -> None:
        """Close every env of this actor."""
        for env in self._envs.values():
            _close_quietly(env)
        self._envs.clear()


@dataclass
class _Actor:
    handle: Any  # the Ray actor handle
    started: float  # time.monotonic() at creation
    ready: bool = False  # it answered once (created, env module imported)
    episodes: int = 0  # successful resets since it started (recycling)


class RayPool(_WorkerSlots):
    """``num_envs`` env slots in Ray actors (see the module docstring).

    Args:
        env_id: registered id.
        env_kwargs: constructor arguments for every slot.
        num_envs: number of slots.
        step_timeout: seconds a step may take; None = no limit.
        reset_timeout: seconds a reset may take; None = ``step_timeout``.
        envs_per_worker: slots per actor (slot ``s`` lives in actor ``s // envs_per_worker``).
        recycle_after: replace an actor after this many episodes (None or 0 = never), once
            none of its slots is mid-episode.
        build_timeout: seconds for an env's build and first request (None =
            ``ENV_BUILD_TIMEOUT``); a new actor's first request also gets
            ``WORKER_START_TIMEOUT`` for the actor to start.
        ray_cfg: cluster settings (`agentrl.config.RayConfig`; None = its defaults).
    """

    where = "Ray actors"

    def __init__(self, env_id: str, env_kwargs: dict[str, Any] | None, num_envs: int, *,
                 step_timeout: float | None = None, reset_timeout: float | None = None,
                 envs_per_worker: int = 1, recycle_after: int | None = None,
                 build_timeout: float | None = None, ray_cfg: RayConfig | None = None) -> None:
        from agentrl.config import RayConfig

        rc = ray_cfg or RayConfig()
        self._connected = False
        self._ray = connect(rc.address, rc.num_cpus or os.cpu_count() or 1)
        self._connected = True
        try:
            envs_per_worker, cpus = self._layout(rc, num_envs, envs_per_worker)
            super().__init__(env_id, env_kwargs, num_envs, step_timeout, reset_timeout,
                             envs_per_worker, recycle_after, build_timeout)
        except BaseException:
            self._release()
            raise
        self.worker_cpus = cpus
        self._cls = self._ray.remote(num_cpus=cpus, max_restarts=0,
                                     max_task_retries=0)(EnvActor)
        self._path = [p or os.getcwd() for p in sys.path]  # "" is this directory
        for w in range(len(self._workers)):
            self._start(w)
        self._await_placement()

    def _cpus(self) -> tuple[float, float]:
        """(CPUs free, CPUs in all) of the cluster now."""
        free = float(self._ray.available_resources().get("CPU", 0.0))
        return free, float(self._ray.cluster_resources().get("CPU", 0.0))

    def _layout(self, rc: RayConfig, num_envs: int, envs_per_worker: int) -> tuple[int, float]:
        """(envs per actor, CPUs per actor) for ``num_envs`` envs: the configured ones when
        ``ray.worker_cpus`` is set, else `auto_layout` over the CPUs free now."""
        free, total = self._cpus()
        if rc.worker_cpus > 0:
            n = -(-num_envs // envs_per_worker)
            if n * rc.worker_cpus > total:
                raise PlacementError(
                    f"env.pool=ray: {n} env actors x ray.worker_cpus={rc.worker_cpus:g} CPUs do "
                    f"not fit the cluster's {total:g} CPUs; raise env.envs_per_worker, lower "
                    "ray.worker_cpus, or add CPUs (ray.num_cpus for a local cluster)")
            if _LOCAL["started"] and n * rc.worker_cpus > free:  # nothing else will free them
                raise PlacementError(
                    f"env.pool=ray: {n} env actors x ray.worker_cpus={rc.worker_cpus:g} CPUs do "
                    f"not fit the {free:g} of {total:g} CPUs of the local cluster still free "
                    "(the run's other env pools hold the rest); set ray.worker_cpus=0 (auto), "
                    "lower it, or raise env.envs_per_worker")
            return envs_per_worker, rc.worker_cpus
        ranks = 1 if _LOCAL["started"] else int(os.environ.get("WORLD_SIZE", "1") or 1)
        return auto_layout(num_envs, envs_per_worker, free, total, ranks)

    def _await_placement(self) -> None:
        """Wait until every actor runs (`WORKER_START_TIMEOUT` at most): an actor Ray cannot
        place, for want of CPUs, would otherwise hold its requests forever."""
        live = [a for a in self._workers if a is not None]
        refs = {a.handle.pid.remote(): a for a in live}
        ready, pending = self._ray.wait(list(refs), num_returns=len(refs),
                                        timeout=WORKER_START_TIMEOUT)
        for ref in ready:
            refs[ref].ready = True
        if not pending:
            return
        free, total = self._cpus()
        need = len(pending) * self.worker_cpus
        why = (f"they need {need:g} CPUs and the cluster has {free:g} of {total:g} free (other "
               "pools or jobs hold the rest); lower ray.worker_cpus (0 = auto), raise "
               "env.envs_per_worker, or add CPUs" if need > free else
               "the machine may be overloaded; check `ray status` and the actors' logs")
        self.close()
        raise PlacementError(
            f"env.pool=ray: {len(pending)} of {len(refs)} env actors "
            f"({self.worker_cpus:g} CPUs each) did not start within "
            f"{WORKER_START_TIMEOUT:g}s: {why}")

    # -- introspection (tests, benchmarks) ------------------------------------------------
    def actor(self, slot: int) -> Any:
        """The Ray actor handle holding ``slot``."""
        return self._workers[slot // self.envs_per_worker].handle  # type: ignore[union-attr]

    def worker_pid(self, slot: int) -> int:
        """Process id of the actor holding ``slot`` (on its node)."""
        return int(self._ray.get(self.actor(slot).pid.remote(), timeout=WORKER_START_TIMEOUT))

    def close(self) -> None:
        """Ask every actor to close its envs, wait up to `CLOSE_GRACE` seconds, kill them, and
        release the cluster (a local one stops with its last pool). Safe to call twice."""
        if self._closed:
            return
        live = [a for a in self._workers if a is not None]
        self._workers = [None] * len(self._workers)
        self._stop_workers(live)
        self._release()
        super().close()

    def __del__(self) -> None:
        try:
            if not self._closed and self._connected:
                self.close()
        except Exception:
            pass  # interpreter shutdown: Ray's own exit hook ends the actors

    # -- actors ---------------------------------------------------------------------------
    def _release(self) -> None:
        if self._connected:
            self._connected = False
            disconnect()

    def _start(self, w: int) -> None:
        self._built.difference_update(self._slots_of(w))
        handle = self._cls.options(name=None).remote(self._path, self._blob)
        self._workers[w] = _Actor(handle, time.monotonic())

    def _stop_workers(self, actors: list[_Actor]) -> None:
        refs = [a.handle.close.remote() for a in actors]
        if refs:
            self._ray.wait(refs, num_returns=len(refs), timeout=CLOSE_GRACE)
        for a in actors:
            self._ray.kill(a.handle, no_restart=True)

    def _replace(self, w: int, why: str) -> None:
        """Kill actor ``w`` and start another; its slots' next steps fail with ``why`` until
        they are reset."""
        self._ray.kill(self._workers[w].handle, no_restart=True)  # type: ignore[union-attr]
        self.stats["restarts"] += 1
        for s in self._slots_of(w):
            self._lost[s] = why
        self._start(w)

    # -- requests -------------------------------------------------------------------------
    def _limit(self, a: _Actor, slot: int, cmd: str) -> tuple[float, str]:
        """Seconds the request may take from the moment its actor can start it, and what it
        is (for the message)."""
        if slot not in self._built:
            extra = 0.0 if a.ready else WORKER_START_TIMEOUT  # a replacement starting
            return self.build_timeout + extra, f"building the env of slot {slot} (for a {cmd})"
        limit = self.reset_timeout if cmd == "reset" else self.step_timeout
        return (float("inf") if limit is None else limit), f"{cmd} of slot {slot}"

    def _run_batch(self, reqs: list[tuple[int, str, Any, Any]]) -> list[EnvResult]:
        if self._closed:
            raise RuntimeError("this EnvPool is closed; create a new one")
        out: list[EnvResult | None] = [None] * len(reqs)
        queues: dict[int, deque[tuple[int, Any]]] = {}  # actor -> (request index, ref), in order
        for i, (slot, cmd, arg, options) in enumerate(reqs):
            if cmd == "step" and slot in self._lost:
                out[i] = _failure("env_error", self._lost[slot])
                continue
            w = slot // self.envs_per_worker
            ref = self._workers[w].handle.run.remote(slot, cmd, arg, options)  # type: ignore[union-attr]
            queues.setdefault(w, deque()).append((i, ref))
        now = time.monotonic()
        deadlines = {w: now + self._limit(self._workers[w], *reqs[q[0][0]][:2])[0]  # type: ignore[arg-type]
                     for w, q in queues.items()}

        def serve(timeout: float | None) -> None:
            heads = {q[0][1]: w for w, q in queues.items()}  # each actor's oldest request
            done, _ = self._ray.wait(list(heads), num_returns=1, timeout=timeout)
            for ref in done:
                self._take(heads[ref], queues, deadlines, reqs, out)

        self._pump(queues, deadlines, reqs, out, serve)
        return out  # type: ignore[return-value]

    def _take(self, w: int, queues: dict[int, deque[tuple[int, Any]]],
              deadlines: dict[int, float], reqs: list[tuple[int, str, Any, Any]],
              out: list[EnvResult | None]) -> None:
        """Collect the finished head request of actor ``w``; a dead actor ends its queue."""
        a = self._workers[w]
        assert a is not None
        i, ref = queues[w][0]
        slot, cmd = reqs[i][0], reqs[i][1]
        try:
            res = self._ray.get(ref)
        except self._ray.exceptions.RayActorError as e:
            why = (f"env actor for slot {slot} died during {cmd} "
                   f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no details'})")
            for j, _ in queues.pop(w):
                out[j] = _failure("env_error", why)
            self._replace(w, f"lost with its actor: {why}")
            return
        except Exception as e:  # the result could not be sent back (unpicklable info)
            res = _failure("env_error", f"the env's {cmd} result could not be sent to the pool "
                           f"({type(e).__name__}: {e}); keep info values picklable")
        a.ready = True
        out[i] = res
        if res.error:
            self.stats["restarts"] += 1  # the actor rebuilds that env
            self._built.discard(slot)
        else:
            self._built.add(slot)
        queues[w].popleft()
        if not queues[w]:
            del queues[w]
            return
        nxt = reqs[queues[w][0][0]]
        deadlines[w] = time.monotonic() + self._limit(a, nxt[0], nxt[1])[0]

    def _expire(self, w: int, q: deque[tuple[int, Any]], reqs: list[tuple[int, str, Any, Any]],
                out: list[EnvResult | None]) -> None:
        a = self._workers[w]
        assert a is not None
        i = q[0][0]
        limit, what = self._limit(a, reqs[i][0], reqs[i][1])
        why = f"{what} exceeded its {limit:g}s timeout; env actor killed and replaced"
        out[i] = _failure("env_timeout", why, limit)
        for j, _ in list(q)[1:]:
            out[j] = _failure("env_error", f"lost with its actor: {why}")
        self._replace(w, f"lost with its actor: {why}")
