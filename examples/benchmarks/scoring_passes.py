"""Scoring passes per training iteration, per algorithm: this checkout vs an earlier commit.

A scoring pass is a no-grad forward of every row of the batch before the update (old
logprobs, reference logprobs, entropy, values, the sampler/trainer mismatch metric). The
worker wraps ``agentrl.learn.learner.token_outputs`` (every learner forward goes through it, in both
versions) and counts, for one iteration of a small quickstart-like run per algorithm, the rows
run without gradient through the policy and through the frozen reference, divided by the
batch's rows, and the forwards with gradient (the update).

    python -m examples.benchmarks.scoring_passes [--base 6107ea8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

from examples.benchmarks import baseline, machine

CASES = {
    "grpo": ["algorithm.name=grpo"],
    "grpo+kl": ["algorithm.name=grpo", "algorithm.kl_coef=0.05"],
    "ppo": ["algorithm.name=ppo"],
    "gigpo": ["algorithm.name=gigpo"],
    "epo": ["algorithm.name=epo"],
    "empg": ["algorithm.name=empg"],
    "aepo": ["algorithm.name=aepo"],
    "spear": ["algorithm.name=spear"],
    "grpo+recompute": ["algorithm.name=grpo", "policy.recompute_old_logprobs=true"],
}
SMALL = ["env.kwargs={level: 3, split: train, num_games: 4}", "env.train_seeds=4",
         "env.eval_kwargs={split: eval, num_games: 2}", "rollout.groups=2",
         "rollout.group_size=4", "rollout.max_turns=4", "policy.tiny_corpus_episodes=4",
         "train.minibatches=2", "eval.before_training=false", "log.progress=false",
         "log.tensorboard=false", "log.trajectories_every=0", "train.checkpoint_every=0"]


def count_iteration(overrides: list[str]) -> dict[str, float]:
    """Run one iteration and count the learner's forwards (see the module docstring)."""
    import torch

    import agentrl.learn.learner as L
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    counts = {"policy_rows": 0, "ref_rows": 0, "scoring_calls": 0, "update_calls": 0}
    original = L.token_outputs
    state: dict[str, Any] = {}

    def counted(model: Any, input_ids: torch.Tensor, *a: Any, **k: Any) -> Any:
        if state.get("on"):
            if torch.is_grad_enabled():
                counts["update_calls"] += 1
            else:
                counts["scoring_calls"] += 1
                ref = model is getattr(state["trainer"].learner, "reference", None)
                counts["ref_rows" if ref else "policy_rows"] += int(input_ids.shape[0])
        return original(model, input_ids, *a, **k)

    L.token_outputs = counted
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, SMALL + overrides + [f"output_dir={tmp}"])
        tr = Trainer(cfg)
        state["trainer"] = tr
        rows: list[int] = []
        build = tr.algorithm.build_batch

        def recording(*a: Any, **k: Any) -> Any:
            b = build(*a, **k)
            rows.append(b.num_rows)
            return b

        tr.algorithm.build_batch = recording  # type: ignore[method-assign]
        try:
            state["on"] = True
            tr.train_iteration()
        finally:
            state["on"] = False
            tr.close()
    n = max(1, rows[-1] if rows else 1)
    return {"passes": counts["policy_rows"] / n, "ref_passes": counts["ref_rows"] / n,
            "scoring_calls": counts["scoring_calls"], "update_calls": counts["update_calls"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = machine.parser(__doc__)
    ap.add_argument("--base", default="6107ea8", help="the commit to compare with")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        out = {}
        for name, ov in CASES.items():
            try:
                out[name] = count_iteration(ov)
            except Exception as e:  # a case the old code does not know
                out[name] = {"error": f"{type(e).__name__}: {e}"[:200]}
        baseline.result(out)
        return out
    machine.header("scoring passes per iteration (no-grad forwards of the whole batch)")
    base = baseline.base_tree(a.base)
    mod = "examples.benchmarks.scoring_passes"
    old = baseline.run_worker(mod, [], base=base, threads=a.threads)
    new = baseline.run_worker(mod, [], threads=a.threads)
    print(f"before = {a.base} ({os.path.basename(os.path.dirname(base))}), after = this "
          "checkout; policy / reference passes over the batch, no-grad calls, update calls")
    for name in CASES:
        cells = []
        for res in (old, new):
            r = res.get(name, {})
            cells.append(r["error"][:40] if "error" in r else
                         f"{r['passes']:.2f} + {r['ref_passes']:.2f} ref, "
                         f"{r['scoring_calls']} no-grad / {r['update_calls']} update calls")
        print(f"  {name:15s} before: {cells[0]:45s} after: {cells[1]}")
    return {"before": old, "after": new}


if __name__ == "__main__":
    main()
