"""timerfd: a timer on one clock, its interval, and expirations not yet read.

Dump.  The fdinfo (fs/timerfd.c ``timerfd_show``) gives ``clockid``,
``ticks`` (expirations not read yet), ``settime flags`` and ``it_value``
(time *remaining*, relative even for TFD_TIMER_ABSTIME) and ``it_interval``.
It does not forward a periodic timer that expired: such a timer shows
it_value 0 and one tick however many periods went by.  timerfd_gettime()
does forward it (the overruns go into ticks, as read() would do), so we call
it on our copy of the file first, then read ticks from the fdinfo, then
call it again: when ticks did not change and the remaining time did not go
up, nothing expired in between and (ticks, remaining) is one snapshot.

Restore.  ``timerfd_create`` then ``timerfd_settime`` with the dumped flags
and interval; the value is chosen so that:

- relative timers, and CLOCK_MONOTONIC/CLOCK_BOOTTIME ones set with
  TFD_TIMER_ABSTIME, expire the dumped remaining time after restore (the
  time the container spent frozen or on disk does not count, as for the
  tasks themselves); an ABSTIME one gets ``now + remaining`` on its clock so
  the flag stays as the program set it;
- CLOCK_REALTIME(_ALARM) timers set with TFD_TIMER_ABSTIME keep their
  wall-clock deadline (a deadline that passed meanwhile fires at once, and
  a periodic one counts the periods missed, as the kernel does after a clock
  jump).

Then TFD_IOC_SET_TICKS gives back the unread expirations; settime resets
ticks to 0, so it comes after, adding any expiration the new timer already
had (a wall-clock deadline in the past).
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import time

from .. import procfs
from ..errors import RestoreError
from ..images.schema import Field, register_record
from .anon_inodes import check_status_flags, refuse
from .files import FdKind, FdProbe, register_fd_kind

TIMERFD = register_record("timerfd", id=1130, category="file", fields=[
    Field("clockid", 1, "uint", optional=False),
    Field("ticks", 2, "uint", doc="expirations not read yet"),
    Field("settime_flags", 3, "uint", hex=True, doc="TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET"),
    Field("value_ns", 4, "uint", doc="time remaining at dump; 0 = disarmed"),
    Field("interval_ns", 5, "uint"),
    Field("deadline_ns", 6, "int", doc="absolute expiry on its clock at dump (wall-clock timers)"),
], doc="a timerfd (file_entry detail)")  # fmt: skip

LINK = "anon_inode:[timerfd]"
CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
CLOCK_BOOTTIME = 7
CLOCK_REALTIME_ALARM = 8
CLOCK_BOOTTIME_ALARM = 9
CLOCKS = (
    CLOCK_REALTIME,
    CLOCK_MONOTONIC,
    CLOCK_BOOTTIME,
    CLOCK_REALTIME_ALARM,
    CLOCK_BOOTTIME_ALARM,
)
WALL_CLOCKS = (CLOCK_REALTIME, CLOCK_REALTIME_ALARM)
ALARM_BASE = {CLOCK_REALTIME_ALARM: CLOCK_REALTIME, CLOCK_BOOTTIME_ALARM: CLOCK_BOOTTIME}
TFD_TIMER_ABSTIME = 1
TFD_TIMER_CANCEL_ON_SET = 2
TFD_CLOEXEC = os.O_CLOEXEC
TFD_NONBLOCK = os.O_NONBLOCK
TFD_IOC_SET_TICKS = 0x40085400  # _IOW('T', 0, __u64)
NSEC = 1_000_000_000
SNAPSHOT_TRIES = 20


class Timespec(ctypes.Structure):
    """struct timespec { time_t tv_sec; long tv_nsec; } (16 bytes on x86_64)."""

    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_long)]


class Itimerspec(ctypes.Structure):
    """struct itimerspec { struct timespec it_interval; struct timespec it_value; } (32 bytes)."""

    _fields_ = [("it_interval", Timespec), ("it_value", Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_settime.argtypes = [
    ctypes.c_int,
    ctypes.c_int,
    ctypes.POINTER(Itimerspec),
    ctypes.POINTER(Itimerspec),
]
_libc.timerfd_gettime.argtypes = [ctypes.c_int, ctypes.POINTER(Itimerspec)]


def base_clock(clockid: int) -> int:
    """The clock an alarm timer counts on (the _ALARM variants only add waking the machine)."""
    return ALARM_BASE.get(clockid, clockid)


def _ns(ts: Timespec) -> int:
    return ts.tv_sec * NSEC + ts.tv_nsec


def _ts(ns: int) -> Timespec:
    return Timespec(ns // NSEC, ns % NSEC)


def timerfd_gettime(fd: int) -> tuple[int, int]:
    """(remaining, interval) in ns; forwards a periodic timer that expired."""
    cur = Itimerspec()
    if _libc.timerfd_gettime(fd, ctypes.byref(cur)) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"timerfd_gettime: {os.strerror(err)}")
    return _ns(cur.it_value), _ns(cur.it_interval)


def timerfd_settime(fd: int, flags: int, value_ns: int, interval_ns: int) -> None:
    new = Itimerspec(_ts(interval_ns), _ts(value_ns))
    if _libc.timerfd_settime(fd, flags, ctypes.byref(new), None) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"timerfd_settime: {os.strerror(err)}")


def fdinfo_ticks(path: str) -> int:
    with open(path, "rb") as f:
        return procfs.parse_fdinfo(f.read()).extra.get("ticks", 0)


def consistent(before: tuple[int, int], ticks1: int, after: tuple[int, int], ticks2: int) -> bool:
    """No expiry between two timerfd_gettime() calls with a ticks reading between them.

    An expiry in between changes the ticks (read twice), or moves a periodic
    timer's remaining time up to a new period: either shows.
    """
    return ticks1 == ticks2 and after[0] <= before[0]


# --- the kind ----------------------------------------------------------------------------------


class TimerfdKind(FdKind):
    name = "timerfd"
    record_types = ("timerfd",)

    def match(self, probe: FdProbe) -> bool:
        return probe.link == LINK

    def dump(self, ctx, probe: FdProbe) -> dict:
        return dump_timerfd(probe)

    def restore(self, rctx, entry: dict) -> int:
        return restore_timerfd(entry["detail"], entry.get("flags", 0))


def dump_timerfd(probe: FdProbe) -> dict:
    what = "a timerfd"
    check_status_flags(probe, what)
    extra = probe.info.extra
    clockid = extra.get("clockid")
    if clockid is None or "ticks" not in extra or "settime flags" not in extra:
        raise refuse(probe, what, "its fdinfo does not show its clock, ticks and flags")
    if clockid not in CLOCKS:
        raise refuse(probe, what, f"it runs on clock {clockid}, which vzpy cannot restore")
    if probe.copy < 0:
        raise refuse(probe, what, "it could not be copied with pidfd_getfd")
    fdinfo = f"/proc/{probe.pid}/fdinfo/{probe.fd}"
    try:
        before = timerfd_gettime(probe.copy)
        for _ in range(SNAPSHOT_TRIES):
            ticks1 = fdinfo_ticks(fdinfo)
            after = timerfd_gettime(probe.copy)
            ticks2 = fdinfo_ticks(fdinfo)
            if consistent(before, ticks1, after, ticks2):
                break
            before = after
        else:
            # A timer expiring faster than we can look at it: the last reading is off by
            # at most the expirations of a few microseconds.
            ticks2 = fdinfo_ticks(fdinfo)
        now = time.clock_gettime_ns(base_clock(clockid))
    except OSError as e:
        raise refuse(probe, what, f"its state could not be read: {e.strerror}") from e
    value, interval = after
    flags = extra["settime flags"]
    rec = {
        "_type": "timerfd",
        "clockid": clockid,
        "ticks": ticks2,
        "settime_flags": flags,
        "value_ns": value,
        "interval_ns": interval,
    }
    if value:
        rec["deadline_ns"] = now + value
    return rec


def restore_value(rec: dict, now_ns) -> int:
    """The it_value to give timerfd_settime with the dumped flags (0: disarmed).

    ``now_ns(clockid)`` reads a clock (passed in so the rule can be tested).
    """
    value = rec.get("value_ns") or 0
    if not value:
        return 0
    clockid = rec["clockid"]
    flags = rec.get("settime_flags") or 0
    if not flags & TFD_TIMER_ABSTIME:
        return value
    if clockid in WALL_CLOCKS and rec.get("deadline_ns") is not None:
        # Past deadlines are fine with ABSTIME: the timer expires at once.  An
        # absolute value of 0 would disarm it, hence at least 1 ns.
        return max(rec["deadline_ns"], 1)
    return now_ns(clockid) + value


def restore_timerfd(rec: dict, file_flags: int) -> int:
    clockid = rec["clockid"]
    fd = _libc.timerfd_create(clockid, TFD_CLOEXEC | (file_flags & TFD_NONBLOCK))
    if fd < 0:
        err = ctypes.get_errno()
        raise RestoreError(f"Can't create a timerfd on clock {clockid}: {os.strerror(err)}")
    try:
        flags = rec.get("settime_flags") or 0
        value = restore_value(rec, lambda c: time.clock_gettime_ns(base_clock(c)))
        timerfd_settime(fd, flags, value, rec.get("interval_ns") or 0)
        ticks = rec.get("ticks") or 0
        if ticks:
            # Expirations the new timer already had (a wall-clock deadline in the past).
            ticks += fdinfo_ticks(f"/proc/self/fdinfo/{fd}")
            fcntl.ioctl(fd, TFD_IOC_SET_TICKS, struct.pack("Q", ticks))
    except OSError as e:
        os.close(fd)
        raise RestoreError(f"Can't restore a timerfd on clock {clockid}: {e.strerror}") from e
    return fd


register_fd_kind(TimerfdKind())
