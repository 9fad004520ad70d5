"""Context modes: how an episode becomes the policy's prompt at each turn, and the learner's
training samples afterwards. One object per mode serves both, so training sees exactly the
tokens the policy saw.

- ``window``: every turn is re-prompted from scratch (task + last K steps + current
  observation); ``Turn.context_ids`` holds that whole prompt. One training sample per turn.
- ``full``: the conversation grows token by token; ``Turn.context_ids`` holds what is appended
  before the turn's action (turn 0: the whole initial prompt; later turns: the observation's
  message as the chat template renders it). One training sample per trajectory, or one per
  context restart when ``rollout.history_policy`` dropped turns (``Turn.context_reset``).

Both prompts are functions of the trajectory so far (its turns hold every observation, action
and sampled id), and a replayed prefix (branching) is just turns copied in; full mode caches
each episode's conversation in the builder and rebuilds it from the turns when it is missing. A new mode subclasses `ContextMode` and is added to `CONTEXT_MODES`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from agentrl.types import Trajectory


class ContextMode:
    """How a trajectory's context grows (rollout) and splits into samples (training)."""

    name: ClassVar[str] = ""

    def prompt(self, builder: Any, traj: Trajectory, observation: str,
               actions: list[str] | None, eos_token_id: int | None) -> tuple[list[int], list[int]]:
        """(prompt ids to generate from, the ids this turn adds to the context, which become
        ``Turn.context_ids``) for the next turn of ``traj`` given the current observation.
        ``builder`` is the `agentrl.rollout.prompts.PromptBuilder` shared with training."""
        raise NotImplementedError

    def samples(self, num_turns: int, restarts: Sequence[int] = ()) -> list[range]:
        """The turns of each training sample of a trajectory with ``num_turns`` turns;
        ``restarts``: turns whose context replaced the one before (``Turn.context_reset``)."""
        raise NotImplementedError


class WindowContext(ContextMode):
    name = "window"

    def prompt(self, builder: Any, traj: Trajectory, observation: str,
               actions: list[str] | None, eos_token_id: int | None) -> tuple[list[int], list[int]]:
        # turns carry (observation, action): the builder shows the last K of them
        ids = builder.window_prompt(traj.task, traj.turns, observation, actions, len(traj.turns),
                                    tools=traj.extra.get("tools"))
        return ids, ids

    def samples(self, num_turns: int, restarts: Sequence[int] = ()) -> list[range]:
        return [range(k, k + 1) for k in range(num_turns)]


class FullContext(ContextMode):
    name = "full"

    def prompt(self, builder: Any, traj: Trajectory, observation: str,
               actions: list[str] | None, eos_token_id: int | None) -> tuple[list[int], list[int]]:
        # The builder keeps the episode's token-exact chat conversation (`agentrl.rollout.chat`):
        # stored ids + the template's rendering of the new message, with drift checks.
        return builder.full_prompt(traj, observation, actions)

    def samples(self, num_turns: int, restarts: Sequence[int] = ()) -> list[range]:
        # A restarted context (history policy) is a new sequence: its turns were sampled
        # without the dropped ones, so they are trained without them.
        bounds = [0, *sorted(k for k in set(restarts) if 0 < k < num_turns), num_turns]
        return [range(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


CONTEXT_MODES: dict[str, ContextMode] = {m.name: m for m in (WindowContext(), FullContext())}


def context_mode(name: str) -> ContextMode:
    """The mode object for ``rollout.context`` / ``Trajectory.context_mode``."""
    try:
        return CONTEXT_MODES[name]
    except KeyError:
        raise ValueError(f"unknown context mode {name!r}; use one of "
                         f"{', '.join(sorted(CONTEXT_MODES))}") from None
