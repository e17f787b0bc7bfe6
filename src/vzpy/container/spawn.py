"""Create a container's first process: new namespaces, its root, its init.

Used by ``vzctl start`` (the process execs the container's init) and by the
restorer (the process stays a stopped stub that the restorer seizes and turns
into the dumped init).  The sequence:

  vzctl (P) --fork--> C: setsid, join the CT cgroups, unshare(mnt uts ipc net
  pid cgroup time), write the time offsets, fork --> G (pid 1 of the new pid
  namespace); C reports G's pid and exits.  G makes its mounts private, mounts
  the container's /proc, /sys, /dev... under VE_ROOT, and waits for P.  P
  builds the network (veth into G's netns) and tells G to go.  G sets the
  hostname, pivot_root()s into VE_ROOT, drops capabilities from the bounding
  set, and execs init (or, as a restore stub, waits to be seized).

G reports a failure as one line on the status pipe; the pipe is close-on-exec,
so EOF after "go" means exec succeeded.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import VzError
from ..sys import libc
from ..sys.libc import (
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
)

NS_CLONE_FLAGS = (
    libc.CLONE_NEWNS
    | libc.CLONE_NEWUTS
    | libc.CLONE_NEWIPC
    | libc.CLONE_NEWNET
    | libc.CLONE_NEWPID
    | libc.CLONE_NEWCGROUP
    # A time namespace (where the kernel has them) lets a restore carry the
    # container's CLOCK_MONOTONIC/BOOTTIME on (resources/timens.py).
    | (libc.CLONE_NEWTIME if os.path.exists("/proc/self/ns/time") else 0)
)

INIT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "TERM": "linux",
    "container": "vzpy",
}

# Capabilities a container never gets (bounding set), unless CAPABILITY says on.
# Namespaces keep a container from seeing the host; these keep it from touching
# the host kernel (modules, raw I/O, clock, MAC policy).
DEFAULT_DROPPED_CAPS = {
    "sys_module": 16,
    "sys_rawio": 17,
    "sys_time": 25,
    "mac_override": 32,
    "mac_admin": 33,
    "wake_alarm": 35,
    "block_suspend": 36,
}
ALL_CAPS = {
    "chown": 0, "dac_override": 1, "dac_read_search": 2, "fowner": 3, "fsetid": 4,
    "kill": 5, "setgid": 6, "setuid": 7, "setpcap": 8, "linux_immutable": 9,
    "net_bind_service": 10, "net_broadcast": 11, "net_admin": 12, "net_raw": 13,
    "ipc_lock": 14, "ipc_owner": 15, "sys_module": 16, "sys_rawio": 17, "sys_chroot": 18,
    "sys_ptrace": 19, "sys_pacct": 20, "sys_admin": 21, "sys_boot": 22, "sys_nice": 23,
    "sys_resource": 24, "sys_time": 25, "sys_tty_config": 26, "mknod": 27, "lease": 28,
    "audit_write": 29, "audit_control": 30, "setfcap": 31, "mac_override": 32,
    "mac_admin": 33, "syslog": 34, "wake_alarm": 35, "block_suspend": 36,
    "audit_read": 37, "perfmon": 38, "bpf": 39, "checkpoint_restore": 40,
}  # fmt: skip

# Device nodes in the container's /dev: (name, major, minor, mode)
DEV_NODES = [
    ("null", 1, 3, 0o666),
    ("zero", 1, 5, 0o666),
    ("full", 1, 7, 0o666),
    ("random", 1, 8, 0o666),
    ("urandom", 1, 9, 0o666),
    ("tty", 5, 0, 0o666),
]
DEV_LINKS = [
    ("ptmx", "pts/ptmx"),
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("core", "/proc/kcore"),
]


@dataclass
class MountSpec:
    """One mount to make under the container root, relative path `target`."""

    target: str
    fstype: str
    source: str = "none"
    flags: int = 0
    data: str | None = None
    mode: int = 0o755
    populate: Callable[[str], None] | None = None  # called with the host path after mounting


def populate_dev(path: str) -> None:
    for name, major, minor, mode in DEV_NODES:
        p = os.path.join(path, name)
        os.mknod(p, mode | 0o020000, os.makedev(major, minor))
        os.chmod(p, mode)
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join(path, name))
    for d, mode in (("pts", 0o755), ("shm", 0o1777), ("mqueue", 0o1777)):
        os.mkdir(os.path.join(path, d), mode)
        os.chmod(os.path.join(path, d), mode)


def default_mounts() -> list[MountSpec]:
    """The mount table of a freshly started container."""
    return [
        MountSpec("proc", "proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC),
        MountSpec("sys", "sysfs", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RDONLY),
        MountSpec("dev", "tmpfs", "none", MS_NOSUID, "mode=755,size=65536k", populate=populate_dev),
        MountSpec(
            "dev/pts", "devpts", "devpts", MS_NOSUID | MS_NOEXEC,
            "newinstance,ptmxmode=0666,mode=0620,gid=5",
        ),
        MountSpec("dev/shm", "tmpfs", "shm", MS_NOSUID | MS_NODEV, "mode=1777"),
        MountSpec("dev/mqueue", "mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC),
    ]  # fmt: skip


def _path_in_root(root_fd: int, rel: str, mode: int, is_file: bool = False) -> int:
    """O_PATH fd of `rel` inside the container root, creating what is missing.

    Every component is resolved with openat2(RESOLVE_IN_ROOT): a symlink the
    container planted in its own tree (``/proc -> /etc``) cannot send a mount
    to the host's file system.
    """
    from ..initbin import open_in_root

    rel = "/" + rel.strip("/")
    parts = [p for p in rel.split("/") if p]
    cur = ""
    for i, part in enumerate(parts):
        parent = cur or "/"
        cur = f"{cur}/{part}"
        try:
            os.close(open_in_root(root_fd, cur, os.O_PATH))
            continue
        except FileNotFoundError:
            pass
        pfd = open_in_root(root_fd, parent, os.O_PATH | os.O_DIRECTORY)
        try:
            if is_file and i == len(parts) - 1:
                os.close(os.open(part, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644, dir_fd=pfd))
            else:
                os.mkdir(part, mode, dir_fd=pfd)
        except FileExistsError:
            pass
        finally:
            os.close(pfd)
    return open_in_root(root_fd, rel, os.O_PATH)


def make_mounts(root: str, mounts: list[MountSpec]) -> None:
    """Make `mounts` under `root` (the container's tree, not yet our root)."""
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for m in mounts:
            flags = m.flags
            if m.fstype == "bind":
                if m.source.startswith("/proc/"):
                    src_fd = -1
                    src = m.source
                else:
                    src_fd = _path_in_root(root_fd, m.source, m.mode)
                    src = f"/proc/self/fd/{src_fd}"
                try:
                    is_file = src_fd >= 0 and not os.path.isdir(src)
                    tfd = _path_in_root(root_fd, m.target, m.mode, is_file=is_file)
                    try:
                        libc.mount(src, f"/proc/self/fd/{tfd}", None, MS_BIND | (flags & MS_REC))
                    finally:
                        os.close(tfd)
                finally:
                    if src_fd >= 0:
                        os.close(src_fd)
            else:
                tfd = _path_in_root(root_fd, m.target, m.mode)
                try:
                    libc.mount(m.source, f"/proc/self/fd/{tfd}", m.fstype, flags, m.data)
                finally:
                    os.close(tfd)
            if (m.fstype == "bind" and flags & MS_RDONLY) or m.populate:
                # Resolve again: the fd above is the mountpoint under the new mount.
                from ..initbin import open_in_root

                fd = open_in_root(root_fd, "/" + m.target.strip("/"), os.O_PATH)
                try:
                    path = f"/proc/self/fd/{fd}"
                    if m.fstype == "bind" and flags & MS_RDONLY:
                        libc.mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
                    if m.populate:
                        m.populate(os.path.realpath(path))
                finally:
                    os.close(fd)
    finally:
        os.close(root_fd)


def drop_bounding_caps(capability: str | None) -> None:
    """Drop DEFAULT_DROPPED_CAPS, adjusted by the CAPABILITY="name:on|off ..." key."""
    drop = dict(DEFAULT_DROPPED_CAPS)
    for item in (capability or "").split():
        name, _, state = item.lower().partition(":")
        num = ALL_CAPS.get(name)
        if num is None:
            continue
        if state == "on":
            drop.pop(name, None)
        elif state == "off":
            drop[name] = num
    last = _last_cap()
    for num in drop.values():
        if num <= last:
            libc.prctl(libc.PR_CAPBSET_DROP, num)


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


@dataclass
class SpawnSpec:
    ctid: int
    root: str
    hostname: str | None = None
    mounts: list[MountSpec] = field(default_factory=default_mounts)
    init_argv: list[str] | None = None  # None: restore stub, do not exec
    capability: str | None = None
    join_cgroup: Callable[[int], None] | None = None
    # (CLOCK_MONOTONIC, CLOCK_BOOTTIME) in ns the container's clocks read when
    # its time namespace is made; None: the node's own clocks (zero offsets).
    timens_clocks: tuple[int, int] | None = None


def set_timens_offsets(clocks: tuple[int, int]) -> None:
    """Offsets of the time namespace our next children enter (after
    unshare(CLONE_NEWTIME), before the first fork), so that its
    CLOCK_MONOTONIC and CLOCK_BOOTTIME read `clocks` now."""
    lines = []
    for clock_id, want in zip((time.CLOCK_MONOTONIC, time.CLOCK_BOOTTIME), clocks, strict=True):
        sec, nsec = divmod(want - time.clock_gettime_ns(clock_id), 1_000_000_000)
        lines.append(f"{clock_id} {sec} {nsec}\n")
    fd = os.open("/proc/self/timens_offsets", os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, "".join(lines).encode())
    finally:
        os.close(fd)


def _child_fail(fd: int, msg: str) -> None:
    try:
        os.write(fd, ("E" + msg.replace("\n", " ") + "\n").encode())
    finally:
        os._exit(1)


def spawn(spec: SpawnSpec, before_go: Callable[[int], None]) -> int:
    """Create the container's pid 1; return its pid (in our pid namespace).

    `before_go(pid)` runs in the caller once the namespaces exist (network
    set-up); if it raises, the new process is killed and the error re-raised.
    With init_argv the process has exec'd init when this returns; without it,
    it is a stub blocked in read() waiting to be seized.
    """
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # C
        try:
            os.close(status_r)
            os.close(go_w)
            os.setsid()
            if spec.join_cgroup:
                spec.join_cgroup(os.getpid())
            libc.unshare(NS_CLONE_FLAGS)
            if spec.timens_clocks is not None and NS_CLONE_FLAGS & libc.CLONE_NEWTIME:
                set_timens_offsets(spec.timens_clocks)
            g = os.fork()
            if g:
                os.write(status_w, f"P{g}\n".encode())
                os._exit(0)
            _grandchild(spec, status_w, go_r)
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            _child_fail(status_w, f"{type(e).__name__}: {e}")
        os._exit(1)
    os.close(status_w)
    os.close(go_r)
    reader = os.fdopen(status_r, "rb")
    pid = None
    try:
        line = reader.readline().decode()
        os.waitpid(child, 0)
        if not line.startswith("P"):
            raise VzError(
                f"Unable to create container namespaces: {line[1:].strip() or 'child died'}"
            )
        pid = int(line[1:])
        try:
            before_go(pid)
        except BaseException:
            _kill(pid)
            raise
        os.write(go_w, b"g")
        os.close(go_w)
        go_w = -1
        if spec.init_argv is not None:
            line = reader.readline().decode()
            if line.startswith("E"):
                _kill(pid)
                raise VzError(f"Unable to start init: {line[1:].strip()}")
        else:
            line = reader.readline().decode()
            if not line.startswith("R"):
                _kill(pid)
                raise VzError(f"Unable to prepare restore stub: {line[1:].strip() or 'died'}")
        return pid
    finally:
        if go_w >= 0:
            os.close(go_w)
        reader.close()


def reset_signals() -> None:
    """What a freshly exec'd program expects: default dispositions, nothing blocked.

    Python ignores SIGPIPE and SIGXFSZ, and an ignored disposition survives
    exec: `yes | head` inside the container would then loop on EPIPE forever.
    """
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _grandchild(spec: SpawnSpec, status_w: int, go_r: int) -> None:
    """Runs as pid 1 of the new pid namespace; never returns."""
    try:
        root = os.path.realpath(spec.root)
        libc.mount(None, "/", None, MS_REC | MS_PRIVATE)
        # pivot_root needs the new root to be a mount point in this namespace.
        libc.mount(root, root, None, MS_BIND | MS_REC)
        make_mounts(root, spec.mounts)
        if os.read(go_r, 1) != b"g":
            os._exit(1)
        os.close(go_r)
        if spec.hostname:
            libc.sethostname(spec.hostname)
        os.chdir(root)
        libc.pivot_root(".", ".")
        libc.umount2(".", libc.MNT_DETACH)
        os.chdir("/")
        drop_bounding_caps(spec.capability)
        if spec.init_argv is None:
            os.write(status_w, b"R\n")
            # The restorer seizes us here and replaces everything we are.
            while True:
                signal.pause()
        null = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, status_w)
        os.closerange(status_w + 1, 65536)
        reset_signals()
        os.execve(spec.init_argv[0], spec.init_argv, INIT_ENV)
    except BaseException as e:  # noqa: BLE001
        _child_fail(status_w, f"{type(e).__name__}: {e}")
    os._exit(1)
