"""A policy backend of your own, in one file: a scripted baseline that plays a uniformly random
admissible action. Nothing in agentrl is edited; the config names the class (from the repo
root; ``PYTHONPATH=.`` makes ``examples`` importable for the ``agentrl`` command):

    PYTHONPATH=. agentrl eval --untrained configs/textworld_grpo.yaml \
        --set policy.backend=examples.custom_policy:RandomAdmissible --set rollout.constrained=true
    python examples/custom_policy.py          # the same, on the quickstart's held-out games

The rollout engine hands a backend the admissible actions as candidate token sequences when
``rollout.constrained=true``; this one picks one of them at random. Its logprobs are those of
that choice, spread over the tokens: at each token, log(#candidates continuing with it /
#candidates continuing the prefix), so they sum to log(1 / #candidates).

Measured on the quickstart's 100 held-out games (``python examples/custom_policy.py``): success
0.30 (95% CI 0.22-0.40), where the untrained tiny model gets 0.14 and the trained one 0.89.
"""

from __future__ import annotations

import math
import random
import sys
from typing import Any

from agentrl import CandidateTrie, Generation, Policy, SamplingParams, SeededRNG


class RandomAdmissible(SeededRNG, Policy):
    """Uniform over the admissible actions; seeded, checkpointable, no weights."""

    def __init__(self, tokenizer: Any, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        self.rng = random.Random(seed)

    @classmethod
    def from_config(cls, cfg: Any, model: Any, tokenizer: Any) -> RandomAdmissible:
        return cls(tokenizer, cfg.seed)  # the model is not needed: nothing to run

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 candidates: list[list[list[int]] | None] | None = None) -> list[Generation]:
        if candidates is None or any(c is None for c in candidates):
            raise ValueError("RandomAdmissible picks among the admissible actions: set "
                             "rollout.constrained=true (the env must list admissible_actions)")
        if sampling.seed is not None:
            self.seed(sampling.seed)
        # Greedy or sampled, the choice is uniform: a baseline has no preferred action.
        return [self._pick(list(dict.fromkeys(map(tuple, c)))) for c in candidates]

    def _pick(self, cands: list[tuple[int, ...]]) -> Generation:
        choice = list(self.rng.choice(cands))
        trie = CandidateTrie([list(c) for c in cands])
        logprobs, allowed = [], []
        for k in range(len(choice)):
            prefix = choice[:k]
            alive = [c for c in cands if list(c[:k]) == prefix]
            here = sum(1 for c in alive if c[k] == choice[k])
            logprobs.append(math.log(here / len(alive)))
            allowed.append(trie.allowed(prefix))
        return Generation(token_ids=choice, logprobs=logprobs, finish_reason="stop",
                          allowed_ids=allowed)


def main(argv: list[str], out: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """``agentrl eval`` of the random baseline on the quickstart's held-out split (``argv``:
    config overrides; ``out``: where to write eval.json, eval.md and the trajectories)."""
    from agentrl import EvalSettings, run_eval_command

    return run_eval_command(
        [], untrained=[_quickstart_path()], progress=False, out=out,
        overrides=[f"policy.backend={__name__}:RandomAdmissible",  # also run as a script
                   "rollout.constrained=true", *argv],
        settings=EvalSettings())


def _quickstart_path() -> str:
    from importlib.resources import files

    return str(files("agentrl").joinpath("data/quickstart.yaml"))


if __name__ == "__main__":
    main(sys.argv[1:])
