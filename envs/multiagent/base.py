"""A PettingZoo game (AEC or Parallel) seen through one turn-based text API.

`MultiAgentTextEnv` is an ordinary agentrl text env (a `gymnasium.Env` with string observations
and actions): each ``step`` is the move of the agent whose turn it is, and ``info`` says who
that is. The rollout engine, the env pool (worker processes, timeouts) and ``check_env`` work on
it unchanged; the engine reads ``info["agent"]`` and ``info["rewards"]`` to keep one trajectory
per agent.

Both PettingZoo APIs go through it. An AEC env is stepped as it is; a Parallel env is driven
through PettingZoo's own ``parallel_to_aec_wrapper``, so simultaneous moves stay hidden: an
agent's observation only changes once every agent has moved in the round.

A subclass says how one game reads and writes as text:

    class MyGame(MultiAgentTextEnv):
        game_name = "my_game"                      # info["task_type"]
        def make_game(self): return my_pettingzoo_env()
        def describe(self, agent): return "Rules ... You play X."
        def render(self, agent, obs): return "board as text"
        def move_names(self, agent, obs): return ["left", "right"]   # one per action index
        def heuristic(self, agent, obs, legal): return legal[0]     # scripted opponent

    agentrl.register_env("me/MyGame-v0", entry_point=MyGame, description="...",
                         max_episode_steps=20)

Info keys (besides the agentrl ones: ``task``, ``task_type``, ``admissible_actions`` = the legal
moves of the agent to act, from the env's action mask; ``state_key``; ``action_valid``;
``success``):

- ``agent``: who acts now (``""`` once the game is over); ``agents``: the seats the caller plays
  (every seat, or one when a scripted ``opponent`` plays the others); ``acted``: who just moved.
- ``rewards``: {agent: reward} earned by every agent during this step, including the moves the
  scripted opponents made after it (a loser's -1 arrives on the winner's move).
- at the end: ``outcome`` {agent: "win" | "draw" | "loss"}, ``returns`` {agent: total},
  ``forfeit`` (the agent whose illegal move ended the game, if one did). ``success`` is whether
  the agent that just moved won (cooperative games: whether the team succeeded).
- ``invalid_reason`` on an invalid move: ``empty``, ``unparsable`` or ``illegal``.

Illegal moves never raise. ``illegal="forfeit"`` (default, as SPIRAL does): the offender loses
the game at once (zero-sum: -1 to it, +1 shared by the others; cooperative: the team fails).
``illegal="retry"``: the same agent moves again, at most ``max_retries`` times in a row, then
forfeits. The rollout's ``invalid_penalty`` is the per-move shaping on top.
"""

from __future__ import annotations

import random
import re
from typing import Any, ClassVar, Literal

import numpy as np

from agentrl.envs.base import TextEnv

_STRIP = " \t\r\n[](){}<>'\"`.,;:!?*"


def normalize_move(text: str) -> str:
    """Lower-case, collapse whitespace, drop surrounding brackets/quotes/punctuation."""
    return re.sub(r"\s+", " ", text.strip(_STRIP).lower()).strip(_STRIP)


def outcomes_from_returns(returns: dict[str, float]) -> dict[str, str]:
    """Zero-sum judging: the agents with the highest return win, the rest lose; all equal is a
    draw for everyone."""
    vals = list(returns.values())
    if not vals or max(vals) - min(vals) < 1e-9:
        return dict.fromkeys(returns, "draw")
    top = max(vals)
    return {a: ("win" if abs(r - top) < 1e-9 else "loss") for a, r in returns.items()}


def start_aec(env: Any, agents: list[str]) -> None:
    """The bookkeeping every AEC env resets: ``agents`` live, no rewards, nobody done."""
    env.agents = list(agents)
    env.rewards = dict.fromkeys(env.agents, 0)
    env._cumulative_rewards = dict.fromkeys(env.agents, 0)
    env.terminations = dict.fromkeys(env.agents, False)
    env.truncations = dict.fromkeys(env.agents, False)
    env.infos = {a: {} for a in env.agents}


def begin_aec_step(env: Any, action: Any) -> bool:
    """The start of every AEC ``step``: a finished agent's step only retires it (returns
    False); otherwise the mover's accumulated and everyone's last rewards are cleared."""
    a = env.agent_selection
    if env.terminations[a] or env.truncations[a]:
        env._was_dead_step(action)
        return False
    env._cumulative_rewards[a] = 0
    env.rewards = dict.fromkeys(env.agents, 0)
    return True


class MultiAgentTextEnv(TextEnv):
    """One turn-based text env over a PettingZoo game; see the module docstring.

    Args:
        opponent: ``None``: the caller plays every seat (self-play, or policies per seat).
            ``"random"`` (uniform legal move) or ``"heuristic"`` (the game's scripted player):
            the env plays every seat except the caller's, inside ``step``.
        seat: the caller's seat when ``opponent`` is set: an agent name, or ``"random"`` (drawn
            from the reset seed, so a set of seeds covers every seat).
        illegal: ``"forfeit"`` or ``"retry"`` (see the module docstring).
        max_retries: with ``illegal="retry"``, invalid moves in a row before a forfeit.
        opening_moves: each game starts after k uniformly random legal moves, k drawn from
            0..opening_moves by the reset seed (random openings, as self-play training uses to
            keep visiting varied positions; a group of episodes with one seed shares its
            opening; rewards before the first move of a caller's seat count for no one, and
            an opening that ends the game is dropped). 0 (default): the initial position.
        game_kwargs: passed to `make_game`.
    """

    game_name: ClassVar[str] = "game"
    cooperative: ClassVar[bool] = False
    opponents: ClassVar[tuple[str, ...]] = ("random", "heuristic")  # scripted seats offered

    def __init__(self, opponent: str | None = None, seat: str = "random",
                 illegal: Literal["forfeit", "retry"] = "forfeit", max_retries: int = 2,
                 opening_moves: int = 0, render_mode: str | None = None,
                 **game_kwargs: Any) -> None:
        super().__init__(render_mode=render_mode)
        if opponent not in (None, "random", "heuristic"):
            raise ValueError(f"opponent={opponent!r}: use None (the caller plays every seat), "
                             "'random' or 'heuristic'; frozen checkpoints are mapped by the "
                             "rollout (rollout.opponent)")
        if illegal not in ("forfeit", "retry"):
            raise ValueError(f"illegal={illegal!r}: use 'forfeit' or 'retry'")
        self.opponent, self.seat, self.illegal = opponent, seat, illegal
        self.max_retries = int(max_retries)
        if int(opening_moves) < 0:
            raise ValueError(f"opening_moves={opening_moves!r}: use 0 (no random opening) or more")
        self.opening_moves = int(opening_moves)
        self.game_kwargs = game_kwargs
        self.aec = self._as_aec(self.make_game(**game_kwargs))
        self.possible_agents: list[str] = list(self.aec.possible_agents)
        if seat != "random" and seat not in self.possible_agents:
            raise ValueError(f"seat={seat!r}: use 'random' or one of {self.possible_agents}")
        self.rng = random.Random(0)
        self.history: list[tuple[str, int]] = []  # (agent, action index) of every applied move
        self.returns: dict[str, float] = {}
        self.controlled: list[str] = []
        self.over = False
        self._final: dict[str, Any] = {}
        self._misses = 0  # invalid moves in a row by the agent to act (retry mode)

    # -- what a game defines ------------------------------------------------------------
    def make_game(self, **kwargs: Any) -> Any:
        """The PettingZoo env (AEC or Parallel) with Discrete action spaces."""
        raise NotImplementedError

    def describe(self, agent: str) -> str:
        """The task text for ``agent``: rules and its role."""
        return f"You are {agent} in {self.game_name}."

    def render_view(self, agent: str, obs: Any) -> str:
        """What ``agent`` sees now, as text (its own observation only)."""
        return str(obs)

    def move_names(self, agent: str, obs: Any) -> list[str]:
        """The name of every action index of ``agent`` (legal or not) in this state."""
        return [str(i) for i in range(int(self.aec.action_space(agent).n))]

    def heuristic(self, agent: str, obs: Any, legal: list[int]) -> int:
        """The scripted player's move (default: uniform over ``legal``)."""
        return self.rng.choice(legal)

    def success(self) -> bool:
        """Cooperative games: whether the team achieved the goal (read at game end)."""
        return False

    # -- plumbing -----------------------------------------------------------------------
    @staticmethod
    def _as_aec(env: Any) -> Any:
        from pettingzoo import AECEnv, ParallelEnv
        from pettingzoo.utils.conversions import parallel_to_aec_wrapper

        if isinstance(env, AECEnv):
            return env
        if isinstance(env, ParallelEnv):
            return parallel_to_aec_wrapper(env)
        raise TypeError(f"make_game() returned {type(env).__name__}; return a PettingZoo "
                        "AECEnv or ParallelEnv")

    def observe(self, agent: str) -> Any:
        return self.aec.observe(agent)

    def legal_moves(self, agent: str, obs: Any = None) -> list[int]:
        """Legal action indices of ``agent`` (the env's action mask, else every action)."""
        obs = self.observe(agent) if obs is None else obs
        mask = obs.get("action_mask") if isinstance(obs, dict) else None
        if mask is None:
            mask = self.aec.infos.get(agent, {}).get("action_mask")
        if mask is None:
            return list(range(int(self.aec.action_space(agent).n)))
        return [int(i) for i in np.flatnonzero(np.asarray(mask))]

    def _game_over(self) -> bool:
        a = self.aec
        return not a.agents or all(a.terminations[x] or a.truncations[x] for x in a.agents)

    def _apply(self, agent: str, move: int, gained: dict[str, float]) -> None:
        self.aec.step(move)
        self.history.append((agent, move))
        for x, r in self.aec.rewards.items():
            gained[x] = gained.get(x, 0.0) + float(r)

    def _advance(self, gained: dict[str, float]) -> None:
        """Play the scripted seats and retire finished agents until a controlled agent is to
        move or the game is over."""
        while not self._game_over():
            a = self.aec.agent_selection
            if self.aec.terminations[a] or self.aec.truncations[a]:
                self.aec.step(None)  # PettingZoo: a finished agent is removed by a None step
                continue
            if a in self.controlled:
                return
            obs = self.observe(a)
            legal = self.legal_moves(a, obs)
            move = self.rng.choice(legal) if self.opponent == "random" else \
                self.heuristic(a, obs, legal)
            self._apply(a, move, gained)
        self.over = True

    def _finish(self, forfeit: str | None = None) -> None:
        self.over = True
        if self.cooperative:
            ok = forfeit is None and self.success()
            outcome = dict.fromkeys(self.possible_agents, "win" if ok else "loss")
        elif forfeit is not None:
            outcome = {a: "loss" if a == forfeit else "win" for a in self.possible_agents}
        else:
            outcome = outcomes_from_returns(self.returns)
        self._final = {"outcome": outcome, "returns": dict(self.returns)}
        if forfeit is not None:
            self._final["forfeit"] = forfeit

    def forfeit_rewards(self, offender: str) -> dict[str, float]:
        """Rewards of a forfeit: zero-sum -1 to the offender, +1 shared by the others;
        cooperative: nothing (the team simply fails)."""
        if self.cooperative:
            return {}
        others = [a for a in self.possible_agents if a != offender]
        return {offender: -1.0, **{a: 1.0 / max(1, len(others)) for a in others}}

    def _info(self, acted: str | None, valid: bool, gained: dict[str, float]) -> dict[str, Any]:
        agent = "" if self.over else self.aec.agent_selection
        info: dict[str, Any] = {
            "agent": agent, "agents": list(self.controlled), "task_type": self.game_name,
            "action_valid": valid,
            "rewards": {a: float(gained.get(a, 0.0)) for a in self.possible_agents}}
        if acted is not None:
            info["acted"] = acted
        if agent:
            obs = self.observe(agent)
            view = self.render_view(agent, obs)
            names = self.move_names(agent, obs)
            info.update(role=agent, task=self.describe(agent), state_key=f"{agent}|{view}",
                        admissible_actions=[names[i] for i in self.legal_moves(agent, obs)])
        else:
            info.update(self._final)
            who = acted or (self.controlled[0] if self.controlled else "")
            info["success"] = self._final["outcome"].get(who) == "win"
        return info

    def _observation(self) -> str:
        if self.over:
            return self.final_text()
        a = self.aec.agent_selection
        return self.render_view(a, self.observe(a))

    def final_text(self) -> str:
        """The last observation: how the game ended."""
        f = self._final
        parts = [f"{a}: {o} (return {f['returns'].get(a, 0.0):g})"
                 for a, o in f["outcome"].items()]
        why = f" {f['forfeit']} forfeited with an illegal move." if "forfeit" in f else ""
        return f"Game over.{why} " + "; ".join(parts)

    # -- the gymnasium API --------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        if seed is None:  # gymnasium: an unseeded reset continues the seeded stream
            seed = int(self.np_random.integers(2**31))
        self.rng = random.Random(seed)
        if self.opponent is None:
            self.controlled = list(self.possible_agents)
        else:
            seat = self.rng.choice(self.possible_agents) if self.seat == "random" else self.seat
            self.controlled = [seat]
        gained = self._start(seed, opening=True)
        if self.over and self.opening_moves:  # the opening decided the game: start without
            gained = self._start(seed, opening=False)
        if self.over:
            self._finish()
        obs = self._observation()
        self._last_obs = obs
        return obs, self._info(None, True, gained)

    def _start(self, seed: int, opening: bool) -> dict[str, float]:
        """Reset the game and play up to the first controlled move (the random opening, if
        asked, then the scripted seats); returns the rewards earned on the way."""
        self.aec.reset(seed=seed)
        self.history, self.over, self._final, self._misses = [], False, {}, 0
        self.returns = dict.fromkeys(self.possible_agents, 0.0)
        gained: dict[str, float] = {}
        if opening and self.opening_moves:
            # the game starts where the opening (and the scripted seats' replies) left it:
            # rewards earned on the way count for no one
            self._open()
            self._advance({})
        else:
            self._advance(gained)
        self._gain(gained)
        return gained

    def _open(self) -> None:
        """The random opening: k uniform legal moves (k from 0..opening_moves), whoever is to
        move; its rewards are dropped."""
        for _ in range(self.rng.randint(0, self.opening_moves)):
            if self._game_over():
                return
            a = self.aec.agent_selection
            if self.aec.terminations[a] or self.aec.truncations[a]:
                return  # the opening decided the game already: leave the rest to _advance
            self._apply(a, self.rng.choice(self.legal_moves(a)), {})

    def _gain(self, gained: dict[str, float]) -> None:
        for a, r in gained.items():
            self.returns[a] = self.returns.get(a, 0.0) + r

    def parse_move(self, agent: str, text: str) -> tuple[int | None, str]:
        """(action index, "") for a legal move; (None, reason) otherwise. A reply names a
        move exactly (case, spaces, brackets and quotes ignored) or contains exactly one move
        name as a whole word."""
        if not isinstance(text, str) or not text.strip(_STRIP):
            return None, "empty"
        obs = self.observe(agent)
        names = [normalize_move(n) for n in self.move_names(agent, obs)]
        legal = set(self.legal_moves(agent, obs))
        said = normalize_move(text[:2000])  # a move name is short; never scan megabytes
        hits = {i for i, n in enumerate(names) if n == said}
        if not hits:
            hits = {i for i, n in enumerate(names)
                    if n and re.search(rf"(?<!\w){re.escape(n)}(?!\w)", said)}
            if len({names[i] for i in hits}) != 1:
                return None, "unparsable"
        ok = sorted(hits & legal)
        return (ok[0], "") if ok else (None, "illegal")

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self.over:  # stepping a finished game: a no-op, as gymnasium allows
            return self._observation(), 0.0, True, False, {**self._info(None, False, {}),
                                                           "invalid_reason": "game_over"}
        agent = self.aec.agent_selection
        move, reason = self.parse_move(agent, action)
        gained: dict[str, float] = {}
        if move is None:
            self._misses += 1
            if self.illegal == "retry" and self._misses <= self.max_retries:
                info = self._info(agent, False, gained)
                info["invalid_reason"] = reason
                return self._observation(), 0.0, False, False, info
            gained = self.forfeit_rewards(agent)
            self._gain(gained)
            self._finish(forfeit=agent)
        else:
            self._misses = 0
            self._apply(agent, move, gained)
            self._advance(gained)
            self._gain(gained)
            if self.over:
                self._finish()
        info = self._info(agent, move is not None, gained)
        if move is None:
            info["invalid_reason"] = reason
        obs = self._observation()
        self._last_obs = obs
        return obs, float(gained.get(agent, 0.0)), self.over, False, info

    def close(self) -> None:
        self.aec.close()
