"""memfd files: as open descriptors and as mappings, one object each.

A memfd is a nameless tmpfs inode (mm/memfd.c): ``/proc/PID/fd/N`` and
``/proc/PID/maps`` show it as ``/memfd:NAME (deleted)``.  Its contents are a
shared memory object like any other: resources/memory.py saves the ones that
are mapped (pages-shmem-INO.img, keyed by inode, read once) and this module
saves the ones only held as descriptors into the same place, so a memfd both
mapped and open is saved once and rebuilt as one inode.

Dump:
  - ``MemfdKind`` claims an fd whose file is on the kernel's internal shm
    mount (the device our own probe memfd has) and is named ``/memfd:``; its
    detail is just the inode; mode, owner and seals (``F_GET_SEALS``) go to
    memfd_inodes.img with every other memfd of the container;
  - ``MemfdResource.dump`` completes memfd_inodes.img with the memfds that are
    only mapped (mode, owner, seals read through ``/proc/PID/map_files``).
  hugetlbfs memfds (MFD_HUGETLB) are refused.

Restore (``restore_early``, before any task): each memfd is made with
``memfd_create(NAME, MFD_ALLOW_SEALING)``, sized, filled, given its mode and
owner, and sealed, then put in ``rctx.shmem`` where the mapping code
(``RestoreCtx.shmem_fd_for``) and ``MemfdKind.restore`` find it.  Each
descriptor is a new open file description on that inode
(``/proc/self/fd``), with its flags and offset.

Seals and their order: F_SEAL_WRITE goes on at once (the dumped state can
have no writable shared mapping of it, and a read-only shared mapping made
after the seal loses VM_MAYWRITE, which sealing first requires: mm/memfd.c
``memfd_add_seals``, ``mapping_deny_writable``); F_SEAL_FUTURE_WRITE, which
may coexist with older writable mappings, waits for ``restore_late``, when
every task has mapped what it had; F_SEAL_SEAL comes last.  A memfd made
without MFD_ALLOW_SEALING shows F_SEAL_SEAL from birth, so the dumped seals
say all there is.
"""

from __future__ import annotations

import fcntl
import os
import stat

from ..errors import RestoreError, UnsupportedError
from ..images.schema import Field, register_record
from . import base
from .filedata import save_file_data
from .files import FdKind, FdProbe, register_fd_kind
from .ipc import HUGETLBFS_MAGIC, fs_magic

MEMFD_FILE = register_record(
    "memfd_file",
    id=1320,
    category="file",
    fields=[
        Field("ino", 1, "uint", optional=False, doc="the memfd inode, in memfd_inodes.img"),
    ],
    doc="an open memfd descriptor (file_entry detail)",
)
MEMFD_INODE = register_record(
    "memfd_inode",
    id=1321,
    category="memory",
    fields=[
        Field("ino", 1, "uint", optional=False, doc="contents in pages-shmem-INO.img"),
        Field("name", 2, "str", doc="the name given to memfd_create"),
        Field("size", 3, "uint"),
        Field("mode", 4, "uint"),
        Field("uid", 5, "uint"),
        Field("gid", 6, "uint"),
        Field("seals", 7, "uint", hex=True, doc="F_GET_SEALS"),
    ],
)
MEMFD_INODES = register_record("memfd_inodes", id=1322, category="memory", fields=[
    Field("inodes", 1, "list[memfd_inode]"),
], doc="every memfd of the container: memfd_inodes.img")  # fmt: skip

F_ADD_SEALS, F_GET_SEALS = 1033, 1034
F_SEAL_SEAL, F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_WRITE = 0x1, 0x2, 0x4, 0x8
F_SEAL_FUTURE_WRITE, F_SEAL_EXEC = 0x10, 0x20
MFD_CLOEXEC, MFD_ALLOW_SEALING = 0x1, 0x2
PREFIX = "/memfd:"
SUFFIX = " (deleted)"

_shm_dev: int | None = None


def shm_dev() -> int:
    """st_dev of the kernel's internal tmpfs (shm_mnt), where every memfd lives."""
    global _shm_dev
    if _shm_dev is None:
        fd = os.memfd_create("vzpy-probe", MFD_CLOEXEC)
        try:
            _shm_dev = os.fstat(fd).st_dev
        finally:
            os.close(fd)
    return _shm_dev


def memfd_name(path: str) -> str:
    """NAME of '/memfd:NAME (deleted)'."""
    name = path[len(PREFIX) :] if path.startswith(PREFIX) else path
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def _inodes(ctx) -> dict[int, dict]:
    return ctx.extra.setdefault("memfd_inodes", {})


def _describe(ctx, fd: int, path: str, where: str) -> None:
    """Note mode, owner and seals of the memfd open as our `fd`."""
    st = os.fstat(fd)
    ino = st.st_ino
    if ino in _inodes(ctx):
        return
    if fs_magic(fd) == HUGETLBFS_MAGIC:
        raise UnsupportedError(
            f"Can't dump {where}: it is a hugetlbfs memfd (MFD_HUGETLB), not supported"
        )
    try:
        seals = fcntl.fcntl(fd, F_GET_SEALS)
    except OSError:
        seals = F_SEAL_SEAL
    _inodes(ctx)[ino] = {
        "ino": ino, "name": memfd_name(path), "size": st.st_size, "mode": stat.S_IMODE(st.st_mode),
        "uid": st.st_uid, "gid": st.st_gid, "seals": seals,
    }  # fmt: skip


def _save_contents(ctx, fd: int, ino: int, path: str, pid: int) -> None:
    """Contents of an unmapped memfd into pages-shmem-INO.img, as memory.py does
    for mapped ones (and registered with it, so a later mapping reuses them)."""
    done = ctx.shmem.done
    if ino in done:
        done[ino]["users"].append(pid)
        return
    size = os.fstat(fd).st_size
    with ctx.img.pages(f"shmem-{ino}") as pw:
        n = save_file_data(fd, pw, size)
        ctx.stats["shmem_bytes"] = ctx.stats.get("shmem_bytes", 0) + n
        pw.close()
    done[ino] = {"ino": ino, "size": size, "kind": "memfd", "path": path, "users": [pid]}


class MemfdKind(FdKind):
    name = "memfd_file"
    record_types = ("memfd_file",)

    def match(self, probe: FdProbe) -> bool:
        if probe.st is None or probe.copy < 0 or not stat.S_ISREG(probe.st.st_mode):
            return False
        if not probe.link.startswith(PREFIX):
            return False
        if probe.st.st_dev == shm_dev():
            return True
        try:
            return fs_magic(probe.copy) == HUGETLBFS_MAGIC  # refused in dump
        except OSError:
            return False

    def dump(self, ctx, probe: FdProbe) -> dict:
        where = f"task {probe.nspid}: fd {probe.fd} ({probe.link})"
        # A description of our own: seeking ours would move the task's offset.
        fd = os.open(f"/proc/self/fd/{probe.copy}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _describe(ctx, fd, probe.link, where)
            _save_contents(ctx, fd, probe.st.st_ino, probe.link, probe.pid)
        finally:
            os.close(fd)
        return {"_type": "memfd_file", "ino": probe.st.st_ino}

    def restore(self, rctx, entry: dict) -> int:
        ino = entry["detail"]["ino"]
        inode = rctx.shmem.get(ino)
        if inode is None:
            raise RestoreError(f"memfd inode {ino} is missing from the image")
        flags = entry.get("flags", 0) & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_CLOEXEC)
        fd = os.open(f"/proc/self/fd/{inode}", flags | os.O_CLOEXEC)
        os.lseek(fd, entry.get("pos", 0), os.SEEK_SET)
        return fd


register_fd_kind(MemfdKind(), first=True)


def _describe_mapped(ctx) -> None:
    """memfds that are only mapped: mode, owner and seals through map_files."""
    for ino, obj in ctx.shmem.done.items():
        if obj.get("kind") != "memfd" or ino in _inodes(ctx):
            continue
        for pid in obj.get("users") or []:
            vma = next(
                (
                    v
                    for v in ctx.reader.maps(pid)
                    if v.inode == ino and (v.path or "").startswith(PREFIX)
                ),
                None,
            )
            if vma is None:
                continue
            fd = os.open(
                f"/proc/{pid}/map_files/{vma.start:x}-{vma.end:x}", os.O_RDONLY | os.O_CLOEXEC
            )
            try:
                _describe(
                    ctx, fd, vma.path, f"the mapping {vma.start:x}-{vma.end:x} of host pid {pid}"
                )
            finally:
                os.close(fd)
            break


def _make(rctx, rec: dict) -> int:
    meta = rctx.shmem_meta.get(rec["ino"], {})
    fd = os.memfd_create(rec.get("name") or "", MFD_CLOEXEC | MFD_ALLOW_SEALING)
    try:
        os.ftruncate(fd, meta.get("size", rec.get("size", 0)))
        name = f"shmem-{rec['ino']}"
        if rctx.img.has("pagemap", name):
            pr = rctx.img.pages(name)
            try:
                for off, view in pr.segments():
                    os.pwritev(fd, [view], off)
                    view.release()
            finally:
                pr.close()
        os.fchmod(fd, rec.get("mode", 0o777))
        os.fchown(fd, rec.get("uid", 0), rec.get("gid", 0))
        now = rec.get("seals", 0) & ~(F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)
        if rec.get("seals", 0) & F_SEAL_SEAL and not rec.get("seals", 0) & F_SEAL_FUTURE_WRITE:
            now |= F_SEAL_SEAL
        if now:
            fcntl.fcntl(fd, F_ADD_SEALS, now)
    except BaseException:
        os.close(fd)
        raise
    return fd


class MemfdResource(base.CtResource):
    name = "memfd_inodes"
    order = 40

    def dump(self, ctx) -> None:
        _describe_mapped(ctx)
        inodes = _inodes(ctx)
        if inodes:
            ctx.img.write("memfd_inodes", {"inodes": list(inodes.values())})

    def restore_early(self, rctx) -> None:
        if not rctx.img.has("memfd_inodes"):
            return
        recs = rctx.img.read("memfd_inodes").get("inodes") or []
        rctx.extra["memfd_inodes"] = recs
        for rec in recs:
            if rec["ino"] not in rctx.shmem:
                try:
                    rctx.shmem[rec["ino"]] = _make(rctx, rec)
                except OSError as e:
                    raise RestoreError(
                        f"Can't rebuild memfd {rec.get('name')!r}: {e.strerror}"
                    ) from e

    def restore_late(self, rctx) -> None:
        for rec in rctx.extra.get("memfd_inodes") or []:
            seals = rec.get("seals", 0)
            if seals & F_SEAL_FUTURE_WRITE and rec["ino"] in rctx.shmem:
                fcntl.fcntl(
                    rctx.shmem[rec["ino"]], F_ADD_SEALS, seals & (F_SEAL_FUTURE_WRITE | F_SEAL_SEAL)
                )


MEMFD_RESOURCE = base.register_ct_resource(MemfdResource())
