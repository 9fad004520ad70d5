"""A sandboxed Python executor for agent-written code.

Each call runs the code in a fresh interpreter (``python -I -S``: isolated mode, stdlib only, no
user site, ``PYTHON*`` variables ignored) in a new temporary scratch directory, with:

- resource limits, set by the child interpreter itself before the code is read (no
  ``preexec_fn``, which can deadlock a multi-threaded parent such as a trainer): CPU seconds
  (``RLIMIT_CPU``), address space (``RLIMIT_AS``: a memory bomb gets ``MemoryError``), file
  size (``RLIMIT_FSIZE``: output and scratch files), no core dumps; raising them again is
  refused (the hook below), which matters when the host runs as root;
- a wall-clock timeout; the whole process group is killed when it expires;
- no network: the interpreter runs in its own network namespace (``unshare -rn``, where user
  namespaces are allowed) so even 127.0.0.1 is unreachable; in addition, and as the only barrier
  where namespaces are unavailable, an audit hook refuses ``socket.*`` connect/bind/send events;
- writes only inside the scratch directory: the audit hook refuses ``open`` in a write mode, and
  remove/rename/mkdir/chmod-type events, for paths outside it; spawning processes
  (``os.system``, ``subprocess``, ``fork``, ``exec``) and ``ctypes`` are refused too;
- output (stdout and stderr together) goes to a file, not a pipe, so an output flood costs disk
  bounded by ``RLIMIT_FSIZE`` rather than host memory, and is truncated to ``max_output`` chars.

Audit hooks (PEP 578) are not a security boundary against a determined adversary inside
CPython; the rlimits and the network namespace are enforced by the kernel. Run untrusted
training jobs in a container as well.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass

# Installed before the agent's code runs. It reads the code from a file in the parent
# directory (so the code file is not writable from the sandbox), then executes it as __main__.
_BOOTSTRAP = r'''
import os, resource, sys
_cpu, _mem, _fsize = (int(v) for v in sys.argv[2:5])
# Hard CPU limit one second above the soft one: SIGXCPU first, then SIGKILL.
resource.setrlimit(resource.RLIMIT_CPU, (_cpu, _cpu + 1))
resource.setrlimit(resource.RLIMIT_AS, (_mem, _mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (_fsize, _fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
_SCRATCH = os.path.realpath(os.getcwd())
_CODE = open(sys.argv[1], encoding="utf-8").read()
sys.argv = ["<python>"]
_W = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                "os.symlink", "os.link", "os.truncate", "os.utime", "shutil.rmtree",
                "shutil.move", "shutil.copyfile", "os.mkfifo", "os.mknod"}
_BLOCKED = {"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
            "subprocess.Popen", "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.cdata",
            "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
            "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
            "os.chdir", "sys.addaudithook", "os.chroot", "os.setuid", "resource.setrlimit",
            "resource.prlimit"}
def _inside(p):
    if isinstance(p, int):
        return True  # an already-open descriptor: its path was checked when it was opened
    try:
        real = os.path.realpath(os.fsdecode(p))
    except Exception:
        return False
    return real == _SCRATCH or real.startswith(_SCRATCH + os.sep)
def _hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _W)
        if writing and path is not None and not _inside(path):
            raise PermissionError(f"sandbox: writing outside the scratch directory is not allowed: {path}")
    elif event in _PATH_EVENTS:
        for p in args[:2]:
            if isinstance(p, (str, bytes, os.PathLike)) and not _inside(p):
                raise PermissionError(f"sandbox: {event} outside the scratch directory is not allowed")
    elif event in _BLOCKED or event.startswith("socket.") and event != "socket.__new__":
        raise PermissionError(f"sandbox: {event} is not allowed (no network, no processes)")
    elif event == "import" and args[0] in ("ctypes", "_ctypes"):
        raise ImportError("sandbox: ctypes is not available")
sys.dont_write_bytecode = True  # stdlib imports must not try to write __pycache__
sys.addaudithook(_hook)
try:
    exec(compile(_CODE, "<python>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit:
    raise
except BaseException as _e:
    # The agent's traceback without this bootstrap's frames (they are all in "<string>").
    import traceback
    _tb = [f for f in traceback.extract_tb(_e.__traceback__) if f.filename != "<string>"]
    sys.stdout.flush()
    sys.stderr.write("Traceback (most recent call last):\n" + "".join(traceback.format_list(_tb))
                     + "".join(traceback.format_exception_only(type(_e), _e)))
    sys.exit(1)
'''


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


@functools.lru_cache(maxsize=1)
def network_namespace_available() -> bool:
    """Whether ``unshare -rn`` can run a process in a fresh user+network namespace here."""
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        r = subprocess.run([exe, "-rn", sys.executable, "-I", "-S", "-c", "pass"],
                           capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def run_python(code: str, *, timeout: float = 5.0, cpu_seconds: int = 3, memory_mb: int = 256,
               max_output: int = 2000, file_limit_kb: int = 1024,
               use_namespace: bool | None = None) -> SandboxResult:
    """Run ``code`` in a fresh sandboxed interpreter and return its output.

    Args:
        code: Python source (stdlib only); print() what should be seen.
        timeout: wall-clock seconds before the process group is killed.
        cpu_seconds: CPU-time limit (``RLIMIT_CPU``).
        memory_mb: address-space limit (``RLIMIT_AS``) in MiB.
        max_output: characters of output kept.
        file_limit_kb: largest file (including the output) the code may write, KiB.
        use_namespace: run in a fresh network namespace; None = when available.
    """
    if use_namespace is None:
        use_namespace = network_namespace_available()
    root = tempfile.mkdtemp(prefix="agentrl-sandbox-")
    try:
        scratch = os.path.join(root, "work")
        os.mkdir(scratch)
        code_path = os.path.join(root, "code.py")
        with open(code_path, "w", encoding="utf-8", errors="replace") as f:
            f.write(code)
        argv = [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, code_path, str(cpu_seconds),
                str(memory_mb << 20), str(file_limit_kb << 10)]
        if use_namespace:
            argv = [shutil.which("unshare") or "unshare", "-rn", *argv]  # as probed above
        env = {"PATH": "/usr/bin:/bin", "HOME": scratch, "TMPDIR": scratch, "LANG": "C.UTF-8"}
        out_path = os.path.join(root, "output.txt")
        timed_out = False
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=scratch,
                env=env, start_new_session=True, close_fds=True)
            try:
                code_rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                _kill_group(proc)
                code_rc = proc.wait()
        with open(out_path, "rb") as f:  # at most file_limit_kb, enforced by RLIMIT_FSIZE
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
        shutil.rmtree(root, ignore_errors=True)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
