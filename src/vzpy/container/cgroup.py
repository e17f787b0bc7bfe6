"""A container's cgroups: membership, freezing, killing, resource limits.

Each container gets ``<prefix>/<CTID>`` in every hierarchy we use.  The prefix
(``VZ_CGROUP`` in vz.conf, default ``vzpy``) lets two nodes share one machine.

Freezing (DESIGN.md "Containers", kernel-notes §7): cgroup v2 ``cgroup.freeze``
where a v2 hierarchy is mounted (frozen tasks give an immediate ptrace stop);
the v1 freezer otherwise.  ``FREEZER=v1|v2|auto`` in vz.conf picks one; both
are tested.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time

CGROUP_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("freezer", "memory", "cpu", "cpuacct", "cpuset", "pids", "devices")


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def _mounts() -> tuple[str | None, dict[str, str]]:
    """(cgroup2 mount point or None, {v1 controller: mount point})."""
    v2 = None
    v1: dict[str, str] = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            fields = pre.split()
            fstype, _src, opts = post.split()[:3]
            mnt = _unescape(fields[4])
            if fstype == "cgroup2" and v2 is None:
                v2 = mnt
            elif fstype == "cgroup":
                for opt in opts.split(","):
                    if opt in V1_CONTROLLERS and opt not in v1:
                        v1[opt] = mnt
    return v2, v1


_MOUNTS: tuple[str | None, dict[str, str]] | None = None


def mounts() -> tuple[str | None, dict[str, str]]:
    global _MOUNTS
    if _MOUNTS is None:
        _MOUNTS = _mounts()
    return _MOUNTS


class CtCgroup:
    """The cgroups of one container on this node."""

    def __init__(self, prefix: str, ctid: int, freezer: str = "auto") -> None:
        self.prefix = prefix.strip("/")
        self.ctid = ctid
        v2, v1 = mounts()
        self.rel = f"{self.prefix}/{ctid}"
        self.v2 = os.path.join(v2, self.rel) if v2 else None
        self.v1 = {ctrl: os.path.join(mnt, self.rel) for ctrl, mnt in v1.items()}
        if freezer == "v1" and "freezer" in self.v1:
            self.freezer = "v1"
        elif freezer == "v2" and self.v2:
            self.freezer = "v2"
        else:
            self.freezer = "v2" if self.v2 else "v1"

    # --- lifecycle ---------------------------------------------------------
    def paths(self) -> list[str]:
        out = [p for p in self.v1.values()]
        if self.v2:
            out.append(self.v2)
        return out

    def exists(self) -> bool:
        return any(os.path.isdir(p) for p in self.paths())

    def create(self) -> None:
        for ctrl, path in self.v1.items():
            parent = os.path.dirname(path)
            os.makedirs(path, exist_ok=True)
            if ctrl == "cpuset":
                # v1 cpuset children start empty; copy the parent's sets down.
                for level in (parent, path):
                    for key in ("cpuset.cpus", "cpuset.mems"):
                        f = os.path.join(level, key)
                        if not _read(f).strip():
                            up = os.path.join(os.path.dirname(level), key)
                            _write(f, _read(up).strip())
        if self.v2:
            os.makedirs(self.v2, exist_ok=True)

    def join(self, pid: int) -> None:
        """Move `pid` into every hierarchy of this container."""
        for path in self.paths():
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def procs(self) -> list[int]:
        """Thread-group leaders in the container (v2 if present, else v1 freezer)."""
        path = self.v2 or self.v1.get("freezer") or next(iter(self.v1.values()), None)
        if path is None:
            return []
        try:
            text = _read(os.path.join(path, "cgroup.procs"))
        except FileNotFoundError:
            return []
        return [int(x) for x in text.split()]

    def threads(self) -> list[int]:
        path = self.v2
        name = "cgroup.threads"
        if path is None:
            path = self.v1.get("freezer")
            name = "tasks"
        try:
            return [int(x) for x in _read(os.path.join(path, name)).split()]
        except (FileNotFoundError, TypeError):
            return []

    def destroy(self) -> None:
        """rmdir every level we own; the cgroups must be empty."""
        for path in self.paths():
            for _ in range(50):
                try:
                    os.rmdir(path)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        raise
                    time.sleep(0.02)
            # The node's prefix directory goes too once its last container has.
            try:
                os.rmdir(os.path.dirname(path))
            except OSError:
                pass

    # --- freezing ------------------------------------------------------------
    def freeze(self, timeout: float = 10.0) -> None:
        if self.freezer == "v2":
            _write(os.path.join(self.v2, "cgroup.freeze"), "1")
            self._wait(lambda: self._v2_frozen(), timeout, "freeze")
        else:
            path = os.path.join(self.v1["freezer"], "freezer.state")
            _write(path, "FROZEN")
            self._wait(lambda: _read(path).strip() == "FROZEN", timeout, "freeze")

    def thaw(self, timeout: float = 10.0) -> None:
        if self.freezer == "v2":
            _write(os.path.join(self.v2, "cgroup.freeze"), "0")
            self._wait(lambda: not self._v2_frozen(), timeout, "thaw")
        else:
            path = os.path.join(self.v1["freezer"], "freezer.state")
            _write(path, "THAWED")
            self._wait(lambda: _read(path).strip() == "THAWED", timeout, "thaw")

    def is_frozen(self) -> bool:
        try:
            if self.freezer == "v2":
                return (
                    self._v2_frozen()
                    or _read(os.path.join(self.v2, "cgroup.freeze")).strip() == "1"
                )
            return _read(os.path.join(self.v1["freezer"], "freezer.state")).strip() != "THAWED"
        except FileNotFoundError:
            return False

    def thaw_all(self) -> None:
        """Thaw through every freezer we know of (used on failure paths)."""
        if self.v2 and os.path.isdir(self.v2):
            try:
                _write(os.path.join(self.v2, "cgroup.freeze"), "0")
            except OSError:
                pass
        fz = self.v1.get("freezer")
        if fz and os.path.isdir(fz):
            try:
                _write(os.path.join(fz, "freezer.state"), "THAWED")
            except OSError:
                pass

    def _v2_frozen(self) -> bool:
        for line in _read(os.path.join(self.v2, "cgroup.events")).splitlines():
            if line.startswith("frozen "):
                return line.split()[1] == "1"
        return False

    @staticmethod
    def _wait(cond, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while not cond():
            if time.monotonic() > deadline:
                raise TimeoutError(f"cgroup {what} did not complete in {timeout:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    # --- killing ---------------------------------------------------------------
    def kill_all(self, timeout: float = 10.0) -> None:
        """SIGKILL everything in the container and wait for the cgroup to empty."""
        self.thaw_all()
        killed_v2 = False
        if self.v2 and os.path.exists(os.path.join(self.v2, "cgroup.kill")):
            try:
                _write(os.path.join(self.v2, "cgroup.kill"), "1")
                killed_v2 = True
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            pids = self.procs()
            if not pids:
                return
            if not killed_v2:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"processes {pids} did not die")
            time.sleep(0.01)

    # --- resource limits ---------------------------------------------------------
    def set_value(self, ctrl: str, key: str, value: str) -> bool:
        """Write a v1 controller file if that controller exists; True if written."""
        base = self.v1.get(ctrl)
        if base is None or not os.path.isdir(base):
            return False
        _write(os.path.join(base, key), value)
        return True

    def get_value(self, ctrl: str, key: str) -> str | None:
        base = self.v1.get(ctrl)
        if base is None:
            return None
        try:
            return _read(os.path.join(base, key)).strip()
        except OSError:
            return None
