"""The start-up memory estimate: each part follows the settings that change it, and a run that
cannot fit stops with what to change."""

from __future__ import annotations

import pytest
import torch

from agentrl.config import load_config
from agentrl.models import build_tiny_model, memory
from agentrl.models.lora import LoraSettings, apply_lora
from agentrl.models.memory import MemoryEstimateError, check, estimate
from agentrl.registry import get_algorithm


def _model():
    return build_tiny_model(600, hidden=64, layers=2, heads=4)


def _algo(**kw):
    cls = get_algorithm("grpo")
    return cls(cls.Config(name="grpo", **kw))


def test_parts_follow_the_settings() -> None:
    m = _model()
    n = sum(p.numel() for p in m.parameters())
    cfg = load_config(None, ["train.micro_batch_tokens=1024"])
    e = estimate(m, cfg, _algo(kl_coef=0.1))
    assert e.weights == n * 4 and e.gradients == n * 4 and e.optimizer == 2 * n * 4
    assert e.reference == n * 4  # a frozen copy for KL
    assert estimate(m, cfg, _algo()).reference == 0
    fsdp = estimate(m, load_config(None, ["train.micro_batch_tokens=1024",
                                          "train.strategy=fsdp"]), _algo(), world=2)
    assert fsdp.weights == e.weights / 2 and fsdp.optimizer == e.optimizer / 2
    ckpt = estimate(m, load_config(None, ["train.micro_batch_tokens=1024",
                                          "train.activation_checkpointing=true"]), _algo())
    assert ckpt.activations < e.activations
    double = estimate(m, load_config(None, ["train.micro_batch_tokens=2048"]), _algo())
    assert double.activations == pytest.approx(2 * e.activations)
    lora_cfg = load_config(None, ["train.micro_batch_tokens=1024", "policy.lora={r: 4}"])
    lm = apply_lora(_model(), LoraSettings(r=4))
    le = estimate(lm, lora_cfg, _algo(kl_coef=0.1))
    assert le.reference == 0 and 0 < le.optimizer < e.optimizer / 5  # adapters only


def test_a_run_that_cannot_fit_stops_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    e = estimate(_model(), load_config(None, ["train.micro_batch_tokens=100000"]), _algo())
    assert e.activations > e.weights
    monkeypatch.setattr(memory, "available_bytes", lambda device: e.total / 10)
    with pytest.raises(MemoryEstimateError, match="micro_batch_tokens"):
        check(e, torch.device("cpu"))
    assert "GB free" in check(e, torch.device("cpu"), mode="warn")
    monkeypatch.setattr(memory, "available_bytes", lambda device: e.total * 10)
    assert "WARNING" not in check(e, torch.device("cpu"))
    # the engine's KV bound alone over the limit: a warning, not a stop
    monkeypatch.setattr(memory, "available_bytes", lambda device: e.total - e.kv_cache / 2)
    assert "WARNING" in check(e, torch.device("cpu"))


def test_learner_memory_benchmark_runs_on_the_tiny_model() -> None:
    from examples.benchmarks.learner_memory import SETTINGS, one

    full = one("tiny", SETTINGS["full-fp32"], rows=4, tokens=32)
    lora = one("tiny", SETTINGS["lora-fp32"], rows=4, tokens=32)
    assert full["trainable_share"] == 1.0 and 0 < lora["trainable_share"] < 0.5
    assert full["seconds_per_update"] > 0 and full["estimate_learner_gb"] > 0
