"""The composition root: a run's parts built from its config, in one place.

    parts = assemble(cfg, run_dir, resume_from)      # what `agentrl.trainer.Trainer` trains
    player = load_player("runs/x", cfg)              # a frozen opponent (lineups, agentrl eval)
    model, tok = policy_model(cfg, "runs/x/checkpoints/step_8/model")   # agentrl eval

Every other module receives what it needs; only this one (and the trainer, which calls it)
knows how a config turns into a model, a learner, a policy backend, env pools, rollout engines,
a lineup of opponents and a metrics logger. Model loading happens here alone: `train_model`
for training (fresh, resumed, LoRA, per-role adapters), `policy_model` for evaluation and
frozen players.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from agentrl import collectives as C
from agentrl.config import Config, config_to_dict, eval_rollout_config
from agentrl.envpool import EnvPool, make_pool
from agentrl.learn.distributed import generation_model, make_learner
from agentrl.learn.roles import RoleAdapters, RoleLearner
from agentrl.models import build_policy_model, load_pretrained, resolve_device
from agentrl.models.lora import build_lora_model
from agentrl.policies import make_policy
from agentrl.policies.base import Policy
from agentrl.policies.hf import HFPolicy
from agentrl.registry import get_algorithm
from agentrl.rollout.ahead import AsyncRollouts
from agentrl.rollout.curriculum import TaskSampler
from agentrl.rollout.engine import RolloutEngine
from agentrl.rollout.lineup import Lineup, Player, adapter_name, env_roles, make_lineup, role_models
from agentrl.rollout.multiagent import make_engine
from agentrl.rollout.prompts import PromptBuilder
from agentrl.run.checkpoint import player_path, seed_everything
from agentrl.run.metrics import MetricsLogger, NullLogger

#: Seeds of rank r are offset by this prime times r (same initial weights, rank-specific
#: rollouts and minibatch orders).
RANK_SEED_STRIDE = 7919


def rank_seed(base: int, rank: int | None = None) -> int:
    """``base`` for this rank (``rank`` defaults to the process's own under torchrun)."""
    return base + RANK_SEED_STRIDE * (C.rank() if rank is None else rank)


# --------------------------------------------------------------------------------- models

def call_writer(cfg: Config) -> Any:
    """How a tiny model's tokenizer corpus writes tool calls: ``rollout.tool_parser``'s
    `agentrl.rollout.toolcalls.corpus_writer` for ``action_format=tool_call``, else None."""
    if cfg.rollout.action_format != "tool_call":
        return None
    from agentrl.rollout.toolcalls import corpus_writer

    return corpus_writer(cfg.rollout.tool_parser)


def train_model(cfg: Config, run_dir: str, resume_from: str | None,
                roles: list[str] | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) to train: LoRA adapters on a frozen base (one per role with
    ``roles``), the checkpoint's model on resume, else a new one per ``cfg.policy``."""
    if cfg.policy.lora is not None:  # frozen base + adapters (new, or the checkpoint's)
        return build_lora_model(cfg, run_dir, resume_from,
                                [adapter_name(r) for r in roles] if roles else None,
                                call_writer(cfg))
    if resume_from:  # the tokenizer (and tiny model) must be the checkpoint's, not rebuilt
        model, tok = load_pretrained(os.path.join(resume_from, "model"), cfg.policy.dtype)
        model.to(resolve_device(cfg.policy.device))
        return model, tok
    return build_policy_model(cfg, call_writer(cfg))


def policy_model(cfg: Config, model_path: str | None, device: str | None = None,
                 frozen: bool = False) -> tuple[Any, Any]:
    """(model, tokenizer) of a saved model directory, or (``model_path=None``) the initial
    model of ``cfg`` exactly as training starts from it; on ``device`` (default
    ``cfg.policy.device``) in ``cfg.policy.dtype``. ``frozen``: eval mode, no gradients."""
    if model_path is None:
        seed_everything(cfg.seed)  # the trainer seeds before building, so "untrained" matches
        model, tok = build_policy_model(cfg, call_writer(cfg))
    else:
        model, tok = load_pretrained(model_path, cfg.policy.dtype)
    model.to(device=resolve_device(device or cfg.policy.device),
             dtype=getattr(torch, cfg.policy.dtype))
    if frozen:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return model, tok


def run_tokenizer(cfg: Config) -> Any:
    """The tokenizer a run of ``cfg`` trains with (the tiny model's is trained on the env's
    text exactly as `agentrl train` trains it), for data that must share its token ids."""
    if cfg.policy.model == "tiny":
        return build_policy_model(cfg, call_writer(cfg))[1]
    return load_pretrained(cfg.policy.model, cfg.policy.dtype)[1]


# -------------------------------------------------------------------------- frozen players

def _frozen_policy(path: str, cfg: Config, name: str) -> tuple[Policy, Any]:
    """(an HF backend on the frozen model at ``path`` seeded from ``cfg.seed`` and ``name``,
    its tokenizer). Frozen players sample in this process, next to the trained policy."""
    model, tok = policy_model(cfg, path, frozen=True)
    policy = HFPolicy(model, tok, batch_size=cfg.rollout.batch_size)
    policy.seed(cfg.seed + sum(name.encode()))
    return policy, tok


def load_player(spec: str, cfg: Config, name: str | None = None) -> Player:
    """A frozen player from a checkpoint, a run (its latest checkpoint), a model directory (a
    league snapshot) or a hub name, seeded from ``cfg.seed`` and its name (default: the model
    directory's). The checkpoint of a ``multiagent.policies=per_role`` run (``roles/<role>/
    model`` beside ``model/``) plays each role's seats with that role's model."""
    path = player_path(spec)
    try:
        dirs = role_models(path, cfg.env.id, cfg.env.kwargs)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    name = name or os.path.basename(os.path.normpath(path))
    policy, tok = _frozen_policy(path, cfg, name)
    roles = {role: _frozen_policy(d, cfg, f"{name}:{role}")[0] for role, d in dirs.items()}
    return Player(name, policy, PromptBuilder(tok, cfg.rollout), roles)


def player_loader(cfg: Config) -> Callable[[str, str | None], Player]:
    """`load_player` bound to ``cfg``, as lineups take it."""
    return lambda spec, name: load_player(spec, cfg, name)


# ------------------------------------------------------------------------------ the run

@dataclass
class Components:
    """Everything one training run is made of (`assemble`)."""

    model: Any  # what the learner trains (DDP/FSDP wrap it under torchrun)
    tokenizer: Any
    full_model: Any  # what the engine samples with and checkpoints save (FSDP: a full copy)
    algorithm: Any
    learner: Any
    policy: Policy
    roles: RoleAdapters | None  # multiagent.policies=per_role: one adapter per role
    pool: EnvPool
    engine: RolloutEngine
    eval_pool: EnvPool
    eval_engine: RolloutEngine
    lineup: Lineup | None  # multi-agent: who holds the other seats
    logger: Any  # MetricsLogger on rank 0, NullLogger elsewhere
    tasks: TaskSampler  # which training tasks each iteration draws (env.curriculum)


def assemble(cfg: Config, run_dir: str, resume_from: str | None, groups: int,
             purge_step: int | None = None) -> Components:
    """Build a run's parts from ``cfg``: the model (and, per role, its adapters), algorithm,
    learner, policy backend, training and eval pools and engines, lineup and logger.
    ``groups``: this rank's task groups per iteration; ``purge_step``: on resume, the first
    TensorBoard step to redo."""
    roles = env_roles(cfg.env.id, cfg.env.kwargs) \
        if cfg.multiagent.policies == "per_role" else None
    model, tok = train_model(cfg, run_dir, resume_from, roles)
    if C.rank():  # same initial weights, rank-specific rollouts
        seed_everything(rank_seed(cfg.seed))
    algorithm = get_algorithm(cfg.algorithm.name)(cfg.algorithm)
    algorithm.setup(model)
    r = cfg.rollout
    full_model = generation_model(model, cfg.train.strategy)
    learner = make_learner(
        model, cfg.train, r.temperature, algorithm, r.top_k, r.top_p,
        response_budget=r.max_new_tokens * (1 if r.context == "window" else r.max_turns))
    policy = make_policy(cfg, full_model, tok)
    policy.seed(rank_seed(cfg.seed))  # the training sampler's stream: each rank its own
    role_adapters = RoleAdapters(model, roles) if roles else None
    if role_adapters is not None:  # rows go to their role's adapter, behind one learner
        learner = RoleLearner(learner, role_adapters)
    role_policies = role_adapters.policies(policy) if role_adapters else None
    builder = PromptBuilder(tok, r)
    pool = make_pool(cfg.env, groups * r.group_size, ray_cfg=cfg.ray)
    eval_pool: EnvPool | None = None
    try:  # a failure past here (e.g. the eval pool's actors do not fit) closes the pools built
        lineup = make_lineup(cfg, run_dir, player_loader(cfg))
        eval_pool = make_pool(cfg.env, min(cfg.eval.episodes, 64),
                              {**cfg.env.kwargs, **cfg.env.eval_kwargs}, cfg.ray)
        logger = MetricsLogger(run_dir, cfg.log.tensorboard,
                               config_to_dict(cfg) if cfg.log.wandb else None,
                               purge_step=purge_step) if C.rank() == 0 else NullLogger()
    except BaseException:
        for built in (eval_pool, pool):
            if built is not None:
                built.close()
        raise
    return Components(
        model, tok, full_model, algorithm, learner, policy, role_adapters, pool,
        make_engine(policy, pool, builder, r, cfg.env.id, lineup, role_policies),
        eval_pool, make_engine(policy, eval_pool, builder, eval_rollout_config(cfg), cfg.env.id,
                               role_policies=role_policies),
        lineup, logger, TaskSampler(cfg.env.curriculum, cfg.env.train_seeds))


def async_rollouts(cfg: Config, parts: Components,
                   tasks: Callable[[int, Any], tuple[list[int], list[str]]],
                   version: int) -> AsyncRollouts | None:
    """``train.max_staleness >= 1``: rollouts that run ahead of the learner in a thread, with
    their own backend on a copy of the weights (None for the synchronous loop)."""
    if not cfg.train.max_staleness:
        return None
    inner = make_policy(cfg, copy.deepcopy(parts.full_model), parts.tokenizer)
    builder = PromptBuilder(parts.tokenizer, cfg.rollout)
    return AsyncRollouts(
        cfg, inner, lambda policy: make_engine(policy, parts.pool, builder, cfg.rollout,
                                               cfg.env.id),
        parts.algorithm, tasks, version)
