"""Asynchronous training: the next iterations' rollouts run while the learner updates.

``train.max_staleness = k >= 1`` (0, the default, is the synchronous loop, untouched):

    rollout thread:  batch j, sampled with weights of version v >= j - k  -> queue
    trainer thread:  batch i from the queue -> score, credit, update -> version i + 1 -> publish

Versions count iterations: the initial weights are version 0, the weights after iteration
``i``'s update are version ``i + 1``, and the learner trains batch ``i`` at version ``i``. Batch ``j`` starts only once version ``j - k`` has been published,
so no turn trained at version ``i`` was sampled by weights older than ``i - k``: with k = 1,
batch ``i + 1`` is collected while the learner trains on batch ``i``. Every turn records the
version that sampled it (``Turn.policy_version``); each batch logs its staleness
(``rollout/staleness_mean``, ``rollout/staleness_max``: learner version minus turn version) and
how long the learner waited for it (``perf/seconds_wait_rollout``).

Weights. Generation runs on its own copy of the model (the ``hf`` backend, built with
``make_policy`` on a deep copy), so the learner can change its weights mid-rollout. After each
update the trainer publishes a snapshot of the learner's state dict (copied in the trainer's
thread, so a half-written optimizer step is never read); the rollout thread loads the newest
snapshot before each batch, or, with ``train.partial_rollouts``, before each turn: an episode
then spans versions, each turn tagged with its own. Algorithms declare what they accept
(``Algorithm.async_rollouts``, checked by the config): GiGPO needs each group sampled by one
version (its anchor-state groups compare actions taken from one state), AEPO needs the
synchronous loop (branching re-samples by the entropy of the policy being trained).

Off-policy correction: the loss's ratio is taken against the stored sampler logprobs, i.e.
against the version that sampled the tokens (clipped like any PPO ratio); with
``train.tis_cap > 0`` the learner recomputes old logprobs under its current weights and weights
each token by the truncated ratio to the sampler's (`agentrl.learn.learner.apply_tis`), the decoupled
form. Expect ``train/logprob_mismatch`` to grow with the staleness: that is the lag, measured.

Why a thread: torch releases the GIL inside its kernels, so the rollout thread's generate and
the learner's forward/backward use two cores at once; env steps in worker processes or Ray
actors wait on pipes without the GIL. Envs stepped in this process hold the GIL while they
step. Costs: one more copy of the weights (plus a snapshot per update), and up to ``k`` batches
collected past the last iteration or a checkpoint are dropped. A resumed run restarts the
pipeline from the checkpoint's weights (its batches are not bit-identical to an uninterrupted
asynchronous run, which is itself not deterministic: where a push lands depends on timing).
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Callable
from typing import Any

import torch

from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.types import Trajectory


class _Stopped(Exception):
    """Raised inside the rollout thread to abandon a batch when the loop closes."""


class _Synced(Policy):
    """The generation backend as the rollout thread uses it: before every generate call (one
    per turn) ``before()`` runs, which stops an abandoned batch and, with partial rollouts,
    loads the newest weights."""

    def __init__(self, inner: Policy, before: Callable[[], None]) -> None:
        self.inner, self.before = inner, before
        self.tokenizer = inner.tokenizer

    @property
    def version(self) -> int:  # type: ignore[override]
        return self.inner.version

    @property
    def eos_token_id(self) -> int:
        return self.inner.eos_token_id

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: list[list[list[int]] | None] | None = None) -> list[Generation]:
        self.before()
        return self.inner.generate(prompts, sampling, candidates)


class AsyncRollouts:
    """Collects batches ahead of the learner in a thread (see the module docstring).

    Args:
        cfg: the run's config (``train.max_staleness >= 1``).
        policy: the backend the thread generates with, on its own copy of the weights
            (`agentrl.assemble.async_rollouts` builds it); `publish` loads new weights into it.
        make_engine: policy -> the engine over the training env slots (used only by the
            rollout thread from `start` on); it is given a wrapper of ``policy`` that waits
            for fresh weights before each turn.
        algorithm: supplies ``collect(engine, seeds, group_ids)``.
        tasks: iteration -> (seeds, group ids) of that iteration's episodes.
        version: the learner's version now (the checkpoint's iteration on resume).
    """

    def __init__(self, cfg: Any, policy: Policy, make_engine: Callable[[Policy], Any],
                 algorithm: Any, tasks: Callable[[int, random.Random], tuple[list[int], list[str]]],
                 version: int = 0) -> None:
        self.k = cfg.train.max_staleness
        self.partial = cfg.train.partial_rollouts
        self.last = cfg.train.iterations  # no batch at or past this iteration
        self.inner = policy
        self.inner.version = version
        self.policy = _Synced(self.inner, self._before_turn)
        self.engine = make_engine(self.policy)
        self.algorithm, self.tasks = algorithm, tasks
        # Task draws of the rollout thread: its own stream (the trainer's RNG shuffles
        # minibatches in the other thread at the same time).
        self.rng = random.Random(f"{cfg.seed}-async-tasks")
        self._cond = threading.Condition()
        self._published = version
        self._weights: Any = None
        self._stop = False
        self._queue: queue.Queue[tuple[int, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._next = version

    # -- trainer side ---------------------------------------------------------------------
    def next_batch(self, iteration: int) -> list[Trajectory]:
        """The trajectories of ``iteration`` (blocks until the rollout thread has them);
        starts the thread on the first call."""
        if self._thread is None:
            self._next = iteration
            self._thread = threading.Thread(target=self._run, args=(iteration,),
                                            name="agentrl-rollouts", daemon=True)
            self._thread.start()
        while True:
            try:
                j, item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError("the rollout thread stopped without a batch") from None
        if isinstance(item, BaseException):
            raise RuntimeError(f"asynchronous rollouts failed in batch {j}: "
                               f"{type(item).__name__}: {item}") from item
        if j != iteration:
            raise RuntimeError(f"asynchronous rollouts: expected batch {iteration}, got {j}")
        return item

    def publish(self, version: int, weights: Any) -> None:
        """The learner reached ``version``: snapshot its weights (a module or state dict) for
        the rollout thread, which loads them before its next batch (or turn)."""
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        snap = {k: v.detach().clone() for k, v in state.items()}
        with self._cond:
            self._published, self._weights = version, snap
            self._cond.notify_all()

    def metrics(self, trajs: list[Trajectory], iteration: int) -> dict[str, float]:
        """Staleness of the batch trained at learner version ``iteration``."""
        lag = [iteration - t.policy_version for tr in trajs for t in tr.turns]
        if not lag:
            return {}
        return {"rollout/staleness_mean": sum(lag) / len(lag),
                "rollout/staleness_max": float(max(lag))}

    def close(self) -> None:
        """Stop the thread (its current batch is abandoned at the next turn) and wait for it."""
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=600)
        self.inner.close()

    # -- rollout thread -------------------------------------------------------------------
    def _run(self, first: int) -> None:
        j = first
        try:
            while j < self.last:
                with self._cond:
                    self._cond.wait_for(lambda j=j: self._stop or self._published >= j - self.k)
                    if self._stop:
                        return
                self._load_newest()
                seeds, gids = self.tasks(j, self.rng)
                self._queue.put((j, self.algorithm.collect(self.engine, seeds, gids)))
                j += 1
        except _Stopped:
            return
        except BaseException as e:  # handed to the trainer, which raises it
            self._queue.put((j, e))

    def _before_turn(self) -> None:
        if self._stop:
            raise _Stopped
        if self.partial:
            self._load_newest()

    def _load_newest(self) -> None:
        with self._cond:
            version, weights = self._published, self._weights
        if version > self.inner.version and weights is not None:
            self.inner.update_weights(weights)
            self.inner.version = version
