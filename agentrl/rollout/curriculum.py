"""Which training tasks an iteration draws: uniformly (the default), or by their recent success.

    env: {curriculum: {kind: success}}

``kind: success`` keeps a smoothed success rate per training task (seed), updated from every
finished episode, and draws the groups of an iteration with weight p (1 - p) + ``floor``: tasks
near the middle (sometimes solved) carry the most learning signal for group-relative
algorithms and are drawn most; a task never tried starts at ``prior`` (0.5, the most likely);
failures keep the ``floor`` weight, so they are revisited. A task whose smoothed success
reaches ``retire_at`` after ``min_attempts`` episodes retires: retired tasks share only
``revisit`` of the draws (and un-retire when they fail again). The sampler's state (per-task
statistics) is checkpointed with the run, so a resumed run draws what an uninterrupted one
would. This works beside the algorithms' own group filtering (``filter_groups``), which drops
zero-variance groups after they are played; the curriculum avoids drawing them.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable
from typing import Any

from agentrl.config import CurriculumConfig


class TaskSampler:
    """Draws training seeds from ``[0, num_tasks)`` per `CurriculumConfig`."""

    def __init__(self, cfg: CurriculumConfig, num_tasks: int) -> None:
        self.cfg, self.num_tasks = cfg, num_tasks
        self.rate: dict[int, float] = {}  # smoothed success per seed tried
        self.attempts: dict[int, int] = {}
        # asynchronous rollouts draw in their own thread while the trainer updates
        self._lock = threading.Lock()

    # -- drawing ----------------------------------------------------------------------------
    def weight(self, seed: int) -> float:
        """Draw weight of an active task: p (1 - p) + floor."""
        p = self.rate.get(seed, self.cfg.prior)
        return p * (1.0 - p) + self.cfg.floor

    def retired(self, seed: int) -> bool:
        c = self.cfg
        return self.attempts.get(seed, 0) >= c.min_attempts and \
            self.rate.get(seed, 0.0) >= c.retire_at

    def draw(self, n: int, rng: random.Random) -> list[int]:
        """``n`` seeds (distinct while there are enough tasks)."""
        if self.cfg.kind == "uniform":
            return [rng.randrange(self.num_tasks) for _ in range(n)]
        with self._lock:
            return self._draw(n, rng)

    def _draw(self, n: int, rng: random.Random) -> list[int]:
        out: list[int] = []
        for _ in range(n):
            retired = [s for s in self.attempts if self.retired(s) and s not in out]
            use_retired = retired and rng.random() < self.cfg.revisit
            if use_retired:
                out.append(rng.choice(sorted(retired)))
                continue
            out.append(self._draw_active(rng, set(out) | set(retired)))
        return out

    def _draw_active(self, rng: random.Random, exclude: set[int]) -> int:
        """One active task by weight; untried tasks together weigh as many as they are."""
        tried = [s for s in sorted(self.attempts) if s not in exclude]
        untried = self.num_tasks - len(self.attempts) - len(
            [s for s in exclude if s not in self.attempts])
        w_untried = max(untried, 0) * self.weight(-1)  # every untried task has the prior
        weights = [self.weight(s) for s in tried]
        total = sum(weights) + w_untried
        if total <= 0:
            return rng.randrange(self.num_tasks)
        x = rng.random() * total
        for s, w in zip(tried, weights):
            x -= w
            if x < 0:
                return s
        for _ in range(1000):  # an untried seed, uniformly
            s = rng.randrange(self.num_tasks)
            if s not in self.attempts and s not in exclude:
                return s
        return rng.randrange(self.num_tasks)

    # -- learning from outcomes --------------------------------------------------------------
    def update(self, outcomes: Iterable[tuple[int, bool]]) -> None:
        """Fold in finished episodes: (seed, success)."""
        d = self.cfg.decay
        with self._lock:
            for seed, success in outcomes:
                p = self.rate.get(seed, self.cfg.prior)
                self.rate[seed] = d * p + (1 - d) * float(success)
                self.attempts[seed] = self.attempts.get(seed, 0) + 1

    def metrics(self) -> dict[str, float]:
        """``curriculum/*``: tasks tried, retired, and the mean smoothed success of those
        tried (for the training log)."""
        if self.cfg.kind == "uniform":
            return {}
        tried = len(self.attempts)
        return {"curriculum/tasks_tried": float(tried),
                "curriculum/tasks_retired": float(sum(self.retired(s) for s in self.attempts)),
                "curriculum/mean_success": sum(self.rate.values()) / max(1, tried)}

    def state_dict(self) -> dict[str, Any]:
        return {"rate": {str(k): v for k, v in self.rate.items()},
                "attempts": {str(k): v for k, v in self.attempts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rate = {int(k): float(v) for k, v in state.get("rate", {}).items()}
        self.attempts = {int(k): int(v) for k, v in state.get("attempts", {}).items()}
