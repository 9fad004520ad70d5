"""RolloutEngine: many episodes at once, one batched generate call per turn.

Per turn: build the prompt of every live episode (`RolloutEngine._prompt`), generate for all
of them together (`_generate`), parse actions and step the envs as a batch (`_step`), and
append each outcome to its trajectory (`_record`). Finished episodes stop consuming
generation. An env failure (exception, dead worker, timeout) ends only that episode with
reason ``env_error`` / ``env_timeout``. Prompts come from the context mode's object
(`agentrl.rollout.context`), the same one that later cuts the trajectory into training samples.

Live episodes are keyed by ``(slot, agent)``: one env slot of the pool runs one episode, and
each agent of that episode has its own `LiveEpisode` and its own `Trajectory`; the
trajectories of one episode share ``episode_id``. Today every env has one agent
(`SINGLE_AGENT`): `_start` opens one live episode per slot and every live episode acts each
turn. A multi-agent (turn-based) env plugs in at three methods without touching the loop:
`_start` opens one live episode per agent of the slot (same ``episode_id``, group id per
(seed, role)); `_acting` picks, per slot, the live episode of the agent the env says acts next
(e.g. ``info["agent"]``); `_record` appends the step to the acting agent's trajectory and
hands the new observation / per-agent rewards (``info["rewards"]``) to the others.

Which info keys are stored per turn: JSON-safe values, minus the keys the env registered as
unrecorded (``register_env(..., unrecorded_info=...)``, e.g. a large expert walkthrough).

Real-model settings (`agentrl.config.RolloutConfig`): ``action_format=tool_call`` parses the
reply's native tool call (the env's ``info["tools"]``, kept in ``extra["tools"]``); a reply that
is not exactly one valid call is an invalid step (the env gets ``""``) whose next observation
says what was wrong. Budgets: observations cut to ``max_observation_tokens``, episodes ended
after ``max_episode_tokens`` reply tokens, and in full mode ``history_policy`` restarts a
context that would outgrow ``max_context_tokens`` (`_fit`), recording what it dropped.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

from agentrl.config import RolloutConfig
from agentrl.envpool import EnvPool, EnvResult
from agentrl.policies.base import Generation, Policy, SamplingParams
from agentrl.registry import unrecorded_info
from agentrl.rollout.chat import truncate_to_tokens
from agentrl.rollout.context import ContextMode, context_mode
from agentrl.rollout.prompts import PromptBuilder, parse_action
from agentrl.rollout.toolcalls import call_to_action, check_tools, invalid_call_text
from agentrl.types import Trajectory, Turn

#: The agent name of single-agent envs.
SINGLE_AGENT = ""


def json_info(info: dict[str, Any], skip: Collection[str] = ()) -> dict[str, Any]:
    """The JSON-safe part of an env's ``info`` (scalars and flat lists of scalars), minus
    ``skip``."""
    out = {}
    for k, v in info.items():
        if k in skip:
            continue
        if isinstance(v, (str, int, float, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and all(isinstance(x, (str, int, float, bool)) for x in v):
            out[k] = list(v)
    return out


@dataclass
class LiveEpisode:
    """One agent's view of one running episode: its trajectory so far and what it sees now."""

    slot: int  # env slot of the pool
    agent: str  # SINGLE_AGENT for single-agent envs
    traj: Trajectory
    observation: str
    info: dict[str, Any]

    @property
    def key(self) -> tuple[int, str]:
        return self.slot, self.agent


@dataclass
class _Ready:
    """A live episode with its prompt for this turn."""

    ep: LiveEpisode
    prompt: list[int]
    context_ids: list[int]  # what the prompt adds to the context (Turn.context_ids)
    candidates: list[list[int]] | None
    context_reset: bool = False  # context_ids replaced the context (history policy)
    call_error: str | None = None  # tool_call: why the reply was not one valid call


def _longest(candidates: list[list[int]] | None) -> int:
    """Tokens of the longest admissible reply (EOS included); 0 without candidates."""
    return max((len(x) for x in candidates or ()), default=0)


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
        self.mode: ContextMode = context_mode(cfg.context)
        self.skip_info = unrecorded_info(env_id)
        # Room a prompt needs after it: the reply; with history_policy=summary also what the
        # summary request adds after that reply, and the summary (32 tokens allowed for the
        # chat wrapping), so that the request always fits when the next turn overflows.
        self._reserve = cfg.max_new_tokens
        if cfg.history_policy == "summary":
            self._reserve += 32 + cfg.max_summary_tokens + len(
                policy.tokenizer.encode(cfg.summary_prompt, add_special_tokens=False))
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
        trajs, live = self._start(seeds, group_ids or [str(s) for s in seeds])
        try:
            if prefixes and any(prefixes):
                self._replay(live, prefixes)
            sampling = self.sampling(greedy)
            while live:
                ready = self._prompt(self._acting(live))  # ends the episodes that cannot act
                if ready:
                    gens, seconds = self._generate(ready, sampling)
                    replies = [self._parse(r, g) for r, g in zip(ready, gens)]
                    t0 = time.perf_counter()
                    results = self._step(ready, [action for action, _, _ in replies])
                    # each turn's share of the batched step's wall time, as for generation
                    # (the envs' own times overlap when they run in workers)
                    env_s = (time.perf_counter() - t0) / len(results)
                    for r, g, reply, res in zip(ready, gens, replies, results):
                        self._record(r, g, reply, res, (seconds, env_s))
                    if progress is not None:
                        progress.update(len(ready))
                live = {k: ep for k, ep in live.items() if not ep.traj.termination}
        finally:
            self.builder.release(trajs)
        return trajs

    # -- the stages of one turn ------------------------------------------------------------
    def _start(self, seeds: list[int], group_ids: list[str]
               ) -> tuple[list[Trajectory], dict[tuple[int, str], LiveEpisode]]:
        """Reset one slot per seed; one trajectory per (slot, agent), in seed order."""
        results = self.pool.reset(list(range(len(seeds))), list(seeds))
        trajs: list[Trajectory] = []
        live: dict[tuple[int, str], LiveEpisode] = {}
        for slot, (seed, gid, res) in enumerate(zip(seeds, group_ids, results)):
            traj = Trajectory(trajectory_id=uuid.uuid4().hex[:12], group_id=gid,
                              env_id=self.env_id, seed=int(seed), context_mode=self.mode.name)
            trajs.append(traj)
            if res.error:
                traj.termination = res.error
                traj.extra["error"] = res.message
                continue
            traj.task = str(res.info.get("task", ""))
            traj.task_type = str(res.info.get("task_type", ""))
            if self.cfg.action_format == "tool_call":
                try:
                    check_tools(res.info.get("tools"))
                except (ValueError, TypeError, AttributeError) as e:
                    traj.termination = "env_error"
                    traj.extra["error"] = (f"rollout.action_format=tool_call needs an env that "
                                           f"lists its actions in info['tools'] (ToolUse, "
                                           f"WebShop): {e}")
                    continue
                traj.extra["tools"] = res.info["tools"]
            ep = LiveEpisode(slot, SINGLE_AGENT, traj, self._observe(traj, res.observation),
                             res.info)
            live[ep.key] = ep
        return trajs, live

    def _observe(self, traj: Trajectory, text: str, record: bool = True) -> str:
        """The observation as the agent sees it: cut to ``max_observation_tokens`` (recorded)."""
        cut, dropped = truncate_to_tokens(self.policy.tokenizer, text,
                                          self.cfg.max_observation_tokens)
        if dropped and record:
            traj.extra.setdefault("observation_tokens_dropped", []).append(
                [len(traj.turns), dropped])
        return cut

    def _acting(self, live: dict[tuple[int, str], LiveEpisode]) -> list[LiveEpisode]:
        """The live episodes that act this turn (at least one while any is live): with one
        agent per slot, all of them."""
        return list(live.values())

    def _prompt(self, acting: list[LiveEpisode]) -> list[_Ready]:
        """Each acting episode's prompt; ends the episodes that cannot act (turn limit, context
        budget, constrained decoding without admissible actions)."""
        c = self.cfg
        ready: list[_Ready] = []
        overflow: list[_Ready] = []
        for ep in acting:
            if len(ep.traj.turns) >= c.max_turns:  # replayed prefixes start later
                ep.traj.termination = "max_turns"
                _finish(ep.traj, ep.info)
                continue
            if c.max_episode_tokens and ep.traj.num_action_tokens >= c.max_episode_tokens:
                ep.traj.termination = "token_budget"
                continue
            actions = ep.info.get("admissible_actions")
            if c.constrained and not actions:
                ep.traj.termination = "env_error"
                ep.traj.extra["error"] = "constrained decoding needs info['admissible_actions']"
                continue
            policy, builder = self._player(ep)
            prompt, new_ctx = self.mode.prompt(builder, ep.traj, ep.observation, actions,
                                               policy.eos_token_id)
            cands = builder.candidates(actions) if c.constrained else None
            if policy.plays_expert:
                cands = _expert_first(ep, builder, cands)
                if cands is None:
                    continue
            r = _Ready(ep, prompt, new_ctx, cands)
            overrun = max(0, _longest(cands) - c.max_new_tokens)  # see _generate
            if len(prompt) + self._reserve + overrun <= c.max_context_tokens:
                ready.append(r)
            elif c.history_policy == "all" or not ep.traj.turns:
                ep.traj.termination = "context_limit"
            else:
                overflow.append(r)
        return ready + self._fit(overflow)

    def _fit(self, overflow: list[_Ready]) -> list[_Ready]:
        """Full mode, ``history_policy`` last_k / summary: restart each overflowing context
        from the task, [a summary the policy writes of the turns so far] and the last
        ``keep_turns`` turns (fewer until it fits). Episodes that still do not fit end with
        ``context_limit``."""
        c = self.cfg
        if not overflow:
            return []
        summaries: list[str | None] = [None] * len(overflow)
        if c.history_policy == "summary":
            asks = [(i, self.builder.summary_request(r.ep.traj)) for i, r in enumerate(overflow)]
            asks = [(i, ids) for i, ids in asks
                    if len(ids) + c.max_summary_tokens <= c.max_context_tokens]
            if asks:  # one batched call; the summary tokens are context later, not trained
                sp = SamplingParams(max_new_tokens=c.max_summary_tokens,
                                    temperature=c.temperature, top_p=c.top_p, top_k=c.top_k)
                gens = self.policy.generate([ids for _, ids in asks], sp, None)
                for (i, _), g in zip(asks, gens):
                    summaries[i] = self.policy.tokenizer.decode(
                        g.token_ids, skip_special_tokens=True).strip()
        fitted: list[_Ready] = []
        for r, summary in zip(overflow, summaries):
            for keep in range(min(c.keep_turns, len(r.ep.traj.turns)), -1, -1):
                prompt = self.builder.compact(r.ep.traj, keep, summary)
                if len(prompt) + self._reserve <= c.max_context_tokens:
                    fitted.append(_Ready(r.ep, prompt, prompt, r.candidates, True))
                    break
            else:
                r.ep.traj.termination = "context_limit"
        return fitted

    def _player(self, ep: LiveEpisode) -> tuple[Policy, PromptBuilder]:
        """The backend and prompt builder that act for ``ep``: the engine's own. (A multi-agent
        engine seats fixed players, e.g. frozen checkpoints, on some agents here.)"""
        return self.policy, self.builder

    def _generate(self, ready: list[_Ready], sampling: SamplingParams
                  ) -> tuple[list[Generation], float]:
        """One batched generate call per backend acting this turn (one, unless fixed players
        sit in); returns the generations in ``ready`` order and seconds per episode."""
        t0 = time.perf_counter()
        by_policy: dict[int, list[int]] = {}
        for i, r in enumerate(ready):
            by_policy.setdefault(id(self._player(r.ep)[0]), []).append(i)
        gens: list[Generation] = [None] * len(ready)  # type: ignore[list-item]
        for idx in by_policy.values():
            policy = self._player(ready[idx[0]].ep)[0]
            cands = [ready[i].candidates for i in idx] \
                if self.cfg.constrained or policy.plays_expert else None
            # A constrained reply is never cut: the budget stretches to the longest action.
            longest = max((_longest(c) for c in cands or ()), default=0)
            sp = replace(sampling, max_new_tokens=longest) \
                if longest > sampling.max_new_tokens else sampling
            for i, g in zip(idx, policy.generate([ready[i].prompt for i in idx], sp, cands)):
                gens[i] = g
        return gens, (time.perf_counter() - t0) / len(gens)

    def _parse(self, r: _Ready, gen: Generation) -> tuple[str, str, bool]:
        """(action, decoded reply, parsed ok). A ``tool_call`` reply that is not one valid call
        gives the action ``""`` (an invalid step for every env) and sets ``r.call_error``."""
        policy, builder = self._player(r.ep)
        reply = policy.tokenizer.decode(gen.token_ids, skip_special_tokens=True)
        parser = builder.parser
        if parser is None:
            action, ok = parse_action(reply, self.cfg.action_format)
            return action, reply, ok
        action, r.call_error = call_to_action(parser.parse(reply), r.ep.traj.extra["tools"])
        return action, reply, r.call_error is None

    def _step(self, ready: list[_Ready], actions: list[str]) -> list[EnvResult]:
        """Step the acting episodes' env slots as one batch."""
        return self.pool.step([r.ep.slot for r in ready], actions)

    def _record(self, r: _Ready, gen: Generation, parsed: tuple[str, str, bool],
                res: EnvResult, seconds: tuple[float, float]) -> None:
        """Append the turn to the acting episode's trajectory; end it or move it on.
        ``seconds``: the turn's shares of the wall time of generation and of the env step."""
        c, ep = self.cfg, r.ep
        action, reply, ok = parsed
        valid = ok and bool(res.info.get("action_valid", True)) and res.error is None
        ep.traj.turns.append(Turn(
            observation=ep.observation, context_ids=list(r.context_ids),
            action_ids=list(gen.token_ids), logprobs=list(gen.logprobs), response=reply,
            action=action, action_valid=valid, reward=float(res.reward),
            shaping=-(0.0 if valid else c.invalid_penalty) - c.step_penalty,
            finish_reason=gen.finish_reason, allowed_ids=gen.allowed_ids,
            state_key=_state_key(ep.info), context_reset=r.context_reset,
            info=json_info(res.info, self.skip_info),
            seconds_generate=seconds[0], seconds_env=seconds[1],
            policy_version=self._player(ep)[0].version))
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
            obs = res.observation
            if r.call_error is not None:  # the env saw no action: say what was wrong instead
                assert self.builder.parser is not None
                obs = invalid_call_text(r.call_error, self.builder.parser.example)
            ep.observation, ep.info = self._observe(ep.traj, obs), res.info

    def _replay(self, live: dict[tuple[int, str], LiveEpisode],
                prefixes: list[list[Turn] | None]) -> None:
        """Step each episode through its prefix's actions (batched by depth) and copy the
        prefix turns in; an episode whose replay fails is ended and leaves ``live``."""
        todo = [(ep, list(prefixes[ep.slot] or [])) for ep in live.values()]
        for ep, p in todo:
            if p and self.mode.name == "full":  # the opening messages, before stepping on
                self.builder.head_messages(ep.traj, ep.observation,
                                           ep.info.get("admissible_actions"))
        depth = max((len(p) for _, p in todo), default=0)  # every reset may have failed
        for d in range(depth):
            act = [(ep, p) for ep, p in todo if len(p) > d and not ep.traj.termination]
            if not act:
                break
            results = self.pool.step([ep.slot for ep, _ in act], [p[d].action for _, p in act])
            for (ep, p), res in zip(act, results):
                ep.traj.turns.append(copy.deepcopy(p[d]))
                # compare what the agent saw (cut; replaced after a broken tool call)
                seen = None if self.builder.parser and not p[d].action else \
                    self._observe(ep.traj, res.observation, record=False)
                diverged = d + 1 < len(p) and seen is not None and seen != p[d + 1].observation
                if res.error or res.terminated or res.truncated or diverged:
                    ep.traj.termination = res.error or "env_error"
                    ep.traj.extra["error"] = res.message or (
                        f"prefix replay diverged at turn {d}: the env is not deterministic "
                        "under a same-seed reset" if diverged else
                        f"prefix replay ended the episode at turn {d}; branch earlier")
                else:
                    # the prefix's next turn holds what the agent saw there
                    ep.observation = p[d + 1].observation if d + 1 < len(p) else \
                        self._observe(ep.traj, res.observation)
                    ep.info = res.info
        for ep, p in todo:
            ep.traj.extra["prefix_turns"] = len(p)
        for k in [k for k, ep in live.items() if ep.traj.termination]:
            del live[k]


def _expert_first(ep: LiveEpisode, builder: PromptBuilder,
                  cands: list[list[int]] | None) -> list[list[int]] | None:
    """The turn's candidates with the expert's reply first (alone without constrained
    decoding), for a policy that plays the env's expert; None ends the episode (``env_error``)
    when the env gave no expert action."""
    action = ep.info.get("expert_action")
    if not action:
        ep.traj.termination = "env_error"
        ep.traj.extra["error"] = ("no expert action here: " + str(
            ep.info.get("expert_error") or "the env was not made with expert_actions=True, or "
            "its expert has no move in this state"))
        return None
    try:
        reply = builder.candidates([str(action)], ep.traj.extra.get("tools"))[0]
    except ValueError as e:  # tool_call: an action no tool call writes, a parser that cannot
        ep.traj.termination = "env_error"
        ep.traj.extra["error"] = f"cannot write the expert's action {action!r}: {e}"
        return None
    return [reply] + [x for x in cands or () if x != reply]


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
