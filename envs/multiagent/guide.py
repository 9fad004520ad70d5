"""Guide and walker: a cooperative game of private information and messages.

A walker must reach a goal on a small grid within a few moves. Only the guide sees the map (the
walker's position and the goal); only the walker moves. Each round the guide sends one word,
then the walker, who sees only that word and which ways are open, takes one step. Both get +1
when the walker reaches the goal, nothing otherwise: they succeed only by talking.

Written as a PettingZoo AEC env (``GuideWalkerAEC``, checked with PettingZoo's ``api_test``) and
shown as text by `GuideWalker`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv

from agentrl.envs.multiagent.base import MultiAgentTextEnv, begin_aec_step, start_aec

DIRECTIONS = ("north", "south", "east", "west")
_DELTA = {0: (-1, 0), 1: (1, 0), 2: (0, 1), 3: (0, -1)}  # (row, col), row 0 on top


class GuideWalkerAEC(AECEnv):
    """The guide says a direction (Discrete(4)), then the walker steps (Discrete(4), moves off
    the grid masked), for ``rounds`` rounds on a ``size`` x ``size`` grid.

    Observations: guide {"observation": int8 (2*size*size,) one-hot walker cell + one-hot goal
    cell, "action_mask": int8 (4,)}; walker {"observation": int8 (5,) one-hot last word (4 =
    nothing said yet), "action_mask": int8 (4,)}."""

    metadata = {"name": "guide_walker_v0", "render_modes": [], "is_parallelizable": False}

    def __init__(self, size: int = 3, rounds: int = 4) -> None:
        super().__init__()
        if size < 2 or rounds < 1:
            raise ValueError("GuideWalker needs size >= 2 and rounds >= 1")
        self.size, self.rounds = int(size), int(rounds)
        self.possible_agents = ["guide", "walker"]
        n = self.size * self.size
        self._spaces = {
            "guide": spaces.Dict({"observation": spaces.Box(0, 1, (2 * n,), dtype=np.int8),
                                  "action_mask": spaces.Box(0, 1, (4,), dtype=np.int8)}),
            "walker": spaces.Dict({"observation": spaces.Box(0, 1, (5,), dtype=np.int8),
                                   "action_mask": spaces.Box(0, 1, (4,), dtype=np.int8)})}
        self._act = spaces.Discrete(4)
        self._rng = np.random.default_rng()
        self.pos = (0, 0)
        self.goal = (0, 0)
        self.word = 4
        self.moves = 0

    def observation_space(self, agent: str) -> spaces.Space:
        return self._spaces[agent]

    def action_space(self, agent: str) -> spaces.Space:
        return self._act

    def open_moves(self) -> list[int]:
        """Directions the walker can step without leaving the grid."""
        return [d for d, (dr, dc) in _DELTA.items()
                if 0 <= self.pos[0] + dr < self.size and 0 <= self.pos[1] + dc < self.size]

    def observe(self, agent: str) -> dict[str, np.ndarray]:
        mask = np.zeros(4, dtype=np.int8)
        if agent == self.agent_selection and not self.terminations.get(agent, True):
            mask[self.open_moves() if agent == "walker" else list(range(4))] = 1
        if agent == "guide":
            n = self.size * self.size
            obs = np.zeros(2 * n, dtype=np.int8)
            obs[self.pos[0] * self.size + self.pos[1]] = 1
            obs[n + self.goal[0] * self.size + self.goal[1]] = 1
        else:
            obs = np.zeros(5, dtype=np.int8)
            obs[self.word] = 1
        return {"observation": obs, "action_mask": mask}

    def reset(self, seed: int | None = None, options: Any = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        cells = self._rng.choice(self.size * self.size, size=2, replace=False)
        self.pos = divmod(int(cells[0]), self.size)
        self.goal = divmod(int(cells[1]), self.size)
        self.word, self.moves = 4, 0
        start_aec(self, self.possible_agents)
        self.agent_selection = "guide"

    def step(self, action: Any) -> None:
        if not begin_aec_step(self, action):
            return
        a = self.agent_selection
        move = int(action)
        if a == "guide":
            self.word = move
            self.agent_selection = "walker"
        else:
            if move in self.open_moves():  # a masked move (outside this wrapper) is a no-op
                dr, dc = _DELTA[move]
                self.pos = (self.pos[0] + dr, self.pos[1] + dc)
            self.moves += 1
            reached = self.pos == self.goal
            if reached:
                self.rewards = dict.fromkeys(self.agents, 1)
            if reached or self.moves >= self.rounds:
                self.terminations = dict.fromkeys(self.agents, True)
            self.agent_selection = "guide"
        self._accumulate_rewards()

    def close(self) -> None:
        pass


class GuideWalker(MultiAgentTextEnv):
    """Guide and walker as text. The scripted guide names the way to the goal; the scripted
    walker follows the word it hears."""

    game_name = "guide_walker"
    cooperative = True

    def __init__(self, size: int = 3, rounds: int = 4, view: str = "map", **kwargs: Any) -> None:
        """``view``: what the guide reads: ``"map"`` (the grid, W walker, G goal) or
        ``"offset"`` (where the goal lies from the walker, e.g. "1 north, 2 east": the same
        private information, in words a small model can learn to read)."""
        if view not in ("map", "offset"):
            raise ValueError(f"view={view!r}: use 'map' or 'offset'")
        self.size, self.rounds, self.view = int(size), int(rounds), view
        super().__init__(**kwargs)

    def make_game(self) -> Any:
        return GuideWalkerAEC(self.size, self.rounds)

    @property
    def game(self) -> GuideWalkerAEC:
        return self.aec.unwrapped

    def describe(self, agent: str) -> str:
        common = (f"Guide and walker, a team game on a {self.size}x{self.size} grid: the walker "
                  f"must reach the goal within {self.rounds} moves. Each round the guide says "
                  "one direction, then the walker steps.")
        if agent == "guide":
            sees = ("you see the map (W walker, G goal)" if self.view == "map" else
                    "you know where the goal lies from the walker")
            return common + (f" You are the guide: {sees}; the walker does not. Reply say "
                             "north, say south, say east or say west.")
        return common + (" You are the walker: you cannot see the goal; listen to the guide. "
                         "Reply north, south, east or west.")

    def render_view(self, agent: str, obs: Any) -> str:
        g = self.game
        left = g.rounds - g.moves
        if agent == "guide" and self.view == "offset":
            dr, dc = g.goal[0] - g.pos[0], g.goal[1] - g.pos[1]
            parts = ([f"{abs(dr)} {'north' if dr < 0 else 'south'}"] if dr else []) + (
                [f"{abs(dc)} {'east' if dc > 0 else 'west'}"] if dc else [])
            return "Goal from the walker: " + ", ".join(parts) + f" (moves left: {left})"
        if agent == "guide":
            rows = []
            for r in range(g.size):
                rows.append(" ".join("W" if (r, c) == g.pos else "G" if (r, c) == g.goal
                                     else "." for c in range(g.size)))
            return "Map, north on top: " + " / ".join(rows) + f" (moves left: {left})"
        word = int(np.argmax(np.asarray(obs["observation"])))
        heard = DIRECTIONS[word] if word < 4 else "nothing yet"
        return f"The guide says: {heard}. Moves left: {left}."

    def move_names(self, agent: str, obs: Any) -> list[str]:
        return [f"say {d}" for d in DIRECTIONS] if agent == "guide" else list(DIRECTIONS)

    def heuristic(self, agent: str, obs: Any, legal: list[int]) -> int:
        g = self.game
        if agent == "guide":
            dr, dc = g.goal[0] - g.pos[0], g.goal[1] - g.pos[1]
            if dr:
                return 0 if dr < 0 else 1
            return 2 if dc > 0 else 3
        word = int(np.argmax(np.asarray(obs["observation"])))
        return word if word in legal else self.rng.choice(legal)

    def success(self) -> bool:
        return self.game.pos == self.game.goal
