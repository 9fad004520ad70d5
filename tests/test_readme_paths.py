"""The README's multi-agent, scale-out and learner-scaling commands, as written there, at a small
budget: each one ends without a traceback and never goes quiet for more than 30 s. Those this
machine cannot run by design (CUDA, vLLM, a Ray cluster, servers on other machines) stop at once
with one line naming the fix and exit status 2.

The commands are read from the README's ``bash`` blocks in those sections, so the test follows
the README; a command that none of the rules below knows fails the test until it is added here.
Each runs as a subprocess of ``bash`` in a scratch directory holding ``configs/`` (so ``runs/``
lands there and the README's ``runs/...`` paths mean the runs made here), with its output read
line by line as it comes (``\\r`` progress updates count as lines: that is what a user sees).

Budgets: ``agentrl train`` gets ``TRAIN_BUDGET`` appended (its overrides win over the config's);
``agentrl eval`` gets ``--seeds 0-3`` after the README's own ``--seeds`` (argparse keeps the
last); ``torchrun`` and ``agentrl launch`` start at most `MAX_RANKS` ranks. ``agentrl launch``'s
torchrun options are written ``--option=value`` in the README: the first word after ``launch``
without a leading ``-`` is the agentrl command. Runs an ``agentrl eval`` command reads
(``runs/NAME``) are trained first from ``configs/NAME.yaml`` at the same budget when no earlier
command made them; a config whose ``policy.model`` is another run's checkpoint starts from
that run's latest checkpoint.

Not run: Ray's own CLI (``ray start`` would start daemons on this shared machine, ``ray stop``
stops every Ray instance on it) and ``vllm serve`` (a GPU server); for those the test checks
what the README's recipe relies on instead.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
#: the README sections (headings starting so) whose commands this file runs
SECTIONS = ("Multi-agent games", "Scale out", "Scaling the learner")
MAX_SILENCE = 30.0  # seconds without a new output line
HARD_LIMIT = 300.0  # seconds before a command is killed and the test fails
TRAIN_BUDGET = [
    "train.iterations=1",
    "rollout.group_size=2",
    "eval.episodes=2",
    "eval.before_training=false",
    "policy.tiny_corpus_episodes=4",
]
EVAL_BUDGET = ["--seeds", "0-3"]
#: torchrun ranks at most: the README's 8-rank recipe is for an 8-GPU node; 8 ranks on 2 cores
#: spend ~25 s importing torch, one after the other, before any rank can print a line.
MAX_RANKS = max(2, os.cpu_count() or 2)
#: placeholders in the README's commands -> what they stand for here. CONFIG: a config other
#: than the quickstart (a multi-agent one, so DDP also covers self-play). The multi-node line
#: (``--nnodes=N --node_rank=R --rdzv_endpoint=HOST:29500 ...``) becomes one node of one,
#: rendezvous on this machine, at a free port, running the quickstart with DDP on 2 ranks
#: (``{rest}``: the rest of the command in the launcher's own form).
PLACEHOLDERS = [
    (r"(?<=\s)CONFIG(?=\s)", "configs/tictactoe_selfplay.yaml"),
    (r"--nnodes=N\b", "--nnodes=1"),
    (r"--node_rank=R\b", "--node_rank=0"),
    (r"--rdzv_endpoint=HOST:\d+", "--rdzv_endpoint=127.0.0.1:{port}"),
    (r"(?<=\s)\.\.\.$", "--nproc_per_node=2 {rest}"),
]
REST = {"torchrun": "-m agentrl train train.strategy=ddp",
        "launch": "train train.strategy=ddp"}


# ---------------------------------------------------------------------------- the README


def _sections(text: str) -> dict[str, list[str]]:
    """Heading -> its lines (up to the next heading; ``#`` lines inside code blocks are not
    headings)."""
    out: dict[str, list[str]] = {}
    current, fenced = "", False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            current = line.lstrip("#").strip()
            out[current] = []
            continue
        out.setdefault(current, []).append(line)
    return out


def _shell_commands(lines: list[str]) -> list[str]:
    """The commands of the ``bash`` blocks among ``lines``: continuation lines joined, trailing
    comments dropped, and a command quoted in a comment (``# several machines: torchrun ...``)
    kept."""
    cmds: list[str] = []
    block: list[str] | None = None
    for line in lines:
        if line.startswith("```"):
            if block is None and line.strip() in ("```bash", "```sh", "```shell"):
                block = []
            elif block is not None:
                cmds += _join(block)
                block = None
        elif block is not None:
            block.append(line)
    return cmds


def _join(block: list[str]) -> list[str]:
    cmds, pending = [], ""
    for raw in block:
        line = raw.strip()
        if line.startswith("#"):
            quoted = re.search(r":\s+((?:agentrl|torchrun|python3?) .*)$", line)
            if quoted:
                cmds.append(quoted.group(1).strip())
            continue
        line = re.sub(r"\s+#\s.*$", "", line)
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        if pending + line:
            cmds.append((pending + line).strip())
        pending = ""
    return cmds


def readme_commands() -> list[tuple[str, str]]:
    """(section, command) for every command of the README's sections in `SECTIONS`."""
    with open(README, encoding="utf-8") as f:
        sections = _sections(f.read())
    return [
        (title, cmd)
        for title, lines in sections.items()
        if title.startswith(SECTIONS)
        for cmd in _shell_commands(lines)
    ]


COMMANDS = readme_commands()


# ---------------------------------------------------------------------------- running one


@dataclass
class Ran:
    rc: int
    out: str
    longest_silence: float
    seconds: float
    lines: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    venv_bin = os.path.dirname(sys.executable)
    return {
        **os.environ,
        "PATH": venv_bin + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",  # this machine's view: a CPU one, as the README's
        "HF_HUB_OFFLINE": "1",  # the GPU configs name hub models: never download them
        # ray.address=auto must never join a Ray instance of another job on this machine
        "RAY_ADDRESS": f"127.0.0.1:{_free_port()}",
        "PET_MASTER_PORT": str(_free_port()),
    }  # torchrun's default port may be taken


def run_shell(cmd: str, cwd: str) -> Ran:
    """Run ``cmd`` with bash in ``cwd``; its merged output, exit status and the longest time
    without a new output line (start to first line and last line to exit included)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["bash", "-c", cmd],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    assert proc.stdout is not None
    stamps: list[float] = [t0]
    chunks: list[bytes] = []

    def read() -> None:
        fd = proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            data = os.read(fd, 65536)
            if not data:
                return
            chunks.append(data)
            now = time.monotonic()
            stamps.extend(now for _ in range(data.count(b"\n") + data.count(b"\r")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=HARD_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = -9
    reader.join(timeout=10)
    end = time.monotonic()
    times = [*stamps, end]
    out = b"".join(chunks).decode(errors="replace")
    return Ran(
        rc,
        out,
        max(b - a for a, b in zip(times, times[1:])),
        end - t0,
        [ln for ln in re.split(r"[\r\n]+", out) if ln.strip()],
    )


def _check_quiet_and_clean(cmd: str, ran: Ran) -> None:
    print(
        f"{cmd}\n  -> exit {ran.rc} in {ran.seconds:.0f} s, longest silence "
        f"{ran.longest_silence:.1f} s"
    )
    assert ran.rc != -9, f"killed after {HARD_LIMIT:.0f} s: {cmd}\n{ran.out[-3000:]}"
    assert ran.longest_silence <= MAX_SILENCE, (
        f"{ran.longest_silence:.0f} s without output: {cmd}\n{ran.out[-3000:]}"
    )


# ---------------------------------------------------------------------------- the plan


@dataclass
class Step:
    shell: str  # what runs
    agentrl: list[str]  # the agentrl argv within it (after ``agentrl`` / ``-m agentrl``)
    nproc: int = 1  # torchrun ranks per node (1: no torchrun)
    launcher: str = ""  # "torchrun", "launch" (agentrl launch) or "" (one process)


def _launcher(cmd: str) -> str:
    return "launch" if cmd.startswith("agentrl launch ") else \
        "torchrun" if cmd.startswith("torchrun ") else ""


def _substitute(cmd: str) -> str:
    port, rest = _free_port(), REST.get(_launcher(cmd), "")
    for pattern, repl in PLACEHOLDERS:
        cmd = re.sub(pattern, repl.format(port=port, rest=rest), cmd)
    left = [t for t in shlex.split(cmd) if re.fullmatch(r"[A-Z]{2,}", t)]
    assert not left, f"placeholder {left[0]} in the README command {cmd!r}: map it in PLACEHOLDERS"
    return cmd


def plan(cmd: str) -> Step:
    """The small-budget form of an ``agentrl``, ``agentrl launch`` or ``torchrun -m agentrl``
    command."""
    cmd, launcher = _substitute(cmd), _launcher(cmd)
    words = shlex.split(cmd)
    if launcher == "launch":  # torchrun's options as --option=value, then the agentrl command
        at = next(i for i, w in enumerate(words) if i > 1 and not w.startswith("-"))
    elif launcher == "torchrun" and "-m" in words and words[words.index("-m") + 1] == "agentrl":
        at = words.index("-m") + 2
    elif words[0] == "agentrl":
        at = 1
    else:
        raise AssertionError(f"no rule for the README command {cmd!r}: add one to this test")
    nproc = next((int(w.split("=")[1]) for w in words[:at] if w.startswith("--nproc_per_node=")),
                 1)
    if nproc > MAX_RANKS:  # ranks beyond the cores only queue up to import torch
        cmd = cmd.replace(f"--nproc_per_node={nproc}", f"--nproc_per_node={MAX_RANKS}")
        words, nproc = shlex.split(cmd), MAX_RANKS
    argv = words[at:]
    if argv[0] == "train":
        budget = [*TRAIN_BUDGET, f"rollout.groups={max(2, nproc)}"]  # whole groups per rank
    elif argv[0] == "eval":
        budget = EVAL_BUDGET
    else:
        raise AssertionError(f"no budget for `agentrl {argv[0]}` ({cmd!r}): add one to this test")
    return Step(cmd + " " + shlex.join(budget), argv + budget, nproc, launcher)


def cannot_run_here(step: Step) -> str | None:
    """Why a train command cannot run on this machine by design, from its resolved config
    (None: it should run)."""
    if step.agentrl[0] != "train":
        return None
    from agentrl.config import ConfigError, load_config
    from agentrl.models import device_problem
    from agentrl.policies import backend_class

    args = step.agentrl[1:]
    config = args[0] if args and args[0].endswith((".yaml", ".yml")) else None
    overrides = args[1:] if config else args
    try:
        cfg = load_config(os.path.join(REPO, config) if config else None, overrides)
    except ConfigError as e:
        return f"config error: {e}"
    p = cfg.policy
    if device_problem(p.device):
        return f"policy.device={p.device}"
    if backend_class(p.backend).unavailable():
        return f"policy.backend={p.backend} is not installed"
    if cfg.env.pool == "ray" and cfg.ray.address:
        return f"ray.address={cfg.ray.address}: a Ray cluster"
    if p.backend == "vllm_server" and p.servers:
        return f"policy.servers={p.servers}: servers on other machines"
    return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A scratch directory with the repository's configs: the README's ``configs/...`` and
    ``runs/...`` paths resolve here."""
    d = tmp_path_factory.mktemp("readme")
    os.symlink(os.path.join(REPO, "configs"), d / "configs")
    return str(d)


def ensure_run(name: str, cwd: str) -> None:
    """Train ``runs/NAME`` from ``configs/NAME.yaml`` at the small budget unless it exists."""
    if os.path.isdir(os.path.join(cwd, "runs", name)):
        return
    import yaml

    config = f"configs/{name}.yaml"
    assert os.path.exists(os.path.join(REPO, config)), f"runs/{name}: no {config} to make it"
    with open(os.path.join(REPO, config), encoding="utf-8") as f:
        model = str((yaml.safe_load(f).get("policy") or {}).get("model", ""))
    extra = []
    if model.startswith("runs/"):  # a later stage, from an earlier run's checkpoint
        base = model.split("/")[1]
        ensure_run(base, cwd)
        ckpts = os.path.join(cwd, "runs", base, "checkpoints")
        latest = max(os.listdir(ckpts), key=lambda s: int(s.split("_")[1]))
        extra = [f"policy.model=runs/{base}/checkpoints/{latest}/model"]
    cmd = shlex.join(["agentrl", "train", config, *TRAIN_BUDGET, "rollout.groups=2", *extra])
    ran = run_shell(cmd, cwd)
    _check_quiet_and_clean(cmd, ran)
    assert ran.rc == 0 and "Traceback" not in ran.out, f"{cmd}\n{ran.out[-3000:]}"


# ---------------------------------------------------------------------------- the tests


def test_the_readme_sections_have_their_commands() -> None:
    """The parser finds the commands (a renamed section or a new fence style would leave this
    file testing nothing)."""
    found = {title.split(":")[0] for title, _ in COMMANDS}
    assert {"Multi-agent games", "Scale out", "Scaling the learner"} <= found
    text = " ".join(cmd for _, cmd in COMMANDS)
    for needle in (
        "agentrl train configs/tictactoe_selfplay.yaml",
        "agentrl eval",
        "--elo",
        "agentrl launch --standalone --nproc_per_node=2 train",
        "agentrl launch --nnodes=N --node_rank=R --rdzv_endpoint=HOST:29500 ...",
        "--rdzv_endpoint",
        "policy.backend=vllm_server",
        "ray start --head",
    ):
        assert needle in text, needle


def _external(cmd: str) -> bool:
    return cmd.startswith("ray ") or " vllm serve " in f" {cmd} "


def _id(cmd: str) -> str:
    return re.sub(r"[^\w.=-]+", "_", cmd)[:70]


@pytest.mark.parametrize("cmd", [c for _, c in COMMANDS if not _external(c)], ids=_id)
def test_readme_command_runs_or_refuses_in_one_line(cmd: str, workdir: str) -> None:
    step = plan(cmd)
    for name in re.findall(r"(?<![\w/])runs/([\w.-]+)", cmd) if step.agentrl[0] == "eval" else []:
        ensure_run(name, workdir)
    why = cannot_run_here(step)
    ran = run_shell(step.shell, workdir)
    _check_quiet_and_clean(step.shell, ran)
    if why is None:
        assert ran.rc == 0, f"exit {ran.rc}: {step.shell}\n{ran.out[-3000:]}"
        assert "Traceback" not in ran.out, ran.out[-5000:]
        return
    # By design not runnable here: every process says why in one line, and stops.
    errors = [ln for ln in ran.lines if re.match(r"agentrl( \w+)?: ", ln)]
    assert errors and len(set(errors)) == 1, f"({why}) {step.shell}\n{ran.out[-3000:]}"
    assert not re.search(rf'File "{re.escape(REPO)}/(?!\.venv)', ran.out), ran.out[-5000:]
    if step.nproc == 1:
        assert ran.rc == 2, f"exit {ran.rc} ({why}): {step.shell}\n{ran.out[-3000:]}"
        assert "Traceback" not in ran.out, ran.out[-5000:]
        assert len(errors) == 1
        assert [ln for ln in ran.lines if not ln.startswith("[agentrl]")] == errors
        return
    if step.launcher == "launch":
        # agentrl launch exits 2 as its ranks do, without a traceback. Each rank says why; one
        # that torchrun stopped (SIGTERM) once another had refused may not have said it yet.
        assert ran.rc == 2, f"exit {ran.rc} ({why}): {step.shell}\n{ran.out[-3000:]}"
        assert "Traceback" not in ran.out, ran.out[-5000:]
        assert 1 <= ran.out.count(errors[0][:60]) <= step.nproc, ran.out[-5000:]
        return
    # Under torchrun every rank stops with the same line and status 2; torchrun then prints
    # its own failure summary (its ChildFailedError traceback, which no rank can suppress)
    # and exits 1, its convention for any rank that did not exit 0.
    assert ran.rc == 1, f"exit {ran.rc} ({why}): {step.shell}\n{ran.out[-3000:]}"
    # the ranks share the console, so two ranks' lines can run together: count the message
    assert ran.out.count(errors[0][:60]) == step.nproc, ran.out[-5000:]
    assert "exitcode: 2" in ran.out and "ChildFailedError" in ran.out, ran.out[-5000:]
    assert ran.out.count("Traceback") == 1 and not re.search(r"\[rank\d+\]: Traceback", ran.out)


@pytest.mark.parametrize("cmd", [c for _, c in COMMANDS if _external(c)], ids=_id)
def test_readme_external_command_fits_the_recipe(cmd: str) -> None:
    """Ray's CLI and ``vllm serve`` are not agentrl's and are not run here; what the recipe
    needs of them is checked instead."""
    words = shlex.split(cmd)
    recipe = " ".join(c for _, c in COMMANDS)
    if words[0] == "ray":
        # `ray` comes with the ray extra, the one env.pool=ray needs (installed by the tests'
        # command: a missing one fails here, not skips)
        import ray  # noqa: F401
        assert os.path.exists(os.path.join(os.path.dirname(sys.executable), "ray"))
        if words[1:2] == ["start"] and any(w.startswith("--address=") for w in words):
            port = re.search(r"--address=\S+:(\d+)", cmd).group(1)  # type: ignore[union-attr]
            assert f"--port={port}" in recipe, "workers join the head's port"
        return
    # vllm serve: the two things the vllm_server backend relies on, and the name it asks for
    assert "VLLM_SERVER_DEV_MODE=1" in cmd and "--logprobs-mode processed_logprobs" in cmd
    name = words[words.index("--served-model-name") + 1]
    assert f"policy.served_model={name}" in recipe
    port = words[words.index("--port") + 1]
    assert re.search(rf"policy\.servers=\[[^\]]*:{port}\b", recipe)


# ---------------------------------------------------------------------------- the fixes


def test_a_cuda_device_on_a_machine_without_one_is_named() -> None:
    import torch

    from agentrl.models import device_problem

    assert device_problem("cpu") is None and device_problem("auto") is None
    if torch.cuda.is_available():
        assert "cuda:99" in device_problem("cuda:99")  # type: ignore[operator]
    else:
        assert "policy.device=cpu" in device_problem("cuda")  # type: ignore[operator]


def test_groups_that_do_not_split_across_ranks_are_a_launch_error(monkeypatch: Any) -> None:
    from agentrl import collectives
    from agentrl.learn.distributed import LaunchError, groups_per_rank

    monkeypatch.setattr(collectives, "world_size", lambda: 8)
    with pytest.raises(LaunchError, match="multiple of 8") as e:
        groups_per_rank(2)
    assert e.value.exit_code == 2


def test_a_ray_address_without_a_cluster_is_refused_at_once(monkeypatch: Any) -> None:
    from agentrl.envpool.ray import ClusterError, _check_reachable

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    t0 = time.monotonic()
    with pytest.raises(ClusterError, match="ray start --head") as e:
        _check_reachable(f"127.0.0.1:{_free_port()}")
    assert e.value.exit_code == 2 and time.monotonic() - t0 < 20


def test_unreachable_generation_servers_are_refused_at_once() -> None:
    from agentrl.policies.vllm_server import ServerUnreachable, check_servers

    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(ServerUnreachable, match="vllm serve") as e:
        check_servers([url], timeout=5)
    assert e.value.exit_code == 2 and url in str(e.value)


def test_alfworld_data_path_from_an_unset_variable_is_a_preflight_error() -> None:
    import alfworld  # noqa: F401  (the alfworld extra: a missing one fails, not skips)

    from agentrl.config import load_config
    from agentrl.run.preflight import PreflightError, prepare_env_data

    cfg = load_config(
        None, ["env.id=agentrl/ALFWorld-v0", "env.kwargs.data_path=$AGENTRL_TEST_UNSET_DATA"]
    )
    with pytest.raises(PreflightError, match=r"\$AGENTRL_TEST_UNSET_DATA is not set"):
        prepare_env_data(cfg)
