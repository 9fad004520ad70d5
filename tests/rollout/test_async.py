"""Asynchronous training (train.max_staleness >= 1): no turn older than k versions enters a
batch, every turn carries the version that sampled it, pushed weights reach the generation copy
between batches (or between turns with partial rollouts), the config refuses what an algorithm
cannot take, and a run trains, evaluates and stops its rollout thread."""

from __future__ import annotations

import copy
import json
import os
import threading
from typing import Any

import pytest
import torch

from agentrl.config import ConfigError, load_config
from agentrl.envpool import InProcessPool
from agentrl.policies import make_policy
from agentrl.registry import get_algorithm
from agentrl.rollout.ahead import AsyncRollouts
from agentrl.rollout.multiagent import make_engine
from agentrl.rollout.prompts import PromptBuilder
from agentrl.trainer import Trainer

CORRIDOR = ["env.id=test/Corridor-v0", "env.kwargs={length: 3}", "env.train_seeds=4",
            "rollout.groups=2", "rollout.group_size=2", "rollout.max_turns=4",
            "rollout.constrained=true", "rollout.max_new_tokens=8", "eval.episodes=2",
            "eval.every=0", "eval.before_training=false", "log.tensorboard=false",
            "log.progress=false", "train.checkpoint_every=0", "policy.tiny_corpus_episodes=2"]


def test_config_refuses_what_an_algorithm_cannot_take() -> None:
    assert load_config(None, CORRIDOR).train.max_staleness == 0  # synchronous by default
    # GiGPO (the quickstart's) takes stale groups, each from one version
    assert get_algorithm("gigpo").async_rollouts == "whole"
    load_config(None, CORRIDOR + ["train.max_staleness=2"])
    with pytest.raises(ConfigError, match="one policy version"):
        load_config(None, CORRIDOR + ["train.max_staleness=1", "train.partial_rollouts=true"])
    with pytest.raises(ConfigError, match="on-policy groups.*max_staleness=0"):
        load_config(None, CORRIDOR + ["algorithm.name=aepo", "train.max_staleness=1"])
    cfg = load_config(None, CORRIDOR + ["algorithm.name=grpo", "train.max_staleness=1",
                                        "train.partial_rollouts=true"])
    assert cfg.train.partial_rollouts
    with pytest.raises(ConfigError, match="needs train.max_staleness >= 1"):
        load_config(None, CORRIDOR + ["train.partial_rollouts=true"])
    with pytest.raises(ConfigError, match="policy.backend=hf"):
        load_config(None, CORRIDOR + ["train.max_staleness=1", "policy.backend=vllm"])
    with pytest.raises(ConfigError, match="strategy=single"):
        load_config(None, CORRIDOR + ["train.max_staleness=1", "train.strategy=ddp"])
    with pytest.raises(ConfigError, match="vllm_server runs with train.strategy=single"):
        load_config(None, CORRIDOR + ["policy.backend=vllm_server", "train.strategy=fsdp"])


def _loop(tiny_model: Any, tiny_tok: Any, overrides: list[str], pool: Any,
          collect: Any = None) -> AsyncRollouts:
    cfg = load_config(None, CORRIDOR + ["algorithm.name=grpo", "train.iterations=3",
                                        *overrides])
    algo = get_algorithm("grpo")(cfg.algorithm)
    if collect is not None:
        algo.collect = collect  # type: ignore[method-assign]

    def tasks(it: int, rng: Any) -> tuple[list[int], list[str]]:
        return [it, it], [f"it{it}", f"it{it}"]

    policy = make_policy(cfg, copy.deepcopy(tiny_model), tiny_tok)
    builder = PromptBuilder(tiny_tok, cfg.rollout)
    return AsyncRollouts(cfg, policy, lambda p: make_engine(p, pool, builder, cfg.rollout,
                                                            cfg.env.id), algo, tasks)


def _perturbed(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    """New weights for ``model`` (a copy with noise on every parameter; tied ones stay tied)."""
    g = torch.Generator().manual_seed(seed)
    new = copy.deepcopy(model)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return new.state_dict()


def test_batches_wait_for_their_version_and_load_the_pushed_weights(tiny_model: Any,
                                                                    tiny_tok: Any) -> None:
    pool = InProcessPool("test/Corridor-v0", {"length": 3}, 2)
    loop = _loop(tiny_model, tiny_tok, ["train.max_staleness=1"], pool)
    try:
        assert loop.inner.model is not tiny_model  # generation runs on its own copy
        b0 = loop.next_batch(0)
        b1 = loop.next_batch(1)  # k = 1: collected without waiting for version 1
        assert {t.policy_version for tr in b0 + b1 for t in tr.turns} == {0}
        assert loop.metrics(b1, 1)["rollout/staleness_max"] == 1.0
        # batch 2 needs version >= 1: nothing comes until the learner publishes it
        got: list[Any] = []
        th = threading.Thread(target=lambda: got.append(loop.next_batch(2)), daemon=True)
        th.start()
        th.join(timeout=3)
        assert th.is_alive() and not got
        w1 = _perturbed(tiny_model, 1)
        loop.publish(1, w1)
        th.join(timeout=120)
        assert got and {t.policy_version for tr in got[0] for t in tr.turns} == {1}
        assert loop.metrics(got[0], 2) == {"rollout/staleness_mean": 1.0,
                                           "rollout/staleness_max": 1.0}
        for k, v in loop.inner.model.state_dict().items():
            assert torch.equal(v, w1[k]), k  # the generation copy holds version 1's weights
        assert not torch.equal(next(tiny_model.parameters()),
                               next(loop.inner.model.parameters()))  # the learner's untouched
    finally:
        loop.close()
        pool.close()
    assert loop._thread is not None and not loop._thread.is_alive()


def test_partial_rollouts_switch_weights_between_turns(tiny_model: Any, tiny_tok: Any) -> None:
    pool = InProcessPool("test/Corridor-v0", {"length": 10}, 2)
    step = pool.step
    calls = [0]
    holder: dict[str, AsyncRollouts] = {}

    def stepping(slots: list[int], actions: list[str]) -> Any:
        calls[0] += 1
        if calls[0] == 2:  # the learner finishes an update while the episodes are at turn 2
            holder["loop"].publish(1, _perturbed(tiny_model, 2))
        return step(slots, actions)

    pool.step = stepping  # type: ignore[method-assign]
    for partial, expected in ((True, [0, 0, 1, 1]), (False, [0, 0, 0, 0])):
        calls[0] = 0
        extra = ["train.partial_rollouts=true"] if partial else []
        loop = _loop(tiny_model, tiny_tok, ["train.max_staleness=1", *extra], pool)
        holder["loop"] = loop
        try:
            (a, b) = loop.next_batch(0)
        finally:
            loop.close()
        assert [t.policy_version for t in a.turns] == expected
        assert [t.policy_version for t in b.turns] == expected
    pool.close()


def test_a_failing_collect_reaches_the_trainer(tiny_model: Any, tiny_tok: Any) -> None:
    def broken(engine: Any, seeds: list[int], gids: list[str]) -> Any:
        raise ValueError("boom")

    pool = InProcessPool("test/Corridor-v0", {}, 2)
    loop = _loop(tiny_model, tiny_tok, ["train.max_staleness=1"], pool, broken)
    with pytest.raises(RuntimeError, match="asynchronous rollouts failed in batch 0.*boom"):
        loop.next_batch(0)
    loop.close()
    pool.close()


def test_async_training_run(tmp_path: Any) -> None:
    cfg = load_config(None, CORRIDOR + ["train.iterations=3", "train.max_staleness=1",
                                        "train.tis_cap=2", f"output_dir={tmp_path}",
                                        "run_name=async"])
    tr = Trainer(cfg)
    batches: dict[int, list[Any]] = {}
    nxt = tr.rollouts.next_batch  # type: ignore[union-attr]

    def recording(it: int) -> list[Any]:
        batches[it] = nxt(it)
        return batches[it]

    tr.rollouts.next_batch = recording  # type: ignore[union-attr,method-assign]
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    out = tr.train()
    rows = [json.loads(x) for x in open(os.path.join(out["run_dir"], "metrics.jsonl"))]
    rows = [r for r in rows if "train/loss" in r]
    assert len(rows) == 3
    for i, r in enumerate(rows):
        versions = {t.policy_version for tr_ in batches[i] for t in tr_.turns}
        assert len(versions) == 1  # GiGPO: each batch from one version
        assert i - 1 <= versions.pop() <= i  # never more than max_staleness=1 behind
        assert r["rollout/staleness_max"] <= 1.0 and "perf/seconds_wait_rollout" in r
        assert "train/tis_weight_mean" in r
    assert any(not torch.equal(v, tr.model.state_dict()[k]) for k, v in before.items())
    assert not tr.rollouts._thread.is_alive()  # type: ignore[union-attr]
    assert 0.0 <= out["final"]["success_rate"] <= 1.0
