"""ALFWorld on the official text engine, with offline-generated games (see `generate`).

Names are resolved lazily so that ``python -m agentrl.envs.alfworld.generate`` and importing
this package stay cheap; the engine (`alfworld`, TextWorld, fast-downward) loads with an env.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"ALFWorldEnv": "env", "find_official_games": "env", "SPLITS": "generate",
            "TASK_TYPES": "generate", "ensure_games": "generate"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
