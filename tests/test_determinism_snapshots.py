"""Determinism snapshots: two training iterations per algorithm on a tiny config, metrics to 1e-6.

A refactor must leave these numbers unchanged. The snapshots live in
``tests/snapshots/determinism.json``; regenerate them only for an intentional change, with
``AGENTRL_UPDATE_SNAPSHOTS=1 pytest tests/test_determinism_snapshots.py``, and say why in the
commit message.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from agentrl.config import load_config
from agentrl.trainer import Trainer

SNAPSHOT = os.path.join(os.path.dirname(__file__), "snapshots", "determinism.json")
UPDATE = os.environ.get("AGENTRL_UPDATE_SNAPSHOTS") == "1"

BASE = ["env.id=test/Corridor-v0", "env.kwargs={length: 3}", "env.eval_kwargs={}",
        "env.train_seeds=4", "rollout.groups=2", "rollout.group_size=4", "rollout.max_turns=5",
        "rollout.step_penalty=0.01", "rollout.invalid_penalty=0.1",
        "policy.tiny_corpus_episodes=2", "policy.tiny_hidden=32", "policy.tiny_layers=2",
        "train.iterations=2", "train.lr_schedule=constant", "train.minibatches=2",
        "eval.episodes=2", "eval.every=0", "eval.before_training=false",
        "log.tensorboard=false", "log.progress=false", "log.trajectories_every=0",
        "train.checkpoint_every=0"]

CASES = {
    "grpo": ["algorithm.name=grpo"],
    "grpo_kl_entropy": ["algorithm.name=grpo", "algorithm.kl_coef=0.05",
                        "algorithm.entropy_coef=0.01"],
    "ppo": ["algorithm.name=ppo"],
    "gigpo": ["algorithm.name=gigpo"],
    "epo_grpo": ["algorithm.name=epo", "algorithm.base=grpo"],
    "epo_ppo": ["algorithm.name=epo", "algorithm.base=ppo"],
    "empg": ["algorithm.name=empg"],
    "aepo": ["algorithm.name=aepo"],
    "spear": ["algorithm.name=spear"],
    # free decoding (invalid actions and their penalty), full context, group filtering, TIS
    "gigpo_free": ["algorithm.name=gigpo", "rollout.constrained=false"],
    "grpo_full_free": ["algorithm.name=grpo", "rollout.context=full", "rollout.constrained=false",
                       "algorithm.filter_groups=true"],
    "ppo_tis": ["algorithm.name=ppo", "train.tis_cap=2.0"],
}

# Wall-clock, memory and host-dependent keys are not part of the behaviour.
_VOLATILE = ("perf/", "mem/", "memory/", "sys/")


def _run(tmp_path, name: str, overrides: list[str]) -> dict[str, float]:
    cfg = load_config(None, BASE + overrides + [f"output_dir={tmp_path}", f"run_name={name}"])
    tr = Trainer(cfg)
    out: dict[str, float] = {}
    try:
        for it in range(cfg.train.iterations):
            m = tr.train_iteration()
            tr.iteration += 1
            for k, v in m.items():
                if isinstance(v, (int, float)) and not k.startswith(_VOLATILE) \
                        and "seconds" not in k and "rss" not in k and "memory" not in k:
                    out[f"{it}:{k}"] = float(v)
        with torch.no_grad():
            out["final:param_abs_sum"] = float(sum(p.detach().double().abs().sum()
                                                   for p in tr.model.parameters()))
    finally:
        tr.close()
    return out


def _load() -> dict[str, dict[str, float]]:
    if not os.path.exists(SNAPSHOT):
        return {}
    with open(SNAPSHOT, encoding="utf-8") as f:
        return json.load(f)


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_iterations_match_snapshot(tmp_path, case: str) -> None:
    got = _run(tmp_path, case, CASES[case])
    snaps = _load()
    if UPDATE:
        snaps[case] = got
        with open(SNAPSHOT, "w", encoding="utf-8") as f:
            json.dump(snaps, f, indent=1, sort_keys=True)
        return
    assert case in snaps, f"no snapshot for {case}: run with AGENTRL_UPDATE_SNAPSHOTS=1"
    want = snaps[case]
    missing = sorted(set(want) - set(got))
    assert not missing, f"metrics no longer produced: {missing}"
    bad = {k: (want[k], got[k]) for k in want
           if not (math.isclose(want[k], got[k], rel_tol=1e-6, abs_tol=1e-6)
                   or (math.isnan(want[k]) and math.isnan(got[k])))}
    assert not bad, f"{case}: metrics changed (snapshot, now): {bad}"
