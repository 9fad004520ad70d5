"""Register your own text environment and train on it: a few lines each.

    python examples/custom_env.py            # trains briefly, prints held-out success

The env: guess a secret number in [0, 9] from "higher"/"lower" hints. A random guesser rarely
finds it within 4 guesses; an agent that reads the hints does.
"""

from __future__ import annotations

import sys
from typing import Any

import agentrl
from agentrl import TextEnv


class GuessNumber(TextEnv):
    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        self.secret = int(self.np_random.integers(0, 10))
        return "Guess the number (0-9).", self._info(True, False)

    def _info(self, valid: bool, won: bool) -> dict[str, Any]:
        return {"task_type": "guess", "admissible_actions": [str(i) for i in range(10)],
                "action_valid": valid, "success": won, "state_key": None}

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        a = action.strip()
        if a not in [str(i) for i in range(10)]:
            return "Please answer with a digit.", 0.0, False, False, self._info(False, False)
        g = int(a)
        won = g == self.secret
        obs = "Correct!" if won else ("Higher." if g < self.secret else "Lower.")
        return f"You guessed {g}. {obs}", float(won), won, False, self._info(True, won)


agentrl.register_env("examples/GuessNumber-v0", entry_point=GuessNumber,
                     description="guess a digit from higher/lower hints", max_episode_steps=4)


def main(argv: list[str]) -> dict[str, Any]:
    from agentrl import Trainer, check_env, load_config

    check_env(agentrl.make_env("examples/GuessNumber-v0"))
    cfg = load_config(None, [
        "env.id=examples/GuessNumber-v0", "env.kwargs={}", "env.eval_kwargs={}",
        "rollout.template=Last: {last_actions}. {observation}", "rollout.max_turns=4",
        "rollout.groups=8", "rollout.group_size=6", "policy.tiny_corpus_episodes=20",
        "eval.episodes=50", "eval.seed_start=100000", "eval.every=0", "run_name=guess",
        "log.progress=false", *argv])
    return Trainer(cfg).train()


if __name__ == "__main__":
    main(sys.argv[1:])
