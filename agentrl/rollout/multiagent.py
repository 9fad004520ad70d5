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

Who holds each seat is the `agentrl.rollout.lineup.Lineup`.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from agentrl.envpool import EnvResult
from agentrl.policies.base import Generation, Policy
from agentrl.rollout.engine import SINGLE_AGENT, LiveEpisode, RolloutEngine, _Ready
from agentrl.rollout.lineup import Lineup, Player, SelfPlay
from agentrl.rollout.prompts import PromptBuilder
from agentrl.types import Trajectory

if TYPE_CHECKING:
    from agentrl.config import RolloutConfig
    from agentrl.envpool import EnvPool


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
                res: EnvResult, seconds: tuple[float, float]) -> None:
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
