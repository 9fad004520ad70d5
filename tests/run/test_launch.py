"""``agentrl launch``: torchrun's agent in agentrl's process, exiting with the ranks' own status.

A real 2-rank launch of the tiny quickstart is SIGTERMed (the launcher only, as Kubernetes does)
after its first iteration: it must exit 75 without a traceback, leave a checkpoint, and the
command rank 0 prints must finish the run. Plain ``torchrun`` exits 1 with its SignalException
traceback there. The exit-status rules themselves are checked on made-up ranks' statuses.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading

import pytest

from agentrl.run import checkpoint
from agentrl.run.launch import SHUTDOWN_TIMEOUT, launch_exit_code

AGENTRL = [sys.executable, "-m", "agentrl"]  # `agentrl` of this interpreter
TINY = ["rollout.groups=2", "rollout.group_size=2", "eval.episodes=2",
        "eval.before_training=false", "log.progress=false", "log.tensorboard=false",
        "train.checkpoint_every=1", "policy.tiny_corpus_episodes=4"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}


def sigterm_after_first_iteration(cmd: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``cmd``; SIGTERM it (it alone) once an iteration line is out; (status, output)."""
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: list[str] = []
    first = threading.Event()

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith("[it "):
                first.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert first.wait(timeout), "".join(lines)[-3000:]
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return code, "".join(lines)


def test_a_preempted_launch_exits_75_and_resumes_with_the_command_it_prints(tmp_path) -> None:
    run = tmp_path / "run"
    code, out = sigterm_after_first_iteration(
        [*AGENTRL, "launch", "--standalone", "--nproc_per_node=2", "train",
         "train.strategy=fsdp", "train.iterations=50", f"output_dir={tmp_path}", "run_name=run",
         *TINY])
    assert code == 75, out[-5000:]
    assert "Traceback" not in out, out[-5000:]
    assert "rank 1 stopped by SIGTERM" in out and "agentrl launch: the ranks wrote" in out
    stopped = int(re.search(r"stopped by SIGTERM after iteration (\d+);", out).group(1))
    assert checkpoint.checkpoint_iteration(checkpoint.latest(str(run))) == stopped
    # rank 0's resume command, as printed, for one more iteration
    resume = re.search(r"Continue with: (agentrl launch .*? train --resume \S+)", out).group(1)
    assert resume == f"agentrl launch --standalone --nproc_per_node=2 train --resume {run}"
    argv = [*AGENTRL, *shlex.split(resume)[1:], f"train.iterations={stopped + 1}"]
    done = subprocess.run(argv, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert checkpoint.checkpoint_iteration(checkpoint.latest(str(run))) == stopped + 1


@pytest.mark.parametrize(("codes", "expected"), [
    ({}, 0),  # every rank exited 0 (torchrun lists only failures)
    ({0: 0, 1: 0}, 0),
    ({0: 75, 1: 75}, 75),  # preempted: every rank checkpointed
    ({0: 2, 1: 2}, 2),  # every rank refused the config and said why
    ({0: 3, 1: 3}, 3),  # non-finite updates
    ({0: 130, 1: 130}, 130),  # interrupted while setting up
    ({0: 2, 1: -15}, 2),  # torchrun SIGTERMed rank 1 once rank 0 had refused
    ({0: -15, 1: 75}, 75),  # ... or rank 0 once rank 1 had checkpointed and left
    ({0: 2, 1: 1}, 1),  # mixed: a crash beside a refusal
    ({0: 75, 1: 1}, 1),
    ({0: 75, 1: 2}, 1),
    ({0: 75, 1: None}, 1),  # rank 1 killed before it could say (SIGKILL after the timeout)
    ({0: -15, 1: -15}, 1),  # SIGTERMed by someone else, no stop of agentrl's own
    ({0: 1, 1: 1}, 1),
    ({0: -9, 1: -15}, 1),  # the OOM killer
])
def test_the_exit_status_is_the_one_every_failed_rank_agrees_on(codes: dict, expected: int
                                                                  ) -> None:
    assert launch_exit_code(codes) == expected


def test_torchrun_options_then_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentrl.run.launch import _torchrun_args

    monkeypatch.delenv("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", raising=False)

    args = _torchrun_args(["--standalone", "--nproc_per_node", "2", "--max-restarts=0", "train",
                           "configs/x.yaml", "--resume", "runs/x", "a.b=1"])
    assert args.standalone and args.nproc_per_node == "2" and args.module
    assert (args.training_script, args.training_script_args) == (
        "agentrl", ["train", "configs/x.yaml", "--resume", "runs/x", "a.b=1"])
    assert args.shutdown_timeout == SHUTDOWN_TIMEOUT  # not torchrun's 30 s: an iteration fits
    assert _torchrun_args(["--shutdown-timeout=45", "train"]).shutdown_timeout == 45


@pytest.mark.parametrize(("argv", "says"), [
    (["--standalone", "--nproc_per_node=2"], "name the command to run"),
    (["--nproc_per_node=2", "-m", "agentrl", "train"], "drop -m"),
    (["--nproc_per_node=2", "eval", "runs/x"], "'eval' is not a command agentrl launch runs"),
])
def test_a_launch_without_an_agentrl_command_is_one_line(argv: list[str], says: str,
                                                          capsys: pytest.CaptureFixture) -> None:
    from agentrl.cli import main

    assert main(["launch", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("agentrl launch: ") and says in err, err
