"""LoRA through PEFT: ``policy.lora: {r: 16, alpha: 32, dropout: 0.05, target_modules: [...]}``.

Only the adapters train (the base weights are frozen, so AdamW holds state for the adapters
alone). The learner runs the HF model with PEFT's LoRA layers injected
(``PeftModel.get_base_model()``), so every scoring and training path is the plain-model one.

- KL reference: the same model with its adapters switched off (`adapters_disabled`): the
  initial policy without a second copy of the weights.
- Generation: the ``hf`` engine samples with the learner's own module (adapters on, the exact
  function the learner scores, nothing to copy); an engine with its own weights (vLLM, or the
  FSDP generation copy) gets merged weights, W + (alpha / r) B A (`merged_state_dict`).
- Checkpoints: ``model/`` holds the merged full model (``agentrl eval`` and
  ``from_pretrained`` load it as any model) and ``adapter/`` the adapter in the PEFT format
  (``PeftModel.from_pretrained(base, "adapter")``). A resumed run rebuilds the frozen base
  (from ``policy.model``, or for the randomly initialised tiny model from
  ``RUN_DIR/base_model``, written at the start) and loads the adapter onto it, so the run
  continues exactly.

Several named adapters (``multiagent.policies=per_role``, `agentrl.learn.roles`: one per role of a
game): `apply_lora` with ``adapters`` injects one adapter per name on the same frozen base,
every one trainable; `use_adapter` picks the one that runs. A checkpoint then holds
``adapter/<name>/`` for each (PEFT's layout for adapters not named ``default``),
``roles/<name>/model/`` the base merged with that adapter alone, and ``model/`` the base merged
with the first adapter (the first role's policy), so ``model/`` is one well-defined policy and
never a sum of several adapters.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from agentrl.fields import F

BASE_DIR = "base_model"  # in the run directory: the tiny model's frozen base weights


@dataclass
class LoraSettings:
    """``policy.lora``: the adapters PEFT injects."""

    r: int = F(16, "rank of each adapter", ge=1)
    alpha: float = F(32.0, "scale numerator: the update is (alpha / r) B A", gt=0)
    dropout: float = F(0.0, "dropout on the adapter's input (0 keeps training deterministic)",
                       ge=0, lt=1)
    target_modules: list[str] = F(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                 "up_proj", "down_proj"],
        help="names of the linear layers that get adapters (Qwen2/Llama/SmolLM2 names)")


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ImportError("policy.lora needs PEFT: pip install 'agentrl[lora]'") from None
    return peft


def _lora_config(s: LoraSettings) -> Any:
    return _peft().LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                              target_modules=list(s.target_modules), task_type="CAUSAL_LM")


def apply_lora(model: nn.Module, s: LoraSettings, adapters: list[str] | None = None
               ) -> nn.Module:
    """Inject adapters into ``model`` (in place; base weights frozen) and return the HF model
    with its LoRA layers, the module the learner trains (``PeftModel.get_base_model()``).

    ``adapters``: names of several adapters with the same settings (valid module names: no
    dots), all trainable, the first one active; default: one adapter named ``default``."""
    peft = _peft()
    names = list(adapters or ["default"])
    for n in names:
        if not n or "." in n or n != n.strip():
            raise ValueError(f"LoRA adapter name {n!r}: a module name without dots is needed")
    try:
        wrapped = peft.get_peft_model(model, _lora_config(s), adapter_name=names[0])
    except ValueError as e:  # no module matched target_modules
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                         if isinstance(m, nn.Linear)})
        raise ValueError(f"policy.lora.target_modules={list(s.target_modules)}: {e}. Linear "
                         f"layers of this model: {linear}") from None
    for n in names[1:]:
        wrapped.add_adapter(n, _lora_config(s))
    return _unwrap(_all_trainable(wrapped, names))


def _all_trainable(wrapped: Any, names: list[str]) -> Any:
    """Every adapter trainable (PEFT leaves only the active one so), the first one active: an
    optimizer built now holds every adapter's parameters."""
    wrapped.set_adapter(names[0])
    if len(names) > 1:
        wrapped.set_requires_grad(names, True)
    return wrapped


def adapter_names(model: nn.Module) -> list[str]:
    """The adapters of a LoRA-injected model, in the order they were added."""
    return list(model.peft_wrapper.peft_config)


@contextlib.contextmanager
def use_adapter(model: nn.Module, name: str) -> Iterator[None]:
    """Run ``model`` with adapter ``name`` alone (and only its parameters requiring grad, so
    a backward pass leaves the other adapters without gradients); the adapter active before
    is active again afterwards. Parameters that an optimizer holds stay in it."""
    wrapper = model.peft_wrapper
    before = wrapper.active_adapter
    wrapper.set_adapter(name)
    try:
        yield
    finally:
        wrapper.set_adapter(before)


def _unwrap(wrapped: Any) -> nn.Module:
    inner = wrapped.get_base_model()
    # Kept outside the module tree (nn.Module.__setattr__ would register it as a child, and
    # the PeftModel contains ``inner``): saving in the PEFT format needs the PeftModel.
    object.__setattr__(inner, "peft_wrapper", wrapped)
    return inner


def lora_scale(model: nn.Module) -> float:
    """alpha / r of the model's adapter."""
    c = next(iter(model.peft_wrapper.peft_config.values()))  # every adapter alike
    return float(c.lora_alpha) / float(c.r)


def has_adapters(model: nn.Module) -> bool:
    """Whether ``model`` holds PEFT adapter layers (False without importing PEFT when it was
    never imported)."""
    if "peft" not in sys.modules:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


@contextlib.contextmanager
def adapters_disabled(model: nn.Module) -> Iterator[None]:
    """Run ``model`` as its base (every adapter layer off), e.g. for the KL reference."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


def merged_state_dict(sd: dict[str, torch.Tensor], scale: float, adapter: str | None = None
                      ) -> dict[str, torch.Tensor]:
    """The plain model's state dict with every adapter merged (or only adapter ``adapter``),
    W + scale B A (scale = alpha / r, `lora_scale`), from the LoRA-injected model's state dict
    (or FSDP's gathered one). The model is not changed (unlike PEFT's ``merge_and_unload``)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if ".lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    for k in [k for k in sd if ".lora_A." in k and k.endswith(".weight")]:
        prefix, adapter_k = k.split(".lora_A.")[0], k.split(".lora_A.")[1].split(".")[0]
        if adapter is not None and adapter_k != adapter:
            continue
        a, b = sd[k], sd[f"{prefix}.lora_B.{adapter_k}.weight"]  # (r, in), (out, r)
        w = out[f"{prefix}.weight"]
        out[f"{prefix}.weight"] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return out


class MergedCheckpoint:
    """What `agentrl.run.checkpoint.save` writes for a LoRA model: ``save_pretrained(path)``
    writes the merged full model to ``path`` and the PEFT adapter beside it (``adapter/``).

    With several adapters: ``path`` gets the base merged with the first adapter, each adapter
    goes to ``adapter/<name>/``, and ``roles/<name>/model/`` beside ``path`` holds the base
    merged with that adapter alone (with ``tokenizer`` saved there, when given)."""

    def __init__(self, model: nn.Module, tokenizer: Any = None) -> None:
        self.model, self.tokenizer = model, tokenizer

    def save_pretrained(self, path: str, safe_serialization: bool = True) -> None:
        self.model.peft_wrapper.save_pretrained(os.path.join(os.path.dirname(path), "adapter"))
        names = adapter_names(self.model)
        sd = self.model.state_dict()
        if len(names) == 1:
            self._write(merged_state_dict(sd, lora_scale(self.model)), path, safe_serialization)
            return
        for i, name in enumerate(names):
            merged = merged_state_dict(sd, lora_scale(self.model), name)
            role_dir = os.path.join(os.path.dirname(path), "roles", name, "model")
            self._write(merged, role_dir, safe_serialization)
            if self.tokenizer is not None:
                self.tokenizer.save_pretrained(role_dir)
            if i == 0:
                self._write(merged, path, safe_serialization)

    def _write(self, merged: dict[str, torch.Tensor], path: str, safe_serialization: bool
               ) -> None:
        base = type(self.model)(self.model.config)  # plain layers, merged weights
        base.load_state_dict(merged, strict=False)
        base.tie_weights()
        base.to(next(self.model.parameters()).dtype).save_pretrained(
            path, safe_serialization=safe_serialization)


def build_lora_model(cfg: Any, run_dir: str, resume_from: str | None,
                     adapters: list[str] | None = None,
                     write_call: Any = None) -> tuple[nn.Module, Any]:
    """(LoRA-injected model, tokenizer) for ``cfg.policy.lora``: a fresh run injects new
    adapters (saving the tiny model's random base in ``run_dir`` first); a resumed run loads
    the checkpoint's adapter onto the same frozen base. ``adapters``: several named adapters
    (`apply_lora`), resumed from ``adapter/<name>/`` each. ``write_call``: as in
    `agentrl.models.build_policy_model`."""
    from agentrl import collectives as C
    from agentrl.models import build_policy_model, load_pretrained, own_storage, resolve_device

    p = cfg.policy
    base_dir = os.path.join(run_dir, BASE_DIR)
    if resume_from is None:
        model, tok = build_policy_model(cfg, write_call)
        if p.model == "tiny" and C.rank() == 0:
            model.save_pretrained(base_dir)
            tok.save_pretrained(base_dir)
        return apply_lora(model, p.lora, adapters), tok
    src = base_dir if p.model == "tiny" else p.model
    model, _ = load_pretrained(src, p.dtype)
    _, tok = load_pretrained(os.path.join(resume_from, "model"), p.dtype)
    model.to(resolve_device(p.device))
    peft = _peft()
    saved = os.path.join(resume_from, "adapter")
    if not adapters:
        wrapped = peft.PeftModel.from_pretrained(model, saved, is_trainable=True)
        return own_storage(_unwrap(wrapped)), tok
    for name in adapters:
        if not os.path.isdir(os.path.join(saved, name)):
            raise ValueError(f"{resume_from}: no adapter {name!r} in adapter/ (found "
                             f"{sorted(os.listdir(saved))}); it was not saved by a "
                             "multiagent.policies=per_role run of this env")
    wrapped = peft.PeftModel.from_pretrained(model, os.path.join(saved, adapters[0]),
                                             adapter_name=adapters[0], is_trainable=True)
    for name in adapters[1:]:
        wrapped.load_adapter(os.path.join(saved, name), adapter_name=name, is_trainable=True)
    return own_storage(_unwrap(_all_trainable(wrapped, list(adapters)))), tok


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    n = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), n
