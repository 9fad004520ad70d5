"""Seconds per training iteration, synchronous (``train.max_staleness=0``) vs asynchronous
(``train.max_staleness=1``: the next batch is collected while the learner updates), on an env
whose steps are slow, in worker processes.

Both modes run in this process, alternating (sync, async, async, sync, ...), each a fresh
trainer timed over ``--iterations`` iterations after ``--warmup`` (the asynchronous pipeline
fills during the warm-up). An iteration's time is the wall time between the ends of two
consecutive iterations: for the asynchronous loop the learner's wait for its batch, the
update and the weight push; the rollout behind it overlaps. The ratio is per pair, then the
median. No evaluation runs.

    python -m examples.benchmarks.async_speed [--env alfworld] [--pairs 2] [--iterations 4]

``--env alfworld`` is `configs/alfworld_tiny.yaml` (ALFWorld, ~15 steps/s per worker here)
with fewer episodes per iteration and ``env.pool=process``; ``--env sciworld`` is
`configs/sciworld_tiny.yaml` (ScienceWorld's JVM); ``--env quickstart`` the embedded quickstart
(TextWorld in this process: fast steps, little to overlap).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from typing import Any

from examples.benchmarks import machine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENVS = {
    "alfworld": (os.path.join(ROOT, "configs", "alfworld_tiny.yaml"),
                 ["env.pool=process", "env.envs_per_worker=2", "rollout.groups=2",
                  "rollout.group_size=4", "rollout.max_turns=10",
                  "policy.tiny_corpus_episodes=4"]),
    "sciworld": (os.path.join(ROOT, "configs", "sciworld_tiny.yaml"),
                 ["env.pool=process", "rollout.groups=2", "rollout.group_size=4",
                  "rollout.max_turns=10", "policy.tiny_corpus_episodes=4"]),
    "quickstart": (None, []),
}


def run(env: str, staleness: int, warmup: int, iterations: int) -> dict[str, Any]:
    """Seconds of each timed iteration, and their stage split, for one fresh trainer."""
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    path, extra = ENVS[env]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(path, [*extra, f"output_dir={tmp}", "log.progress=false",
                                 "eval.episodes=2",  # no evaluation runs: no eval workers
                                 "log.tensorboard=false", "eval.before_training=false",
                                 "train.checkpoint_every=0", f"train.iterations={warmup + iterations}",
                                 f"train.max_staleness={staleness}"])
        tr = Trainer(cfg)
        out: dict[str, Any] = {"seconds": [], "wait": [], "train": [], "staleness": []}
        try:
            last = time.perf_counter()
            for i in range(warmup + iterations):
                m = tr.train_iteration()
                tr.iteration += 1
                now = time.perf_counter()
                if i >= warmup:
                    out["seconds"].append(now - last)
                    out["wait"].append(m.get("perf/seconds_rollout", 0.0))
                    out["train"].append(m.get("perf/seconds_train", 0.0))
                    out["staleness"].append(m.get("rollout/staleness_mean", 0.0))
                last = now
        finally:
            tr.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", choices=sorted(ENVS), default="alfworld")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=4)
    args = ap.parse_args()
    print(machine.describe(), flush=True)
    runs: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for p in range(args.pairs):
        for k in ((0, 1) if p % 2 == 0 else (1, 0)):
            r = run(args.env, k, args.warmup, args.iterations)
            runs[k].append(r)
            print(f"pair {p} max_staleness={k}: "
                  f"{statistics.mean(r['seconds']):.2f} s/iteration (rollout wait "
                  f"{statistics.mean(r['wait']):.2f} s, update {statistics.mean(r['train']):.2f}"
                  f" s, staleness {statistics.mean(r['staleness']):.2f})", flush=True)
    ratios = [statistics.mean(s["seconds"]) / statistics.mean(a["seconds"])
              for s, a in zip(runs[0], runs[1])]
    sync = statistics.median(statistics.mean(r["seconds"]) for r in runs[0])
    asyn = statistics.median(statistics.mean(r["seconds"]) for r in runs[1])
    print(f"\n{args.env}: seconds per iteration, sync {sync:.2f} vs async (max_staleness=1) "
          f"{asyn:.2f}; speed-up sync/async per pair {[round(x, 2) for x in ratios]}, "
          f"median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
