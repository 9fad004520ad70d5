"""Learner memory and speed on CPU: LoRA vs full fine-tuning, fp32 vs bf16, with and without
activation checkpointing, and the start-up estimate (`agentrl.models.memory`) against the measured peak.

Each setting runs in a fresh process (peak RSS is a process high-water mark): load the model,
build the learner, one scoring pass and two optimizer updates (GRPO, one minibatch) on the
same synthetic batch of window-mode rows; reported: trainable share, peak RSS, the peak over
the interpreter's RSS before the model was loaded (what the model and learner hold, to set
against the estimate of the learner's parts for the same setting: weights, gradients,
optimizer, activations; the engine's KV cache is not used here), and seconds per update
(the second one).

    python -m examples.benchmarks.learner_memory --model tiny
    python -m examples.benchmarks.learner_memory --model smollm2 --rows 4 --tokens 96
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time

SETTINGS = {
    "full-fp32": [],
    "lora-fp32": ["policy.lora={r: 16, alpha: 32}"],
    "full-bf16": ["policy.dtype=bfloat16"],
    "full-fp32-ckpt": ["train.activation_checkpointing=true"],
    "full-bf16-ckpt": ["policy.dtype=bfloat16", "train.activation_checkpointing=true"],
}


def _rss_gb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024 ** 2
    return float("nan")


def synthetic_trajectories(rows: int, tokens: int, vocab: int, logprob: float) -> list:
    """``rows`` one-turn window-mode trajectories of ``tokens`` random ids, a quarter of them
    the action (`agentrl.models.memory.ACTION_SHARE`), groups of 4, rewards 0 / 1."""
    from agentrl.types import Trajectory, Turn

    rng = random.Random(0)
    n_act = max(4, tokens // 4)
    return [Trajectory(trajectory_id=str(i), group_id=str(i // 4), env_id="synthetic", seed=0,
                       context_mode="window",
                       turns=[Turn(observation="o",
                                   context_ids=[rng.randrange(3, vocab)
                                                for _ in range(tokens - n_act)],
                                   action_ids=[rng.randrange(3, vocab) for _ in range(n_act)],
                                   logprobs=[logprob] * n_act, reward=float(i % 2))])
            for i in range(rows)]


def one(model_name: str, overrides: list[str], rows: int, tokens: int) -> dict[str, float]:
    """Measure one setting in this process."""
    import torch

    from agentrl.config import load_config
    from agentrl.learn.learner import LocalLearner
    from agentrl.models import build_tiny_model, load_pretrained
    from agentrl.models.lora import apply_lora, trainable_share
    from agentrl.models.memory import estimate
    from agentrl.registry import get_algorithm

    start_rss = _rss_gb("VmRSS")  # the interpreter with torch and transformers imported
    torch.manual_seed(0)
    cfg = load_config(None, [f"policy.model={model_name}", "train.lr=1e-5",
                             f"train.micro_batch_tokens={rows * tokens}", *overrides])
    dtype = getattr(torch, cfg.policy.dtype)
    if model_name == "tiny":
        model = build_tiny_model(600, hidden=64, layers=2, heads=4).to(dtype)
    else:
        model, _ = load_pretrained(model_name, cfg.policy.dtype)
    base_rss = _rss_gb("VmRSS")
    if cfg.policy.lora is not None:
        model = apply_lora(model, cfg.policy.lora)
    cls = get_algorithm("grpo")
    algo = cls(cls.Config(name="grpo"))
    algo.setup(model)
    learner = LocalLearner(model, cfg.train, 1.0, algo, response_budget=32.0)
    est = estimate(model, cfg, algo)
    vocab = model.get_input_embeddings().num_embeddings
    trajs = synthetic_trajectories(rows, tokens, vocab, -2.0)
    batch = algo.build_batch(trajs, 0)
    batch.attach(learner.score(batch, algo.requires))
    algo.credit(batch)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        learner.update(batch, random.Random(0))
        times.append(time.perf_counter() - t0)
    trainable, total = trainable_share(model)
    peak = _rss_gb("VmHWM")
    learner_est = est.weights + est.gradients + est.optimizer + est.activations
    return {"trainable_share": trainable / total, "params": float(total),
            "peak_rss_gb": peak, "learner_growth_gb": peak - base_rss,
            "measured_learner_gb": peak - start_rss,
            "model_rss_gb": base_rss, "seconds_per_update": times[-1],
            "estimate_learner_gb": learner_est / 1024 ** 3,
            "estimate_weights_gb": est.weights / 1024 ** 3,
            "estimate_activations_gb": est.activations / 1024 ** 3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny", help="tiny | smollm2 | a path")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=256, help="tokens per row")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process
    a = ap.parse_args()
    if a.one is not None:
        print(json.dumps(one(a.model, SETTINGS[a.one], a.rows, a.tokens)))
        return
    results = {}
    for name in a.settings.split(","):
        out = subprocess.run([sys.executable, "-m", "examples.benchmarks.learner_memory",
                              "--model", a.model, "--rows", str(a.rows), "--tokens",
                              str(a.tokens), "--one", name], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": os.environ.get(
                                 "OMP_NUM_THREADS", "1")})
        if out.returncode:
            print(f"{name}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"model {a.model}, {a.rows} rows x {a.tokens} tokens, one micro-batch, 1 thread")
    print(f"{'setting':16} {'trainable':>9} {'peak RSS':>9} {'measured':>9} {'estimate':>9} "
          f"{'est/meas':>9} {'s/update':>9}")
    for name, r in results.items():
        print(f"{name:16} {100 * r['trainable_share']:8.2f}% {r['peak_rss_gb']:8.2f}G "
              f"{r['measured_learner_gb']:8.2f}G {r['estimate_learner_gb']:8.2f}G "
              f"{r['estimate_learner_gb'] / max(r['measured_learner_gb'], 1e-9):9.2f} "
              f"{r['seconds_per_update']:9.2f}")
    ref = results.get("full-fp32")
    if ref:
        for name, r in results.items():
            if name != "full-fp32":
                print(f"{name} / full-fp32: model + learner memory "
                      f"{r['measured_learner_gb'] / max(ref['measured_learner_gb'], 1e-9):.2f}x, "
                      f"peak RSS {r['peak_rss_gb'] / ref['peak_rss_gb']:.2f}x, time "
                      f"{r['seconds_per_update'] / ref['seconds_per_update']:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
