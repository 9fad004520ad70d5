"""Preemption and fault injection: the SIGTERM/SIGINT stop the trainer obeys, and the
``AGENTRL_FAULT`` hooks the kill/resume tests and the soak script use.

Preemption (`StopOnSignal`, `Interrupted`): the first SIGTERM or SIGINT (what SLURM and
Kubernetes send before killing a job, or Ctrl-C) lets the current iteration finish; the trainer
then writes a checkpoint and exits with `EXIT_INTERRUPTED` (75, "temporary failure": resume
later with ``agentrl train --resume RUN_DIR``, or under torchrun the ``agentrl launch`` command
rank 0 prints). A second signal exits at once, without a checkpoint.

Fault injection:

``AGENTRL_FAULT=point[@n][:action],...`` makes the n-th time (default: the first) the process
passes `fault_point(point)` do ``action``: ``kill`` (SIGKILL itself, the default), ``term``
(SIGTERM itself, as a scheduler's preemption would) or ``raise`` (an OSError). Points:
``checkpoint_write`` (half-way through writing a checkpoint), ``rollout``, ``update``,
``eval``, ``iteration_end``. Unset, `fault_point` costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

EXIT_INTERRUPTED = 75  # sysexits.h EX_TEMPFAIL: `agentrl train` after a SIGTERM/SIGINT stop


def resume_command(run_dir: str) -> str:
    """The command that continues ``run_dir`` as this process was launched: ``agentrl train
    --resume`` in one process; under torchrun, ``agentrl launch`` with this launch's process
    counts (and the alternatives: plain torchrun, or one process, since the checkpoint resumes
    on any number of ranks)."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1 or "RANK" not in os.environ:
        return f"agentrl train --resume {run_dir}"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)) or world)
    nodes = max(1, world // max(1, local))
    options = (f"--standalone --nproc_per_node={local}" if nodes == 1 else
               f"--nnodes={nodes} --nproc_per_node={local}")
    where = "" if nodes == 1 else " on every node, with its --node_rank and --rdzv_endpoint"
    return (f"agentrl launch {options} train --resume {run_dir}{where} (or: torchrun {options} "
            f"-m agentrl train --resume {run_dir}; in one process: agentrl train --resume "
            f"{run_dir} train.strategy=single)")


class Interrupted(Exception):
    """The run stopped on a signal after checkpointing; the message says how to continue (on
    rank 0 of a torchrun launch; the other ranks say that they stopped)."""

    exit_code = EXIT_INTERRUPTED

    def __init__(self, signum: int, iteration: int, checkpoint: str, run_dir: str) -> None:
        name = signal.Signals(signum).name
        rank = int(os.environ.get("RANK", "0") or 0)
        super().__init__(
            f"rank {rank} stopped by {name} after iteration {iteration} (rank 0 says how to "
            "continue)" if rank else
            f"stopped by {name} after iteration {iteration}; checkpoint {checkpoint}. Continue "
            f"with: {resume_command(run_dir)}")
        self.signum, self.iteration, self.checkpoint = signum, iteration, checkpoint


class StopOnSignal:
    """While installed (main thread only), the first SIGTERM/SIGINT sets ``signum`` for the
    training loop to act on at its next safe point; a second one kills the process at once
    with the signal's default action. `restore` puts the previous handlers back."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            self.restore()
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        print(f"\n[agentrl] {signal.Signals(signum).name}: finishing this iteration, then a "
              "checkpoint and exit (send it again to stop at once, without a checkpoint)",
              file=sys.stderr, flush=True)

    def restore(self) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old = {}


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
