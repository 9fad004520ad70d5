"""Registries: environments (on top of gymnasium's) and algorithms.

Environments are registered with `register_env`, which calls `gymnasium.register` and records a
one-line description for `agentrl envs`. Entry points are ``"module:Class"`` strings (or
callables), so heavy dependencies load only when an env is made.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym


@dataclass(frozen=True)
class EnvEntry:
    id: str
    description: str
    requires: tuple[str, ...]  # pip extras / modules it needs, for the error message
    test_kwargs: dict[str, Any]  # small, fast settings used by the registered-env test sweep
    multiagent: bool = False  # a turn-based game whose info["agent"] names who moves
    unrecorded_info: tuple[str, ...] = ()  # info keys not stored in trajectories
    isolate: bool = False  # run in worker processes under env.pool=auto (JVM, planner, leaks)


ENVS: dict[str, EnvEntry] = {}


def register_env(
    id: str,
    entry_point: str | Callable[..., gym.Env],
    description: str,
    max_episode_steps: int | None = None,
    requires: tuple[str, ...] = (),
    test_kwargs: dict[str, Any] | None = None,
    multiagent: bool = False,
    unrecorded_info: tuple[str, ...] = (),
    isolate: bool = False,
    **kwargs: Any,
) -> None:
    """Register a text env under ``id`` (``agentrl/Name-v0`` for built-ins).

    Args:
        id: gymnasium id, versioned (``-v0``).
        entry_point: ``"pkg.module:Class"`` or a callable returning the env.
        description: one line shown by ``agentrl envs``.
        max_episode_steps: gymnasium's TimeLimit (truncation) for the env.
        requires: importable modules the env needs; `make_env` names the missing one.
        test_kwargs: overrides that make the env cheap for the conformance test sweep.
        multiagent: the env is a multi-agent game (`agentrl.envs.multiagent`): several agents
            take turns, ``info["agent"]`` says whose turn it is; checked by
            `agentrl.testing.check_multiagent_env` as well.
        unrecorded_info: ``info`` keys the rollout does not store per turn (large or
            expert-only values, e.g. a solution walkthrough).
        isolate: under ``env.pool=auto``, run this env in worker processes (crash and hang
            isolation, step timeouts) rather than in the trainer's process. For envs that
            start a JVM or a planner, or can hang or leak; cheap pure-Python envs leave it off.
        kwargs: default constructor arguments.
    """
    gym.register(id=id, entry_point=entry_point, max_episode_steps=max_episode_steps,
                 kwargs=kwargs, disable_env_checker=True)
    ENVS[id] = EnvEntry(id=id, description=description, requires=tuple(requires),
                       test_kwargs=dict(test_kwargs or {}), multiagent=multiagent,
                       unrecorded_info=tuple(unrecorded_info), isolate=isolate)


def unrecorded_info(env_id: str) -> frozenset[str]:
    """The ``info`` keys env ``env_id`` registered as not stored in trajectories."""
    load_builtin_envs()
    entry = ENVS.get(env_id)
    return frozenset(entry.unrecorded_info) if entry else frozenset()


def load_builtin_envs() -> None:
    """Import `agentrl.envs`, whose modules register the built-in ids."""
    importlib.import_module("agentrl.envs")


def make_env(id: str, **kwargs: Any) -> gym.Env:
    """`gymnasium.make` for agentrl ids, with a clear message when an optional dependency is
    missing or the id is unknown."""
    load_builtin_envs()
    entry = ENVS.get(id)
    if entry is None and id not in gym.registry:
        import difflib

        known = sorted(set(ENVS) | {k for k in gym.registry if k.startswith("agentrl/")})
        hint = difflib.get_close_matches(id, known, n=1)
        raise KeyError(
            f"unknown environment {id!r}"
            + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" Registered: {', '.join(known)}"
        )
    for mod in entry.requires if entry else ():
        if importlib.util.find_spec(mod) is None:
            raise ImportError(
                f"{id} needs the Python package {mod!r}, which is not installed: "
                f"pip install 'agentrl[{_EXTRA.get(mod, mod)}]'"
            )
    return gym.make(id, **kwargs)


_EXTRA = {"textworld": "textworld", "alfworld": "alfworld", "scienceworld": "sciworld",
          "rank_bm25": "webshop", "pettingzoo": "multiagent", "pygame": "multiagent",
          "textarena": "multiagent"}


# ----------------------------------------------------------------------------- algorithms

ALGORITHMS: dict[str, type] = {}


def register_algorithm(cls: type) -> type:
    """Class decorator: make an `Algorithm` subclass available by its ``name``."""
    name = getattr(cls, "name", None)
    if not name:
        raise ValueError(f"{cls.__name__} needs a class attribute `name`")
    ALGORITHMS[name] = cls
    return cls


def get_algorithm(name: str) -> type:
    """Look up an algorithm by registered name, or load ``"pkg.module:Class"`` from anywhere."""
    importlib.import_module("agentrl.algorithms")
    if ":" in name:
        mod, _, attr = name.partition(":")
        return getattr(importlib.import_module(mod), attr)
    if name not in ALGORITHMS:
        import difflib

        hint = difflib.get_close_matches(name, list(ALGORITHMS), n=1)
        raise KeyError(
            f"unknown algorithm {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
            + f" Registered: {', '.join(sorted(ALGORITHMS))}"
        )
    return ALGORITHMS[name]
