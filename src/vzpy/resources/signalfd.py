"""signalfd: a file that reads the reading task's own pending signals from a mask.

A signalfd holds nothing but its mask (fdinfo ``sigmask``, fs/signalfd.c
``signalfd_show_fdinfo``; SIGKILL and SIGSTOP are never in it) and
SFD_NONBLOCK (O_NONBLOCK in the file's flags).  The signals it reads are
the reading task's pending signals, which are task state (resources/task.py
saves and queues them again).  So a signalfd made in the restorer and passed
to the tasks behaves as the dumped one: it reads whichever task reads it.
"""

from __future__ import annotations

import ctypes
import os

from ..errors import RestoreError
from ..images.schema import Field, register_record
from ..sys import libc
from .anon_inodes import check_status_flags, refuse
from .files import FdKind, FdProbe, register_fd_kind

SIGNALFD = register_record("signalfd", id=1120, category="file", fields=[
    Field("sigmask", 1, "uint", optional=False, hex=True, doc="bit N-1 = signal N"),
], doc="a signalfd (file_entry detail)")  # fmt: skip

LINK = "anon_inode:[signalfd]"
SFD_CLOEXEC = os.O_CLOEXEC
SFD_NONBLOCK = os.O_NONBLOCK
SIG_UNBLOCKABLE = (1 << (9 - 1)) | (1 << (19 - 1))  # SIGKILL, SIGSTOP


class SignalfdKind(FdKind):
    name = "signalfd"
    record_types = ("signalfd",)

    def match(self, probe: FdProbe) -> bool:
        return probe.link == LINK

    def dump(self, ctx, probe: FdProbe) -> dict:
        return dump_signalfd(probe)

    def restore(self, rctx, entry: dict) -> int:
        return restore_signalfd(entry["detail"], entry.get("flags", 0))


def dump_signalfd(probe: FdProbe) -> dict:
    check_status_flags(probe, "a signalfd")
    mask = probe.info.extra.get("sigmask")
    if mask is None:
        raise refuse(probe, "a signalfd", "its fdinfo shows no signal mask")
    return {"_type": "signalfd", "sigmask": mask}


def restore_signalfd(rec: dict, file_flags: int) -> int:
    mask = ctypes.c_uint64(rec["sigmask"] & ~SIG_UNBLOCKABLE)
    flags = SFD_CLOEXEC | (file_flags & SFD_NONBLOCK)
    try:
        return libc.syscall(libc.SYS_signalfd4, -1, ctypes.byref(mask), 8, flags)
    except OSError as e:
        raise RestoreError(
            f"Can't create a signalfd for mask {rec['sigmask']:#x}: {os.strerror(e.errno)}"
        ) from e


register_fd_kind(SignalfdKind())
