"""Cross-section checks: the combinations a config may not ask for (the feature-interaction
matrix of async rollouts x policy backend x per-role adapters x league x strategy), each
refused with what to set instead. Backends are judged by their declared capabilities."""

from __future__ import annotations

import difflib
from typing import Any

from agentrl.config.sections import Config
from agentrl.fields import ConfigError

POOLS = ("auto", "inprocess", "thread", "process", "ray")


def cross_checks(cfg: Config) -> None:
    if cfg.multiagent.opponent in ("random", "heuristic"):
        opp = cfg.multiagent.opponent
        raise ConfigError(f"multiagent.opponent={opp}: the env plays random and scripted "
                          f"opponents itself: set env.kwargs={{opponent: {opp}}} and leave "
                          "multiagent.opponent=self")
    pool = cfg.env.pool
    if pool not in POOLS and ":" not in pool:
        hint = difflib.get_close_matches(pool, POOLS, n=1)
        raise ConfigError(f"env.pool: {pool!r} is not allowed; choose one of {list(POOLS)} or "
                          "'pkg.module:Class' (an EnvPool of your own)"
                          + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    from agentrl.registry import UnknownEnvError, check_env_id

    try:
        check_env_id(cfg.env.id)
    except UnknownEnvError as e:
        raise ConfigError(f"env.id: {e}") from None
    r = cfg.rollout
    if r.max_new_tokens >= r.max_context_tokens:
        raise ConfigError("rollout.max_new_tokens must be smaller than rollout.max_context_tokens")
    if r.action_format == "tool_call" and r.constrained:
        raise ConfigError("rollout.constrained=true needs admissible action strings; with "
                          "action_format=tool_call set rollout.constrained=false")
    if r.history_policy != "all" and r.context != "full":
        raise ConfigError(f"rollout.history_policy={r.history_policy} applies to "
                          "rollout.context=full (window mode keeps rollout.history turns)")
    if r.action_format == "tool_call":
        from agentrl.registry import TOOL_PARSERS

        if r.tool_parser not in TOOL_PARSERS:
            raise ConfigError(f"rollout.tool_parser: {r.tool_parser!r} is not a parser; choose "
                              f"one of {sorted(TOOL_PARSERS)}")
    _async_checks(cfg)
    _per_role_checks(cfg)
    _multiagent_checks(cfg)
    n = cfg.rollout.groups * cfg.rollout.group_size
    if cfg.train.minibatches > n and cfg.rollout.context == "full":
        raise ConfigError(f"train.minibatches={cfg.train.minibatches} exceeds the {n} trajectories "
                          "of an iteration; lower it")


def _backend(cfg: Config) -> Any:
    """The policy backend's class, for its declared capabilities (``Policy.supports_async``,
    ``switches_adapters``, ``single_process``...): the checks never compare backend names."""
    from agentrl.policies import backend_class

    return backend_class(cfg.policy.backend)


def _async_checks(cfg: Config) -> None:
    """Asynchronous training only where it is sound: what the algorithm allows
    (``Algorithm.async_rollouts``), an in-process backend with a weight copy, one player, one
    process; remote servers with one process pushing weights."""
    t = cfg.train
    if t.strategy != "single" and _backend(cfg).single_process:
        raise ConfigError(f"policy.backend={cfg.policy.backend} runs with train.strategy=single "
                          "(every rank would push its weights to the servers): use a backend "
                          "without a server of its own (vllm, hf) under torchrun")
    if t.max_staleness == 0:
        if t.partial_rollouts:
            raise ConfigError("train.partial_rollouts needs train.max_staleness >= 1")
        return
    from agentrl.registry import get_algorithm

    name = cfg.algorithm.name
    allows = get_algorithm(name).async_rollouts
    if allows == "current":
        raise ConfigError(f"algorithm {name} needs on-policy groups (its rollouts depend on the "
                          "policy being trained): set train.max_staleness=0")
    if allows == "whole" and t.partial_rollouts:
        raise ConfigError(f"algorithm {name} needs every group sampled by one policy version: "
                          "set train.partial_rollouts=false")
    if not _backend(cfg).supports_async:
        raise ConfigError(f"train.max_staleness={t.max_staleness} needs a second copy of the "
                          f"weights to generate with; policy.backend={cfg.policy.backend} does "
                          "not have one here: use policy.backend=hf or train.max_staleness=0")
    if cfg.multiagent.opponent != "self":
        raise ConfigError("train.max_staleness >= 1 does not support fixed or league "
                          "opponents (multiagent.opponent): set train.max_staleness=0")
    if t.strategy != "single":
        raise ConfigError(f"train.max_staleness >= 1 runs with train.strategy=single; under "
                          f"torchrun ({t.strategy}) set train.max_staleness=0")


def _per_role_checks(cfg: Config) -> None:
    """``multiagent.policies=per_role``: adapters on one model in this process, and a game."""
    if cfg.multiagent.policies != "per_role":
        return
    pre = "multiagent.policies=per_role"
    if cfg.policy.lora is None:
        raise ConfigError(f"{pre} trains one LoRA adapter per role: set policy.lora (e.g. "
                          "policy.lora={r: 8, alpha: 16})")
    if not _backend(cfg).switches_adapters:
        raise ConfigError(f"{pre} switches adapters between generate calls on the learner's "
                          f"own model: set policy.backend=hf (not {cfg.policy.backend})")
    if cfg.train.strategy != "single":
        raise ConfigError(f"{pre} runs in one process: set train.strategy=single (not "
                          f"{cfg.train.strategy})")
    if cfg.train.max_staleness:
        raise ConfigError(f"{pre} generates with the learner's own adapters: set "
                          "train.max_staleness=0")
    if cfg.multiagent.opponent == "league":
        raise ConfigError(f"{pre}: league snapshots hold one policy, not one per role: use "
                          "multiagent.opponent=self or a checkpoint")
    from agentrl.registry import is_multiagent

    if not is_multiagent(cfg.env.id):
        raise ConfigError(f"{pre} needs a multi-agent env (registered with multiagent=True); "
                          f"{cfg.env.id} is single-agent: use multiagent.policies=shared")


def _multiagent_checks(cfg: Config) -> None:
    """Opponents only for games; algorithms only where they can train on games."""
    from agentrl.registry import get_algorithm, is_multiagent

    opp = cfg.multiagent.opponent
    if not is_multiagent(cfg.env.id):
        if opp != "self":
            raise ConfigError(f"multiagent.opponent={opp} needs a multi-agent env (registered "
                              f"with multiagent=True); {cfg.env.id} is single-agent: leave "
                              "multiagent.opponent=self")
        return
    name = cfg.algorithm.name
    if ":" in name:  # a user's class: imported when the run starts, not by the config check
        return
    try:
        why = getattr(get_algorithm(name), "refuses_multiagent", "")
    except KeyError:
        return  # an unknown name is reported where the algorithm is built
    if why:
        raise ConfigError(f"algorithm {cfg.algorithm.name} cannot train on the multi-agent game "
                          f"{cfg.env.id}: {why}. Use another algorithm (e.g. "
                          "algorithm.name=grpo or gigpo)")
