"""Env steps per second for every registered env: in-process vs worker processes (1 and 2).

Each configuration runs the env through the pool `agentrl.envpool.make_pool` builds, exactly as
the rollout engine does (batched ``reset`` / ``step`` over all slots), with random actions: a
uniform choice among ``info["admissible_actions"]`` where the env lists them; otherwise (ToolUse's free-form tool
calls, WebShop's ``search[<query>]`` template) a random well-formed action built from the task
text. Episodes that end are reset with a fresh seed; episodes longer than ``--max-turns`` are
reset too, so that the measured mix of resets and steps resembles training.

Configurations: ``inproc x1`` (one env in this process), ``inproc x2`` (two envs in this
process, stepped one after the other), ``proc 1w`` (one worker process), ``proc 2w`` (two
workers, one env each, stepped in parallel). Columns: env steps per second of wall time over a
fixed time budget (resets inside the budget count as time, not as steps), and the start-up time
(building the pool and the first reset: worker boot, imports, game generation or loading).

Envs whose package is not installed (``alfworld``, ``scienceworld``) are skipped with the reason.
ScienceWorld runs with ``valid_actions=True`` (the admissible-action query costs about ten
steps' worth of simulator time, and is part of every step here).

    python examples/benchmarks/env_throughput.py [--seconds 5] [--envs webshop,tooluse]

Figures depend on the machine and its load; on a shared machine they are noisy (repeat runs
differ by tens of percent).
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentrl.config import EnvConfig
from agentrl.envpool import make_pool
from agentrl.registry import ENVS, load_builtin_envs, make_env

_WORD = re.compile(r"[A-Za-z]{3,}")


def _admissible(rng: random.Random, obs: str, info: dict[str, Any]) -> str:
    return rng.choice(list(info["admissible_actions"]))


def _webshop(rng: random.Random, obs: str, info: dict[str, Any]) -> str:
    """A random admissible click; on the search page, a query of 2-4 words of the goal."""
    acts = list(info.get("admissible_actions") or [])
    if acts == ["search[<query>]"] or not acts:
        words = _WORD.findall(str(info.get("task", "")) or obs) or ["item"]
        return "search[" + " ".join(rng.sample(words, min(len(words), rng.randint(2, 4)))) + "]"
    return rng.choice(acts)


def _tooluse(python_every: int) -> Callable[[random.Random, str, dict[str, Any]], str]:
    """Random tool calls: BM25 search for words of the question, arithmetic, an occasional
    Python snippet (a sandboxed subprocess: the expensive tool) and, rarely, an answer."""
    count = [0]

    def act(rng: random.Random, obs: str, info: dict[str, Any]) -> str:
        count[0] += 1
        if python_every and count[0] % python_every == 0:
            return f"python[print(sum(i * i for i in range({rng.randrange(1000)})))]"
        words = _WORD.findall(str(info.get("task", ""))) or ["river"]
        r = rng.random()
        if r < 0.5:
            return "search[" + " ".join(rng.sample(words, min(len(words), 2))) + "]"
        if r < 0.85:
            return f"calculate[{rng.randrange(999)} * {rng.randrange(99)} + {rng.randrange(9)}]"
        return f"answer[{rng.randrange(100)}]"

    return act


@dataclass
class Bench:
    """One benchmarked env: its id, constructor kwargs and random-action policy."""

    name: str
    env_id: str
    kwargs: dict[str, Any]
    policy: Callable[[random.Random, str, dict[str, Any]], str]
    requires: tuple[str, ...] = field(default_factory=tuple)


def benches(python_every: int) -> list[Bench]:
    load_builtin_envs()
    req = {k: e.requires for k, e in ENVS.items()}
    tw = "agentrl/TextWorld-CoinCollector-v0"
    return [
        Bench("textworld-coin", tw, {"num_games": 20}, _admissible, req[tw]),
        Bench("textworld-coin (no memo)", tw, {"num_games": 20, "cache_transitions": False},
              _admissible, req[tw]),
        Bench("webshop", "agentrl/WebShop-v0", {}, _webshop, req["agentrl/WebShop-v0"]),
        Bench("tooluse", "agentrl/ToolUse-v0", {"max_steps": 10}, _tooluse(python_every),
              req["agentrl/ToolUse-v0"]),
        Bench("alfworld", "agentrl/ALFWorld-v0", {"num_games": 20}, _admissible,
              req["agentrl/ALFWorld-v0"]),
        Bench("scienceworld", "agentrl/ScienceWorld-v0",
              {"valid_actions": True, "step_limit": 50}, _admissible,
              req["agentrl/ScienceWorld-v0"]),
    ]


#: (label, mode, number of env slots); process mode runs one env per worker.
CONFIGS = [("inproc x1", "inprocess", 1), ("inproc x2", "inprocess", 2),
           ("proc 1w", "process", 1), ("proc 2w", "process", 2)]


def measure(b: Bench, mode: str, n: int, seconds: float, max_turns: int,
            step_timeout: float, seed: int = 0) -> dict[str, float]:
    """Run ``n`` slots of ``b`` for ``seconds``; returns steps/s, start-up seconds, episodes
    and failed results (``env_error`` / ``env_timeout``)."""
    rng = random.Random(seed)
    t0 = time.perf_counter()
    pool = make_pool(EnvConfig(id=b.env_id, kwargs=b.kwargs, pool=mode, step_timeout=step_timeout,
                               reset_timeout=max(step_timeout, 300.0)), n)
    try:
        slots = list(range(n))
        res = pool.reset(slots, [rng.randrange(10_000) for _ in slots])
        startup = time.perf_counter() - t0
        state = [(r.observation, r.info) for r in res]
        turns = [0] * n
        steps = episodes = 0
        t1 = time.perf_counter()
        while time.perf_counter() - t1 < seconds:
            out = pool.step(slots, [b.policy(rng, o, i) for o, i in state])
            steps += n
            again = []
            for s, r in enumerate(out):
                turns[s] += 1
                state[s] = (r.observation, r.info)
                if r.error or r.terminated or r.truncated or turns[s] >= max_turns:
                    again.append(s)
            if again:
                episodes += len(again)
                for s, r in zip(again, pool.reset(again, [rng.randrange(10_000) for _ in again])):
                    state[s], turns[s] = (r.observation, r.info), 0
        wall = time.perf_counter() - t1
        failed = pool.stats["env_error"] + pool.stats["env_timeout"]
    finally:
        pool.close()
    return {"steps_per_s": steps / wall, "startup_s": startup, "steps": steps,
            "episodes": episodes, "failed": failed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="time budget per configuration")
    ap.add_argument("--max-turns", type=int, default=30, help="reset an episode after this many")
    ap.add_argument("--python-every", type=int, default=10,
                    help="ToolUse: every N-th action is a python[...] call (0: never)")
    ap.add_argument("--step-timeout", type=float, default=60.0)
    ap.add_argument("--envs", default="", help="comma-separated names to run (default: all)")
    args = ap.parse_args()

    wanted = {e.strip() for e in args.envs.split(",") if e.strip()}
    header = ["env"] + [c[0] for c in CONFIGS] + ["start-up s (inproc / proc 1w)"]
    rows: list[list[str]] = []
    for b in benches(args.python_every):
        if wanted and b.name.split()[0] not in wanted and b.name not in wanted:
            continue
        missing = [m for m in b.requires if importlib.util.find_spec(m) is None]
        if missing:
            try:
                make_env(b.env_id)  # raises the registry's message, with the install command
                why = f"{', '.join(missing)} is not importable"
            except Exception as e:
                why = str(e)
            print(f"skip {b.name}: {why}", flush=True)
            continue
        cells, startups = [], {}
        for label, mode, n in CONFIGS:
            m = measure(b, mode, n, args.seconds, args.max_turns, args.step_timeout)
            cells.append(f"{m['steps_per_s']:.1f}")
            startups[label] = m["startup_s"]
            print(f"{b.name:26s} {label:10s} {m['steps_per_s']:9.1f} steps/s  "
                  f"({m['steps']} steps, {m['episodes']} episodes reset, {m['failed']} failed, "
                  f"start-up {m['startup_s']:.2f}s)", flush=True)
        rows.append([b.name] + cells
                    + [f"{startups['inproc x1']:.2f} / {startups['proc 1w']:.2f}"])

    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    print("\nenv steps per second (random actions, higher is better)")
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("-+-".join("-" * w for w in widths))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
