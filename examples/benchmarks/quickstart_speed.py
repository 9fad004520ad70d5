"""The quickstart's seconds per iteration: this checkout vs an earlier commit, alternating.

Each run is a fresh process that builds the embedded quickstart (seed 0, no evaluation) and
times ``--warmup`` + ``--iterations`` training iterations, with the trainer's stage split
(generate, env, update). Runs of the two versions alternate; the ratio per pair compares the
same iteration numbers. The held-out result needs the whole run: ``agentrl train`` (or
``pytest -m slow tests/test_quickstart.py``).

    python -m examples.benchmarks.quickstart_speed [--base 6107ea8] [--pairs 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

from examples.benchmarks import baseline, machine


def run_quickstart(warmup: int, iterations: int) -> dict[str, Any]:
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    out: dict[str, Any] = {"seconds": [], "generate": [], "env": [], "train": []}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"output_dir={tmp}", "log.progress=false",
                                 "log.tensorboard=false", "eval.before_training=false"])
        tr = Trainer(cfg)
        try:
            for i in range(warmup + iterations):
                t0 = time.perf_counter()
                m = tr.train_iteration()
                dt = time.perf_counter() - t0
                tr.iteration += 1
                if i >= warmup:
                    out["seconds"].append(dt)
                    out["generate"].append(m.get("perf/seconds_generate", 0.0))
                    out["env"].append(m.get("perf/seconds_env", 0.0))
                    out["train"].append(m.get("perf/seconds_train", 0.0))
        finally:
            tr.close()
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = machine.parser(__doc__)
    ap.add_argument("--base", default="6107ea8", help="the commit to compare with")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        res = run_quickstart(a.warmup, a.iterations)
        baseline.result(res)
        return res
    machine.header("quickstart seconds per iteration, before vs after")
    base = baseline.base_tree(a.base)
    mod = "examples.benchmarks.quickstart_speed"
    args = ["--warmup", str(a.warmup), "--iterations", str(a.iterations),
            "--threads", str(a.threads)]
    out = machine.alternate({
        "before": lambda: baseline.run_worker(mod, args, base=base, threads=a.threads),
        "after": lambda: baseline.run_worker(mod, args, threads=a.threads)}, a.pairs)
    print(f"before = {a.base} ({os.path.basename(os.path.dirname(base))}), after = this "
          f"checkout; iterations {a.warmup + 1}..{a.warmup + a.iterations} of the quickstart")
    per = {k: [sum(r["seconds"]) / len(r["seconds"]) for r in v] for k, v in out.items()}
    for k, v in out.items():
        split = {s: machine.median([x for r in v for x in r[s]]) for s in ("generate", "env", "train")}
        print(f"  {k:6s} s/iteration per run: " + ", ".join(f"{x:.2f}" for x in per[k])
              + f" (median stage split: generate {split['generate']:.2f}s, env "
                f"{split['env']:.2f}s, update {split['train']:.2f}s)")
    ratios = machine.paired_ratios(per["before"], per["after"])
    print(f"  speed-up after / before per pair: {', '.join(f'{x:.2f}' for x in ratios)} -> "
          f"median {machine.median(ratios):.2f}x")
    print(machine.load_average())
    return {"ratios": ratios, **per}


if __name__ == "__main__":
    main()
