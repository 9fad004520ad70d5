"""Rank the built-in algorithms on a long-horizon task where turn-level credit should matter.

    python examples/benchmarks/rank_algorithms.py --quick             # minutes: the pipeline
    OMP_NUM_THREADS=1 nice -n 10 python examples/benchmarks/rank_algorithms.py   # full budget
    python examples/benchmarks/rank_algorithms.py --report-only --out runs/rank_algorithms

Task: TextWorld coin collector level 5 (cross five rooms, take the coin: six actions at best,
``--max-turns`` 12; a uniformly random policy succeeds in about 7% of episodes), 100 training
games, a tiny model trained from scratch with constrained decoding over the
admissible actions and a step penalty of 0.01, so a wasted move costs. Every wrong turn of a
successful episode shares its outcome: only turn-level credit (GiGPO's anchor states, PPO's
critic, EMPG's per-turn weights) can tell the two apart within an episode.

Protocol (the same for every algorithm, only ``algorithm.*`` differs):

- the same budget: ``--iterations`` x ``--groups`` x ``--group-size`` training episodes, the
  same learning rate and schedule, the same minibatches; per seed the same initial weights,
  tokenizer and training task draws;
- held-out evaluation every ``--eval-every`` iterations on ``--eval-episodes`` (>= 200) games
  of the eval split, never trained on, sampled at the rollout temperature with the trainer's
  fixed evaluation sampler seed (the same games and sampler stream for every run);
- ``--seeds`` (>= 5) independent runs per algorithm.

Reported (``<out>/table.md``, printed): per algorithm the final held-out success and the area
under the held-out curve (mean of the evaluations after iteration 0), each as mean and 95% CI
over seeds (Student t), and the paired difference to GRPO (per seed: algorithm − GRPO, then
mean and 95% t CI over seeds), with the wall time per run; ``<out>/curves.png`` has the held-out
curves (mean over seeds, 95% band). Each finished run is appended to ``<out>/results.jsonl``
at once, so an interrupted benchmark reports what it has (marked PARTIAL) and a rerun skips
the runs already there. Seeds are the outer loop: partial results hold whole seeds first.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if REPO not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, REPO)

from examples.benchmarks.compare_algorithms import (  # noqa: E402
    ALGORITHMS,
    algorithm_overrides,
    by_algorithm,
    two_panels,
)

# Two-sided 95% Student t quantiles by degrees of freedom (1..30); larger df use 1.96.
_T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def t975(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    return _T975[df - 1] if 1 <= df <= len(_T975) else 1.96


def mean_ci(xs: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t interval); half-width NaN for fewer than two values."""
    m = statistics.mean(xs)
    if len(xs) < 2:
        return m, math.nan
    return m, t975(len(xs) - 1) * statistics.stdev(xs) / math.sqrt(len(xs))


def task_overrides(a: argparse.Namespace) -> list[str]:
    """The shared task and budget (everything but ``algorithm.*`` and the seed)."""
    return [
        "env.id=agentrl/TextWorld-CoinCollector-v0",
        f"env.kwargs={{level: {a.level}, split: train, num_games: {a.train_games}}}",
        f"env.eval_kwargs={{split: eval, num_games: {a.eval_episodes}}}",
        f"env.train_seeds={a.train_games}",
        f"rollout.groups={a.groups}", f"rollout.group_size={a.group_size}",
        f"rollout.max_turns={a.max_turns}", "rollout.context=window", "rollout.history=2",
        "rollout.template=Previous actions: {last_actions}\n{observation}",
        "rollout.action_format=raw", "rollout.constrained=true", "rollout.max_new_tokens=8",
        "rollout.invalid_penalty=0.0", "rollout.step_penalty=0.01",
        "policy.model=tiny", "policy.tiny_hidden=64", "policy.tiny_layers=2",
        f"train.iterations={a.iterations}", f"train.lr={a.lr}", "train.lr_schedule=cosine",
        "train.min_lr_ratio=0.1", "train.weight_decay=0.0", "train.minibatches=2",
        "train.checkpoint_every=0", f"eval.every={a.eval_every}",
        f"eval.episodes={a.eval_episodes}", "eval.greedy=false", "eval.before_training=true",
        "log.tensorboard=false", "log.progress=false", "log.trajectories_every=0",
    ]


def run_one(name: str, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """Train one (algorithm, seed) and return its held-out curve."""
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    cfg = load_config(None, task_overrides(a) + algorithm_overrides(name, a.iterations) + [
        f"seed={seed}", f"output_dir={a.out}", f"run_name={name}-s{seed}"])
    t0 = time.perf_counter()
    res = Trainer(cfg).train()
    with open(os.path.join(res["run_dir"], "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(x) for x in f if x.strip()]
    train = [(r["iteration"], r["rollout/success_rate"]) for r in rows
             if "rollout/success_rate" in r]
    evals = []
    for tag in ["before"] + [f"iter_{i}" for i in range(a.eval_every, a.iterations, a.eval_every
                                                          or a.iterations)] + ["final"]:
        path = os.path.join(res["run_dir"], "eval", f"{tag}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                s = json.load(f)
            evals.append((s["iteration"], s["success_rate"], s["episodes"]))
    return {"algorithm": name, "seed": seed, "seconds": time.perf_counter() - t0,
            "evals": evals, "train_success": train, "run_dir": res["run_dir"],
            "budget": {k: getattr(a, k) for k in ("level", "iterations", "groups", "group_size",
                                                   "max_turns", "eval_episodes", "lr")}}


def load_results(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(x) for x in f if x.strip()]


def summarize(results: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """One row per algorithm: final success and curve area, mean ± CI, and the paired
    difference to GRPO over the seeds both have."""
    def final(r: dict[str, Any]) -> float:
        return r["evals"][-1][1]

    def area(r: dict[str, Any]) -> float:
        later = [e[1] for e in r["evals"] if e[0] > 0]
        return statistics.mean(later) if later else math.nan

    base = {r["seed"]: r for r in results if r["algorithm"] == "grpo"}
    rows = []
    for n in names:
        rs = sorted((r for r in results if r["algorithm"] == n), key=lambda r: r["seed"])
        if not rs:
            continue
        row: dict[str, Any] = {"algorithm": n, "seeds": [r["seed"] for r in rs],
                               "before": mean_ci([r["evals"][0][1] for r in rs]),
                               "final": mean_ci([final(r) for r in rs]),
                               "area": mean_ci([area(r) for r in rs]),
                               "seconds": statistics.mean(r["seconds"] for r in rs)}
        paired = [r for r in rs if r["seed"] in base]
        if n != "grpo" and paired:
            row["final_vs_grpo"] = mean_ci([final(r) - final(base[r["seed"]]) for r in paired])
            row["area_vs_grpo"] = mean_ci([area(r) - area(base[r["seed"]]) for r in paired])
            row["paired_seeds"] = len(paired)
        rows.append(row)
    return rows


def _fmt(mc: tuple[float, float] | None) -> str:
    if mc is None:
        return "—"
    m, h = mc
    return f"{m:.3f} ± {h:.3f}" if not math.isnan(h) else f"{m:.3f} (1 seed)"


def table(rows: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| algorithm | seeds | before | final success | Δ final vs GRPO | curve area "
             "| Δ area vs GRPO | s/run |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['algorithm']} | {len(r['seeds'])} | {_fmt(r['before'])} | "
                     f"{_fmt(r['final'])} | {_fmt(r.get('final_vs_grpo'))} | {_fmt(r['area'])} "
                     f"| {_fmt(r.get('area_vs_grpo'))} | {r['seconds']:.0f} |")
    lines += ["", "mean ± half-width of the 95% Student-t interval over seeds; Δ = paired per "
              "seed (same initial weights and task draws), algorithm − GRPO; curve area = mean "
              "held-out success of the evaluations after iteration 0."]
    return "\n".join(lines)


def plot(results: list[dict[str, Any]], names: list[str], path: str) -> bool:
    made = two_panels((12, 4.5))
    if made is not None:
        plt, fig, axes = made
        draw_curves(axes, results, names)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return made is not None


def draw_curves(axes: Any, results: list[dict[str, Any]], names: list[str]) -> None:
    """Held-out curves with their 95% band (left) and training success (right)."""
    for n, rs in by_algorithm(results, names):
        T = min(len(r["evals"]) for r in rs)
        xs = [rs[0]["evals"][i][0] for i in range(T)]
        stats = [mean_ci([r["evals"][i][1] for r in rs]) for i in range(T)]
        ys = [m for m, _ in stats]
        h = [0.0 if math.isnan(w) else w for _, w in stats]
        line, = axes[0].plot(xs, ys, "o-", label=f"{n} ({len(rs)} seeds)")
        axes[0].fill_between(xs, [y - w for y, w in zip(ys, h)], [y + w for y, w in zip(ys, h)],
                             color=line.get_color(), alpha=0.15)
        L = min(len(r["train_success"]) for r in rs)
        axes[1].plot([rs[0]["train_success"][i][0] for i in range(L)],
                     [statistics.mean(r["train_success"][i][1] for r in rs) for i in range(L)],
                     label=n, alpha=0.8)
    axes[0].set(title="held-out success (mean over seeds, 95% t band)", xlabel="iteration",
                ylim=(-0.02, 1.02))
    axes[1].set(title="training-episode success (mean over seeds)", xlabel="iteration",
                ylim=(-0.02, 1.02))
    axes[0].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)


def report(a: argparse.Namespace, names: list[str]) -> str:
    results = [r for r in load_results(os.path.join(a.out, "results.jsonl"))
               if r["algorithm"] in names]
    done = {(r["algorithm"], r["seed"]) for r in results}
    planned = {(n, s) for n in names for s in a.seeds}
    partial = not planned <= done
    header = (f"{'PARTIAL: ' if partial else ''}coin collector level {a.level}, "
              f"{a.iterations} iterations x {a.groups}x{a.group_size} episodes, held-out "
              f"success on {a.eval_episodes} eval games; {len(done & planned)}/{len(planned)} "
              "runs done")
    text = table(summarize(results, names), header)
    with open(os.path.join(a.out, "table.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    plot(results, names, os.path.join(a.out, "curves.png"))
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--level", type=int, default=5)
    p.add_argument("--max-turns", type=int, default=12)
    p.add_argument("--groups", type=int, default=6)
    p.add_argument("--group-size", type=int, default=6)
    p.add_argument("--iterations", type=int, default=24)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-games", type=int, default=100)
    p.add_argument("--eval-every", type=int, default=12)
    p.add_argument("--eval-episodes", type=int, default=200)
    p.add_argument("--quick", action="store_true",
                   help="tiny budget to check the pipeline (2 seeds, 3 iterations, 16 eval games)")
    p.add_argument("--report-only", action="store_true", help="summarise results.jsonl only")
    p.add_argument("--out", default="runs/rank_algorithms")
    a = p.parse_args(argv)
    if a.quick:
        a.seeds, a.iterations, a.groups, a.group_size = a.seeds[:2], 3, 2, 4
        a.eval_every, a.eval_episodes, a.train_games = 2, 16, 16
    return a


def main(argv: list[str] | None = None) -> str:
    a = parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    names = ["grpo"] + [n for n in a.algorithms if n != "grpo"]  # the reference first
    path = os.path.join(a.out, "results.jsonl")
    if not a.report_only:
        done = {(r["algorithm"], r["seed"]) for r in load_results(path)}
        for seed in a.seeds:
            for n in names:
                if (n, seed) in done:
                    continue
                r = run_one(n, seed, a)
                with open(path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(r) + "\n")
                print(f"[rank] {n} seed {seed}: held-out {r['evals'][0][1]:.3f} -> "
                      f"{r['evals'][-1][1]:.3f} ({r['seconds']:.0f} s)", flush=True)
    text = report(a, names)
    print("\n" + text)
    print(f"\ntable: {os.path.join(a.out, 'table.md')}\ncurves: {os.path.join(a.out, 'curves.png')}")
    return text


if __name__ == "__main__":
    main()
