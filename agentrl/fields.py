"""The two pieces every config section needs: `F` (a dataclass field with a one-line help text
and numeric bounds) and `ConfigError`.

They live apart from `agentrl.config` so that modules declaring a section of their own (the
policy backends in `agentrl.policies`) need not import the config tree that assembles them
(`agentrl.config` imports their sections to validate ``policy:``). `agentrl.config` re-exports
both names.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range; the message says the fix."""


def F(default: Any = dataclasses.MISSING, help: str = "", *, ge: float | None = None,
      gt: float | None = None, le: float | None = None, lt: float | None = None,
      default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with a one-line help text and optional numeric bounds."""
    md = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=md)
    return field(default=default, metadata=md)
