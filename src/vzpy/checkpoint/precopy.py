"""Iterative memory pre-copy: dirty tracking with userfaultfd write-protect.

vzmigrate copies a running container's memory to the destination before
freezing it, then only what was written since, until what is left is small;
the frozen dump then saves only that last delta plus all metadata, and every
page the destination already holds becomes a ``PE_PARENT`` run that restore
resolves through the ``parent`` chain (images/pages.py).

Dirty tracking (kernel-notes §8; this kernel has no soft-dirty):

``DirtyTracker.start()``
    freeze the container briefly and seize it (checkpoint/seize.py); in each
    process inject ``userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY)``,
    take a copy with ``pidfd_getfd`` and inject ``close`` so its fd table is
    unchanged; ``UFFDIO_API(WP_ASYNC|WP_UNPOPULATED)``, then register every
    trackable VMA with MODE_WP and write-protect it; release and thaw.  All
    the ioctls come from our process and act on the target's mm.
scans
    ``PAGEMAP_SCAN(PM_SCAN_WP_MATCHING, category WRITTEN)`` returns the pages
    written since the previous scan and write-protects them again.  VMAs the
    tracker did not register (created later, moved by mremap, or of a
    process that exec'd) have no wp bits: all their present pages count as
    written.  New VMAs are registered at the next iteration (from our
    process; no freeze needed) and copied whole once.  Processes created
    after ``start()`` are not tracked at all: the final dump saves them in
    full.
``DirtyTracker.stop()``
    ``UFFDIO_UNREGISTER`` what is still registered (on this kernel that also
    clears the wp bits: pagemap bit 57) and close our uffds.  It runs on
    every exit path (it is the tracker's context manager exit), so a process
    is never left with our uffd or with write-protected pages after a failed
    or cancelled migration.

Which VMAs are trackable: private, not [vdso]/[vvar]/[vsyscall], not
PROT_NONE (guard gaps and reserved arenas: nothing can write there without an
mprotect, and an mprotect'ed part shows up as an untracked, fully dirty range),
and at most ``MAX_TRACKED_VMA`` bytes: write-protecting with WP_UNPOPULATED
allocates the page tables of the whole range (4 KiB per 2 MiB).

``PreCopy`` runs the iterations.  Its state per tracked process is ``known``:
the pages of which the newest pre-dump chain holds a current copy.  Each
iteration, for each process::

    dirty  = written since the last scan (re-protected)  ∪  present pages of
             untracked VMAs  ∪  VMAs registered just now
    copy   = saveable ∩ dirty           (iteration 1: everything saveable)
    image  = copy as PE_PRESENT runs, (known - dirty) as PE_PARENT runs
    known  = (known - dirty) ∪ what was actually read

A page written between the scan and our read is written again in a
protected state, so the next scan returns it; a page that could not be read
(unmapped meanwhile) just leaves ``known``.  The iterations stop when what is
dirty now would take less than ``final_seconds`` to move, when it no longer
shrinks (less than ``shrink`` of the previous copy), or at ``max_iters`` /
``max_seconds``.

The frozen dump asks ``PreCopy.parent_pages(proc, pagemap_fd, runs)`` (wired
into resources/memory.dump_mm through ``ctx.extra["parent_pages"]``) which of
the pages it is about to save the parent chain holds: ``known`` minus
everything written since the last scan and minus every present page of an
untracked VMA.  A process that is not the one we tracked (pid reused: the
start time differs) gets none.

"Saveable" must match dump_mm: present or swapped, not the shared zero page,
private VMAs only, and in private file mappings only the pages no longer
backed by the file.  Shared memory is not pre-copied: the frozen dump saves
it whole (resources/memory.ShmemObjects).
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .. import log, procfs
from ..errors import CheckpointError, UnsupportedError
from ..resources.memory import classify
from ..sys import libc, ptrace, uffd, vm
from ..sys.inject import Injector
from .seize import Seizer

PAGE = vm.PAGE_SIZE
TASK_SIZE = 0x7FFFFFFFF000
MAX_TRACKED_VMA = 4 << 30
READ_CHUNK = 8 << 20

Runs = list[tuple[int, int]]  # sorted, disjoint, half-open [start, end)

PRIVATE_KINDS = ("anon", "file", "memfd_private")


# --- run lists ---------------------------------------------------------------------------------


def normalize(runs) -> Runs:
    """Sorted, coalesced copy of any iterable of (start, end)."""
    out: Runs = []
    for s, e in sorted(r for r in runs if r[1] > r[0]):
        if out and s <= out[-1][1]:
            if e > out[-1][1]:
                out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


def union(a: Runs, b: Runs) -> Runs:
    return normalize(a + b) if a and b else list(a or b)


def subtract(a: Runs, b: Runs) -> Runs:
    """a minus b (both normalized)."""
    if not a or not b:
        return list(a)
    out: Runs = []
    j = 0
    for s, e in a:
        while j < len(b) and b[j][1] <= s:
            j += 1
        k = j
        pos = s
        while k < len(b) and b[k][0] < e:
            bs, be = b[k]
            if bs > pos:
                out.append((pos, bs))
            pos = max(pos, be)
            if pos >= e:
                break
            k += 1
        if pos < e:
            out.append((pos, e))
    return out


def intersect(a: Runs, b: Runs) -> Runs:
    out: Runs = []
    i = j = 0
    while i < len(a) and j < len(b):
        s = max(a[i][0], b[j][0])
        e = min(a[i][1], b[j][1])
        if s < e:
            out.append((s, e))
        if a[i][1] < b[j][1]:
            i += 1
        else:
            j += 1
    return out


def total(runs: Runs) -> int:
    return sum(e - s for s, e in runs)


# --- scans -------------------------------------------------------------------------------------

_ANY = vm.PAGE_IS_PRESENT | vm.PAGE_IS_SWAPPED


def scan_written(pagemap_fd: int, reprotect: bool) -> Runs:
    """Pages with no wp bit (written since protected, or in an untracked VMA).

    reprotect: PM_SCAN_WP_MATCHING, which looks at tracked VMAs only and
    write-protects what it returns; without it every VMA is walked and
    nothing changes.
    """
    return vm.scan_pages(
        pagemap_fd, 0, TASK_SIZE, skip_zero=False,
        flags=vm.PM_SCAN_WP_MATCHING if reprotect else 0,
        category_mask=vm.PAGE_IS_WRITTEN, anyof=_ANY, return_mask=vm.PAGE_IS_WRITTEN,
    )  # fmt: skip


def scan_untracked(pagemap_fd: int) -> Runs:
    """Present (or swapped) pages of VMAs that are not write-protect tracked."""
    return vm.scan_pages(
        pagemap_fd, 0, TASK_SIZE, skip_zero=False,
        category_mask=vm.PAGE_IS_WPALLOWED, category_inverted=vm.PAGE_IS_WPALLOWED,
        anyof=_ANY, return_mask=_ANY,
    )  # fmt: skip


def scan_tracked_ranges(pagemap_fd: int) -> Runs:
    """Whole ranges of the VMAs registered for async write-protect (populated or not)."""
    return vm.scan_pages(
        pagemap_fd, 0, TASK_SIZE, skip_zero=False,
        category_mask=vm.PAGE_IS_WPALLOWED, anyof=0, return_mask=vm.PAGE_IS_WPALLOWED,
    )  # fmt: skip


def saveable_runs(maps: list[procfs.Vma], pagemap_fd: int) -> Runs:
    """The private pages dump_mm would save (resources/memory.py, same rules)."""
    out: Runs = []
    for v in maps:
        kind = classify(v)
        if kind not in PRIVATE_KINDS:
            continue
        out += vm.scan_pages(pagemap_fd, v.start, v.end, anon_only=kind != "anon")
    return normalize(out)


def trackable(v: procfs.Vma) -> bool:
    return (
        classify(v) in PRIVATE_KINDS
        and v.perms[:3] != "---"
        and 0 < v.end - v.start <= MAX_TRACKED_VMA
    )


def open_pagemap(pid: int) -> int:
    return os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)


@contextmanager
def _pagemap(pid: int) -> Iterator[int]:
    fd = open_pagemap(pid)
    try:
        yield fd
    finally:
        os.close(fd)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM/SIGHUP back for a short critical section.

    vzmigrate cancels by raising from its signal handler; in the middle of
    seizing or of unregistering that would leave a task traced or a range
    write-protected.  Held here, the signal is delivered (and cancels) on exit.
    """
    sigs = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# --- tracking ----------------------------------------------------------------------------------


@dataclass
class Tracked:
    """One process whose writes we follow."""

    pid: int
    nspid: int
    starttime: int
    comm: str
    fd: int = -1  # our copy of the process's userfaultfd
    registered: Runs = field(default_factory=list)  # ranges we registered
    known: Runs = field(default_factory=list)  # pages the newest pre-dump holds current copies of
    in_chain: bool = False  # has a pagemap in the newest pre-dump
    gone: bool = False
    in_new_image: bool = False  # has a pagemap in the pre-dump being written

    def same_process(self, pid: int, starttime: int) -> bool:
        return not self.gone and pid == self.pid and starttime == self.starttime


@dataclass
class TrackStart:
    frozen_ms: float = 0.0
    tracked: int = 0
    untracked: dict[int, str] = field(default_factory=dict)  # host pid -> why
    registered_bytes: int = 0


class DirtyTracker:
    """Write-protect dirty tracking of every process of a running container.

    ``with DirtyTracker(ct) as t:`` starts tracking (a freeze of a few ms) and
    stops it on exit, whatever happened.
    """

    def __init__(self, ct) -> None:
        self.ct = ct
        self.procs: dict[int, Tracked] = {}
        self.reader = procfs.ProcReader()
        self.started = False

    # -- start ------------------------------------------------------------------------
    def start(self) -> TrackStart:
        info = TrackStart()
        cg = self.ct.cgroup
        seizer = Seizer(cg)
        t0 = time.monotonic()
        with signals_held():
            try:
                seizer.seize_all()
                self.started = True
                for pid in sorted(cg.procs()):
                    if pid not in seizer.stopped:
                        continue  # a zombie, or gone
                    why = self._track_one(pid, info)
                    if why:
                        info.untracked[pid] = why
            except BaseException:
                seizer.release(refreeze=False)
                self.stop()
                raise
            seizer.release(refreeze=False)
        info.frozen_ms = (time.monotonic() - t0) * 1000
        info.tracked = len(self.procs)
        if not self.procs:
            self.stop()
            raise UnsupportedError(
                "Can't track the container's memory: no process could be tracked"
            )
        return info

    def _track_one(self, pid: int, info: TrackStart) -> str | None:
        try:
            st = self.reader.stat(pid)
            status = self.reader.status(pid)
        except procfs.NoSuchProcess:
            return "gone"
        nspid = int(status.NSpid[-1]) if status.NSpid else pid
        t = Tracked(pid, nspid, st.starttime, st.comm)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as e:
            return f"pidfd_open: {e.strerror}"
        try:
            with Injector(pid) as inj:
                tfd = inj.syscall(
                    libc.SYS_userfaultfd,
                    uffd.O_CLOEXEC | uffd.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY,
                )
                if tfd < 0:
                    return f"userfaultfd: {os.strerror(-tfd)}"
                try:
                    t.fd = libc.pidfd_getfd(pidfd, tfd)
                finally:
                    rc = inj.syscall(libc.SYS_close, tfd)
                    if rc < 0:
                        log.warning(
                            f"Warning: close of our userfaultfd in {pid}: {os.strerror(-rc)}"
                        )
        except (OSError, ptrace.TaskGone) as e:
            if t.fd >= 0:
                os.close(t.fd)
            return f"injection: {e}"
        finally:
            os.close(pidfd)
        try:
            uffd.api(t.fd)
        except OSError as e:
            os.close(t.fd)
            raise UnsupportedError(
                f"This kernel's userfaultfd lacks async write-protect (UFFDIO_API: {e.strerror})"
            ) from e
        self.procs[pid] = t
        try:
            maps = self.reader.maps(pid)
        except procfs.NoSuchProcess:
            t.gone = True
            return "gone"
        info.registered_bytes += self._register(t, [(v.start, v.end) for v in maps if trackable(v)])
        return None

    def _register(self, t: Tracked, ranges: Runs) -> int:
        """Register and write-protect ranges of t; returns the bytes now tracked."""
        done = 0
        for s, e in ranges:
            try:
                uffd.register(t.fd, s, e - s)
            except OSError as err:
                if err.errno == errno.ESRCH:
                    t.gone = True
                    return done
                log.debug(f"precopy: {t.pid} {s:#x}-{e:#x} not tracked: {err.strerror}")
                continue
            t.registered.append((s, e))
            try:
                uffd.writeprotect(t.fd, s, e - s, True)
            except OSError as err:
                # Registered but not protected: its pages must count as written.
                log.debug(f"precopy: {t.pid} {s:#x}-{e:#x} not protected: {err.strerror}")
                self._unregister(t, [(s, e)])
                continue
            done += e - s
        t.registered = normalize(t.registered)
        return done

    def register_new(self, t: Tracked, maps: list[procfs.Vma], pagemap_fd: int) -> Runs:
        """Register the trackable parts of maps not tracked yet; returns them (copy them whole)."""
        before = scan_tracked_ranges(pagemap_fd)
        want = subtract(normalize((v.start, v.end) for v in maps if trackable(v)), before)
        if not want:
            return []
        self._register(t, want)
        return subtract(scan_tracked_ranges(pagemap_fd), before)

    # -- stop -------------------------------------------------------------------------
    def stop(self) -> None:
        """Unregister and close everything; idempotent; never raises for a vanished process."""
        with signals_held():
            for t in self.procs.values():
                if t.fd < 0:
                    continue
                try:
                    with _pagemap(t.pid) as pm:
                        live = intersect(t.registered, scan_tracked_ranges(pm))
                except OSError:
                    live = []  # gone: nothing to unprotect
                self._unregister(t, live)
                os.close(t.fd)  # the release clears whatever is still registered with it
                t.fd = -1
        self.started = False

    def _unregister(self, t: Tracked, ranges: Runs) -> None:
        for s, e in ranges:
            try:
                uffd.unregister(t.fd, s, e - s)
            except OSError as err:
                log.debug(f"precopy: unregister {t.pid} {s:#x}-{e:#x}: {err.strerror}")

    def __enter__(self) -> DirtyTracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tracked(self) -> list[Tracked]:
        return [t for t in self.procs.values() if not t.gone and t.fd >= 0]

    def written(self, pid: int, reprotect: bool = False) -> Runs:
        """Pages of pid written since the last scan (for tests and diagnostics)."""
        with _pagemap(pid) as pm:
            return (
                scan_written(pm, reprotect)
                if reprotect
                else intersect(scan_written(pm, False), scan_tracked_ranges(pm))
            )


# --- pre-copy ----------------------------------------------------------------------------------


@dataclass
class Policy:
    max_iters: int = 8
    max_seconds: float = 120.0
    final_seconds: float = 0.02  # stop when what is dirty would move in this long
    final_bytes: int = 2 << 20  # ... or is at most this much
    shrink: float = 0.8  # stop when dirty >= shrink * last copy (not converging)


@dataclass
class IterStats:
    n: int
    copied: int = 0  # bytes read and shipped as PE_PRESENT
    parent: int = 0  # bytes left in the parent chain
    seconds: float = 0.0
    dirty_after: int = 0  # bytes dirty when the iteration ended (the next one's input)
    image: str = ""


class PreCopy:
    """Pre-dump iterations into a chain of images; see the module docstring.

    ``new_image(name, parent_name)`` returns an ImageWriter-like object
    (``pages(id)``, ``commit(fields)``, ``abort()``) for a pre-dump whose
    parent is the image written under ``parent_name``.  ``commit`` returns
    once the image is where the restore will read it.
    """

    def __init__(
        self,
        tracker: DirtyTracker,
        new_image: Callable[[str, str | None], Any],
        policy: Policy | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.tracker = tracker
        self.new_image = new_image
        self.policy = policy or Policy()
        self.say = say or (lambda msg: log.info(msg, level=1))
        self.iterations: list[IterStats] = []
        self.last_image: str | None = None
        self.rate = 0.0  # bytes/s of the last iteration, transfer included

    # -- the loop ---------------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool] | None = None) -> list[IterStats]:
        p = self.policy
        t_start = time.monotonic()
        while True:
            st = self.iterate()
            st.dirty_after = self.dirty_bytes()
            n, left = st.n, st.dirty_after
            self.say(
                f"  pre-copy {n}: {st.copied / 2**20:.1f} MiB in {st.seconds:.3f} s, "
                f"{left / 2**20:.1f} MiB dirty since"
            )
            if left <= p.final_bytes or (self.rate and left / self.rate <= p.final_seconds):
                break
            if n >= p.max_iters or time.monotonic() - t_start >= p.max_seconds:
                break
            if n >= 2 and left >= p.shrink * st.copied:
                break  # written as fast as we copy: more rounds would not help
            if should_stop is not None and should_stop():
                break
        return self.iterations

    def dirty_bytes(self) -> int:
        """What the frozen dump would have to save now (tracked processes only)."""
        n = 0
        for t in self.tracker.tracked():
            try:
                with _pagemap(t.pid) as pm:
                    maps = self.tracker.reader.maps(t.pid)
                    dirty = union(scan_written(pm, False), scan_untracked(pm))
                    n += total(subtract(saveable_runs(maps, pm), subtract(t.known, dirty)))
            except (OSError, procfs.NoSuchProcess):
                t.gone = True
        return n

    def iterate(self) -> IterStats:
        n = len(self.iterations) + 1
        name = f"pre-{n}"
        st = IterStats(n, image=name)
        t0 = time.monotonic()
        img = self.new_image(name, self.last_image)
        for t in self.tracker.procs.values():
            t.in_new_image = False
        try:
            for t in self.tracker.tracked():
                self._iterate_one(img, t, first=n == 1, st=st)
            img.commit({"kind": "predump", "page_size": PAGE})
        except BaseException:
            img.abort()
            raise
        st.seconds = time.monotonic() - t0
        if st.seconds > 0 and st.copied:
            self.rate = st.copied / st.seconds
        for t in self.tracker.procs.values():
            t.in_chain = t.in_new_image and not t.gone
        self.last_image = name
        self.iterations.append(st)
        return st

    def _iterate_one(self, img, t: Tracked, first: bool, st: IterStats) -> None:
        try:
            pm = open_pagemap(t.pid)
        except OSError:
            t.gone = True
            return
        try:
            try:
                if self.tracker.reader.stat(t.pid).starttime != t.starttime:
                    t.gone = True
                    return
                maps = self.tracker.reader.maps(t.pid)
            except procfs.NoSuchProcess:
                t.gone = True
                return
            new = self.tracker.register_new(t, maps, pm) if not first else []
            if first:
                dirty: Runs = []
            else:
                dirty = union(union(scan_written(pm, True), scan_untracked(pm)), new)
            saveable = saveable_runs(maps, pm)
        finally:
            os.close(pm)
        vmas = normalize((v.start, v.end) for v in maps if classify(v) in PRIVATE_KINDS)
        if first:
            copy = saveable
            parent: Runs = []
        else:
            copy = intersect(saveable, dirty)
            parent = intersect(subtract(t.known, dirty), vmas)
            parent = subtract(parent, copy)
        got = self._write_pages(img, t, copy, parent)
        t.known = union(parent, got)
        t.in_new_image = True
        st.copied += total(got)
        st.parent += total(parent)

    def _write_pages(self, img, t: Tracked, copy: Runs, parent: Runs) -> Runs:
        """Write t's pagemap: copy read now (PE_PRESENT), parent as PE_PARENT; returns what was read."""
        got: Runs = []
        items = sorted([(s, e, True) for s, e in copy] + [(s, e, False) for s, e in parent])
        with img.pages(t.nspid) as pw:
            batch: list[tuple[int, int]] = []
            size = 0

            def flush() -> None:
                nonlocal batch, size
                if batch:
                    got.extend(self._read_into(pw, t.pid, batch, size))
                batch, size = [], 0

            for s, e, present in items:
                if not present:
                    flush()
                    pw.add_parent_run(s, e - s)
                    continue
                pos = s
                while pos < e:  # chunks of READ_CHUNK, so reading and shipping overlap
                    n = min(e - pos, READ_CHUNK - size)
                    batch.append((pos, n))
                    size += n
                    pos += n
                    if size >= READ_CHUNK:
                        flush()
            flush()
            pw.close()
        return normalize(got)

    def _read_into(self, pw, pid: int, batch: list[tuple[int, int]], size: int) -> Runs:
        view = pw.reserve(size)
        addr, holder = vm.buffer_address(view)
        ok: Runs = []
        try:
            try:
                vm.read_runs(pid, batch, addr)
                ok = [(s, s + n) for s, n in batch]
            except OSError:
                # Something was unmapped meanwhile (the process runs): read run by
                # run, keep what could be read, compacted, in order.
                pos = 0
                for s, n in batch:
                    got = _readv_one(pid, s, n, addr + pos)
                    got -= got % PAGE
                    if got:
                        ok.append((s, s + got))
                        pos += got
        finally:
            del holder
            view.release()
        for s, e in ok:
            pw.add_run(s, e - s)
        return ok

    # -- the frozen dump's question ------------------------------------------------------
    def parent_pages(self, proc, pagemap_fd: int, runs: Runs) -> tuple[Runs, Runs]:
        """Split the runs dump_mm is about to save into (to save, held by the parent chain)."""
        t = self.tracker.procs.get(proc.pid)
        if (
            t is None
            or not t.in_chain
            or t.fd < 0
            or not t.same_process(proc.pid, proc.stat.starttime)
        ):
            return runs, []
        runs = normalize(runs)
        dirty = union(scan_written(pagemap_fd, False), scan_untracked(pagemap_fd))
        parent = intersect(runs, subtract(t.known, dirty))
        return subtract(runs, parent), parent


def _readv_one(pid: int, addr: int, n: int, dest: int) -> int:
    liov = vm.Iovec(dest, n)
    riov = vm.Iovec(addr, n)
    got = vm._process_vm_readv(pid, ctypes.byref(liov), 1, ctypes.byref(riov), 1, 0)
    return max(0, got)


# --- local pre-dump images (chkpnt-style, and tests) -------------------------------------------


def local_images(base: str, ctid: int | str) -> Callable[[str, str | None], Any]:
    """new_image for PreCopy writing pre-dumps as BASE/NAME directories."""
    from ..images import ImageWriter

    def new_image(name: str, parent: str | None):
        return ImageWriter(
            os.path.join(base, name),
            ctid,
            parent=os.path.join(base, parent) if parent else None,
            kind="predump",
            durable=False,
        )

    return new_image


def ensure_supported() -> None:
    """Raise UnsupportedError unless userfaultfd async write-protect and PAGEMAP_SCAN work here."""
    try:
        fd = libc.syscall(
            libc.SYS_userfaultfd, uffd.O_CLOEXEC | uffd.O_NONBLOCK | uffd.UFFD_USER_MODE_ONLY
        )
    except OSError as e:
        raise UnsupportedError(f"userfaultfd is not available: {e.strerror}") from e
    try:
        feats = uffd.api(fd, 0)
    finally:
        os.close(fd)
    if feats & uffd.TRACKING_FEATURES != uffd.TRACKING_FEATURES:
        raise UnsupportedError("userfaultfd has no async write-protect on this kernel")


__all__ = [
    "CheckpointError",
    "DirtyTracker",
    "IterStats",
    "Policy",
    "PreCopy",
    "Tracked",
    "ensure_supported",
    "local_images",
]
