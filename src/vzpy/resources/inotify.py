"""inotify: a group of watches, each an inode with an event mask and a watch descriptor.

Dump.  fdinfo (``inotify_fdinfo``) gives each watch's wd, mask (IN_ONESHOT
and IN_EXCL_UNLINK folded in), and the inode as ``sdev``/``ino`` plus a file
handle.  The inode's path is what survives a restore (and a migration, where
inode numbers change): ``open_by_handle_at`` (CAP_DAC_READ_SEARCH) opens
the inode on a mount of the container with that device, and the link of the
O_PATH fd it returns is its path in the container's root.  The path is
checked by looking it up again in the container's root: the same inode must
come back.  A file whose dentry the kernel dropped comes back
"disconnected", named by its bare name, and a bind mount of a subtree
without the inode names it wrongly: the next mount is tried, then the dump
is refused, as it is for a watched file that was deleted and for file
systems that cannot reopen a file by handle (proc, sysfs...).

No event may be generated in the container while we look: O_PATH opens and
stat() raise none, and ``open_by_handle_at`` is given the mount as its
thread's working directory (AT_FDCWD) rather than as an opened directory.

Events already queued and not read cannot be saved (inotify has no way to
peek at them, nor to queue one): a non-empty queue (FIONREAD) refuses the
dump.

Restore.  ``inotify_init1`` in the restorer; the watches are added once
every file of the container is open (``after_tasks``), by path through
``/proc/self/fd`` of an O_PATH fd resolved in the container's root, so the
restore's own opens raise no events in them.  A group hands out wds with
``idr_alloc_cyclic`` from 1: each add takes the number after the last one
given, even if that one was removed since.  So the watches are added in wd
order, and each gap is skipped by adding and removing a watch on a memfd of
ours; those removals queue IN_IGNORED events, which are read away at the
end (the queue was empty at dump).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import struct
import threading

from .. import procfs
from ..errors import RestoreError
from ..images.schema import Field, register_record
from ..sys import libc
from .anon_inodes import check_status_flags, refuse, set_status_flags
from .files import FdKind, FdProbe, register_fd_kind

INOTIFY_WATCH = register_record("inotify_watch", id=1141, category="file", fields=[
    Field("wd", 1, "uint", optional=False),
    Field("mask", 2, "uint", optional=False, hex=True, doc="IN_* events, IN_ONESHOT, IN_EXCL_UNLINK"),
    Field("path", 3, "str", optional=False, doc="inside the container's root"),
    Field("ino", 4, "uint", doc="at dump, for diagnostics"),
    Field("dev", 5, "str", doc="major:minor at dump, for diagnostics"),
], doc="one watch of an inotify group")  # fmt: skip
INOTIFY = register_record("inotify", id=1140, category="file", fields=[
    Field("watches", 1, "list[inotify_watch]", doc="in wd order"),
], doc="an inotify group (file_entry detail)")  # fmt: skip

LINK = "anon_inode:inotify"
FIONREAD = 0x541B
AT_FDCWD = -100
SYS_open_by_handle_at = 304
IN_CLOEXEC = os.O_CLOEXEC
IN_ALL_EVENTS = 0xFFF
IN_EXCL_UNLINK = 0x04000000
IN_ONESHOT = 0x80000000
# The mask bits inotify_add_watch takes back as they are shown.
MASK_BITS = IN_ALL_EVENTS | IN_EXCL_UNLINK | IN_ONESHOT
# Skipping a gap costs two syscalls and an event per wd; beyond this, refuse.
MAX_WD = 1 << 20
DRAIN_EVERY = 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
_libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


def fionread(fd: int) -> int:
    buf = fcntl.ioctl(fd, FIONREAD, struct.pack("i", 0))
    return struct.unpack("i", buf)[0]


def gaps(wds: list[int]) -> list[tuple[int, int]]:
    """(first, last) runs of wd numbers below and between `wds` that must be skipped."""
    out = []
    nxt = 1
    for wd in sorted(wds):
        if wd > nxt:
            out.append((nxt, wd - 1))
        nxt = wd + 1
    return out


# --- dump ----------------------------------------------------------------------------------------


def _mounts_of(ctx, init_pid: int) -> list[procfs.Mount]:
    cache = ctx.extra.setdefault("inotify", {})
    mounts = cache.get("mounts")
    if mounts is None:
        with open(f"/proc/{init_pid}/mountinfo", "rb") as f:
            mounts = procfs.parse_mountinfo(f.read())
        cache["mounts"] = mounts
    return mounts


def mounts_for(mounts: list[procfs.Mount], sdev: int) -> list[procfs.Mount]:
    """The mounts of the file system with kernel dev_t `sdev`, whole-fs mounts first."""
    major, minor = procfs.kdev_major(sdev), procfs.kdev_minor(sdev)
    same = [m for m in mounts if (m.major, m.minor) == (major, minor)]
    return sorted(same, key=lambda m: (m.root != "/", len(m.mount_point)))


def _open_by_handle(cwd_path: str, htype: int, handle: bytes) -> int:
    """open_by_handle_at(AT_FDCWD, handle, O_PATH) with `cwd_path` as the working directory.

    Runs in a thread with its own fs struct (``unshare(CLONE_FS)``) so our
    process's cwd does not move; the mount is named by the cwd rather than
    by an opened directory because opening one would raise IN_OPEN in it.
    """
    result: dict = {}

    def body() -> None:
        try:
            libc.unshare(libc.CLONE_FS)
            os.chdir(cwd_path)
            buf = ctypes.create_string_buffer(struct.pack("Ii", len(handle), htype) + handle)
            result["fd"] = libc.syscall(
                SYS_open_by_handle_at, AT_FDCWD, buf, os.O_PATH | os.O_CLOEXEC
            )
        except OSError as e:
            result["error"] = e

    t = threading.Thread(target=body, name="inotify-handle")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["fd"]


def watch_path(ctx, probe: FdProbe, mark: procfs.InotifyMark) -> str:
    """The watched inode's path in the container's root; refuses when it cannot be trusted.

    Each mount of the inode's file system is tried: on a bind mount of a
    subtree that does not hold the inode, the kernel's name for it is wrong,
    and the check against the container's root catches that.
    """
    what = "an inotify group"
    root = f"/proc/{ctx.init_pid}/root"
    dev = f"{procfs.kdev_major(mark.sdev)}:{procfs.kdev_minor(mark.sdev)}"
    if not mark.f_handle or mark.fhandle_type is None:
        raise refuse(
            probe,
            what,
            f"watch {mark.wd} is on inode {mark.ino} of device {dev}, "
            "a file system without file handles",
        )
    mounts = mounts_for(_mounts_of(ctx, ctx.init_pid), mark.sdev)
    if not mounts:
        raise refuse(
            probe, what, f"watch {mark.wd} is on device {dev}, not mounted in the container"
        )
    why = ""
    for mnt in mounts:
        try:
            fd = _open_by_handle(root + mnt.mount_point, mark.fhandle_type, mark.f_handle)
        except OSError as e:
            why = f"its file cannot be opened by handle: {os.strerror(e.errno)}"
            continue
        try:
            st = os.fstat(fd)
            link = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        if link.endswith(" (deleted)"):
            raise refuse(probe, what, f"watch {mark.wd} is on {link!r}, a file that was deleted")
        try:
            again = os.stat(root + link, follow_symlinks=False) if link.startswith("/") else None
        except OSError:
            again = None
        if again is not None and (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino):
            return link
        why = f"vzpy cannot find its path (the kernel names it {link!r})"
    raise refuse(probe, what, f"watch {mark.wd} is on inode {mark.ino} of {dev}: {why}")


class InotifyKind(FdKind):
    name = "inotify"
    record_types = ("inotify",)

    def match(self, probe: FdProbe) -> bool:
        return probe.link == LINK

    def dump(self, ctx, probe: FdProbe) -> dict:
        return dump_inotify(ctx, probe)

    def restore(self, rctx, entry: dict) -> int:
        fd = _libc.inotify_init1(IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise RestoreError(f"Can't create an inotify group: {os.strerror(err)}")
        set_status_flags(fd, entry.get("flags", 0))
        return fd

    def after_tasks(self, rctx, entry: dict) -> None:
        restore_watches(rctx, rctx.file_fds[entry["id"]], entry["detail"].get("watches") or [])


def dump_inotify(ctx, probe: FdProbe) -> dict:
    what = "an inotify group"
    check_status_flags(probe, what)
    if probe.copy < 0:
        raise refuse(probe, what, "it could not be copied with pidfd_getfd")
    queued = fionread(probe.copy)
    if queued:
        raise refuse(
            probe,
            what,
            f"{queued} bytes of events are queued and not read yet; inotify events cannot be saved",
        )
    marks = sorted(probe.info.extra.get("inotify", ()), key=lambda m: m.wd)
    watches = []
    for m in marks:
        if m.wd > MAX_WD:
            raise refuse(
                probe, what, f"its watch descriptor {m.wd} is too high to recreate (> {MAX_WD})"
            )
        watches.append(
            {
                "wd": m.wd,
                "mask": m.mask & MASK_BITS,
                "path": watch_path(ctx, probe, m),
                "ino": m.ino,
                "dev": f"{procfs.kdev_major(m.sdev)}:{procfs.kdev_minor(m.sdev)}",
            }
        )
    return {"_type": "inotify", "watches": watches}


# --- restore -------------------------------------------------------------------------------------


def _add_watch(ifd: int, path_fd: int, mask: int) -> int:
    wd = _libc.inotify_add_watch(ifd, f"/proc/self/fd/{path_fd}".encode(), mask)
    if wd < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return wd


def drain(ifd: int) -> None:
    """Read away every queued event (FIONREAD says how much; the read never blocks)."""
    while True:
        n = fionread(ifd)
        if not n:
            return
        try:
            os.read(ifd, n)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return
            raise


def _skip(ifd: int, dummy_fd: int, first: int, last: int) -> None:
    for want in range(first, last + 1):
        wd = _add_watch(ifd, dummy_fd, IN_ALL_EVENTS)
        if wd != want:
            raise RestoreError(f"inotify handed out wd {wd} while skipping to {want}")
        if _libc.inotify_rm_watch(ifd, wd) < 0:
            err = ctypes.get_errno()
            raise RestoreError(f"Can't remove a placeholder inotify watch: {os.strerror(err)}")
        if (want - first) % DRAIN_EVERY == DRAIN_EVERY - 1:
            drain(ifd)


def restore_watches(rctx, ifd: int, watches: list[dict]) -> None:
    if not watches:
        return
    watches = sorted(watches, key=lambda w: w["wd"])
    holes = dict(gaps([w["wd"] for w in watches]))
    dummy = os.memfd_create("vzpy-inotify-gap", os.MFD_CLOEXEC) if holes else -1
    try:
        nxt = 1
        for w in watches:
            if nxt in holes:
                _skip(ifd, dummy, nxt, holes[nxt])
            try:
                pfd = rctx.open_in_root(w["path"], os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                raise RestoreError(
                    f"Can't find {w['path']} to watch with inotify: {e.strerror}"
                ) from e
            try:
                wd = _add_watch(ifd, pfd, w["mask"])
            except OSError as e:
                raise RestoreError(f"Can't watch {w['path']} with inotify: {e.strerror}") from e
            finally:
                os.close(pfd)
            if wd != w["wd"]:
                raise RestoreError(
                    f"inotify watch on {w['path']} came back as wd {wd}, not {w['wd']} "
                    "(two watched paths are the same file now?)"
                )
            nxt = wd + 1
    finally:
        if dummy >= 0:
            os.close(dummy)
    drain(ifd)


register_fd_kind(InotifyKind())
