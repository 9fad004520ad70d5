"""``agentrl collect``: an env's expert played through the rollout engine, saved as trajectories.

    agentrl collect configs/alfworld_warm.yaml --episodes 200 --out runs/demos/alfworld.jsonl

The run's config decides everything a warm start must share with the RL run that follows it:
the model's tokenizer (the tiny model's is trained on the env's text exactly as `agentrl train`
trains it), the chat template, the context mode, the action format and constrained decoding.
The env is built with ``expert_actions=True`` and `agentrl.policies.expert.ExpertPolicy` plays
it, so every trajectory holds the token ids an RL policy would have produced for the same
actions. Each trajectory records the tokenizer's fingerprint (``extra["tokenizer"]``), which
``algorithm.name=sft`` checks before training on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from typing import Any

from agentrl.config import Config
from agentrl.types import Trajectory, write_jsonl


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """12 hex digits that change with the vocabulary, the special tokens or the chat
    template: trajectories carry it, so ids from another tokenizer are never trained on."""
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([vocab, tokenizer.eos_token_id, tokenizer.pad_token_id,
                       getattr(tokenizer, "chat_template", None)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def collect_expert(cfg: Config, episodes: int, split: str = "train", seed_start: int = 0,
                   tokenizer: Any = None, progress: bool = True) -> list[Trajectory]:
    """``episodes`` expert episodes of ``cfg.env`` (seeds ``seed_start``..; ``split`` "eval"
    plays the held-out env settings), recorded through the rollout engine with the run's
    prompt builder and tokenizer (built from ``cfg`` when not given)."""
    from agentrl.envpool import make_pool
    from agentrl.models import build_policy_model, load_pretrained
    from agentrl.multiagent import make_engine
    from agentrl.policies.expert import ExpertPolicy
    from agentrl.prompts import PromptBuilder
    from agentrl.registry import EXPERT_KWARG, expert_class

    expert_class(cfg.env.id)  # one line naming the envs that have an expert
    if tokenizer is None:
        _, tokenizer = build_policy_model(cfg) if cfg.policy.model == "tiny" \
            else load_pretrained(cfg.policy.model, cfg.policy.dtype)
    kwargs = dict(cfg.env.kwargs) if split == "train" else {**cfg.env.kwargs,
                                                            **cfg.env.eval_kwargs}
    env_cfg = dataclasses.replace(cfg.env, kwargs={**kwargs, EXPERT_KWARG: True})
    policy = ExpertPolicy(tokenizer, cfg.rollout.constrained)
    pool = make_pool(env_cfg, min(episodes, 16), ray_cfg=cfg.ray)
    try:
        engine = make_engine(policy, pool, PromptBuilder(tokenizer, cfg.rollout), cfg.rollout,
                             cfg.env.id)
        seeds = [seed_start + i for i in range(episodes)]
        bar = None
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(desc=f"expert episodes of {cfg.env.id}", unit="turn", leave=False)
        trajs = engine.run(seeds, [f"expert-{split}-{s}" for s in seeds], greedy=True,
                           progress=bar)
        if bar is not None:
            bar.close()
    finally:
        pool.close()
    mark = tokenizer_fingerprint(tokenizer)
    for t in trajs:
        t.extra["tokenizer"] = mark
        t.extra["source"] = "expert"
    return trajs


def collect_main(cfg: Config, episodes: int, out: str, split: str, seed_start: int) -> int:
    """The ``agentrl collect`` command: play, write ``out`` (JSONL), print the expert's
    success rate (with its 95% interval, per task type) and where the file is."""
    from agentrl.evaluate import summarize

    trajs = collect_expert(cfg, episodes, split, seed_start)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    write_jsonl(out, trajs)
    s = summarize(trajs)
    lo, hi = s["ci95"]
    print(f"[agentrl] expert on {cfg.env.id} ({split}, seeds {seed_start}-"
          f"{seed_start + episodes - 1}): success {s['success_rate']:.3f} (95% CI {lo:.2f}-"
          f"{hi:.2f}), {s['turns']:.1f} turns, terminations {s['terminations']}")
    for k, v in s["per_task_type"].items():
        print(f"[agentrl]   {k}: {v['success_rate']:.3f} over {v['n']}")
    print(f"[agentrl] trajectories: {os.path.abspath(out)}")
    return 0
