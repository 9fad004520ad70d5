"""Multi-agent episodes in the rollout engine: one trajectory per agent, fixed players, leagues.

A multi-agent env (`agentrl.envs.multiagent`, registered with ``multiagent=True``) is a turn-based
text env whose ``info["agent"]`` names who moves next (see `agentrl.envs.multiagent.base`).
`MultiAgentRolloutEngine` runs it through the same engine loop, overriding only its stages:

- ``_start``: one live episode per agent of each slot (``info["agents"]``). The agents'
  trajectories share an ``episode_id``, carry their ``role``, and get the group id
  ``<group>/<role>``, so group baselines are per (task seed, role).
- ``_acting``: per slot, the live episode of the agent the env says moves next.
- ``_player``: the agent's seat holder from the `Lineup`: the engine's own policy (with one
  policy per role, ``role_policies``, that role's), or a fixed `Player` (a frozen checkpoint),
  whose trajectories are recorded with ``player`` set.
- ``_prompt``: an agent that cannot act (turn or context limit) ends the whole game.
- ``_record``: the turn goes to the mover (with ``episode_turn``, its place in the game); the
  rewards the step gave the other agents (``info["rewards"]``, e.g. a loser's -1 on the
  winner's move) are added to their latest turn; the next observation goes to the next mover;
  at the end every agent's trajectory gets its ``outcome`` and ``success`` (= won).

Who holds each seat (`Lineup`): `SelfPlay` (the trained policy plays every seat, its role in
the prompt), `Versus` (the trained policy on one seat, alternating within a group, fixed players
on the others), `League` (`Versus` against a pool of past snapshots of the trained policy, plus
a share of self-play). Random and scripted opponents are env settings
(``env.kwargs={opponent: random}``): the env plays those seats itself.
"""

from __future__ import annotations

import os
import random
import re
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentrl.envpool import EnvResult
from agentrl.policies.base import Generation, Policy
from agentrl.rollout.engine import SINGLE_AGENT, LiveEpisode, RolloutEngine, _Ready
from agentrl.rollout.prompts import PromptBuilder
from agentrl.types import Trajectory

if TYPE_CHECKING:
    from agentrl.config import Config, RolloutConfig
    from agentrl.envpool import EnvPool


@dataclass
class Player:
    """A fixed (never trained) seat holder: a generation backend and its prompt builder, and
    for a checkpoint of a ``multiagent.policies=per_role`` run one backend per role (each
    seat played by its own role's model)."""

    name: str
    policy: Policy
    builder: PromptBuilder
    roles: dict[str, Policy] = field(default_factory=dict)

    def policy_for(self, role: str) -> Policy:
        """The backend that plays ``role``'s seat."""
        return self.roles.get(role, self.policy)

    def close(self) -> None:
        self.policy.close()
        for p in self.roles.values():
            p.close()


class Lineup:
    """Decides who holds each seat of each episode: ``None`` = the policy being trained or
    evaluated, else a fixed `Player`."""

    def seats(self, group_id: str, seed: int, agents: list[str]) -> dict[str, Player | None]:
        raise NotImplementedError

    def after_update(self, iteration: int, model: Any, tokenizer: Any) -> None:
        """Called by the trainer after each update (and with iteration 0 before training)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class SelfPlay(Lineup):
    """The trained policy holds every seat (one shared policy; its role is in the prompt)."""

    def seats(self, group_id: str, seed: int, agents: list[str]) -> dict[str, Player | None]:
        return dict.fromkeys(agents)


class Versus(Lineup):
    """The trained policy holds one seat, fixed players the others.

    Every episode of a group faces the same opponent (so a group baseline compares like with
    like), drawn from ``players`` (or, with probability ``self_play``, self-play). Within a
    group the trained policy's seat rotates (episode k of a group with seed s sits at seat
    (k + s) mod #seats), so every role is trained and each (seed, role) group has members.
    """

    def __init__(self, players: list[Player], seed: int = 0, self_play: float = 0.0) -> None:
        self.players, self.self_play = list(players), float(self_play)
        self.rng = random.Random(seed)
        self._opponent: OrderedDict[str, Player | None] = OrderedDict()
        self._count: dict[str, int] = {}

    def _draw(self) -> Player | None:
        if not self.players or self.rng.random() < self.self_play:
            return None
        return self.rng.choice(self.players)

    def seats(self, group_id: str, seed: int, agents: list[str]) -> dict[str, Player | None]:
        if group_id not in self._opponent:
            self._opponent[group_id] = self._draw()
            self._count[group_id] = 0
            while len(self._opponent) > 4096:  # a run's old groups are never seen again
                self._count.pop(self._opponent.popitem(last=False)[0], None)
        opp = self._opponent[group_id]
        k = self._count[group_id]
        self._count[group_id] = k + 1
        if opp is None:
            return dict.fromkeys(agents)
        mine = agents[(k + seed) % len(agents)]
        return {a: None if a == mine else opp for a in agents}

    def close(self) -> None:
        for p in self.players:
            p.close()


class League(Versus):
    """`Versus` against a pool of frozen snapshots of the trained policy.

    Every ``every`` iterations (and before training) the current weights are saved under
    ``<run>/league/iter_<N>`` and join the pool; the pool keeps the newest ``size``. The pool
    is restored from those directories on resume.
    """

    def __init__(self, load: PlayerLoader, run_dir: str, every: int, size: int,
                 self_play: float, seed: int = 0) -> None:
        super().__init__([], seed=seed, self_play=self_play)
        self.load, self.run_dir, self.every, self.size = load, run_dir, every, size
        self.paths: list[str] = []

    def after_update(self, iteration: int, model: Any, tokenizer: Any) -> None:
        if iteration % self.every:
            return
        path = os.path.join(self.run_dir, "league", f"iter_{iteration}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        self._add(path)

    def _add(self, path: str) -> None:
        self.paths.append(path)
        self.players.append(self.load(path, f"league:{os.path.basename(path)}"))
        while len(self.players) > self.size:
            self.players.pop(0).close()
            self.paths.pop(0)

    def state_dict(self) -> dict[str, Any]:
        return {"paths": list(self.paths), "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.close()
        self.players, self.paths = [], []
        for p in state.get("paths", []):
            if os.path.isdir(p):
                self._add(p)
        if "rng" in state:
            self.rng.setstate(_as_rng_state(state["rng"]))


def _as_rng_state(state: Any) -> tuple:
    """A `random.Random` state that went through a checkpoint (lists back to tuples)."""
    version, internal, gauss = state
    return version, tuple(internal), gauss


# ------------------------------------------------------------------------------ roles

ROLES_DIR = "roles"  # in a checkpoint: roles/<adapter>/model/, one merged model per role


def adapter_name(role: str) -> str:
    """The LoRA adapter name of ``role`` (a module name: no dots)."""
    name = re.sub(r"[^0-9A-Za-z_-]", "_", role)
    return name if name and name != "default" else f"role_{name}"


def env_roles(env_id: str, kwargs: dict[str, Any]) -> list[str]:
    """The roles (agents) of multi-agent env ``env_id``: its ``possible_agents``, or else the
    ``info["agents"]`` of a reset with seed 0."""
    from agentrl.registry import make_env

    env = make_env(env_id, **kwargs)
    try:
        agents = list(getattr(env.unwrapped, "possible_agents", None) or [])
        if not agents:
            _, info = env.reset(seed=0)
            agents = list(info.get("agents") or [])
    finally:
        env.close()
    roles = [str(a) for a in agents]
    if len(roles) < 2:
        raise ValueError(f"multiagent.policies=per_role: {env_id} names {roles} as its agents; "
                         "one policy per role needs at least two")
    names = [adapter_name(r) for r in roles]
    if len(set(names)) < len(names):
        raise ValueError(f"multiagent.policies=per_role: the roles {roles} of {env_id} give "
                         f"clashing adapter names {names}")
    return roles



def role_models(model_dir: str, env_id: str, env_kwargs: dict[str, Any]) -> dict[str, str]:
    """role -> its merged model directory, for the ``model/`` directory of a per-role
    checkpoint (``roles/<adapter>/model`` beside it); {} for any other model directory. A
    role of ``env_id`` without a model there is a ValueError."""
    if not os.path.isdir(model_dir):
        return {}
    root = os.path.join(os.path.dirname(os.path.normpath(model_dir)), ROLES_DIR)
    if not os.path.isdir(root):
        return {}
    dirs = {a: os.path.join(root, a, "model") for a in sorted(os.listdir(root))
            if os.path.isdir(os.path.join(root, a, "model"))}
    if not dirs:
        return {}
    out = {}
    for role in env_roles(env_id, env_kwargs):
        d = dirs.get(adapter_name(role))
        if d is None:
            raise ValueError(f"a per-role checkpoint without a model for role {role!r} of "
                             f"{env_id} (it has {sorted(dirs)})")
        out[role] = d
    return out


#: (checkpoint, run or model directory; player name or None for the directory's) -> a frozen
#: `Player` (`agentrl.assemble.load_player` bound to a config): how a lineup loads the
#: checkpoints it plays against
PlayerLoader = Callable[[str, "str | None"], Player]


def make_lineup(cfg: Config, run_dir: str, load: PlayerLoader) -> Lineup | None:
    """The lineup ``cfg.multiagent`` asks for (None for single-agent envs); ``load`` builds the
    frozen players (``multiagent.opponent``: the checkpoint's model directory)."""
    from agentrl.registry import is_multiagent

    if not is_multiagent(cfg.env.id):
        return None
    m = cfg.multiagent
    if m.opponent == "self":
        return SelfPlay()
    if m.opponent == "league":
        return League(load, run_dir, m.league_every, m.league_size, m.league_self_play, cfg.seed)
    return Versus([load(m.opponent, None)], seed=cfg.seed)


def make_engine(policy: Policy, pool: EnvPool, builder: PromptBuilder, cfg: RolloutConfig,
                env_id: str, lineup: Lineup | None = None,
                role_policies: dict[str, Policy] | None = None) -> RolloutEngine:
    """The rollout engine for ``env_id``: the multi-agent one for multi-agent envs
    (``role_policies``: see `MultiAgentRolloutEngine`)."""
    from agentrl.registry import is_multiagent

    if is_multiagent(env_id):
        return MultiAgentRolloutEngine(policy, pool, builder, cfg, env_id, lineup, role_policies)
    return RolloutEngine(policy, pool, builder, cfg, env_id)


class MultiAgentRolloutEngine(RolloutEngine):
    """The rollout engine for turn-based multi-agent envs (see the module docstring).

    Args:
        lineup: who holds each seat (default `SelfPlay`).
        role_policies: role -> the backend the trained (or evaluated) policy's seats of that
            role generate with (one policy per role, `agentrl.learn.roles`); roles not in it, and
            every role when it is None, use ``policy``.
    """

    def __init__(self, policy: Policy, pool: EnvPool, builder: PromptBuilder,
                 cfg: RolloutConfig, env_id: str, lineup: Lineup | None = None,
                 role_policies: dict[str, Policy] | None = None) -> None:
        super().__init__(policy, pool, builder, cfg, env_id)
        self.lineup = lineup or SelfPlay()
        self.role_policies = dict(role_policies or {})
        self._games: dict[int, dict[str, LiveEpisode]] = {}  # slot -> agent -> its episode
        self._seats: dict[tuple[int, str], Player | None] = {}
        self._mover: dict[int, str] = {}
        self._moves: dict[int, int] = {}

    def run(self, seeds: list[int], group_ids: list[str] | None = None, greedy: bool = False,
            progress: Any = None, prefixes: Any = None) -> list[Trajectory]:
        """One game per seed; returns every agent's trajectory, game by game, seat order."""
        if prefixes and any(prefixes):
            raise ValueError("prefix replay (branching rollouts) is not supported in "
                             "multi-agent envs; use an algorithm without collect branching")
        return super().run(seeds, group_ids, greedy, progress)

    def _start(self, seeds: list[int], group_ids: list[str]
               ) -> tuple[list[Trajectory], dict[tuple[int, str], LiveEpisode]]:
        results = self.pool.reset(list(range(len(seeds))), list(seeds))
        self._games, self._seats, self._mover, self._moves = {}, {}, {}, {}
        trajs: list[Trajectory] = []
        live: dict[tuple[int, str], LiveEpisode] = {}
        for slot, (seed, gid, res) in enumerate(zip(seeds, group_ids, results)):
            agents = [str(a) for a in res.info.get("agents") or [SINGLE_AGENT]]
            mover = str(res.info.get("agent", agents[0]))
            seats = self.lineup.seats(gid, int(seed), agents) if not res.error else {}
            episode = uuid.uuid4().hex[:12]
            game: dict[str, LiveEpisode] = {}
            for a in agents:
                seat = seats.get(a)
                traj = Trajectory(
                    trajectory_id=uuid.uuid4().hex[:12], env_id=self.env_id, seed=int(seed),
                    group_id=f"{gid}/{a}" if a else gid, context_mode=self.mode.name,
                    episode_id=episode, role=a, player=seat.name if seat else "",
                    task_type=str(res.info.get("task_type", "")))
                trajs.append(traj)
                if res.error:
                    traj.termination = res.error
                    traj.extra["error"] = res.message
                    continue
                ep = LiveEpisode(slot, a, traj, "", {})
                if a == mover:
                    self._show(ep, res)
                game[a] = live[ep.key] = ep
                self._seats[ep.key] = seat
            self._games[slot], self._mover[slot], self._moves[slot] = game, mover, 0
        return trajs, live

    @staticmethod
    def _show(ep: LiveEpisode, res: EnvResult) -> None:
        """Hand the env's latest observation to the agent that moves next."""
        ep.observation, ep.info = res.observation, res.info
        if not ep.traj.task:
            ep.traj.task = str(res.info.get("task", ""))

    def _acting(self, live: dict[tuple[int, str], LiveEpisode]) -> list[LiveEpisode]:
        return [live[(s, a)] for s, a in self._mover.items() if (s, a) in live]

    def _player(self, ep: LiveEpisode) -> tuple[Policy, PromptBuilder]:
        seat = self._seats.get(ep.key)
        if seat is not None:
            return seat.policy_for(ep.agent), seat.builder
        return self.role_policies.get(ep.agent, self.policy), self.builder

    def _prompt(self, acting: list[LiveEpisode]) -> list[_Ready]:
        ready = super()._prompt(acting)
        for ep in acting:  # a mover that cannot act ends its game for everyone
            if ep.traj.termination:
                self._end_game(ep.slot, ep.traj.termination, ep.traj.extra.get("error"))
        return ready

    def _end_game(self, slot: int, termination: str, error: str | None = None) -> None:
        for ep in self._games.get(slot, {}).values():
            if not ep.traj.termination:
                ep.traj.termination = termination
                if error:
                    ep.traj.extra["error"] = error

    def _record(self, r: _Ready, gen: Generation, parsed: tuple[str, str, bool],
                res: EnvResult, seconds: float) -> None:
        super()._record(r, gen, parsed, res, seconds)
        slot, game = r.ep.slot, self._games[r.ep.slot]
        r.ep.traj.turns[-1].episode_turn = self._moves[slot]
        self._moves[slot] += 1
        for a, v in (res.info.get("rewards") or {}).items():
            other = game.get(a)
            if other is None or other is r.ep:
                continue  # the mover's own reward is its turn's reward already
            if other.traj.turns:
                other.traj.turns[-1].reward += float(v)
            elif v:  # a reward before its first move has no tokens to credit: kept for the record
                other.traj.extra["reward_before_first_turn"] = float(v) + float(
                    other.traj.extra.get("reward_before_first_turn", 0.0))
        if res.error:
            self._end_game(slot, res.error, res.message)
        elif res.terminated or res.truncated:
            outcome = res.info.get("outcome") or {}
            for a, ep in game.items():
                ep.traj.outcome = str(outcome.get(a, ""))
                ep.traj.success = ep.traj.outcome == "win"
                ep.traj.termination = (("success" if ep.traj.success else "failure")
                                       if res.terminated else "truncated")
        else:
            mover = str(res.info.get("agent", r.ep.agent))
            if mover in game:
                self._show(game[mover], res)
                self._mover[slot] = mover
            else:
                self._end_game(slot, "env_error", f"the env named an unknown mover {mover!r}")
