"""Env throughput of the Ray pool (1 and 2 actors) against the process pool (1 and 2 workers),
and what Ray adds to every step.

Every configuration steps its slots as the rollout engine does (`agentrl.envpool.make_pool`,
batched ``reset`` / ``step``, random admissible actions; see `env_throughput.measure`), in one
run, configurations alternating round by round so that the machine's load hits all of them
alike; ratios are per round, then the median. One local Ray instance (``--num-cpus``, default 2)
serves every Ray configuration, started before the first round (its start-up is printed apart).

Envs:

- ``null``: a step that does nothing. Its seconds per step are the pool's own cost: the
  overhead of a Ray step is ``ray 1w`` minus ``inproc x1``, printed in microseconds, next to
  the process pool's.
- ``sleep``: a step that waits ``--sleep-ms`` (a remote simulator, a web request): two actors
  should give twice the steps per second of one, whatever the CPU load.
- ``textworld-coin``, ``alfworld``, ...: the real envs of `env_throughput` (``--envs``); with 2
  cores shared with other work, CPU-bound envs scale by less.

    python -m examples.benchmarks.ray_throughput [--seconds 3] [--rounds 3] [--envs null,sleep,alfworld]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any

from agentrl.envpool import ray as raypool
from agentrl.envs.base import TextEnv
from agentrl.registry import ENVS, register_env
from examples.benchmarks import env_throughput as et

#: (label, env.pool, slots); one env per worker or actor
CONFIGS = [("inproc x1", "inprocess", 1), ("proc 1w", "process", 1), ("proc 2w", "process", 2),
           ("ray 1w", "ray", 1), ("ray 2w", "ray", 2)]


class SleepEnv(TextEnv):
    """Each step waits ``step_ms`` milliseconds and changes nothing (0 = a free step)."""

    def __init__(self, step_ms: float = 0.0) -> None:
        super().__init__()
        self.step_ms = step_ms

    def _info(self) -> dict[str, Any]:
        return {"admissible_actions": ["wait", "look"], "task_type": "sleep", "task": "wait"}

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        return "A quiet room.", self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self.step_ms:
            time.sleep(self.step_ms / 1000)
        return "A quiet room.", 0.0, False, False, self._info()


def benches(sleep_ms: float) -> list[et.Bench]:
    if "bench/Sleep-v0" not in ENVS:
        # by module name, not __main__: workers and actors import it
        register_env("bench/Sleep-v0", entry_point="examples.benchmarks.ray_throughput:SleepEnv",
                     description="a step that waits")
    pick = et._admissible  # noqa: SLF001  (the same random policy as env_throughput)
    return [et.Bench("null", "bench/Sleep-v0", {"step_ms": 0.0}, pick),
            et.Bench("sleep", "bench/Sleep-v0", {"step_ms": sleep_ms}, pick),
            *et.benches(python_every=10)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="per configuration and round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sleep-ms", type=float, default=20.0)
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray instance")
    ap.add_argument("--envs", default="null,sleep,textworld-coin")
    args = ap.parse_args()

    from examples.benchmarks.machine import describe

    print(describe(), flush=True)
    t0 = time.perf_counter()
    raypool.connect("", args.num_cpus)  # held for the whole run: pools join it
    print(f"local Ray instance with {args.num_cpus} CPUs started in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    wanted = [e.strip() for e in args.envs.split(",") if e.strip()]
    table = {b.name: b for b in benches(args.sleep_ms)}
    try:
        for name in wanted:
            b = table[name]
            rates: dict[str, list[float]] = {c[0]: [] for c in CONFIGS}
            startup: dict[str, float] = {}
            for rnd in range(args.rounds):
                order = CONFIGS if rnd % 2 == 0 else CONFIGS[::-1]
                for label, mode, n in order:
                    m = et.measure(b, mode, n, args.seconds, max_turns=30, step_timeout=60.0,
                                   seed=rnd)
                    rates[label].append(m["steps_per_s"])
                    startup.setdefault(label, m["startup_s"])
                    if m["failed"]:
                        print(f"  {name} {label}: {m['failed']} failed results", flush=True)
            med = {k: statistics.median(v) for k, v in rates.items()}

            def ratio(a: str, b_: str, rates: dict[str, list[float]] = rates) -> float:
                return statistics.median(x / y for x, y in zip(rates[a], rates[b_]))

            print(f"\n{name}: env steps/s (median of {args.rounds} rounds of "
                  f"{args.seconds:g}s; start-up of the first round)")
            for label, _, _ in CONFIGS:
                print(f"  {label:10s} {med[label]:10.1f} steps/s   start-up {startup[label]:.2f}s")
            print(f"  ratios (per round, median): ray 2w / ray 1w = {ratio('ray 2w', 'ray 1w'):.2f}"
                  f", proc 2w / proc 1w = {ratio('proc 2w', 'proc 1w'):.2f}"
                  f", ray 1w / proc 1w = {ratio('ray 1w', 'proc 1w'):.2f}"
                  f", ray 2w / proc 2w = {ratio('ray 2w', 'proc 2w'):.2f}", flush=True)
            if name == "null":
                base = 1e6 / med["inproc x1"]
                print(f"  overhead per step (us, over an in-process step of {base:.1f} us): "
                      f"ray {1e6 / med['ray 1w'] - base:.0f}, "
                      f"process pool {1e6 / med['proc 1w'] - base:.0f}", flush=True)
    finally:
        raypool.disconnect()


if __name__ == "__main__":
    random.seed(0)
    main()
