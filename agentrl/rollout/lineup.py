"""Who holds each seat of a multi-agent game: the `Lineup` of the trained policy and fixed
players, and the roles of a game (per-role adapters, per-role checkpoints).

Who holds each seat (`Lineup`): `SelfPlay` (the trained policy plays every seat, its role in
the prompt), `Versus` (the trained policy on one seat, alternating within a group, fixed players
on the others), `League` (`Versus` against a pool of past snapshots of the trained policy, plus
a share of self-play). Random and scripted opponents are env settings
(``env.kwargs={opponent: random}``): the env plays those seats itself.

Frozen players are loaded by `agentrl.assemble.load_player`, handed to `make_lineup` as a
`PlayerLoader`, so this module loads no model.
"""

from __future__ import annotations

import os
import random
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentrl.policies.base import Policy
from agentrl.rollout.prompts import PromptBuilder

if TYPE_CHECKING:
    from agentrl.config import Config


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
