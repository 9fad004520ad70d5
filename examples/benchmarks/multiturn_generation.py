"""Multi-turn generation with the hf backend: KV reuse across turns, shared-prompt prefill.

1. ``full`` context mode, 12-turn episodes of TextWorld coin collector (free decoding, so
   episodes run to the turn limit), with and without `HFPolicy(reuse_kv=...)`: prompt tokens
   run through the model (prefill) per episode, generate seconds per iteration, and whether
   both sampled exactly the same tokens (same seed).
2. Shared-prompt prefill: the first turn of 16 groups x 8 samples (each group shares its
   prompt), with and without `HFPolicy(share_prefill=...)`, one new token, so the time is the
   prefill's.
3. vLLM's automatic prefix caching: run ``hf_vs_vllm.py`` in the vllm environment (skipped here
   with the reason when vllm is not importable).

Runs alternate (A B, B A, ...) and each ratio comes from one pair. The roofline line gives the
bytes a decode step must read (weights + the KV cache of its context) over the measured memory
bandwidth, against the measured seconds per decode step; and the time of a decode step of one
row with a short context, which is all fixed per-step cost (Python, dispatch, kernel launches).

    python -m examples.benchmarks.multiturn_generation --pairs 3
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

import torch

from examples.benchmarks import machine

FULL = ["env.id=agentrl/TextWorld-CoinCollector-v0",
        "env.kwargs={level: 3, split: train, num_games: 20}", "rollout.context=full",
        "rollout.constrained=false", "rollout.action_format=raw", "rollout.max_new_tokens=8",
        "rollout.invalid_penalty=0", "policy.tiny_corpus_episodes=50",
        "rollout.template='{observation}\nAdmissible actions: {actions}'"]


def setup(model: str, extra: list[str]) -> tuple[Any, Any, Any]:
    from agentrl.config import load_config
    from agentrl.models import build_policy_model
    from agentrl.run.checkpoint import seed_everything

    cfg = load_config(None, FULL + [f"policy.model={model}"] + extra)
    seed_everything(0)
    net, tok = build_policy_model(cfg)
    return cfg, net.eval(), tok


def rollout(cfg: Any, net: Any, tok: Any, seeds: list[int], **policy_kw: Any,
            ) -> dict[str, Any]:
    """One batched rollout; returns seconds in generate, the policy's token counters and ids."""
    from agentrl.envpool import InProcessPool
    from agentrl.policies.hf import HFPolicy
    from agentrl.rollout.engine import RolloutEngine
    from agentrl.rollout.prompts import PromptBuilder

    pol = HFPolicy(net, tok, batch_size=len(seeds), **policy_kw)
    pol.seed(0)
    pool = InProcessPool(cfg.env.id, cfg.env.kwargs, len(seeds))
    try:
        eng = RolloutEngine(pol, pool, PromptBuilder(tok, cfg.rollout), cfg.rollout, cfg.env.id)
        t0 = time.perf_counter()
        trajs = eng.run(seeds)
        wall = time.perf_counter() - t0
    finally:
        pool.close()
    turns = [t for tr in trajs for t in tr.turns]
    return {"generate_s": sum(t.seconds_generate for t in turns), "wall_s": wall,
            "turns": len(turns), "episodes": len(trajs), "new_tokens": sum(len(t.action_ids) for t in turns),
            "ids": [t.action_ids for t in turns], **pol.stats}


def kv_reuse(cfg: Any, net: Any, tok: Any, episodes: int, pairs: int) -> dict[str, Any]:
    seeds = [i // 4 for i in range(episodes)]  # groups of 4 episodes per game
    out = machine.alternate({
        "reuse": lambda: rollout(cfg, net, tok, seeds, reuse_kv=True),
        "no_reuse": lambda: rollout(cfg, net, tok, seeds, reuse_kv=False)}, pairs)
    a, b = out["reuse"][0], out["no_reuse"][0]
    same = all(x["ids"] == y["ids"] for x, y in zip(out["reuse"], out["no_reuse"]))
    n = a["episodes"]
    ratios = machine.paired_ratios([r["generate_s"] for r in out["no_reuse"]],
                                   [r["generate_s"] for r in out["reuse"]])
    print(f"full mode, {n} episodes x {a['turns'] / n:.1f} turns, {a['new_tokens']} new tokens")
    print(f"  prompt tokens per episode {a['prompt_tokens'] / n:.0f}; prefilled per episode: "
          f"{b['prefill_tokens'] / n:.0f} without reuse, {a['prefill_tokens'] / n:.0f} with "
          f"({b['prefill_tokens'] / max(1, a['prefill_tokens']):.1f}x fewer)")
    print("  generate s per rollout: without "
          + ", ".join(f"{r['generate_s']:.2f}" for r in out["no_reuse"]) + "; with "
          + ", ".join(f"{r['generate_s']:.2f}" for r in out["reuse"]))
    print(f"  speed-up with reuse per pair: {', '.join(f'{x:.2f}' for x in ratios)} -> median "
          f"{machine.median(ratios):.2f}x; identical sampled tokens: {same}")
    return {"ratios": ratios, "same": same, "prefill_per_episode": (
        b["prefill_tokens"] / n, a["prefill_tokens"] / n),
        "context_per_episode": a["prompt_tokens"] / n / max(1, a["turns"] / n)}


def shared_prefill(cfg: Any, net: Any, tok: Any, pairs: int) -> list[float]:
    """First turn of 16 groups x 8: each group's 8 prompts are identical."""
    from agentrl.policies.base import SamplingParams
    from agentrl.policies.hf import HFPolicy
    from agentrl.registry import make_env
    from agentrl.rollout.prompts import PromptBuilder

    env = make_env(cfg.env.id, **cfg.env.kwargs)
    builder = PromptBuilder(tok, cfg.rollout)
    prompts = []
    for g in range(16):
        obs, info = env.reset(seed=g)
        p = builder.window_prompt(str(info.get("task", "")), [], obs,
                                  info.get("admissible_actions"), 0)
        prompts += [p] * 8
    env.close()
    sp = SamplingParams(max_new_tokens=1, seed=0)

    def run(share: bool) -> dict[str, float]:
        pol = HFPolicy(net, tok, batch_size=len(prompts), reuse_kv=False, share_prefill=share)
        t0 = time.perf_counter()
        pol.generate(prompts, sp)
        return {"s": time.perf_counter() - t0, **pol.stats}

    out = machine.alternate({"shared": lambda: run(True), "each": lambda: run(False)}, pairs)
    ratios = machine.paired_ratios([r["s"] for r in out["each"]], [r["s"] for r in out["shared"]])
    a, b = out["shared"][0], out["each"][0]
    print(f"shared-prompt prefill, 16 groups x 8 samples, {sum(map(len, prompts)) // 128} "
          f"prompt tokens each: prefilled {b['prefill_tokens']} -> {a['prefill_tokens']} tokens; "
          "seconds " + ", ".join(f"{r['s']:.3f}" for r in out["each"]) + " -> "
          + ", ".join(f"{r['s']:.3f}" for r in out["shared"])
          + f"; speed-up per pair {', '.join(f'{x:.2f}' for x in ratios)} -> median "
          f"{machine.median(ratios):.2f}x")
    return ratios


def roofline(net: Any, res: dict[str, Any], batch: int, bandwidth: float) -> None:
    """Decode steps of this run's shape vs the memory bound, and the fixed per-step cost."""
    ctx = int(res["context_per_episode"])
    step_bytes = (sum(p.numel() * p.element_size() for p in net.parameters())
                  + batch * ctx * machine.kv_bytes_per_token(net.config))
    bound = step_bytes / bandwidth
    # alternate the two shapes so both see the same load
    times = machine.alternate({"step": lambda: machine.decode_step_seconds(net, batch, ctx),
                               "floor": lambda: machine.decode_step_seconds(net, 1, 8)}, 2)
    step, floor = machine.median(times["step"]), machine.median(times["floor"])
    print(f"  roofline: a decode step of {batch} rows x {ctx} context tokens reads "
          f"{step_bytes / 1e6:.1f} MB (weights + KV cache) -> {bound * 1e3:.2f} ms at "
          f"{bandwidth / 1e9:.1f} GB/s; measured {step * 1e3:.1f} ms ({step / bound:.0f}x the "
          f"bound). One row with 8 tokens takes {floor * 1e3:.1f} ms, so ~{min(1.0, floor / step):.0%}"
          " of a step is fixed per-step cost (Python, dispatch, small kernels)")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = machine.parser(__doc__)
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--episodes", type=int, default=16)
    ap.add_argument("--turns", type=int, default=12)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    machine.header("multi-turn generation (hf backend)")
    lim = machine.limits()
    print(f"measured now: {lim['flops'] / 1e9:.1f} GFLOP/s fp32 matmul, "
          f"{lim['bandwidth'] / 1e9:.1f} GB/s copy bandwidth")
    cfg, net, tok = setup(a.model, [f"rollout.max_turns={a.turns}"])
    res = kv_reuse(cfg, net, tok, a.episodes, a.pairs)
    roofline(net, res, a.episodes, lim["bandwidth"])
    share = shared_prefill(cfg, net, tok, a.pairs)
    if importlib.util.find_spec("vllm") is None:
        print("vLLM prefix caching: skipped, vllm is not importable here (run hf_vs_vllm.py "
              "from .venv-vllm; see examples/setup_vllm_cpu.sh)")
    print(machine.load_average())
    return {"kv_reuse": res, "shared_prefill": share}


if __name__ == "__main__":
    main()
