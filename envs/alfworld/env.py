"""ALFWorld as an agentrl text env, on the official engine (TextWorld PDDL + fast-downward).

Games come from the official data (``data_path``: ``$ALFWORLD_DATA`` with
``json_2.1.1/{train,valid_seen,valid_unseen}``) or, by default, from the offline generator in
`agentrl.envs.alfworld.generate`, cached under ``<agentrl cache>/alfworld/``.

Conventions follow verl-agent's ALFWorld setup: the observation is the text ALFWorld prints;
reward is ``success_reward`` (10) on the step that wins and 0 otherwise; ``info`` carries
``task_type`` (one of `TASK_TYPES`), ``task`` (the goal after "Your task is to: "),
``admissible_actions``, ``state_key``, ``success`` (= won), ``action_valid`` and ``score``.
Only admissible commands reach the engine; anything else is a no-op step with the
observation "Nothing happens." and ``action_valid=False``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from agentrl.envs.alfworld.engine import CachedTranslations, keep_argv, make_engine
from agentrl.envs.alfworld.generate import (
    SPLITS,
    TASK_TYPES,
    _is_solvable,
    ensure_games,
    official_split_dir,
)
from agentrl.envs.base import TextEnv

_TASK_PREFIX = "Your task is to: "


def find_official_games(data_path: str, split: str,
                        task_types: Sequence[str] = TASK_TYPES) -> list[str]:
    """``game.tw-pddl`` files of one split of an ALFWorld dataset, sorted.

    ``data_path`` may be the ``$ALFWORLD_DATA`` root, its ``json_2.1.1`` folder or the split
    folder itself. Applies the official loader's filters: a ``traj_data.json`` beside the game,
    a task type in ``task_types``, ``"solvable": true``, no movable/sliced variants.
    """
    root = official_split_dir(data_path, split)
    games = []
    for dirpath, _, files in os.walk(root):
        if "traj_data.json" not in files or "game.tw-pddl" not in files:
            continue
        if "movable" in dirpath or "Sliced" in dirpath:
            continue  # the official text env does not support these either
        with open(os.path.join(dirpath, "traj_data.json")) as f:
            if json.load(f).get("task_type") not in task_types:
                continue
        game = os.path.join(dirpath, "game.tw-pddl")
        if _is_solvable(game):
            games.append(game)
    # os.walk order depends on the file system; sort so game indices are reproducible.
    return sorted(games)


class ALFWorldEnv(TextEnv):
    """ALFWorld household tasks (six task types) on the official text engine.

    Args:
        split: ``train`` | ``valid_seen`` (in-distribution eval) | ``valid_unseen`` (unseen
            floor plans).
        num_games: games in the split; ``reset(seed)`` plays game ``seed % num_games``. With
            official data, ``None`` means all games of the split; generated splits need a number.
        data_path: an ALFWorld dataset (``$ALFWORLD_DATA``); ``None`` uses generated games.
        task_types: keep only these task types (names from `TASK_TYPES`).
        success_reward: reward on the winning step (verl-agent uses 10).
        invalid_feedback: observation after an action that is not admissible.
        cache_root: where generated games live (default ``<agentrl cache>/alfworld/gen-v1``).
        subgoal_reward: potential-based shaping for agents that rarely win by chance (small
            models). The potential is ``subgoal_reward`` while holding an object of the type
            the task is about (the type the game's plan takes first), half of it while at the
            place the plan takes it from, else 0; each step is paid the change. A finished
            episode's shaping sums to zero, so the best policy is unchanged (Ng et al., 1999).
            0 (default): verl-agent's sparse reward.
    """

    def __init__(self, split: str = "train", num_games: int | None = 120,
                 data_path: str | None = None, task_types: Sequence[str] | None = None,
                 success_reward: float = 10.0, invalid_feedback: str = "Nothing happens.",
                 cache_root: str | None = None, subgoal_reward: float = 0.0,
                 render_mode: str | None = None) -> None:
        super().__init__(render_mode)
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        task_types = tuple(task_types or TASK_TYPES)
        bad = [t for t in task_types if t not in TASK_TYPES]
        if bad:
            raise ValueError(f"unknown ALFWorld task types {bad}; choose from {TASK_TYPES}")
        if num_games is not None and num_games < 1:
            raise ValueError("num_games must be >= 1")
        self.split, self.task_types = split, task_types
        self.success_reward, self.invalid_feedback = float(success_reward), invalid_feedback
        self.subgoal_reward = float(subgoal_reward)
        self._target_type = ""  # the object type the plan picks up first (shaping)
        self._target_place = ""  # where the plan picks it up (shaping)
        self._holding = ""  # what the agent holds now (shaping)
        self._place = ""  # the receptacle the agent went to last (shaping)
        if data_path:
            games = find_official_games(data_path, split, task_types)
            if not games:
                raise FileNotFoundError(f"no solvable {list(task_types)} games in {data_path!r} "
                                        f"({split})")
            self.game_files = games[:num_games] if num_games else games
        else:
            if num_games is None:
                raise ValueError(
                    "generated ALFWorld games need num_games (an int; the official splits have "
                    "3553 train / 140 valid_seen / 134 valid_unseen games); to play the "
                    "official games set data_path (e.g. data_path=$ALFWORLD_DATA)")
            self.game_files = ensure_games(split, num_games, task_types, root=cache_root)
        self.num_games = len(self.game_files)
        self._engine: Any = None
        self._translations = CachedTranslations()
        self._loaded: str | None = None
        self._meta: dict[str, tuple[str, list[str]]] = {}  # game -> (task type, walkthrough)
        self._state: Any = None
        self._state_key = ""
        self._task = ""
        self._game_index = -1
        self._done = True

    # -- helpers ------------------------------------------------------------------------
    def _game_meta(self, game: str) -> tuple[str, list[str]]:
        if game not in self._meta:
            with open(os.path.join(os.path.dirname(game), "traj_data.json")) as f:
                task_type = json.load(f)["task_type"]
            with open(game) as f:
                walkthrough = list(json.load(f).get("walkthrough") or [])
            self._meta[game] = (task_type, walkthrough)
        return self._meta[game]

    def _info(self, action_valid: bool) -> dict[str, Any]:
        gs = self._state
        won = bool(gs["won"])
        return {
            "task_type": self._task_type,
            "task": self._task,
            "admissible_actions": list(gs["admissible_commands"]),
            "state_key": self._state_key,
            "success": won,
            "won": won,
            "action_valid": action_valid,
            "score": float(won),
            "game_index": self._game_index,
        }

    # -- gymnasium API ----------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[str, dict[str, Any]]:
        super().reset(seed=seed)
        idx = (seed if seed is not None else int(self.np_random.integers(0, 2**31))) % self.num_games
        game = self.game_files[idx]
        if self._engine is None:
            self._engine = make_engine()
        with self._translations.active():
            if self._loaded != game:
                self._engine.load(game)
                self._loaded = game
            self._state = self._engine.reset()
        self._task_type, walkthrough = self._game_meta(game)
        self._game_index, self._done = idx, False
        take = next((c[5:].split(" from ", 1) for c in walkthrough
                     if c.startswith("take ") and " from " in c), ["", ""])
        self._target_type, self._target_place = _object_type(take[0]), take[1]
        self._holding = self._place = ""
        obs = str(self._state["feedback"]).strip()
        self._task = obs.split(_TASK_PREFIX, 1)[1].strip() if _TASK_PREFIX in obs else ""
        # The room description without the banner and task is the history-free state view.
        self._state_key = obs.split("=-", 1)[-1].split(_TASK_PREFIX, 1)[0].strip()
        self._last_obs = obs
        info = self._info(action_valid=True)
        info["walkthrough"] = walkthrough
        info["game_file"] = game
        return obs, info

    def step(self, action: str) -> tuple[str, float, bool, bool, dict[str, Any]]:
        if self._state is None or self._done:
            info = self._info(False) if self._state is not None else {
                "action_valid": False, "success": False, "task_type": "unknown"}
            return "The episode is over; call reset().", 0.0, True, False, info
        # verl-agent lower-cases actions; ALFWorld commands are lower-case single-spaced.
        cmd = " ".join(str(action).lower().split())
        if cmd not in self._state["admissible_commands"]:
            # The state is unchanged, so state_key keeps describing it.
            self._last_obs = self.invalid_feedback
            return self.invalid_feedback, 0.0, False, False, self._info(action_valid=False)
        self._state, _, _ = self._engine.step(cmd)
        obs = str(self._state["feedback"]).strip()
        self._last_obs = self._state_key = obs
        won = bool(self._state["won"])
        self._done = won
        reward = self.success_reward if won else 0.0
        if self.subgoal_reward:
            before = self._potential()
            self._holding = _held_after(cmd, self._holding)
            if cmd.startswith("go to "):
                self._place = cmd[6:]
            reward += self._potential() - before
        return obs, reward, won, False, self._info(True)

    def _potential(self) -> float:
        """Shaping potential (see ``subgoal_reward``)."""
        if not self._target_type:
            return 0.0
        if _object_type(self._holding) == self._target_type:
            return self.subgoal_reward
        return self.subgoal_reward / 2 if self._place == self._target_place else 0.0

    # -- expert ---------------------------------------------------------------------------
    def expert_actions(self) -> list[str]:
        """A shortest plan from the current state (fast-downward); [] once won or if none."""
        if self._state is None or self._state["won"]:
            return []
        inner = self._engine
        with keep_argv():
            return list(inner._pddl_state.replan(inner._entity_infos))

    def close(self) -> None:
        # The engine's fast-downward copy stays mapped (TextWorld never unloads it, and
        # dlclose-ing it crashes at exit); dropping the engine frees its Python state.
        self._engine = None
        self._loaded = None


class ALFWorldExpert:
    """The PDDL planner (fast-downward), replanned from the current state at every turn, so
    it also acts correctly after another policy's moves."""

    reset_options: dict[str, Any] = {}

    def __init__(self, env: ALFWorldEnv, info: dict[str, Any]) -> None:
        self.env = env

    def act(self, info: dict[str, Any]) -> str | None:
        plan = self.env.expert_actions()
        return plan[0] if plan else None


def _held_after(cmd: str, holding: str) -> str:
    """What the agent holds after the admissible command ``cmd`` ("take apple 1 from
    countertop 1" -> "apple 1"; "move apple 1 to fridge 1" -> "")."""
    if cmd.startswith("take ") and " from " in cmd:
        return cmd[5:].split(" from ", 1)[0]
    if cmd.startswith(("move ", "put ")) and holding and cmd.split(" ", 1)[1].startswith(holding):
        return ""
    return holding


def _object_type(name: str) -> str:
    """"soapbar 2" -> "soapbar" (ALFWorld numbers the objects of one type)."""
    return name.rsplit(" ", 1)[0] if name[-1:].isdigit() and " " in name else name
