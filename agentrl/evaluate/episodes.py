"""The numbers of an evaluation: `evaluate` plays fixed held-out seeds through a rollout engine
(the trainer's in-loop evaluation, ``runs/x/eval/*.json``) and `summarize` turns episodes into
success rates per task type with 95% intervals, pass@k, returns and termination reasons."""

from __future__ import annotations

import math
from typing import Any

from agentrl.evaluate.games import (
    game_rates,
)
from agentrl.rollout.engine import RolloutEngine
from agentrl.run.metrics import rollout_metrics, wilson_interval
from agentrl.types import Trajectory

#: The trainer's eval sampler seed is this plus ``eval.seed_start``; the CLI uses the same.
EVAL_SAMPLER_SEED = 10_007


def _std(xs: list[float]) -> float:
    """Sample standard deviation (0 for fewer than two values)."""
    if len(xs) < 2:
        return 0.0
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _repeat_means(trajs: list[Trajectory], repeats: int, value: Any) -> list[float]:
    """Mean of ``value(t)`` (``None`` values left out) in each repeat that has any."""
    out: list[float] = []
    for r in range(repeats):
        xs = [v for t in trajs if t.extra.get("repeat", 0) == r and (v := value(t)) is not None]
        if xs:
            out.append(sum(xs) / len(xs))
    return out


def _rate_block(trajs: list[Trajectory], repeats: int) -> dict[str, Any]:
    """success_rate, std over repeats, Wilson ci95, pass@k and n for one set of episodes.

    Each trajectory carries its repeat index in ``extra["repeat"]``.
    """
    n = len(trajs)
    s = sum(t.success for t in trajs)
    per_rep = _repeat_means(trajs, repeats, lambda t: t.success)
    by_seed: dict[int, bool] = {}
    for t in trajs:
        by_seed[t.seed] = by_seed.get(t.seed, False) or t.success
    return {"success_rate": s / max(1, n), "std": _std(per_rep), "ci95": wilson_interval(s, n),
            "pass_at_k": sum(by_seed.values()) / max(1, len(by_seed)), "n": n,
            "repeat_success_rates": per_rep}


def summarize(trajs: list[Trajectory], repeats: int = 1) -> dict[str, Any]:
    """Eval summary of trajectories whose ``extra["repeat"]`` says which pass they came from.

    Keys: ``episodes``, ``success_rate``, ``std`` (over repeats), ``ci95`` (Wilson),
    ``pass_at_k`` and ``k``, ``repeat_success_rates``, ``per_task_type`` ({type: the same
    block plus ``n``}), ``turns``, ``invalid_action_rate``, ``response_length_hit_rate``,
    ``return``, ``terminations`` ({reason: share}), and ``score`` / ``score_std`` when the env
    reports a score.
    """
    block = _rate_block(trajs, repeats)
    m = rollout_metrics(trajs, "eval")
    per: dict[str, list[Trajectory]] = {}
    for t in trajs:
        per.setdefault(t.task_type or "all", []).append(t)
    summary: dict[str, Any] = {
        "episodes": block["n"], "success_rate": block["success_rate"], "ci95": block["ci95"],
        "std": block["std"], "pass_at_k": block["pass_at_k"], "k": repeats,
        "repeat_success_rates": block["repeat_success_rates"],
        "per_task_type": {k: _rate_block(v, repeats) for k, v in sorted(per.items())},
        "turns": m["eval/turns"], "invalid_action_rate": m["eval/invalid_action_rate"],
        "response_length_hit_rate": m["eval/response_length_hit_rate"],
        "return": m["eval/return"],
        "terminations": {k.split("/")[-1]: v for k, v in m.items() if "/termination/" in k},
    }
    if "eval/score" in m:
        summary["score"] = m["eval/score"]
        summary["score_std"] = _std(_repeat_means(trajs, repeats, lambda t: t.score))
    if any(t.outcome for t in trajs):  # games: win / draw / loss, overall and per seat
        summary["games"] = game_rates(trajs)
    return summary


def evaluate(engine: RolloutEngine, seeds: list[int], greedy: bool = False, repeats: int = 1,
             progress: Any = None) -> tuple[dict[str, Any], list[Trajectory]]:
    """Run ``repeats`` episodes per seed; return (`summarize` of them, trajectories). In a
    game against fixed players only the evaluated policy's own trajectories are summarized."""
    trajs: list[Trajectory] = []
    for r in range(repeats):
        run = engine.run(list(seeds), [f"eval-{s}" for s in seeds], greedy=greedy,
                         progress=progress)
        for t in run:
            t.extra["repeat"] = r
        trajs += run
    return summarize([t for t in trajs if not t.player], repeats), trajs


def eval_line(tag: str, iteration: int, summary: dict[str, Any], seeds: int,
              greedy: bool) -> str:
    """The one line the trainer prints for an evaluation of ``seeds`` seeds: the decoding
    (sampled or greedy, which rates depend on), what was counted (episodes, or for a game its
    games and the seats the policy held), win and win-or-draw for games, and a warning when the
    policy held every seat (self-play), where success cannot show learning."""
    lo, hi = summary["ci95"]
    n = summary["episodes"] // max(1, summary.get("k", 1))
    what = (f"{seeds} held-out episodes" if n == seeds else
            f"{seeds} held-out games ({n} seats played by the policy)")
    line = (f"eval ({tag}, iteration {iteration}, {'greedy' if greedy else 'sampled'}): success "
            f"{summary['success_rate']:.3f} (95% CI {lo:.2f}-{hi:.2f}) over {what}, "
            f"{summary['turns']:.1f} turns")
    g = summary.get("games", {}).get("all")
    if g:
        line += f"; win {g['win']:.3f}, win or draw {g['win_or_draw']:.3f}"
    if n > seeds:
        line += ("; self-play: the policy holds every seat, so its success cannot show learning "
                 "(measure it against an opponent: agentrl eval RUN --opponent CHECKPOINT, or "
                 "env.kwargs={opponent: random} for games that have one)")
    return line
