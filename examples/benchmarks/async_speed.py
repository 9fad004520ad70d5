"""Seconds per training iteration, synchronous (``train.max_staleness=0``) vs asynchronous
(``train.max_staleness=1``: the next batch is collected while the learner updates), on an env
whose steps are slow, in worker processes; and, on an env whose steps *wait* (``--env
tooluse``: ToolUse with 200 ms per tool call), the synchronous loop with the in-process pool
against the thread pool (``env.pool=thread``: the waits of a turn's episodes overlap), with and
without asynchronous rollouts.

The modes run in this process, alternating (first, second, ..., then reversed), each a fresh
trainer timed over ``--iterations`` iterations after ``--warmup`` (the asynchronous pipeline
fills during the warm-up). An iteration's time is the wall time between the ends of two
consecutive iterations: for the asynchronous loop the learner's wait for its batch, the
update and the weight push; the rollout behind it overlaps. Each mode's ratio to the first is
per round, then the median. No evaluation runs.

    python -m examples.benchmarks.async_speed [--env alfworld] [--pairs 2] [--iterations 4]
    python -m examples.benchmarks.async_speed --env tooluse --modes sync,thread,thread+async

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
    "tooluse": (os.path.join(ROOT, "configs", "tooluse_tiny.yaml"),
                ["env.kwargs.tool_latency=0.2", "policy.tiny_corpus_episodes=4"]),
}
#: mode -> overrides: the loop (max_staleness) and the pool
MODES = {"sync": ["train.max_staleness=0"], "async": ["train.max_staleness=1"],
         "thread": ["train.max_staleness=0", "env.pool=thread"],
         "thread+async": ["train.max_staleness=1", "env.pool=thread"]}


def run(env: str, mode: str, warmup: int, iterations: int) -> dict[str, Any]:
    """Seconds of each timed iteration, and their stage split, for one fresh trainer."""
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    path, extra = ENVS[env]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(path, [*extra, f"output_dir={tmp}", "log.progress=false",
                                 "eval.episodes=2",  # no evaluation runs: no eval workers
                                 "log.tensorboard=false", "eval.before_training=false",
                                 "train.checkpoint_every=0", f"train.iterations={warmup + iterations}",
                                 *MODES[mode]])
        tr = Trainer(cfg)
        out: dict[str, Any] = {"seconds": [], "wait": [], "train": [], "staleness": [],
                               "success": []}
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
                    out["success"].append(m.get("rollout/success_rate", 0.0))
                last = now
        finally:
            tr.close()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--env", choices=sorted(ENVS), default="alfworld")
    ap.add_argument("--modes", default="sync,async", help=f"comma-separated, of {list(MODES)}")
    ap.add_argument("--pairs", type=int, default=2, help="rounds of every mode")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=4)
    args = ap.parse_args(argv)
    modes = args.modes.split(",")
    print(machine.describe(), flush=True)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for p in range(args.pairs):
        for mode in (modes if p % 2 == 0 else modes[::-1]):
            r = run(args.env, mode, args.warmup, args.iterations)
            runs[mode].append(r)
            print(f"round {p} {mode}: {statistics.mean(r['seconds']):.2f} s/iteration "
                  f"(rollout wait {statistics.mean(r['wait']):.2f} s, update "
                  f"{statistics.mean(r['train']):.2f} s, staleness "
                  f"{statistics.mean(r['staleness']):.2f}, rollout success "
                  f"{[round(x, 3) for x in r['success']]})", flush=True)
    base = modes[0]
    summary = ", ".join(f"{m} {statistics.median(statistics.mean(r['seconds']) for r in runs[m]):.2f}"
                        for m in modes)
    print(f"\n{args.env}: seconds per iteration (median over rounds): {summary}")
    for m in modes[1:]:
        ratios = [statistics.mean(b["seconds"]) / statistics.mean(r["seconds"])
                  for b, r in zip(runs[base], runs[m])]
        print(f"  speed-up {base}/{m} per round {[round(x, 2) for x in ratios]}, median "
              f"{statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
