"""Learner memory at real vocabularies: logits formed ``train.logits_chunk`` values at a time
against a whole micro-batch's logits at once (``train.logits_chunk=0``).

A small model (hidden 64, 2 layers) with a 49k (SmolLM2) or 152k (Qwen2.5) vocabulary, one
micro-batch of 16 rows x 1024 tokens (16k tokens, a quarter of each row action tokens, as in
window mode), GRPO: one scoring pass and two updates. Each setting runs in a fresh process
(peak RSS is a process high-water mark), the two settings alternate ``--repeats`` times, and
the script prints, per vocabulary: the peak growth over the loaded model (what the learner's
pass adds), the ratio whole / chunked, seconds per update and tokens/s chunked / whole (median
of the alternating pairs), and the largest difference of the loss and of any gradient.

    python -m examples.benchmarks.logits_memory
    python -m examples.benchmarks.logits_memory --vocabs 49152 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from examples.benchmarks import machine
from examples.benchmarks.learner_memory import _rss_gb, synthetic_trajectories


def one(vocab: int, chunk: int, rows: int, tokens: int, grads_out: str) -> dict[str, float]:
    """One setting in this process; the first update's gradients go to ``grads_out``."""
    import torch

    from agentrl.config import TrainConfig
    from agentrl.learn.learner import LocalLearner
    from agentrl.models import build_tiny_model
    from agentrl.registry import get_algorithm

    torch.manual_seed(0)
    model = build_tiny_model(vocab, hidden=64, layers=2, heads=4, seed=0)
    base = _rss_gb("VmRSS")
    cls = get_algorithm("grpo")
    algo = cls(cls.Config(name="grpo"))
    algo.setup(model)
    cfg = TrainConfig(lr=1e-5, micro_batch_tokens=rows * tokens, logits_chunk=chunk)
    learner = LocalLearner(model, cfg, 1.0, algo, response_budget=float(tokens))
    trajs = synthetic_trajectories(rows, tokens, vocab, -11.0)
    batch = algo.build_batch(trajs, 0)
    batch.attach(learner.score(batch, algo.requires))
    algo.credit(batch)
    times, losses = [], []
    for k in range(2):
        t0 = time.perf_counter()
        metrics = learner.update(batch, random.Random(0))
        times.append(time.perf_counter() - t0)
        losses.append(metrics["train/loss"])
        if k == 0:
            torch.save({n: p.grad.clone() for n, p in model.named_parameters()
                        if p.grad is not None}, grads_out)
    return {"peak_growth_gb": _rss_gb("VmHWM") - base, "seconds_per_update": times[-1],
            "tokens_per_s": rows * tokens / times[-1], "loss": losses[0]}


def _child(vocab: int, chunk: int, a: argparse.Namespace, grads: str) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-m", "examples.benchmarks.logits_memory", "--one",
                          f"{vocab},{chunk},{grads}", "--rows", str(a.rows), "--tokens",
                          str(a.tokens)], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": os.environ.get(
                             "OMP_NUM_THREADS", "1")})
    if out.returncode:
        raise SystemExit(f"vocab {vocab} chunk {chunk} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(vocab: int, a: argparse.Namespace) -> dict[str, float]:
    """Alternate whole / chunked runs at ``vocab``; the summary of the pairs."""
    import torch

    from agentrl.config import LOGITS_CHUNK

    chunk = a.chunk or LOGITS_CHUNK
    runs: dict[int, list[dict[str, float]]] = {0: [], chunk: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeats):
            for chunk in runs:
                runs[chunk].append(_child(vocab, chunk, a, os.path.join(tmp, f"{chunk}.pt")))
        g0 = torch.load(os.path.join(tmp, "0.pt"))
        g1 = torch.load(os.path.join(tmp, f"{chunk}.pt"))
    whole, chunked = runs[0], runs[chunk]
    return {
        "vocab": vocab,
        "whole_peak_gb": max(r["peak_growth_gb"] for r in whole),
        "chunked_peak_gb": max(r["peak_growth_gb"] for r in chunked),
        "whole_s": statistics.median(r["seconds_per_update"] for r in whole),
        "chunked_s": statistics.median(r["seconds_per_update"] for r in chunked),
        "speed_ratio": statistics.median(c["tokens_per_s"] / w["tokens_per_s"]
                                         for w, c in zip(whole, chunked)),
        "loss_diff": abs(whole[0]["loss"] - chunked[0]["loss"]),
        "grad_diff": max(float((g0[n] - g1[n]).abs().max()) for n in g0),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vocabs", default="49152,151936")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=1024, help="tokens per row")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--chunk", type=int, default=0, help="train.logits_chunk (0: the default)")
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process
    a = ap.parse_args(argv)
    if a.one is not None:
        vocab, chunk, grads = a.one.split(",", 2)
        print(json.dumps(one(int(vocab), int(chunk), a.rows, a.tokens, grads)))
        return
    machine.header("learner memory: chunked logits vs a micro-batch's logits at once")
    print(f"{a.rows} rows x {a.tokens} tokens (a quarter action tokens), one micro-batch, "
          f"1 thread, {a.repeats} alternating pairs")
    print(f"{'vocab':>7} {'whole GB':>9} {'chunked GB':>10} {'memory':>7} {'whole s':>8} "
          f"{'chunked s':>9} {'tokens/s':>9} {'|dloss|':>8} {'|dgrad|':>8}")
    results = []
    for vocab in (int(v) for v in a.vocabs.split(",")):
        r = compare(vocab, a)
        results.append(r)
        print(f"{vocab:>7} {r['whole_peak_gb']:9.2f} {r['chunked_peak_gb']:10.2f} "
              f"{r['whole_peak_gb'] / max(r['chunked_peak_gb'], 1e-9):6.1f}x "
              f"{r['whole_s']:8.2f} {r['chunked_s']:9.2f} {r['speed_ratio']:8.2f}x "
              f"{r['loss_diff']:8.1e} {r['grad_diff']:8.1e}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
