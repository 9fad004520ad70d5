"""The benchmark helpers at tiny budgets: the multi-turn generation benchmark reuses the KV
cache with identical tokens, and the pairing helpers pair what they should."""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def test_alternate_rotates_and_pairs() -> None:
    from examples.benchmarks import machine

    calls: list[str] = []
    out = machine.alternate({"a": lambda: calls.append("a") or 2.0,
                             "b": lambda: calls.append("b") or 1.0}, 3)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert machine.paired_ratios(out["a"], out["b"]) == [2.0, 2.0, 2.0]
    assert "threads" in machine.describe() and machine.matmul_flops(64, 1) > 0


def test_multiturn_benchmark_tiny_budget() -> None:
    from examples.benchmarks import multiturn_generation as M

    cfg, net, tok = M.setup("tiny", ["rollout.max_turns=4", "policy.tiny_corpus_episodes=3",
                                     "env.kwargs={level: 3, split: train, num_games: 2}"])
    res = M.kv_reuse(cfg, net, tok, episodes=4, pairs=1)
    assert res["same"]
    without, with_reuse = res["prefill_per_episode"]
    assert with_reuse * 1.5 < without


def test_env_overhead_benchmark_tiny_budget(capsys) -> None:
    from examples.benchmarks import env_overhead as E

    fam = E.families()["tooluse"]
    fam.seeds = [0, 1]
    rates = E.measure(fam, pairs=1, seconds=0.01, process=False)
    assert set(rates) == {"bare", "env", "pool"}
    assert all(len(v) == 1 and v[0] > 0 for v in rates.values())
    assert E.report("tooluse", rates)[-1].startswith("pool/bare ")


def test_served_quickstart_benchmark_tiny_budget(capsys) -> None:
    """Both modes run to the end and the served env gives the in-process result."""
    from examples.benchmarks import served_quickstart as S

    res = S.main(["--seeds", "0", "--threads", "1", "--set", "train.iterations=1",
                  "rollout.groups=2", "rollout.group_size=2", "eval.episodes=4",
                  "policy.tiny_corpus_episodes=4", "log.tensorboard=false"])
    runs = res["results"]
    assert runs["served"][0]["after"] == runs["in process"][0]["after"]
    assert runs["served"][0]["before"] == runs["in process"][0]["before"]
    assert len(res["ratios"]) == 1 and res["ratios"][0] > 0
    assert "served / in process" in capsys.readouterr().out
