"""Where agentrl keeps what it generates or converts once (games, catalogs, converted models)."""

from __future__ import annotations

import os


def cache_dir() -> str:
    """Root of agentrl's on-disk cache (``$AGENTRL_CACHE`` or ``~/.cache/agentrl``)."""
    return os.environ.get("AGENTRL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "agentrl"))
