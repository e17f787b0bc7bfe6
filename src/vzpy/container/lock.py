"""Container lock files, as vzctl 4.x makes them (vzctl-reference.md §5).

``$LOCKDIR/<CTID>.lck`` holds ``"<pid>\\n<status>\\n"``.  It is created by
writing a temp file and link()ing it to the lock name, which is atomic.  If the
link fails, the pid inside is checked: alive -> locked (exit 9); dead or
unparsable -> the stale lock is removed and we retry, up to three times.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile

from ..errors import VZ_SYSTEM_ERROR, LockedError, VzError


def lock_path(lockdir: str, ctid: int) -> str:
    return os.path.join(lockdir, f"{ctid}.lck")


def _pid_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _pid_alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


class CtLock:
    """Context manager holding a container's lock file."""

    def __init__(self, lockdir: str, ctid: int, status: str = "", *, skip: bool = False) -> None:
        self.lockdir = lockdir
        self.ctid = ctid
        self.status = status
        self.skip = skip
        self.path = lock_path(lockdir, ctid)
        self.held = False

    def acquire(self) -> None:
        if self.skip:
            return
        try:
            os.makedirs(self.lockdir, mode=0o755, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f"{self.ctid}.lck", dir=self.lockdir)
        except OSError as e:
            raise VzError(
                f"Unable to create lock file in {self.lockdir}: {e.strerror}"
                " (use --skiplock if the file system is read-only)",
                exit_code=VZ_SYSTEM_ERROR,
                ctid=self.ctid,
            ) from e
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n{self.status}\n")
            for _ in range(3):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    pass
                pid = read_lock_pid(self.path)
                if pid is not None and _pid_alive(pid) and pid != os.getpid():
                    print(f"Locked by: pid {pid}, cmdline {_pid_cmdline(pid)}", file=sys.stderr)
                    raise LockedError("Container already locked", ctid=self.ctid)
                if pid is not None:
                    print(f"Removing stale lock file {self.path}", file=sys.stderr)
                try:
                    os.unlink(self.path)
                except FileNotFoundError:
                    pass
            raise VzError("Unable to lock container", exit_code=VZ_SYSTEM_ERROR, ctid=self.ctid)
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def release(self) -> None:
        if self.held:
            try:
                if read_lock_pid(self.path) == os.getpid():
                    os.unlink(self.path)
            except OSError as e:
                if e.errno != errno.ENOENT:
                    raise
            self.held = False

    def __enter__(self) -> CtLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def read_lock_pid(path: str) -> int | None:
    try:
        with open(path) as f:
            first = f.readline().strip()
    except OSError:
        return None
    try:
        return int(first)
    except ValueError:
        return None
