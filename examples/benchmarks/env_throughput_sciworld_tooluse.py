"""Env steps per second for ScienceWorld (with and without valid-action queries) and ToolUse.

Random valid actions: ScienceWorld picks from the simulator's valid action list (fetched for
the choice even in the "without" run, but outside the timed step; the "with" run times the
query as part of the step, as ``valid_actions=True`` does); ToolUse draws a random tool call
(search of a random KB name, a calculation, a Python snippet) or, one time in five, an answer.

    python examples/benchmarks/env_throughput_sciworld_tooluse.py [--steps 200] [--python-every 10]
"""

from __future__ import annotations

import argparse
import random
import time


def bench_sciworld(steps: int, valid_actions: bool, seed: int = 0) -> tuple[float, int]:
    """Steps/s of `ScienceWorldEnv` over ``steps`` random valid actions (all tasks)."""
    from agentrl.envs.sciworld_env import ScienceWorldEnv

    env = ScienceWorldEnv(task=None, valid_actions=valid_actions, step_limit=50)
    rng = random.Random(seed)
    try:
        timed, done_steps, episodes = 0.0, 0, 0
        obs, info = env.reset(seed=seed)
        while done_steps < steps:
            # The candidate list: from info when the env fetched it, else queried untimed.
            adm = info["admissible_actions"] if valid_actions else env._admissible()
            t = time.perf_counter()
            obs, r, term, trunc, info = env.step(rng.choice(adm))
            timed += time.perf_counter() - t
            done_steps += 1
            if term or trunc:
                episodes += 1
                obs, info = env.reset(seed=rng.randrange(10_000))
        return done_steps / timed, episodes
    finally:
        env.close()


def bench_tooluse(steps: int, python_every: int, seed: int = 0) -> tuple[float, int]:
    """Steps/s of `ToolUseEnv` over ``steps`` random tool calls and answers."""
    from agentrl.envs.tooluse import ToolUseEnv

    env = ToolUseEnv(max_steps=10)
    rng = random.Random(seed)
    names = [e.name for e in env.kb.entities]
    env.reset(seed=seed)
    episodes = 0
    t = time.perf_counter()
    for k in range(steps):
        if python_every and k % python_every == 0:
            action = f"python[print(sum(i * i for i in range({rng.randrange(1000)})))]"
        else:
            action = rng.choice([f"search[{rng.choice(names)}]",
                                 f"calculate[{rng.randrange(999)} * {rng.randrange(99)} + 7]",
                                 f"search[{rng.choice(names)}]", f"answer[{rng.randrange(99)}]",
                                 "calculate[(2 + 3) / 4]"])
        _, _, term, trunc, _ = env.step(action)
        if term or trunc:
            episodes += 1
            env.reset(seed=rng.randrange(10_000))
    return steps / (time.perf_counter() - t), episodes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=200, help="timed steps per configuration")
    ap.add_argument("--python-every", type=int, default=10,
                    help="every N-th ToolUse step is a python[...] call (0: never)")
    ap.add_argument("--skip-sciworld", action="store_true", help="ToolUse only (no Java)")
    args = ap.parse_args()

    if not args.skip_sciworld:
        for valid in (False, True):
            sps, eps = bench_sciworld(args.steps, valid)
            print(f"ScienceWorld-v0 valid_actions={valid!s:5}: {sps:7.1f} steps/s "
                  f"({args.steps} steps, {eps} episodes ended)")
    sps, eps = bench_tooluse(args.steps * 5, args.python_every)
    print(f"ToolUse-v0 python every {args.python_every:>2} steps: {sps:7.1f} steps/s "
          f"({args.steps * 5} steps, {eps} episodes ended)")
    sps, eps = bench_tooluse(args.steps * 5, 0)
    print(f"ToolUse-v0 search/calculate/answer only: {sps:7.1f} steps/s "
          f"({args.steps * 5} steps, {eps} episodes ended)")


if __name__ == "__main__":
    main()
