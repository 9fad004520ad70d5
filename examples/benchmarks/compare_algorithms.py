"""Compare the built-in algorithms on one CPU task with the same seeds.

    python examples/benchmarks/compare_algorithms.py --quick            # minutes on 2 cores
    python examples/benchmarks/compare_algorithms.py --seeds 0 1 2      # the full budget

Every algorithm trains the tiny model on TextWorld coin collector (level 3) from the same
initial weights per seed, with the same train/eval games, rollout budget and learning rate;
only ``algorithm.*`` differs. The script prints a table of held-out success before and after
training (mean ± std over seeds), the policy's token entropy during training (first, middle and
last iteration), and wall time, then saves a plot of training success and entropy per iteration
(mean over seeds) to ``<out>/compare.png`` and the raw numbers to ``<out>/results.json``.

Budgets: ``--quick`` is 3 groups x 4 rollouts, 6 turns, 6 iterations, 16 eval episodes; the full
one is the slow learning tests' budget (6 x 4, 8 turns, 15 iterations, 40 eval episodes).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

from agentrl.config import load_config
from agentrl.trainer import Trainer

ALGORITHMS = ["grpo", "ppo", "gigpo", "epo", "empg", "aepo", "spear"]


def budget(quick: bool) -> tuple[list[str], int]:
    """Shared overrides and the number of iterations."""
    if quick:
        task = ["env.kwargs={level: 3, split: train, num_games: 20}",
                "env.eval_kwargs={split: eval, num_games: 20}", "env.train_seeds=20",
                "rollout.groups=3", "rollout.group_size=4", "rollout.max_turns=6",
                "eval.episodes=16"]
        return task, 6
    task = ["env.kwargs={level: 3, split: train, num_games: 40}",
            "env.eval_kwargs={split: eval, num_games: 40}", "env.train_seeds=40",
            "rollout.groups=6", "rollout.group_size=4", "rollout.max_turns=8",
            "eval.episodes=40"]
    return task, 15


def algorithm_overrides(name: str, iterations: int) -> list[str]:
    """Per-algorithm settings scaled to a short run (schedules measured in iterations)."""
    extra = {
        "ppo": ["algorithm.gamma=0.95", "algorithm.lam=0.95", "algorithm.critic_lr=3e-3"],
        "epo": [f"algorithm.phase_total={max(2, iterations)}"],
        "spear": ["algorithm.replay_size=16", f"algorithm.replay_warmup_steps={iterations // 3}",
                  f"algorithm.tool_reward_steps={iterations // 3}",
                  "algorithm.tool_reward_coef=0.02"],
    }
    return [f"algorithm.name={name}", *extra.get(name, [])]


def run_one(name: str, seed: int, quick: bool, out: str) -> dict[str, Any]:
    task, iters = budget(quick)
    cfg = load_config(None, task + algorithm_overrides(name, iters) + [
        f"seed={seed}", f"train.iterations={iters}", "train.lr=3e-3", "eval.every=0",
        "train.checkpoint_every=0", "log.tensorboard=false", "log.progress=false",
        f"output_dir={out}", f"run_name={name}-s{seed}"])
    t0 = time.perf_counter()
    res = Trainer(cfg).train()
    rows = [json.loads(x) for x in open(os.path.join(res["run_dir"], "metrics.jsonl"),
                                        encoding="utf-8")]
    rows = [r for r in rows if "train/loss" in r]
    return {"algorithm": name, "seed": seed, "before": res["before"]["success_rate"],
            "final": res["final"]["success_rate"], "seconds": time.perf_counter() - t0,
            "entropy": [r.get("train/entropy", float("nan")) for r in rows],
            "train_success": [r["rollout/success_rate"] for r in rows]}


def _ms(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{statistics.mean(xs):.3f} ± {sd:.3f}"


def table(results: list[dict[str, Any]], names: list[str]) -> str:
    head = (f"{'algorithm':<8} {'before':>15} {'final success':>15} "
            f"{'entropy first/mid/last':>24} {'s/run':>7}")
    lines = [head, "-" * len(head)]
    for n in names:
        rs = [r for r in results if r["algorithm"] == n]
        if not rs:
            continue
        T = min(len(r["entropy"]) for r in rs)
        ent = [statistics.mean(r["entropy"][i] for r in rs) for i in range(T)]
        traj = f"{ent[0]:.3f}/{ent[T // 2]:.3f}/{ent[-1]:.3f}" if T else "-"
        lines.append(f"{n:<8} {_ms([r['before'] for r in rs]):>15} "
                     f"{_ms([r['final'] for r in rs]):>15} {traj:>24} "
                     f"{statistics.mean(r['seconds'] for r in rs):>7.0f}")
    return "\n".join(lines)


def two_panels(figsize: tuple[float, float]) -> tuple[Any, Any, Any] | None:
    """(pyplot, figure, two side-by-side axes) on the Agg backend, or None (with a hint) when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install 'agentrl[report]'): no plot")
        return None
    fig, axes = plt.subplots(1, 2, figsize=figsize)
    return plt, fig, axes


def by_algorithm(results: list[dict[str, Any]], names: list[str]
                 ) -> list[tuple[str, list[dict[str, Any]]]]:
    """(name, its runs) for each name with at least one run, in ``names`` order."""
    groups = [(n, [r for r in results if r["algorithm"] == n]) for n in names]
    return [(n, rs) for n, rs in groups if rs]


def plot(results: list[dict[str, Any]], names: list[str], path: str) -> bool:
    made = two_panels((11, 4))
    if made is None:
        return False
    plt, fig, axes = made
    for n, rs in by_algorithm(results, names):
        for ax, key in zip(axes, ("train_success", "entropy")):
            T = min(len(r[key]) for r in rs)
            ys = [statistics.mean(r[key][i] for r in rs) for i in range(T)]
            ax.plot(range(1, T + 1), ys, label=n, marker=".")
    axes[0].set(title="training rollout success (mean over seeds)", xlabel="iteration")
    axes[1].set(title="token entropy during the update (mean over seeds)", xlabel="iteration")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithms", nargs="+", default=ALGORITHMS, choices=ALGORITHMS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--quick", action="store_true", help="tiny budget (minutes on 2 cores)")
    p.add_argument("--out", default="runs/compare_algorithms")
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    results = []
    for seed in args.seeds:
        for name in args.algorithms:
            r = run_one(name, seed, args.quick, args.out)
            print(f"[compare] {name} seed {seed}: success {r['before']:.3f} -> {r['final']:.3f} "
                  f"({r['seconds']:.0f} s)", flush=True)
            results.append(r)
    with open(os.path.join(args.out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    task, iters = budget(args.quick)
    print(f"\nTextWorld coin collector level 3, {iters} iterations, seeds {args.seeds}; held-out "
          "success (mean ± std over seeds):")
    print(table(results, args.algorithms))
    if plot(results, args.algorithms, os.path.join(args.out, "compare.png")):
        print(f"plot: {os.path.join(args.out, 'compare.png')}")


if __name__ == "__main__":
    main()
