"""RolloutEngine: many episodes at once, one batched generate call per turn.

Per turn: build the prompt of every live episode, generate for all of them together, parse
actions, step the envs as a batch. Finished episodes stop consuming generation. An env failure
(exception, dead worker, timeout) ends only that episode with reason ``env_error`` /
``env_timeout``.
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from agentrl.config import RolloutConfig
from agentrl.envpool import EnvPool
from agentrl.policies.base import Policy, SamplingParams
from agentrl.prompts import PromptBuilder, Step, parse_action
from agentrl.types import Trajectory, Turn

_INFO_SKIP = {"walkthrough"}  # large or test-only info keys not stored per turn


def _json_info(info: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in info.items():
        if k in _INFO_SKIP:
            continue
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v):
            out[k] = list(v)
    return out


@dataclass
class _Live:
    traj: Trajectory
    slot: int
    observation: str
    info: dict[str, Any]
    history: list[Step] = field(default_factory=list)
    context: list[int] = field(default_factory=list)  # full mode: tokens so far
    last_ended: bool = True


class RolloutEngine:
    """Runs episodes of ``pool``'s env with ``policy``.

    Args:
        policy: generation backend.
        pool: env slots (at least as many as episodes per call).
        builder: prompt builder shared with training.
        cfg: rollout settings.
        env_id: recorded on trajectories.
    """

    def __init__(self, policy: Policy, pool: EnvPool, builder: PromptBuilder,
                 cfg: RolloutConfig, env_id: str) -> None:
        self.policy, self.pool, self.builder, self.cfg, self.env_id = policy, pool, builder, cfg, env_id
        self.progress: Any = None  # default progress bar for `run` (anything with .update(n))

    def sampling(self, greedy: bool = False) -> SamplingParams:
        c = self.cfg
        return SamplingParams(max_new_tokens=c.max_new_tokens, temperature=c.temperature,
                              top_p=c.top_p, top_k=c.top_k, greedy=greedy, stop=list(c.stop))

    def run(self, seeds: list[int], group_ids: list[str] | None = None, greedy: bool = False,
            progress: Any = None, prefixes: list[list[Turn] | None] | None = None,
            ) -> list[Trajectory]:
        """One episode per seed; returns trajectories in the same order.

        ``prefixes`` (optional, one entry per episode): turns of an earlier episode with the same
        seed to replay before sampling (branching). The env is reset with the seed and stepped
        with the prefix's actions; the prefix turns (token ids, logprobs, context ids) are
        copied into the new trajectory and sampling continues after them. Needs a deterministic
        env: a replay whose observations differ from the prefix's, or that ends the episode,
        ends that episode with ``env_error``. ``extra["prefix_turns"]`` records the length.
        """
        progress = progress if progress is not None else self.progress
        n = len(seeds)
        if n > self.pool.num_envs:
            out: list[Trajectory] = []
            for i in range(0, n, self.pool.num_envs):
                j = i + self.pool.num_envs
                out += self.run(seeds[i:j], group_ids[i:j] if group_ids else None, greedy,
                                progress, prefixes[i:j] if prefixes else None)
            return out
        group_ids = group_ids or [str(s) for s in seeds]
        c = self.cfg
        results = self.pool.reset(list(range(n)), list(seeds))
        live: list[_Live] = []
        trajs: list[Trajectory] = []
        for slot, (seed, gid, res) in enumerate(zip(seeds, group_ids, results)):
            traj = Trajectory(trajectory_id=uuid.uuid4().hex[:12], group_id=gid, env_id=self.env_id,
                              seed=int(seed), context_mode=c.context)
            trajs.append(traj)
            if res.error:
                traj.termination = res.error
                traj.extra["error"] = res.message
                continue
            traj.task = str(res.info.get("task", ""))
            traj.task_type = str(res.info.get("task_type", ""))
            live.append(_Live(traj=traj, slot=slot, observation=res.observation, info=res.info))
        if prefixes and any(prefixes):
            live = self._replay(live, prefixes)
        sampling = self.sampling(greedy)

        while live:
            prompts, cands, keep = [], [], []
            for ep in live:
                step = len(ep.traj.turns)  # per episode: replayed prefixes start later
                if step >= c.max_turns:
                    ep.traj.termination = "max_turns"
                    _finish(ep.traj, ep.info)
                    continue
                actions = ep.info.get("admissible_actions")
                if c.context == "window":
                    ctx = self.builder.window_prompt(ep.traj.task, ep.history, ep.observation,
                                                     actions, step)
                    new_ctx = ctx
                else:
                    if step == 0:
                        new_ctx = self.builder.window_prompt(ep.traj.task, [], ep.observation,
                                                             actions, 0)
                    else:
                        new_ctx = self.builder.continuation(ep.observation, actions, step,
                                                            ep.last_ended)
                    ctx = ep.context + new_ctx
                if len(ctx) + c.max_new_tokens > c.max_context_tokens:
                    ep.traj.termination = "context_limit"
                    continue
                if c.constrained and not actions:
                    ep.traj.termination = "env_error"
                    ep.traj.extra["error"] = "constrained decoding needs info['admissible_actions']"
                    continue
                prompts.append(ctx)
                cands.append(self.builder.candidates(actions) if c.constrained else None)
                keep.append((ep, new_ctx))
            if not keep:
                live = []
                break
            t0 = time.perf_counter()
            gens = self.policy.generate(prompts, sampling, cands if c.constrained else None)
            t_gen = (time.perf_counter() - t0) / len(gens)
            replies = [self.policy.tokenizer.decode(g.token_ids, skip_special_tokens=True)
                       for g in gens]
            parsed = [parse_action(r, c.action_format) for r in replies]
            results = self.pool.step([ep.slot for ep, _ in keep], [a for a, _ in parsed])
            still: list[_Live] = []
            for (ep, new_ctx), g, reply, (action, ok), res in zip(keep, gens, replies, parsed,
                                                                   results):
                valid = ok and bool(res.info.get("action_valid", True)) and res.error is None
                env_r = float(res.reward)
                turn = Turn(
                    observation=ep.observation, context_ids=list(new_ctx),
                    action_ids=list(g.token_ids), logprobs=list(g.logprobs), response=reply,
                    action=action, action_valid=valid,
                    reward=env_r, shaping=-(0.0 if valid else c.invalid_penalty) - c.step_penalty,
                    finish_reason=g.finish_reason, allowed_ids=g.allowed_ids,
                    state_key=_state_key(ep.info), info=_json_info(res.info),
                    seconds_generate=t_gen, seconds_env=res.seconds)
                ep.traj.turns.append(turn)
                ep.history.append(Step(ep.observation, action))
                if c.context == "full":
                    ep.context = ep.context + list(new_ctx) + list(g.token_ids)
                    ep.last_ended = bool(g.token_ids) and g.token_ids[-1] == self.policy.eos_token_id
                if res.error:
                    ep.traj.termination = res.error
                    ep.traj.extra["error"] = res.message
                elif res.terminated or res.truncated:
                    success = bool(res.info.get("success", False))
                    ep.traj.success = success
                    ep.traj.termination = ("success" if success else "failure") if res.terminated \
                        else "truncated"
                    _finish(ep.traj, res.info)
                else:
                    ep.observation, ep.info = res.observation, res.info
                    still.append(ep)
            live = still
            if progress is not None:
                progress.update(len(keep))
        return trajs

    def _replay(self, live: list[_Live], prefixes: list[list[Turn] | None]) -> list[_Live]:
        """Step each episode through its prefix's actions (batched by depth) and copy the
        prefix turns in. Returns the episodes that are still live afterwards."""
        todo = [(ep, list(prefixes[ep.slot] or [])) for ep in live]
        depth = max((len(p) for _, p in todo), default=0)  # every reset may have failed
        for d in range(depth):
            act = [(ep, p) for ep, p in todo if len(p) > d and not ep.traj.termination]
            if not act:
                break
            results = self.pool.step([ep.slot for ep, _ in act], [p[d].action for _, p in act])
            for (ep, p), res in zip(act, results):
                turn = copy.deepcopy(p[d])
                ep.traj.turns.append(turn)
                ep.history.append(Step(ep.observation, turn.action))
                if self.cfg.context == "full":
                    ep.context = ep.context + list(turn.context_ids) + list(turn.action_ids)
                    ep.last_ended = bool(turn.action_ids) and \
                        turn.action_ids[-1] == self.policy.eos_token_id
                diverged = d + 1 < len(p) and res.observation != p[d + 1].observation
                if res.error or res.terminated or res.truncated or diverged:
                    ep.traj.termination = res.error or "env_error"
                    ep.traj.extra["error"] = res.message or (
                        f"prefix replay diverged at turn {d}: the env is not deterministic "
                        "under a same-seed reset" if diverged else
                        f"prefix replay ended the episode at turn {d}; branch earlier")
                else:
                    ep.observation, ep.info = res.observation, res.info
        for ep, p in todo:
            ep.traj.extra["prefix_turns"] = len(p)
        return [ep for ep in live if not ep.traj.termination]


def _state_key(info: dict[str, Any]) -> str | None:
    k = info.get("state_key")
    return None if k is None else str(k)


def _finish(traj: Trajectory, info: dict[str, Any]) -> None:
    if "score" in info:
        try:
            traj.score = float(info["score"])
        except (TypeError, ValueError):
            pass
    traj.success = bool(info.get("success", traj.success))
