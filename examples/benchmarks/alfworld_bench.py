"""Benchmark agentrl/ALFWorld-v0 on generated games: generation time, expert and random success
per task type, reset time and steps/s.

    python examples/benchmarks/alfworld_bench.py --games-per-type 20 --split train

Generation is timed into a fresh temporary folder (the env's own cache is left alone). The
"planner" expert replays the fast-downward walkthrough stored in each game; the "replan" expert
takes ``--perturb`` random admissible actions first and then follows `expert_actions()`
re-planned from the state it reached; "random" picks uniformly among admissible actions.
Episodes last at most ``--max-steps`` steps (verl-agent uses 50 for ALFWorld).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections import defaultdict

from agentrl.envs.alfworld.env import ALFWorldEnv
from agentrl.envs.alfworld.generate import TASK_TYPES, ensure_games


def _rate(wins: list[bool]) -> str:
    return f"{sum(wins) / max(len(wins), 1):6.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--games-per-type", type=int, default=20)
    p.add_argument("--split", default="train", choices=("train", "valid_seen", "valid_unseen"))
    p.add_argument("--max-steps", type=int, default=50)
    p.add_argument("--random-episodes", type=int, default=1, help="random episodes per game")
    p.add_argument("--perturb", type=int, default=5, help="random steps before re-planning")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    n = args.games_per_type * len(TASK_TYPES)
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory() as root:
        t0, c0 = time.perf_counter(), time.process_time()
        ensure_games(args.split, n, root=root, progress=False)
        gen, cpu = time.perf_counter() - t0, time.process_time() - c0
        # CPU time is the figure to quote on a shared machine; wall time includes waiting.
        print(f"generation: {n} games ({args.split}), 1 process, incl. planner check: "
              f"{cpu / n:.3f} CPU s/game ({gen / n:.3f} wall s/game)")

        env = ALFWorldEnv(split=args.split, num_games=n, cache_root=root)
        by_type: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
        plan_len: dict[str, list[int]] = defaultdict(list)
        steps, step_time, resets, reset_time = 0, 0.0, 0, 0.0
        step_cpu = reset_cpu = 0.0

        def reset(seed: int) -> tuple[str, dict]:
            nonlocal resets, reset_time, reset_cpu
            t, c = time.perf_counter(), time.process_time()
            out = env.reset(seed=seed)
            reset_time += time.perf_counter() - t
            reset_cpu += time.process_time() - c
            resets += 1
            return out

        def step(action: str) -> tuple:
            nonlocal steps, step_time, step_cpu
            t, c = time.perf_counter(), time.process_time()
            out = env.step(action)
            step_time += time.perf_counter() - t
            step_cpu += time.process_time() - c
            steps += 1
            return out

        for g in range(n):
            # Planner walkthrough.
            _, info = reset(g)
            tt = info["task_type"]
            won = False
            for a in info["walkthrough"][: args.max_steps]:
                _, _, won, _, _ = step(a)
            by_type[tt]["planner"].append(bool(won))
            plan_len[tt].append(len(info["walkthrough"]))
            # Random prefix, then re-plan from wherever that led.
            _, info = reset(g)
            won, k = False, 0
            while not won and k < args.max_steps:
                if k < args.perturb:
                    a = rng.choice(info["admissible_actions"])
                else:
                    plan = env.expert_actions()
                    if not plan:
                        break
                    a = plan[0]
                _, _, won, _, info = step(a)
                k += 1
            by_type[tt]["replan"].append(bool(won))
            # Uniformly random admissible actions.
            for _ in range(args.random_episodes):
                _, info = reset(g)
                won, k = False, 0
                while not won and k < args.max_steps:
                    _, _, won, _, info = step(rng.choice(info["admissible_actions"]))
                    k += 1
                by_type[tt]["random"].append(bool(won))
        env.close()

    print(f"\n{'task type':34s} {'games':>5s} {'plan len':>8s} {'planner':>7s} {'replan':>7s} "
          f"{'random':>7s}")
    for tt in TASK_TYPES:
        r = by_type[tt]
        mean_len = sum(plan_len[tt]) / max(len(plan_len[tt]), 1)
        print(f"{tt:34s} {len(r['planner']):5d} {mean_len:8.1f} {_rate(r['planner']):>7s} "
              f"{_rate(r['replan']):>7s} {_rate(r['random']):>7s}")
    allr = {k: [w for tt in TASK_TYPES for w in by_type[tt][k]]
            for k in ("planner", "replan", "random")}
    print(f"{'all':34s} {len(allr['planner']):5d} {'':8s} {_rate(allr['planner']):>7s} "
          f"{_rate(allr['replan']):>7s} {_rate(allr['random']):>7s}")
    print(f"\nsteps: {steps}: {steps / step_cpu:.1f} steps per CPU second "
          f"({steps / step_time:.1f} per wall second); admissible actions every step, "
          "planning time not included")
    print(f"resets: {resets}, mean {1000 * reset_cpu / resets:.0f} CPU ms "
          f"({1000 * reset_time / resets:.0f} wall ms) "
          "(first load of a game costs more; recent games are memoized)")


if __name__ == "__main__":
    main()
