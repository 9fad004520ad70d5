"""Kuhn poker: the smallest poker with hidden cards, as a PettingZoo AEC env and as text.

Rules (Kuhn 1950): a deck of J < Q < K; each player antes 1 chip and gets one card. player_0
acts first: check or bet 1. After a check, player_1 checks (showdown for 1) or bets; facing a
bet, a player folds (loses its ante) or calls (showdown for 2). Rewards are the chips won, so
the game is zero-sum. Each player sees its own card and the betting so far, never the other
card (until the game ends).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from pettingzoo import AECEnv
from pettingzoo.utils import AgentSelector

from agentrl.envs.multiagent.base import MultiAgentTextEnv, begin_aec_step, start_aec

CARDS = "JQK"
#: Betting histories where someone must act, and who acts there (0 / 1).
_TO_ACT = {"": 0, "c": 1, "b": 1, "cb": 0}


def _payoff(history: str, cards: tuple[int, int]) -> tuple[int, int] | None:
    """Chips won by (player_0, player_1) once ``history`` ends the hand, else None."""
    if history in ("cc", "bc", "cbc"):  # showdown
        stake = 1 if history == "cc" else 2
        w = 0 if cards[0] > cards[1] else 1
        return (stake, -stake) if w == 0 else (-stake, stake)
    if history == "bf":  # player_1 folds to a bet
        return 1, -1
    if history == "cbf":  # player_0 folds to a bet
        return -1, 1
    return None


class KuhnPokerAEC(AECEnv):
    """Kuhn poker as a PettingZoo AEC env. Actions: 0 = check/fold, 1 = bet/call.

    Observation per agent: {"observation": int8 (7,) = one-hot own card (3) + one-hot betting
    history among "", "c", "b", "cb" (4); "action_mask": int8 (2,)}."""

    metadata = {"name": "kuhn_poker_v0", "render_modes": [], "is_parallelizable": False}

    def __init__(self) -> None:
        super().__init__()
        self.possible_agents = ["player_0", "player_1"]
        self._obs_space = spaces.Dict({
            "observation": spaces.Box(0, 1, (7,), dtype=np.int8),
            "action_mask": spaces.Box(0, 1, (2,), dtype=np.int8)})
        self._act_space = spaces.Discrete(2)
        self.cards: tuple[int, int] = (0, 1)
        self.betting = ""
        self._rng = np.random.default_rng()

    def observation_space(self, agent: str) -> spaces.Space:
        return self._obs_space

    def action_space(self, agent: str) -> spaces.Space:
        return self._act_space

    def observe(self, agent: str) -> dict[str, np.ndarray]:
        i = self.possible_agents.index(agent)
        obs = np.zeros(7, dtype=np.int8)
        obs[self.cards[i]] = 1
        if self.betting in _TO_ACT:
            obs[3 + list(_TO_ACT).index(self.betting)] = 1
        mask = np.zeros(2, dtype=np.int8)
        if agent == self.agent_selection and not self.terminations[agent]:
            mask[:] = 1
        return {"observation": obs, "action_mask": mask}

    def reset(self, seed: int | None = None, options: Any = None) -> None:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        deal = self._rng.permutation(3)
        self.cards = (int(deal[0]), int(deal[1]))
        self.betting = ""
        start_aec(self, self.possible_agents)
        self._selector = AgentSelector(self.agents)
        self.agent_selection = self._selector.reset()

    def step(self, action: Any) -> None:
        if not begin_aec_step(self, action):
            return
        facing_bet = self.betting in ("b", "cb")
        move = int(action)
        self.betting += ("c" if move else "f") if facing_bet else ("b" if move else "c")
        pay = _payoff(self.betting, self.cards)
        if pay is not None:
            self.rewards = dict(zip(self.possible_agents, pay))
            self.terminations = dict.fromkeys(self.agents, True)
            self.agent_selection = self._selector.next()
        else:
            self.agent_selection = self.possible_agents[_TO_ACT[self.betting]]
        self._accumulate_rewards()

    def close(self) -> None:
        pass


_KUHN_NAMES = {"": ("check", "bet"), "c": ("check", "bet"), "b": ("fold", "call"),
               "cb": ("fold", "call")}
_SPOKEN = {"c": "check", "b": "bet", "f": "fold"}


class KuhnPoker(MultiAgentTextEnv):
    """Kuhn poker as text; the scripted player follows a Nash equilibrium of the game."""

    game_name = "kuhn_poker"

    def make_game(self) -> Any:
        return KuhnPokerAEC()

    def _state(self, agent: str, obs: Any) -> tuple[int, str]:
        o = np.asarray(obs["observation"])
        card = int(np.argmax(o[:3]))
        hist = list(_TO_ACT)[int(np.argmax(o[3:]))] if o[3:].any() else ""
        return card, hist

    def describe(self, agent: str) -> str:
        order = "first" if agent == self.possible_agents[0] else "second"
        return ("Kuhn poker: cards J < Q < K, one card each, ante 1. Check or bet 1; facing a "
                "bet, fold or call. The higher card wins the pot at showdown. You act "
                f"{order}. Reply check, bet, fold or call.")

    def render_view(self, agent: str, obs: Any) -> str:
        card, hist = self._state(agent, obs)
        me = self.possible_agents.index(agent)
        said = []
        for k, h in enumerate(hist):
            who = "you" if k % 2 == me else "opponent"
            said.append(f"{who} {_SPOKEN[h]}")
        return f"Your card: {CARDS[card]}. Betting: " + (", ".join(said) or "none") + "."

    def move_names(self, agent: str, obs: Any) -> list[str]:
        return list(_KUHN_NAMES[self._state(agent, obs)[1]])

    def heuristic(self, agent: str, obs: Any, legal: list[int]) -> int:
        """A Nash equilibrium (Kuhn's family with alpha = 1/3): bluff J a third of the time,
        bet K, call with Q a third of the time."""
        card, hist = self._state(agent, obs)
        r = self.rng.random()
        if hist == "":  # first to act
            return 1 if card == 2 or (card == 0 and r < 1 / 3) else 0
        if hist == "c":  # checked to me
            return 1 if card == 2 or (card == 0 and r < 1 / 3) else 0
        if hist == "b":  # facing a bet as player_1
            return 1 if card == 2 or (card == 1 and r < 1 / 3) else 0
        # "cb": I checked and face a bet
        return 1 if card == 2 or (card == 1 and r < 2 / 3) else 0

    def final_text(self) -> str:
        cards = self.aec.unwrapped.cards
        shown = ", ".join(f"{a} had {CARDS[c]}" for a, c in zip(self.possible_agents, cards))
        return f"{super().final_text()} Cards: {shown}."
