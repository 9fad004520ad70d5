"""The quickstart trained through a served env vs in process: held-out success and s/iteration.

Per seed, two whole `agentrl train` runs of the embedded quickstart, alternating which goes
first: one in process, one through `agentrl/OpenEnv-v0` (agentrl serving the quickstart's env
over OpenEnv's protocol on a loopback port, every reset and step a WebSocket message). Printed:
each run's held-out success (before -> after), the served runs' mean and spread beside the
in-process ones, and seconds per iteration served / in process per seed (paired ratios).

    python -m examples.benchmarks.served_quickstart [--seeds 0 1 2] [--out DIR] [--set K=V ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from examples.benchmarks import machine

MODES = {"in process": [], "served": ["env.id=agentrl/OpenEnv-v0"]}


def train(seed: int, mode: str, out: str, threads: int, extra: list[str]) -> dict[str, Any]:
    """One whole quickstart run; its held-out success and mean seconds per iteration."""
    name = f"{'served' if mode == 'served' else 'inproc'}-s{seed}"
    cmd = [sys.executable, "-m", "agentrl", "train", f"seed={seed}", f"run_name={name}",
           f"output_dir={out}", "log.progress=false", *MODES[mode], *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    run = os.path.join(out, name)
    with open(os.path.join(run, "metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    secs = [r["perf/seconds_iteration"] for r in rows if "perf/seconds_iteration" in r]
    with open(os.path.join(run, "eval", "before.json"), encoding="utf-8") as f:
        before = json.load(f)["success_rate"]
    with open(os.path.join(run, "eval", "final.json"), encoding="utf-8") as f:
        after = json.load(f)["success_rate"]
    return {"before": before, "after": after, "s_per_iteration": statistics.mean(secs),
            "wall": wall}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temp dir)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for both modes (e.g. a smaller budget)")
    a = ap.parse_args(argv)
    machine.header("the quickstart through a served env vs in process")
    res: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        out = a.out or tmp
        for i, seed in enumerate(a.seeds):
            order = list(MODES) if i % 2 == 0 else list(reversed(MODES))
            for mode in order:
                r = res[mode][seed] = train(seed, mode, out, a.threads, a.set)
                print(f"  seed {seed} {mode:10s}: held-out {r['before']:.3f} -> "
                      f"{r['after']:.3f}, {r['s_per_iteration']:.2f} s/iteration "
                      f"({r['wall']:.0f} s)", flush=True)
    for mode, runs in res.items():
        after = [r["after"] for r in runs.values()]
        spread = f"{min(after):.3f}-{max(after):.3f}"
        print(f"  {mode:10s}: held-out after training mean {statistics.mean(after):.3f} "
              f"(seeds {spread})")
    ratios = [res["served"][s]["s_per_iteration"] / res["in process"][s]["s_per_iteration"]
              for s in a.seeds]
    print(f"  s/iteration served / in process per seed: {', '.join(f'{x:.2f}' for x in ratios)}"
          f" -> median {machine.median(ratios):.2f}x")
    print(machine.load_average())
    return {"results": res, "ratios": ratios}


if __name__ == "__main__":
    main()
