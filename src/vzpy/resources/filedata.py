"""A file's data in a page file, holes skipped: the contents of tmpfs files,
SysV shm segments and memfds (resources/mounts.py, ipc.py, memfd.py).

The data of a file of `size` bytes goes in as runs at ``base + offset``;
SEEK_DATA/SEEK_HOLE find what is there (shmem works in pages, so runs start
on a page), and it is read in pieces of at most ``CHUNK`` so that the
PageWriter reuses one buffer rather than taking one as big as the file.
"""

from __future__ import annotations

import bisect
import errno
import os

PAGE = 4096
CHUNK = 8 << 20
SEEK_DATA, SEEK_HOLE = 3, 4


def save_file_data(fd: int, pw, size: int, base: int = 0) -> int:
    """Copy the data of `fd` (its first `size` bytes) into PageWriter `pw`;
    returns the bytes stored.  Reads with pread: `fd`'s offset is untouched."""
    stored = 0
    off = 0
    while off < size:
        try:
            data = os.lseek(fd, off, SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        if data >= size:
            break
        data -= data % PAGE
        hole = min(os.lseek(fd, data, SEEK_HOLE), size)
        pos = data
        while pos < hole:
            n = min(CHUNK, -(-(hole - pos) // PAGE) * PAGE)
            view = pw.reserve(n)
            got = os.preadv(fd, [view], pos)
            if got < n:
                view[got:n] = bytes(n - got)
            view.release()
            pw.add_run(base + pos, n)
            stored += n
            pos += n
        off = pos
    return stored


def load_file_data(
    fd: int, pages, size: int, base: int = 0, starts: list[int] | None = None
) -> None:
    """Write back what save_file_data stored at `base` (holes stay holes).
    `starts`: the runs' addresses, when the caller loads many files."""
    runs = pages.runs
    if starts is None:
        starts = [r.vaddr for r in runs]
    end = base + -(-size // PAGE) * PAGE
    i = max(0, bisect.bisect_right(starts, base) - 1)
    while i < len(runs) and runs[i].vaddr < end:
        r = runs[i]
        lo, hi = max(r.vaddr, base), min(r.end, end)
        if lo < hi:
            for vaddr, view in pages.segments_in(lo, hi - lo):
                off = vaddr - base
                n = min(len(view), size - off)
                if n > 0:
                    os.pwrite(fd, view[:n], off)
                view.release()
        i += 1
