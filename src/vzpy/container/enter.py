"""Run commands inside a running container: exec, exec2, enter.

A process joins the container by setns() into each namespace of its init
(user-visible pid numbering needs one more fork after joining the pid
namespace), joining its cgroups, and dropping the same bounding
capabilities the init has.  Commands run with a clean environment.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import signal
import sys
import termios
import tty

from ..errors import NotRunningError, VzError
from ..sys import libc
from .spawn import INIT_ENV, drop_bounding_caps, reset_signals

# "time": the container's clocks (resources/timens.py); setns needs us single-threaded.
_TIME_NS = ("time",) if os.path.exists("/proc/self/ns/time") else ()
NS_ORDER = ("ipc", "uts", "net", "pid", "cgroup", *_TIME_NS, "mnt")
TIOCGPTPEER = 0x5441
TIOCSPTLCK = 0x40045431
TIOCSCTTY = 0x540E


def _join(ct, init_pid: int) -> None:
    """In a forked child: become part of the container (except the pid ns child step)."""
    fds = {k: os.open(f"/proc/{init_pid}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in NS_ORDER}
    ct.cgroup.join(os.getpid())
    for k in NS_ORDER:
        libc.setns(fds[k], 0)
        os.close(fds[k])
    os.chdir("/")
    drop_bounding_caps(ct.cfg.get("CAPABILITY"))


def _shell_argv(ct, argv: list[str]) -> list[str]:
    root = f"/proc/{ct.init_pid()}/root"
    shell = "/bin/bash" if os.path.exists(root + "/bin/bash") else "/bin/sh"
    return [shell, "-c", " ".join(argv)]


def exec_in(
    ct, argv: list[str], *, wait: bool = True, quiet: bool = False, stdin_data: bytes | None = None
) -> int:
    """Run argv (already a full argv) inside the container; return its exit code."""
    init_pid = ct.init_pid()
    if init_pid is None:
        raise NotRunningError("Container is not running")
    r, w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            _join(ct, init_pid)
            child = os.fork()
            if child == 0:
                # Its own session inside the container, so that it and what it
                # leaves running belong to the container (and can be checkpointed).
                os.setsid()
                if quiet:
                    null = os.open("/dev/null", os.O_RDWR)
                    os.dup2(null, 1)
                    os.dup2(null, 2)
                if stdin_data is not None:
                    sr, sw = os.pipe()
                    if os.fork() == 0:
                        os.close(sr)
                        os.write(sw, stdin_data)
                        os._exit(0)
                    os.close(sw)
                    os.dup2(sr, 0)
                    os.close(sr)
                try:
                    reset_signals()
                    os.execve(argv[0], argv, INIT_ENV)
                except OSError as e:
                    os.write(w, f"{argv[0]}: {e.strerror}".encode())
                    os._exit(127)
            os.close(w)
            if not wait:
                os._exit(0)
            while True:
                try:
                    _, st = os.waitpid(child, 0)
                    break
                except InterruptedError:
                    continue
            os._exit(os.waitstatus_to_exitcode(st) & 0xFF)
        except BaseException as e:  # noqa: BLE001
            try:
                os.write(w, str(e).encode())
            finally:
                os._exit(126)
    os.close(w)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _, st = os.waitpid(pid, 0)
    finally:
        signal.signal(signal.SIGINT, old)
    err = os.read(r, 4096).decode(errors="replace")
    os.close(r)
    code = os.waitstatus_to_exitcode(st)
    if err and code in (126, 127):
        raise VzError(
            f"Unable to execute {argv[0]} in CT {ct.ctid}: {err}", exit_code=8 if code == 127 else 3
        )
    return code


def enter(ct, exec_cmd: list[str] | None = None) -> int:
    """Interactive root shell on a pty of the container's own devpts."""
    init_pid = ct.init_pid()
    if init_pid is None:
        raise NotRunningError("Container is not running")
    root = f"/proc/{init_pid}/root"
    try:
        master = os.open(f"{root}/dev/pts/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise VzError(f"enter into CT {ct.ctid} failed: {e.strerror}") from e
    fcntl.ioctl(master, TIOCSPTLCK, b"\0\0\0\0")
    shell = "/bin/bash" if os.path.exists(root + "/bin/bash") else "/bin/sh"
    pid = os.fork()
    if pid == 0:
        try:
            _join(ct, init_pid)
            child = os.fork()
            if child == 0:
                os.setsid()
                slave = _open_peer(master)
                fcntl.ioctl(slave, TIOCSCTTY, 0)
                for fd in (0, 1, 2):
                    os.dup2(slave, fd)
                os.close(slave)
                os.close(master)
                env = dict(INIT_ENV, TERM=os.environ.get("TERM", "xterm"))
                reset_signals()
                os.execve(shell, [shell, "-l"], env)
            os.close(master)
            _, st = os.waitpid(child, 0)
            os._exit(os.waitstatus_to_exitcode(st) & 0xFF)
        except BaseException:  # noqa: BLE001
            os._exit(126)
    print(f"entered into CT {ct.ctid}", flush=True)
    if exec_cmd:
        os.write(master, (" ".join(exec_cmd) + "\n").encode())
    _relay(master, pid)
    os.close(master)
    print(f"exited from CT {ct.ctid}", flush=True)
    return 0


def _open_peer(master: int) -> int:
    """TIOCGPTPEER: the slave fd without a path lookup (ioctl returns the new fd)."""
    import ctypes

    fd = libc.libc.ioctl(
        ctypes.c_int(master), ctypes.c_ulong(TIOCGPTPEER), ctypes.c_int(os.O_RDWR | os.O_NOCTTY)
    )
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return fd


def _relay(master: int, pid: int) -> None:
    stdin = sys.stdin.fileno()
    is_tty = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if is_tty else None
    if is_tty:
        tty.setraw(stdin)
        try:
            size = fcntl.ioctl(stdin, termios.TIOCGWINSZ, b"\0" * 8)
            fcntl.ioctl(master, termios.TIOCSWINSZ, size)
        except OSError:
            pass
    fds = [master, stdin]
    try:
        while True:
            try:
                ready, _, _ = select.select(fds, [], [], 0.2)
            except InterruptedError:
                continue
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as e:
                    if e.errno == errno.EIO:
                        break
                    raise
                if not data:
                    break
                os.write(sys.stdout.fileno(), data)
            if stdin in ready:
                data = os.read(stdin, 65536)
                if not data:
                    fds.remove(stdin)
                else:
                    os.write(master, data)
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                # drain what is left
                while select.select([master], [], [], 0.05)[0]:
                    try:
                        data = os.read(master, 65536)
                    except OSError:
                        break
                    if not data:
                        break
                    os.write(sys.stdout.fileno(), data)
                pid = 0
                break
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if pid:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
