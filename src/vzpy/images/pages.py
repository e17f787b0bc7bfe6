"""Memory contents: raw page files and the pagemap that indexes them.

For each address space (a task's mm, or a shared memory object) the image
holds ``pages-ID.img``, the dumped pages back to back with no header, and a
``pagemap`` record (``pagemap-ID.img``) listing runs of pages::

    (vaddr, nr_pages, file_offset, flags)

packed as four little-endian u64 (``RUN``), sorted by vaddr, never
overlapping.  A run flagged ``PE_PRESENT`` lies in this image's page file at
``file_offset``; a run flagged ``PE_PARENT`` was not dumped again because the
parent image (the ``parent`` symlink, CRIU's pre-dump chain) holds it.

Writing: ``PageWriter.reserve()`` hands out a writable buffer,
``process_vm_readv`` fills it straight from the target, ``add_run()`` records
what was filled.  The buffer is either a reused anonymous one written out with
``write(2)`` (mode "buffer", the default) or a window of a shared mapping of
the page file itself (mode "mmap": one copy fewer, one page fault more per
page, the file grown in ``posix_fallocate``'d chunks so a full disk is ENOSPC
and never SIGBUS).  The crc32 of the file is computed as it is written; in mmap
mode in a thread, since ``zlib.crc32`` drops the GIL on big buffers.

Usage::

    with PageWriter(image_dir, pid) as pw:
        buf = pw.reserve(nbytes)                # a writable memoryview
        got = process_vm_readv(pid, buf, vaddr)  # fills buf, maybe short
        pw.add_run(vaddr, got)                   # page multiple, <= reserved
        pw.add_parent_run(other_vaddr, n)        # unchanged since the parent
        record = pw.close()                      # the pagemap record

``ImageWriter.pages(id)`` returns a PageWriter whose ``close()`` also writes
the pagemap record and lists both files in the inventory.
"""

from __future__ import annotations

import bisect
import mmap
import os
import queue
import re
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from vzpy.errors import CheckpointError, ImageError
from vzpy.images import envelope, schema

PAGE_SIZE = mmap.PAGESIZE

# Run flags.  Exactly one of PRESENT and PARENT is set.
PE_PRESENT = 1
PE_PARENT = 2
PE_KNOWN = PE_PRESENT | PE_PARENT

RUN = struct.Struct("<QQQQ")

# Buffer size (buffer mode) or growth step of the file and its mapping (mmap mode).
DEFAULT_CHUNK = 16 << 20
# mmap mode: claimed bytes are handed to the checksum thread in batches of this size.
CRC_BATCH = 8 << 20
# A pre-dump chain deeper than this is taken for a symlink loop.
MAX_PARENT_DEPTH = 64

PARENT_LINK = "parent"

_ID_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]*\Z")


class Run(NamedTuple):
    vaddr: int
    nr_pages: int
    offset: int
    flags: int

    @property
    def nbytes(self) -> int:
        return self.nr_pages * PAGE_SIZE

    @property
    def end(self) -> int:
        return self.vaddr + self.nr_pages * PAGE_SIZE

    @property
    def in_parent(self) -> bool:
        return bool(self.flags & PE_PARENT)


def check_id(id: int | str) -> str:
    """The file-name form of a pages id (a pid, or e.g. ``shmem-1234``)."""
    s = str(id)
    if not _ID_RE.match(s) or s in (".", ".."):
        raise ValueError(f"bad pages id {s!r}")
    return s


def pages_file_name(id: int | str) -> str:
    return f"pages-{check_id(id)}.img"


def check_run(runs: list[Run], vaddr: int, nbytes: int) -> None:
    """A new run must be page-aligned and come after the last one (address order)."""
    if vaddr % PAGE_SIZE or nbytes <= 0 or nbytes % PAGE_SIZE:
        raise ValueError(f"run ({vaddr:#x}, {nbytes}) is not page-aligned")
    if runs and vaddr < runs[-1].end:
        raise ValueError(
            f"run at {vaddr:#x} comes before the end of the previous one "
            f"({runs[-1].end:#x}); runs must be added in address order"
        )


def pack_runs(runs: list[Run]) -> bytes:
    return b"".join(RUN.pack(*r) for r in runs)


def unpack_runs(record: dict[str, Any], where: str) -> list[Run]:
    """Decode and check the packed runs of a pagemap record."""
    data = record["runs"]
    size = record["run_size"]
    if size < RUN.size or size % 8:
        raise ImageError(f"image file {where}: bad run size {size}")
    if len(data) % size:
        raise ImageError(f"image file {where}: runs are not a whole number of {size}-byte runs")
    if size == RUN.size:
        runs = list(map(Run._make, RUN.iter_unpack(data)))
    else:  # a newer minor with per-run fields appended: read the ones we know
        runs = [Run._make(RUN.unpack_from(data, o)) for o in range(0, len(data), size)]
    if record["page_size"] != PAGE_SIZE:
        raise ImageError(
            f"image file {where}: page size {record['page_size']}, this node uses {PAGE_SIZE}"
        )
    prev_end = 0
    for r in runs:
        if r.vaddr % PAGE_SIZE or r.offset % PAGE_SIZE or r.nr_pages == 0:
            raise ImageError(f"image file {where}: misaligned or empty run at {r.vaddr:#x}")
        if r.vaddr < prev_end:
            raise ImageError(f"image file {where}: runs overlap or are unsorted at {r.vaddr:#x}")
        if r.flags & PE_KNOWN not in (PE_PRESENT, PE_PARENT):
            raise ImageError(f"image file {where}: run at {r.vaddr:#x} has flags {r.flags:#x}")
        if r.flags & PE_PRESENT:
            if r.offset + r.nbytes > record["size"]:
                raise ImageError(
                    f"image file {where}: run at {r.vaddr:#x} lies beyond the end of "
                    f"{record['pages_file']}"
                )
        prev_end = r.end
    return runs


class PageWriter:
    """Writes one page file; see the module docstring.  Not thread-safe.

    ``mode`` chooses how reserved memory reaches the file; the API is the same:

    - ``"buffer"`` (default): ``reserve()`` hands out a reused anonymous
      buffer; the claimed bytes are checksummed and written with ``write(2)``
      at the next ``reserve()`` or ``close()``.  Two copies, no page faults on
      the file.
    - ``"mmap"``: ``reserve()`` hands out a window of a shared mapping of the
      page file (grown by ``chunk``, ``posix_fallocate``'d first so a full
      disk is ENOSPC, not SIGBUS); the checksum runs in a thread.  One copy,
      but one page fault per page of the file.

    On the reference VM the buffered path was as fast or faster (numbers in
    docs/image-format.md §5), so it is the default.
    """

    def __init__(
        self,
        image_dir: str,
        id: int | str,
        *,
        mode: str = "buffer",
        chunk: int = DEFAULT_CHUNK,
        threaded: bool = True,
        on_close: Callable[[PageWriter, dict[str, Any]], None] | None = None,
    ) -> None:
        if mode not in ("buffer", "mmap"):
            raise ValueError(f"PageWriter mode {mode!r}: 'buffer' or 'mmap'")
        self.id = check_id(id)
        self.name = pages_file_name(self.id)
        self.path = os.path.join(image_dir, self.name)
        self.mode = mode
        self._chunk = max(PAGE_SIZE, -(-chunk // PAGE_SIZE) * PAGE_SIZE)
        self._threaded = threaded
        self._on_close = on_close
        self._runs: list[Run] = []
        self._committed = 0  # bytes of the file holding run data
        self._resv_end = 0  # end of the outstanding reservation
        self._alloc_end = 0  # bytes allocated to the file (mmap mode)
        self._map: mmap.mmap | bytearray | None = None
        self._view: memoryview | None = None
        self._map_start = 0  # file offset of self._view[0]
        self._map_end = 0
        self._crc = 0
        self._crc_pos = 0  # bytes checksummed (and, in buffer mode, written) so far
        self._queue: queue.SimpleQueue[memoryview | None] | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        try:
            self._fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
            )
            os.fchmod(self._fd, 0o600)
        except OSError as err:
            raise CheckpointError(f"cannot create {self.path}: {err.strerror}") from err

    # -- writing ---------------------------------------------------------------

    def reserve(self, nbytes: int) -> memoryview:
        """A writable view for the next ``nbytes`` of the file (a page multiple).

        The bytes count only once ``add_run`` claims them; a new ``reserve``
        drops whatever the previous one left unclaimed.  Do not use a view
        after the next ``reserve`` or ``close``.
        """
        self._check_open()
        if nbytes <= 0 or nbytes % PAGE_SIZE:
            raise ValueError(f"reserve({nbytes}): not a positive multiple of the page size")
        start = self._committed
        if self.mode == "buffer":
            self._flush()
            if self._view is None or nbytes > len(self._view):
                self._drop_map()
                self._map = bytearray(max(self._chunk, nbytes))
                self._view = memoryview(self._map)
            self._map_start = start
        elif self._view is None or start + nbytes > self._map_end:
            self._remap(start, max(self._chunk, nbytes))
        self._resv_end = start + nbytes
        lo = start - self._map_start
        return self._view[lo : lo + nbytes]

    def add_run(self, vaddr: int, nbytes: int) -> None:
        """Claim the next ``nbytes`` of the reservation as the pages at ``vaddr``.

        Runs must come in ascending address order; several runs may share one
        reservation (a scattered ``process_vm_readv``).
        """
        self._check_open()
        self._check_run(vaddr, nbytes)
        if self._committed + nbytes > self._resv_end:
            raise ValueError(
                f"add_run({vaddr:#x}, {nbytes}): only {self._resv_end - self._committed} "
                "bytes are reserved"
            )
        offset = self._committed
        last = self._runs[-1] if self._runs else None
        if (
            last is not None
            and last.flags == PE_PRESENT
            and last.end == vaddr
            and last.offset + last.nbytes == offset
        ):
            self._runs[-1] = last._replace(nr_pages=last.nr_pages + nbytes // PAGE_SIZE)
        else:
            self._runs.append(Run(vaddr, nbytes // PAGE_SIZE, offset, PE_PRESENT))
        self._committed += nbytes
        if self.mode == "mmap" and self._committed - self._crc_pos >= CRC_BATCH:
            self._flush()

    def add_parent_run(self, vaddr: int, nbytes: int) -> None:
        """Record that the pages at ``vaddr`` are unchanged since the parent image."""
        self._check_open()
        self._check_run(vaddr, nbytes)
        last = self._runs[-1] if self._runs else None
        if last is not None and last.flags == PE_PARENT and last.end == vaddr:
            self._runs[-1] = last._replace(nr_pages=last.nr_pages + nbytes // PAGE_SIZE)
        else:
            self._runs.append(Run(vaddr, nbytes // PAGE_SIZE, 0, PE_PARENT))

    def write(self, vaddr: int, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` (a page multiple) in as the pages at ``vaddr``."""
        n = len(data)
        self._check_run(vaddr, n)
        self.reserve(n)[:] = data
        self.add_run(vaddr, n)

    def preallocate(self, nbytes: int) -> None:
        """Reserve disk blocks for `nbytes` more of page data before writing them.

        Allocating up front is what makes buffered writes fast on ext4 (measured
        here: 0.45 GB/s without, 2.5 GB/s with, fsync included), and a full disk
        fails here, before any page is copied.
        """
        if nbytes <= 0 or self.mode != "buffer":
            return
        end = self._committed + nbytes
        if end > self._alloc_end:
            try:
                os.posix_fallocate(self._fd, self._alloc_end, end - self._alloc_end)
            except OSError as err:
                self.abort()
                raise CheckpointError(f"cannot allocate {self.path}: {err.strerror}") from err
            self._alloc_end = end

    @property
    def size(self) -> int:
        return self._committed

    def close(self) -> dict[str, Any]:
        """Finish the file; returns the pagemap record (field names as keys)."""
        self._check_open()
        try:
            self._flush()
            self._stop_thread()
            self._drop_map()
            os.ftruncate(self._fd, self._committed)
        except OSError as err:
            self.abort()
            raise CheckpointError(f"cannot finish {self.path}: {err.strerror}") from err
        except BaseException:
            self.abort()
            raise
        os.close(self._fd)
        self._closed = True
        record = {
            "id": self.id,
            "pages_file": self.name,
            "page_size": PAGE_SIZE,
            "size": self._committed,
            "crc32": self._crc,
            "runs": pack_runs(self._runs),
            "run_size": RUN.size,
            "nr_runs": len(self._runs),
            "nr_pages": self._committed // PAGE_SIZE,
            "nr_parent_pages": sum(r.nr_pages for r in self._runs if r.flags & PE_PARENT),
        }
        if self._on_close is not None:
            self._on_close(self, record)
        return record

    def abort(self) -> None:
        """Stop and remove the page file.  Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._stop_thread()
        self._drop_map()
        os.close(self._fd)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> PageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self.abort()

    # -- internals -------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path} is already closed")

    def _check_run(self, vaddr: int, nbytes: int) -> None:
        check_run(self._runs, vaddr, nbytes)

    def _remap(self, start: int, length: int) -> None:
        # Committed data always ends where the old window is left.
        self._flush()
        self._drop_map()
        end = start + length
        if end > self._alloc_end:
            try:
                os.posix_fallocate(self._fd, self._alloc_end, end - self._alloc_end)
            except OSError as err:
                raise CheckpointError(
                    f"cannot grow {self.path} to {end} bytes: {err.strerror}"
                ) from err
            self._alloc_end = end
        self._map = mmap.mmap(
            self._fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=start
        )
        self._view = memoryview(self._map)
        self._map_start = start
        self._map_end = end

    def _drop_map(self) -> None:
        # A mapping is unmapped when the last view of it (ours, the checksum
        # thread's, or a caller's) is released.
        if self._view is not None:
            self._view.release()
        self._view = None
        self._map = None

    def _flush(self) -> None:
        """Checksum (and in buffer mode write) the bytes claimed since the last flush."""
        if self._crc_pos == self._committed:
            return
        view = self._view[self._crc_pos - self._map_start : self._committed - self._map_start]
        self._crc_pos = self._committed
        if self.mode == "buffer":
            self._crc = zlib.crc32(view, self._crc)
            try:
                while view:
                    view = view[os.write(self._fd, view) :]
            except OSError as err:
                raise CheckpointError(f"cannot write {self.path}: {err.strerror}") from err
            return
        if not self._threaded:
            self._crc = zlib.crc32(view, self._crc)
            view.release()
            return
        if self._thread is None:
            self._queue = queue.SimpleQueue()
            self._thread = threading.Thread(
                target=self._crc_worker, name=f"crc-{self.name}", daemon=True
            )
            self._thread.start()
        self._queue.put(view)

    def _crc_worker(self) -> None:
        while (view := self._queue.get()) is not None:
            self._crc = zlib.crc32(view, self._crc)
            view.release()

    def _stop_thread(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class PageReader:
    """Reads one page file through its pagemap; resolves runs kept in the parent.

    ``record`` is the decoded pagemap; when omitted it is loaded from
    ``pagemap-ID.img`` in ``image_dir``.  ``parent`` returns the parent
    image's PageReader for the same id; by default it is opened through the
    ``parent`` symlink of ``image_dir``.
    """

    def __init__(
        self,
        image_dir: str,
        id: int | str,
        *,
        record: dict[str, Any] | None = None,
        parent: Callable[[], PageReader] | None = None,
        _depth: int = 0,
    ) -> None:
        self.id = check_id(id)
        self.image_dir = image_dir
        where = os.path.join(image_dir, f"pagemap-{self.id}.img")
        if record is None:
            env, _ = envelope.load(where)
            rt = schema.record_type("pagemap")
            if env.type_id != rt.id:
                raise ImageError(f"image file {where} holds record type {env.type_id}, not pagemap")
            record = schema.decode(rt, env.body, where=where)
        if record["pages_file"] != pages_file_name(self.id):
            raise ImageError(f"image file {where}: unexpected page file {record['pages_file']!r}")
        self.record = record
        self.path = os.path.join(image_dir, record["pages_file"])
        self.runs = unpack_runs(record, where)
        self._starts = [r.vaddr for r in self.runs]
        self._depth = _depth
        self._parent_fn = parent
        self._parent: PageReader | None = None
        self._map: mmap.mmap | None = None
        self._mv = memoryview(b"")
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            raise ImageError(f"image file {self.path} is missing") from None
        except OSError as err:
            raise ImageError(f"cannot open image file {self.path}: {err.strerror}") from err
        try:
            size = os.fstat(fd).st_size
            if size != record["size"]:
                raise ImageError(
                    f"image file {self.path} is {size} bytes, its pagemap says {record['size']}"
                )
            if size:
                self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
                self._mv = memoryview(self._map)
        finally:
            os.close(fd)

    @property
    def parent(self) -> PageReader:
        if self._parent is None:
            if self._depth >= MAX_PARENT_DEPTH:
                raise ImageError(
                    f"image {self.image_dir}: parent chain deeper than {MAX_PARENT_DEPTH}"
                )
            if self._parent_fn is not None:
                self._parent = self._parent_fn()
            else:
                link = os.path.join(self.image_dir, PARENT_LINK)
                if not os.path.isdir(link):
                    raise ImageError(
                        f"image {self.image_dir}: pagemap-{self.id}.img has pages in the "
                        "parent image, but there is no parent"
                    )
                self._parent = PageReader(link, self.id, _depth=self._depth + 1)
        return self._parent

    def view(self, run: Run) -> memoryview:
        """The bytes of a run held in this image's page file."""
        if not run.flags & PE_PRESENT:
            raise ValueError(f"run at {run.vaddr:#x} is in the parent image")
        return self._mv[run.offset : run.offset + run.nbytes]

    def segments(self) -> Iterator[tuple[int, memoryview]]:
        """(vaddr, bytes) for every dumped page, in address order, parents resolved."""
        for r in self.runs:
            if r.flags & PE_PRESENT:
                yield r.vaddr, self.view(r)
            else:
                yield from self.parent.segments_in(r.vaddr, r.nbytes)

    def segments_in(self, vaddr: int, nbytes: int) -> Iterator[tuple[int, memoryview]]:
        """(vaddr, bytes) pieces covering exactly ``[vaddr, vaddr + nbytes)``.

        Raises ImageError if any page of the range was not dumped.
        """
        end = vaddr + nbytes
        i = max(0, bisect.bisect_right(self._starts, vaddr) - 1)
        pos = vaddr
        while pos < end:
            if i >= len(self.runs) or self.runs[i].vaddr > pos:
                raise ImageError(
                    f"image {self.image_dir}: page {pos:#x} of {self.id} is not in the image"
                )
            r = self.runs[i]
            i += 1
            if r.end <= pos:
                continue
            take = min(end, r.end) - pos
            if r.flags & PE_PRESENT:
                off = r.offset + pos - r.vaddr
                yield pos, self._mv[off : off + take]
            else:
                yield from self.parent.segments_in(pos, take)
            pos += take

    def read(self, vaddr: int, nbytes: int) -> bytes:
        """The dumped contents of ``[vaddr, vaddr + nbytes)``, parents resolved."""
        return b"".join(bytes(v) for _, v in self.segments_in(vaddr, nbytes))

    def verify(self, *, checksum: bool = True) -> None:
        """Check the page file's crc32 and that every parent run can be found."""
        if checksum:
            crc = zlib.crc32(self._mv)
            if crc != self.record["crc32"]:
                raise ImageError(
                    f"image file {self.path}: checksum mismatch (pagemap says "
                    f"{self.record['crc32']:08x}, computed {crc:08x})"
                )
        for r in self.runs:
            if r.flags & PE_PARENT:
                for _ in self.parent.segments_in(r.vaddr, r.nbytes):
                    pass

    def close(self) -> None:
        if self._parent is not None:
            self._parent.close()
        self._mv.release()
        self._mv = memoryview(b"")
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # a caller still holds a view; unmapped when it lets go
            self._map = None

    def __enter__(self) -> PageReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
