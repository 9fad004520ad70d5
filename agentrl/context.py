"""Context modes: how an episode becomes the policy's prompt at each turn, and the learner's
training samples afterwards. One object per mode serves both, so training sees exactly the
tokens the policy saw.

- ``window``: every turn is re-prompted from scratch (task + last K steps + current
  observation); ``Turn.context_ids`` holds that whole prompt. One training sample per turn.
- ``full``: the conversation grows token by token; ``Turn.context_ids`` holds what is appended
  before the turn's action (turn 0: the whole initial prompt; later turns: the observation in
  the chat template). One training sample per trajectory.

Both prompts are functions of the trajectory so far (its turns hold every observation, action
and sampled id), so an episode needs no extra state, and a replayed prefix (branching) is just
turns copied in. A new mode subclasses `ContextMode` and is added to `CONTEXT_MODES`.
"""

from __future__ import annotations

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
        ``builder`` is the `agentrl.prompts.PromptBuilder` shared with training."""
        raise NotImplementedError

    def samples(self, num_turns: int) -> list[range]:
        """The turns of each training sample of a trajectory with ``num_turns`` turns."""
        raise NotImplementedError


class WindowContext(ContextMode):
    name = "window"

    def prompt(self, builder: Any, traj: Trajectory, observation: str,
               actions: list[str] | None, eos_token_id: int | None) -> tuple[list[int], list[int]]:
        # turns carry (observation, action): the builder shows the last K of them
        ids = builder.window_prompt(traj.task, traj.turns, observation, actions, len(traj.turns))
        return ids, ids

    def samples(self, num_turns: int) -> list[range]:
        return [range(k, k + 1) for k in range(num_turns)]


class FullContext(ContextMode):
    name = "full"

    def prompt(self, builder: Any, traj: Trajectory, observation: str,
               actions: list[str] | None, eos_token_id: int | None) -> tuple[list[int], list[int]]:
        step = len(traj.turns)
        if step == 0:
            ids = builder.window_prompt(traj.task, [], observation, actions, 0)
            return ids, ids
        last = traj.turns[-1].action_ids
        new = builder.continuation(observation, actions, step,
                                   bool(last) and last[-1] == eos_token_id)
        so_far = [i for t in traj.turns for i in (*t.context_ids, *t.action_ids)]
        return so_far + new, new

    def samples(self, num_turns: int) -> list[range]:
        return [range(num_turns)] if num_turns else []


CONTEXT_MODES: dict[str, ContextMode] = {m.name: m for m in (WindowContext(), FullContext())}


def context_mode(name: str) -> ContextMode:
    """The mode object for ``rollout.context`` / ``Trajectory.context_mode``."""
    try:
        return CONTEXT_MODES[name]
    except KeyError:
        raise ValueError(f"unknown context mode {name!r}; use one of "
                         f"{', '.join(sorted(CONTEXT_MODES))}") from None
