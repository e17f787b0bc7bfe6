"""Address spaces: dump and restore of a process's memory map and contents.

Dump (task seized, in a ptrace stop):
  - /proc/PID/maps + smaps VmFlags describe every VMA; the mm fields come from
    /proc/PID/stat, the current brk from an injected brk(0).
  - Which pages to save: PAGEMAP_SCAN gives present-or-swapped runs; in a
    private file mapping only the pages no longer backed by the file (COW'd:
    not PAGE_IS_FILE); the shared zero page never.  process_vm_readv copies
    them straight into the mmap'd page file: one copy.
  - Shared memory (MAP_SHARED anonymous, memfd, SysV shm) is one object for
    all its users: its contents are read once through
    /proc/PID/map_files/START-END (the shmem file itself), holes skipped with
    SEEK_DATA/SEEK_HOLE, into pages-shmem-INO.img.
  - MAP_SHARED mappings of regular files keep their data in the file.
  - [vvar]/[vvar_vclock] cannot be read and [vdso] must come from the
    restoring kernel: only their addresses are saved.

Restore (task seized, freshly cloned from the restore stub):
  1. munmap everything but the vvar/vdso block;
  2. mremap that block to where the dumped one was (glibc caches vdso
     pointers, kernel-notes §6), and move the injection point with it;
  3. mmap every dumped VMA at its address (files opened by the task itself,
     shared objects through map_files of their first user);
  4. write the saved pages through /proc/PID/mem (protections ignored);
  5. madvise flags, then PR_SET_MM_MAP for the mm fields and exe file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from .. import procfs
from ..errors import RestoreError, UnsupportedError
from ..images.pages import PageReader
from ..sys import vm

PROT_READ, PROT_WRITE, PROT_EXEC = 1, 2, 4
MAP_SHARED, MAP_PRIVATE = 0x01, 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x100
MAP_NORESERVE = 0x4000
MAP_LOCKED = 0x2000
SEEK_DATA, SEEK_HOLE = 3, 4

# Pages are copied into the page file this much at a time.
DUMP_CHUNK = 32 << 20

SPECIAL = ("[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]")

# smaps VmFlags -> madvise advice applied after mmap.
MADV_BY_FLAG = {
    "dc": 10,  # MADV_DONTFORK
    "mg": 12,  # MADV_MERGEABLE
    "hg": 14,  # MADV_HUGEPAGE
    "nh": 15,  # MADV_NOHUGEPAGE
    "dd": 16,  # MADV_DONTDUMP
    "wf": 18,  # MADV_WIPEONFORK
    "sr": 1,  # MADV_RANDOM
    "sq": 2,  # MADV_SEQUENTIAL
}


# VMAs another module maps back itself (SysV shm through shmat, mapped deleted
# files through their saved contents: resources/ipc.py, resources/mapped_files.py).
# A handler has match(rec) -> bool on the vma record, dump(ctx, proc, vma, rec)
# called after the usual dump of the VMA, and map(rctx, task, inj, rec) called
# instead of the usual mmap.
VMA_HANDLERS: list = []


def register_vma_handler(handler):
    VMA_HANDLERS.append(handler)
    return handler


def vma_handler(rec: dict):
    return next((h for h in VMA_HANDLERS if h.match(rec)), None)


def prot_of(perms: str) -> int:
    return (
        (PROT_READ if perms[0] == "r" else 0)
        | (PROT_WRITE if perms[1] == "w" else 0)
        | (PROT_EXEC if perms[2] == "x" else 0)
    )


_shm_dev: tuple[int, int] | None = None


def _internal_shm_dev() -> tuple[int, int]:
    """(major, minor) of the kernel's internal tmpfs (shm_mnt): shared anonymous
    memory, memfd and SysV shm live there; a probe memfd tells which it is."""
    global _shm_dev
    if _shm_dev is None:
        fd = os.memfd_create("vzpy-probe", os.MFD_CLOEXEC)
        try:
            dev = os.fstat(fd).st_dev
        finally:
            os.close(fd)
        _shm_dev = (os.major(dev), os.minor(dev))
    return _shm_dev


def classify(v: procfs.Vma) -> str:
    path = v.path or ""
    if path in SPECIAL:
        return path.strip("[]")
    if v.shared:
        if path.startswith("/SYSV"):
            return "sysv_shm"
        if path.startswith("/memfd:"):
            return "memfd"
        if path == "/dev/zero" or (path == "" and v.inode):
            return "shmem"
        if path.startswith("/dev/") and (v.dev_major, v.dev_minor) == _internal_shm_dev():
            # Only the kernel's own tmpfs holds anonymous shared memory; a
            # /dev/shm file is a file of the container's tmpfs (file_shared).
            return "shmem"
        if path == "":
            return "shmem"
        return "file_shared"
    if path == "" or path.startswith("["):
        return "anon"
    if path.startswith("/memfd:"):
        return "memfd_private"
    return "file"


def dump_mm(ctx, proc, inj) -> dict:
    """Save proc's address space: returns the mm record, writes its pages."""
    pid = proc.pid
    reader = ctx.reader
    maps = reader.maps(pid)
    smaps = {s.vma.start: s for s in reader.smaps(pid)}
    st = proc.stat
    vmas = []
    private_runs: list[tuple[int, int]] = []
    pagemap_fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
    try:
        for v in maps:
            kind = classify(v)
            flags_set = smaps[v.start].vm_flags if v.start in smaps else frozenset()
            flags = MAP_SHARED if v.shared else MAP_PRIVATE
            if "gd" in flags_set:
                flags |= MAP_GROWSDOWN
            if "nr" in flags_set:
                flags |= MAP_NORESERVE
            madv = 0
            for fl, adv in MADV_BY_FLAG.items():
                if fl in flags_set:
                    madv |= 1 << adv
            rec = {
                "start": v.start,
                "end": v.end,
                "prot": prot_of(v.perms),
                "flags": flags,
                "pgoff": v.offset // vm.PAGE_SIZE,
                "kind": kind,
                "path": v.path or "",
                "dev": f"{v.dev_major}:{v.dev_minor}",
                "ino": v.inode,
                "madv": madv,
                "locked": "lo" in flags_set,
                "deleted": v.deleted,
            }
            if kind in ("vdso", "vvar", "vvar_clock", "vvar_vclock", "vsyscall"):
                vmas.append(rec)
                continue
            if kind in ("shmem", "memfd", "sysv_shm"):
                rec["shmid"] = v.inode
                ctx.shmem.dump_object(ctx, pid, v, kind)
            elif kind == "file_shared":
                ctx.files.note_mapped_file(ctx, proc, v)
            elif kind in ("file", "memfd_private"):
                if kind == "file":
                    ctx.files.note_mapped_file(ctx, proc, v)
                else:
                    ctx.shmem.dump_object(ctx, pid, v, "memfd")
                    rec["shmid"] = v.inode
                private_runs += vm.scan_pages(pagemap_fd, v.start, v.end, anon_only=True)
            else:  # anon private, heap, stack
                private_runs += vm.scan_pages(pagemap_fd, v.start, v.end)
            h = vma_handler(rec)
            if h is not None:
                h.dump(ctx, proc, v, rec)
            vmas.append(rec)
        # Pages unchanged since the parent image (a pre-dump) become PE_PARENT
        # runs: checkpoint/precopy.py knows which (vzmigrate's iterative pre-copy).
        parent_runs: list[tuple[int, int]] = []
        split = ctx.extra.get("parent_pages")
        if split is not None:
            private_runs, parent_runs = split(proc, pagemap_fd, private_runs)
    finally:
        os.close(pagemap_fd)
    nbytes = sum(e - s for s, e in private_runs)
    with ctx.img.pages(proc.nspid) as pw:
        # One address order for pages we copy and pages the parent image holds;
        # copied in chunks through the writer's reused buffer, so a large
        # address space costs no fresh memory of ours and reading overlaps writing.
        items = sorted(
            [(s, e, True) for s, e in private_runs] + [(s, e, False) for s, e in parent_runs]
        )
        if hasattr(pw, "preallocate"):
            pw.preallocate(nbytes)
        batch: list[tuple[int, int, bool]] = []
        filled = 0

        def flush() -> None:
            if filled:
                view = pw.reserve(filled)
                addr, holder = vm.buffer_address(view)
                try:
                    vm.read_runs(pid, [(a, n) for a, n, present in batch if present], addr)
                finally:
                    del holder
                    view.release()
            for a, n, present in batch:
                (pw.add_run if present else pw.add_parent_run)(a, n)
            batch.clear()

        for start, end, present in items:
            if not present:
                batch.append((start, end - start, False))
                continue
            while start < end:
                n = min(end - start, DUMP_CHUNK - filled)
                batch.append((start, n, True))
                filled += n
                start += n
                if filled >= DUMP_CHUNK:
                    flush()
                    filled = 0
        flush()
        pw.close()
    ctx.stats["pages_bytes"] += nbytes
    brk = inj.syscall(12, 0)  # brk(0) returns the current break
    with open(f"/proc/{pid}/auxv", "rb") as f:
        auxv_words = list(procfs.parse_auxv(f.read()))
    auxv = []
    for t, val in auxv_words:
        auxv += [t, val]
    return {
        "mm_id": proc.nspid,
        "start_code": st.start_code,
        "end_code": st.end_code,
        "start_data": st.start_data,
        "end_data": st.end_data,
        "start_stack": st.start_stack,
        "start_brk": st.start_brk,
        "brk": brk,
        "arg_start": st.arg_start,
        "arg_end": st.arg_end,
        "env_start": st.env_start,
        "env_end": st.env_end,
        "auxv": auxv,
        "exe": os.readlink(f"/proc/{pid}/exe"),
        "vmas": vmas,
        "dumpable": _get_dumpable(inj),
    }


def _get_dumpable(inj) -> int:
    return inj.syscall(157, 3)  # prctl(PR_GET_DUMPABLE)


class ShmemObjects:
    """Shared memory objects of the container, each dumped once by inode."""

    def __init__(self) -> None:
        self.done: dict[int, dict] = {}

    def dump_object(self, ctx, pid: int, v: procfs.Vma, kind: str) -> None:
        ino = v.inode
        if ino in self.done:
            self.done[ino]["users"].append(pid)
            return
        path = f"/proc/{pid}/map_files/{v.start:x}-{v.end:x}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise UnsupportedError(
                f"Can't dump shared mapping {v.path or 'anonymous'} of task {pid}: {e.strerror}"
            ) from e
        try:
            size = os.fstat(fd).st_size
            name = f"shmem-{ino}"
            with ctx.img.pages(name) as pw:
                off = 0
                while off < size:
                    try:
                        data_start = os.lseek(fd, off, SEEK_DATA)
                    except OSError as e:
                        if e.errno == errno.ENXIO:
                            break
                        raise
                    hole = os.lseek(fd, data_start, SEEK_HOLE)
                    n = hole - data_start
                    n = -(-n // vm.PAGE_SIZE) * vm.PAGE_SIZE
                    view = pw.reserve(n)
                    got = os.preadv(fd, [view], data_start)
                    if got < n:
                        view[got:n] = bytes(n - got)
                    view.release()
                    pw.add_run(data_start, n)
                    ctx.stats["shmem_bytes"] += n
                    off = hole
                pw.close()
            self.done[ino] = {
                "ino": ino,
                "size": size,
                "kind": kind,
                "path": v.path,
                "users": [pid],
            }
        finally:
            os.close(fd)

    def records(self) -> list[dict]:
        return [{k: v for k, v in d.items() if k != "users"} for d in self.done.values()]


# --- restore -------------------------------------------------------------------------


class MmRestorer:
    """Rebuild one task's address space through an Injector."""

    def __init__(self, ctx, task, inj, mm: dict, pages: PageReader | None) -> None:
        self.ctx = ctx
        self.task = task
        self.inj = inj
        self.mm = mm
        self.pages = pages

    def move_vdso(self) -> None:
        """Put the fresh vvar/vdso block where the dumped one was (everything else
        is unmapped already, so only the dumped vdso block itself can be in the way)."""
        inj = self.inj
        pid = self.task.host_pid
        vmas = self.mm["vmas"]
        dumped_vdso = _special_block(vmas)
        with open(f"/proc/{pid}/maps", "rb") as f:
            cur = procfs.parse_maps(f.read())
        cur_block = _special_block(
            [
                {"start": v.start, "end": v.end, "kind": (v.path or "").strip("[]")}
                for v in cur
                if v.path in SPECIAL
            ]
        )
        if dumped_vdso and cur_block:
            d_start, d_end, d_vdso = dumped_vdso
            c_start, c_end, c_vdso = cur_block
            if d_end - d_start != c_end - c_start or d_vdso - d_start != c_vdso - c_start:
                raise RestoreError(
                    "The vdso/vvar layout of this kernel differs from the dumped one; "
                    "restore needs the same kernel"
                )
            if d_start != c_start:
                size = c_end - c_start
                off = inj.syscall_ip - c_vdso  # the injection point moves with the vdso
                vdso_off = c_vdso - c_start
                if c_start < d_end and d_start < c_end:
                    # Overlapping move: go through a free spot first.
                    tmp = _free_spot(vmas, size, cur_block)
                    inj.mremap(c_start, size, size, 3, tmp)  # MREMAP_MAYMOVE|MREMAP_FIXED
                    inj.syscall_ip = tmp + vdso_off + off
                    c_start = tmp
                inj.mremap(c_start, size, size, 3, d_start)
                inj.syscall_ip = d_start + vdso_off + off

    def map_and_fill(self) -> None:
        inj = self.inj
        pid = self.task.host_pid
        vmas = self.mm["vmas"]
        # 3. map every dumped VMA
        fds_open: dict[str, int] = {}
        try:
            for v in vmas:
                kind = v["kind"]
                if kind in ("vdso", "vvar", "vvar_vclock", "vsyscall"):
                    continue
                length = v["end"] - v["start"]
                prot = v["prot"]
                flags = (
                    v["flags"] & (MAP_SHARED | MAP_PRIVATE | MAP_GROWSDOWN | MAP_NORESERVE)
                ) | MAP_FIXED
                h = vma_handler(v)
                if h is not None:
                    h.map(self.ctx, self.task, inj, v)
                elif kind == "anon":
                    inj.mmap(v["start"], length, prot, flags | MAP_ANONYMOUS)
                elif kind in ("file", "file_shared"):
                    path = v["path"]
                    key = (path, kind)
                    fd = fds_open.get(key)
                    if fd is None:
                        want = (
                            os.O_RDWR
                            if (kind == "file_shared" and prot & PROT_WRITE)
                            else os.O_RDONLY
                        )
                        try:
                            fd = inj.open(path, want | os.O_CLOEXEC)
                        except OSError as e:
                            raise RestoreError(
                                f"Can't open mapped file {path}: {e.strerror}"
                            ) from e
                        fds_open[key] = fd
                    inj.mmap(v["start"], length, prot, flags, fd, v["pgoff"] * vm.PAGE_SIZE)
                elif kind in ("shmem", "memfd", "sysv_shm", "memfd_private"):
                    fd = self.ctx.shmem_fd_for(inj, self.task, v)
                    inj.mmap(v["start"], length, prot, flags, fd, v["pgoff"] * vm.PAGE_SIZE)
                    inj.close_fd(fd)
                else:
                    raise RestoreError(f"Unknown memory area kind {kind}")
        finally:
            for fd in fds_open.values():
                inj.close_fd(fd)
        # 4. contents
        if self.pages is not None:
            mem_fd = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
            try:
                for vaddr, view in self.pages.segments():
                    vm.write_mem(mem_fd, vaddr, view)
                    view.release()
            finally:
                os.close(mem_fd)
        # 5. madvise and mlock
        for v in vmas:
            madv = v.get("madv") or 0
            n = 0
            while madv:
                if madv & 1:
                    inj.syscall(28, v["start"], v["end"] - v["start"], n)
                madv >>= 1
                n += 1
            if v.get("locked"):
                inj.syscall(149, v["start"], v["end"] - v["start"])  # mlock

    def set_mm_fields(self) -> None:
        """PR_SET_MM_MAP: code/data/brk/stack/args/env/auxv and the exe file in one call."""
        inj = self.inj
        mm = self.mm
        exe_fd = -1
        try:
            exe_fd = inj.open(mm["exe"], os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            exe_fd = -1
        auxv = mm.get("auxv") or []
        auxv_bytes = b"".join(int(x).to_bytes(8, "little") for x in auxv) + bytes(16)
        scratch = self.ctx.args_area
        aux_addr = scratch + 256
        inj.write(aux_addr, auxv_bytes)
        pm = PrctlMmMap(
            mm["start_code"], mm["end_code"], mm["start_data"], mm["end_data"],
            mm["start_brk"], mm["brk"], mm["start_stack"], mm["arg_start"], mm["arg_end"],
            mm["env_start"], mm["env_end"], aux_addr, len(auxv_bytes), exe_fd & 0xFFFFFFFF,
        )  # fmt: skip
        inj.write(scratch, bytes(pm))
        rc = inj.syscall(157, 35, 14, scratch, ctypes.sizeof(pm), 0)  # PR_SET_MM, PR_SET_MM_MAP
        if exe_fd >= 0:
            inj.close_fd(exe_fd)
        if rc < 0:
            raise RestoreError(f"PR_SET_MM_MAP failed for task {self.task.pid}: {os.strerror(-rc)}")
        dumpable = mm.get("dumpable")
        if dumpable is not None and dumpable >= 0:
            inj.syscall(157, 4, dumpable)  # PR_SET_DUMPABLE


class PrctlMmMap(ctypes.Structure):
    """struct prctl_mm_map (include/uapi/linux/prctl.h)::

    struct prctl_mm_map {
        __u64 start_code, end_code, start_data, end_data, start_brk, brk,
              start_stack, arg_start, arg_end, env_start, env_end;
        __u64 *auxv; __u32 auxv_size; __u32 exe_fd;
    };
    """

    _fields_ = [
        (n, ctypes.c_uint64)
        for n in (
            "start_code", "end_code", "start_data", "end_data", "start_brk", "brk",
            "start_stack", "arg_start", "arg_end", "env_start", "env_end", "auxv",
        )
    ] + [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]  # fmt: skip


assert ctypes.sizeof(PrctlMmMap) == 104


def _special_block(vmas: list[dict]) -> tuple[int, int, int] | None:
    """(start, end, vdso_start) of the contiguous vvar..vdso block, if any."""
    sp = [v for v in vmas if v["kind"] in ("vdso", "vvar", "vvar_vclock")]
    if not sp:
        return None
    vdso = [v for v in sp if v["kind"] == "vdso"]
    if not vdso:
        return None
    return min(v["start"] for v in sp), max(v["end"] for v in sp), vdso[0]["start"]


def _free_spot(vmas: list[dict], size: int, avoid: tuple[int, int, int]) -> int:
    taken = sorted([(v["start"], v["end"]) for v in vmas] + [(avoid[0], avoid[1])])
    cand = 0x10000000
    for s, e in taken:
        if cand + size <= s:
            return cand
        cand = max(cand, e)
    return cand


def is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
