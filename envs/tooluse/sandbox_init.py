"""The sandbox's processes: build the kernel boundary, then run the agent's code.

Started by `sandbox.run_python` as ``python -I -S sandbox_init.py SPEC_JSON`` (stdlib only; it is
never imported by agentrl at run time except by tests of `seccomp_program`). Three processes:

1. **The first process** keeps the trainer's rights on host files. In a private mount
   namespace (for a non-root trainer: inside a user namespace mapping only its own uid) it
   mounts the output tmpfs (sized to the file-size limit) and opens the output file, then builds
   the new root on a small tmpfs: read-only bind mounts of the interpreter and shared libraries
   only (``/usr``, ``/lib*``, ``/bin``, the Python prefix, ``/etc/ld.so.cache``), the device
   nodes null/zero/full/random/urandom, and ``/work``: a size- and inode-limited tmpfs, the only
   writable place (``/tmp`` and ``/dev/shm`` point to it). No ``/proc``, ``/sys``, ``/home``,
   ``/root`` or ``/tmp`` of the host. It ``pivot_root``s into it, detaches the old root and
   forks the holder. It writes the holder's uid/gid map (root of the new user namespace is
   host ``nobody`` when the trainer is root, else the trainer), waits, and relays at most the
   file-size limit of output and the exit status.
2. **The holder** ``unshare``s new user, mount, pid, network, IPC, UTS and cgroup namespaces
   (the mount namespace is a locked copy: the read-only mounts cannot be made writable or
   uncovered), takes uid/gid 0 there, sets the IPC namespace's limits to zero, and forks pid 1;
   it stays outside the pid namespace, reports pid 1's host pid (so the host can kill it) and
   relays its exit status.
3. **pid 1** of the new pid namespace (it sees no other process; when it dies the kernel kills
   everything it started) points stdout/stderr at the output file, sets rlimits (CPU, address
   space, file size, open files, tasks, no core dumps), drops every capability (bounding,
   ambient, effective, permitted, inheritable), sets ``no_new_privs`` and a seccomp filter
   (`seccomp_program`), reports ``ready``, closes every descriptor but 0-2 and runs the code as
   ``__main__``.

Any failure before the code runs exits with code 125 and a one-line reason on the status pipe,
and the host refuses to run code (it never falls back to an unsandboxed interpreter).
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
    # (whose namespace limits are also set to zero, see _limit_ipc).
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
_NOBODY = 65534  # the host uid and gid of the sandbox's user when the trainer is root
# System V IPC in the sandbox's IPC namespace: no segments, queues or semaphore sets at all.
_IPC_LIMITS = {"shmmni": "0", "shmmax": "0", "shmall": "0", "msgmni": "0", "sem": "0 0 0 0"}
_CONFINE = (_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWPID | _CLONE_NEWNET | _CLONE_NEWIPC
            | _CLONE_NEWUTS | _CLONE_NEWCGROUP)


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


def _enter_build_namespace(k: _Kernel) -> None:
    """A private mount namespace to build the new root in, with the trainer's own access to host
    files: as root, a plain mount namespace; otherwise a user namespace mapping only the
    trainer's uid and gid (to root there)."""
    if os.geteuid() == 0:
        k.check(k.libc.unshare(_CLONE_NEWNS), "unshare(mount namespace)")
        return
    uid, gid = os.getuid(), os.getgid()
    k.check(k.libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNS), "unshare(user, mount namespaces)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"0 {uid} 1"), ("gid_map", f"0 {gid} 1")):
        with open(f"/proc/self/{name}", "w") as f:
            f.write(text)


def _outer_id() -> int:
    """The uid/gid of this user namespace that the sandbox's root maps to: never the host's root,
    which RLIMIT_NPROC does not bind. Called before entering the build namespace."""
    if os.geteuid() != 0:
        return 0  # in the build namespace, 0 is the trainer's own (unprivileged) uid
    maps = []
    for name in ("uid_map", "gid_map"):
        with open(f"/proc/self/{name}") as f:
            maps.append([tuple(int(x) for x in line.split()) for line in f if line.strip()])
    if all(any(lo <= _NOBODY < lo + n for lo, _, n in m) for m in maps):
        return _NOBODY
    if all(any(lo == 0 and outer != 0 for lo, outer, _ in m) for m in maps):
        return 0  # root of an unprivileged user namespace: an ordinary user on the host
    raise SetupError(f"the trainer runs as root and uid/gid {_NOBODY} (nobody) is not mapped "
                     "here, so the sandbox's user would be root on the host, where the process "
                     "limit does not hold; run the trainer as another user or map uid 65534")


def _map_user(proc: int, pid: int, outer_id: int) -> None:
    """Map root of ``pid``'s new user namespace to ``outer_id`` of this one: ``nobody`` when the
    trainer is root (so RLIMIT_NPROC, which never binds host root, binds the sandbox), else 0,
    the trainer's own ids as root of the build namespace."""
    for name in ("uid_map", "gid_map"):
        fd = os.open(f"{pid}/{name}", os.O_WRONLY, dir_fd=proc)
        try:
            os.write(fd, f"0 {outer_id} 1".encode())
        finally:
            os.close(fd)


def _become_root_of(k: _Kernel, proc: int) -> None:
    """Take uid/gid 0 of the new user namespace (the mapped host user), without supplementary
    groups, then set the IPC namespace's limits."""
    fd = os.open("self/setgroups", os.O_RDONLY, dir_fd=proc)
    try:
        may_setgroups = os.read(fd, 16).strip() == b"allow"
    finally:
        os.close(fd)
    if may_setgroups:  # as root: drop root's supplementary groups
        os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)
    _limit_ipc(proc)


def _limit_ipc(proc: int) -> None:
    """System V IPC allocates memory outside RLIMIT_AS; the namespace's own limits refuse it."""
    for name, value in _IPC_LIMITS.items():
        fd = os.open(f"sys/kernel/{name}", os.O_RDWR, dir_fd=proc)
        try:
            os.write(fd, value.encode())
            os.lseek(fd, 0, os.SEEK_SET)
            got = os.read(fd, 100).split()
        finally:
            os.close(fd)
        if got != value.encode().split():
            raise SetupError(f"the IPC namespace's {name} stayed {got} (wanted {value})")


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


def _output_file(k: _Kernel, spec: dict) -> int:
    """The code's stdout/stderr: a file on a tmpfs of its own, sized to the file-size limit, so
    no way of allocating space in it (fallocate included) takes more."""
    k.mount("tmpfs", spec["out"], "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
            f"size={max(spec['file_bytes'], 4096)},nr_inodes=4,mode=0700")
    return os.open(spec["out"] + "/output", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)


def _copy_output(out: int, limit: int) -> None:
    """Relay what the code wrote (at most ``limit`` bytes) to the host's output file."""
    done = 0
    while done < limit:
        chunk = os.pread(out, min(1 << 16, limit - done), done)
        if not chunk:
            break
        os.write(1, chunk)
        done += len(chunk)


def _build_root(k: _Kernel, spec: dict) -> None:
    root = spec["root"]
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
    os.symlink("../work", root + "/dev/shm")  # POSIX shared memory counts against /work too
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


def _exit_like(wstatus: int) -> None:
    """Leave with the same exit status or signal as the child that ``wstatus`` describes."""
    if os.WIFSIGNALED(wstatus):
        import signal

        sig = os.WTERMSIG(wstatus)
        if sig not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be handled anyway
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(wstatus) if os.WIFEXITED(wstatus) else 1)


def _fail(status: int, e: BaseException) -> None:
    os.write(status, f"error {type(e).__name__}: {e}\n".encode()[:4000])
    os._exit(SETUP_FAILED)


def _outside(pid: int, proc: int, out: int, spec: dict, sync: tuple[int, int]) -> None:
    """The first process, still with the trainer's rights: maps the sandbox's user once its
    namespace exists, waits, relays the output (bounded) and the exit status."""
    ready, go = sync
    try:
        if os.read(ready, 1) != b"u":  # empty: the holder failed (its error is on the status pipe)
            raise SetupError("the sandbox's namespaces were not created")
        _map_user(proc, pid, spec["outer_id"])
        os.write(go, b"g")
    except Exception as e:
        os.kill(pid, 9)
        _fail(spec["status_fd"], e)
    _, wstatus = os.waitpid(pid, 0)
    _copy_output(out, spec["file_bytes"])
    _exit_like(wstatus)


def _holder(k: _Kernel, proc: int, spec: dict, sync: tuple[int, int]) -> None:
    """Creates the sandbox's namespaces, becomes its (unprivileged) user and forks pid 1; stays
    outside the pid namespace, reports pid 1's host pid and relays its exit status."""
    ready, go = sync
    status = spec["status_fd"]
    try:
        k.prctl(_PR_SET_PDEATHSIG, 9)  # SIGKILL when the first process dies
        k.check(k.libc.unshare(_CONFINE),
                "unshare(user, mount, pid, net, ipc, uts, cgroup namespaces)")
        os.write(ready, b"u")
        if os.read(go, 1) != b"g":
            raise SetupError("the user namespace's uid map was not written")
        _become_root_of(k, proc)
        pid = os.fork()
    except Exception as e:
        _fail(status, e)
    if pid == 0:
        return
    os.write(status, f"pid {pid}\n".encode())
    _exit_like(os.waitpid(pid, 0)[1])


def main() -> None:
    spec = json.loads(sys.argv[1])
    status = spec["status_fd"]
    try:
        with open(spec["code"], encoding="utf-8", errors="replace") as f:
            code = f.read()
        k = _Kernel()
        spec["outer_id"] = _outer_id()
        _enter_build_namespace(k)
        k.mount(None, "/", None, _MS_REC | _MS_PRIVATE)  # nothing propagates back to the host
        out = _output_file(k, spec)
        proc = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)  # the host's, for the steps below
        _build_root(k, spec)
        (ready_r, ready_w), (go_r, go_w) = os.pipe(), os.pipe()
        pid = os.fork()
    except Exception as e:
        _fail(status, e)
    if pid:
        os.close(ready_w)
        os.close(go_r)
        _outside(pid, proc, out, spec, (ready_r, go_w))
    os.close(ready_r)
    os.close(go_w)
    _holder(k, proc, spec, (ready_w, go_r))
    try:  # pid 1 of the new pid namespace
        k.prctl(_PR_SET_PDEATHSIG, 9)  # SIGKILL when the relaying parent dies
        os.dup2(out, 1)
        os.dup2(out, 2)
        _lock_down(k, spec)
    except Exception as e:
        _fail(status, e)
    os.write(status, b"ready\n")
    os.closerange(3, 1 << 20)  # nothing but stdin, stdout and stderr reaches the code
    del k, spec
    _run(code)


def _run(code: str) -> None:
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
