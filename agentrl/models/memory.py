"""Start-up memory estimate of the learner and its engine, printed before the first rollout.

Per rank, in bytes (FSDP divides weights, gradients and optimizer state by the number of ranks):

- weights: every parameter at ``policy.dtype``;
- gradients and optimizer: trainable parameters only (LoRA: the adapters), a gradient at the
  parameter dtype and AdamW's two moments (same dtype);
- reference: a frozen copy of the weights when the algorithm needs ``ref_logprobs`` (not with
  LoRA: the reference is the model with its adapters off);
- algorithm: parameters the algorithm owns (a separate PPO critic), with their gradients and
  moments;
- activations of one micro-batch of ``train.micro_batch_tokens`` tokens: per layer, the
  tensors autograd keeps for the backward (``ACT_PER_LAYER`` x hidden + 3 x intermediate
  values per token; with activation checkpointing only each layer's input, plus one layer's
  set during its recompute), and the logits of the action tokens (float32 logits,
  log-softmax and probabilities, ``LOGIT_COPIES`` x vocab values each) of as many action
  positions as one ``train.logits_chunk`` holds (the learner forms no more at once);
- engine KV cache: keys and values of ``rollout.batch_size`` sequences of
  ``rollout.max_context_tokens`` (the hf engine's decode cache; vLLM reserves its own share).

`check` compares the sum with what the device has (CPU: MemAvailable; CUDA: free memory) and
raises `MemoryEstimateError` naming what to change when it cannot fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

#: Values per token and layer that autograd keeps, in units of the hidden size (norm inputs,
#: q/k/v/attention output, residuals) and, separately, 3 x the MLP's intermediate size.
ACT_PER_LAYER = 10
#: Float32 values per action token and vocabulary entry (logits, log-softmax, probabilities).
LOGIT_COPIES = 3
#: Share of a micro-batch's tokens that are action tokens (window mode: short replies after
#: long prompts); the logits term scales with it.
ACTION_SHARE = 0.25
_GB = 1024 ** 3


class MemoryEstimateError(RuntimeError):
    """The estimate exceeds the memory the device has; the message says what to change."""


@dataclass
class MemoryEstimate:
    """Bytes per rank of each part (see the module docstring)."""

    weights: float
    gradients: float
    optimizer: float
    reference: float
    algorithm: float
    activations: float
    kv_cache: float

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.reference
                + self.algorithm + self.activations + self.kv_cache)

    def line(self) -> str:
        parts = ", ".join(f"{k} {getattr(self, k) / _GB:.2f}" for k in (
            "weights", "gradients", "optimizer", "reference", "algorithm", "activations",
            "kv_cache"))
        return f"memory estimate per rank: {self.total / _GB:.2f} GB ({parts} GB)"


def _numel(params: list[torch.nn.Parameter]) -> int:
    return sum(p.numel() for p in params)


def estimate(model: nn.Module, cfg: Any, algorithm: Any = None, world: int = 1,
             ) -> MemoryEstimate:
    """The estimate for ``model`` (before any wrapping) under config ``cfg``."""
    t, r = cfg.train, cfg.rollout
    mc = model.config
    params = list(model.parameters())
    esize = params[0].element_size() if params else 4
    shard = world if t.strategy == "fsdp" else 1
    n_all, n_train = _numel(params), _numel([p for p in params if p.requires_grad])
    lora = cfg.policy.lora is not None
    wants_ref = algorithm is not None and "ref_logprobs" in algorithm.requires
    own = [p for g in (algorithm.param_groups() if algorithm is not None else [])
           for p in g["params"]]
    h, n_layers = int(mc.hidden_size), int(mc.num_hidden_layers)
    inter = int(getattr(mc, "intermediate_size", 4 * h))
    vocab = int(mc.vocab_size)
    act_size = 2 if t.mixed_precision == "bf16" else esize
    tokens = t.micro_batch_tokens
    per_layer = tokens * (ACT_PER_LAYER * h + 3 * inter) * act_size
    if t.activation_checkpointing:
        layers = n_layers * tokens * h * act_size + per_layer
    else:
        layers = n_layers * per_layer
    positions = tokens * ACTION_SHARE
    if t.logits_chunk:
        positions = min(positions, max(1, t.logits_chunk // vocab))
    logits = positions * vocab * 4 * LOGIT_COPIES
    kv_heads = int(getattr(mc, "num_key_value_heads", None) or mc.num_attention_heads)
    head_dim = int(getattr(mc, "head_dim", None) or h // mc.num_attention_heads)
    kv = r.batch_size * r.max_context_tokens * n_layers * 2 * kv_heads * head_dim * esize
    return MemoryEstimate(
        weights=n_all * esize / shard, gradients=n_train * esize / shard,
        optimizer=2 * n_train * esize / shard,
        reference=n_all * esize if wants_ref and not lora else 0.0,
        algorithm=4 * _numel(own) * 4.0, activations=float(layers + logits), kv_cache=float(kv))


def available_bytes(device: torch.device) -> float | None:
    """Free memory of ``device``: CUDA's free bytes, or the host's MemAvailable (None when
    unknown)."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return None


def check(est: MemoryEstimate, device: torch.device, ranks_per_host: int = 1,
          mode: str = "error") -> str:
    """The line to print. ``mode=error`` raises `MemoryEstimateError` when the learner's part
    of ``est`` (times the ranks sharing the host, on CPU) exceeds the device's free memory;
    the engine's KV cache, an upper bound (every sequence at the context limit), only adds a
    warning to the line, as does ``mode=warn``."""
    free = available_bytes(device)
    k = ranks_per_host if device.type == "cpu" else 1
    need, learner = est.total * k, (est.total - est.kv_cache) * k
    line = est.line()
    if free is None or mode == "off":
        return line
    line += f"; {free / _GB:.1f} GB free on {device.type}"
    if need > free and (learner <= free or mode == "warn"):
        return line + (f". WARNING: up to {need / _GB:.1f} GB may be needed (the KV cache "
                       "counts every sequence at rollout.max_context_tokens)")
    if learner > free:
        biggest = max(("activations", est.activations), ("optimizer", est.optimizer),
                      ("reference", est.reference), ("kv_cache", est.kv_cache),
                      key=lambda kv: kv[1])[0]
        fixes = {"activations": "lower train.micro_batch_tokens or set "
                                "train.activation_checkpointing=true",
                 "optimizer": "train adapters only (policy.lora={r: 16}) or shard with "
                              "train.strategy=fsdp under torchrun",
                 "reference": "use LoRA (its reference costs no memory) or algorithm.kl_coef=0",
                 "kv_cache": "lower rollout.batch_size or rollout.max_context_tokens"}
        raise MemoryEstimateError(
            f"{line}: the run needs about {need / _GB:.1f} GB and will not fit; the largest "
            f"part is {biggest}: {fixes[biggest]} (policy.dtype=bfloat16 halves weights and "
            "activations; train.memory_check=warn runs anyway)")
    return line
