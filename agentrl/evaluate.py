"""Evaluation: success rates over fixed held-out seeds, per task type, with 95% intervals."""

from __future__ import annotations

import math
from typing import Any

from agentrl.metrics import rollout_metrics, wilson_interval
from agentrl.rollout import RolloutEngine
from agentrl.types import Trajectory


def evaluate(engine: RolloutEngine, seeds: list[int], greedy: bool = False, repeats: int = 1,
             progress: Any = None) -> tuple[dict[str, Any], list[Trajectory]]:
    """Run ``repeats`` episodes per seed; return (summary, trajectories).

    Summary keys: ``success_rate``, ``ci95`` (Wilson), ``std`` over repeats, ``per_task_type``
    ({type: {success_rate, ci95, n}}), ``pass_at_k`` (any success among the repeats of a
    seed), ``turns``, ``invalid_action_rate``, ``score`` (if the env has one), ``terminations``.
    """
    trajs: list[Trajectory] = []
    rates = []
    for _ in range(repeats):
        run = engine.run(list(seeds), [f"eval-{s}" for s in seeds], greedy=greedy,
                         progress=progress)
        rates.append(sum(t.success for t in run) / max(1, len(run)))
        trajs += run
    n = len(trajs)
    s = sum(t.success for t in trajs)
    lo, hi = wilson_interval(s, n)
    m = rollout_metrics(trajs, "eval")
    per: dict[str, dict[str, Any]] = {}
    for t in trajs:
        per.setdefault(t.task_type or "all", []).append(t.success)  # type: ignore[arg-type]
    per_type = {k: {"success_rate": sum(v) / len(v), "ci95": wilson_interval(sum(v), len(v)),
                    "n": len(v)} for k, v in per.items()}  # type: ignore[union-attr]
    by_seed: dict[int, bool] = {}
    for t in trajs:
        by_seed[t.seed] = by_seed.get(t.seed, False) or t.success
    mean = sum(rates) / len(rates)
    summary = {
        "episodes": n, "success_rate": s / max(1, n), "ci95": (lo, hi),
        "std": math.sqrt(sum((x - mean) ** 2 for x in rates) / (len(rates) - 1)) if len(rates) > 1 else 0.0,
        "per_task_type": per_type,
        "pass_at_k": sum(by_seed.values()) / max(1, len(by_seed)), "k": repeats,
        "turns": m["eval/turns"], "invalid_action_rate": m["eval/invalid_action_rate"],
        "return": m["eval/return"],
        "terminations": {k.split("/")[-1]: v for k, v in m.items() if "/termination/" in k},
    }
    if "eval/score" in m:
        summary["score"] = m["eval/score"]
    return summary, trajs
