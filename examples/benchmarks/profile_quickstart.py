"""Where one quickstart iteration's seconds go: stage split, Python functions, torch ops.

Builds the embedded quickstart (TextWorld coin collector, GiGPO, tiny model), runs one warm-up
iteration, then profiles one iteration with cProfile (agentrl's own functions, cumulative
time) and the torch profiler (ops by self CPU time), and prints the trainer's stage timings.

    python -m examples.benchmarks.profile_quickstart [--trace out.json] [key=value ...]
"""

from __future__ import annotations

import cProfile
import io
import pstats
import tempfile
import time
from typing import Any

import torch

from examples.benchmarks import machine

OURS = ("agentrl/", "policies/", "algorithms/", "envs/")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    ap = machine.parser(__doc__)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--trace", default="", help="write a Chrome trace of the iteration here")
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    machine.header("profile of one quickstart iteration")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"output_dir={tmp}", "log.progress=false",
                                 "log.tensorboard=false", "eval.before_training=false"]
                          + a.overrides)
        tr = Trainer(cfg)
        try:
            tr.train_iteration()  # warm-up
            tr.iteration += 1
            pr = cProfile.Profile()
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                pr.enable()
                m = tr.train_iteration()
                pr.disable()
                wall = time.perf_counter() - t0
        finally:
            tr.close()
    print(f"iteration: {wall:.2f}s wall under the profilers; stages: "
          + ", ".join(f"{k.split('/')[1]} {v:.2f}s" for k, v in sorted(m.items())
                      if k.startswith("perf/seconds_")))
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    rows = []
    for (file, line, fn), (_cc, _nc, tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        if any(f"/{d}" in file for d in OURS) and "/site-packages/" not in file:
            short = file.split("/wt/")[-1].split("/", 1)[-1] if "/wt/" in file else file
            rows.append((ct, tt, f"{short}:{line}({fn})"))
    print(f"top {a.top} agentrl functions by cumulative seconds (self seconds):")
    for ct, tt, name in sorted(rows, reverse=True)[:a.top]:
        print(f"  {ct:7.3f}  ({tt:6.3f})  {name}")
    print(f"top {a.top} torch ops by self CPU time:")
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.top)
    print("\n".join("  " + ln for ln in table.splitlines()))
    if a.trace:
        prof.export_chrome_trace(a.trace)
        print(f"chrome trace: {a.trace}")
    print(machine.load_average())
    return m


if __name__ == "__main__":
    main()
