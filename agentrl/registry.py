"""Registries: environments (on top of gymnasium's) and algorithms.

Environments are registered with `register_env`, which calls `gymnasium.register` and records
what `agentrl` needs beyond gymnasium: a one-line description for `agentrl envs`, the pip extra
that installs the env's packages, and the env's recommended run settings. Entry points are
``"module:Class"`` strings (or callables), so heavy dependencies load only when an env is made.

Recommended settings are a partial config (``{"rollout": {...}, "env": {"kwargs": ...}}``) that
`agentrl.config.load_config` puts under the config file, so ``agentrl train env.id=X`` starts
from settings that make sense for X (constrained or free decoding, action format, turn limit,
context mode, its own kwargs) instead of another env's.
"""

from __future__ import annotations

import copy
import difflib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym


@dataclass(frozen=True)
class EnvEntry:
    id: str
    description: str
    requires: tuple[str, ...]  # importable modules it needs, for the error message
    extra: str  # the `pip install 'agentrl[<extra>]'` that provides `requires`
    test_kwargs: dict[str, Any]  # small, fast settings used by the registered-env test sweep
    multiagent: bool = False  # a turn-based game whose info["agent"] names who moves
    unrecorded_info: tuple[str, ...] = ()  # info keys not stored in trajectories
    isolate: bool = False  # run in worker processes under env.pool=auto (JVM, planner, leaks)
    recommended: dict[str, dict[str, Any]] = field(default_factory=dict)
    # "pkg.module:function"(kwargs, seeds) that creates the env's data (generated games, a
    # catalogue) up front, with progress, for the episodes of `seeds` (None: all of them).
    prepare: str | None = None
    # "pkg.module:Class" of the env's own expert (`ExpertActions`): a planner, gold path,
    # oracle or walkthrough that `policy.backend=expert` plays through the rollout engine.
    expert: str | None = None


ENVS: dict[str, EnvEntry] = {}


class UnknownEnvError(KeyError):
    """An env id that is not registered; the message suggests the closest registered id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


def register_env(
    id: str,
    entry_point: str | Callable[..., gym.Env],
    description: str,
    max_episode_steps: int | None = None,
    requires: tuple[str, ...] = (),
    extra: str | None = None,
    test_kwargs: dict[str, Any] | None = None,
    multiagent: bool = False,
    unrecorded_info: tuple[str, ...] = (),
    isolate: bool = False,
    recommended: dict[str, dict[str, Any]] | None = None,
    prepare: str | None = None,
    expert: str | None = None,
    **kwargs: Any,
) -> None:
    """Register a text env under ``id`` (``agentrl/Name-v0`` for built-ins).

    Args:
        id: gymnasium id, versioned (``-v0``).
        entry_point: ``"pkg.module:Class"`` or a callable returning the env.
        description: one line shown by ``agentrl envs``.
        max_episode_steps: gymnasium's TimeLimit (truncation) for the env.
        requires: importable modules the env needs; `make_env` names the missing one.
        extra: the agentrl pip extra that installs ``requires`` (default: the first module's
            name), named in the error when one is missing.
        test_kwargs: overrides that make the env cheap for the conformance test sweep.
        multiagent: the env is a multi-agent game (`agentrl.envs.multiagent`): several agents
            take turns, ``info["agent"]`` says whose turn it is; checked by
            `agentrl.testing.check_multiagent_env` as well.
        unrecorded_info: ``info`` keys the rollout does not store per turn (large or
            expert-only values, e.g. a solution walkthrough).
        isolate: under ``env.pool=auto``, run this env in worker processes (crash and hang
            isolation, step timeouts) rather than in the trainer's process. For envs that
            start a JVM or a planner, or can hang or leak; cheap pure-Python envs leave it off.
        recommended: config sections this env should be trained with by default, e.g.
            ``{"rollout": {"constrained": True}, "env": {"kwargs": {...}}}``; a config file
            and ``key=value`` overrides still win.
        prepare: ``"pkg.module:function"`` called as ``function(kwargs, seeds)`` before a run
            builds its envs, to generate the data those episodes need (with progress).
        expert: ``"pkg.module:Class"`` of the env's expert (see `ExpertActions`): built per
            episode as ``Class(env, reset_info)``, ``act(info)`` returns its next action.
            Envs made with ``expert_actions=True`` then carry it in ``info["expert_action"]``.
        kwargs: default constructor arguments.
    """
    gym.register(id=id, entry_point=entry_point, max_episode_steps=max_episode_steps,
                 kwargs=kwargs, disable_env_checker=True)
    rec = copy.deepcopy(recommended or {})
    ENVS[id] = EnvEntry(id=id, description=description, requires=tuple(requires),
                       extra=extra or (requires[0] if requires else ""),
                       test_kwargs=dict(test_kwargs or {}), multiagent=multiagent,
                       unrecorded_info=tuple(unrecorded_info), isolate=isolate,
                       recommended=rec, prepare=prepare, expert=expert)


def unrecorded_info(env_id: str) -> frozenset[str]:
    """The ``info`` keys env ``env_id`` registered as not stored in trajectories."""
    load_builtin_envs()
    entry = ENVS.get(env_id)
    return frozenset(entry.unrecorded_info) if entry else frozenset()


def is_multiagent(env_id: str) -> bool:
    """Whether ``env_id`` was registered as a multi-agent game (``register_env(multiagent=True)``)."""
    load_builtin_envs()
    entry = ENVS.get(env_id)
    return entry is not None and entry.multiagent


def load_builtin_envs() -> None:
    """Import `agentrl.envs`, whose modules register the built-in ids."""
    importlib.import_module("agentrl.envs")


def known_env_ids() -> list[str]:
    """Every env id `make_env` accepts: agentrl's registry plus gymnasium's ``agentrl/`` ids."""
    load_builtin_envs()
    return sorted(set(ENVS) | {k for k in gym.registry if k.startswith("agentrl/")})


def check_env_id(id: str) -> None:
    """Raise `UnknownEnvError` (with the closest registered id) unless ``id`` can be made."""
    load_builtin_envs()
    if id in ENVS or id in gym.registry:
        return
    known = known_env_ids()
    hint = difflib.get_close_matches(id, known, n=1)
    raise UnknownEnvError(
        f"unknown environment {id!r}" + (f"; did you mean {hint[0]!r}?" if hint else "")
        + f" Registered: {', '.join(known)}. A custom env must be registered "
        "(agentrl.register_env) before the config is loaded")


def recommended_settings(id: str) -> dict[str, dict[str, Any]]:
    """The env's recommended config sections (empty for envs registered without them)."""
    load_builtin_envs()
    entry = ENVS.get(id)
    return copy.deepcopy(entry.recommended) if entry else {}


def missing_requirement(id: str) -> str | None:
    """One line naming the missing package and its install command, or None if all present."""
    load_builtin_envs()
    entry = ENVS.get(id)
    for mod in entry.requires if entry else ():
        if importlib.util.find_spec(mod) is None:
            return (f"{id} needs the Python package {mod!r}, which is not installed: "
                    f"pip install 'agentrl[{entry.extra}]'")
    return None


def make_env(id: str, **kwargs: Any) -> gym.Env:
    """`gymnasium.make` for agentrl ids, with a clear message when an optional dependency is
    missing or the id is unknown. ``expert_actions=True`` (`EXPERT_KWARG`, not passed to the
    env) wraps the env in `ExpertActions`."""
    check_env_id(id)
    missing = missing_requirement(id)
    if missing:
        raise ImportError(missing)
    expert = bool(kwargs.pop(EXPERT_KWARG, False))
    env = gym.make(id, **kwargs)
    return ExpertActions(env, expert_class(id)) if expert else env


# ---------------------------------------------------------------------------------- experts

#: The env kwarg that asks `make_env` for the env's expert action in every step's info.
EXPERT_KWARG = "expert_actions"


def has_expert(env_id: str) -> bool:
    """Whether ``env_id`` registered an expert (`register_env(..., expert=...)`)."""
    load_builtin_envs()
    entry = ENVS.get(env_id)
    return bool(entry and entry.expert)


def expert_class(env_id: str) -> type:
    """The expert class ``env_id`` registered; a one-line error naming the envs that have one."""
    if not has_expert(env_id):
        have = sorted(k for k, e in ENVS.items() if e.expert)
        raise ValueError(f"{env_id} has no expert to play (envs with one: {', '.join(have)})")
    mod, _, attr = str(ENVS[env_id].expert).partition(":")
    return getattr(importlib.import_module(mod), attr)


class ExpertActions(gym.Wrapper):
    """Adds the env's expert's next action to ``info["expert_action"]`` after every reset and
    step that does not end the episode (None when the expert has no action there).

    The expert class is built per episode as ``cls(env.unwrapped, reset_info)``; its
    ``reset_options`` (a class attribute, e.g. ScienceWorld's ``{"gold_path": True}``) go into
    every reset, and ``act(info)`` is asked once per turn. Where the env lists admissible
    actions, an action that differs from a listed one only in case is given as listed. An
    expert that raises gives None
    and the reason in ``info["expert_error"]``: the episode goes on, the policy that follows
    the expert ends it."""

    def __init__(self, env: gym.Env, expert_cls: type) -> None:
        super().__init__(env)
        self.expert_cls, self.expert = expert_cls, None

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        opts = {**getattr(self.expert_cls, "reset_options", {}), **(options or {})}
        obs, info = self.env.reset(seed=seed, options=opts)
        self.expert = None
        try:
            self.expert = self.expert_cls(self.env.unwrapped, info)
        except Exception as e:  # an expert that cannot start: no labels this episode
            return obs, {**info, "expert_action": None, "expert_error": _why(e)}
        return obs, self._label(info)

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        if terminated or truncated:
            return obs, reward, terminated, truncated, info
        return obs, reward, terminated, truncated, self._label(info)

    def _label(self, info: dict[str, Any]) -> dict[str, Any]:
        if self.expert is None:
            return {**info, "expert_action": None}
        try:
            action = self.expert.act(info)
        except Exception as e:
            return {**info, "expert_action": None, "expert_error": _why(e)}
        return {**info, "expert_action": None if action is None else
                _as_listed(str(action), info.get("admissible_actions"))}


def _as_listed(action: str, admissible: Any) -> str:
    """``action`` spelled as the env lists it when it differs only in case or surrounding
    space (WebShop lists ``click[buy now]``, its oracle says ``click[Buy Now]``)."""
    if not admissible or action in admissible:
        return action
    key = action.strip().lower()
    return next((a for a in admissible if a.strip().lower() == key), action)


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:300]


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
    """Look up an algorithm by registered name, or load ``"pkg.module:Class"`` from anywhere.

    Raises:
        KeyError: an unknown name (with the closest registered one), or a ``pkg.module:Class``
            that cannot be imported or is not an algorithm class.
    """
    importlib.import_module("agentrl.algorithms")
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError, ValueError) as e:  # ValueError: an empty name
            raise KeyError(f"algorithm {name!r} cannot be loaded ({type(e).__name__}: {e}); it "
                           "must be 'pkg.module:Class' importable from here") from None
        if not isinstance(cls, type) or not isinstance(getattr(cls, "Config", None), type):
            raise KeyError(f"algorithm {name!r} is not an Algorithm class (one with a Config "
                           "dataclass of its hyperparameters)")
        return cls
    if name not in ALGORITHMS:
        hint = difflib.get_close_matches(name, list(ALGORITHMS), n=1)
        raise KeyError(
            f"unknown algorithm {name!r}" + (f"; did you mean {hint[0]!r}?" if hint else ".")
            + f" Registered: {', '.join(sorted(ALGORITHMS))}"
        )
    return ALGORITHMS[name]


# ----------------------------------------------------------------------------- tool parsers

#: ``rollout.tool_parser`` name -> ``"pkg.module:Class"`` or a factory (a class with ``parse``
#: and ``example``). Names live here, light, so the config checks them without importing the
#: parsers; `agentrl.rollout.toolcalls.get_tool_parser` builds one.
TOOL_PARSERS: dict[str, str | Callable[[], Any]] = {
    "hermes": "agentrl.rollout.toolcalls:HermesParser",
    "json": "agentrl.rollout.toolcalls:JSONParser",
}


def register_tool_parser(name: str, factory: Callable[[], Any]) -> None:
    """Make ``rollout.tool_parser=<name>`` use ``factory()`` (a class with ``parse``/``example``)."""
    TOOL_PARSERS[name] = factory


def tool_parser_factory(name: str) -> Callable[[], Any]:
    """The factory registered as ``name`` (imported when it is a ``"pkg.module:Class"`` string)."""
    if name not in TOOL_PARSERS:
        raise ValueError(f"unknown rollout.tool_parser {name!r}; choose one of "
                         f"{sorted(TOOL_PARSERS)} or register one with "
                         "agentrl.register_tool_parser")
    entry = TOOL_PARSERS[name]
    if isinstance(entry, str):
        mod, _, attr = entry.partition(":")
        return getattr(importlib.import_module(mod), attr)
    return entry
