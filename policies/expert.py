"""``policy.backend: expert``: the env's own expert, played through the rollout engine.

Envs that register an expert (`agentrl.register_env(..., expert=...)`: ALFWorld's planner,
ScienceWorld's gold paths, WebShop's oracle, TextWorld's walkthroughs, ToolUse's reference
solutions) are built with ``expert_actions=True``, so each step's info carries the expert's next
action (`agentrl.registry.ExpertActions`). The engine puts that action's reply, encoded exactly
as the run's prompt builder encodes a reply (its tokenizer, action format and EOS; under
``rollout.action_format=tool_call`` one call of the env's tools in the tool parser's format),
first among the turn's candidates; this backend returns it. The trajectories are ordinary ones: the same
prompts, context mode and token ids an RL policy would see and produce, so a warm start trains
on exactly what the RL run will sample.

Sampler logprobs are 0 (the expert chooses with probability 1). Under constrained decoding the
allowed ids of each token come from the turn's admissible replies, as the HF sampler records
them, so the learner scores the expert's tokens under the constrained distribution.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agentrl.policies.base import CandidateTrie, Generation, Policy, RunConfig, SamplingParams


class ExpertPolicy(Policy):
    """Replies with the expert's action, which the engine passes as each row's first
    candidate. No model, no sampling state."""

    plays_expert: ClassVar[bool] = True
    #: ``Trajectory.extra["source"]`` of the episodes it plays (`agentrl collect`)
    source: ClassVar[str] = "expert"

    def __init__(self, tokenizer: Any, constrained: bool) -> None:
        self.tokenizer, self.constrained = tokenizer, constrained

    @classmethod
    def from_config(cls, cfg: RunConfig, model: Any, tokenizer: Any) -> ExpertPolicy:
        return cls(tokenizer, cfg.rollout.constrained)

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: list[list[list[int]] | None] | None = None) -> list[Generation]:
        """One reply per prompt: ``candidates[i][0]`` (the expert's reply, EOS included)."""
        out = []
        for i in range(len(prompts)):
            cands = candidates[i] if candidates else None
            if not cands:
                raise ValueError("the expert backend needs the engine to pass the expert's "
                                 "reply as each row's first candidate (RolloutEngine does)")
            reply = list(cands[0])
            allowed = None
            if self.constrained:
                trie = CandidateTrie(cands)
                allowed = [trie.allowed(reply[:j]) for j in range(len(reply))]
            out.append(Generation(reply, [0.0] * len(reply), "stop", allowed))
        return out
