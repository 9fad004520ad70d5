"""PettingZoo classic games as text: tic-tac-toe, connect four (AEC) and repeated
rock-paper-scissors (played through PettingZoo's Parallel API).

Each view is written from what the agent may know: its PettingZoo observation (board planes),
or, for rock-paper-scissors, the throws of completed rounds; never the env's private state.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agentrl.envs.multiagent.base import MultiAgentTextEnv


def _make(env_type: str, env_id: str, **kwargs: Any) -> Any:
    """``pettingzoo.make`` (PettingZoo's registry), with pygame's import greeting silenced: the
    classic envs import pygame for rendering only."""
    import os

    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    import pettingzoo

    return pettingzoo.make(env_type, env_id, **kwargs)


# ------------------------------------------------------------------------ tic-tac-toe

_LINES = [(0, 1, 2), (3, 4, 5), (6, 7, 8), (0, 3, 6), (1, 4, 7), (2, 5, 8), (0, 4, 8), (2, 4, 6)]


def ttt_cells(obs: dict[str, Any]) -> list[int]:
    """Row-major cells 0..8 of a PettingZoo tic-tac-toe observation: 1 = mine, 2 = theirs,
    0 = empty. (PettingZoo numbers its actions column by column; see `TTT_ACTION`.)"""
    planes = np.asarray(obs["observation"])  # (3, 3, 2); planes[x, y] is column x, row y
    return [1 if planes[c % 3, c // 3, 0] else 2 if planes[c % 3, c // 3, 1] else 0
            for c in range(9)]


#: Row-major cell (what the text shows, 0-based) -> PettingZoo action index.
TTT_ACTION = [(c % 3) * 3 + c // 3 for c in range(9)]


def ttt_best(cells: list[int], legal_cells: list[int], rng: Any) -> int:
    """Scripted tic-tac-toe (row-major cells): win, else block, else centre, else a corner,
    else any legal cell."""
    for who in (1, 2):  # win first, then block
        for line in _LINES:
            vals = [cells[i] for i in line]
            if vals.count(who) == 2 and vals.count(0) == 1:
                c = line[vals.index(0)]
                if c in legal_cells:
                    return c
    if 4 in legal_cells:
        return 4
    corners = [c for c in (0, 2, 6, 8) if c in legal_cells]
    return rng.choice(corners or legal_cells)


class _XO(MultiAgentTextEnv):
    """A two-seat board game: the first seat plays X and moves first, the second plays O."""

    def _mark(self, agent: str) -> tuple[str, str]:
        """(my mark, the opponent's mark)."""
        return ("X", "O") if agent == self.possible_agents[0] else ("O", "X")


class TicTacToe(_XO):
    """PettingZoo ``tictactoe_v3``: player_1 is X and moves first, player_2 is O."""

    game_name = "tictactoe"

    def make_game(self) -> Any:
        return _make("aec", "classic/tictactoe-v3")

    def describe(self, agent: str) -> str:
        me, them = self._mark(agent)
        first = "first" if me == "X" else "second"
        return (f"Tic-tac-toe. You are {me} and move {first}; your opponent is {them}. "
                "Get three of your marks in a row, column or diagonal. Reply with the number "
                "of an empty cell.")

    def render_view(self, agent: str, obs: Any) -> str:
        me, them = self._mark(agent)
        cells = ttt_cells(obs)
        sym = [str(i + 1) if v == 0 else me if v == 1 else them for i, v in enumerate(cells)]
        rows = [" ".join(sym[r * 3:r * 3 + 3]) for r in range(3)]
        return f"You are {me}. Board: " + " / ".join(rows)

    def move_names(self, agent: str, obs: Any) -> list[str]:
        names = [""] * 9
        for c, a in enumerate(TTT_ACTION):
            names[a] = str(c + 1)
        return names

    def legal_moves(self, agent: str, obs: Any = None) -> list[int]:
        """Legal actions in board order (cells 1..9), as the text lists them."""
        return sorted(super().legal_moves(agent, obs), key=TTT_ACTION.index)

    def heuristic(self, agent: str, obs: Any, legal: list[int]) -> int:
        legal_cells = [TTT_ACTION.index(a) for a in legal]
        return TTT_ACTION[ttt_best(ttt_cells(obs), legal_cells, self.rng)]


# ------------------------------------------------------------------------ connect four

def c4_board(obs: dict[str, Any]) -> np.ndarray:
    """(6, 7) board from a connect-four observation, row 0 on top: 1 mine, 2 theirs, 0 empty."""
    planes = np.asarray(obs["observation"])
    return planes[:, :, 0].astype(int) + 2 * planes[:, :, 1].astype(int)


def c4_wins(board: np.ndarray, who: int) -> bool:
    """Four of ``who`` in a row anywhere on ``board``."""
    b = board == who
    return bool((b[:, :-3] & b[:, 1:-2] & b[:, 2:-1] & b[:, 3:]).any()
                or (b[:-3] & b[1:-2] & b[2:-1] & b[3:]).any()
                or (b[:-3, :-3] & b[1:-2, 1:-2] & b[2:-1, 2:-1] & b[3:, 3:]).any()
                or (b[3:, :-3] & b[2:-1, 1:-2] & b[1:-2, 2:-1] & b[:-3, 3:]).any())


def c4_drop(board: np.ndarray, col: int, who: int) -> np.ndarray:
    """The board after ``who`` drops a piece in ``col`` (assumed legal)."""
    b = board.copy()
    row = max(r for r in range(b.shape[0]) if b[r, col] == 0)
    b[row, col] = who
    return b


def c4_best(board: np.ndarray, legal: list[int], rng: Any) -> int:
    """Scripted connect four: win, else block, else a column that does not hand the opponent
    a win, preferring the centre."""
    for who in (1, 2):
        for c in legal:
            if c4_wins(c4_drop(board, c, who), who):
                return c
    safe = []
    for c in legal:
        after = c4_drop(board, c, 1)
        if not any(c4_wins(c4_drop(after, d, 2), 2) for d in range(7) if after[0, d] == 0):
            safe.append(c)
    pool = safe or legal
    best = min(abs(c - 3) for c in pool)
    return rng.choice([c for c in pool if abs(c - 3) == best])


class ConnectFour(_XO):
    """PettingZoo ``connect_four_v3``: player_0 is X and moves first, player_1 is O."""

    game_name = "connect_four"

    def make_game(self) -> Any:
        return _make("aec", "classic/connect_four-v3")

    def describe(self, agent: str) -> str:
        me, them = self._mark(agent)
        return (f"Connect four on a 6x7 board. You are {me}; your opponent is {them}. Drop a "
                "piece into a column; get four in a row, column or diagonal. Reply with a "
                "column number 1-7.")

    def render_view(self, agent: str, obs: Any) -> str:
        me, them = self._mark(agent)
        b = c4_board(obs)
        rows = ["".join("." if v == 0 else me if v == 1 else them for v in row) for row in b]
        return f"You are {me}. Columns 1234567, top row first: " + " / ".join(rows)

    def move_names(self, agent: str, obs: Any) -> list[str]:
        return [str(c + 1) for c in range(7)]

    def heuristic(self, agent: str, obs: Any, legal: list[int]) -> int:
        return c4_best(c4_board(obs), legal, self.rng)


# ------------------------------------------------------------------------ rock-paper-scissors

_THROWS = ["rock", "paper", "scissors"]


class RockPaperScissors(MultiAgentTextEnv):
    """PettingZoo ``rps_v2`` through its Parallel API: ``rounds`` simultaneous throws, +1/-1
    per round; the match goes to the higher total. A throw is shown to the opponent only once
    the round is complete."""

    game_name = "rock_paper_scissors"

    def __init__(self, rounds: int = 5, **kwargs: Any) -> None:
        self.rounds = int(rounds)
        super().__init__(**kwargs)

    def make_game(self) -> Any:
        return _make("parallel", "classic/rps-v2", num_actions=3, max_cycles=self.rounds)

    def describe(self, agent: str) -> str:
        return (f"Rock-paper-scissors, {self.rounds} rounds against one opponent. Rock beats "
                "scissors, scissors beat paper, paper beats rock. Both throw at once; win more "
                "rounds than your opponent. Reply rock, paper or scissors.")

    def rounds_seen(self, agent: str) -> tuple[list[int], list[int]]:
        """(my throws, their throws) of the completed rounds: what ``agent`` may know."""
        by = {a: [m for x, m in self.history if x == a] for a in self.possible_agents}
        done = min(len(v) for v in by.values())
        other = next(a for a in self.possible_agents if a != agent)
        return by[agent][:done], by[other][:done]

    def render_view(self, agent: str, obs: Any) -> str:
        mine, theirs = self.rounds_seen(agent)
        score = sum((m - t) % 3 == 1 for m, t in zip(mine, theirs)) - sum(
            (t - m) % 3 == 1 for m, t in zip(mine, theirs))
        last = (f" Last round: you {_THROWS[mine[-1]]}, opponent {_THROWS[theirs[-1]]}."
                if theirs else "")
        return f"Round {len(theirs) + 1} of {self.rounds}. Score {score:+d}.{last}"

    def move_names(self, agent: str, obs: Any) -> list[str]:
        return list(_THROWS)

    def heuristic(self, agent: str, obs: Any, legal: list[int]) -> int:
        """Beat the opponent's most frequent throw so far (ties broken at random)."""
        _, theirs = self.rounds_seen(agent)
        if not theirs:
            return self.rng.choice(legal)
        counts = [theirs.count(t) for t in range(3)]
        top = [t for t in range(3) if counts[t] == max(counts)]
        return (self.rng.choice(top) + 1) % 3
