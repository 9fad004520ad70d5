"""The Policy contract: token ids in, sampled token ids + sampler logprobs out.

    gens = policy.generate(prompts, SamplingParams(max_new_tokens=32), candidates=None)
    policy.update_weights(model)       # after an optimizer step

Sampler logprobs are ``log_softmax(logits / temperature)`` of the raw model logits, restricted
to the allowed ids when decoding is constrained; top-p/top-k only shape *which* token is drawn.
Training-side logprobs are recomputed by the learner, never taken from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


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


@runtime_checkable
class Policy(Protocol):
    tokenizer: Any

    @property
    def eos_token_id(self) -> int: ...

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: list[list[list[int]] | None] | None = None) -> list[Generation]:
        """Generate one reply per prompt.

        Args:
            prompts: token ids per prompt.
            sampling: decoding parameters.
            candidates: per prompt, ``None`` (free text) or token-id sequences, each ending with
                EOS; the reply is then exactly one of them (trie-constrained decoding).
        """
        ...

    def update_weights(self, source: Any) -> None:
        """Load new weights (a module or a state dict) into the generation engine."""
        ...


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
