"""Seccomp filters of a process's threads: dump with ptrace, restore by injected seccomp().

Dump (per process, ``seccomp-PID.img``): for each thread in filter mode,
PTRACE_SECCOMP_GET_FILTER reads its classic-BPF programs (index 0 is the
oldest: get_nth_filter() in kernel/seccomp.c counts back from the newest) and PTRACE_SECCOMP_GET_METADATA their flags (only LOG is reported).
Both need CAP_SYS_ADMIN and the thread in a ptrace stop, which it is.  A
thread in strict mode (SECCOMP_MODE_STRICT: read/write/exit only) is refused:
it could not even be made to run our restore calls.

Restore, from ``task.restore_thread_state`` once every thread exists and is
still root (a filter is installed only with CAP_SYS_ADMIN or no_new_privs):
the programs every thread has in common, oldest first, are installed in the
leader with SECCOMP_FILTER_FLAG_TSYNC, so that all threads share those
filter objects as they did (a later TSYNC by the program works only if every
other thread's filter is an ancestor of the caller's); then each thread gets
its own remaining programs.  Threads that shared a filter object beyond the
common prefix get equal copies: same verdicts, but a later TSYNC between
them would fail.  Processes never share filter objects after restore, which
nothing can observe.

Installed filters do not apply to our injected calls: every restored task is
seized with PTRACE_O_SUSPEND_SECCOMP (restore/driver.py RESTORE_OPTIONS).
Not kept: SECCOMP_FILTER_FLAG_SPEC_ALLOW (not reported by the kernel; it
matters only where speculative store bypass is mitigated through seccomp).
"""

from __future__ import annotations

import ctypes
import os

from ..errors import CheckpointError, RestoreError, UnsupportedError
from ..images.schema import Field, register_record
from . import base

PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_SECCOMP_GET_METADATA = 0x420D
SECCOMP_MODE_DISABLED, SECCOMP_MODE_STRICT, SECCOMP_MODE_FILTER = 0, 1, 2
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1 << 0
SECCOMP_FILTER_FLAG_LOG = 1 << 1
SYS_seccomp = 317
SOCK_FILTER_SIZE = 8  # struct sock_filter { u16 code; u8 jt; u8 jf; u32 k; }
BPF_MAXINSNS = 4096

SECCOMP_FILTER = register_record(
    "seccomp_filter",
    id=1401,
    category="thread",
    fields=[
        Field(
            "prog", 1, "bytes", optional=False, doc="struct sock_filter[] as the kernel returned it"
        ),
        Field(
            "flags",
            2,
            "uint",
            hex=True,
            doc="SECCOMP_FILTER_FLAG_* (LOG is all the kernel reports)",
        ),
    ],
    doc="one classic-BPF seccomp program",
)
SECCOMP_THREAD = register_record(
    "seccomp_thread",
    id=1402,
    category="thread",
    fields=[
        Field("tid", 1, "uint", optional=False, doc="tid in the container"),
        Field("mode", 2, "uint", doc="SECCOMP_MODE_*"),
        Field("filters", 3, "list[uint]", doc="indexes into the process's filters, oldest first"),
    ],
)
SECCOMP = register_record(
    "seccomp",
    id=1400,
    category="process",
    fields=[
        Field("filters", 1, "list[seccomp_filter]", doc="distinct programs of the process"),
        Field("threads", 2, "list[seccomp_thread]"),
    ],
    doc="seccomp filters of a process's threads: seccomp-PID.img",
)


class SeccompMetadata(ctypes.Structure):
    """struct seccomp_metadata (include/uapi/linux/ptrace.h)::

    struct seccomp_metadata {
        __u64 filter_off;       /* Input: which filter */
        __u64 flags;            /* Output: filter's flags */
    };
    """

    _fields_ = [("filter_off", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class SockFprog(ctypes.Structure):
    """struct sock_fprog (include/uapi/linux/filter.h), 16 bytes on x86_64::

    struct sock_fprog {
        unsigned short len;             /* Number of filter blocks */
        struct sock_filter *filter;
    };
    """

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_uint64)]


assert ctypes.sizeof(SeccompMetadata) == 16
assert ctypes.sizeof(SockFprog) == 16

_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)


def _ptrace_call(request: int, tid: int, addr: int, data: int | None) -> int:
    ret = _ptrace(request, tid, addr, data)
    if ret == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"ptrace({request:#x}, {tid}): {os.strerror(err)}")
    return ret


def get_filters(tid: int) -> list[tuple[bytes, int]]:
    """(program, flags) of each filter of a stopped thread, oldest first."""
    out = []
    index = 0
    while True:
        try:
            n = _ptrace_call(PTRACE_SECCOMP_GET_FILTER, tid, index, None)
        except OSError as e:
            if e.errno == 2:  # ENOENT: past the oldest filter
                break
            raise
        buf = ctypes.create_string_buffer(n * SOCK_FILTER_SIZE)
        _ptrace_call(PTRACE_SECCOMP_GET_FILTER, tid, index, ctypes.addressof(buf))
        md = SeccompMetadata(filter_off=index)
        _ptrace_call(PTRACE_SECCOMP_GET_METADATA, tid, ctypes.sizeof(md), ctypes.addressof(md))
        out.append((buf.raw, md.flags))
        index += 1
    return out


class SeccompResource(base.TaskResource):
    name = "seccomp"
    order = 20

    def dump(self, ctx, proc, inj) -> dict | None:
        filters: list[dict] = []
        index: dict[tuple[bytes, int], int] = {}
        threads = []
        for tid in proc.tids:
            mode = int(ctx.reader.status(proc.pid, tid=tid).Seccomp or 0)
            if mode == SECCOMP_MODE_DISABLED:
                continue
            ns_tid = ctx.ns_tid(tid)
            if mode != SECCOMP_MODE_FILTER:
                raise UnsupportedError(
                    f"Can't dump task {proc.nspid} ({proc.comm}): thread {ns_tid} is in "
                    f"seccomp mode {mode} (strict mode cannot be restored)"
                )
            try:
                chain = get_filters(tid)
            except OSError as e:
                raise CheckpointError(
                    f"Can't read the seccomp filters of thread {ns_tid} of task {proc.nspid} "
                    f"({proc.comm}): {e.strerror}"
                ) from e
            ids = []
            for prog, flags in chain:
                key = (prog, flags)
                if key not in index:
                    index[key] = len(filters)
                    filters.append({"prog": prog, "flags": flags})
                ids.append(index[key])
            threads.append({"tid": ns_tid, "mode": mode, "filters": ids})
        if not threads:
            return None
        return {"filters": filters, "threads": threads}

    def restore(self, rctx, task, inj, rec: dict) -> None:
        # Threads do not exist yet: restore_thread_filters installs them later.
        rctx.extra.setdefault("seccomp", {})[task.pid] = rec


SECCOMP_RESOURCE = base.register_task_resource(SeccompResource())


def _common_prefix(task, rec: dict) -> list[int]:
    chains = {th["tid"]: list(th.get("filters") or []) for th in rec.get("threads") or []}
    all_chains = [chains.get(t, []) for t in task.threads]
    prefix: list[int] = []
    for column in zip(*all_chains, strict=False):
        if len(set(column)) != 1:
            break
        prefix.append(column[0])
    return prefix


def restore_thread_filters(rctx, task, inj, ns_tid: int) -> None:
    """Install the seccomp filters of thread `ns_tid` (injector `inj` runs in it).

    Called for the leader first, while every thread exists: the filters all
    threads have in common go in through the leader with TSYNC."""
    rec = rctx.extra.get("seccomp", {}).get(task.pid)
    if not rec:
        return
    filters = rec.get("filters") or []
    chain = next(
        (list(th.get("filters") or []) for th in rec.get("threads") or [] if th["tid"] == ns_tid),
        [],
    )
    prefix = _common_prefix(task, rec)
    if ns_tid == task.pid:
        tsync = SECCOMP_FILTER_FLAG_TSYNC if len(task.threads) > 1 else 0
        for i in prefix:
            _install(inj, task, ns_tid, filters[i], tsync)
    for i in chain[len(prefix) :]:
        _install(inj, task, ns_tid, filters[i], 0)


def _install(inj, task, ns_tid: int, flt: dict, flags: int) -> None:
    prog = flt["prog"]
    n = len(prog) // SOCK_FILTER_SIZE
    if not 0 < n <= BPF_MAXINSNS or len(prog) % SOCK_FILTER_SIZE:
        raise RestoreError(
            f"Bad seccomp program ({len(prog)} bytes) for thread {ns_tid} of task {task.pid}"
        )
    area = inj.scratch(len(prog) + ctypes.sizeof(SockFprog))
    try:
        inj.write(area, prog)
        fprog = area + len(prog)
        inj.write(fprog, bytes(SockFprog(len=n, filter=area)))
        flags |= (flt.get("flags") or 0) & SECCOMP_FILTER_FLAG_LOG
        rc = inj.syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, fprog)
    finally:
        inj.free_scratch(area)
    if rc != 0:
        what = f"thread {rc}" if rc > 0 else os.strerror(-rc)
        raise RestoreError(
            f"Can't install a seccomp filter in thread {ns_tid} of task {task.pid}: {what}"
        )
