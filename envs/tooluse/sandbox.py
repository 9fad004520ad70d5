"""A sandboxed Python executor for agent-written code, behind kernel boundaries.

Each call runs the code in a fresh interpreter (``python -I -S``: isolated mode, stdlib only)
started by `sandbox_init`, which puts it behind these mechanisms before the code is read:

- **namespaces**: new user, mount, pid, network, IPC, UTS and cgroup namespaces. The file system
  is a new root holding read-only bind mounts of the interpreter and shared libraries only, and
  ``/work``, a private tmpfs with a size and inode limit, the only writable place (``/tmp`` and
  ``/dev/shm`` point to it). The host's ``/home``, ``/root``, ``/tmp``, ``/proc`` and the run
  directory do not exist inside. The network namespace has no interfaces but a down loopback;
  the pid namespace holds only the code's own process, and everything in it dies with it;
- **an unprivileged user**: the namespace's root maps to an ordinary host user: ``nobody``
  (65534) when the trainer is root, else the trainer's own uid. So ``RLIMIT_NPROC`` binds
  (the kernel never applies it to host root), counted per sandbox;
- **seccomp**: a BPF filter refuses new processes (fork, vfork, clone other than a thread
  sharing the descriptor table), exec, sockets, mount/pivot_root/unshare/setns, ptrace,
  io_uring, bpf, keyrings, memfd_create, System V IPC, growing a pipe's buffer, raising rlimits
  and more (`sandbox_init.seccomp_program`); threads stay allowed;
- **no capabilities**, ``no_new_privs``;
- **rlimits**: CPU seconds (SIGKILL at the limit), address space (a memory bomb gets
  ``MemoryError``), file size, open files (256), tasks (64), no core dumps;
- **the IPC namespace's own limits**: no System V shared memory, message queues or semaphores;
- a **wall-clock timeout**: the namespace's pid 1 is killed by its host pid when it expires;
- **output caps**: stdout and stderr are a file on a tmpfs of its own, sized to the file-size
  limit (so neither writes nor ``fallocate`` take more) and truncated to ``max_output``
  characters; the code starts with no other descriptor (stdin is ``/dev/null``).

Every other kind of memory is bounded too: ``/work`` (and ``/dev/shm``) by ``disk_mb``; pipe
buffers by 64 KiB per pipe and 256 descriptors; kernel tasks by the 64-task limit.

It fails closed: where the kernel refuses a mechanism (user namespaces disabled, no seccomp, an
architecture without a syscall table here, a root trainer with no unprivileged uid to map the
sandbox's user to), `SandboxUnavailable` is raised with the fix, and no code runs.
`sandbox_problem` says up front whether the sandbox works on this machine.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

from agentrl.envs.tooluse import sandbox_init

_INIT = os.path.abspath(sandbox_init.__file__)
# What the interpreter needs to run (mounted read-only); the rest of the host stays invisible.
_SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                 "/etc/ld.so.cache", "/etc/localtime")


_RELAY_GRACE = 5.0  # seconds the first process gets to relay the output after a timeout


class SandboxUnavailable(RuntimeError):
    """The kernel boundary cannot be built on this machine; the message says why and what to do."""


@dataclass
class SandboxResult:
    """What a sandboxed run produced."""

    output: str  # stdout and stderr interleaved, truncated to max_output characters
    exit_code: int  # negative: killed by that signal
    timed_out: bool  # the wall-clock timeout fired
    truncated: bool  # output was longer than max_output
    output_limit_hit: bool = False  # the output file reached RLIMIT_FSIZE (writes then fail)

    def observation(self) -> str:
        """The result as observation text for the agent."""
        out = self.output.rstrip("\n")
        notes = []
        if self.truncated:
            notes.append("output truncated")
        if self.timed_out:
            notes.append("timed out: the wall-clock limit was reached and the process was killed")
        elif self.exit_code == -signal.SIGXCPU or self.exit_code == -signal.SIGKILL:
            notes.append("killed: the CPU-time limit was reached")
        elif self.output_limit_hit or self.exit_code == -signal.SIGXFSZ:
            # CPython ignores SIGXFSZ, so the over-limit write fails instead (exit code 120).
            notes.append("stopped: the output/file-size limit was reached")
        elif self.exit_code != 0:
            notes.append(f"exit code {self.exit_code}")
        if not out and not notes:
            return "(no output; use print() to show results)"
        return out + ("\n" if out and notes else "") + "".join(f"[{n}]" for n in notes)


def _python() -> str:
    # The real interpreter, not a venv's link to it: the sandbox mounts its prefix only.
    return os.path.realpath(sys.executable)


def _readonly_paths() -> list[str]:
    exe = _python()
    return [*_SYSTEM_PATHS, sys.base_prefix, sys.base_exec_prefix,
            os.path.dirname(os.path.dirname(exe))]


@functools.lru_cache(maxsize=1)
def sandbox_problem() -> str | None:
    """None when the sandbox works here, else why not and what to do (cached per process)."""
    arch = platform.machine()
    if sys.platform != "linux":
        return f"the python tool's sandbox needs Linux (namespaces, seccomp); this is {sys.platform}"
    try:
        sandbox_init.seccomp_program(arch)
    except ValueError as e:
        return f"the python tool's sandbox has no seccomp syscall table for this CPU: {e}"
    try:
        res = _run(["print(6 * 7)"][0], timeout=30, cpu_seconds=10, memory_mb=256, max_output=100,
                   file_limit_kb=64, disk_mb=1)
    except SandboxUnavailable as e:
        return str(e)
    if res.output.strip() != "42":
        return f"the python tool's sandbox started but did not run code: {res.output[:300]!r}"
    return None


def check_sandbox() -> None:
    """Raise `SandboxUnavailable` (with the fix) unless the sandbox works on this machine."""
    problem = sandbox_problem()
    if problem is not None:
        raise SandboxUnavailable(problem)


def run_python(code: str, *, timeout: float = 5.0, cpu_seconds: int = 3, memory_mb: int = 256,
               max_output: int = 2000, file_limit_kb: int = 1024, disk_mb: int = 16
               ) -> SandboxResult:
    """Run ``code`` in a fresh sandboxed interpreter and return its output.

    Args:
        code: Python source (stdlib only); print() what should be seen.
        timeout: wall-clock seconds before the sandbox is killed.
        cpu_seconds: CPU-time limit (``RLIMIT_CPU``).
        memory_mb: address-space limit (``RLIMIT_AS``) in MiB.
        max_output: characters of output kept.
        file_limit_kb: largest file (including the output) the code may write, KiB.
        disk_mb: size of the private writable directory ``/work`` (a tmpfs), MiB.

    Raises:
        SandboxUnavailable: the kernel refused a mechanism (nothing ran).
    """
    check_sandbox()
    return _run(code, timeout=timeout, cpu_seconds=cpu_seconds, memory_mb=memory_mb,
                max_output=max_output, file_limit_kb=file_limit_kb, disk_mb=disk_mb)


def _run(code: str, *, timeout: float, cpu_seconds: int, memory_mb: int, max_output: int,
         file_limit_kb: int, disk_mb: int) -> SandboxResult:
    root = tempfile.mkdtemp(prefix="agentrl-sandbox-")
    status_r, status_w = os.pipe()
    try:
        newroot = os.path.join(root, "root")  # an empty mount point, filled in the namespace
        os.mkdir(newroot)
        os.mkdir(os.path.join(root, "out"))  # the mount point of the code's output tmpfs
        code_path = os.path.join(root, "code.py")
        with open(code_path, "w", encoding="utf-8", errors="replace") as f:
            f.write(code)
        spec = {"code": code_path, "root": newroot, "out": os.path.join(root, "out"),
                "arch": platform.machine(),
                "status_fd": status_w, "readonly": _readonly_paths(),
                "cpu_seconds": int(cpu_seconds), "memory_bytes": int(memory_mb) << 20,
                "file_bytes": int(file_limit_kb) << 10, "disk_bytes": int(disk_mb) << 20,
                "inodes": 1024}
        env = {"PATH": "/usr/bin:/bin", "HOME": "/work", "TMPDIR": "/work", "LANG": "C.UTF-8"}
        out_path = os.path.join(root, "output.txt")
        timed_out = False
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [_python(), "-I", "-S", _INIT, json.dumps(spec)], stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, cwd="/", env=env, start_new_session=True,
                pass_fds=(status_w,))
            os.close(status_w)
            status_w = -1
            try:
                code_rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                code_rc = None
            status = _read_all(status_r)
            if timed_out:
                _kill(proc, status)
                code_rc = proc.wait()
        if "ready" not in status.split("\n"):
            err = next((ln[6:] for ln in status.split("\n") if ln.startswith("error ")),
                       f"exit code {code_rc}")
            with open(out_path, "rb") as f:
                err_out = f.read(2000).decode("utf-8", "replace").strip()
            raise SandboxUnavailable(
                f"the python tool's sandbox could not be built ({err}"
                + (f"; {err_out}" if err_out else "") + "). It needs Linux user namespaces "
                "(as root, or with kernel.unprivileged_userns_clone=1, user.max_user_namespaces "
                "> 0 and, on Ubuntu, kernel.apparmor_restrict_unprivileged_userns=0) and "
                "seccomp; a root trainer also needs CAP_SYS_ADMIN and CAP_SETUID (to map the "
                "sandbox's user to nobody); in a container, allow unshare/mount (e.g. docker "
                "--security-opt seccomp=unconfined --cap-add SYS_ADMIN) or run the env on the "
                "host")
        with open(out_path, "rb") as f:  # at most file_limit_kb: RLIMIT_FSIZE and the relay
            data = f.read()
        limit_hit = len(data) >= file_limit_kb << 10
        text = data.decode("utf-8", errors="replace")
        truncated = len(text) > max_output
        if truncated:
            # Keep the head and the tail: an error message is at the end of the output.
            tail = max_output // 3
            text = text[: max_output - tail] + "\n...\n" + text[-tail:]
        return SandboxResult(output=text, exit_code=code_rc, timed_out=timed_out,
                             truncated=truncated, output_limit_hit=limit_hit)
    finally:
        os.close(status_r)
        if status_w >= 0:
            os.close(status_w)
        shutil.rmtree(root, ignore_errors=True)


def _read_all(fd: int) -> str:
    """What the status pipe holds now (non-blocking: pid 1 may still be running)."""
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            b = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not b:
            break
        chunks.append(b)
    return b"".join(chunks).decode("utf-8", "replace")


def _kill(proc: subprocess.Popen, status: str) -> None:
    # pid 1 of the namespace by its host pid first: its death takes every process in the
    # namespace with it, even one that left the process group. The first process then relays
    # the output so far and exits; its whole group is killed if it does not within a moment.
    for line in status.split("\n"):
        if line.startswith("pid "):
            try:
                os.kill(int(line[4:]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
    try:
        proc.wait(timeout=_RELAY_GRACE)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
