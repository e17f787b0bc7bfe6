"""The container's mount namespace: its mount table and the contents of its
in-memory file systems.

What a container's mount table may hold (anything else is refused at dump,
naming the mount):
  - the root: the bind of VE_PRIVATE that container/spawn.py pivots into
    (checked by inode: ``/proc/INIT/root`` is VE_PRIVATE);
  - new instances of proc, sysfs, devpts, mqueue, tmpfs and ramfs, with their
    per-mount flags (ro, nosuid, nodev, noexec, atime...) and their file
    system options; a proc must be the container's own (its ``1`` is init);
  - bind mounts of paths of the root file system or of any of those mounts,
    files or directories, with their own flags (``mount -o remount,bind,ro``);
  - propagation: private, unbindable, shared and slave, where the master's
    peer group is in the container; a shared mount may not have submounts
    (mounts made under it at restore would propagate to its peers and give
    a different table).
  The contents of tmpfs/ramfs mounts are saved: directories, regular files
  (holes kept, data in a page file), hard links, symlinks, device nodes,
  FIFOs, with modes, owners, atime/mtime and extended attributes.  Sockets
  in them are left to whoever restores the socket (a bind() makes the file).

Dump (``MountsResource.dump``, tree seized):
  - every task must be in init's mount namespace (nested ones are refused);
  - /proc/INIT/mountinfo, with paths relative to the container's root,
    becomes the core ``mounts`` record.  ``root`` is stored as the mount's
    root within its file system, except for mounts of the root file system,
    whose ``root`` is relative to the container's root (so that it means the
    same on another node, whatever VE_PRIVATE is there);
  - tmpfs contents: a helper process joins the container's mount namespace
    and takes ``open_tree(OPEN_TREE_CLONE)`` copies of each tmpfs mount,
    without their submounts (what is hidden under /dev/pts is saved too),
    and passes them to us over SCM_RIGHTS; we walk them read-only into
    ``tmpfs_tree-MNTID.img`` + ``pages-tmpfs-MNTID.img``.

Restore (``prepare``: before the stub exists): ``SpawnSpec.mounts`` is
replaced by the dumped table, in the dumped order (parents and bind sources
come first).  container/spawn.py's stub makes each mount under VE_ROOT before
it pivots; each one's ``populate`` step then fills a tmpfs from the image
(before anything is mounted on top), sets the dumped per-mount flags (a read-
only tmpfs is filled first, then remounted read-only) and its propagation; the
last one also gives the root mount its flags and makes unbindable what was.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass

from .. import procfs
from ..errors import RestoreError, UnsupportedError
from ..images.schema import Field, register_record
from ..sys import libc
from ..sys.libc import (
    MS_BIND,
    MS_NOATIME,
    MS_NODEV,
    MS_NODIRATIME,
    MS_NOEXEC,
    MS_NOSUID,
    MS_NOSYMFOLLOW,
    MS_PRIVATE,
    MS_RDONLY,
    MS_RELATIME,
    MS_REMOUNT,
    MS_SHARED,
    MS_SLAVE,
    MS_STRICTATIME,
    MS_UNBINDABLE,
)
from . import base
from .filedata import load_file_data, save_file_data

XATTR = register_record(
    "tmpfs_xattr",
    id=1340,
    category="mount",
    fields=[
        Field("name", 1, "str", optional=False),
        Field("value", 2, "bytes", optional=False),
    ],
)
TMPFS_ENTRY = register_record(
    "tmpfs_entry",
    id=1341,
    category="mount",
    fields=[
        Field("path", 1, "str", optional=False, doc="relative to the mount's root; '' is the root"),
        Field("type", 2, "str", optional=False, doc="dir reg link symlink chr blk fifo"),
        Field("mode", 3, "uint", doc="st_mode"),
        Field("uid", 4, "uint"),
        Field("gid", 5, "uint"),
        Field("size", 6, "uint", doc="reg: bytes"),
        Field(
            "data", 7, "uint", hex=True, doc="reg: where its pages start in pages-tmpfs-MNTID.img"
        ),
        Field("target", 8, "str", doc="symlink: its target; link: the path it is a hard link of"),
        Field("rdev", 9, "uint", doc="chr/blk: device number"),
        Field("atime_ns", 10, "int"),
        Field("mtime_ns", 11, "int"),
        Field("xattrs", 12, "list[tmpfs_xattr]"),
    ],
)
TMPFS_TREE = register_record("tmpfs_tree", id=1342, category="mount", fields=[
    Field("mnt_id", 1, "uint", optional=False),
    Field("entries", 2, "list[tmpfs_entry]", doc="parents before children"),
    Field("pages", 3, "str", doc="id of the page file with the files' data"),
], doc="the contents of a tmpfs/ramfs mount: tmpfs_tree-MNTID.img")  # fmt: skip

SYS_open_tree = 428
OPEN_TREE_CLONE = 1
AT_FDCWD = -100
PAGE = 4096

NEW_FS = ("proc", "sysfs", "devpts", "mqueue", "tmpfs", "ramfs")
CONTENT_FS = ("tmpfs", "ramfs")
MNT_FLAGS = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "nosymfollow": MS_NOSYMFOLLOW,
}
PROPAGATION = MS_SHARED | MS_SLAVE | MS_PRIVATE | MS_UNBINDABLE


# --- the table ---------------------------------------------------------------------------------


def mnt_flags(options: str) -> int:
    """MS_* per-mount flags of a mountinfo options field (``rw,nosuid,relatime``)."""
    flags = 0
    for opt in options.split(","):
        flags |= MNT_FLAGS.get(opt, 0)
    if not flags & (MS_NOATIME | MS_RELATIME):
        flags |= MS_STRICTATIME
    return flags


def fs_data(fstype: str, super_options: str) -> str | None:
    """The mount(2) data that makes a file system like the dumped one."""
    opts = [o for o in super_options.split(",") if o and o not in ("rw", "ro")]
    return ",".join(opts) or None


def _rel(path: str, under: str) -> str | None:
    """`path` relative to `under` ('/' when equal), None if outside."""
    if under == "/":
        return path
    if path == under:
        return "/"
    if path.startswith(under.rstrip("/") + "/"):
        return path[len(under.rstrip("/")) :]
    return None


def _join(mountpoint: str, sub: str) -> str:
    return mountpoint.rstrip("/") + sub if sub != "/" else mountpoint


def plan_dump(mounts: list[procfs.Mount]) -> list[dict]:
    """Turn the container's mountinfo (as its init sees it) into mount records.

    Refuses (UnsupportedError) what vzpy cannot rebuild.  Each record gets
    ``kind``: 'root', 'fs' (a new instance of a file system) or 'bind', and
    for binds ``bind_from`` (the mount it is made from) -- kept out of the
    image, where the restore side finds them again (``plan_restore``).
    """
    ids = {m.mnt_id for m in mounts}
    roots = [m for m in mounts if m.mount_point == "/" and m.parent_id not in ids]
    if len(roots) != 1:
        raise UnsupportedError(
            "Can't dump the container's mounts: no single root mount in its mountinfo"
        )
    root = roots[0]
    root_root = root.root
    recs: list[dict] = []
    by_dev: dict[str, list[dict]] = {}
    children: dict[int, int] = {}
    members: dict[int, int] = {}
    masters = {m.master for m in mounts if m.master}
    for m in mounts:
        children[m.parent_id] = children.get(m.parent_id, 0) + 1
        if m.shared:
            members[m.shared] = members.get(m.shared, 0) + 1
    for m in _parents_first(mounts, root):
        dev = f"{m.major}:{m.minor}"
        where = f"mount {m.mount_point} ({m.fstype} {m.source})"
        if m.mount_point.endswith("//deleted"):
            raise UnsupportedError(f"Can't dump {where}: its mount point was deleted")
        rec = {
            "mnt_id": m.mnt_id,
            "parent_mnt_id": m.parent_id if m is not root else 0,
            "dev": dev,
            "root": m.root,
            "mountpoint": m.mount_point,
            "fstype": m.fstype,
            "source": m.source,
            "options": m.mount_options,
            "super_options": m.super_options,
            "flags": mnt_flags(m.mount_options) | (MS_UNBINDABLE if m.unbindable else 0),
            "sb_flags": MS_RDONLY if "ro" in m.super_options.split(",") else 0,
            "shared_id": m.shared or 0,
            "master_id": m.master or 0,
        }
        if m is root:
            rec["kind"] = "root"
            rec["root"] = "/"
        elif dev == f"{root.major}:{root.minor}":
            sub = _rel(m.root, root_root)
            if sub is None:
                raise UnsupportedError(
                    f"Can't dump {where}: it binds {m.root}, outside the container's root"
                )
            rec["kind"] = "bind"
            rec["root"] = sub
        elif dev in by_dev:
            rec["kind"] = "bind"
        elif m.fstype in NEW_FS:
            if m.root != "/":
                raise UnsupportedError(
                    f"Can't dump {where}: it binds {m.root} of a {m.fstype} that is not mounted whole "
                    "in the container"
                )
            rec["kind"] = "fs"
        else:
            raise UnsupportedError(
                f"Can't dump {where}: vzpy can't checkpoint {m.fstype} mounts "
                f"(it knows {', '.join(NEW_FS)} and bind mounts of the container's own files)"
            )
        if m.unbindable and rec["master_id"] and m.fstype in CONTENT_FS:
            raise UnsupportedError(f"Can't dump {where}: an unbindable slave tmpfs cannot be read")
        group = rec["shared_id"]
        if group and children.get(m.mnt_id) and (members[group] > 1 or group in masters):
            # At restore its submounts would propagate to its peers and slaves,
            # which the table lists as mounts of their own: a different table.
            raise UnsupportedError(
                f"Can't dump {where}: it has submounts and its peer group {group} has other "
                "members or slaves; vzpy cannot restore that propagation"
            )
        if rec["kind"] == "bind":
            src = _bind_source(rec, recs)
            if src is None:
                raise UnsupportedError(
                    f"Can't dump {where}: no mount it could be bound from (or its master peer group "
                    f"{rec['master_id']}) comes before it in the container"
                )
        elif rec["master_id"]:
            raise UnsupportedError(
                f"Can't dump {where}: it is a slave of peer group {rec['master_id']}, which is not "
                "in the container"
            )
        recs.append(rec)
        by_dev.setdefault(dev, []).append(rec)
    return recs


def _parents_first(mounts: list[procfs.Mount], root: procfs.Mount) -> list[procfs.Mount]:
    """The root, then the others in mountinfo order (the order they were made
    in, which bind sources follow too), a mount listed before its parent (after
    a ``mount --move``) held back until its parent is out."""
    out = [root]
    done = {root.mnt_id}
    waiting: list[procfs.Mount] = []
    for m in mounts:
        if m is root:
            continue
        waiting.append(m)
        progress = True
        while progress:
            progress = False
            for w in list(waiting):
                if w.parent_id in done:
                    out.append(w)
                    done.add(w.mnt_id)
                    waiting.remove(w)
                    progress = True
    if waiting:
        raise UnsupportedError(
            f"Can't dump mount {waiting[0].mount_point}: its parent mount is not in the container"
        )
    return out


def _bind_source(rec: dict, before: list[dict]) -> tuple[dict, str] | None:
    """(mount, path in the container) a bind mount is made from: a member of
    its master's peer group (to become its slave), else of its own peer group
    (to join it), else the mount owning its file system."""

    def path_in(m: dict) -> str | None:
        sub = _rel(rec["root"], m["root"])
        return None if sub is None else _join(m["mountpoint"], sub)

    same = [m for m in before if m["dev"] == rec["dev"] and m["kind"] in ("root", "fs", "bind")]
    for want in ("master_id", "shared_id"):
        group = rec[want]
        if group:
            for m in same:
                if m["shared_id"] == group and path_in(m) is not None:
                    return m, path_in(m)
            if want == "master_id":
                return None
    for m in same:
        if m["kind"] in ("root", "fs") and path_in(m) is not None:
            return m, path_in(m)
    return None


# --- dump: contents of tmpfs mounts ---------------------------------------------------------


def clone_mounts(
    pid: int, mountpoints: list[str], unbindable: frozenset[str] = frozenset()
) -> list[int]:
    """Detached copies of the mounts at `mountpoints` of `pid`'s mount namespace,
    without their submounts (open_tree(2) OPEN_TREE_CLONE), as fds of ours.

    open_tree clones only mounts of the caller's namespace, and setns(2) into a
    mount namespace needs a single-threaded caller: a forked helper does both
    and passes the fds back over a socketpair.  An unbindable mount cannot be
    cloned: the helper makes those in `unbindable` private for the moment of
    the clone (the container is frozen; none of them is a slave, plan_dump
    checks).
    """
    if not mountpoints:
        return []
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mntns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    rootfd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the helper
            code = 1
            mp = ""
            try:
                ours.close()
                libc.setns(mntns, libc.CLONE_NEWNS)
                os.fchdir(rootfd)
                os.chroot(".")  # the container's root, as its mountinfo paths are
                fds = []
                for mp in mountpoints:
                    if mp in unbindable:
                        libc.mount(None, mp, None, MS_PRIVATE)
                    try:
                        fds.append(libc.syscall(SYS_open_tree, AT_FDCWD, ctypes.c_char_p(mp.encode()),
                                                OPEN_TREE_CLONE | os.O_CLOEXEC))  # fmt: skip
                    finally:
                        if mp in unbindable:
                            libc.mount(None, mp, None, MS_UNBINDABLE)
                socket.send_fds(theirs, [b"ok"], fds)
                code = 0
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                try:
                    theirs.send(b"E" + f"{mp}: {e}".encode())
                except OSError:
                    pass
            os._exit(code)
        theirs.close()
        msg, fds, _flags, _addr = socket.recv_fds(ours, 4096, len(mountpoints))
        os.waitpid(child, 0)
    finally:
        ours.close()
        theirs.close()
        os.close(mntns)
        os.close(rootfd)
    if msg != b"ok" or len(fds) != len(mountpoints):
        for fd in fds:
            os.close(fd)
        raise UnsupportedError(
            f"Can't read the container's tmpfs mounts: {msg[1:].decode(errors='replace')}"
        )
    return fds


def _xattrs(path: str) -> list[dict]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as e:
        if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return []
        raise
    return [
        {"name": n, "value": os.getxattr(path, n, follow_symlinks=False)} for n in sorted(names)
    ]


@dataclass
class _Walk:
    base: str  # /proc/self/fd/N
    pw: object  # PageWriter
    data_end: int = 0
    nbytes: int = 0


def _save_file(w: _Walk, path: str, size: int) -> int:
    """Data of one regular file into the page file; returns where it starts."""
    start = w.data_end
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME | os.O_CLOEXEC)
    try:
        w.nbytes += save_file_data(fd, w.pw, size, start)
    finally:
        os.close(fd)
    w.data_end = start + -(-max(size, 1) // PAGE) * PAGE
    return start


def walk_tree(w: _Walk) -> list[dict]:
    """Every inode of the mount at w.base (no submounts: a clone), parents first."""
    out: list[dict] = []
    seen: dict[int, str] = {}  # ino -> first path, for hard links
    todo = [""]
    while todo:
        rel = todo.pop(0)
        path = f"{w.base}/{rel}" if rel else w.base
        st = os.lstat(path)
        m = st.st_mode
        e = {
            "path": rel, "mode": m, "uid": st.st_uid, "gid": st.st_gid,
            "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns,
        }  # fmt: skip
        if stat.S_ISDIR(m):
            e["type"] = "dir"
            todo += [f"{rel}/{n}" if rel else n for n in sorted(os.listdir(path))]
        elif stat.S_ISSOCK(m):
            continue  # made again by bind() when its socket is restored
        elif not stat.S_ISLNK(m) and st.st_nlink > 1 and st.st_ino in seen:
            out.append({"path": rel, "type": "link", "target": seen[st.st_ino]})
            continue
        elif stat.S_ISREG(m):
            e["type"] = "reg"
            e["size"] = st.st_size
            e["data"] = _save_file(w, path, st.st_size)
        elif stat.S_ISLNK(m):
            e["type"] = "symlink"
            e["target"] = os.readlink(path)
        elif stat.S_ISCHR(m) or stat.S_ISBLK(m):
            e["type"] = "chr" if stat.S_ISCHR(m) else "blk"
            e["rdev"] = st.st_rdev
        elif stat.S_ISFIFO(m):
            e["type"] = "fifo"
        else:
            raise UnsupportedError(f"Can't dump {rel}: unknown file type {m:o}")
        if st.st_nlink > 1 and not stat.S_ISDIR(m):
            seen.setdefault(st.st_ino, rel)
        e["xattrs"] = _xattrs(path)
        out.append(e)
    return out


def dump_tmpfs(ctx, mnt_id: int, fd: int) -> None:
    name = f"tmpfs-{mnt_id}"
    with ctx.img.pages(name) as pw:
        # "/.": lstat must see the directory, not the /proc/self/fd magic link
        w = _Walk(base=f"/proc/self/fd/{fd}/.", pw=pw)
        entries = walk_tree(w)
        pw.close()
    ctx.stats["tmpfs_bytes"] = ctx.stats.get("tmpfs_bytes", 0) + w.nbytes
    ctx.img.write(
        "tmpfs_tree", {"mnt_id": mnt_id, "entries": entries, "pages": name}, name=str(mnt_id)
    )


def _check_proc(init: int, rec: dict) -> None:
    """A proc mount must be the container's own (not one of the node's, bound in)."""
    mine = os.stat(f"/proc/{init}/ns/pid").st_ino
    try:
        theirs = os.stat(f"/proc/{init}/root{rec['mountpoint']}/1/ns/pid").st_ino
    except OSError:
        theirs = None
    if theirs != mine:
        raise UnsupportedError(
            f"Can't dump mount {rec['mountpoint']} (proc): it does not show the container's own processes"
        )


def dump_mounts(ctx) -> None:
    init = ctx.init_pid
    ns = os.stat(f"/proc/{init}/ns/mnt").st_ino
    for p in ctx.procs:
        if not p.zombie and os.stat(f"/proc/{p.pid}/ns/mnt").st_ino != ns:
            raise UnsupportedError(
                f"Can't dump task {p.nspid} ({p.comm}): it is in its own mount namespace "
                "(nested mount namespaces are not supported)"
            )
    ct_root = os.stat(f"/proc/{init}/root")
    private = ctx.ct.private
    if private:
        pst = os.stat(private)
        if (pst.st_dev, pst.st_ino) != (ct_root.st_dev, ct_root.st_ino):
            raise UnsupportedError(
                f"Can't dump the container's mounts: its root is not its private area {private}"
            )
    with open(f"/proc/{init}/mountinfo", "rb") as f:
        recs = plan_dump(procfs.parse_mountinfo(f.read()))
    for rec in recs:
        if rec["kind"] == "fs" and rec["fstype"] == "proc":
            _check_proc(init, rec)
    content = [r for r in recs if r["kind"] == "fs" and r["fstype"] in CONTENT_FS]
    unbindable = frozenset(r["mountpoint"] for r in content if r["flags"] & MS_UNBINDABLE)
    fds = clone_mounts(init, [r["mountpoint"] for r in content], unbindable)
    try:
        for rec, fd in zip(content, fds, strict=True):
            dev = os.stat(f"/proc/self/fd/{fd}").st_dev
            if f"{os.major(dev)}:{os.minor(dev)}" != rec["dev"]:
                # The path leads to another mount: this one is covered.
                raise UnsupportedError(
                    f"Can't dump mount {rec['mountpoint']} ({rec['fstype']}): another mount hides "
                    "it, so its contents cannot be read"
                )
            dump_tmpfs(ctx, rec["mnt_id"], fd)
    finally:
        for fd in fds:
            os.close(fd)
    entries = [{k: v for k, v in r.items() if k != "kind"} for r in recs]
    ctx.img.write("mounts", {"ns_id": ns, "entries": entries})


# --- restore ---------------------------------------------------------------------------------


def _check_path(path: str) -> None:
    if not path.startswith("/") or any(c in (".", "..") for c in path.split("/")):
        raise RestoreError(f"Bad path {path!r} in the image's mount table")


def plan_restore(entries: list[dict]) -> list[dict]:
    """The dumped records, with ``kind`` and, for binds, ``bind_path`` (the path,
    in the container, it is made from) found again."""
    recs: list[dict] = []
    for i, e in enumerate(entries):
        rec = dict(e)
        _check_path(rec["mountpoint"])
        _check_path(rec["root"])
        if i == 0:
            rec["kind"] = "root"
        elif any(m["dev"] == rec["dev"] for m in recs):
            rec["kind"] = "bind"
        else:
            rec["kind"] = "fs"
        if rec["kind"] == "bind":
            src = _bind_source(rec, recs)
            if src is None:
                raise RestoreError(f"Can't find what mount {rec['mountpoint']} was bound from")
            rec["bind_path"] = src[1]
        recs.append(rec)
    return recs


def _check_entry(rel: str, dirs: set[str]) -> None:
    """An image path must stay in the mount: plain components, under a
    directory this tree made (never through a symlink).  fill_tree runs before
    the stub's pivot_root, where an escape would reach the node's own files."""
    parts = rel.split("/")
    if rel and (rel.startswith("/") or any(c in ("", ".", "..") for c in parts)):
        raise RestoreError(f"Bad path {rel!r} in a tmpfs tree of the image")
    if rel and "/".join(parts[:-1]) not in dirs:
        raise RestoreError(f"tmpfs entry {rel!r} of the image is not under a directory of its tree")


def fill_tree(path: str, entries: list[dict], pages) -> None:
    """Recreate a dumped tmpfs under `path` (the fresh, empty mount)."""
    starts = [r.vaddr for r in pages.runs] if pages is not None else []
    dirs: set[str] = set()
    files: set[str] = set()
    for e in entries:
        _check_entry(e["path"], dirs)
        p = os.path.join(path, e["path"]) if e["path"] else path
        t = e["type"]
        if not e["path"] and t != "dir":
            raise RestoreError("The root of a tmpfs tree of the image is not a directory")
        if t == "dir":
            dirs.add(e["path"])
        elif t == "reg":
            files.add(e["path"])
        elif t == "link" and e.get("target") not in files:
            raise RestoreError(f"tmpfs hard link {e['path']!r} of the image has no file to link to")
        if t == "dir":
            if e["path"]:
                os.mkdir(p, 0o700)
        elif t == "reg":
            fd = os.open(
                p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
            )
            try:
                size = e.get("size") or 0
                os.ftruncate(fd, size)
                if size and pages is not None:
                    load_file_data(fd, pages, size, e["data"], starts)
            finally:
                os.close(fd)
        elif t == "link":
            os.link(os.path.join(path, e["target"]), p)
            continue
        elif t == "symlink":
            os.symlink(e["target"], p)
        elif t in ("chr", "blk", "fifo"):
            os.mknod(p, e["mode"], e.get("rdev") or 0)
        else:
            raise RestoreError(f"Unknown tmpfs entry type {t} for {e['path']}")
        os.lchown(p, e.get("uid", 0), e.get("gid", 0))
        if t != "symlink":
            os.chmod(p, stat.S_IMODE(e["mode"]))  # after chown, which drops set-id bits
        for x in e.get("xattrs") or []:
            os.setxattr(p, x["name"], x["value"], follow_symlinks=False)
    # Times last, children before their directory (creating a child touches it).
    for e in reversed(entries):
        if e["type"] == "link":
            continue
        p = os.path.join(path, e["path"]) if e["path"] else path
        os.utime(p, ns=(e["atime_ns"], e["mtime_ns"]), follow_symlinks=False)


def _propagate(path: str, rec: dict) -> None:
    """Give a just made mount its dumped propagation (it starts private, or as
    a peer of the mount it was bound from)."""
    if rec["master_id"]:
        libc.mount(None, path, None, MS_SLAVE)
        if rec["shared_id"]:
            libc.mount(None, path, None, MS_SHARED)
    elif rec["shared_id"]:
        libc.mount(None, path, None, MS_SHARED)
    else:
        libc.mount(None, path, None, MS_PRIVATE)


def _populate(rctx, rec: dict, finish: Callable[[], None] | None) -> Callable[[str], None]:
    """The step run in the stub right after `rec` is mounted at `path`."""
    tree = None
    if (
        rec["kind"] == "fs"
        and rec["fstype"] in CONTENT_FS
        and rctx.img.has("tmpfs_tree", str(rec["mnt_id"]))
    ):
        tree = rctx.img.read("tmpfs_tree", str(rec["mnt_id"]))
    img = rctx.img

    def populate(path: str) -> None:
        if tree is not None:
            pages = img.pages(tree["pages"]) if img.has("pagemap", tree["pages"]) else None
            try:
                fill_tree(path, tree.get("entries") or [], pages)
            finally:
                if pages is not None:
                    pages.close()
        flags = rec["flags"] & ~PROPAGATION
        if rec["kind"] == "fs" and rec["sb_flags"] & MS_RDONLY and rec["fstype"] in CONTENT_FS:
            # Filled while writable: now the file system goes read-only.
            libc.mount(None, path, None, MS_REMOUNT | MS_RDONLY | flags)
        if rec["kind"] == "bind" or rec["fstype"] in CONTENT_FS:
            libc.mount(None, path, None, MS_REMOUNT | MS_BIND | flags)
        _propagate(path, rec)
        if finish is not None:
            finish()

    return populate


def build_specs(rctx, root: str, entries: list[dict]):
    """SpawnSpec.mounts for the dumped table (container/spawn.py MountSpec)."""
    from ..container.spawn import MountSpec

    recs = plan_restore(entries)
    root_rec, rest = recs[0], recs[1:]

    def finish() -> None:
        # Root flags last: a read-only root would refuse the mount points made above.
        libc.mount(None, root, None, MS_REMOUNT | MS_BIND | (root_rec["flags"] & ~PROPAGATION))
        for r in rest:
            if r["flags"] & MS_UNBINDABLE:
                libc.mount(None, root + r["mountpoint"], None, MS_UNBINDABLE)

    specs = []
    for i, rec in enumerate(rest):
        last = finish if i == len(rest) - 1 else None
        target = rec["mountpoint"].lstrip("/")
        if rec["kind"] == "bind":
            src = rec["bind_path"]
            # make_mounts takes a /proc/... source from the node: '//' keeps it in the container.
            source = "/" + src if src.startswith("/proc/") else src
            specs.append(
                MountSpec(target, "bind", source, 0, None, populate=_populate(rctx, rec, last))
            )
        else:
            flags = rec["flags"] & ~PROPAGATION
            if rec["fstype"] in CONTENT_FS:
                flags &= ~MS_RDONLY  # filled first, made read-only after
            else:
                flags |= rec["sb_flags"]
            specs.append(
                MountSpec(
                    target, rec["fstype"], rec["source"], flags,
                    fs_data(rec["fstype"], rec["super_options"]), populate=_populate(rctx, rec, last),
                )
            )  # fmt: skip
    if not rest and root_rec["flags"] & ~(PROPAGATION | MS_RELATIME):
        raise RestoreError("The container's root has mount flags but no mounts to set them with")
    return specs


def in_mnt_ns(pid: int, fn: Callable[[], None]) -> None:
    """Run fn() in a forked helper that joined `pid`'s mount namespace and root
    (setns(2) of a mount namespace needs a single-threaded caller)."""
    mntns = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    rootfd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the helper
            code = 1
            try:
                os.close(r)
                libc.setns(mntns, libc.CLONE_NEWNS)
                os.fchdir(rootfd)
                os.chroot(".")
                fn()
                os.write(w, b"ok")
                code = 0
            except BaseException as e:  # noqa: BLE001 - reported to the parent
                os.write(w, f"E{e}".encode())
            os._exit(code)
        os.close(w)
        w = -1
        msg = os.read(r, 4096)
        os.waitpid(child, 0)
    finally:
        for fd in (mntns, rootfd, r, w):
            if fd >= 0:
                os.close(fd)
    if msg != b"ok":
        raise RestoreError(
            f"Can't finish the container's mounts: {msg[1:].decode(errors='replace')}"
        )


def _root_propagation(rec: dict) -> None:
    if rec["shared_id"]:
        libc.mount(None, "/", None, MS_SHARED)
    if rec["flags"] & MS_UNBINDABLE:
        libc.mount(None, "/", None, MS_UNBINDABLE)


class MountsResource(base.CtResource):
    name = "mounts"
    order = 20

    def dump(self, ctx) -> None:
        dump_mounts(ctx)

    def prepare(self, rctx, spec) -> None:
        if not rctx.img.has("mounts"):
            return
        entries = rctx.img.read("mounts").get("entries") or []
        if not entries:
            return
        rctx.extra["mounts_root"] = entries[0]
        spec.mounts = build_specs(rctx, os.path.realpath(spec.root), entries)

    def restore_early(self, rctx) -> None:
        # pivot_root(2) refuses a shared new root: the root gets its propagation
        # now, in the stub's namespace (its submounts were made while it was
        # private, so nothing propagated to or from it meanwhile).
        root = rctx.extra.get("mounts_root")
        if root and (root["shared_id"] or root["flags"] & MS_UNBINDABLE):
            in_mnt_ns(rctx.stub_pid, lambda: _root_propagation(root))


MOUNTS_RESOURCE = base.register_ct_resource(MountsResource())
