"""Open files: the fd tables of the container's processes, and the kinds of file.

Dump: every fd of a task is copied into the dumper with pidfd_getfd; copies
that refer to the same open file description (kcmp KCMP_FILE) get one file
id, so offsets and flags shared after fork() stay shared.  Each file goes to
the first registered ``FdKind`` that claims it; a file nobody claims refuses
the dump, naming the task, the fd and what it is.

Restore: each file is rebuilt once, in the restorer (``kind.restore`` returns
an fd of ours), then handed to every task holding it through the FdChannel
and dup3()ed to its number.

Adding a kind of file = one module that defines an ``FdKind`` subclass, calls
``register_fd_kind`` at import time and registers its record type with
``register_record``; ``load_kinds()`` imports every resources module.
"""

from __future__ import annotations

import errno
import fcntl
import importlib
import os
import pkgutil
import stat
import struct
from dataclasses import dataclass, field

from .. import procfs
from ..errors import RestoreError, UnsupportedError
from ..images.schema import Field, register_record
from ..sys import libc

PIPE = register_record(
    "pipe",
    id=1001,
    category="file",
    fields=[
        Field("pipe_id", 1, "uint", optional=False, doc="pipe inode at dump"),
        Field("fifo_path", 2, "str", doc="for a FIFO opened by path"),
    ],
)
PIPE_DATA = register_record(
    "pipe_data",
    id=1002,
    category="file",
    fields=[
        Field("pipe_id", 1, "uint", optional=False),
        Field("size", 2, "uint", doc="F_GETPIPE_SZ"),
        Field("data", 3, "bytes", doc="unread bytes, read with tee() so the pipe kept them"),
    ],
    doc="contents of a pipe buffer: pipe_data-INO.img",
)
GHOST_FILE = register_record("ghost_file", id=1003, category="file", fields=[
    Field("ino", 1, "uint", optional=False),
    Field("mode", 2, "uint"),
    Field("data", 3, "bytes", doc="contents of a file that was unlinked while open"),
], doc="ghost_file-INO.img")  # fmt: skip

O_ACCMODE = 0o3
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
F_GETPIPE_SZ = 1032
F_SETPIPE_SZ = 1031
SPLICE_F_NONBLOCK = 2


@dataclass
class FdProbe:
    """What the dumper knows about one fd of one task."""

    pid: int  # host pid
    nspid: int
    fd: int
    link: str
    info: procfs.FdInfo
    copy: int  # our copy of the fd (pidfd_getfd), -1 if it cannot be copied
    st: os.stat_result | None

    @property
    def flags(self) -> int:
        return self.info.flags


class FdKind:
    """One kind of open file: how to recognise, save and rebuild it."""

    name = "?"

    def match(self, probe: FdProbe) -> bool:
        raise NotImplementedError

    def dump(self, ctx, probe: FdProbe) -> dict:
        """Return the kind's detail record (a dict with ``_type`` naming its record type)."""
        raise NotImplementedError

    def restore(self, rctx, entry: dict) -> int:
        """Rebuild the file in the restorer; return our fd (the caller closes it)."""
        raise NotImplementedError

    def after_tasks(self, rctx, entry: dict) -> None:  # noqa: B027 - optional hook
        """Called once all tasks hold their fds (e.g. to fill epoll sets)."""


KINDS: list[FdKind] = []


def register_fd_kind(kind: FdKind, *, first: bool = False) -> FdKind:
    """Add a kind; ``first`` puts it before the others (a kind narrower than
    one registered earlier: memfd and mqueue files are S_ISREG too)."""
    if first:
        KINDS.insert(0, kind)
    else:
        KINDS.append(kind)
    return kind


def load_kinds() -> None:
    from .. import resources

    for mod in pkgutil.iter_modules(resources.__path__):
        importlib.import_module(f"vzpy.resources.{mod.name}")


def kind_for_detail(detail: dict) -> FdKind:
    typ = detail.get("_type")
    for k in KINDS:
        if typ in getattr(k, "record_types", (k.name,)):
            return k
    raise RestoreError(f"No restorer for file kind {typ}")


# --- the dump side ------------------------------------------------------------------------


@dataclass
class FileTable:
    """Every open file description of the container, by id."""

    entries: list[dict] = field(default_factory=list)
    copies: list[int] = field(default_factory=list)  # our fds, closed at the end
    _by_ino: dict[tuple[int, int], list[tuple[int, int]]] = field(default_factory=dict)
    next_id: int = 1
    mapped: dict[str, dict] = field(default_factory=dict)

    def close(self) -> None:
        for fd in self.copies:
            try:
                os.close(fd)
            except OSError:
                pass
        self.copies.clear()

    def note_mapped_file(self, ctx, proc, vma) -> None:
        """A file mapped by a task: remember it (the file system travels with the container)."""
        self.mapped.setdefault(vma.path, {"path": vma.path, "ino": vma.inode})

    def _identify(self, probe: FdProbe) -> int | None:
        """File id of an already seen description of the same file, via kcmp.

        Descriptions of one inode are kept sorted in kcmp's order (it orders
        struct file pointers, obfuscated but consistent), so finding one is a
        binary search: anonymous-inode files (every eventfd shares one inode)
        stay cheap when a container holds thousands of them.
        """
        if probe.st is None or probe.copy < 0:
            return None
        group = self._by_ino.get((probe.st.st_dev, probe.st.st_ino))
        if not group:
            return None
        lo, hi = 0, len(group)
        me = os.getpid()
        while lo < hi:
            mid = (lo + hi) // 2
            fid, other = group[mid]
            try:
                c = libc.kcmp(me, me, libc.KCMP_FILE, probe.copy, other)
            except OSError:
                return None
            if c == 0:
                return fid
            if c == 1:  # ours sorts first
                hi = mid
            elif c == 2:
                lo = mid + 1
            else:  # no ordering available: fall back to a linear scan
                for fid2, other2 in group:
                    if libc.kcmp(me, me, libc.KCMP_FILE, probe.copy, other2) == 0:
                        return fid2
                return None
        return None

    def _remember(self, probe: FdProbe, fid: int) -> None:
        key = (probe.st.st_dev, probe.st.st_ino)
        group = self._by_ino.setdefault(key, [])
        lo, hi = 0, len(group)
        me = os.getpid()
        while lo < hi:
            mid = (lo + hi) // 2
            if libc.kcmp(me, me, libc.KCMP_FILE, probe.copy, group[mid][1]) == 1:
                hi = mid
            else:
                lo = mid + 1
        group.insert(lo, (fid, probe.copy))

    def dump_fds(self, ctx, proc) -> dict:
        pid = proc.pid
        fds = []
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError as e:
            raise UnsupportedError(f"Can't read fds of task {proc.nspid}: {e.strerror}") from e
        for name in sorted(names, key=int):
            fd = int(name)
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
                    info = procfs.parse_fdinfo(f.read())
            except FileNotFoundError:
                continue
            try:
                copy = libc.pidfd_getfd(proc.pidfd, fd)
                self.copies.append(copy)
                st = os.fstat(copy)
            except OSError:
                copy, st = -1, None
            probe = FdProbe(pid, proc.nspid, fd, link, info, copy, st)
            fid = self._identify(probe)
            if fid is None:
                kind = next((k for k in KINDS if k.match(probe)), None)
                if kind is None:
                    raise UnsupportedError(
                        f"Can't dump task {proc.nspid} ({proc.comm}): fd {fd} is {link}, "
                        "a kind of file vzpy cannot checkpoint yet"
                    )
                detail = kind.dump(ctx, probe)
                fid = self.next_id
                self.next_id += 1
                entry = {
                    "id": fid,
                    "flags": info.flags & ~O_CLOEXEC,
                    "pos": info.pos,
                    "detail": detail,
                }
                fown = dump_owner(ctx, probe)
                if fown is not None:
                    entry["fown"] = fown
                self.entries.append(entry)
                if st is not None and copy >= 0:
                    self._remember(probe, fid)
            fds.append({"fd": fd, "file_id": fid, "cloexec": bool(info.flags & O_CLOEXEC)})
        return {"files_id": proc.nspid, "fds": fds}


# --- signal-driven I/O: O_ASYNC and the F_SETOWN owner (per open file, like the flags) ----

O_ASYNC = 0o20000
F_SETSIG, F_GETSIG = 10, 11
F_SETOWN_EX, F_GETOWN_EX = 15, 16
F_OWNER_TID, F_OWNER_PID, F_OWNER_PGRP = 0, 1, 2
_OWNER_WORDS = {F_OWNER_TID: "thread", F_OWNER_PID: "process", F_OWNER_PGRP: "process group"}


def dump_owner(ctx, probe: FdProbe) -> dict | None:
    """The file's F_SETOWN_EX owner and F_SETSIG signal, read on our copy of it.

    The owner is a pid of our (the node's) namespace; the image holds the
    container's number for it.  A process group's id is its leader's pid.
    """
    if probe.copy < 0:
        return None
    try:
        typ, pid = struct.unpack("ii", fcntl.fcntl(probe.copy, F_GETOWN_EX, bytes(8)))
        sig = fcntl.fcntl(probe.copy, F_GETSIG)
    except OSError:
        return None
    if pid == 0 and sig == 0:
        return None
    ns = 0
    if pid and typ == F_OWNER_PGRP:
        # the group's leader may be gone: any member tells its number inside
        ns = next((p.pgid for p in ctx.procs if p.stat.pgrp == pid), 0)
    elif pid:
        ns = ctx.ns_tid(pid)
    if pid and not ns:
        raise UnsupportedError(
            f"Can't dump task {probe.nspid}: fd {probe.fd} ({probe.link}) sends its I/O "
            f"signals to {_OWNER_WORDS.get(typ, 'owner')} {pid} of the node, outside the container"
        )
    if sig and probe.flags & O_ASYNC:
        # The kernel puts the fd number of the F_SETFL(O_ASYNC) call into si_fd;
        # restore sets O_ASYNC on its own copy of the file.
        raise UnsupportedError(
            f"Can't dump task {probe.nspid}: fd {probe.fd} ({probe.link}) has O_ASYNC with a "
            f"queued signal (F_SETSIG {sig}), which vzpy cannot restore yet"
        )
    return {"pid_type": typ, "pid": ns, "signum": sig}


def restore_owner(rctx, entry: dict, ours: int) -> None:
    """Give our copy of a restored file its owner, signal and O_ASYNC (before resume)."""
    fown = entry.get("fown") or {}
    if fown.get("pid"):
        typ, ns = fown.get("pid_type", F_OWNER_PID), fown["pid"]
        host = 0
        for t in rctx.tasks:
            if typ == F_OWNER_TID and ns in t.host_tids:
                host = t.host_tids[ns]
            elif typ == F_OWNER_PID and t.pid == ns:
                host = t.host_pid
            elif typ == F_OWNER_PGRP and t.pgid == ns and not t.zombie:
                host = os.getpgid(t.host_pid)
        if not host:
            raise RestoreError(f"File {entry['id']}: its I/O signal owner {ns} is not in the image")
        fcntl.fcntl(ours, F_SETOWN_EX, struct.pack("ii", typ, host))
    if fown.get("signum"):
        fcntl.fcntl(ours, F_SETSIG, fown["signum"])
    if entry.get("flags", 0) & O_ASYNC:
        # Only a change of the flag through F_SETFL arms it (the kinds restored
        # the file without it: restore/driver.py).
        fcntl.fcntl(ours, fcntl.F_SETFL, fcntl.fcntl(ours, fcntl.F_GETFL) | O_ASYNC)


def fmode_ok(flags: int) -> int:
    return flags & O_ACCMODE


# --- regular files, directories, device nodes ---------------------------------------------


class RegFileKind(FdKind):
    """Files reached by a path: regular files, directories, char devices, FIFOs (by path)."""

    name = "reg_file"
    record_types = ("reg_file",)

    def match(self, probe: FdProbe) -> bool:
        if probe.st is None:
            return False
        m = probe.st.st_mode
        if stat.S_ISREG(m) or stat.S_ISDIR(m):
            return probe.link.startswith("/")
        if stat.S_ISCHR(m):
            return probe.link.startswith("/dev/") and not probe.link.startswith("/dev/pts/")
        return False

    def dump(self, ctx, probe: FdProbe) -> dict:
        link = probe.link
        deleted = link.endswith(" (deleted)")
        path = link[: -len(" (deleted)")] if deleted else link
        st = probe.st
        rec = {
            "_type": "reg_file",
            "path": path,
            "mnt_id": probe.info.mnt_id,
            "size": st.st_size,
            "mode": st.st_mode,
            "dev": f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}",
            "ino": st.st_ino,
            "deleted": deleted,
        }
        _check_inside(ctx, probe, path)
        if deleted:
            if not stat.S_ISREG(st.st_mode):
                raise UnsupportedError(
                    f"Can't dump task {probe.nspid}: fd {probe.fd} is a deleted {link}"
                )
            ctx.deleted_files.save(ctx, probe, rec)
        elif probe.flags & O_PATH == 0 and stat.S_ISREG(st.st_mode):
            pass
        return rec

    def restore(self, rctx, entry: dict) -> int:
        d = entry["detail"]
        flags = entry["flags"] & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | O_CLOEXEC)
        if stat.S_ISREG(d.get("mode") or 0):
            flags &= ~O_TMPFILE  # made with O_TMPFILE (then linked or not): reopen the file
        path = d["path"]
        if d.get("deleted"):
            return rctx.deleted_files.reopen(rctx, entry)
        try:
            fd = rctx.open_in_root(path, flags | O_CLOEXEC | os.O_NOCTTY)
        except OSError as e:
            raise RestoreError(f"Can't reopen {path}: {e.strerror}") from e
        st = os.fstat(fd)
        if (
            stat.S_ISREG(st.st_mode)
            and d.get("size") is not None
            and st.st_size < entry.get("pos", 0)
        ):
            os.close(fd)
            raise RestoreError(
                f"File {path} is shorter than its saved offset ({st.st_size} < {entry['pos']})"
            )
        if entry.get("pos") and not stat.S_ISCHR(st.st_mode):
            os.lseek(fd, entry["pos"], os.SEEK_SET)
        return fd


register_fd_kind(RegFileKind())

# O_TMPFILE is __O_TMPFILE | O_DIRECTORY, and a file made with it keeps both bits in
# its status flags; reopening it must drop them (O_DIRECTORY would fail).
O_TMPFILE = 0o20000000 | os.O_DIRECTORY

MEM_MAJOR = 1  # /dev/null, zero, full, random, urandom: the same device in any /dev


def container_mount_ids(ctx) -> frozenset[int]:
    """The mount ids of the container's mount table (read once per dump)."""
    ids = ctx.extra.get("files.mnt_ids")
    if ids is None:
        with open(f"/proc/{ctx.init_pid}/mountinfo", "rb") as f:
            ids = frozenset(m.mnt_id for m in procfs.parse_mountinfo(f.read()))
        ctx.extra["files.mnt_ids"] = ids
    return ids


def _check_inside(ctx, probe: FdProbe, path: str) -> None:
    """Refuse a file the task reaches through a mount that is not the container's.

    Restore reopens a path inside the container's root, which would be another
    file (or none).  Such fds are typically vzctl exec's stdin/stdout/stderr,
    which a command started in the background keeps.
    """
    st = probe.st
    if probe.info.mnt_id in container_mount_ids(ctx):
        return
    if st is not None and stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == MEM_MAJOR:
        return
    raise UnsupportedError(
        f"Can't dump task {probe.nspid}: fd {probe.fd} is {path}, a file outside the "
        "container (a host mount); a command started with vzctl exec keeps vzctl's "
        "stdin/stdout/stderr unless it redirects them"
    )


class DeletedFiles:
    """Files opened and then unlinked: their contents travel in the image."""

    def __init__(self) -> None:
        self.saved: dict[int, str] = {}
        # restore: ghost id -> our fd of the re-made inode, shared by every fd
        # and mapping of that deleted file (resources/mapped_files.py)
        self.inodes: dict[int, int] = {}

    def save(self, ctx, probe: FdProbe, rec: dict) -> None:
        key = rec["ino"]
        rec["ghost_id"] = key
        if key in self.saved:
            return
        name = f"ghost-{key}"
        with open(f"/proc/{probe.pid}/fd/{probe.fd}", "rb") as src:
            data = src.read()
        ctx.img.write("ghost_file", {"ino": key, "mode": rec["mode"], "data": data}, name=str(key))
        self.saved[key] = name

    def inode_fd(self, rctx, ghost_id: int, path: str) -> int:
        """Our O_RDWR fd of the re-made, unlinked inode of ghost `ghost_id`; made
        once, so that every fd and mapping of one deleted file shares it."""
        fd = self.inodes.get(ghost_id)
        if fd is not None:
            return fd
        ghost = rctx.img.read("ghost_file", str(ghost_id))
        dirname = os.path.dirname(path) or "/"
        # Recreate it under a temporary name in its directory, open, unlink.
        tmpname = f"{dirname.rstrip('/')}/.vzpy-ghost-{ghost_id}"
        fd = rctx.open_in_root(tmpname, os.O_RDWR | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o600)
        try:
            os.write(fd, ghost["data"])
            os.fchmod(fd, stat.S_IMODE(ghost["mode"]))
        finally:
            rctx.unlink_in_root(tmpname)
        self.inodes[ghost_id] = fd
        return fd

    def reopen(self, rctx, entry: dict) -> int:
        d = entry["detail"]
        inode = self.inode_fd(rctx, d["ghost_id"], d["path"])
        flags = entry["flags"] & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | O_TMPFILE)
        # A description of its own (offset, flags) on the shared inode.
        fd = os.open(f"/proc/self/fd/{inode}", (flags & ~O_CLOEXEC) | O_CLOEXEC)
        os.lseek(fd, entry.get("pos", 0), os.SEEK_SET)
        return fd

    def close(self) -> None:
        for fd in self.inodes.values():
            os.close(fd)
        self.inodes.clear()


# --- pipes and FIFOs ----------------------------------------------------------------------------


class PipeKind(FdKind):
    """Pipes: both ends, the buffer size and any unread data (read with tee(), not consumed)."""

    name = "pipe"
    record_types = ("pipe",)

    def match(self, probe: FdProbe) -> bool:
        return probe.link.startswith("pipe:[") or (
            probe.st is not None and stat.S_ISFIFO(probe.st.st_mode) and probe.link.startswith("/")
        )

    def dump(self, ctx, probe: FdProbe) -> dict:
        fifo_path = probe.link if probe.link.startswith("/") else None
        ino = probe.st.st_ino if probe.st else procfs.parse_ns_link(probe.link)[1]
        rec = {"_type": "pipe", "pipe_id": ino, "fifo_path": fifo_path}
        ctx.pipes.dump_data(ctx, probe, ino)
        return rec

    def restore(self, rctx, entry: dict) -> int:
        d = entry["detail"]
        return rctx.pipes.end_for(rctx, d["pipe_id"], entry["flags"], d.get("fifo_path"))


register_fd_kind(PipeKind())


class Pipes:
    """Pipe buffers of the container, each read once."""

    def __init__(self) -> None:
        self.data: dict[int, dict] = {}

    def dump_data(self, ctx, probe: FdProbe, ino: int) -> None:
        if ino in self.data:
            return
        # A read end of the same pipe, whatever end the task holds.
        rfd = os.open(f"/proc/{probe.pid}/fd/{probe.fd}", os.O_RDONLY | os.O_NONBLOCK | O_CLOEXEC)
        try:
            size = fcntl.fcntl(rfd, F_GETPIPE_SZ)
            r, w = os.pipe2(os.O_NONBLOCK | O_CLOEXEC)
            try:
                fcntl.fcntl(w, F_SETPIPE_SZ, size)
                try:
                    n = libc.tee(rfd, w, size, SPLICE_F_NONBLOCK)
                except OSError as e:
                    if e.errno != errno.EAGAIN:
                        raise
                    n = 0
                buf = b""
                while len(buf) < n:
                    buf += os.read(r, n - len(buf))
            finally:
                os.close(r)
                os.close(w)
        finally:
            os.close(rfd)
        self.data[ino] = {"pipe_id": ino, "size": size, "data": buf}
        ctx.img.write("pipe_data", self.data[ino], name=str(ino))


class PipeRestorer:
    def __init__(self) -> None:
        self.made: dict[int, tuple[int, int]] = {}

    def end_for(self, rctx, ino: int, flags: int, fifo_path: str | None) -> int:
        if ino not in self.made:
            if fifo_path:
                # A FIFO in the container's file system: the pipe behind it is the
                # inode's, so open the path itself (O_RDWR never blocks and keeps
                # the buffer alive while we fill it and hand out ends).
                holder = rctx.open_in_root(fifo_path, os.O_RDWR | os.O_NONBLOCK | O_CLOEXEC)
                r, w = holder, os.dup(holder)
                os.set_inheritable(w, False)
            else:
                r, w = os.pipe2(O_CLOEXEC)
            rec = (
                rctx.img.read("pipe_data", str(ino))
                if rctx.img.has("pipe_data", str(ino))
                else None
            )
            if rec:
                try:
                    fcntl.fcntl(w, F_SETPIPE_SZ, rec["size"])
                except OSError:
                    pass
                if rec["data"]:
                    os.write(w, rec["data"])
            self.made[ino] = (r, w)
        r, w = self.made[ino]
        want = flags & O_ACCMODE
        end = w if want == os.O_WRONLY else r
        if want == os.O_RDWR:
            # A FIFO opened O_RDWR: a fresh description reading and writing the same pipe.
            fd = os.open(f"/proc/self/fd/{r}", os.O_RDWR | O_CLOEXEC)
        else:
            # Each task-side description is its own: reopen through /proc to get
            # a new file with our flags (O_NONBLOCK...), same pipe.
            fd = os.open(
                f"/proc/self/fd/{end}",
                (flags & ~O_CLOEXEC & ~os.O_CREAT) | O_CLOEXEC | os.O_NONBLOCK,
            )
            if not flags & os.O_NONBLOCK:
                fl = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, fl & ~os.O_NONBLOCK)
        return fd

    def close(self) -> None:
        for r, w in self.made.values():
            os.close(r)
            os.close(w)
        self.made.clear()
