"""Benchmark agentrl/WebShop-v0: catalogue generation and load time, steps/s of a random and an
oracle policy, and success/score of the oracle and two rule baselines, per product category.

    python examples/benchmarks/webshop_bench.py --episodes 500 --split test

Generation is timed into a fresh temporary folder (the env's own cache is left alone).
Policies: "random" searches with a random half of the instruction's words, then clicks uniformly
among the admissible actions; "oracle" is `agentrl.envs.webshop.oracle`; "rule" is WebShop's
rule baseline (search the instruction, open the first result, buy); "rule+options" also selects
the goal's options. Episodes last at most 15 steps (verl-agent).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from agentrl.envs.webshop.catalog import ensure_generated
from agentrl.envs.webshop.data import load_store, strip_price_clause
from agentrl.envs.webshop.env import WebShopEnv
from agentrl.envs.webshop.oracle import best_options, oracle_action

Policy = Callable[[gym.Env, dict[str, Any], random.Random], str]


def random_policy(env: gym.Env, info: dict[str, Any], rng: random.Random) -> str:
    e = env.unwrapped
    if e.page == "search":
        words = strip_price_clause(e.goal["instruction_text"]).split()
        return "search[" + " ".join(rng.sample(words, max(1, len(words) // 2))) + "]"
    return rng.choice(info["admissible_actions"])


def rule_policy(with_options: bool) -> Policy:
    def act(env: gym.Env, info: dict[str, Any], rng: random.Random) -> str:
        e = env.unwrapped
        if e.page == "search":
            return f"search[{strip_price_clause(e.goal['instruction_text'])}]"
        if e.page == "results":
            return f"click[{e.results[0]}]" if e.results else "click[back to search]"
        if e.page == "item" and with_options:
            for group, value in best_options(e.store.by_asin[e.asin], e.goal).items():
                if e.options.get(group) != value:
                    return f"click[{value}]"
        return "click[buy now]"
    return act


def run(env: gym.Env, policy: Policy, seeds: range, rng: random.Random
        ) -> tuple[dict[str, list[tuple[float, bool]]], int, float, float]:
    per_type: dict[str, list[tuple[float, bool]]] = defaultdict(list)
    steps, t0, c0 = 0, time.perf_counter(), time.process_time()
    for seed in seeds:
        _, info = env.reset(seed=seed)
        task_type = info["task_type"]
        for _ in range(15):
            _, _, term, trunc, info = env.step(policy(env, info, rng))
            steps += 1
            if term or trunc:
                break
        per_type[task_type].append((info["score"], info["success"]))
    return per_type, steps, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--split", default="test", choices=("train", "test"))
    p.add_argument("--num-products", type=int, default=3000)
    p.add_argument("--data-path", default=None, help="WebShop's released data folder")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    if args.data_path is None:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = ensure_generated(tmp, args.seed, args.num_products)
            t_gen = time.perf_counter() - t0
            size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
            t0 = time.perf_counter()
            store = load_store(path)
            store.search("warm up the index")
            t_load = time.perf_counter() - t0
        print(f"generate {args.num_products} products: {t_gen:.2f}s ({size / 1e6:.1f} MB); "
              f"load + BM25 index: {t_load:.2f}s; goals {len(store.goals)} "
              f"(test {store.num_test_goals})")

    t0 = time.perf_counter()
    env = gym.wrappers.TimeLimit(
        WebShopEnv(data_path=args.data_path, split=args.split,
                   num_products=None if args.data_path else args.num_products,
                   catalog_seed=args.seed), 15)
    print(f"env construction (cached catalogue): {time.perf_counter() - t0:.2f}s; "
          f"{len(env.unwrapped.goals)} {args.split} goals")
    seeds = range(args.episodes)
    policies: dict[str, Policy] = {
        "random": random_policy,
        "oracle": lambda env, info, rng: oracle_action(env),
        "rule": rule_policy(False),
        "rule+options": rule_policy(True),
    }
    # steps/s counts the policy's own time too (the oracle scores every listed product);
    # "cpu" divides by this process's CPU time, which other jobs on the machine do not inflate.
    print(f"\n{'policy':<14}{'steps/s':>9}{'(cpu)':>8}{'steps/ep':>9}{'score':>8}"
          f"{'success':>9}   success per category")
    for name, pol in policies.items():
        per_type, steps, secs, cpu = run(env, pol, seeds, random.Random(args.seed))
        allv = [v for vs in per_type.values() for v in vs]
        cats = " ".join(f"{k}={statistics.mean(s for _, s in v):.2f}"
                        for k, v in sorted(per_type.items()))
        print(f"{name:<14}{steps / secs:9.0f}{steps / cpu:8.0f}{steps / len(allv):9.2f}"
              f"{statistics.mean(s for s, _ in allv):8.3f}"
              f"{statistics.mean(ok for _, ok in allv):9.3f}   {cats}")


if __name__ == "__main__":
    main()
