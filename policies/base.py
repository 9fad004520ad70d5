"""The Policy contract: token ids in, sampled token ids + sampler logprobs out.

    policy = make_policy(cfg, model, tokenizer)    # agentrl.policies: the backend table
    gens = policy.generate(prompts, SamplingParams(max_new_tokens=32), candidates=None)
    policy.update_weights(model)                   # after an optimizer step

Sampler logprobs are ``log_softmax(logits / temperature)`` of the raw model logits, restricted
to the allowed ids when decoding is constrained and then truncated by top-k/top-p
(`truncate_logits`) when those are on: the logprob of the distribution the token was actually
drawn from, which is the behaviour policy. The learner applies the same truncation when it
scores, so sampler and learner agree. Training-side logprobs are recomputed by the learner,
never taken from here.

Every backend subclasses `Policy`, which holds the whole lifecycle the trainer and
``agentrl eval`` use, each method with a harmless default, so the core never asks a backend
what it can do. A backend's ``policy:`` config section is its ``Config`` dataclass, a subclass of
`PolicyConfig`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch

from agentrl.fields import F
from agentrl.models.lora import LoraSettings


@dataclass
class PolicyConfig:
    """The ``policy:`` settings every backend shares; a backend with settings of its own
    extends this class (``VLLMConfig``), and the section is validated against it."""

    backend: str = F("hf", "generation backend: hf, vllm, openai, or 'pkg.module:Class' "
                     "(a Policy subclass)")
    model: str = F("tiny", "'tiny' (built offline), 'smollm2' (packaged), a hub name or a local path")
    dtype: Literal["float32", "bfloat16", "float16"] = F("float32", "learner and sampler dtype")
    device: str = F("auto", "'auto', 'cpu' or 'cuda[:N]'")
    tiny_hidden: int = F(64, "tiny model: hidden size", ge=8)
    tiny_layers: int = F(2, "tiny model: transformer layers", ge=1)
    tiny_heads: int = F(4, "tiny model: attention heads", ge=1)
    tiny_vocab: int = F(600, "tiny model: tokenizer vocabulary size (trained on env text)", ge=300)
    tiny_split_digits: bool = F(False, "tiny tokenizer: every digit its own token, the same "
                                "wherever a number stands, so numbers are copied digit by "
                                "digit (tool-call arguments, answers read from a tool result)")
    tiny_corpus_episodes: int = F(200, "tiny tokenizer: random episodes of env text to train on", ge=1)
    tiny_corpus_seed: int | None = F(None, "tiny tokenizer: seed of those random episodes (null = "
                                     "the run's seed)")
    tiny_tokenizer: str = F("", "tiny model: a tokenizer directory, loaded when it exists, else "
                            "trained as usual and saved there: one tokenizer (and so one set "
                            "of recorded demos) for every run seed and stage ('' = train one "
                            "per run)")
    lora: LoraSettings | None = F(None, "train LoRA adapters (PEFT) instead of every weight, "
                                  "e.g. {r: 16, alpha: 32, dropout: 0.0, target_modules: "
                                  "[q_proj, v_proj]}; null = full fine-tuning")
    recompute_old_logprobs: bool = F(False, "PPO ratio against the learner's own logprobs of the "
                                     "sampled tokens (computed before the update) instead of the "
                                     "sampler's; for backends whose numerics differ (vllm, bf16)")


@dataclass
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    greedy: bool = False
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Generation:
    """One reply: exactly the sampled ids (EOS included when sampled) and their logprobs."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (EOS, stop string or completed candidate) | "length"
    allowed_ids: list[list[int]] | None = None  # per token, when constrained


def truncate_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0,
                    keep: torch.Tensor | None = None) -> torch.Tensor:
    """Top-k then top-p truncation of next-token logits, as vLLM's sampler applies them.

    top-k keeps the logits at least as large as the k-th largest (ties kept); top-p then keeps,
    in decreasing probability order under the renormalised top-k distribution, each token whose
    preceding tokens hold less than ``top_p`` of the mass (so at least the most likely token).
    Dropped entries become the dtype's minimum (probability 0 after softmax; never -inf, whose
    0·log 0 would make entropies NaN). Shift-invariant: logits and logprobs truncate alike.

    Args:
        logits: (..., V), already divided by the temperature and constrained.
        top_k: keep the k largest (0 = off). top_p: nucleus mass in (0, 1] (1 = off).
        keep: (...) token ids that must survive (the learner passes the sampled ids, so a
            boundary case decided differently by float rounding cannot score a sampled token
            at probability 0).
    Returns:
        (..., V) truncated logits.
    """
    V = logits.shape[-1]
    low = torch.finfo(logits.dtype).min
    z = logits
    if top_k and 0 < top_k < V:
        kth = torch.topk(z, top_k, dim=-1).values[..., -1:]
        z = z.masked_fill(z < kth, low)
    if top_p < 1.0:
        sorted_z, idx = torch.sort(z, descending=True, dim=-1)
        probs = torch.softmax(sorted_z, dim=-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        drop = torch.zeros_like(before, dtype=torch.bool).scatter(-1, idx, before >= top_p)
        z = z.masked_fill(drop, low)
    if keep is not None and z is not logits:
        k = keep[..., None]
        z = z.scatter(-1, k, logits.gather(-1, k))
    return z


def behaviour_logprobs(logits: torch.Tensor, temperature: float = 1.0,
                       softcap: float | None = None, allowed: torch.Tensor | None = None,
                       top_k: int = 0, top_p: float = 1.0,
                       keep: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities of the distribution a token is drawn from, from raw next-token
    logits: the model's final-logit softcap, then ``/ temperature``, then the constraint mask
    (``allowed``: bool, same shape, False = never sampled), then `truncate_logits` (top-k,
    top-p; ``keep`` as there), then ``log_softmax``. The HF sampler draws from it and the
    learner scores sampled tokens with it, so the first PPO ratio is exactly 1.

    Args:
        logits: (..., V) float logits.
    Returns:
        (..., V) log-probabilities (dropped entries: about the dtype's minimum, never -inf).
    """
    z = logits
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    if temperature != 1.0:
        z = z / temperature
    if allowed is not None:
        z = torch.where(allowed, z, torch.finfo(z.dtype).min)
    if top_k > 0 or top_p < 1.0:
        z = truncate_logits(z, top_k, top_p, keep=keep)
    return torch.log_softmax(z, dim=-1)


class RunConfig(Protocol):
    """What `Policy.from_config` reads of a run's config (an `agentrl.config.Config`). The
    config package validates each backend's section, so it sits above policies/ and backends
    see the whole config through this protocol."""

    seed: int
    policy: PolicyConfig  # the backend's own section: ``cls.Config``
    rollout: Any  # `agentrl.config.RolloutConfig`
    train: Any  # `agentrl.config.TrainConfig`


class Policy:
    """Base class of generation backends.

    A backend implements `generate` and `from_config`. The rest of the lifecycle has defaults
    that do nothing, right for a backend without that feature:

    - `update_weights(source)`: load the learner's new weights (default: no weights to load);
    - `seed(seed)`, `state_dict()`, `load_state_dict(state)`: the sampler's random state
      (default: none). The trainer checkpoints ``state_dict()`` and saves/restores it around
      each evaluation, so a resumed run samples exactly what an uninterrupted one would;
    - `sleep()` / `wake()`: free the engine's memory while the learner updates, and take it
      back (default: nothing to free);
    - `close()`: release engines, servers, temporary files (default: nothing held).
    """

    #: the dataclass of this backend's ``policy:`` config section
    Config: ClassVar[type] = PolicyConfig

    # -- capabilities: what the core and the config checks read, never a backend's name --
    #: generates with the learner's own module (weights sync is free; LoRA adapters are used
    #: as they are); otherwise the engine holds its own copy and receives merged weights
    shares_learner_module: ClassVar[bool] = False
    #: can switch LoRA adapters between generate calls (``multiagent.policies=per_role``)
    switches_adapters: ClassVar[bool] = False
    #: can generate from its own copy of the weights in a rollout thread while the learner
    #: updates (``train.max_staleness >= 1``)
    supports_async: ClassVar[bool] = True
    #: must be driven by one process: under torchrun every rank would push its weights to
    #: the same servers (``train.strategy=single`` only)
    single_process: ClassVar[bool] = False
    #: the tokenizer of the served model (prompts are its token ids; replies are decoded by it)
    tokenizer: Any
    #: replies with the env's expert action, which the engine passes as each row's first
    #: candidate (`agentrl.policies.expert`); its envs are built with ``expert_actions=True``
    plays_expert: ClassVar[bool] = False
    #: the version of the weights it generates with (learner updates applied: 0 = initial),
    #: set by whoever loads new weights; recorded on every turn (``Turn.policy_version``)
    version: int = 0

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this backend cannot run in this environment (a missing package), naming the
        fix; None when it can. Checked before any slow set-up."""
        return None

    @classmethod
    def from_config(cls, cfg: RunConfig, model: Any, tokenizer: Any) -> Policy:
        """Build the backend from a resolved config (``cfg.policy`` is a ``cls.Config``), the
        learner's model (``None`` when there is none, e.g. evaluating a served endpoint) and
        its tokenizer."""
        raise NotImplementedError(f"{cls.__name__} must implement the classmethod "
                                  "from_config(cfg, model, tokenizer)")

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: list[list[list[int]] | None] | None = None) -> list[Generation]:
        """Generate one reply per prompt.

        Args:
            prompts: token ids per prompt.
            sampling: decoding parameters.
            candidates: per prompt, ``None`` (free text) or token-id sequences, each ending with
                EOS; the reply is then exactly one of them (trie-constrained decoding).
        """
        raise NotImplementedError(f"{type(self).__name__} must implement generate()")

    def update_weights(self, source: Any) -> None:
        """Load new weights (a module or a state dict) into the generation engine."""

    def seed(self, seed: int) -> None:
        """Reseed the sampler (evaluation samples from its own fixed seed)."""

    def state_dict(self) -> dict[str, Any]:
        """The sampler's random state (picklable), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def sleep(self) -> None:
        """Free the engine's memory for the learner's update (vLLM sleep mode)."""

    def wake(self) -> None:
        """Take the engine's memory back after `sleep` (and the weight sync)."""

    def close(self) -> None:
        """Release what the backend holds (engine, model directory, connections)."""


class SeededRNG:
    """The sampler-RNG lifecycle of a backend that draws from a `random.Random` (``self.rng``):
    `seed`, `state_dict` and `load_state_dict`, so checkpoints and evaluation restore it.

    List it before `Policy`: ``class MyPolicy(SeededRNG, Policy)``, and set
    ``self.rng = random.Random(seed)`` in ``__init__``.
    """

    rng: random.Random

    def seed(self, seed: int) -> None:
        """Reseed the sampler (evaluation samples from its own fixed seed)."""
        self.rng.seed(seed)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's random state, for checkpoints."""
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        self.rng.setstate(state["rng"])


class CandidateTrie:
    """Prefix tree over candidate token sequences, for constrained decoding."""

    def __init__(self, sequences: list[list[int]]) -> None:
        if not sequences:
            raise ValueError("constrained decoding needs at least one candidate")
        self.root: dict[int, dict] = {}
        for seq in sequences:
            node = self.root
            for t in seq:
                node = node.setdefault(t, {})

    def allowed(self, prefix: list[int]) -> list[int]:
        """Token ids that continue ``prefix`` towards some candidate ([] once one is complete)."""
        node = self.root
        for t in prefix:
            node = node.get(t)
            if node is None:
                return []
        return sorted(node)
