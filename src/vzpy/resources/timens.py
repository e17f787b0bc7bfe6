"""The container's time namespace: its CLOCK_MONOTONIC and CLOCK_BOOTTIME go on
from where they were when it was frozen, on this node or another.

Every container lives in its own time namespace (container/spawn.py unshares
CLONE_NEWTIME in the process that forks the container's init).  Its clocks
read the node's plus the namespace's offsets.  At dump we record what the
container's clocks read at the moment it was frozen; at restore the new
namespace gets offsets (dumped value - node's clock now), written into
/proc/self/timens_offsets of the forking process before anything enters the
namespace (time_namespaces(7): offsets cannot change once a process is in).
So the time the container was down does not exist for it: relative timers,
timeouts computed from CLOCK_MONOTONIC and absolute clock_nanosleep()
deadlines keep their meaning.  The restore itself (from the namespace's
creation to the release of the tasks) still counts, like any running time.

The container's clock is read by a clock_gettime() injected into its init
(the syscall applies the namespace's offsets, whatever they and our own
namespace are), bracketed by two reads of ours: their difference is the
effective offset, added to our clock at the moment of the freeze.

Refused at dump: a task in another time namespace than init's, or one that
made a new one for its children (unshare(CLONE_NEWTIME)); vzpy rebuilds one.
"""

from __future__ import annotations

import os
import struct
import time

from ..errors import UnsupportedError
from ..sys.inject import Injector
from . import base

SYS_clock_gettime = 228
CLOCK_MONOTONIC, CLOCK_BOOTTIME = 1, 7
NSEC = 1_000_000_000


def _ns_ino(pid: int, kind: str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/{kind}").st_ino
    except FileNotFoundError:
        return None  # no time namespaces in this kernel, or a zombie


def _clock_in_task(inj, clock: int) -> tuple[int, int]:
    """(the task's clock, our clock at the same instant), in ns."""
    buf = inj.scratch(4096)
    try:
        ours0 = time.clock_gettime_ns(clock)
        inj.call(SYS_clock_gettime, clock, buf)
        ours1 = time.clock_gettime_ns(clock)
        sec, nsec = struct.unpack("qq", inj.read(buf, 16))
    finally:
        inj.free_scratch(buf)
    return sec * NSEC + nsec, (ours0 + ours1) // 2


class TimeNsResource(base.CtResource):
    name = "time_ns"
    order = 10

    def dump(self, ctx) -> None:
        init = ctx.init_pid
        want = _ns_ino(init, "time")
        if want is None:
            return
        for p in ctx.procs:
            if p.zombie:
                continue
            for kind in ("time", "time_for_children"):
                ino = _ns_ino(p.pid, kind)
                if ino is not None and ino != want:
                    raise UnsupportedError(
                        f"Can't dump task {p.nspid} ({p.comm}): its {kind} namespace is not the "
                        "container's (nested time namespaces are not supported)"
                    )
        frozen = ctx.extra.get("frozen_monotonic_ns") or time.monotonic_ns()
        with Injector(init) as inj:
            ct_mono, ours_mono = _clock_in_task(inj, CLOCK_MONOTONIC)
            ct_boot, ours_boot = _clock_in_task(inj, CLOCK_BOOTTIME)
        off_mono = ct_mono - ours_mono
        off_boot = ct_boot - ours_boot
        # Our BOOTTIME at the freeze: no suspend happens during a dump.
        frozen_boot = frozen + (ours_boot - ours_mono)
        ctx.img.write(
            "time_ns",
            {
                "ns_id": want,
                "monotonic_sec": off_mono // NSEC,
                "monotonic_nsec": off_mono % NSEC,
                "boottime_sec": off_boot // NSEC,
                "boottime_nsec": off_boot % NSEC,
                "monotonic_clock_ns": frozen + off_mono,
                "boottime_clock_ns": frozen_boot + off_boot,
            },
        )

    def prepare(self, rctx, spec) -> None:
        if not rctx.img.has("time_ns"):
            return
        rec = rctx.img.read("time_ns")
        mono, boot = rec.get("monotonic_clock_ns"), rec.get("boottime_clock_ns")
        if mono is not None and boot is not None:
            spec.timens_clocks = (mono, boot)


TIME_NS_RESOURCE = base.register_ct_resource(TimeNsResource())
