"""eventfd: a 64-bit counter, in plain or semaphore mode.

Dump: the counter and EFD_SEMAPHORE come from the fdinfo (``eventfd-count``,
``eventfd-semaphore``, fs/eventfd.c ``eventfd_show_fdinfo``); EFD_NONBLOCK is
O_NONBLOCK in the file's flags.  ``eventfd-id`` is only a name for humans.

Restore: ``eventfd2(0, flags)`` in the restorer, then one write() of the
count: eventfd2's initial value is an unsigned int, the counter is 64-bit
(at most 2**64 - 2), and a write adds its value to the counter.
"""

from __future__ import annotations

import os

from ..errors import RestoreError
from ..images.schema import Field, register_record
from .anon_inodes import check_status_flags, refuse
from .files import FdKind, FdProbe, register_fd_kind

EVENTFD = register_record("eventfd", id=1100, category="file", fields=[
    Field("count", 1, "uint", optional=False, doc="counter value at dump"),
    Field("semaphore", 2, "bool", doc="EFD_SEMAPHORE: each read takes 1"),
], doc="an eventfd (file_entry detail)")  # fmt: skip

LINK = "anon_inode:[eventfd]"
EFD_SEMAPHORE = os.EFD_SEMAPHORE
EFD_MAX = 0xFFFF_FFFF_FFFF_FFFE


class EventfdKind(FdKind):
    name = "eventfd"
    record_types = ("eventfd",)

    def match(self, probe: FdProbe) -> bool:
        return probe.link == LINK

    def dump(self, ctx, probe: FdProbe) -> dict:
        return dump_eventfd(probe)

    def restore(self, rctx, entry: dict) -> int:
        return restore_eventfd(entry["detail"], entry.get("flags", 0))


def dump_eventfd(probe: FdProbe) -> dict:
    check_status_flags(probe, "an eventfd")
    extra = probe.info.extra
    if "eventfd-count" not in extra or "eventfd-semaphore" not in extra:
        raise refuse(probe, "an eventfd", "this kernel's fdinfo does not show its count and mode")
    return {
        "_type": "eventfd",
        "count": extra["eventfd-count"],
        "semaphore": bool(extra["eventfd-semaphore"]),
    }


def restore_eventfd(rec: dict, file_flags: int) -> int:
    flags = os.EFD_CLOEXEC | (file_flags & os.O_NONBLOCK)
    if rec.get("semaphore"):
        flags |= EFD_SEMAPHORE
    count = rec["count"]
    if count > EFD_MAX:
        raise RestoreError(f"eventfd count {count} is out of range")
    fd = os.eventfd(0, flags)
    try:
        if count:
            os.eventfd_write(fd, count)
    except OSError:
        os.close(fd)
        raise
    return fd


register_fd_kind(EventfdKind())
