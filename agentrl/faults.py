"""Fault injection for the kill/resume tests and the soak script.

``AGENTRL_FAULT=point[@n][:action],...`` makes the n-th time (default: the first) the process
passes `fault_point(point)` do ``action``: ``kill`` (SIGKILL itself, the default), ``term``
(SIGTERM itself, as a scheduler's preemption would) or ``raise`` (an OSError). Points:
``checkpoint_write`` (half-way through writing a checkpoint), ``rollout``, ``update``,
``eval``, ``iteration_end``. Unset, `fault_point` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Do what ``AGENTRL_FAULT`` asks at this point, if anything."""
    spec = os.environ.get("AGENTRL_FAULT")
    if not spec:
        return
    _hits[name] = _hits.get(name, 0) + 1
    for item in spec.split(","):
        target, _, action = item.strip().partition(":")
        point, _, nth = target.partition("@")
        if point != name or _hits[name] != int(nth or 1):
            continue
        if action in ("", "kill"):
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "term":
            os.kill(os.getpid(), signal.SIGTERM)
        elif action == "raise":
            raise OSError(f"injected fault at {name}")
        else:
            raise ValueError(f"AGENTRL_FAULT: unknown action {action!r} (kill, term or raise)")
