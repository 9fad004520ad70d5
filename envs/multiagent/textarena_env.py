"""TextArena games (offline ones) through the same turn-based text API as the PettingZoo games.

TextArena (``pip install textarena``) already speaks text: each player gets a text observation
and answers with a text move such as ``[4]`` or ``[bet]``. This adapter gives it the agentrl
info keys (``agent``, ``agents``, ``rewards``, ``outcome``, ...; see
`agentrl.envs.multiagent.base`). Illegal moves follow TextArena's own rules, with its error
allowance set from ``illegal``: ``forfeit`` (allowance 0: the offender loses at once) or
``retry`` (``max_retries`` invalid moves in a row, then a loss).

TextArena draws its randomness (card deals, ...) from Python's global ``random`` module, which
it reseeds on every reset. The adapter runs every TextArena call on a private copy of that state,
so the same seed replays the same game and the rest of the process keeps its own random stream.
TextArena has no legal-move API; ``admissible_actions`` are the moves a game prints in its
"Available ..." line, when it prints one. There are no scripted opponents here; random and
heuristic opponents live with the PettingZoo games.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from agentrl.envs.base import TextEnv
from agentrl.envs.multiagent.base import outcomes_from_returns

_LISTED = re.compile(r"'(\[[^'\]]{1,40}\])'")


def listed_moves(observation: str) -> list[str]:
    """The moves a TextArena game lists in its last "Available ..." line (e.g. ``'[0]', '[4]'``
    or ``'[check]', '[bet]'``); [] when it lists none."""
    for line in reversed(observation.splitlines()):
        if "available" in line.lower():
            return _LISTED.findall(line)
    return []


class TextArenaEnv(TextEnv):
    """A TextArena game as a turn-based text env.

    Args:
        game: TextArena env id; the ``-train`` variants show the current board plus the latest
            messages instead of the whole log.
        num_players: players TextArena seats.
        illegal: ``forfeit`` or ``retry`` (see the module docstring).
        max_retries: invalid moves in a row allowed with ``retry``.
        game_kwargs: passed to ``textarena.make``.
    """

    opponents: tuple[str, ...] = ()  # no legal-move lists, so no scripted opponents

    def __init__(self, game: str = "TicTacToe-v0-train", num_players: int = 2,
                 illegal: Literal["forfeit", "retry"] = "forfeit", max_retries: int = 2,
                 render_mode: str | None = None, **game_kwargs: Any) -> None:
        super().__init__(render_mode=render_mode)
        import textarena

        if illegal not in ("forfeit", "retry"):
            raise ValueError(f"illegal={illegal!r}: use 'forfeit' or 'retry'")
        self._ta_make: Callable[..., Any] = textarena.make
        self.game, self.num_players, self.illegal = game, int(num_players), illegal
        self.max_retries, self.game_kwargs = int(max_retries), game_kwargs
        self.agents = [f"player_{i}" for i in range(self.num_players)]
        self.env: Any = None
        self._random_state = random.Random(0).getstate()
        self._current = 0
        self.over = False

    @contextmanager
    def _own_random(self) -> Iterator[None]:
        outer = random.getstate()
        random.setstate(self._random_state)
        try:
            yield
        finally:
            self._random_state = random.getstate()
            random.setstate(outer)

    def _observe(self) -> str:
        with self._own_random():
            pid, obs = self.env.get_observation()
        self._current = int(pid)
        return obs if isinstance(obs, str) else "\n".join(str(m[1]) for m in obs)

    def _info(self, valid: bool, rewards: dict[str, float]) -> dict[str, Any]:
        info: dict[str, Any] = {"agents": list(self.agents), "task_type": self.game,
                                "action_valid": valid,
                                "rewards": {a: float(rewards.get(a, 0.0)) for a in self.agents}}
        if self.over:
            info["agent"] = ""
        else:
            agent = self.agents[self._current]
            # TextArena repeats its rules in every observation; the task only names the seat.
            info.update(agent=agent, role=agent,
                        task=f"TextArena {self.game}: you are {agent} (Player {self._current}).")
            moves = listed_moves(self._last_obs)
            if moves:
                info["admissible_actions"] = moves
        return info

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        if seed is None:  # gymnasium: an unseeded reset continues the seeded stream
            seed = int(self.np_random.integers(2**31))
        self._random_state = random.Random(seed).getstate()
        if self.env is not None:
            self.env.close()
        self.over = False
        with self._own_random():
            self.env = self._ta_make(self.game, **self.game_kwargs)
            self.env.reset(num_players=self.num_players, seed=seed)
            # TextArena's allowance: invalid moves tolerated before the offender loses.
            self.env.state.error_allowance = 0 if self.illegal == "forfeit" else self.max_retries
        self._last_obs = self._observe()
        return self._last_obs, self._info(True, {})

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self.over:
            return self._last_obs, 0.0, True, False, {**self._info(False, {}),
                                                      "invalid_reason": "game_over"}
        me = self._current
        agent = self.agents[me]
        text = action if isinstance(action, str) else str(action)
        state = self.env.state
        before = getattr(state, "error_count", 0)
        with self._own_random():
            done, _ = self.env.step(text[:4000])  # a move is short; never parse megabytes
        if done:
            with self._own_random():
                rewards_by_id, game_info = self.env.close()
            self.over = True
            rewards = {self.agents[int(p)]: float(r) for p, r in (rewards_by_id or {}).items()}
            forfeit = bool(game_info.get(me, {}).get("invalid_move"))
            info = self._info(not forfeit, rewards)
            outcome = outcomes_from_returns({a: rewards.get(a, 0.0) for a in self.agents})
            info.update(outcome=outcome, returns=dict(info["rewards"]),
                        success=outcome[agent] == "win")
            if forfeit:
                info.update(forfeit=agent, invalid_reason="illegal")
            reason = game_info.get(me, {}).get("reason", "")
            obs = "Game over. " + "; ".join(f"{a}: {o}" for a, o in outcome.items()) + (
                f". {reason}" if reason else "")
            self._last_obs = obs
            return obs, info["rewards"][agent], True, False, info
        invalid = getattr(state, "error_count", 0) > before
        obs = self._last_obs = self._observe()
        info = self._info(not invalid, {})
        if invalid:
            info["invalid_reason"] = "illegal"
        return obs, 0.0, False, False, info

    def close(self) -> None:
        self.env = None
