"""epoll: an interest list of (target file, fd number) items with events and data.

What the kernel keeps.  Each item is keyed by the target *file* and the fd
*number* it was added under (``struct epoll_filefd``): the number is what the
owner passes to EPOLL_CTL_MOD/DEL, and the file is what is polled.  epoll
holds no reference on the target: the item goes away when the file's last
reference does, not when that fd is closed, so an item may outlive its fd (a
dup or a forked child keeps the file open) and one fd number may even appear
twice, with two files.  fdinfo (``ep_show_fdinfo``) lists the items in tree
order: ``tfd``, ``events`` (EPOLLET, EPOLLONESHOT... included; a fired
one-shot item keeps only those bits), ``data``, and the target's inode.

Dump.  The file behind each item is found with kcmp(KCMP_EPOLL_TFD), which
compares the target of item (epfd, tfd, toff) -- toff counts the items with
the same tfd, in fdinfo order -- with any task's fd: first the owner's fd
``tfd``, then the owner's other fds, then every other task's.  The item is
saved as "the file task P holds at fd F"; no task holding it (kept open only
by a unix socket in flight, say) refuses the dump.

Restore.  ``epoll_create1`` in the restorer; the items are added once every
file exists (``after_tasks``).  EPOLL_CTL_ADD takes the fd number from the
caller's table, so the adding is done by a thread of ours with a private fd
table (``unshare(CLONE_FILES)``): the target file is dup2()ed to the dumped
number there, added, and closed; no task's table is touched.

Readiness is not saved: it is the state of the targets, and epoll polls each
one when it is added, so a ready level-triggered target is reported again.
An edge-triggered target that was ready and already reported is reported
once more after restore (one spurious wake-up; CRIU behaves the same).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import resource
import struct
import threading

from ..errors import RestoreError
from ..images.schema import Field, register_record
from ..sys import libc
from .anon_inodes import check_status_flags, refuse, set_status_flags
from .files import FdKind, FdProbe, register_fd_kind

EPOLL_TARGET = register_record("epoll_target", id=1111, category="file", fields=[
    Field("tfd", 1, "uint", optional=False, doc="fd number the item was added under"),
    Field("events", 2, "uint", hex=True),
    Field("data", 3, "uint", hex=True),
    Field("holder_pid", 4, "uint", optional=False, doc="a task (container pid) holding the target"),
    Field("holder_fd", 5, "uint", optional=False, doc="...at this fd"),
    Field("ino", 6, "uint", doc="target inode at dump, for diagnostics"),
], doc="one item of an epoll set")  # fmt: skip
EPOLL = register_record("epoll", id=1110, category="file", fields=[
    Field("targets", 1, "list[epoll_target]"),
], doc="an epoll instance (file_entry detail)")  # fmt: skip

LINK = "anon_inode:[eventpoll]"
EPOLL_CTL_ADD = 1
EPOLL_CLOEXEC = os.O_CLOEXEC


class KcmpEpollSlot(ctypes.Structure):
    """struct kcmp_epoll_slot { __u32 efd; __u32 tfd; __u64 toff; } (16 bytes)."""

    _fields_ = [("efd", ctypes.c_uint32), ("tfd", ctypes.c_uint32), ("toff", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.epoll_ctl.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_char_p]


def with_offsets(tfds) -> list[tuple[object, int]]:
    """Pair each fdinfo item with its toff: its index among the items of the same tfd."""
    seen: dict[int, int] = {}
    out = []
    for t in tfds:
        toff = seen.get(t.tfd, 0)
        seen[t.tfd] = toff + 1
        out.append((t, toff))
    return out


def pack_event(events: int, data: int) -> bytes:
    """struct epoll_event { __u32 events; __u64 data; } __attribute__((packed)) on x86_64."""
    return struct.pack("=IQ", events & 0xFFFFFFFF, data & 0xFFFFFFFFFFFFFFFF)


# --- dump ----------------------------------------------------------------------------------------


def _fd_list(ctx, pid: int) -> list[int]:
    cache = ctx.extra.setdefault("epoll", {}).setdefault("fds", {})
    fds = cache.get(pid)
    if fds is None:
        try:
            fds = sorted(int(n) for n in os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            fds = []
        cache[pid] = fds
    return fds


def _candidates(ctx, probe: FdProbe, tfd: int):
    """(host pid, container pid, fd) that may hold the target, likeliest first."""
    yield probe.pid, probe.nspid, tfd
    for fd in _fd_list(ctx, probe.pid):
        if fd not in (tfd, probe.fd):
            yield probe.pid, probe.nspid, fd
    for p in ctx.procs:
        if p.pid == probe.pid or p.zombie:
            continue
        for fd in _fd_list(ctx, p.pid):
            yield p.pid, p.nspid, fd


def find_holder(ctx, probe: FdProbe, tfd: int, toff: int) -> tuple[int, int] | None:
    """(container pid, fd) of a task fd holding the target of item (tfd, toff), or None."""
    slot = KcmpEpollSlot(probe.fd, tfd, toff)
    for host_pid, nspid, fd in _candidates(ctx, probe, tfd):
        try:
            same = (
                libc.kcmp(host_pid, probe.pid, libc.KCMP_EPOLL_TFD, fd, ctypes.addressof(slot)) == 0
            )
        except OSError:
            continue  # that fd is not open (EBADF), or the task is gone
        if same:
            return nspid, fd
    return None


class EpollKind(FdKind):
    name = "epoll"
    record_types = ("epoll",)

    def match(self, probe: FdProbe) -> bool:
        return probe.link == LINK

    def dump(self, ctx, probe: FdProbe) -> dict:
        return dump_epoll(ctx, probe)

    def restore(self, rctx, entry: dict) -> int:
        fd = _libc.epoll_create1(EPOLL_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise RestoreError(f"Can't create an epoll instance: {os.strerror(err)}")
        set_status_flags(fd, entry.get("flags", 0))
        return fd

    def after_tasks(self, rctx, entry: dict) -> None:
        restore_targets(rctx, entry)


def dump_epoll(ctx, probe: FdProbe) -> dict:
    what = "an epoll instance"
    check_status_flags(probe, what)
    targets = []
    for t, toff in with_offsets(probe.info.extra.get("tfd", ())):
        holder = find_holder(ctx, probe, t.tfd, toff)
        if holder is None:
            raise refuse(
                probe,
                what,
                f"the file it watches under fd {t.tfd} (inode {t.ino}) is not open in any "
                "task of the container (the fd was closed and the file is kept alive "
                "elsewhere), so vzpy cannot tell which file to put back",
            )
        targets.append(
            {
                "tfd": t.tfd,
                "events": t.events,
                "data": t.data,
                "holder_pid": holder[0],
                "holder_fd": holder[1],
                "ino": t.ino,
            }
        )
    return {"_type": "epoll", "targets": targets}


# --- restore -------------------------------------------------------------------------------------


def _holder_file_id(rctx, pid: int, fd: int) -> int | None:
    tables = rctx.extra.setdefault("epoll_fd_tables", {})
    table = tables.get(pid)
    if table is None:
        table = {}
        if rctx.img.has("fdinfo", str(pid)):
            for e in rctx.img.read("fdinfo", str(pid)).get("fds") or []:
                table[e["fd"]] = e["file_id"]
        tables[pid] = table
    return table.get(fd)


def restore_targets(rctx, entry: dict) -> None:
    epfd = rctx.file_fds[entry["id"]]
    items = []
    for t in entry["detail"].get("targets") or []:
        fid = _holder_file_id(rctx, t["holder_pid"], t["holder_fd"])
        ours = rctx.file_fds.get(fid) if fid is not None else None
        if ours is None:
            raise RestoreError(
                f"epoll target fd {t['tfd']}: task {t['holder_pid']} fd {t['holder_fd']} "
                "was not restored"
            )
        items.append((t["tfd"], t["events"], t["data"], ours))
    if items:
        add_targets(epfd, items)


def _room_for(max_fd: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if max_fd < soft:
        return
    if max_fd >= hard:
        raise RestoreError(f"epoll target fd {max_fd} is above the restorer's fd limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def add_targets(epfd: int, items: list[tuple[int, int, int, int]]) -> None:
    """EPOLL_CTL_ADD each (tfd, events, data, our fd of the target) under number tfd.

    Runs in a thread with a private copy of our fd table, so that the target
    can sit at number tfd there whatever our own table holds at that number.
    """
    hi = max(tfd for tfd, *_ in items) + 1
    _room_for(hi + len(items) + 1)
    result: dict = {}

    def body() -> None:
        try:
            libc.unshare(libc.CLONE_FILES)
            # Everything we use goes above every tfd first: dup2 onto a tfd may
            # replace whatever number our copy had there.
            ep = fcntl.fcntl(epfd, fcntl.F_DUPFD_CLOEXEC, hi)
            high: dict[int, int] = {}
            for *_, ours in items:
                if ours not in high:
                    high[ours] = fcntl.fcntl(ours, fcntl.F_DUPFD_CLOEXEC, hi)
            for tfd, events, data, ours in items:
                os.dup2(high[ours], tfd, inheritable=False)
                try:
                    if _libc.epoll_ctl(ep, EPOLL_CTL_ADD, tfd, pack_event(events, data)) < 0:
                        err = ctypes.get_errno()
                        raise RestoreError(
                            f"Can't add fd {tfd} (events {events:#x}) to an epoll set: {os.strerror(err)}"
                        )
                finally:
                    os.close(tfd)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller below
            result["error"] = e

    # The private table dies with the thread, closing its copies (not the files).
    t = threading.Thread(target=body, name="epoll-restore")
    t.start()
    t.join()
    err = result.get("error")
    if isinstance(err, OSError):
        raise RestoreError(f"Can't rebuild an epoll set: {err}") from err
    if err is not None:
        raise err


register_fd_kind(EpollKind())
