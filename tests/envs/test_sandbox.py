"""The python tool's sandbox as an attacker sees it: each test is an escape attempt that must be
refused, and names the mechanism that refuses it (the README's Guarantees table cites them).

The attacks use ctypes to call the kernel directly, so no Python-level check is in the way: what
stops them is the mount/pid/network namespaces, the seccomp filter, dropped capabilities and
rlimits set up by ``sandbox_init``.
"""

from __future__ import annotations

import os
import platform
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from agentrl.envs.tooluse import sandbox, sandbox_init
from agentrl.envs.tooluse.sandbox import SandboxUnavailable, run_python

_COL = sandbox_init._ARCHES[platform.machine()][0]
NR = {name: nrs[_COL] for name, nrs in sandbox_init._DENY.items()}
NR.update(clone=sandbox_init._CLONE[_COL], prlimit64=sandbox_init._PRLIMIT64[_COL],
          prctl=sandbox_init._PRCTL[_COL], clone3=sandbox_init._CLONE3[_COL],
          openat=257 if _COL == 0 else 56, kill=62 if _COL == 0 else 129)

# Prepended to each attack: raw syscalls through ctypes, printing "name errno" per attempt.
PRELUDE = textwrap.dedent(f"""
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    NR = {NR!r}
    def sys_(name, *args):
        r = libc.syscall(NR[name], *args)
        return 0 if r >= 0 else ctypes.get_errno()
    def report(label, err):
        print(label, errno.errorcode.get(err, err))
    """)


def attack(code: str, **kw) -> str:
    # Generous limits: a loaded CI machine must not turn a refusal test into a timeout.
    kw = {"timeout": 60, "cpu_seconds": 20, **kw}
    res = run_python(PRELUDE + textwrap.dedent(code), max_output=20000, **kw)
    assert not res.timed_out and res.exit_code >= 0, res
    return res.output


def results(output: str) -> dict[str, str]:
    return dict(re.findall(r"^(\S+) (E[A-Z]+|0)$", output, re.M))


def test_ctypes_writes_outside_are_refused(tmp_path) -> None:
    """Mount namespace: the host's directories are not in the sandbox's view, and the system
    directories that are (/usr, /lib, the Python prefix) are read-only bind mounts."""
    target = tmp_path / "evil.txt"
    out = attack(f"""
        flags = os.O_WRONLY | os.O_CREAT
        for label, path in (("host_tmp", {str(target)!r}), ("usr", "/usr/evil"),
                            ("etc", "/etc/evil"), ("root", "/evil"),
                            ("prefix", {sys.base_prefix + "/evil"!r})):
            report(label, sys_("openat", -100, path.encode(), flags, 0o644))
        report("work", sys_("openat", -100, b"/work/ok", flags, 0o644))
        """)
    r = results(out)
    assert r == {"host_tmp": "ENOENT", "usr": "EROFS", "etc": "EROFS", "root": "EROFS",
                 "prefix": "EROFS", "work": "0"}, out
    assert not target.exists()
    assert not os.path.exists("/usr/evil") and not os.path.exists(sys.base_prefix + "/evil")


def test_host_secrets_are_not_readable(tmp_path) -> None:
    """Mount namespace: no host /tmp, /root, /home, /proc or run directory inside; a search of
    every file the sandbox can see finds no trace of a secret planted on the host."""
    token = f"SECRET-{os.getpid()}-{time.time_ns()}"
    secret = tmp_path / "secret.txt"
    secret.write_text(token)
    out = attack(f"""
        for label, path in (("direct", {str(secret)!r}), ("proc_root", "/proc/1/root" + {str(secret)!r}),
                            ("self_root", "/proc/self/root" + {str(secret)!r}),
                            ("environ", "/proc/1/environ"), ("shadow", "/etc/shadow"),
                            ("cwd", {os.getcwd() + "/README.md"!r})):
            try:
                print(label, "READ", open(path).read()[:100])
            except OSError as e:
                report(label, e.errno)
        print("listing", sorted(os.listdir("/")), flush=True)
        hits = 0
        for top in ("/work", "/tmp", "/etc", "/dev", "/home"):  # not the interpreter's prefix
            for d, _, files in os.walk(top):
                for f in files:
                    try:
                        with open(os.path.join(d, f), "rb") as fh:
                            hits += {token!r}.encode() in fh.read(1 << 20)
                    except OSError:
                        pass
        print("hits", hits)
        """)
    assert token not in out.replace(f"{token!r}", ""), out
    r = results(out)
    assert all(r[k] == "ENOENT" for k in ("direct", "proc_root", "self_root", "environ",
                                          "shadow", "cwd")), out
    assert "hits 0" in out
    listing = re.search(r"listing (.*)", out).group(1)
    for absent in ("'proc'", "'sys'", "'home'", "'var'", "'opt'"):
        assert absent not in listing, listing


def test_proc_tricks_are_refused() -> None:
    """No /proc is mounted; mounting one, or any file system, is refused by seccomp (mount is
    on the deny list) and by the missing CAP_SYS_ADMIN."""
    out = attack("""
        for label, path in (("self_mem", "/proc/self/mem"), ("self_root", "/proc/self/root/etc"),
                            ("init_root", "/proc/1/root/etc"), ("self_fd", "/proc/self/fd/1")):
            try:
                open(path, "rb")
                print(label, 0)
            except OSError as e:
                report(label, e.errno)
        os.makedirs("/work/p", exist_ok=True)
        report("mount_proc", libc.mount(b"proc", b"/work/p", b"proc", 0, None) and ctypes.get_errno())
        report("mount_syscall", sys_("mount", b"proc", b"/work/p", b"proc", 0, None))
        """)
    r = results(out)
    assert r == {"self_mem": "ENOENT", "self_root": "ENOENT", "init_root": "ENOENT",
                 "self_fd": "ENOENT", "mount_proc": "EPERM", "mount_syscall": "EPERM"}, out


def test_no_network_even_through_raw_syscalls() -> None:
    """seccomp refuses socket() (and socketpair); behind it the network namespace has no route
    to the host: nothing reaches a listener on the host's loopback."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0.5)
    port = server.getsockname()[1]
    try:
        out = attack(f"""
            report("inet", sys_("socket", 2, 1, 0))
            report("inet6", sys_("socket", 10, 1, 0))
            report("unix", sys_("socket", 1, 1, 0))
            report("netlink", sys_("socket", 16, 3, 0))
            pair = (ctypes.c_int * 2)()
            report("socketpair", sys_("socketpair", 1, 1, 0, pair))
            import socket
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1)
                print("CONNECTED")
            except OSError as e:
                report("connect", e.errno)
            """)
        with pytest.raises(socket.timeout):
            server.accept()
    finally:
        server.close()
    r = results(out)
    assert r == {"inet": "EPERM", "inet6": "EPERM", "unix": "EPERM", "netlink": "EPERM",
                 "socketpair": "EPERM", "connect": "EPERM"}, out


def test_no_new_processes_or_programs() -> None:
    """seccomp: fork, vfork, clone without CLONE_THREAD, execve and execveat are refused
    however they are reached (os, subprocess internals, raw syscalls); clone3 gets ENOSYS."""
    out = attack("""
        report("fork", sys_("fork"))
        report("vfork", sys_("vfork")) if NR["vfork"] else None
        report("clone_process", sys_("clone", 17, 0, 0, 0, 0))  # SIGCHLD: a fork
        report("clone_newuser", sys_("clone", 0x10000000 | 0x00010000 | 0x800 | 0x100, 0, 0, 0, 0))
        report("clone3", sys_("clone3", 0, 0))
        argv = (ctypes.c_char_p * 2)(b"/bin/sh", None)
        report("execve", sys_("execve", b"/bin/sh", argv, None))
        report("execveat", sys_("execveat", -100, b"/bin/sh", argv, None, 0))
        import _posixsubprocess, subprocess
        for label, fn in (("os_fork", os.fork), ("os_exec", lambda: os.execv("/bin/sh", ["sh"])),
                          ("posix_spawn", lambda: os.posix_spawn("/bin/sh", ["sh"], {})),
                          ("subprocess", lambda: subprocess.run(["/bin/true"]))):
            try:
                fn()
                print(label, 0)
            except OSError as e:
                report(label, e.errno)
        import threading
        t = threading.Thread(target=lambda: print("thread", 0))
        t.start(); t.join()
        """)
    r = results(out)
    want = {"fork": "EPERM", "clone_process": "EPERM", "clone_newuser": "EPERM",
            "clone3": "ENOSYS", "execve": "EPERM", "execveat": "EPERM", "os_fork": "EPERM",
            "os_exec": "EPERM", "posix_spawn": "EPERM", "subprocess": "EPERM", "thread": "0"}
    if NR["vfork"]:
        want["vfork"] = "EPERM"
    assert r == want, out


def test_fork_bomb_and_thread_bomb_are_contained() -> None:
    """A fork bomb dies at its first fork (seccomp); a thread bomb is bounded by the address
    space (every thread stack counts) and RLIMIT_NPROC, and the run ends on its own."""
    t = time.monotonic()
    res = run_python("import os\nwhile True:\n    os.fork()", timeout=10)
    assert res.exit_code == 1 and "PermissionError" in res.output, res.output
    res = run_python(textwrap.dedent("""
        import threading, time
        n = 0
        try:
            while True:
                threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
                n += 1
        except (RuntimeError, MemoryError) as e:
            print("stopped after", n, type(e).__name__, flush=True)
        import os
        os._exit(0)
        """), timeout=20)
    assert "stopped after" in res.output and not res.timed_out, res.output
    assert int(re.search(r"stopped after (\d+)", res.output).group(1)) < 1000
    assert time.monotonic() - t < 30


def test_symlink_races_stay_inside(tmp_path) -> None:
    """Symlinks resolve in the sandbox's own root (mount namespace), so links to host paths
    point at nothing; /work is a tmpfs inside the namespace that the host never traverses, so a
    link swapped during clean-up cannot redirect the host either."""
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    out = attack(f"""
        import threading
        os.symlink({str(secret)!r}, "/work/s")
        os.symlink({str(victim)!r}, "/work/v")
        os.symlink("/", "/work/rootlink")
        stop = False
        def flip():  # swap a link between a harmless file and the target as fast as possible
            open("/work/benign", "w").write("benign")
            while not stop:
                for tgt in ("/work/benign", {str(victim)!r}):
                    try:
                        os.symlink(tgt, "/work/race.tmp")
                        os.rename("/work/race.tmp", "/work/race")
                    except OSError:
                        pass
        th = threading.Thread(target=flip); th.start()
        writes = reads = 0
        for _ in range(2000):
            try:
                with open("/work/race", "a") as f:
                    f.write("PWNED")
                    writes += 1
            except OSError:
                pass
        stop = True; th.join()
        for label, path in (("via_link", "/work/s"), ("via_root", "/work/rootlink" + {str(secret)!r})):
            try:
                print(label, "READ", open(path).read())
            except OSError as e:
                report(label, e.errno)
        try:
            open("/work/v", "w").write("PWNED")
            print("victim 0")
        except OSError as e:
            report("victim", e.errno)
        # Leave links behind for the host's clean-up to trip over.
        os.symlink({str(tmp_path)!r}, "/work/cleanup_bait")
        print("writes", writes)
        """)
    assert "TOPSECRET" not in out, out
    r = results(out)
    assert r["via_link"] == "ENOENT" and r["via_root"] == "ENOENT" and r["victim"] == "ENOENT"
    assert victim.read_text() == "original" and secret.read_text() == "TOPSECRET"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret.txt", "victim.txt"]


def test_huge_outputs_and_disk_floods_are_bounded(tmp_path) -> None:
    """RLIMIT_FSIZE caps the output file (and any one file); the private /work tmpfs has a size
    and an inode limit, so filling it ends in ENOSPC instead of filling the host's disk."""
    res = run_python("while True: print('x' * 1000)", timeout=10, max_output=500,
                     file_limit_kb=64)
    assert res.truncated and len(res.output) <= 520
    assert "file-size limit" in res.observation() or res.timed_out
    out = attack("""
        # Past the end of the output file: still RLIMIT_FSIZE.
        os.lseek(1, 1 << 30, 0)
        try:
            os.write(1, b"x")
            print("seek_write 0")
        except OSError as e:
            os.lseek(1, 0, 2)
            report("seek_write", e.errno)
        n = 0
        try:
            while True:  # many files just under the per-file limit
                with open(f"/work/f{n}", "wb") as f:
                    f.write(b"x" * 60000)
                n += 1
        except OSError as e:
            report("disk_fill", e.errno)
        print("files", n)
        m = 0
        try:
            while True:
                open(f"/work/i{m}", "w").close()
                m += 1
        except OSError as e:
            report("inode_fill", e.errno)
        """, file_limit_kb=64, disk_mb=2)
    r = results(out)
    assert r["seek_write"] == "EFBIG" and r["disk_fill"] == "ENOSPC", out
    assert r["inode_fill"] == "ENOSPC", out
    files = int(re.search(r"files (\d+)", out).group(1))
    assert files * 60000 <= 2 << 20


def test_killing_the_host_is_impossible() -> None:
    """Pid namespace: no host process is visible, so a kill of the host's pids (the trainer,
    the relaying parent, a sibling) fails with ESRCH; kill(-1) reaches nothing outside."""
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = attack(f"""
            report("ppid_is", os.getppid())
            report("kill_host", sys_("kill", {os.getpid()}, 9))
            report("kill_sibling", sys_("kill", {sibling.pid}, 9))
            report("kill_all", sys_("kill", -1, 9))
            report("kill_group", sys_("kill", -{os.getpgrp()}, 9))
            report("pdeathsig", sys_("prctl", 1, 0, 0, 0, 0))  # outlive the parent
            print("pid", os.getpid())
            """)
        time.sleep(0.2)
        assert sibling.poll() is None  # still running
    finally:
        sibling.kill()
        sibling.wait()
    r = results(out)
    assert r["kill_host"] == "ESRCH" and r["kill_sibling"] == "ESRCH", out
    assert r["kill_group"] == "ESRCH" and r["pdeathsig"] == "EPERM", out
    assert "pid 1" in out and "ppid_is 0" in out  # alone in its pid namespace


def test_privileged_kernel_interfaces_are_refused() -> None:
    """seccomp refuses namespace, root-changing, tracing, io_uring, BPF, keyring and
    module syscalls, and raising (or lowering) an rlimit; no capability is left either."""
    out = attack("""
        lim = (ctypes.c_uint64 * 2)(1 << 40, 1 << 40)
        old = (ctypes.c_uint64 * 2)()
        report("prlimit_set", sys_("prlimit64", 0, 9, lim, None))  # RLIMIT_AS
        report("prlimit_get", sys_("prlimit64", 0, 9, None, old))
        report("setrlimit", sys_("setrlimit", 9, lim))
        report("unshare_user", sys_("unshare", 0x10000000))
        report("setns", sys_("setns", 0, 0))
        report("chroot", sys_("chroot", b"/work"))
        report("pivot_root", sys_("pivot_root", b"/work", b"/work"))
        report("ptrace", sys_("ptrace", 16, 1, 0, 0))  # PTRACE_ATTACH
        report("process_vm_readv", sys_("process_vm_readv", 1, 0, 0, 0, 0, 0))
        report("io_uring_setup", sys_("io_uring_setup", 8, ctypes.create_string_buffer(120)))
        report("bpf", sys_("bpf", 0, 0, 0))
        report("keyctl", sys_("keyctl", 0, 0))
        report("init_module", sys_("init_module", 0, 0, b""))
        report("open_by_handle_at", sys_("open_by_handle_at", 3, 0, 0))
        report("mknod", libc.mknod(b"/work/sda", 0o60600, 0x800) and ctypes.get_errno())
        caps = (ctypes.c_uint32 * 6)()
        libc.capget((ctypes.c_uint32 * 2)(0x20080522, 0), caps)
        print("caps", sum(caps))
        for fd in range(3, 64):
            try:
                os.fstat(fd)
                print("open_fd", fd)
            except OSError:
                pass
        """)
    r = results(out)
    assert r.pop("prlimit_get") == "0", out  # reading a limit still works
    assert r.pop("mknod") == "EPERM", out  # no CAP_MKNOD
    assert r.pop("caps") == "0" and "open_fd" not in out, out  # no capability, no stray fd
    assert set(r.values()) == {"EPERM"} and len(r) == 13, out


def test_cpu_memory_and_wall_clock_limits() -> None:
    """RLIMIT_CPU (SIGKILL at the limit), RLIMIT_AS (MemoryError) and the wall-clock timeout."""
    res = run_python("while True: pass", timeout=30, cpu_seconds=1)
    assert not res.timed_out and res.exit_code == -signal.SIGKILL, res
    assert "CPU-time limit" in res.observation()
    for code in ("x = bytearray(4 * 1024**3)", "x = [0] * 10**9", "s = 'a' * 10**10"):
        res = run_python(code, memory_mb=256)
        assert res.exit_code == 1 and "MemoryError" in res.output, (code, res.output)
    t = time.monotonic()
    res = run_python("import time\nwhile True: time.sleep(0.05)", timeout=1.0)
    assert time.monotonic() - t < 5
    assert res.timed_out and "timed out" in res.observation()


# Runs SCRIPT in a user namespace (mapping root, and nobody when there is one to map) where no
# further user namespace may be created: the parent writes the maps, the child sets the sysctl.
_NO_USERNS = """
import ctypes, os, sys
(r, w), (r2, w2) = os.pipe(), os.pipe()
pid = os.fork()
if pid == 0:
    assert ctypes.CDLL(None).unshare(0x10000000) == 0
    os.write(w2, b"u")
    os.read(r, 1)
    open("/proc/sys/user/max_user_namespaces", "w").write("0")
    os.execv(sys.executable, [sys.executable, "-c", sys.argv[1]])
os.read(r2, 1)  # the child's user namespace exists
maps = "0 0 1\\n65534 65534 1" if os.geteuid() == 0 else f"0 {os.geteuid()} 1"
if os.geteuid() != 0:
    open(f"/proc/{pid}/setgroups", "w").write("deny")
open(f"/proc/{pid}/uid_map", "w").write(maps)
open(f"/proc/{pid}/gid_map", "w").write(maps.replace(str(os.geteuid()), str(os.getegid())))
os.write(w, b"go")
sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_fails_closed_when_the_kernel_refuses_namespaces() -> None:
    """With user namespaces forbidden (max_user_namespaces=0 in an enclosing namespace), no code
    runs: SandboxUnavailable names the sysctls to check."""
    script = ("from agentrl.envs.tooluse.sandbox import run_python, SandboxUnavailable\n"
              "try:\n    run_python('print(1)')\n    print('RAN')\n"
              "except SandboxUnavailable as e:\n    print('REFUSED', e)\n")
    r = subprocess.run([sys.executable, "-c", _NO_USERNS, script], capture_output=True,
                       text=True, timeout=60)
    assert "REFUSED" in r.stdout and "RAN" not in r.stdout, (r.stdout, r.stderr)
    assert "unshare(user" in r.stdout and "max_user_namespaces" in r.stdout, r.stdout


def test_fails_closed_when_root_has_no_unprivileged_uid_to_map() -> None:
    """A root trainer whose user namespace maps only root (``unshare -r``) has no unprivileged
    uid for the sandbox's user, which would then be root on the host, outside RLIMIT_NPROC:
    no code runs."""
    if os.geteuid() != 0:
        pytest.skip("the trainer is not root here")
    script = ("from agentrl.envs.tooluse.sandbox import run_python, SandboxUnavailable\n"
              "try:\n    run_python('print(1)')\n    print('RAN')\n"
              "except SandboxUnavailable as e:\n    print('REFUSED', e)\n")
    r = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", script],
                       capture_output=True, text=True, timeout=60)
    assert "REFUSED" in r.stdout and "RAN" not in r.stdout, (r.stdout, r.stderr)
    assert "65534 (nobody) is not mapped" in r.stdout, r.stdout


def test_fails_closed_on_an_architecture_without_a_syscall_table(monkeypatch) -> None:
    monkeypatch.setattr(sandbox.platform, "machine", lambda: "sparc64")
    sandbox.sandbox_problem.cache_clear()
    try:
        with pytest.raises(SandboxUnavailable, match="no seccomp syscall table"):
            run_python("print(1)")
    finally:
        sandbox.sandbox_problem.cache_clear()


@pytest.mark.parametrize("header, col", [
    ("/usr/include/x86_64-linux-gnu/asm/unistd_64.h", 0),
    ("/usr/include/asm-generic/unistd.h", 1),
])
def test_syscall_numbers_match_the_kernel_headers(header: str, col: int) -> None:
    if not os.path.exists(header):
        pytest.skip(f"{header} not installed (linux-libc-dev); the numbers are checked where it is")
    text = open(header).read()
    names = {**sandbox_init._DENY, "clone": sandbox_init._CLONE, "clone3": sandbox_init._CLONE3,
             "prlimit64": sandbox_init._PRLIMIT64, "prctl": sandbox_init._PRCTL,
             "fcntl": sandbox_init._FCNTL}
    for name, nrs in names.items():
        m = re.search(rf"#define __NR(?:3264)?_{name}\s+(\d+)", text)
        assert (int(m.group(1)) if m else None) == nrs[col], name
