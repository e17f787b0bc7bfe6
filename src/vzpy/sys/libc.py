"""Thin ctypes wrappers for the syscalls Python 3.11 lacks.

Each wrapper raises OSError(errno) like the os module does.  Constants keep
their kernel names.  x86_64 only (syscall numbers below).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

libc = ctypes.CDLL(None, use_errno=True)
# PyDLL keeps the GIL held across the call: needed for raw clone-like calls.
libc_gil = ctypes.PyDLL(None, use_errno=True)

_syscall = libc.syscall
_syscall.restype = ctypes.c_long

# --- syscall numbers (x86_64) -------------------------------------------------
SYS_read = 0
SYS_write = 1
SYS_open = 2
SYS_close = 3
SYS_lseek = 8
SYS_mmap = 9
SYS_mprotect = 10
SYS_munmap = 11
SYS_brk = 12
SYS_rt_sigaction = 13
SYS_rt_sigprocmask = 14
SYS_ioctl = 16
SYS_pread64 = 17
SYS_pwrite64 = 18
SYS_mremap = 25
SYS_madvise = 28
SYS_shmget = 29
SYS_shmat = 30
SYS_shmctl = 31
SYS_dup = 32
SYS_dup2 = 33
SYS_getitimer = 36
SYS_setitimer = 38
SYS_getpid = 39
SYS_socket = 41
SYS_connect = 42
SYS_sendmsg = 46
SYS_recvmsg = 47
SYS_bind = 49
SYS_listen = 50
SYS_getsockname = 51
SYS_socketpair = 53
SYS_setsockopt = 54
SYS_getsockopt = 55
SYS_exit = 60
SYS_wait4 = 61
SYS_kill = 62
SYS_fcntl = 72
SYS_fchdir = 81
SYS_umask = 95
SYS_setuid = 105
SYS_setgid = 106
SYS_setpgid = 109
SYS_setsid = 112
SYS_setgroups = 116
SYS_setresuid = 117
SYS_setresgid = 119
SYS_getpgid = 121
SYS_getsid = 124
SYS_capset = 126
SYS_rt_sigpending = 127
SYS_sigaltstack = 131
SYS_personality = 135
SYS_prctl = 157
SYS_arch_prctl = 158
SYS_setrlimit = 160
SYS_chroot = 161
SYS_mount = 165
SYS_umount2 = 166
SYS_gettid = 186
SYS_timer_create = 222
SYS_timer_settime = 223
SYS_timer_gettime = 224
SYS_timer_getoverrun = 225
SYS_timer_delete = 226
SYS_exit_group = 231
SYS_tgkill = 234
SYS_rt_tgsigqueueinfo = 297
SYS_rt_sigtimedwait = 128
SYS_set_tid_address = 218
SYS_restart_syscall = 219
SYS_clock_nanosleep = 230
SYS_openat = 257
SYS_set_robust_list = 273
SYS_get_robust_list = 274
SYS_tee = 276
SYS_signalfd4 = 289
SYS_eventfd2 = 290
SYS_epoll_create1 = 291
SYS_dup3 = 292
SYS_pipe2 = 293
SYS_inotify_init1 = 294
SYS_timerfd_create = 283
SYS_timerfd_settime = 286
SYS_timerfd_gettime = 287
SYS_epoll_ctl = 233
SYS_prlimit64 = 302
SYS_setns = 308
SYS_process_vm_readv = 310
SYS_process_vm_writev = 311
SYS_kcmp = 312
SYS_seccomp = 317
SYS_memfd_create = 319
SYS_userfaultfd = 323
SYS_rseq = 334
SYS_pidfd_send_signal = 424
SYS_pidfd_open = 434
SYS_clone3 = 435
SYS_close_range = 436
SYS_pidfd_getfd = 438
SYS_pivot_root = 155
SYS_unshare = 272

# --- namespaces / clone flags --------------------------------------------------
CLONE_VM = 0x100
CLONE_FS = 0x200
CLONE_FILES = 0x400
CLONE_SIGHAND = 0x800
CLONE_PIDFD = 0x1000
CLONE_PARENT = 0x8000
CLONE_THREAD = 0x10000
CLONE_NEWNS = 0x20000
CLONE_SYSVSEM = 0x40000
CLONE_SETTLS = 0x80000
CLONE_PARENT_SETTID = 0x100000
CLONE_CHILD_CLEARTID = 0x200000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

NS_FLAGS = {
    "mnt": CLONE_NEWNS,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "net": CLONE_NEWNET,
    "pid": CLONE_NEWPID,
    "cgroup": CLONE_NEWCGROUP,
    "user": CLONE_NEWUSER,
    "time": CLONE_NEWTIME,
}

# --- mount flags -----------------------------------------------------------------
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_SYNCHRONOUS = 16
MS_REMOUNT = 32
MS_MANDLOCK = 64
MS_DIRSYNC = 128
MS_NOSYMFOLLOW = 256
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_FORCE = 1
MNT_DETACH = 2
MNT_EXPIRE = 4
UMOUNT_NOFOLLOW = 8

# --- prctl ----------------------------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_GET_NAME = 16
PR_GET_SECCOMP = 21
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS = 27
PR_SET_SECUREBITS = 28
PR_GET_TIMERSLACK = 30
PR_SET_TIMERSLACK = 29
PR_SET_MM = 35
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
PR_GET_TID_ADDRESS = 40
PR_SET_THP_DISABLE = 41
PR_GET_THP_DISABLE = 42
PR_CAP_AMBIENT = 47
PR_SET_MM_MAP = 14
PR_SET_MM_MAP_SIZE = 15


def _check(ret: int, what: str = "") -> int:
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}" if what else os.strerror(err))
    return ret


def syscall(nr: int, *args: int | bytes | ctypes._SimpleCData | None) -> int:
    """Raw syscall(2); raises OSError on -1."""
    cargs = []
    for a in args:
        if isinstance(a, int):
            cargs.append(ctypes.c_long(a))
        else:
            cargs.append(a)
    return _check(_syscall(ctypes.c_long(nr), *cargs), f"syscall {nr}")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2).  Affects the calling *thread* only for net/ipc/uts/mnt(see man)."""
    _check(libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def unshare(flags: int) -> None:
    _check(libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
) -> None:
    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    ret = libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} on {target} ({fstype}): {os.strerror(err)}")


def umount2(target: str, flags: int = 0) -> None:
    ret = libc.umount2(target.encode(), ctypes.c_int(flags))
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def pivot_root(new_root: str, put_old: str) -> None:
    syscall(SYS_pivot_root, ctypes.c_char_p(new_root.encode()), ctypes.c_char_p(put_old.encode()))


def prctl(option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
    libc.prctl.restype = ctypes.c_int
    return _check(
        libc.prctl(
            ctypes.c_int(option),
            ctypes.c_ulong(a2),
            ctypes.c_ulong(a3),
            ctypes.c_ulong(a4),
            ctypes.c_ulong(a5),
        ),
        "prctl",
    )


def pidfd_open(pid: int, flags: int = 0) -> int:
    return os.pidfd_open(pid, flags)


def pidfd_getfd(pidfd: int, targetfd: int) -> int:
    """Copy fd `targetfd` of the process behind `pidfd` into ours (FD_CLOEXEC set)."""
    return syscall(SYS_pidfd_getfd, pidfd, targetfd, 0)


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    syscall(SYS_pidfd_send_signal, pidfd, sig, 0, 0)


KCMP_FILE = 0
KCMP_VM = 1
KCMP_FILES = 2
KCMP_FS = 3
KCMP_SIGHAND = 4
KCMP_IO = 5
KCMP_SYSVSEM = 6
KCMP_EPOLL_TFD = 7


def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int:
    """kcmp(2): 0 equal, 1/2 ordering, 3 not equal (unordered)."""
    return syscall(SYS_kcmp, pid1, pid2, kind, idx1, idx2)


def tee(fd_in: int, fd_out: int, length: int, flags: int = 0) -> int:
    return syscall(SYS_tee, fd_in, fd_out, length, flags)


def sethostname(name: str) -> None:
    b = name.encode()
    _check(libc.sethostname(b, ctypes.c_size_t(len(b))), "sethostname")


def setdomainname(name: str) -> None:
    b = name.encode()
    _check(libc.setdomainname(b, ctypes.c_size_t(len(b))), "setdomainname")


def set_child_subreaper(on: bool = True) -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def set_pdeathsig(sig: int) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


class NsFd:
    """A namespace fd opened from /proc/PID/ns/KIND; closed by the context manager."""

    def __init__(self, pid: int | str, kind: str) -> None:
        self.kind = kind
        self.fd = os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> NsFd:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_in_ns(pid: int, kinds: tuple[str, ...], fn, *args, **kwargs):
    """Run fn in a fresh thread that joined namespaces `kinds` of `pid` (net, uts, ipc).

    Only namespaces that are per-thread may be joined this way (not mnt or pid).
    """
    import threading

    fds = [(os.open(f"/proc/{pid}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC), NS_FLAGS[k]) for k in kinds]
    result: dict = {}

    def body() -> None:
        try:
            for fd, flag in fds:
                setns(fd, flag)
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller below
            result["error"] = e

    try:
        t = threading.Thread(target=body, name="ns")
        t.start()
        t.join()
    finally:
        for fd, _ in fds:
            os.close(fd)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def run_in_netns(netns_path_or_pid: str | int, fn, *args, **kwargs):
    """Run fn in a fresh thread that has joined a network namespace.

    setns(CLONE_NEWNET) changes only the calling thread, so the caller's own
    namespace is untouched (kernel-notes §9).  Sockets created there stay in
    that namespace.  Exceptions are re-raised in the caller.
    """
    import threading

    if isinstance(netns_path_or_pid, int):
        path = f"/proc/{netns_path_or_pid}/ns/net"
    else:
        path = netns_path_or_pid
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    result: dict = {}

    def body() -> None:
        try:
            setns(fd, CLONE_NEWNET)
            result["value"] = fn(*args, **kwargs)
        except BaseException as e:  # re-raised in the caller below
            result["error"] = e

    try:
        t = threading.Thread(target=body, name="netns")
        t.start()
        t.join()
    finally:
        os.close(fd)
    if "error" in result:
        raise result["error"]
    return result.get("value")
