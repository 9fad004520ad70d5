"""Shared fixtures: a tiny model and tokenizer built offline, and a small deterministic env."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import pytest
import torch

from agentrl.envs.base import TextEnv
from agentrl.models import build_tiny_model, build_tiny_tokenizer

# Tests share one game cache per session unless the caller set one.
os.environ.setdefault("AGENTRL_CACHE", os.path.join(tempfile.gettempdir(), "agentrl-test-cache"))
torch.set_num_threads(1)

CORPUS = ["go north", "go south", "go east", "go west", "take coin", "You are in a room.",
          "There is an exit to the north.", "<action>", "</action>", "Previous actions: none",
          "Current observation: Admissible actions: Think briefly, then give your action"]


class CorridorEnv(TextEnv):
    """Walk east ``length`` times to win; any other admissible move is wasted. Deterministic.

    ``crash_on`` / ``hang_on``: an action that raises / sleeps, for fault-injection tests.
    """

    def __init__(self, length: int = 3, crash_on: str = "", hang_on: str = "",
                 hang_seconds: float = 30.0) -> None:
        super().__init__()
        self.length, self.crash_on, self.hang_on, self.hang_seconds = (
            length, crash_on, hang_on, hang_seconds)
        self.pos = 0

    def _info(self, valid: bool = True) -> dict[str, Any]:
        return {"task_type": "corridor", "task": f"walk east {self.length} times",
                "admissible_actions": ["go east", "go west", "take coin"],
                "state_key": f"room{self.pos}", "action_valid": valid,
                "success": self.pos >= self.length}

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[str, dict]:
        super().reset(seed=seed)
        self.pos = 0
        return "You are in room 0.", self._info()

    def step(self, action: str) -> tuple[str, float, bool, bool, dict]:
        if self.crash_on and action == self.crash_on:
            raise RuntimeError("injected crash")
        if self.hang_on and action == self.hang_on:
            import time

            time.sleep(self.hang_seconds)
        a = action.strip().lower()
        if a not in ("go east", "go west", "take coin"):
            return "Nothing happens.", 0.0, False, False, self._info(False)
        if a == "go east":
            self.pos += 1
        elif a == "go west":
            self.pos = max(0, self.pos - 1)
        won = self.pos >= self.length
        return f"You are in room {self.pos}.", float(won), won, False, self._info()


def _register() -> None:
    from agentrl.registry import ENVS, register_env

    if "test/Corridor-v0" not in ENVS:
        register_env("test/Corridor-v0", entry_point=CorridorEnv,
                     description="test corridor", max_episode_steps=20)


_register()


@pytest.fixture(scope="session")
def tiny_tok() -> Any:
    return build_tiny_tokenizer(CORPUS * 5, vocab_size=300)


@pytest.fixture()
def tiny_model(tiny_tok: Any) -> Any:
    return build_tiny_model(len(tiny_tok), hidden=32, layers=2, heads=4, seed=0,
                            pad_token_id=tiny_tok.pad_token_id, eos_token_id=tiny_tok.eos_token_id)
