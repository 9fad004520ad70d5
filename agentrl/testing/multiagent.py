"""`check_multiagent_env`: the conformance check for multi-agent text games.

    from agentrl.testing import check_multiagent_env
    check_multiagent_env(agentrl.make_env("agentrl/TicTacToe-v0"))

It runs `check_env` (the single-agent text-env contract every game also meets), PettingZoo's own
``api_test`` / ``parallel_api_test`` on the PettingZoo env the game wraps, and the multi-agent
contract of `agentrl.envs.multiagent.base`.
"""

from __future__ import annotations

import random
import warnings
from typing import Any

import gymnasium as gym

from agentrl.testing.textenv import NASTY_ACTIONS, EnvCheckError, _expect, check_env
from agentrl.types import OUTCOMES


def _variant(env: gym.Env, **overrides: Any) -> gym.Env:
    """The same registered env with some constructor arguments replaced."""
    spec = env.spec
    if spec is None:
        raise EnvCheckError("check_multiagent_env needs an env made with agentrl.make_env (its "
                            "registration is used to build the illegal-move and opponent variants)")
    return gym.make(spec.id, **{**(spec.kwargs or {}), **overrides})


def _play(env: gym.Env, seed: int, pick: Any, max_steps: int,
          first: list[str] = ()) -> tuple[list[Any], dict[str, Any]]:
    """Play one game: ``first`` replies, then ``pick(info, k)``. Returns (trace, final info) and
    checks the per-step protocol on the way."""
    obs, info = env.reset(seed=seed)
    agents = list(info["agents"])
    trace: list[Any] = [(obs, info.get("agent"))]
    total = dict.fromkeys(info["rewards"], 0.0)
    for k in range(max_steps):
        _expect(info["agent"] in agents, f"info['agent']={info['agent']!r} is not one of "
                                         f"info['agents']={agents}")
        reply = first[k] if k < len(first) else pick(info, k)
        obs, r, term, trunc, info = env.step(reply)
        _expect(isinstance(obs, str), "step() observation is not a str")
        rewards = info.get("rewards")
        _expect(isinstance(rewards, dict) and set(agents) <= set(rewards),
                "step() info['rewards'] must hold a number for every agent in info['agents']")
        _expect(all(isinstance(v, (int, float)) for v in rewards.values()),
                "info['rewards'] values must be numbers")
        for a, v in rewards.items():
            total[a] = total.get(a, 0.0) + float(v)
        trace.append((obs, float(r), term, trunc, info.get("agent"), sorted(rewards.items()),
                      info.get("action_valid")))
        if term or trunc:
            break
    else:
        raise EnvCheckError(f"a game did not end within {max_steps} moves")
    if term:
        _check_end(env, info, total)
    return trace, info


def _check_end(env: gym.Env, info: dict[str, Any], total: dict[str, float]) -> None:
    _expect(info.get("agent") == "", "at the end of a game info['agent'] must be ''")
    outcome, returns = info.get("outcome"), info.get("returns")
    _expect(isinstance(outcome, dict) and isinstance(returns, dict),
            "the final info must hold 'outcome' and 'returns' dicts")
    _expect(all(o in OUTCOMES for o in outcome.values()),
            f"outcomes must be one of {OUTCOMES}, got {outcome}")
    _expect(isinstance(info.get("success"), bool), "final info lacks bool 'success'")
    for a, v in returns.items():
        _expect(abs(total.get(a, 0.0) - v) < 1e-6,
                f"the step rewards of {a} add up to {total.get(a, 0.0)}, but returns say {v}")
    if getattr(env.unwrapped, "cooperative", False):
        _expect(len(set(outcome.values())) == 1, "a cooperative game must give every agent the "
                                                 "same outcome")
    else:
        from agentrl.envs.multiagent.base import outcomes_from_returns

        _expect(outcome == outcomes_from_returns(returns),
                f"outcome {outcome} does not follow from returns {returns}")


def _legal(info: dict[str, Any], k: int, rng: random.Random) -> str:
    adm = info.get("admissible_actions")
    return rng.choice(adm) if adm else f"[{k % 9}]"


def _random_player(seed: int) -> Any:
    """A player of uniformly random listed moves, from its own seeded stream."""
    rng = random.Random(seed)
    return lambda info, k: _legal(info, k, rng)


def _pettingzoo_tests(inner: Any) -> None:
    make = getattr(inner, "make_game", None)
    if make is None:  # not a PettingZoo game (TextArena): nothing of PettingZoo's to run
        return
    from pettingzoo import AECEnv

    with warnings.catch_warnings():  # its test module imports an env the deprecated way
        warnings.simplefilter("ignore", DeprecationWarning)
        from pettingzoo.test import api_test, parallel_api_test

    game = make(**getattr(inner, "game_kwargs", {}))
    try:
        with warnings.catch_warnings():  # style advice on numeric observations, not failures
            warnings.simplefilter("ignore", UserWarning)
            if isinstance(game, AECEnv):
                api_test(game, num_cycles=200)
            else:
                parallel_api_test(game, num_cycles=200)
    except Exception as e:
        raise EnvCheckError(f"PettingZoo's API test failed on the wrapped game: "
                            f"{type(e).__name__}: {e}") from e
    finally:
        game.close()


def check_multiagent_env(env: gym.Env, seed: int = 0, games: int = 4,
                         max_steps: int | None = None) -> None:
    """Check a multi-agent text game against the agentrl contract.

    1. `check_env`: the single-agent text-env contract (any string is a step, never an
       exception; determinism; episodes end; pickling).
    2. PettingZoo's ``api_test`` (AEC) or ``parallel_api_test`` (Parallel) on the PettingZoo
       env the game wraps (skipped for non-PettingZoo games such as TextArena's).
    3. The multi-agent protocol over ``games`` games of random legal moves: ``info["agent"]``
       names the mover among ``info["agents"]``; ``info["rewards"]`` holds a number per agent
       every step, and they add up to the final ``returns``; the final info has an
       ``outcome`` per agent that follows from the returns (cooperative: one shared outcome).
    4. Same seed and replies => the same game, move by move, for every agent.
    5. Every nasty reply (empty, 100 KB, binary, unicode, markup) at the first move and
       mid-game, under ``illegal="forfeit"`` and ``illegal="retry"``, is a recorded invalid
       move (or a legal one), never an exception: forfeit ends the game with the offender
       losing; retry keeps the same agent to move until ``max_retries`` is exceeded.
    6. Each scripted opponent the game offers (``opponents``) plays every other seat: the
       caller only ever sees its own seat, and ``seat="random"`` covers every seat.

    Raises:
        EnvCheckError: naming the failed check.
    """
    check_env(env, seed=seed, max_steps=max_steps)
    inner = env.unwrapped
    if max_steps is None:
        limit = env.spec.max_episode_steps if env.spec is not None else None
        max_steps = limit or 200
    _pettingzoo_tests(inner)

    obs, info = env.reset(seed=seed)
    agents = info.get("agents")
    _expect(isinstance(agents, list) and agents, "reset() info must list the agents the "
                                                 "caller plays in 'agents'")
    _expect(info.get("agent") in agents, "reset() info['agent'] must name who moves first")
    _expect(isinstance(info.get("task"), str), "reset() info must hold the mover's 'task'")

    # 3. the protocol, and 4. determinism
    for g in range(games):
        _, end = _play(env, seed + g, _random_player(g), max_steps)
        _expect(end.get("outcome") is not None or end.get("agent") == "",
                "a game of legal moves ended without an outcome")
    replay = [_play(env, seed, _random_player(7), max_steps)[0] for _ in range(2)]
    _expect(replay[0] == replay[1], "the same seed and replies gave a different game")

    _check_nasty_replies(env, seed, bool(info.get("admissible_actions")), max_steps)
    for opp in getattr(inner, "opponents", ()):
        _check_scripted_opponent(env, opp, seed, max_steps)


def _check_nasty_replies(env: gym.Env, seed: int, legal_known: bool, max_steps: int) -> None:
    """5. Every nasty reply, at the first move and (where the legal moves are known) mid-game,
    under both illegal-move modes, is a recorded invalid move, never an exception."""
    for mode in ("forfeit", "retry"):
        variant = _variant(env, illegal=mode)
        retries = int(getattr(variant.unwrapped, "max_retries", 0))
        try:
            openings = (0, 2) if legal_known else (0,)  # the openings must be legal
            for nasty in NASTY_ACTIONS:
                for opening in openings:
                    _nasty_game(variant, seed, nasty, opening, mode, retries, max_steps)
        finally:
            variant.close()


def _check_scripted_opponent(env: gym.Env, opp: str, seed: int, max_steps: int) -> None:
    """6. Scripted opponent ``opp`` plays every other seat; ``seat="random"`` covers them all."""
    variant = _variant(env, opponent=opp, seat="random")
    seats = set()
    try:
        for s in range(12):
            _, info = variant.reset(seed=seed + s)
            _expect(len(info["agents"]) == 1, f"opponent={opp!r}: the caller must play "
                                              "exactly one seat")
            seats.add(info["agents"][0])
            _play(variant, seed + s, _random_player(s), max_steps)
    finally:
        variant.close()
    _expect(len(seats) > 1, f"opponent={opp!r}, seat='random': 12 seeds all gave the "
                            "same seat")


def _nasty_game(env: gym.Env, seed: int, nasty: str, opening: int, mode: str, retries: int,
                max_steps: int) -> None:
    rng = random.Random(opening)
    obs, info = env.reset(seed=seed)
    for k in range(opening):  # a few legal moves first, to test mid-game too
        obs, _, term, trunc, info = env.step(_legal(info, k, rng))
        if term or trunc:
            return
    mover = info["agent"]
    for attempt in range(retries + 2):
        try:
            obs, r, term, trunc, info = env.step(nasty)
        except Exception as e:
            raise EnvCheckError(f"illegal={mode}: step({nasty[:30]!r}...) raised "
                                f"{type(e).__name__}: {e}") from e
        _expect(isinstance(info.get("action_valid"), bool), "step() info lacks 'action_valid'")
        if info["action_valid"]:
            return  # the reply happened to name a legal move: a normal step
        _expect(isinstance(info.get("invalid_reason"), str),
                "an invalid move must say why in info['invalid_reason']")
        if term:
            _expect(mode == "forfeit" or attempt >= retries,
                    f"illegal=retry: the game ended after {attempt + 1} invalid moves, before "
                    f"max_retries={retries} was exceeded")
            _expect(info.get("forfeit") == mover, "a forfeit must name the offender in "
                                                  "info['forfeit']")
            if not getattr(env.unwrapped, "cooperative", False):
                _expect(info["outcome"][mover] == "loss", "the offender of a forfeit must lose")
            return
        _expect(mode == "retry", "illegal=forfeit: an invalid move must end the game")
        _expect(info.get("agent") == mover, "illegal=retry: the same agent must move again")
    raise EnvCheckError(f"illegal=retry: {retries + 2} invalid moves in a row did not forfeit")
