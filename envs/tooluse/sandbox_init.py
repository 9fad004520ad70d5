"""The sandbox's first process: builds the kernel boundary, then runs the agent's code.

Started by `sandbox.run_python` as ``python -I -S sandbox_init.py SPEC_JSON`` (stdlib only; it is
never imported by agentrl at run time except by tests of `seccomp_program`). In order:

1. ``unshare`` new user, mount, pid, network, IPC, UTS and cgroup namespaces; map the caller's
   uid/gid to root of the new user namespace (so the mounts below need no host privilege).
2. ``fork``: the child is pid 1 of the new pid namespace (it sees no other process; when it dies
   the kernel kills everything it started); the parent stays outside, waits, reports the child's
   host pid on the status pipe (so the host can kill it) and relays its exit status.
3. The child builds a new root on a small tmpfs: read-only bind mounts of the interpreter and
   shared libraries only (``/usr``, ``/lib*``, ``/bin``, the Python prefix, ``/etc/ld.so.cache``),
   the device nodes null/zero/full/random/urandom, and ``/work``: a size- and inode-limited
   tmpfs, the only writable place (``/tmp`` points to it). No ``/proc``, ``/sys``, ``/home``,
   ``/root`` or ``/tmp`` of the host. ``pivot_root`` into it and detach the old root.
4. rlimits (CPU, address space, file size, no core dumps, open files, processes), drop every
   capability (bounding, ambient, effective, permitted, inheritable), ``no_new_privs``, and a
   seccomp filter (`seccomp_program`) that refuses process creation, exec, sockets, mounts,
   namespaces, ptrace, io_uring, raising rlimits and the other kernel interfaces listed there.
5. Report ``ready`` on the status pipe, close it, run the agent's code as ``__main__``.

Any failure before step 5 exits with code 125 and a one-line reason on the status pipe, and the
host refuses to run code (it never falls back to an unsandboxed interpreter).
"""

from __future__ import annotations

import json
import os
import struct
import sys

SETUP_FAILED = 125

# -- seccomp ------------------------------------------------------------------------------

# Syscall numbers (x86_64: asm/unistd_64.h; aarch64: asm-generic/unistd.h). Refused with EPERM.
_DENY = {
    "socket": (41, 198), "socketpair": (53, 199), "execve": (59, 221), "execveat": (322, 281),
    "fork": (57, None), "vfork": (58, None), "ptrace": (101, 117),
    "process_vm_readv": (310, 270), "process_vm_writev": (311, 271), "mount": (165, 40),
    "umount2": (166, 39), "pivot_root": (155, 41), "chroot": (161, 51), "unshare": (272, 97),
    "setns": (308, 268), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "bpf": (321, 280), "perf_event_open": (298, 241), "userfaultfd": (323, 282),
    "keyctl": (250, 219), "add_key": (248, 217), "request_key": (249, 218),
    "io_uring_setup": (425, 425), "io_uring_enter": (426, 426), "io_uring_register": (427, 427),
    "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264), "setrlimit": (160, 164),
    "open_tree": (428, 428), "move_mount": (429, 429), "fsopen": (430, 430),
    "fsconfig": (431, 431), "fsmount": (432, 432), "fspick": (433, 433),
    "mount_setattr": (442, 442), "reboot": (169, 142), "swapon": (167, 224),
    "swapoff": (168, 225), "syslog": (103, 116), "acct": (163, 89), "settimeofday": (164, 170),
    "clock_settime": (227, 112), "personality": (135, 92), "quotactl": (179, 60),
    "vhangup": (153, 58), "pidfd_getfd": (438, 438), "kcmp": (312, 272), "iopl": (172, None),
    "ioperm": (173, None), "uselib": (134, None),
    # Memory outside RLIMIT_AS and every mount's size limit: in-memory files and System V IPC
    "memfd_create": (319, 279), "memfd_secret": (447, 447), "shmget": (29, 194),
    "msgget": (68, 186), "semget": (64, 190),
}
# Allowed only with some arguments (see seccomp_program).
_CLONE, _CLONE3, _PRLIMIT64, _PRCTL = (56, 220), (435, 435), (302, 261), (157, 167)
_FCNTL = (72, 25)
_ARCHES = {"x86_64": (0, 0xC000003E), "aarch64": (1, 0xC00000B7)}  # AUDIT_ARCH_*
_CLONE_THREAD, _CLONE_FILES = 0x00010000, 0x00000400
_F_SETPIPE_SZ = 1031
_CLONE_NEW_NAMESPACES = 0x7E020000  # NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
_PR_SET_PDEATHSIG = 1
_EPERM, _ENOSYS = 1, 38


def seccomp_program(arch: str) -> bytes:
    """A classic-BPF seccomp filter (``struct sock_filter[]`` bytes) for ``arch``.

    Refuses (EPERM) every syscall in ``_DENY``; ``clone`` unless it makes a thread that shares
    the descriptor table (threads stay allowed, so Python's ``threading`` works; a process, a
    namespace or a second descriptor table do not); ``clone3`` gets ENOSYS, which makes the C
    library fall back to ``clone``; ``prlimit64`` only when it sets a limit (reading one is how
    ``resource.getrlimit`` works); ``prctl(PR_SET_PDEATHSIG)``, so the code cannot outlive its
    parent; ``fcntl(F_SETPIPE_SZ)``, so a pipe buffers at most the default 64 KiB of kernel
    memory. x32 syscalls and a foreign architecture kill the process.

    Raises:
        ValueError: for an architecture without a syscall table here.
    """
    if arch not in _ARCHES:
        raise ValueError(f"no seccomp syscall table for {arch!r} (have {sorted(_ARCHES)})")
    col, audit_arch = _ARCHES[arch]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ...
    allow, kill = 0x7FFF0000, 0x80000000  # SECCOMP_RET_ALLOW, SECCOMP_RET_KILL_PROCESS
    errno = 0x00050000  # SECCOMP_RET_ERRNO | errno
    # (code, jump-if-true label, jump-if-false label, k); labels resolve to relative offsets.
    prog: list[tuple[int, str | int, str | int, int]] = [
        (ld, 0, 0, 4),  # seccomp_data.arch
        (jeq, 1, 0, audit_arch),
        (ret, 0, 0, kill),
        (ld, 0, 0, 0),  # seccomp_data.nr
    ]
    if arch == "x86_64":
        prog.append((jge, "deny", 0, 0x40000000))  # the x32 ABI: another syscall table
    for nrs in _DENY.values():
        if nrs[col] is not None:
            prog.append((jeq, "deny", 0, nrs[col]))
    prog += [
        (jeq, "enosys", 0, _CLONE3[col]),
        (jeq, "clone", 0, _CLONE[col]),
        (jeq, "prlimit", 0, _PRLIMIT64[col]),
        (jeq, "prctl", 0, _PRCTL[col]),
        (jeq, "fcntl", 0, _FCNTL[col]),
        (ret, 0, 0, allow),
        ("clone", 0, 0, 0),
        (ld, 0, 0, 16),  # low 32 bits of args[0] (flags; little-endian on both arches)
        (jset, "deny", 0, _CLONE_NEW_NAMESPACES),
        (jset, 0, "deny", _CLONE_THREAD),
        (jset, "allow", "deny", _CLONE_FILES),
        ("prlimit", 0, 0, 0),
        (ld, 0, 0, 32),  # args[2] (the new limit): NULL means "only read"
        (jeq, 0, "deny", 0),
        (ld, 0, 0, 36),
        (jeq, "allow", "deny", 0),
        ("prctl", 0, 0, 0),
        (ld, 0, 0, 16),
        (jeq, "deny", "allow", _PR_SET_PDEATHSIG),
        ("fcntl", 0, 0, 0),
        (ld, 0, 0, 24),  # low 32 bits of args[1] (the command)
        (jeq, "deny", "allow", _F_SETPIPE_SZ),
        ("deny", 0, 0, 0),
        (ret, 0, 0, errno | _EPERM),
        ("enosys", 0, 0, 0),
        (ret, 0, 0, errno | _ENOSYS),
        ("allow", 0, 0, 0),
        (ret, 0, 0, allow),
    ]
    # Labels are marker rows; drop them and point jumps at the row after the marker.
    labels, rows = {}, []
    for row in prog:
        if isinstance(row[0], str):
            labels[row[0]] = len(rows)
        else:
            rows.append(row)
    out = b""
    for i, (code, jt, jf, k) in enumerate(rows):
        offs = [labels[j] - i - 1 if isinstance(j, str) else j for j in (jt, jf)]
        if not all(0 <= o <= 255 for o in offs):
            raise AssertionError(f"seccomp program: jump out of range at row {i}: {offs}")
        out += struct.pack("=HBBI", code, offs[0], offs[1], k)
    return out


# -- the boundary -------------------------------------------------------------------------

_CLONE_NEWNS, _CLONE_NEWCGROUP, _CLONE_NEWUTS = 0x00020000, 0x02000000, 0x04000000
_CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = (
    0x08000000, 0x10000000, 0x20000000, 0x40000000)
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 1, 2, 4, 8
_MS_REMOUNT, _MS_BIND, _MS_REC, _MS_PRIVATE = 32, 4096, 16384, 1 << 18
_MS_NOATIME, _MS_NODIRATIME, _MS_RELATIME = 1024, 2048, 1 << 21
_MNT_DETACH = 2
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_DEVICES = ("null", "zero", "full", "random", "urandom")


class SetupError(Exception):
    """A step of building the boundary failed; the message names the step."""


class _Kernel:
    def __init__(self) -> None:
        import ctypes

        self.ct = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
        self.libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
        self.libc.unshare.argtypes = [ctypes.c_int]
        self.libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        self.libc.syscall.restype = ctypes.c_long

    def check(self, ret: int, what: str) -> int:
        if ret < 0:
            e = self.ct.get_errno()
            raise SetupError(f"{what}: {os.strerror(e)} (errno {e})")
        return ret

    def mount(self, src: str | None, dst: str, fstype: str | None, flags: int,
              data: str | None = None) -> None:
        args = [None if a is None else a.encode() for a in (src, dst, fstype)]
        self.check(self.libc.mount(*args, flags, data and data.encode()), f"mount {dst}")

    def prctl(self, option: int, arg2: int = 0, arg3: int = 0) -> int:
        return self.check(self.libc.prctl(option, arg2, arg3, 0, 0), f"prctl({option})")


def _enter_namespaces(k: _Kernel) -> None:
    uid, gid = os.getuid(), os.getgid()
    flags = (_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC
             | _CLONE_NEWUTS | _CLONE_NEWCGROUP)
    k.check(k.libc.unshare(flags), "unshare(user, mount, pid, net, ipc, uts, cgroup namespaces)")
    with open("/proc/self/setgroups", "w") as f:
        f.write("deny")
    with open("/proc/self/uid_map", "w") as f:
        f.write(f"0 {uid} 1")
    with open("/proc/self/gid_map", "w") as f:
        f.write(f"0 {gid} 1")


def _bind_readonly(k: _Kernel, src: str, root: str) -> None:
    dst = root + src
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if os.path.islink(src):  # /lib -> usr/lib on merged-/usr systems: the same link
        if not os.path.lexists(dst):
            os.symlink(os.readlink(src), dst)
        return
    if os.path.isdir(src):
        os.makedirs(dst, exist_ok=True)
    else:
        open(dst, "a").close()
    k.mount(src, dst, None, _MS_BIND)
    # A remount must repeat the flags the source mount already has (the kernel locks them).
    f = os.statvfs(src).f_flag
    keep = ((f & os.ST_NOEXEC and _MS_NOEXEC) | (f & os.ST_NOATIME and _MS_NOATIME)
            | (f & os.ST_NODIRATIME and _MS_NODIRATIME) | (f & os.ST_RELATIME and _MS_RELATIME))
    k.mount(None, dst, None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | keep)


def _build_root(k: _Kernel, spec: dict) -> None:
    root = spec["root"]
    k.mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing propagates back to the host
    k.mount("tmpfs", root, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,nr_inodes=4096,mode=0755")
    covered: list[str] = []
    for path in sorted(spec["readonly"], key=len):
        if os.path.lexists(path) and not any(path.startswith(c + "/") for c in covered):
            _bind_readonly(k, path, root)
            covered.append(path)
    os.makedirs(root + "/dev")
    for name in _DEVICES:  # bound read-write: writing to /dev/null must work
        dst = f"{root}/dev/{name}"
        open(dst, "a").close()
        k.mount(f"/dev/{name}", dst, None, _MS_BIND)
    os.makedirs(root + "/work")
    k.mount("tmpfs", root + "/work", "tmpfs", _MS_NOSUID | _MS_NODEV,
            f"size={spec['disk_bytes']},nr_inodes={spec['inodes']},mode=0777")
    os.symlink("work", root + "/tmp")
    k.mount(None, root, None, _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.chdir(root)
    k.check(k.libc.syscall(_PIVOT_ROOT[spec["arch"]], b".", b"."), "pivot_root")
    k.check(k.libc.umount2(b".", _MNT_DETACH), "detach the host's root")
    os.chdir("/work")


def _lock_down(k: _Kernel, spec: dict) -> None:
    import resource

    cpu = spec["cpu_seconds"]
    # soft == hard: the kernel sends SIGKILL at the limit (pid 1 ignores a plain SIGXCPU).
    for res, value in ((resource.RLIMIT_CPU, cpu), (resource.RLIMIT_AS, spec["memory_bytes"]),
                       (resource.RLIMIT_FSIZE, spec["file_bytes"]), (resource.RLIMIT_CORE, 0),
                       (resource.RLIMIT_NOFILE, 256), (resource.RLIMIT_NPROC, 64),
                       (resource.RLIMIT_MEMLOCK, 0)):
        resource.setrlimit(res, (value, value))
    ct = k.ct
    cap = 0
    while k.libc.prctl(24, cap, 0, 0, 0) == 0:  # PR_CAPBSET_DROP, until EINVAL past the last
        cap += 1
    k.prctl(47, 4)  # PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
    header = (ct.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ct.c_uint32 * 6)()  # effective, permitted, inheritable (x2): all empty
    k.check(k.libc.capset(header, data), "capset (drop all capabilities)")
    k.prctl(38, 1)  # PR_SET_NO_NEW_PRIVS
    filt = seccomp_program(spec["arch"])
    buf = ct.create_string_buffer(filt, len(filt))

    class SockFprog(ct.Structure):
        _fields_ = [("len", ct.c_ushort), ("filter", ct.c_void_p)]

    fprog = SockFprog(len(filt) // 8, ct.addressof(buf))
    k.check(k.libc.prctl(22, 2, ct.addressof(fprog), 0, 0),  # PR_SET_SECCOMP, MODE_FILTER
            "seccomp filter")
    if k.libc.prctl(21, 0, 0, 0, 0) != 2:  # PR_GET_SECCOMP
        raise SetupError("seccomp filter not in force")


def _relay(pid: int) -> None:
    """The parent's side: wait for pid 1 and leave with its status."""
    _, wstatus = os.waitpid(pid, 0)
    if os.WIFSIGNALED(wstatus):
        import signal

        sig = os.WTERMSIG(wstatus)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be handled anyway
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus) else 1)


def main() -> None:
    spec = json.loads(sys.argv[1])
    status = spec["status_fd"]
    try:
        with open(spec["code"], encoding="utf-8", errors="replace") as f:
            code = f.read()
        k = _Kernel()
        _enter_namespaces(k)
        pid = os.fork()
    except Exception as e:
        os.write(status, f"error {type(e).__name__}: {e}\n".encode()[:4000])
        os._exit(SETUP_FAILED)
    if pid:
        os.write(status, f"pid {pid}\n".encode())
        _relay(pid)
    try:
        k.prctl(_PR_SET_PDEATHSIG, 9)  # SIGKILL when the relaying parent dies
        _build_root(k, spec)
        _lock_down(k, spec)
    except Exception as e:
        os.write(status, f"error {type(e).__name__}: {e}\n".encode()[:4000])
        os._exit(SETUP_FAILED)
    os.write(status, b"ready\n")
    os.close(status)
    del k, spec
    sys.argv = ["<python>"]
    sys.dont_write_bytecode = True
    try:
        exec(compile(code, "<python>", "exec"), {"__name__": "__main__",
                                                  "__builtins__": __builtins__})
    except SystemExit:
        raise
    except BaseException as e:
        # The agent's traceback without this file's frames.
        import traceback

        here = os.path.abspath(__file__)
        tb = [f for f in traceback.extract_tb(e.__traceback__) if f.filename != here]
        sys.stdout.flush()
        sys.stderr.write("Traceback (most recent call last):\n"
                         + "".join(traceback.format_list(tb))
                         + "".join(traceback.format_exception_only(type(e), e)))
        sys.exit(1)


if __name__ == "__main__":
    main()
