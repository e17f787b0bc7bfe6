"""A checkpoint image: a directory of record files, page files and an inventory.

Writing is a transaction::

    with ImageWriter(path, ctid) as w:      # mkdir 0700
        w.write("pstree", {...})             # pstree.img
        w.write("task", {...}, name=pid)     # task-PID.img
        with w.pages(pid) as pw:             # pages-PID.img + pagemap-PID.img
            ...
            pw.close()
        w.commit({"root_pid": ...})          # fsync all, then inventory.img
    # leaving the block without commit() (or by an exception) removes the directory

The inventory is written last, to a temporary name that is renamed into
place after every file has been fsync'd: a directory without
``inventory.img`` is not a checkpoint, and one with it is complete.  It lists
every file with its record type, size and crc32.

Reading::

    r = ImageReader(path, expect_ctid=101)   # checks every file's size and crc32
    tree = r.read("pstree")
    for pid in r.list("task"): ...
    with r.pages(pid) as pr: ...

File names are ``TYPE.img`` or ``TYPE-NAME.img`` (NAME: a pid, a namespace
id...).  The reader finds files through the inventory by record type *id*,
so a record type may be renamed without breaking older images.
"""

from __future__ import annotations

import mmap
import os
import shutil
import socket
import stat
import time
import zlib
from collections.abc import Iterator
from typing import Any

import vzpy
from vzpy.errors import CheckpointError, ImageError
from vzpy.images import envelope, schema
from vzpy.images.pages import (
    MAX_PARENT_DEPTH,
    PAGE_SIZE,
    PARENT_LINK,
    PageReader,
    PageWriter,
    check_id,
    pages_file_name,
)

INVENTORY_NAME = "inventory.img"
_INVENTORY_TMP = INVENTORY_NAME + ".tmp"
# Set by commit(); callers may not pass them in inventory_fields.
OWN_INVENTORY_FIELDS = frozenset(
    {"format_major", "format_minor", "ctid", "files", "parent", "parent_inventory_crc32"}
)


def record_file_name(type_name: str, name: int | str | None = None) -> str:
    return f"{type_name}.img" if name is None else f"{type_name}-{check_id(name)}.img"


def file_crc32(path: str, skip_tail: int = 0) -> int:
    """zlib.crc32 of a file but its last ``skip_tail`` bytes, read through mmap."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= skip_tail:
            return 0
        with mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ) as m, memoryview(m) as mv:
            return zlib.crc32(mv[: size - skip_tail])


class ImageWriter:
    """Writes one checkpoint directory.  Not thread-safe.

    ``parent`` names an earlier image of the same container (a pre-dump):
    a ``parent`` symlink to it is made, and page runs added with
    ``PageWriter.add_parent_run`` are looked up there on restore.
    """

    def __init__(
        self,
        path: str,
        ctid: int | str,
        *,
        parent: str | None = None,
        kind: str = "dump",
        durable: bool = True,
    ) -> None:
        self.path = os.path.abspath(path)
        self.ctid = str(ctid)
        self.kind = kind
        self._durable = durable
        self._files: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._open_pages: dict[str, PageWriter] = {}
        self._parent_crc: int | None = None
        self._done = False
        parent_reader = None
        if parent is not None:
            # Refuse a parent of another CT, or an unfinished one, before writing anything.
            try:
                parent_reader = ImageReader(parent, expect_ctid=self.ctid, verify=False)
            except ImageError as err:
                raise CheckpointError(f"cannot use {parent} as parent image: {err}") from err
            self._parent_crc = parent_reader.inventory_crc32
        try:
            os.mkdir(self.path, 0o700)
            self._made_dir = True
        except FileExistsError:
            if not os.path.isdir(self.path) or os.listdir(self.path):
                raise CheckpointError(
                    f"cannot write image: {self.path} already exists and is not an empty directory"
                ) from None
            self._made_dir = False
        except OSError as err:
            raise CheckpointError(f"cannot create image directory {self.path}: {err}") from err
        try:
            os.chmod(self.path, 0o700)
            if parent_reader is not None:
                target = os.path.relpath(
                    os.path.realpath(parent_reader.path), os.path.realpath(self.path)
                )
                os.symlink(target, os.path.join(self.path, PARENT_LINK))
        except OSError as err:
            self.abort()
            raise CheckpointError(f"cannot set up image directory {self.path}: {err}") from err

    # -- writing -----------------------------------------------------------------

    def write(self, type_name: str, obj: Any, name: int | str | None = None) -> str:
        """Write one record as ``TYPE.img`` or ``TYPE-NAME.img``; returns the file name."""
        self._check_open()
        if type_name == "inventory":
            raise ValueError("the inventory is written by commit()")
        rt = schema.record_type(type_name)
        data = envelope.pack(rt.id, schema.encode(type_name, obj))
        fname = record_file_name(type_name, name)
        self._claim(fname)
        self._write_file(fname, data)
        self._add(fname, type_name, rt.id, len(data), envelope.checksum(data))
        return fname

    def pages(self, id: int | str, **kw: Any) -> PageWriter:
        """A PageWriter for ``pages-ID.img``; its close() also writes ``pagemap-ID.img``."""
        self._check_open()
        fname = pages_file_name(id)
        self._claim(fname)
        try:
            pw = PageWriter(self.path, id, on_close=self._pages_closed, **kw)
        except BaseException:
            self._names.discard(fname)
            raise
        self._open_pages[fname] = pw
        return pw

    def commit(self, inventory_fields: dict[str, Any] | None = None) -> dict[str, Any]:
        """Make the directory a checkpoint: fsync every file, then write the inventory.

        ``inventory_fields`` adds fields of the ``inventory`` record (root_pid,
        cpu_flags...).  Returns the inventory as written.
        """
        self._check_open()
        if self._open_pages:
            raise ValueError(f"page files still open: {', '.join(sorted(self._open_pages))}")
        extra = dict(inventory_fields or {})
        clash = OWN_INVENTORY_FIELDS & extra.keys()
        if clash:
            raise ValueError(f"inventory fields set by commit(): {', '.join(sorted(clash))}")
        inv = base_inventory(self.ctid, self.kind, self._files, self._parent_crc)
        inv.update(extra)
        data = envelope.pack(schema.INVENTORY.id, schema.encode("inventory", inv))
        try:
            if self._durable:
                _sync_files(self.path, [f["name"] for f in self._files])
            self._write_file(_INVENTORY_TMP, data)
            os.rename(
                os.path.join(self.path, _INVENTORY_TMP), os.path.join(self.path, INVENTORY_NAME)
            )
            if self._durable:
                _fsync_path(self.path)
                if self._made_dir:  # the image's own name in DUMPDIR
                    _fsync_path(os.path.dirname(self.path))
        except OSError as err:
            raise CheckpointError(f"cannot commit image {self.path}: {err}") from err
        self._done = True
        return inv

    def abort(self) -> None:
        """Remove everything written.  A no-op after commit()."""
        if self._done:
            return
        self._done = True
        for pw in list(self._open_pages.values()):
            pw.abort()
        self._open_pages.clear()
        if self._made_dir:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            for entry in os.listdir(self.path):
                os.unlink(os.path.join(self.path, entry))

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    # -- internals ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._done:
            raise ValueError(f"image {self.path} is already committed or aborted")

    def _claim(self, fname: str) -> None:
        if fname in self._names or fname in (INVENTORY_NAME, _INVENTORY_TMP, PARENT_LINK):
            raise ValueError(f"image file {fname} is written twice")
        self._names.add(fname)

    def _add(self, fname: str, type_name: str, type_id: int, size: int, crc: int) -> None:
        self._files.append(
            {"name": fname, "type": type_name, "type_id": type_id, "size": size, "crc32": crc}
        )

    def _write_file(self, fname: str, data: bytes) -> None:
        path = os.path.join(self.path, fname)
        try:
            fd = os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
            )
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if fname == _INVENTORY_TMP and self._durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:
            raise CheckpointError(f"cannot write image file {path}: {err.strerror}") from err

    def _pages_closed(self, pw: PageWriter, record: dict[str, Any]) -> None:
        del self._open_pages[pw.name]
        self._add(pw.name, schema.PAGES_TYPE, schema.PAGES_TYPE_ID, record["size"], record["crc32"])
        self.write("pagemap", record, name=pw.id)


def base_inventory(
    ctid: str, kind: str, files: list[dict[str, Any]], parent_crc: int | None
) -> dict[str, Any]:
    """The inventory fields every writer sets itself (local or streamed image)."""
    uname = os.uname()
    inv: dict[str, Any] = {
        "format_major": envelope.FORMAT_MAJOR,
        "format_minor": envelope.FORMAT_MINOR,
        "ctid": ctid,
        "vzpy_version": vzpy.__version__,
        "kernel": uname.release,
        "machine": uname.machine,
        "hostname": socket.gethostname(),
        "created": time.time(),
        "kind": kind,
        "page_size": PAGE_SIZE,
        "files": files,
    }
    if parent_crc is not None:
        inv["parent"] = PARENT_LINK
        inv["parent_inventory_crc32"] = parent_crc
    return inv


def _sync_files(directory: str, names: list[str]) -> None:
    """Make every file durable with one file-system flush.

    One syncfs() of the image's file system costs one journal commit, where an
    fsync per file costs one each (30 files: 0.25 s here).  When syncfs is not
    available the files are fsync'ed one by one.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs(fd) == 0:
            return
    finally:
        os.close(fd)
    for name in names:
        _fsync_path(os.path.join(directory, name))


def _syncfs(fd: int) -> int:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return libc.syncfs(ctypes.c_int(fd))


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ImageReader:
    """Reads one checkpoint directory, checking it against its inventory.

    On open: the inventory must exist and load, belong to ``expect_ctid``
    when given, name only record types this vzpy knows (unless
    ``allow_unknown``), and every file it lists must be present with its
    size.  With ``verify=True`` every file's crc32 is checked as well; with
    ``verify=False`` a metadata file's crc32 is checked when it is read and
    page files are left to ``verify()``.
    """

    def __init__(
        self,
        path: str,
        *,
        expect_ctid: int | str | None = None,
        verify: bool = True,
        allow_unknown: bool = False,
        _depth: int = 0,
    ) -> None:
        self.path = os.path.abspath(path)
        self.allow_unknown = allow_unknown
        self._verify = verify
        self._depth = _depth
        self._parent: ImageReader | None = None
        if not os.path.exists(self.path):
            raise ImageError(f"checkpoint {self.path} does not exist")
        if not os.path.isdir(self.path):
            raise ImageError(f"{self.path} is not a checkpoint: not a directory")
        inv_path = os.path.join(self.path, INVENTORY_NAME)
        if not os.path.lexists(inv_path):
            raise ImageError(
                f"{self.path} is not a checkpoint: it has no {INVENTORY_NAME} "
                "(the dump did not finish)"
            )
        env, raw = envelope.load(inv_path)
        if env.type_id != schema.INVENTORY.id:
            raise ImageError(f"image file {inv_path} is not an inventory (type {env.type_id})")
        self.inventory: dict[str, Any] = schema.decode(schema.INVENTORY, env.body, where=inv_path)
        self.inventory_crc32 = envelope.checksum(raw)
        self.inventory_size = len(raw)
        self.format = (env.major, env.minor)
        self.ctid: str = self.inventory["ctid"]
        if expect_ctid is not None and str(expect_ctid) != self.ctid:
            raise ImageError(f"image {self.path} belongs to CT {self.ctid}, not {expect_ctid}")
        self.files: dict[str, dict[str, Any]] = {}
        self._index: dict[tuple[int, str | None], dict[str, Any]] = {}
        for entry in self.inventory["files"]:
            self._add_entry(entry, inv_path)
        for entry in self.files.values():
            self._check_present(entry)
        if verify:
            for entry in self.files.values():
                self._check_crc(entry)

    # -- reading -----------------------------------------------------------------

    def read(
        self, type_name: str, name: int | str | None = None, *, missing_ok: bool = False
    ) -> dict[str, Any] | None:
        """The record in ``TYPE[-NAME].img``, decoded to field names."""
        rt = schema.record_type(type_name)
        entry = self._index.get((rt.id, None if name is None else str(name)))
        if entry is None:
            if missing_ok:
                return None
            raise ImageError(
                f"image {self.path} has no {record_file_name(type_name, name)} in its inventory"
            )
        return self.read_file(entry["name"])

    def read_file(self, fname: str) -> dict[str, Any]:
        """The record in the listed metadata file ``fname``."""
        entry = self.files.get(fname)
        if entry is None:
            raise ImageError(f"image {self.path} has no {fname} in its inventory")
        if entry["type_id"] == schema.PAGES_TYPE_ID:
            raise ImageError(f"image file {fname} holds raw pages, not a record")
        path = os.path.join(self.path, fname)
        data = envelope.read_bytes(path)
        self._match_inventory(entry, len(data), envelope.checksum(data))
        env = envelope.unpack(data, path)
        if env.type_id != entry["type_id"]:
            raise ImageError(
                f"image file {path} holds record type {env.type_id}, the inventory says "
                f"{entry['type_id']}"
            )
        rt = schema.RECORDS_BY_ID.get(env.type_id)
        if rt is None:
            raise ImageError(
                f"image file {path}: record type {entry['type']} ({env.type_id}) "
                "is unknown to this vzpy"
            )
        return schema.decode(rt, env.body, where=path, allow_unknown=self.allow_unknown)

    def list(self, type_name: str) -> list[str | None]:
        """The NAMEs of the ``TYPE-NAME.img`` files (None for ``TYPE.img``), pids sorted as numbers."""
        rt = schema.record_type(type_name)
        names = [name for (tid, name) in self._index if tid == rt.id]
        return sorted(names, key=_name_order)

    def items(self, type_name: str) -> Iterator[tuple[str | None, dict[str, Any]]]:
        for name in self.list(type_name):
            yield name, self.read(type_name, name)

    def has(self, type_name: str, name: int | str | None = None) -> bool:
        rt = schema.record_type(type_name)
        return (rt.id, None if name is None else str(name)) in self._index

    def pages(self, id: int | str) -> PageReader:
        """A PageReader for the address space ``id``; parent runs go to the parent image."""
        id = check_id(id)
        record = self.read("pagemap", id)
        if record["pages_file"] not in self.files:
            raise ImageError(
                f"image {self.path}: {record['pages_file']} is not listed in the inventory"
            )
        entry = self.files[record["pages_file"]]
        if entry["crc32"] != record["crc32"] or entry["size"] != record["size"]:
            raise ImageError(
                f"image {self.path}: pagemap-{id}.img and the inventory disagree about "
                f"{record['pages_file']}"
            )

        def parent() -> PageReader:
            if self.parent is None:
                raise ImageError(
                    f"image {self.path}: pagemap-{id}.img has pages in the parent image, "
                    "but the image has no parent"
                )
            return self.parent.pages(id)

        return PageReader(self.path, id, record=record, parent=parent)

    @property
    def parent(self) -> ImageReader | None:
        """The parent image (a pre-dump), checked to be the one this image was made on."""
        link = self.inventory["parent"]
        if link is None:
            return None
        if self._parent is None:
            if self._depth >= MAX_PARENT_DEPTH:
                raise ImageError(f"image {self.path}: parent chain deeper than {MAX_PARENT_DEPTH}")
            if os.sep in link or link in (".", ".."):
                raise ImageError(f"image {self.path}: bad parent link name {link!r}")
            parent = ImageReader(
                os.path.realpath(os.path.join(self.path, link)),
                expect_ctid=self.ctid,
                verify=self._verify,
                allow_unknown=self.allow_unknown,
                _depth=self._depth + 1,
            )
            if parent.inventory_crc32 != self.inventory["parent_inventory_crc32"]:
                raise ImageError(
                    f"image {self.path}: its parent {parent.path} is not the image it was "
                    "dumped against (inventory checksum differs)"
                )
            self._parent = parent
        return self._parent

    def verify(self, *, parents: bool = True) -> dict[str, Any]:
        """Check everything: sizes, checksums, envelopes, schemas, page runs, modes, parents.

        Returns a summary: path, ctid, format, files, bytes (inventory
        included) and the parent's summary.  parents=False checks the parent
        chain only as far as this image's page runs need it (it is there, it is
        the image this one was dumped against, it holds those pages), not the
        parents' own checksums: for parents verified already.
        """
        mode = os.stat(self.path).st_mode
        if mode & 0o077:
            raise ImageError(
                f"image {self.path} is mode {mode & 0o777:04o}; it holds process memory "
                "and must be 0700"
            )
        for entry in self.files.values():
            self._check_present(entry)
            self._check_crc(entry)
            st = os.lstat(os.path.join(self.path, entry["name"]))
            if st.st_mode & 0o077:
                raise ImageError(
                    f"image file {os.path.join(self.path, entry['name'])} is mode "
                    f"{st.st_mode & 0o777:04o}; it holds process memory and must be 0600"
                )
            if entry["type_id"] != schema.PAGES_TYPE_ID:
                self.read_file(entry["name"])
        for pid in self.list("pagemap"):
            with self.pages(pid) as pr:
                pr.verify(checksum=False)  # the crc32 was checked against the inventory
        parent = self.parent
        return {
            "path": self.path,
            "ctid": self.ctid,
            "format": f"{self.format[0]}.{self.format[1]}",
            "files": len(self.files) + 1,
            "bytes": self.inventory_size + sum(e["size"] for e in self.files.values()),
            "parent": None if parent is None or not parents else parent.verify(),
        }

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    # -- internals ---------------------------------------------------------------

    def _add_entry(self, entry: dict[str, Any], inv_path: str) -> None:
        fname = entry["name"]
        if (
            os.sep in fname
            or not fname.endswith(".img")
            or fname in (INVENTORY_NAME, PARENT_LINK)
            or fname.startswith(".")
        ):
            raise ImageError(f"image file {inv_path}: bad file name {fname!r} in the inventory")
        if fname in self.files:
            raise ImageError(f"image file {inv_path}: {fname} is listed twice")
        type_name, type_id = entry["type"], entry["type_id"]
        stem = fname[:-4]
        if stem == type_name:
            name = None
        elif stem.startswith(type_name + "-"):
            name = stem[len(type_name) + 1 :]
        else:
            raise ImageError(
                f"image file {inv_path}: {fname} does not match its record type {type_name}"
            )
        if type_id != schema.PAGES_TYPE_ID and type_id not in schema.RECORDS_BY_ID:
            if not self.allow_unknown:
                raise ImageError(
                    f"image {self.path} needs record type {type_name} ({type_id}) for {fname}, "
                    f"unknown to this vzpy {vzpy.__version__} "
                    f"(the image was written by vzpy {self.inventory['vzpy_version']})"
                )
        self.files[fname] = entry
        self._index[(type_id, name)] = entry

    def _check_present(self, entry: dict[str, Any]) -> None:
        path = os.path.join(self.path, entry["name"])
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise ImageError(
                f"image {self.path} is damaged: {entry['name']}, listed in the inventory, "
                "is missing"
            ) from None
        except OSError as err:
            raise ImageError(f"cannot stat image file {path}: {err.strerror}") from err
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"image file {path} is not a regular file")
        if st.st_size != entry["size"]:
            raise ImageError(
                f"image file {path} is {st.st_size} bytes, the inventory says {entry['size']}"
            )

    def _check_crc(self, entry: dict[str, Any]) -> None:
        path = os.path.join(self.path, entry["name"])
        pages = entry["type_id"] == schema.PAGES_TYPE_ID
        try:
            crc = file_crc32(path, 0 if pages else envelope.TRAILER.size)
        except OSError as err:
            raise ImageError(f"cannot read image file {path}: {err.strerror}") from err
        self._match_inventory(entry, entry["size"], crc)

    def _match_inventory(self, entry: dict[str, Any], size: int, crc: int) -> None:
        path = os.path.join(self.path, entry["name"])
        if size != entry["size"]:
            raise ImageError(
                f"image file {path} is {size} bytes, the inventory says {entry['size']}"
            )
        if crc != entry["crc32"]:
            raise ImageError(
                f"image file {path}: checksum mismatch (inventory says {entry['crc32']:08x}, "
                f"computed {crc:08x})"
            )


def _name_order(name: str | None) -> tuple[int, int, str]:
    if name is None:
        return (0, 0, "")
    if name.isdigit():
        return (1, int(name), "")
    return (2, 0, name)
