"""Silent-failure alarms: each fires on metrics built to trigger it, none on healthy ones, and a
real run that truncates every reply prints and logs the alarm."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import SMALL

from agentrl.config import AlarmConfig, RolloutConfig, TrainConfig, load_config
from agentrl.envpool import InProcessPool
from agentrl.learn.batch import make_batch
from agentrl.learn.learner import LocalLearner
from agentrl.policies.hf import HFPolicy
from agentrl.registry import get_algorithm
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.prompts import PromptBuilder
from agentrl.run.alarms import (
    ALARM_NAMES,
    alarm_metrics,
    check_alarms,
    firing_alarms,
    logprob_mismatch,
    memory_metrics,
)
from agentrl.trainer import Trainer

HEALTHY = {"algo/zero_variance_groups": 0.25, "rollout/response_length_hit_rate": 0.02,
           "rollout/invalid_action_rate": 0.05, "train/logprob_mismatch": 2e-7,
           "train/logprob_mismatch_max": 1e-6, "perf/host_memory_fraction": 0.1,
           "perf/host_rss_gb": 1.5, "perf/workers_rss_gb": 0.5, "train/loss": 0.03,
           "train/grad_norm": 0.4, "rollout/termination/env_error": 0.02}

# One sick metric per alarm, each just past its default threshold.
SICK = {"zero_variance_groups": {"algo/zero_variance_groups": 1.0},
        "zero_grad_norm": {"train/grad_norm": 0.0},
        "lost_episodes": {"rollout/termination/env_timeout": 0.25},
        "response_length_hit_rate": {"rollout/response_length_hit_rate": 0.8},
        "invalid_action_rate": {"rollout/invalid_action_rate": 0.51},
        "logprob_mismatch": {"train/logprob_mismatch": 0.3, "train/logprob_mismatch_max": 2.0},
        "host_memory_fraction": {"perf/host_memory_fraction": 0.95},
        "nonfinite_loss": {"train/loss": float("nan")}}


def test_healthy_metrics_raise_no_alarm() -> None:
    assert check_alarms(HEALTHY, AlarmConfig()) == []
    logged = alarm_metrics(HEALTHY, AlarmConfig())
    assert logged == {f"alarm/{n}": 0.0 for n in ALARM_NAMES}


def test_missing_metrics_raise_no_alarm() -> None:
    # e.g. PPO logs no algo/zero_variance_groups: absence is not a failure
    assert check_alarms({}, AlarmConfig()) == []


@pytest.mark.parametrize("name", ALARM_NAMES)
def test_each_alarm_fires_alone(name: str, capsys) -> None:
    assert set(SICK) == set(ALARM_NAMES)  # every alarm has a trigger case here
    fired = firing_alarms({**HEALTHY, **SICK[name]}, AlarmConfig())
    assert list(fired) == [name]
    logged = alarm_metrics({**HEALTHY, **SICK[name]}, AlarmConfig())
    assert logged[f"alarm/{name}"] == 1.0 and sum(logged.values()) == 1.0
    out = capsys.readouterr().out
    assert out.count("[agentrl] ALARM:") == 1 and f"ALARM: {name}:" in out


def test_thresholds_come_from_config() -> None:
    sick = {**HEALTHY, "rollout/invalid_action_rate": 0.3}
    assert check_alarms(sick, AlarmConfig()) == []  # 0.3 < default 0.5
    assert len(check_alarms(sick, AlarmConfig(invalid_action_rate=0.2))) == 1
    assert check_alarms(sick, AlarmConfig(invalid_action_rate=0.0)) == []  # 0 = off
    assert check_alarms({**HEALTHY, **SICK["nonfinite_loss"]}, AlarmConfig(enabled=False)) == []
    cfg = load_config(None, ["alarms.invalid_action_rate=0.2"])
    assert cfg.alarms.invalid_action_rate == 0.2


def test_messages_say_what_to_do() -> None:
    sick = {k: v for case in SICK.values() for k, v in case.items()}
    msgs = check_alarms({**HEALTHY, **sick}, AlarmConfig())
    assert len(msgs) == len(ALARM_NAMES)
    assert "rollout.max_new_tokens" in " ".join(msgs) and "rollout.group_size" in " ".join(msgs)


def _batch_and_learner(tiny_tok, tiny_model):
    cfg = RolloutConfig(max_turns=3, max_new_tokens=5, template="{observation}",
                        action_format="raw", constrained=True)
    pol = HFPolicy(tiny_model, tiny_tok, batch_size=4)
    pol.seed(0)
    eng = RolloutEngine(pol, InProcessPool("test/Corridor-v0", {}, 4), PromptBuilder(tiny_tok, cfg),
                        cfg, "test/Corridor-v0")
    batch = make_batch(eng.run([0, 0, 1, 1]), tiny_tok.pad_token_id)
    acfg = load_config(None).algorithm
    algo = get_algorithm("grpo")(acfg)
    algo.setup(tiny_model)
    return batch, LocalLearner(tiny_model, TrainConfig(micro_batch_tokens=256), 1.0, algo)


def test_logprob_mismatch_is_zero_on_policy_and_fires_when_the_sampler_drifts(
        tiny_tok, tiny_model) -> None:
    batch, learner = _batch_and_learner(tiny_tok, tiny_model)
    m = logprob_mismatch(learner.score(batch, set()), batch)
    assert m["train/logprob_mismatch"] < 1e-5  # same weights, fp32 CPU: equal up to rounding
    assert check_alarms(m, AlarmConfig()) == []
    # A sampler running other weights (stale sync, wrong dtype) is what this catches: shift
    # every sampled logprob by 0.2 nats -> mean |diff| = 0.2 > 0.05.
    batch.sampler_logprobs = batch.sampler_logprobs - 0.2 * batch.loss_mask
    m = logprob_mismatch(learner.score(batch, set()), batch)
    assert abs(m["train/logprob_mismatch"] - 0.2) < 1e-4
    assert [a.split(":")[0] for a in check_alarms(m, AlarmConfig())] == ["logprob_mismatch"]


def test_memory_metrics_see_this_process_and_its_children() -> None:
    m = memory_metrics()
    assert 0.01 < m["perf/host_rss_gb"] < 64 and 0 < m["perf/host_memory_fraction"] < 1
    child = subprocess.Popen([sys.executable, "-c", "import time; x = bytearray(50 << 20); "
                              "time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        import time

        deadline = time.time() + 10  # until the child has touched its 50 MB
        while time.time() < deadline:
            m2 = memory_metrics()
            if m2["perf/workers_rss_gb"] > 0.045:
                break
            time.sleep(0.1)
        assert m2["perf/workers"] >= 1 and m2["perf/workers_rss_gb"] > 0.045
    finally:
        child.kill()
        child.wait()


def test_real_run_with_truncated_replies_prints_and_logs_alarms(tmp_path, capsys) -> None:
    # Unconstrained raw replies from a random tiny model cut at 2 tokens: nearly every reply
    # hits the limit and is not a valid command.
    cfg = load_config(None, SMALL + ["train.iterations=1", "rollout.constrained=false",
                                     "rollout.max_new_tokens=2", "eval.before_training=false",
                                     f"output_dir={tmp_path}", "run_name=sick"])
    out = Trainer(cfg).train()
    printed = capsys.readouterr().out
    assert "[agentrl] ALARM: response_length_hit_rate:" in printed
    assert "[agentrl] ALARM: invalid_action_rate:" in printed
    rows = [json.loads(x) for x in open(os.path.join(out["run_dir"], "metrics.jsonl"))]
    it1 = next(r for r in rows if "train/loss" in r)
    assert it1["alarm/response_length_hit_rate"] == 1.0 and it1["alarm/invalid_action_rate"] == 1.0
    assert it1["alarm/logprob_mismatch"] == 0.0 and it1["train/logprob_mismatch"] < 1e-5
    assert it1["perf/host_rss_gb"] > 0 and "perf/workers_rss_gb" in it1


def test_the_invalid_action_fix_fits_the_action_format() -> None:

    sick = {**HEALTHY, "rollout/invalid_action_rate": 0.9}
    (tags,) = check_alarms(sick, AlarmConfig(), RolloutConfig(action_format="tags"))
    assert "set rollout.constrained=true" in tags
    (done,) = check_alarms(sick, AlarmConfig(), RolloutConfig(constrained=True))
    assert "constrained" not in done  # already on
    # tool calls cannot be constrained (the config refuses it): never suggest it
    (tool,) = check_alarms(sick, AlarmConfig(), RolloutConfig(action_format="tool_call"))
    assert "constrained" not in tool and "rollout.tool_parser" in tool
