"""An env's expert played through the rollout engine, as trajectories (``agentrl collect``).

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
import sys
from typing import Any

from agentrl.config import Config
from agentrl.types import Trajectory


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """12 hex digits that change with the vocabulary, the special tokens or the chat
    template: trajectories carry it, so ids from another tokenizer are never trained on."""
    vocab = sorted(tokenizer.get_vocab().items())
    blob = json.dumps([vocab, tokenizer.eos_token_id, tokenizer.pad_token_id,
                       getattr(tokenizer, "chat_template", None)], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def collect_expert(cfg: Config, episodes: int, tokenizer: Any, split: str = "train",
                   seed_start: int = 0, progress: bool = True) -> list[Trajectory]:
    """``episodes`` expert episodes of ``cfg.env`` (seeds ``seed_start``..; ``split`` "eval"
    plays the held-out env settings), recorded through the rollout engine with the run's
    prompt builder and ``tokenizer`` (`agentrl.assemble.run_tokenizer` gives the run's)."""
    from agentrl.envpool import make_pool
    from agentrl.policies.expert import ExpertPolicy
    from agentrl.registry import EXPERT_KWARG, expert_class
    from agentrl.rollout.multiagent import make_engine
    from agentrl.rollout.prompts import PromptBuilder

    expert_class(cfg.env.id)  # one line naming the envs that have an expert
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
        t.extra["source"] = ExpertPolicy.source
    return trajs
