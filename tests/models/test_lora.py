"""LoRA through PEFT: only adapters train, the KL reference is the base with adapters off, the
merged weights are the adapter model's function, checkpoints hold both, a run resumes exactly."""

from __future__ import annotations

import copy
import os
import random

import pytest
import torch
from safetensors.torch import load_file

from agentrl.config import ConfigError, TrainConfig, load_config
from agentrl.learn.learner import LocalLearner
from agentrl.models import build_tiny_model
from agentrl.models.lora import (
    LoraSettings,
    apply_lora,
    lora_scale,
    merged_state_dict,
    trainable_share,
)
from agentrl.registry import get_algorithm
from agentrl.run import checkpoint
from agentrl.testing.distributed import VOCAB, make_trajectories
from agentrl.trainer import Trainer


def _lora_model(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(base copy, LoRA-injected model) with nonzero B, so the adapters change the output."""
    base = build_tiny_model(VOCAB, hidden=32, layers=2, heads=4, seed=seed)
    plain = copy.deepcopy(base)
    model = apply_lora(base, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj",
                                                                         "down_proj"]))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return plain, model


def _learner(model: torch.nn.Module, kl: float = 0.1) -> tuple[LocalLearner, object]:
    cls = get_algorithm("grpo")
    algo = cls(cls.Config(name="grpo", kl_coef=kl))
    algo.setup(model)
    return LocalLearner(model, TrainConfig(lr=1e-2), 1.0, algo, response_budget=10.0), algo


def test_reference_is_the_base_model_with_adapters_disabled() -> None:
    plain, model = _lora_model()
    learner, algo = _learner(model)
    assert learner.reference is model  # no second copy of the weights
    batch = algo.build_batch(make_trajectories(), 0)
    scores = learner.score(batch, {"ref_logprobs", "old_logprobs"})
    base_learner, _ = _learner(plain, kl=0.0)
    base = base_learner.score(batch, {"old_logprobs"}).logprobs
    mask = batch.loss_mask > 0
    assert float((scores.ref_logprobs - base)[mask].abs().max()) < 1e-6
    # the adapters matter: the policy's own logprobs are not the base's
    assert float((scores.logprobs - base)[mask].abs().max()) > 1e-3
    # and they are on again after the reference pass
    again = learner.score(batch, {"old_logprobs"}).logprobs
    assert torch.equal(again, scores.logprobs)


def test_only_adapters_train() -> None:
    _, model = _lora_model()
    learner, algo = _learner(model)
    trainable, total = trainable_share(model)
    assert 0 < trainable < total / 5
    opt_params = {id(p) for g in learner.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in model.parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = algo.build_batch(make_trajectories(), 0)
    batch.attach(learner.score(batch, algo.requires))
    algo.credit(batch)
    learner.update(batch, random.Random(0))
    for n, p in model.named_parameters():
        changed = not torch.equal(before[n], p.detach())
        assert changed == ("lora_" in n), n


def test_merged_weights_are_the_adapter_models_function() -> None:
    plain, model = _lora_model()
    merged = merged_state_dict(model.state_dict(), lora_scale(model))
    assert set(merged) == set(plain.state_dict())
    plain.load_state_dict(merged)
    ids = torch.randint(2, VOCAB, (3, 11))
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, plain(input_ids=ids).logits
    assert float((a - b).abs().max()) < 1e-5
    # PEFT's own (destructive) merge agrees
    reference = copy.deepcopy(model.peft_wrapper).merge_and_unload().state_dict()
    for k, v in reference.items():
        assert torch.allclose(merged[k], v, atol=1e-6), k


def test_bad_target_modules_name_the_model_layers() -> None:
    base = build_tiny_model(VOCAB, hidden=32, layers=1, heads=4)
    with pytest.raises(ValueError, match="q_proj"):
        apply_lora(base, LoraSettings(target_modules=["query_key_value"]))
    with pytest.raises(ConfigError, match="policy.lora.rank"):
        load_config(None, ["policy.lora={rank: 4}"])


SMALL = ["env.kwargs={level: 3, split: train, num_games: 2}", "train.lr_schedule=constant",
         "env.eval_kwargs={split: eval, num_games: 2}", "env.train_seeds=2",
         "rollout.groups=2", "rollout.group_size=3", "rollout.max_turns=6",
         "policy.tiny_corpus_episodes=4", "eval.episodes=4", "eval.every=0",
         "eval.before_training=false", "log.tensorboard=false", "log.progress=false",
         "train.checkpoint_every=1", "policy.lora={r: 4, alpha: 8}", "algorithm.kl_coef=0.1",
         "train.lr=1e-2"]


def test_lora_run_resumes_exactly_and_saves_a_peft_adapter(tmp_path) -> None:
    def cfg(its: int, name: str):
        return load_config(None, SMALL + [f"output_dir={tmp_path}", f"train.iterations={its}",
                                          f"run_name={name}"])

    full = Trainer(cfg(3, "full")).train()
    part = Trainer(cfg(2, "part")).train()
    Trainer(cfg(3, "part"), resume=True, run_dir=part["run_dir"]).train()
    cp_full, cp_part = checkpoint.latest(full["run_dir"]), checkpoint.latest(part["run_dir"])
    a = load_file(os.path.join(cp_full, "model", "model.safetensors"))
    b = load_file(os.path.join(cp_part, "model", "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # model/ is a plain merged model; adapter/ loads onto the base with PEFT
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(os.path.join(cp_part, "model"))
    base = AutoModelForCausalLM.from_pretrained(os.path.join(part["run_dir"], "base_model"))
    adapted = PeftModel.from_pretrained(base, os.path.join(cp_part, "adapter"))
    ids = torch.randint(5, 100, (2, 9))
    with torch.no_grad():
        diff = (merged(input_ids=ids).logits - adapted(input_ids=ids).logits).abs().max()
    assert float(diff) < 1e-4
    base_w = load_file(os.path.join(part["run_dir"], "base_model", "model.safetensors"))
    assert any(not torch.equal(base_w[k], b[k]) for k in base_w)  # training moved the model
