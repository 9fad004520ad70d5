"""Shared pieces of every agentrl environment: a permissive text space and info conventions.

An agentrl env is a plain `gymnasium.Env` whose observations and actions are strings:

- ``reset(seed=..., options=...) -> (obs, info)``; the same seed gives the same task and dynamics.
- ``step(action) -> (obs, reward, terminated, truncated, info)``; **never raises** on any action
  string: an action it cannot use is a normal step with ``info["action_valid"] = False``.
- ``info`` uses the fixed keys in `INFO_KEYS`.
"""

from __future__ import annotations

import random
import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding

#: The fixed info keys. `success` must be present at episode end; `action_valid` after every step.
INFO_KEYS = {
    "success": "bool, at episode end: the task was achieved",
    "task_type": "str: category used for per-type success rates",
    "action_valid": "bool, after every step: the env understood and applied the action",
    "admissible_actions": "list[str], when the env can enumerate valid actions",
    "state_key": "hashable, history-free view of the current state (turn-level grouping)",
    "score": "float: raw env score when it differs from reward",
    "tool_calls": "int: tool calls made so far (tool-use envs)",
    "tools": "list[dict], at reset (for rollout.action_format=tool_call): the actions as "
             "JSON-schema function tools with one parameter each; a call name(p=value) is the "
             "action name[value]",
}


class TextSpace(gym.spaces.Space[str]):
    """Any Python string, of any length and alphabet.

    gymnasium's `spaces.Text` only admits a fixed charset and length, which rejects ordinary
    sentences; agent observations and actions are free text.
    """

    def __init__(self, max_sample_length: int = 32, seed: int | None = None) -> None:
        super().__init__(shape=None, dtype=None, seed=seed)
        self.max_sample_length = max_sample_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        n = int(self.np_random.integers(0, self.max_sample_length + 1))
        alphabet = string.ascii_letters + string.digits + " "
        return "".join(alphabet[int(i)] for i in self.np_random.integers(0, len(alphabet), n))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "TextSpace()"

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, TextSpace)


class TextEnv(gym.Env[str, str]):
    """Optional base class: sets the text spaces and the render mode. Subclasses implement
    `reset` and `step` (call ``super().reset(seed=seed)`` to seed ``self.np_random``)."""

    metadata = {"render_modes": ["ansi"]}

    def __init__(self, render_mode: str | None = None) -> None:
        self.observation_space = TextSpace()
        self.action_space = TextSpace()
        self.render_mode = render_mode
        self._last_obs = ""

    # The generator gymnasium keeps in ``_np_random``, built on first use (see `reset`).
    _rng: np.random.Generator | None = None
    _rng_seed: int | None = None  # the seed of the last reset, until its generator is built

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[str, dict[str, Any]]:
        """Seed ``self.np_random`` as `gymnasium.Env.reset` does, but build the generator on
        its first use: text envs mostly take their task from the seed itself, and numpy's
        seeding costs more than a step of a light env. The generator is the one ``seed``
        gives, whenever it is built."""
        if seed is not None:
            if not isinstance(seed, int) or seed < 0:
                seeding.np_random(seed)  # raises gymnasium's error for this seed
            self._rng, self._rng_seed, self._np_random_seed = None, seed, seed
        return super().reset(options=options)  # type: ignore[return-value]

    @property  # type: ignore[override]
    def _np_random(self) -> np.random.Generator | None:
        if self._rng is None and self._rng_seed is not None:
            self._rng = seeding.np_random(self._rng_seed)[0]
        return self._rng

    @_np_random.setter
    def _np_random(self, value: np.random.Generator | None) -> None:
        self._rng, self._rng_seed = value, None

    def render(self) -> str | None:
        return self._last_obs if self.render_mode == "ansi" else None


def rng_for(seed: int | None) -> random.Random:
    """A private `random.Random` for deterministic task generation from a seed."""
    return random.Random(seed)
