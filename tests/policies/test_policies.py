"""The Policy base class and the backend table: lifecycle defaults, sampler state that resumes
exactly, backends chosen by name or by ``pkg.module:Class``, and a trainer that drives the
whole lifecycle through the base class alone."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import torch
from helpers import SMALL

from agentrl.config import load_config
from agentrl.policies import BACKENDS, Policy, VLLMConfig, backend_class, make_policy
from agentrl.policies.base import Generation, SamplingParams
from agentrl.policies.hf import HFPolicy
from agentrl.trainer import Trainer


class Echo(Policy):
    """Only what a backend must write: generate (and from_config to be built from a config)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: Any = None) -> list[Generation]:
        return [Generation(p[-1:], [0.0], "stop") for p in prompts]


def test_a_backend_needs_only_generate(tiny_tok) -> None:
    pol = Echo(tiny_tok)
    pol.seed(3)
    pol.update_weights(None)
    pol.sleep()
    pol.wake()
    pol.load_state_dict(pol.state_dict())
    assert pol.state_dict() == {} and pol.eos_token_id == tiny_tok.eos_token_id
    assert pol.generate([[5, 6]], SamplingParams())[0].token_ids == [6]
    pol.close()
    with pytest.raises(NotImplementedError, match="from_config"):
        Echo.from_config(load_config(None), None, tiny_tok)
    with pytest.raises(NotImplementedError, match="generate"):
        Policy().generate([[1]], SamplingParams())


def test_hf_sampler_state_restores_the_same_samples(tiny_model, tiny_tok) -> None:
    pol = HFPolicy(tiny_model, tiny_tok)
    pol.seed(0)
    prompts = [tiny_tok.encode("You are in a room.")] * 4
    sp = SamplingParams(max_new_tokens=6)
    pol.generate(prompts, sp)
    state = pol.state_dict()
    a = [g.token_ids for g in pol.generate(prompts, sp)]
    pol.seed(123)  # e.g. an evaluation in between
    pol.generate(prompts, sp)
    pol.load_state_dict(state)
    assert [g.token_ids for g in pol.generate(prompts, sp)] == a
    assert len({tuple(x) for x in a}) > 1  # really sampled


def test_backends_are_found_by_name_or_module_path(tiny_model, tiny_tok) -> None:
    assert set(BACKENDS) == {"hf", "vllm", "openai", "vllm_server", "expert"}
    cfg = load_config(None)
    pol = make_policy(cfg, tiny_model, tiny_tok)
    assert type(pol) is HFPolicy and pol.model is tiny_model
    assert backend_class("test_policies:Echo") is Echo
    with pytest.raises(KeyError, match="unknown backend 'vlm'; did you mean 'vllm'"):
        backend_class("vlm")
    with pytest.raises(KeyError, match="not a subclass of agentrl.policies.Policy"):
        backend_class("test_policies:SMALL")


def test_the_vllm_section_is_validated_without_importing_vllm() -> None:
    code = ("import sys; from agentrl.config import load_config; "
            "c = load_config(None, ['policy.backend=vllm', 'policy.sleep_level=1']); "
            "print(type(c.policy).__name__, c.policy.sleep_level, 'vllm' in sys.modules, "
            "'agentrl.policies.vllm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["VLLMConfig", "1", "False", "False"], out.stderr
    assert VLLMConfig.__dataclass_fields__["sleep_level"].metadata["help"]


class Recording(HFPolicy):
    """The hf backend, logging every lifecycle call the trainer makes."""

    calls: list[str] = []

    @classmethod
    def from_config(cls, cfg: Any, model: Any, tokenizer: Any) -> Recording:
        Recording.calls = ["from_config"]
        return cls(model, tokenizer, batch_size=cfg.rollout.batch_size)

    def __getattribute__(self, name: str) -> Any:
        if name in ("seed", "state_dict", "load_state_dict", "sleep", "wake",
                    "update_weights", "close"):
            Recording.calls.append(name)
        return super().__getattribute__(name)


def test_the_trainer_drives_the_lifecycle_through_the_base_class(tmp_path) -> None:
    """A backend loaded by module path is seeded with the run's seed once built; it gets, per
    iteration, sleep -> update_weights -> wake;
    its sampler state is saved around each evaluation and in every checkpoint; close at the
    end. The checkpoint holds exactly what state_dict returned."""
    cfg = load_config(None, SMALL + ["policy.backend=test_policies:Recording",
                                     "train.iterations=2", "eval.every=1", "run_name=rec",
                                     f"output_dir={tmp_path}"])
    tr = Trainer(cfg)
    assert type(tr.policy) is Recording
    tr.train()
    calls = [c for c in Recording.calls if c != "from_config"]
    it = ["sleep", "update_weights", "wake"]
    ev = ["state_dict", "seed", "load_state_dict"]
    ck = ["state_dict"]
    # the run's seed, before-eval, iteration 1 (+ mid-run eval, checkpoint), iteration 2
    # (+ checkpoint), final eval, final checkpoint, close
    assert calls == ["seed"] + ev + it + ev + ck + it + ck + ev + ck + ["close"], calls
    from agentrl.run import checkpoint
    st = checkpoint.load_state(checkpoint.latest(tr.run_dir))
    assert torch.equal(st["policy"]["generator"], tr.policy._generator.get_state())
