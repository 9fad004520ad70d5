"""The python tool's sandbox limits, attacked: each test tries to take more of one resource than
the sandbox allows (disk, shared memory, tasks, descriptors, pipe buffers, time), and runs twice:
with the trainer as root and as an unprivileged user (``nobody``), because the kernel exempts
root from some limits. The README's Guarantees table cites these tests.

Every attack is bounded (a little more than the limit under test, never gigabytes), so a sandbox
that fails to enforce a limit fails its test without hurting the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

from agentrl.envs.tooluse import sandbox
from agentrl.envs.tooluse.sandbox import SandboxResult, run_python

_NOBODY = 65534
MiB = 1 << 20

# The trainer's side run as ``nobody``: sandbox.py and sandbox_init.py loaded by path (the
# package's other modules and the venv may not be readable by that user), run_python called with
# the JSON arguments, the result printed as JSON.
_DRIVER = textwrap.dedent("""
    import dataclasses, json, sys, types
    for name, path in (("agentrl", []), ("agentrl.envs", []), ("agentrl.envs.tooluse", [sys.argv[1]])):
        mod = types.ModuleType(name)
        mod.__path__ = path
        sys.modules[name] = mod
    from agentrl.envs.tooluse import sandbox
    kw = json.loads(sys.argv[2])
    print(json.dumps(dataclasses.asdict(sandbox.run_python(kw.pop("code"), **kw))))
    """)


def _drop_to_nobody() -> None:
    os.setgroups([])
    os.setresgid(_NOBODY, _NOBODY, _NOBODY)
    os.setresuid(_NOBODY, _NOBODY, _NOBODY)


def _interpreter_for_nobody() -> str | None:
    """A Python that ``nobody`` can start (this one may live under root's home)."""
    for exe in (os.path.realpath(sys.executable),
                shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if not exe:
            continue
        try:
            subprocess.run([exe, "-I", "-S", "-c", "pass"], preexec_fn=_drop_to_nobody,
                           capture_output=True, timeout=60, check=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        return exe
    return None


@pytest.fixture(params=["root", "nobody"])
def run_as(request):
    """``run_as(code, **limits) -> SandboxResult`` with the trainer running as root or nobody."""
    if sys.platform != "linux":
        pytest.skip("the sandbox is Linux-only")
    if request.param == "root":
        if os.geteuid() != 0:
            pytest.skip("the trainer is not root here; the root case runs where tests run as root")
        return run_python
    if os.geteuid() != 0:
        return run_python  # already unprivileged
    exe = _interpreter_for_nobody()
    if exe is None:
        pytest.skip("no Python interpreter that uid 65534 can start")
    src = os.path.dirname(os.path.abspath(sandbox.__file__))

    def run(code: str, **kw) -> SandboxResult:
        r = subprocess.run([exe, "-I", "-S", "-c", _DRIVER, src, json.dumps({"code": code, **kw})],
                           preexec_fn=_drop_to_nobody, capture_output=True, text=True,
                           timeout=kw.get("timeout", 5) + 60, cwd="/", env={"PATH": "/usr/bin:/bin"})
        assert r.returncode == 0, (r.stdout, r.stderr)
        return SandboxResult(**json.loads(r.stdout.strip().splitlines()[-1]))

    return run


def attack(run_as, code: str, *, ctypes_prelude: bool = False, **kw) -> dict[str, int]:
    """Run ``code`` (which prints ``name number`` lines) with generous time limits; the numbers."""
    kw = {"timeout": 60, "cpu_seconds": 20, "max_output": 20000, **kw}
    res = run_as((_CTYPES if ctypes_prelude else "") + textwrap.dedent(code), **kw)
    assert not res.timed_out and res.exit_code == 0, res
    return {k: int(v) for k, v in re.findall(r"^(\w+) (-?\d+)$", res.output, re.M)}


_CTYPES = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
"""


def test_disk_through_inherited_descriptors_and_fallocate(run_as) -> None:
    """Every descriptor the code starts with, and every file it can create, lives on a
    size-limited tmpfs of the sandbox: fallocate (which RLIMIT_FSIZE does not cover with
    FALLOC_FL_KEEP_SIZE) on stdout/stderr or a scratch file takes at most that tmpfs' size."""
    out = attack(run_as, ctypes_prelude=True, code="""
        want = 8 << 20  # more than the output (64 KiB) and /work (2 MiB) limits
        for fd in range(256):
            try:
                os.fstat(fd)
            except OSError:
                continue
            vfs = os.statvfs(fd)
            print(f"fs_{fd}", vfs.f_blocks * vfs.f_frsize)
            libc.fallocate(fd, 1, 0, want)  # FALLOC_FL_KEEP_SIZE
            libc.fallocate(fd, 0, 0, want)
            print(f"held_{fd}", os.fstat(fd).st_blocks * 512)
        fd = os.open("/work/big", os.O_RDWR | os.O_CREAT)
        libc.fallocate(fd, 1, 0, want)
        print("held_work", os.fstat(fd).st_blocks * 512)
        """, file_limit_kb=64, disk_mb=2)
    assert set(k for k in out if k.startswith("fs_")) == {"fs_0", "fs_1", "fs_2"}, out
    assert out["fs_1"] <= 1 * MiB and out["fs_2"] <= 1 * MiB, out  # not the host's disk
    assert out["held_1"] <= 128 << 10 and out["held_2"] <= 128 << 10, out
    assert out["held_work"] <= 2 * MiB, out


def test_system_v_shared_memory_and_message_queues(run_as) -> None:
    """The IPC namespace's own limits (and seccomp) leave System V IPC nothing to allocate:
    segments and queues that would outlive a munmap, beyond RLIMIT_AS, are refused."""
    out = attack(run_as, ctypes_prelude=True, code="""
        libc.shmat.restype = ctypes.c_void_p
        shm = 0
        for _ in range(24):  # 24 x 8 MiB = 192 MiB, past the 128 MiB address-space limit
            sid = libc.shmget(0, 8 << 20, 0o1600)  # IPC_PRIVATE, IPC_CREAT | 0600
            if sid < 0:
                break
            addr = libc.shmat(sid, None, 0)
            if addr in (None, ctypes.c_void_p(-1).value):
                break
            ctypes.memset(addr, 1, 8 << 20)
            libc.shmdt(ctypes.c_void_p(addr))  # detached, the segment stays
            shm += 8 << 20
        print("shm_bytes", shm)
        msg, buf = 0, ctypes.create_string_buffer(8 + 8192)
        ctypes.memmove(buf, (1).to_bytes(8, "little"), 8)
        for _ in range(4096):  # 4096 queues x 16 KiB = 64 MiB
            qid = libc.msgget(0, 0o1600)
            if qid < 0:
                break
            while libc.msgsnd(qid, buf, 8192, 0o4000) == 0:  # IPC_NOWAIT
                msg += 8192
        print("msg_bytes", msg)
        """, memory_mb=128)
    assert out["shm_bytes"] + out["msg_bytes"] <= 8 * MiB, out


def test_posix_shared_memory_and_memfd(run_as) -> None:
    """/dev/shm is the sandbox's size-limited /work tmpfs, and memfd_create (in-memory files
    outside any mount's size limit, RLIMIT_FSIZE each, as many as descriptors) is refused."""
    out = attack(run_as, ctypes_prelude=True, code="""
        held = 0
        for i in range(40):  # 40 x 1 MiB files, past the 16 MiB tmpfs
            try:
                with open(f"/dev/shm/x{i}", "wb") as f:
                    held += f.write(b"x" * (1 << 20))
            except OSError:
                break
        print("shm_dir_bytes", held)
        memfd = 0
        for i in range(192):  # 192 x 1 MiB (the per-file limit), past the 128 MiB address space
            try:
                fd = os.memfd_create(f"m{i}")
                memfd += os.write(fd, b"x" * (1 << 20))
                libc.fallocate(fd, 1, 0, 16 << 20)  # FALLOC_FL_KEEP_SIZE
            except OSError:
                break
        print("memfd_bytes", memfd)
        """, memory_mb=128, disk_mb=16, file_limit_kb=1024)
    assert out["shm_dir_bytes"] <= 16 * MiB and out["memfd_bytes"] == 0, out


def test_tasks_through_raw_clone_and_threads(run_as) -> None:
    """RLIMIT_NPROC binds the sandbox's user (an unprivileged host uid, also when the trainer
    is root), so neither raw clone() threads with tiny stacks nor Python threads get past it;
    fork and process clones are refused by seccomp."""
    out = attack(run_as, ctypes_prelude=True, code="""
        import threading, time
        flags = 0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000  # VM FS FILES SIGHAND THREAD SYSVSEM
        fn = ctypes.cast(libc.pause, ctypes.c_void_p)
        stacks, raw = [], 0
        for _ in range(300):
            st = ctypes.create_string_buffer(16384)
            stacks.append(st)
            if libc.clone(fn, ctypes.c_void_p(ctypes.addressof(st) + 16384 - 64), flags, None) < 0:
                break
            raw += 1
        print("raw_clone", raw)
        threading.stack_size(32768)
        py = 0
        try:
            for _ in range(300):
                threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
                py += 1
        except RuntimeError:
            pass
        print("threads", py)
        forks = 0
        for _ in range(5):
            try:
                if os.fork() == 0:
                    os._exit(0)
                forks += 1
            except OSError:
                pass
        print("forks", forks)
        import sys; sys.stdout.flush(); os._exit(0)
        """, memory_mb=256)
    assert out["raw_clone"] + out["threads"] <= 64 and out["forks"] == 0, out


def test_descriptors(run_as) -> None:
    """Only stdin (/dev/null), stdout and stderr are open when the code starts; RLIMIT_NOFILE
    caps the descriptor table, and there is only one table: seccomp refuses a thread clone
    without CLONE_FILES, which would copy the table (pinning every open file) into a new one."""
    out = attack(run_as, ctypes_prelude=True, code="""
        def is_open(fd):
            try:
                os.fstat(fd)
                return True
            except OSError:
                return False
        print("inherited", sum(is_open(fd) for fd in range(3, 4096)))
        opened = []
        try:
            for _ in range(5000):
                opened.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        print("opened", len(opened))
        for fd in opened[200:]:
            os.close(fd)
        flags = 0x100 | 0x200 | 0x800 | 0x10000  # VM FS SIGHAND THREAD, no FILES: a table copy
        fn = ctypes.cast(libc.pause, ctypes.c_void_p)
        stacks, pinned = [], 0
        for _ in range(4):
            st = ctypes.create_string_buffer(16384)
            stacks.append(st)
            if libc.clone(fn, ctypes.c_void_p(ctypes.addressof(st) + 16384 - 64), flags, None) < 0:
                break
            pinned += 200
        print("pinned", pinned)
        import sys; sys.stdout.flush(); os._exit(0)
        """)
    assert out["inherited"] == 0 and out["opened"] <= 256 and out["pinned"] == 0, out


def test_pipe_buffers(run_as) -> None:
    """Pipe buffers are kernel memory outside RLIMIT_AS: F_SETPIPE_SZ is refused (seccomp), so
    a pipe holds the default 64 KiB and RLIMIT_NOFILE bounds the number of pipes."""
    out = attack(run_as, """
        import fcntl, os
        held = 0
        for _ in range(48):  # 48 x 1 MiB asked for
            r, w = os.pipe()
            try:
                fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
            except OSError:
                pass
            os.set_blocking(w, False)
            try:
                while True:
                    held += os.write(w, b"x" * 65536)
            except BlockingIOError:
                pass
        print("pipe_bytes", held)
        """)
    assert out["pipe_bytes"] <= 8 * MiB, out


def test_time(run_as) -> None:
    """CPU time across all threads (RLIMIT_CPU, SIGKILL) and wall-clock time (the whole pid
    namespace killed): both end the run, whoever runs the trainer."""
    t = time.monotonic()
    spin = "def spin():\n    while True:\n        pass\n"
    res = run_as("import threading\n" + spin + "for _ in range(2):\n    threading.Thread("
                 "target=spin).start()\n", timeout=60, cpu_seconds=1)
    assert not res.timed_out and res.exit_code == -9 and "CPU-time" in res.observation(), res
    res = run_as("import time\nprint('started', flush=True)\ntime.sleep(600)", timeout=2)
    assert res.timed_out and "started" in res.output, res
    assert time.monotonic() - t < 45
