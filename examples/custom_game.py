"""Register your own multi-agent game and train it by self-play: a few lines each.

    python examples/custom_game.py            # checks the game, trains briefly, prints results

The game: Nim with 7 stones. Two players take 1, 2 or 3 stones in turn; whoever takes the last
stone wins. The player to move wins by leaving a multiple of 4, so the first player wins with
perfect play (take 3, then complete each round to 4).

A game is a PettingZoo AEC env (any PettingZoo env works: see `agentrl.envs.multiagent.classic`)
plus how it reads as text: `MultiAgentTextEnv` does the rest (turns, per-agent rewards,
illegal moves, random and scripted opponents).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv

import agentrl
from agentrl import MultiAgentTextEnv, begin_aec_step, start_aec


class NimAEC(AECEnv):
    metadata = {"name": "nim_v0", "render_modes": []}

    def __init__(self, stones: int = 7) -> None:
        super().__init__()
        self.start, self.stones = stones, stones
        self.possible_agents = ["player_0", "player_1"]
        self._obs = spaces.Dict({"observation": spaces.Box(0, stones, (1,), dtype=np.int8),
                                 "action_mask": spaces.Box(0, 1, (3,), dtype=np.int8)})
        self._act = spaces.Discrete(3)  # take 1, 2 or 3 (one object: PettingZoo seeds it)

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs

    def action_space(self, agent: str) -> spaces.Space:
        return self._act

    def observe(self, agent: str) -> dict[str, np.ndarray]:
        mask = np.array([self.stones >= k for k in (1, 2, 3)], dtype=np.int8)
        if agent != self.agent_selection or self.terminations[agent]:
            mask[:] = 0
        return {"observation": np.array([self.stones], dtype=np.int8), "action_mask": mask}

    def reset(self, seed: int | None = None, options: Any = None) -> None:
        self.stones = self.start
        start_aec(self, self.possible_agents)
        self.agent_selection = "player_0"

    def step(self, action: Any) -> None:
        if not begin_aec_step(self, action):
            return
        me = self.agent_selection
        other = "player_1" if me == "player_0" else "player_0"
        self.stones -= int(action) + 1
        if self.stones <= 0:
            self.rewards = {me: 1, other: -1}
            self.terminations = dict.fromkeys(self.agents, True)
        self.agent_selection = other
        self._accumulate_rewards()


class Nim(MultiAgentTextEnv):
    game_name = "nim"

    def make_game(self) -> AECEnv:
        return NimAEC()

    def describe(self, agent: str) -> str:
        return "Nim: take 1, 2 or 3 stones; whoever takes the last stone wins."

    def render_view(self, agent: str, obs: Any) -> str:
        return f"{int(obs['observation'][0])} stones left."

    def move_names(self, agent: str, obs: Any) -> list[str]:
        return ["take 1", "take 2", "take 3"]

    def heuristic(self, agent: str, obs: Any, legal: list[int]) -> int:
        best = int(obs["observation"][0]) % 4 - 1  # leave a multiple of 4 when possible
        return best if best in legal else self.rng.choice(legal)


agentrl.register_env("examples/Nim-v0", entry_point=Nim, description="Nim with 7 stones",
                     max_episode_steps=30, multiagent=True)


def main(argv: list[str]) -> dict[str, Any]:
    from agentrl import Trainer, check_multiagent_env, load_config

    check_multiagent_env(agentrl.make_env("examples/Nim-v0"))
    cfg = load_config(None, [
        "env.id=examples/Nim-v0", "env.kwargs={}", "env.eval_kwargs={opponent: random}",
        "multiagent.opponent=self", "rollout.template='{observation}'", "rollout.max_turns=4",
        "rollout.groups=8", "rollout.group_size=4", "algorithm.name=grpo",
        "policy.tiny_corpus_episodes=20", "eval.episodes=50", "eval.every=0", "run_name=nim",
        "log.progress=false", *argv])
    return Trainer(cfg).train()


if __name__ == "__main__":
    out = main(sys.argv[1:])
    print("win rate against a random player:", out["final"]["games"]["all"]["win"])
