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


def apply_lora(model: nn.Module, s: LoraSettings) -> nn.Module:
    """Inject adapters into ``model`` (in place; base weights frozen) and return the HF model
    with its LoRA layers, the module the learner trains (``PeftModel.get_base_model()``)."""
    peft = _peft()
    cfg = peft.LoraConfig(r=s.r, lora_alpha=s.alpha, lora_dropout=s.dropout,
                          target_modules=list(s.target_modules), task_type="CAUSAL_LM")
    try:
        wrapped = peft.get_peft_model(model, cfg)
    except ValueError as e:  # no module matched target_modules
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                        if isinstance(m, nn.Linear)})
        raise ValueError(f"policy.lora.target_modules={list(s.target_modules)}: {e}. Linear "
                         f"layers of this model: {names}") from None
    return _unwrap(wrapped)


def _unwrap(wrapped: Any) -> nn.Module:
    inner = wrapped.get_base_model()
    # Kept outside the module tree (nn.Module.__setattr__ would register it as a child, and
    # the PeftModel contains ``inner``): saving in the PEFT format needs the PeftModel.
    object.__setattr__(inner, "peft_wrapper", wrapped)
    return inner


def lora_scale(model: nn.Module) -> float:
    """alpha / r of the model's adapter."""
    c = model.peft_wrapper.peft_config["default"]
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


def merged_state_dict(sd: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The plain model's state dict with every adapter merged, W + scale B A (scale = alpha /
    r, `lora_scale`), from the LoRA-injected model's state dict (or FSDP's gathered one). The
    model is not changed (unlike PEFT's ``merge_and_unload``)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if ".lora_" in k:
            continue
        out[k.replace(".base_layer.", ".")] = v
    for k in [k for k in sd if ".lora_A." in k and k.endswith(".weight")]:
        prefix, adapter = k.split(".lora_A.")[0], k.split(".lora_A.")[1].split(".")[0]
        a, b = sd[k], sd[f"{prefix}.lora_B.{adapter}.weight"]  # (r, in), (out, r)
        w = out[f"{prefix}.weight"]
        out[f"{prefix}.weight"] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    return out


class MergedCheckpoint:
    """What `agentrl.checkpoint.save` writes for a LoRA model: ``save_pretrained(path)``
    writes the merged full model to ``path`` and the PEFT adapter beside it (``adapter/``)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def save_pretrained(self, path: str, safe_serialization: bool = True) -> None:
        merged = merged_state_dict(self.model.state_dict(), lora_scale(self.model))
        self.model.peft_wrapper.save_pretrained(os.path.join(os.path.dirname(path), "adapter"))
        base = type(self.model)(self.model.config)  # plain layers, merged weights
        base.load_state_dict(merged, strict=False)
        base.tie_weights()
        base.to(next(self.model.parameters()).dtype).save_pretrained(
            path, safe_serialization=safe_serialization)


def build_lora_model(cfg: Any, run_dir: str, resume_from: str | None) -> tuple[nn.Module, Any]:
    """(LoRA-injected model, tokenizer) for ``cfg.policy.lora``: a fresh run injects new
    adapters (saving the tiny model's random base in ``run_dir`` first); a resumed run loads
    the checkpoint's adapter onto the same frozen base."""
    from agentrl import collectives as C
    from agentrl.models import build_policy_model, load_pretrained, resolve_device

    p = cfg.policy
    base_dir = os.path.join(run_dir, BASE_DIR)
    if resume_from is None:
        model, tok = build_policy_model(cfg)
        if p.model == "tiny" and C.rank() == 0:
            model.save_pretrained(base_dir)
            tok.save_pretrained(base_dir)
        return apply_lora(model, p.lora), tok
    src = base_dir if p.model == "tiny" else p.model
    model, _ = load_pretrained(src, p.dtype)
    _, tok = load_pretrained(os.path.join(resume_from, "model"), p.dtype)
    model.to(resolve_device(p.device))
    peft = _peft()
    wrapped = peft.PeftModel.from_pretrained(model, os.path.join(resume_from, "adapter"),
                                             is_trainable=True)
    return _unwrap(wrapped), tok


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    n = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), n
