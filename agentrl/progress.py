"""Progress for slow phases, and what to say when one is interrupted.

Every phase that can take more than a few seconds (generating games, collecting the tiny
tokenizer's corpus, starting a JVM or an engine) reports itself through `Progress`: a tqdm bar
on a terminal; on a pipe or a log file, plain ``[agentrl]`` lines (start with a time estimate,
then about every tenth of the work or 30 seconds, then the end), because a bar redrawn with
carriage returns interleaves with the per-iteration lines there.

`Progress` also records the phase it belongs to, so that Ctrl-C can say what was interrupted
and what was kept (`interrupted`): ``agentrl: interrupted while generating 200 TextWorld
games (57/200 done); kept: the 57 finished games in ~/.cache/agentrl/...``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

#: Phases in progress, innermost last: (description, what a Ctrl-C keeps).
_PHASES: list[tuple[str, Callable[[], str]]] = []


def is_terminal(stream: TextIO | None = None) -> bool:
    """Whether ``stream`` (default stderr) is an interactive terminal (bars redraw in place)."""
    stream = stream or sys.stderr
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


#: Set by the process env pool in each worker: the worker's index in its pool.
WORKER_ENV = "AGENTRL_WORKER"


def worker_index() -> int | None:
    """This process's index among its env pool's worker processes; None outside one. Env code
    announces per-process start-up work (a JVM) from worker 0 only: one line, not one per
    worker."""
    v = os.environ.get(WORKER_ENV, "")
    return int(v) if v.isdigit() else None


def say(msg: str) -> None:
    """One ``[agentrl]`` line on stderr, flushed (written above a live bar, if any)."""
    if is_terminal():
        from tqdm import tqdm

        tqdm.write(f"[agentrl] {msg}", file=sys.stderr)
    else:
        print(f"[agentrl] {msg}", file=sys.stderr, flush=True)


def one_line(text: object) -> str:
    """``text`` as one printable line: newlines and other control characters (a terminal
    escape in a hostile file's key) are shown escaped, as ``repr`` would."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def duration(seconds: float) -> str:
    """``75`` -> ``"1 min 15 s"``; rounded to what a person planning a coffee needs."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s" if s < 600 else f"{round(s / 60)} min"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class Progress:
    """Progress of ``total`` units of work in a named phase.

    Args:
        total: units of work (games, episodes).
        desc: what is being done, e.g. ``"generating 200 TextWorld games"``.
        unit: singular unit name for the bar (``"game"``).
        seconds_per_unit: a prior estimate (wall seconds per unit, all workers together) for
            the up-front time estimate; replaced by the measured rate as work completes.
        kept: called on Ctrl-C: what the interrupted phase leaves behind.
        enabled: False = silent (the phase is still recorded for Ctrl-C).

    Use as a context manager; call `update` per finished unit.
    """

    def __init__(self, total: int, desc: str, unit: str = "item",
                 seconds_per_unit: float | None = None, kept: Callable[[], str] | None = None,
                 enabled: bool = True) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.done = 0
        self.enabled = enabled
        self._prior = seconds_per_unit
        self._kept = kept or (lambda: "")
        self._bar: Any = None
        self._t0 = time.monotonic()
        self._last_line = self._t0
        self._last_done = 0

    def __enter__(self) -> Progress:
        _PHASES.append((self.desc, self._interrupt_note))
        self._t0 = self._last_line = time.monotonic()
        if not self.enabled:
            return self
        est = (f": about {duration(self._prior * self.total)}"
               if self._prior and self.total > 1 else "")
        if is_terminal():
            from tqdm import tqdm

            say(f"{self.desc}{est}")
            self._bar = tqdm(total=self.total, desc=f"  {self.desc.split(' (')[0]}",
                             unit=self.unit, leave=False, dynamic_ncols=True, file=sys.stderr)
        else:
            say(f"{self.desc}{est}")
        return self

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            return
        now = time.monotonic()
        step = max(1, self.total // 10)
        if self.done < self.total and (self.done - self._last_done >= step
                                       or now - self._last_line >= 30):
            self._last_line, self._last_done = now, self.done
            say(f"  {self.done}/{self.total} {self.unit}s, {duration(now - self._t0)} so far, "
                f"about {duration(self.remaining())} left")

    def remaining(self) -> float:
        """Estimated seconds left: the measured rate once there is one, else the prior."""
        left = self.total - self.done
        if self.done:
            return (time.monotonic() - self._t0) / self.done * left
        return (self._prior or 0.0) * left

    def _interrupt_note(self) -> str:
        what = f"{self.desc} ({self.done}/{self.total} done)"
        kept = self._kept()
        return f"{what}; kept: {kept}" if kept else what

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        # On Ctrl-C the phase stays recorded for the handler that reports it (`interrupted`).
        if exc_type is not KeyboardInterrupt and _PHASES and _PHASES[-1][1] == self._interrupt_note:
            _PHASES.pop()
        if self._bar is not None:
            self._bar.close()
        if self.enabled and exc_type is None and self.total > 1:
            say(f"  done: {self.total} {self.unit}s in {duration(time.monotonic() - self._t0)}")


class phase:  # noqa: N801 (used like a function: `with phase("starting the JVM"): ...`)
    """A phase without countable units: one line when it starts, recorded for Ctrl-C."""

    def __init__(self, desc: str, kept: Callable[[], str] | None = None,
                 announce: bool = True) -> None:
        self.desc, self._kept, self.announce = desc, kept or (lambda: ""), announce

    def _note(self) -> str:
        kept = self._kept()
        return f"{self.desc}; kept: {kept}" if kept else self.desc

    def __enter__(self) -> phase:
        _PHASES.append((self.desc, self._note))
        if self.announce:
            say(self.desc)
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not KeyboardInterrupt and _PHASES and _PHASES[-1][1] == self._note:
            _PHASES.pop()


def interrupted() -> str:
    """What the innermost running phase was doing and what it kept ('' if none)."""
    return _PHASES[-1][1]() if _PHASES else ""


def reset_phases() -> None:
    """Forget recorded phases (after an interrupt has been reported)."""
    _PHASES.clear()
