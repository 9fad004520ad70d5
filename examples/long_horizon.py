"""The long-horizon pipeline: expert demos -> supervised warm start -> RL, per seed, resumable.

    python -m examples.long_horizon alfworld --seeds 0 1 2
    python -m examples.long_horizon sciworld --seeds 0 1 2
    python -m examples.long_horizon webshop --seeds 0 1 2

Each stage is an ordinary agentrl command (printed before it runs), so any of them can be run
or resumed by hand: `agentrl collect` once per env (the tokenizer does not depend on the run
seed), then per seed `agentrl train configs/<env>_warm.yaml` (algorithm sft) and `agentrl train
configs/<env>_rl.yaml` from the warm start's final checkpoint, each evaluated on the held-out
split before and after; extra held-out splits are evaluated with `agentrl eval`. A stage whose
output exists is skipped, and an interrupted training stage resumes from its checkpoint
(`--resume`). Results go to runs/long_horizon/<env>.json (held-out success with 95% intervals
per seed and stage) and the paired RL gains to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

import yaml

ENVS = {
    # env: (demos to collect, extra held-out evaluations: name -> --env-kwargs)
    "alfworld": (120, {"valid_seen": ["split=valid_seen", "num_games=60"]}),
    "sciworld": (150, {}),
    "webshop": (200, {}),
}
OUT = os.path.join("runs", "long_horizon")


def run(cmd: list[str], log: str) -> None:
    print("$ " + " ".join(cmd), flush=True)
    t0 = time.time()
    with open(log, "a") as f:
        code = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT)
    print(f"  exit {code} after {time.time() - t0:.0f} s (log: {log})", flush=True)
    if code != 0:
        sys.exit(f"stage failed: {' '.join(cmd)}")


def final_step(cfg_path: str) -> int:
    with open(cfg_path) as f:
        return int(yaml.safe_load(f)["train"]["iterations"])


def train(cfg: str, name: str, extra: list[str], log: str) -> str:
    run_dir = os.path.join("runs", name)
    if os.path.exists(os.path.join(run_dir, "eval", "final.json")):
        return run_dir
    resume = ["--resume", run_dir] if os.path.isdir(os.path.join(run_dir, "checkpoints")) \
        else []
    run(["agentrl", "train", cfg, f"run_name={name}", "log.progress=false", *extra, *resume],
        log)
    return run_dir


def evaluate(target: str, split: str, kwargs: list[str], out: str, log: str) -> dict:
    path = os.path.join(out, "eval.json")
    if not os.path.exists(path):
        n = next(int(k.split("=")[1]) for k in kwargs if k.startswith("num_games="))
        run(["agentrl", "eval", target, "--env-kwargs", *kwargs, "--seeds", f"0-{n - 1}",
             "--out", out, "--no-progress"], log)
    with open(path) as f:
        data = json.load(f)
    rows = data.get("results") or data.get("targets") or data
    return rows[0] if isinstance(rows, list) else rows


def summary(path: str) -> dict:
    with open(path) as f:
        s = json.load(f)
    return {"success_rate": s["success_rate"], "ci95": s["ci95"], "episodes": s["episodes"],
            "per_task_type": {k: v["success_rate"] for k, v in s["per_task_type"].items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("env", choices=sorted(ENVS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args()
    demos_n, extra_evals = ENVS[args.env]
    warm_cfg, rl_cfg = f"configs/{args.env}_warm.yaml", f"configs/{args.env}_rl.yaml"
    os.makedirs(OUT, exist_ok=True)
    log = os.path.join(OUT, f"{args.env}.log")
    demos = os.path.join("runs", "demos", f"{args.env}_train.jsonl")
    if not os.path.exists(demos):
        run(["agentrl", "collect", warm_cfg, "--episodes", str(demos_n), "--out", demos], log)
    results_path = os.path.join(OUT, f"{args.env}.json")
    results: dict = {}
    for seed in args.seeds:
        t0 = time.time()
        warm = train(warm_cfg, f"{args.env}-warm-s{seed}", [f"seed={seed}"], log)
        model = os.path.join(warm, "checkpoints", f"step_{final_step(warm_cfg)}", "model")
        rl = train(rl_cfg, f"{args.env}-rl-s{seed}", [f"seed={seed}", f"policy.model={model}"],
                   log)
        r = {"untrained": summary(os.path.join(warm, "eval", "before.json")),
             "warm": summary(os.path.join(warm, "eval", "final.json")),
             "rl": summary(os.path.join(rl, "eval", "final.json")),
             "minutes": round((time.time() - t0) / 60, 1)}
        for split, kw in extra_evals.items():
            r[split] = {stage: evaluate(target, split, kw,
                                        os.path.join(OUT, f"{args.env}-s{seed}-{stage}-{split}"),
                                        log)
                        for stage, target in (("warm", model),
                                              ("rl", os.path.join(rl, "checkpoints",
                                                                  f"step_{final_step(rl_cfg)}")))}
        # re-read first: drivers for other seeds may run side by side
        results = json.load(open(results_path)) if os.path.exists(results_path) else {}
        results[str(seed)] = r
        with open(results_path + f".tmp{os.getpid()}", "w") as f:
            json.dump(results, f, indent=2)
        os.replace(results_path + f".tmp{os.getpid()}", results_path)
        print(f"seed {seed}: untrained {r['untrained']['success_rate']:.3f} -> warm "
              f"{r['warm']['success_rate']:.3f} -> rl {r['rl']['success_rate']:.3f}", flush=True)
    results = json.load(open(results_path)) if os.path.exists(results_path) else results
    gains = [v["rl"]["success_rate"] - v["warm"]["success_rate"] for v in results.values()]
    if len(gains) >= 2:
        m = sum(gains) / len(gains)
        sd = math.sqrt(sum((g - m) ** 2 for g in gains) / (len(gains) - 1))
        t = {2: 12.71, 3: 4.30, 4: 3.18, 5: 2.78}.get(len(gains), 2.0)
        h = t * sd / math.sqrt(len(gains))
        print(f"RL gain over warm start, paired over {len(gains)} seeds: {m:+.3f} "
              f"(95% CI {m - h:+.3f} to {m + h:+.3f})")


if __name__ == "__main__":
    main()
