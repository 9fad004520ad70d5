"""Start-up checks: refuse, before any slow work, a run that cannot work or cannot learn.

`preflight(cfg, run_dir)` is the first thing a `Trainer` does. It prints the run directory,
then checks, each failure being one `PreflightError` line that names the fix (the CLI exits
with status 2, as for any config error):

1. ``env.id`` is registered and its packages are installed (naming the pip extra);
2. ``env.kwargs`` / ``env.eval_kwargs`` fit the env's constructor signature (checked on the
   signature, before any env is built: a WebShop run with TextWorld's ``level=3`` stops here
   instead of in a traceback from a worker);

then creates the data the run's episodes need (generated games, a catalogue) through the env's
registered ``prepare`` hook, with progress, in this process; and, with
``rollout.constrained=true``, resets one env to check that

3. it lists ``info["admissible_actions"]`` (otherwise every episode would end ``env_error``);
4. no admissible action is a template such as ``search[<query>]`` (the policy could only ever
   type the literal placeholder: zero entropy, identical returns, no gradient).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from collections.abc import Callable
from typing import Any

from agentrl.config import Config, ConfigError
from agentrl.progress import phase, say

#: A placeholder inside an action, e.g. ``<query>`` in ``search[<query>]``.
TEMPLATE_SLOT = re.compile(r"<[A-Za-z_][^<>]*>")


class PreflightError(ConfigError):
    """A run that would fail or could not learn; the message says what to change."""


def preflight(cfg: Config, run_dir: str) -> None:
    """Print the run directory, check the env setup, prepare env data, probe the actions."""
    say(f"run directory: {os.path.abspath(run_dir)}")
    from agentrl.models import device_problem, hub_problem
    from agentrl.policies import backend_class

    missing = (backend_class(cfg.policy.backend).unavailable()
               or device_problem(cfg.policy.device) or hub_problem(cfg.policy.model))
    if missing:
        raise PreflightError(missing)
    check_env_setup(cfg)
    prepare_env_data(cfg)
    if cfg.rollout.constrained:
        check_admissible_actions(cfg)


# ------------------------------------------------------------------------------ env setup

def env_constructor(env_id: str) -> tuple[Callable[..., Any], dict[str, Any]]:
    """(the callable gymnasium calls to build ``env_id``, its registered default kwargs)."""
    import gymnasium as gym

    spec = gym.spec(env_id)
    ep = spec.entry_point
    if isinstance(ep, str):
        mod, _, attr = ep.partition(":")
        ep = getattr(importlib.import_module(mod), attr)
    return ep, dict(spec.kwargs or {})


def full_kwargs(env_id: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The constructor arguments `make_env(env_id, **kwargs)` passes: registered defaults
    updated with ``kwargs``."""
    _, defaults = env_constructor(env_id)
    return {**defaults, **kwargs}


def signature_problem(ctor: Callable[..., Any], kwargs: dict[str, Any]) -> str | None:
    """Why ``ctor(**kwargs)`` would fail on its signature alone, or None."""
    try:
        sig = inspect.signature(ctor)
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return None
    params = {n: p for n, p in sig.parameters.items()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    name = getattr(ctor, "__name__", str(ctor))
    from agentrl.registry import EXPERT_KWARG

    bad = [k for k in kwargs if k not in params and k != EXPERT_KWARG]
    if bad and not takes_any:
        takes = ", ".join(n for n in params if n != "render_mode") or "no arguments"
        return f"{name} does not take {', '.join(repr(k) for k in bad)} (it takes: {takes})"
    need = [n for n, p in params.items() if p.default is p.empty and n not in kwargs
            and p.kind is not p.POSITIONAL_ONLY]
    if need:
        return f"{name} needs {', '.join(repr(n) for n in need)}, which is not set"
    return None


def check_env_setup(cfg: Config) -> None:
    """Checks 1-2: the env id is known, its packages are installed, and both kwargs sets fit
    its constructor. Nothing is built."""
    from agentrl.registry import UnknownEnvError, check_env_id, missing_requirement

    env_id = cfg.env.id
    try:
        check_env_id(env_id)
    except UnknownEnvError as e:
        raise PreflightError(f"env.id: {e}") from None
    missing = missing_requirement(env_id)
    if missing:
        raise PreflightError(missing)
    ctor, defaults = env_constructor(env_id)
    for key, kwargs in (("env.kwargs", cfg.env.kwargs),
                        ("env.eval_kwargs", {**cfg.env.kwargs, **cfg.env.eval_kwargs})):
        problem = signature_problem(ctor, {**defaults, **kwargs})
        if problem:
            src = "env.eval_kwargs" if key == "env.eval_kwargs" and any(
                k not in cfg.env.kwargs for k in cfg.env.eval_kwargs) else "env.kwargs"
            raise PreflightError(
                f"{src}: {problem}; fix or drop it ({src}={{}} keeps the env's defaults)")


def prepare_env_data(cfg: Config) -> None:
    """Create the data the run's training and evaluation episodes need, with progress
    (the env's registered ``prepare`` hook; most envs have none)."""
    from agentrl.registry import ENVS

    entry = ENVS.get(cfg.env.id)
    if entry is None or entry.prepare is None:
        return
    mod, _, attr = entry.prepare.partition(":")
    hook = getattr(importlib.import_module(mod), attr)
    e = cfg.eval
    for key, kwargs, seeds in (
            ("env.kwargs", cfg.env.kwargs, None),
            ("env.eval_kwargs", {**cfg.env.kwargs, **cfg.env.eval_kwargs},
             list(range(e.seed_start, e.seed_start + e.episodes)))):
        try:
            hook(full_kwargs(cfg.env.id, kwargs), seeds)
        except FileNotFoundError as err:  # data the kwargs name is not there
            raise PreflightError(f"{key}: {err}") from None


# ------------------------------------------------------------------------------ the probe

def check_admissible_actions(cfg: Config, seed: int = 0) -> list[str]:
    """Checks 3-4: reset one training env and look at what constrained decoding would choose
    from. Returns the admissible actions of that first observation."""
    from agentrl.registry import make_env

    env_id = cfg.env.id
    with phase(f"checking the actions {env_id} offers (rollout.constrained=true)",
               announce=False):
        try:
            env = make_env(env_id, **cfg.env.kwargs)
            try:
                _, info = env.reset(seed=seed)
            finally:
                env.close()
        except Exception as e:  # an env that cannot even reset would lose every episode
            msg = f"{type(e).__name__}: {e}".splitlines()[0]
            raise PreflightError(f"{env_id} with env.kwargs={cfg.env.kwargs} failed on its "
                                 f"first reset ({msg}); `agentrl play {env_id}` reproduces "
                                 "it by hand") from e
    actions = info.get("admissible_actions")
    if not actions:
        raise PreflightError(
            f"rollout.constrained=true decodes only info['admissible_actions'], and {env_id} "
            "lists none, so every episode would end at once (env_error): set "
            "rollout.constrained=false (the model writes its actions)")
    templates = [a for a in actions if TEMPLATE_SLOT.search(str(a))]
    if templates:
        raise PreflightError(
            f"rollout.constrained=true would make the policy type {templates[0]!r} literally: "
            f"{env_id}'s admissible actions include templates with a placeholder to fill in; "
            "set rollout.constrained=false, or env kwargs that make it list concrete actions"
            + _template_hint(env_id))
    return list(actions)


def _template_hint(env_id: str) -> str:
    """Point at the env's recommended kwargs when those work with constrained decoding."""
    from agentrl.registry import recommended_settings

    rec = recommended_settings(env_id)
    kwargs = rec.get("env", {}).get("kwargs")
    if rec.get("rollout", {}).get("constrained") and kwargs:
        return f" (its recommended env.kwargs={kwargs} list concrete ones)"
    return ""
