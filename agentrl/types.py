"""Trajectory data model: what a rollout produces and what training consumes.

A `Trajectory` is one episode of one agent. It keeps the exact token ids the policy sampled and
the sampler's log-probabilities, so training never decodes and re-encodes text.

Both context modes (`agentrl.rollout.context`: ``full``, one growing conversation; ``window``, each turn
re-prompted) share this model: ``Turn.context_ids`` holds what the mode added to the context
before the turn's action, and the mode says which turns form one training sample.

`agentrl.learn.batch.to_samples` turns trajectories into flat training samples. This module imports
nothing else of agentrl: it is the data model every stage shares.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

#: How a multi-agent game ended for one agent (``Trajectory.outcome``).
OUTCOMES = ("win", "draw", "loss")

#: Why an episode ended. `success`/`failure` come from the env's own termination.
TERMINATION_REASONS = (
    "success",  # env terminated with info["success"] true
    "failure",  # env terminated without success
    "max_turns",  # the rollout's turn limit was reached
    "truncated",  # the env itself truncated (its own step limit)
    "context_limit",  # the prompt outgrew the context budget
    "token_budget",  # the episode generated rollout.max_episode_tokens reply tokens
    "env_error",  # the env raised or its worker died
    "env_timeout",  # the env step exceeded its time limit
)


@dataclass
class Turn:
    """One agent turn: context tokens in, sampled action tokens out, env feedback back.

    Attributes:
        observation: env text the agent saw before acting (raw, no template).
        context_ids: tokens added to the context before this turn's action (see module doc).
        action_ids: exactly the sampled token ids, EOS included when it was sampled.
        logprobs: sampler log-probability of each id in ``action_ids`` (same length).
        response: decoded ``action_ids`` (for humans and the action parser).
        action: the string sent to the env (parsed out of ``response``).
        action_valid: parse succeeded and the env accepted the action.
        reward: the env's reward for this step.
        shaping: what the rollout adds to it (``-step_penalty``, ``-invalid_penalty`` for an
            invalid action); the shaped reward an algorithm optimises is ``reward + shaping``.
        finish_reason: ``stop`` (EOS or stop string), ``length`` (token limit).
        allowed_ids: for constrained decoding, the allowed token ids at each action position
            (same length as ``action_ids``); ``None`` when decoding was unconstrained.
        state_key: history-free key of the state the action was taken in (turn-level grouping).
        context_reset: full mode: ``context_ids`` is a new whole prompt (the history policy
            dropped or summarised earlier turns), not an extension; a new training sample
            starts here.
        info: JSON-safe subset of the env's info after the step.
        seconds_generate / seconds_env: this turn's share of the wall time of the batched
            generation / env step that produced it (summed over an iteration's turns: the
            wall time of each, however many env workers stepped in parallel).
        episode_turn: in a multi-agent episode, this turn's place among every agent's turns
            (0, 1, 2, ...), so the trajectories of one game line up move by move; ``None`` in
            single-agent episodes, where it is the turn index.
        policy_version: the version of the weights that sampled this turn (learner updates
            applied before it: 0 = the initial weights); with asynchronous training the
            learner's version minus this is the turn's staleness.
    """

    observation: str
    context_ids: list[int]
    action_ids: list[int]
    logprobs: list[float]
    response: str = ""
    action: str = ""
    action_valid: bool = True
    reward: float = 0.0
    shaping: float = 0.0
    finish_reason: str = "stop"
    allowed_ids: list[list[int]] | None = None
    state_key: str | None = None
    context_reset: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    seconds_generate: float = 0.0
    seconds_env: float = 0.0
    episode_turn: int | None = None
    policy_version: int = 0

    def __post_init__(self) -> None:
        if len(self.action_ids) != len(self.logprobs):
            raise ValueError(
                f"Turn: {len(self.action_ids)} action ids but {len(self.logprobs)} logprobs"
            )
        if self.allowed_ids is not None and len(self.allowed_ids) != len(self.action_ids):
            raise ValueError("Turn: allowed_ids must have one entry per action token")


@dataclass
class Trajectory:
    """One episode of one agent, token-exact.

    ``group_id`` is shared by the trajectories that started from the same task and seed;
    ``episode_id`` links the per-agent views of one multi-agent episode (equal to
    ``trajectory_id`` for single-agent envs).

    Multi-agent episodes (`agentrl.rollout.multiagent`) also set ``role`` (the agent's seat, e.g.
    ``player_1``; group ids are then per (task seed, role)), ``outcome`` (``win``, ``draw`` or
    ``loss``, at the end of a game) and ``player``: ``""`` when the policy being trained or
    evaluated produced the trajectory, else the name of the fixed player that did (a frozen
    checkpoint), whose trajectories are recorded but never trained on.
    """

    trajectory_id: str
    group_id: str
    env_id: str
    seed: int
    context_mode: str  # an `agentrl.rollout.context` mode: "window" or "full"
    turns: list[Turn] = field(default_factory=list)
    episode_id: str = ""
    task: str = ""
    task_type: str = ""
    termination: str = ""
    success: bool = False
    score: float | None = None
    role: str = ""
    outcome: str = ""
    player: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.episode_id:
            self.episode_id = self.trajectory_id

    @property
    def total_reward(self) -> float:
        """The shaped return: env reward plus shaping, summed over turns."""
        return float(sum(t.reward + t.shaping for t in self.turns))

    @property
    def env_return(self) -> float:
        """The env's rewards summed over turns, without shaping."""
        return float(sum(t.reward for t in self.turns))

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def num_action_tokens(self) -> int:
        return sum(len(t.action_ids) for t in self.turns)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        d = dict(d)
        d["turns"] = [Turn(**_upgrade_turn(t)) for t in d.get("turns", [])]
        return cls(**d)


def _upgrade_turn(t: dict[str, Any]) -> dict[str, Any]:
    """Read a turn of an older dump, which stored the shaped reward as ``reward`` and the env's
    as ``env_reward``: the env's becomes ``reward``, the difference ``shaping``."""
    if "env_reward" not in t:
        return t
    t = dict(t)
    env = float(t.pop("env_reward"))
    t["shaping"] = float(t.get("reward", env)) - env
    t["reward"] = env
    return t


def write_jsonl(path: str, trajectories: Iterable[Trajectory], append: bool = False) -> int:
    """Write trajectories as JSON lines; returns how many were written."""
    n = 0
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        for t in trajectories:
            try:
                f.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
            except UnicodeEncodeError:  # a lone surrogate: \u-escapes keep the file UTF-8
                f.write(json.dumps(t.to_dict()) + "\n")
            n += 1
    return n


def read_json_lines(path: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL file. A last line cut short (no newline after it: the writer
    was killed mid-line) is dropped with a warning.

    Raises:
        ValueError: a line that is not a JSON object (the message names the file and line).
    """
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            if n == len(lines):
                print(f"[agentrl] warning: {path} line {n} was cut short (a killed writer); "
                      "ignoring it", file=sys.stderr)
                continue
            raise ValueError(f"{path} line {n}: not a line of JSON ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def read_jsonl(path: str) -> list[Trajectory]:
    """Read trajectories written by `write_jsonl`.

    Raises:
        ValueError: a line that is not a trajectory (the message names the file and record).
    """
    out = []
    for i, row in enumerate(read_json_lines(path), 1):
        try:
            out.append(Trajectory.from_dict(row))
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{path}: record {i} is not a trajectory ({e})") from None
    return out


# ------------------------------------------------------------------ info over the wire

#: How `to_wire` tags a tuple (JSON has none), so `state_key` comes back hashable.
_TUPLE_TAG = "__tuple__"


# ------------------------------------------------------------------------------ wire format

def to_wire(value: Any) -> Any:
    """``value`` as JSON that `from_wire` turns back into an equal value: tuples are tagged
    ``{"__tuple__": [...]}``, numpy scalars and arrays become numbers and lists, sets become
    sorted lists, dict keys strings, anything else its ``str``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, tuple):
        return {_TUPLE_TAG: [to_wire(v) for v in value]}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_wire(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return [to_wire(v) for v in sorted(value, key=repr)]
    item = getattr(value, "item", None)  # numpy scalar
    if callable(item) and getattr(value, "shape", None) == ():
        return to_wire(item())
    tolist = getattr(value, "tolist", None)  # numpy array
    if callable(tolist):
        return to_wire(tolist())
    return str(value)


def from_wire(value: Any) -> Any:
    """Inverse of `to_wire` (tagged tuples back to tuples)."""
    if isinstance(value, list):
        return [from_wire(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and _TUPLE_TAG in value and isinstance(value[_TUPLE_TAG], list):
            return tuple(from_wire(v) for v in value[_TUPLE_TAG])
        return {k: from_wire(v) for k, v in value.items()}
    return value
