"""TextWorld engines are shared by the envs of a process: an env takes an idle engine of its
game (the furthest along its own history) instead of starting one, with the same results."""

from __future__ import annotations

from typing import Any

import pytest

import agentrl


@pytest.fixture()
def starts(monkeypatch) -> list[str]:
    from collections import OrderedDict

    from agentrl.envs import textworld_env as T

    T._close_idle()
    # Earlier tests may have cached these games' transitions: start with an empty cache, so
    # that cache misses (and engine steps) happen where the tests expect them.
    monkeypatch.setattr(T, "_TRANSITIONS", OrderedDict())
    out: list[str] = []
    start = T._start_engine
    monkeypatch.setattr(T, "_start_engine", lambda path: out.append(path) or start(path))
    yield out
    T._close_idle()


def _make(cache: bool) -> Any:
    return agentrl.make_env("agentrl/TextWorld-CoinCollector-v0", num_games=2, level=3,
                            cache_transitions=cache)


def _play(env: Any, seed: int, steps: int) -> list[tuple[str, dict]]:
    """Reset, then take the first admissible action ``steps`` times."""
    obs, info = env.reset(seed=seed)
    out = [(obs, info)]
    for _ in range(steps):
        obs, _, _, _, info = env.step(info["admissible_actions"][0])
        out.append((obs, info))
    return out


def test_idle_engines_are_reused_with_identical_transitions(starts) -> None:
    a, b = _make(False), _make(False)
    try:
        played = _play(a, 0, 3)
        assert len(starts) == 1
        a.reset(seed=1)  # another game: a's game-0 engine goes idle, a starts a game-1 engine
        assert len(starts) == 2
        assert _play(b, 0, 3) == played  # on the engine a left (reset first)
        assert len(starts) == 2
    finally:
        a.close()
        b.close()


def test_an_idle_engine_is_caught_up_not_replayed(starts) -> None:
    from agentrl.envs import textworld_env as T

    a, b = _make(True), _make(True)
    try:
        played = _play(a, 0, 3)  # cache misses: a's engine applies the 3 commands
        a.reset(seed=1)  # a's game-0 engine (3 commands applied) goes idle
        (eng,) = [e for p, e, applied in T._IDLE.values() if applied is not None]
        calls: list[str] = []
        reset, step = eng.reset, eng.step
        eng.reset = lambda: calls.append("reset") or reset()
        eng.step = lambda cmd: calls.append(cmd) or step(cmd)
        # b's first 3 steps come from the transition cache; its 4th is a miss that takes the
        # idle engine, which needs only that one command
        got = _play(b, 0, 4)
        assert got[:4] == played
        assert calls == [played[3][1]["admissible_actions"][0]]
        assert len(starts) == 2
    finally:
        a.close()
        b.close()


def test_a_reset_resets_its_engine_once_with_the_same_episode(starts) -> None:
    env = _make(False)
    try:
        first = _play(env, 0, 3)
        eng = env.unwrapped._eng
        calls: list[str] = []
        reset = eng.reset
        eng.reset = lambda: calls.append("reset") or reset()
        assert _play(env, 0, 3) == first  # the engine 3 commands in, reset once
        assert calls == ["reset"]
        assert len(starts) == 1
    finally:
        env.close()
