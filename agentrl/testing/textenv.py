"""`check_env`: gymnasium's checker plus the text-env contract (see `agentrl.testing`)."""

from __future__ import annotations

import pickle
from typing import Any

import gymnasium as gym
from gymnasium.utils.env_checker import check_env as gym_check_env

#: Actions every env must survive as ordinary (invalid) steps.
NASTY_ACTIONS = (
    "",
    " ",
    "x" * 100_000,
    "\x00\x01\xff\ufffd binary \x7f",
    "日本語 🙂 ñ ü \u202e",
    "<action></action>",
    "go north; rm -rf /",
    "\n\n\t",
)


class EnvCheckError(AssertionError):
    """An env broke the agentrl env contract; the message says which part."""


def check_env(env: gym.Env, seed: int = 0, max_steps: int | None = None,
              skip_gym: bool = False, verbose: bool = True) -> None:
    """Check that ``env`` follows the agentrl text-env contract.

    Runs gymnasium's own checker, then:
      1. observations are strings; reset info has ``task_type``;
      2. same seed => same first observation, same admissible actions, same transitions;
      3. any action string (empty, 100 KB, binary, unicode) is a step with
         ``action_valid=False`` or a valid action, never an exception;
      4. an episode ends (terminated or truncated) within ``max_steps`` steps (default: the
         registered ``max_episode_steps``, else 200) of admissible actions, with a boolean
         ``success`` in the final info;
      5. observations and infos pickle (they cross process boundaries in the env pool);
      6. ``info["tools"]``, where given, are function schemas with one parameter each.

    With ``verbose`` it prints one line when every check passed.

    Raises:
        EnvCheckError: naming the failed check.
    """
    inner = env.unwrapped
    if not skip_gym:
        try:
            gym_check_env(inner, skip_render_check=True)
        except Exception as e:  # gymnasium raises AssertionError or its own errors
            raise EnvCheckError(f"gymnasium check_env failed: {e}") from e
    _check_reset(env, seed)
    _check_determinism(env, seed)
    _check_any_action(env, seed)
    if max_steps is None:
        limit = env.spec.max_episode_steps if env.spec is not None else None
        max_steps = limit if limit else 200
    obs, info, steps = _check_episode_ends(env, seed, max_steps)
    _check_pickles(env, obs, info)
    if verbose:
        name = env.spec.id if env.spec is not None else type(inner).__name__
        print(f"check_env: {name} passes (reset/step contract, seed determinism, "
              f"{len(NASTY_ACTIONS)} hostile actions, an episode ends in {steps} steps, "
              "results pickle)")


def _check_reset(env: gym.Env, seed: int) -> None:
    """1. A string observation and an info with ``task_type``."""
    obs, info = env.reset(seed=seed)
    _expect(isinstance(obs, str), f"reset() observation is {type(obs).__name__}, not str")
    _expect(isinstance(info, dict), "reset() info is not a dict")
    _expect(isinstance(info.get("task_type"), str), "reset() info lacks a str 'task_type'")
    _check_info_types(info, "reset")


def _check_determinism(env: gym.Env, seed: int) -> None:
    """2. Same seed => same first observation, admissible actions and transitions."""
    obs, info = env.reset(seed=seed)
    obs2, info2 = env.reset(seed=seed)
    _expect(obs == obs2, "reset(seed) twice gave different observations")
    _expect(info.get("admissible_actions") == info2.get("admissible_actions"),
            "reset(seed) twice gave different admissible_actions")
    trace1 = _play(env, seed, 5)
    trace2 = _play(env, seed, 5)
    _expect(trace1 == trace2, "the same seed and actions gave different transitions")


def _check_any_action(env: gym.Env, seed: int) -> None:
    """3. Any action string is a step, never an exception."""
    for a in NASTY_ACTIONS:
        env.reset(seed=seed)
        try:
            out = env.step(a)
        except Exception as e:
            raise EnvCheckError(f"step({a[:30]!r}...) raised {type(e).__name__}: {e}") from e
        _expect(len(out) == 5, "step() must return 5 values")
        o, r, term, trunc, inf = out
        _expect(isinstance(o, str), f"step() observation is {type(o).__name__}, not str")
        _expect(isinstance(r, (int, float)), "step() reward is not a number")
        _expect(isinstance(inf.get("action_valid"), bool), "step() info lacks bool 'action_valid'")
        _check_info_types(inf, "step")


def _check_episode_ends(env: gym.Env, seed: int, max_steps: int) -> tuple[Any, Any, int]:
    """4. An episode of admissible actions ends within ``max_steps``, reporting ``success``.
    Returns its last observation, info and step count."""
    obs, info = env.reset(seed=seed)
    done, steps = False, 0
    while not done and steps < max_steps:
        obs, r, term, trunc, info = env.step(_pick(env, info, steps))
        done = term or trunc
        steps += 1
    _expect(done, f"episode did not end within {max_steps} steps (register max_episode_steps)")
    _expect(isinstance(info.get("success"), bool), "final info lacks bool 'success'")
    return obs, info, steps


def _check_pickles(env: gym.Env, obs: Any, info: Any) -> None:
    """5. What crosses process boundaries (observation, info, spec) pickles."""
    try:
        pickle.dumps((obs, info))
        if env.spec is not None:
            pickle.dumps(env.spec)
    except Exception as e:
        raise EnvCheckError(f"observation/info/spec does not pickle: {e}") from e


def _play(env: gym.Env, seed: int, n: int) -> list[Any]:
    obs, info = env.reset(seed=seed)
    trace: list[Any] = [obs]
    for k in range(n):
        o, r, term, trunc, inf = env.step(_pick(env, info, k))
        trace.append((o, float(r), term, trunc, inf.get("admissible_actions")))
        info = inf
        if term or trunc:
            break
    return trace


def _pick(env: gym.Env, info: dict[str, Any], k: int) -> str:
    adm = info.get("admissible_actions")
    if adm:
        return adm[(k * 7 + 3) % len(adm)]
    return f"action {k}"


def _check_info_types(info: dict[str, Any], where: str) -> None:
    if "admissible_actions" in info:
        adm = info["admissible_actions"]
        _expect(isinstance(adm, list) and all(isinstance(a, str) for a in adm),
                f"{where}() info 'admissible_actions' is not a list of str")
    if "state_key" in info:
        try:
            hash(info["state_key"])
        except TypeError as e:
            raise EnvCheckError(f"{where}() info 'state_key' is not hashable") from e
    if "success" in info:
        _expect(isinstance(info["success"], bool), f"{where}() info 'success' is not bool")
    if "tools" in info:
        from agentrl.rollout.toolcalls import check_tools

        try:
            check_tools(info["tools"])
        except (ValueError, TypeError) as e:
            raise EnvCheckError(f"{where}() info 'tools': {e}") from e


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise EnvCheckError(msg)
