"""``agentrl launch``: ``agentrl train`` on several processes, with torchrun's own elastic agent
run inside this process, so that how the ranks ended decides the launcher's exit status::

    agentrl launch [TORCHRUN OPTIONS] train [CONFIG] [OVERRIDES...] [--resume RUN_DIR]
    agentrl launch --standalone --nproc_per_node=2 train configs/quickstart.yaml train.strategy=fsdp

Everything before ``train`` is torchrun's (parsed by ``torch.distributed.run``'s own parser:
``--nnodes``, ``--node_rank``, ``--rdzv_endpoint``, ``--local-ranks-filter``, ...); everything
from ``train`` on is the command each rank runs as ``python -m agentrl train ...``.

Plain ``torchrun`` exits 1 with its ``ChildFailedError`` traceback whenever a rank exits non-zero,
and with a ``SignalException`` traceback when it is itself stopped by a signal, so a scheduler
cannot tell a preempted run (every rank checkpointed) from a crash. `launch_exit_code` maps the
ranks' exit statuses instead:

- every rank 0: 0;
- the failed ranks all ended with the same one of agentrl's own stops (`STOPS`: 75 preempted
  with a checkpoint, 2 refused to start, 3 non-finite updates, 130 interrupted while setting up),
  each rank having said why: that status, with no traceback (75 adds one line);
- anything else: 1, with torchrun's failure summary.

A SIGTERM or SIGINT to the launcher is forwarded to every rank by the agent, once; the ranks
finish their iteration, write a checkpoint and exit 75. The agent SIGKILLs ranks still running
``--shutdown-timeout`` seconds after forwarding; agentrl launch makes that `SHUTDOWN_TIMEOUT`
(torchrun's default is 30 s, often shorter than an iteration plus a checkpoint).

How the agent reports a stop by a signal leaves out the ranks' statuses, so each rank writes its
own into the directory named by ``AGENTRL_LAUNCH_STATUS`` (`note_exit`) as it exits.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping

STATUS_DIR = "AGENTRL_LAUNCH_STATUS"  # environment: where each rank writes its exit status
#: seconds between forwarding a signal to the ranks and SIGKILLing those still running: long
#: enough to finish an iteration and write a checkpoint; the scheduler's own deadline (SLURM's
#: KillWait, Kubernetes' terminationGracePeriodSeconds) still ends everything at its time
SHUTDOWN_TIMEOUT = 600
#: agentrl's own ends, which every rank reaches together and explains in its own output: 2
#: refused to start, 3 non-finite updates, 75 preempted after a checkpoint, 130 interrupted
#: while setting up
STOPS = frozenset({2, 3, 75, 130})
COMMANDS = ("train",)  # the agentrl commands that run on several ranks
USAGE = "agentrl launch [TORCHRUN OPTIONS] train [CONFIG] [OVERRIDES...] [--resume RUN_DIR]"


def launch_exit_code(codes: Mapping[int, int | None]) -> int:
    """The launcher's exit status from its ranks' (rank -> exit status; negative: killed by
    that signal; None: no status known, killed). Ranks killed by SIGTERM are left out when others
    failed on their own: torchrun's agent stops the ranks still running that way as soon as one
    rank exits non-zero, so they say nothing about how the run ended."""
    failed = [c for c in codes.values() if c != 0]
    if not failed:
        return 0
    own = {c for c in failed if c != -signal.SIGTERM}
    if len(own) == 1 and next(iter(own)) in STOPS:
        return next(iter(own))
    return 1


def note_exit(code: int) -> None:
    """Under agentrl launch, write this rank's exit status for the launcher (which does not
    see it when it was itself stopped by a signal); elsewhere nothing."""
    folder = os.environ.get(STATUS_DIR)
    if not folder or not os.path.isdir(folder):
        return
    try:
        with open(os.path.join(folder, os.environ.get("LOCAL_RANK", "0")), "w") as f:
            f.write(str(code))
    except OSError:
        pass  # the launcher then counts this rank as killed: no worse than not knowing


def launch_main(argv: list[str]) -> int:
    """``agentrl launch ARGV``: run the ranks, then exit as `launch_exit_code` says."""
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: {USAGE}\n  e.g. agentrl launch --standalone --nproc_per_node=2 train "
              "train.strategy=fsdp\n\nRuns an agentrl command on several processes with torchrun's "
              "agent in this process and exits with the ranks' own status (0, 2, 3, 75, 130; "
              "1 for anything else). TORCHRUN OPTIONS are torchrun's own (torchrun --help).")
        return 0 if argv else 2
    args = _torchrun_args(argv)
    if isinstance(args, str):
        print(f"agentrl launch: {args}", file=sys.stderr)
        return 2
    options = argv[:len(argv) - len(args.training_script_args)]
    folder = tempfile.mkdtemp(prefix="agentrl-launch-")
    os.environ[STATUS_DIR] = folder  # the ranks inherit it
    try:
        codes, summary, signum = _run_ranks(args, folder)
    except KeyboardInterrupt:  # before the agent took over the signals (rendezvous)
        print("agentrl launch: interrupted while starting the ranks", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        os.environ.pop(STATUS_DIR, None)
    code = launch_exit_code(codes)
    if code == 75:
        print("agentrl launch: the ranks wrote their checkpoint and stopped (exit 75); continue "
              f"with: agentrl launch {shlex.join(options)} train --resume RUN_DIR (the run "
              "directory rank 0 named above)", file=sys.stderr)
    elif code == 1 and signum:
        print(f"agentrl launch: stopped by {signal.Signals(signum).name}, and not every rank "
              "stopped with a checkpoint (a second signal, or one while the ranks were setting "
              f"up, stops them at once); their output is above:\n{summary}", file=sys.stderr)
    elif code == 1:
        print(f"agentrl launch: the ranks failed; their output is above.\n{summary}",
              file=sys.stderr)
    return code


def _torchrun_args(argv: list[str]) -> argparse.Namespace | str:
    """torchrun's own arguments for running ``python -m agentrl COMMAND ...`` on each rank, or
    what is wrong with ``argv`` (one line)."""
    from torch.distributed.run import get_args_parser

    if all(a.startswith("-") for a in argv):
        return f"name the command to run after torchrun's options: {USAGE}"
    parser = get_args_parser()
    parser.prog, parser.usage = "agentrl launch", USAGE
    args = parser.parse_args(argv)  # a bad option: argparse's own message, exit 2
    if args.module or args.no_python or args.run_path:
        return ("agentrl launch runs `python -m agentrl COMMAND` on each rank itself: drop -m, "
                f"--no-python and --run-path ({USAGE})")
    if args.training_script not in COMMANDS:
        return (f"{args.training_script!r} is not a command agentrl launch runs on several "
                f"ranks ({', '.join(COMMANDS)}): {USAGE}")
    args.training_script_args = [args.training_script, *args.training_script_args]
    args.training_script, args.module = "agentrl", True
    if getattr(args, "shutdown_timeout", None) is None and \
            "TORCH_ELASTIC_SHUTDOWN_TIMEOUT" not in os.environ:
        args.shutdown_timeout = SHUTDOWN_TIMEOUT
    return args


def _run_ranks(args: argparse.Namespace, folder: str
               ) -> tuple[dict[int, int | None], str, int | None]:
    """Run the ranks with torchrun's agent: (rank -> exit status of the failed ranks, torchrun's
    failure summary, the signal that stopped the launcher or None)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import determine_local_world_size, run

    names = getattr(args, "signals_to_handle", "SIGTERM,SIGINT,SIGHUP,SIGQUIT").split(",")
    handled = [getattr(signal, s.strip()) for s in names if hasattr(signal, s.strip())]
    previous = {s: signal.getsignal(s) for s in handled}
    try:
        run(args)
        return {}, "", None
    except ChildFailedError as e:  # a rank exited non-zero; the agent stopped the others
        return {r: f.exitcode for r, f in e.failures.items()}, e.format_msg(), None
    except SignalException as e:  # forwarded to the ranks; they have exited or been killed
        nproc = determine_local_world_size(args.nproc_per_node)
        codes = {r: _noted(folder, r) for r in range(nproc)}
        summary = "\n".join(f"  local rank {r}: " + (f"exit {c}" if c is not None else
                                                     "killed (no exit status)")
                            for r, c in codes.items())
        return codes, summary, int(e.sigval)
    finally:
        for s, h in previous.items():  # the agent's handlers raise SignalException
            signal.signal(s, h)


def _noted(folder: str, local_rank: int) -> int | None:
    """The exit status rank ``local_rank`` wrote with `note_exit`, or None."""
    try:
        with open(os.path.join(folder, str(local_rank))) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None

