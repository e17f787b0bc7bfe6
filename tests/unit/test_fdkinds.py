"""The anonymous-inode file kinds (resources/eventfd, epoll, signalfd, timerfd, inotify).

No root needed: struct layouts, the pure rules (wd gaps, epoll toffs, timer values),
records through the image schema, dump refusals from captured fdinfo, and each kind's
restore side run in this process against the kernel (they only create files of ours).
The dump side against real tasks and the full cycle are the zdtm tests.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import time

import pytest

from vzpy import procfs
from vzpy.errors import UnsupportedError
from vzpy.images import schema
from vzpy.resources import anon_inodes, epoll, eventfd, files, inotify, signalfd, timerfd


def probe(fdinfo: str, link: str, fd: int = 5, copy: int = -1) -> files.FdProbe:
    return files.FdProbe(
        pid=os.getpid(),
        nspid=42,
        fd=fd,
        link=link,
        info=procfs.parse_fdinfo(fdinfo),
        copy=copy,
        st=None,
    )


COMMON = "pos:\t0\nflags:\t{flags}\nmnt_id:\t17\nino:\t1038\n"


# --- structs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "struct_type, size",
    [
        (timerfd.Timespec, 16),
        (timerfd.Itimerspec, 32),
        (epoll.KcmpEpollSlot, 16),
    ],
)
def test_struct_size(struct_type, size):
    assert ctypes.sizeof(struct_type) == size


def test_itimerspec_interval_comes_first():
    # struct itimerspec { struct timespec it_interval; struct timespec it_value; }
    assert timerfd.Itimerspec.it_interval.offset == 0
    assert timerfd.Itimerspec.it_value.offset == 16


def test_epoll_event_is_packed():
    ev = epoll.pack_event(0x80000019, 0x1122334455667788)
    assert len(ev) == 12
    assert ev == struct.pack("<IQ", 0x80000019, 0x1122334455667788)


def test_set_ticks_ioctl_number():
    # _IOW('T', 0, __u64): dir=1 (write) << 30 | size 8 << 16 | 'T' << 8 | 0
    assert timerfd.TFD_IOC_SET_TICKS == (1 << 30) | (8 << 16) | (ord("T") << 8)


# --- pure rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wds, want",
    [
        ([1, 2, 3], []),
        ([1, 3], [(2, 2)]),
        ([4], [(1, 3)]),
        ([7, 2, 5], [(1, 1), (3, 4), (6, 6)]),
        ([], []),
    ],
)
def test_inotify_gaps(wds, want):
    assert inotify.gaps(wds) == want


def test_epoll_toff_counts_items_of_the_same_fd():
    lines = (
        "tfd:        3 events:       19 data:               55  pos:0 ino:40e sdev:10\n"
        "tfd:        7 events:       1c data:               66  pos:0 ino:40e sdev:10\n"
        "tfd:        3 events:       19 data:               77  pos:0 ino:28d9f sdev:f\n"
    )
    info = procfs.parse_fdinfo(COMMON.format(flags="02") + lines)
    pairs = [(t.tfd, t.data, toff) for t, toff in epoll.with_offsets(info.extra["tfd"])]
    assert pairs == [(3, 0x55, 0), (7, 0x66, 0), (3, 0x77, 1)]


def _clock(values):
    return lambda c: values[c]


def test_timer_value_relative_keeps_remaining():
    rec = {
        "clockid": timerfd.CLOCK_MONOTONIC,
        "settime_flags": 0,
        "value_ns": 5_000,
        "deadline_ns": 1,
    }
    assert timerfd.restore_value(rec, _clock({})) == 5_000


def test_timer_value_disarmed_stays_disarmed():
    rec = {
        "clockid": timerfd.CLOCK_REALTIME,
        "settime_flags": 1,
        "value_ns": 0,
        "deadline_ns": None,
    }
    assert timerfd.restore_value(rec, _clock({})) == 0


def test_timer_value_abstime_monotonic_is_now_plus_remaining():
    rec = {"clockid": timerfd.CLOCK_BOOTTIME, "settime_flags": 1, "value_ns": 7, "deadline_ns": 3}
    assert timerfd.restore_value(rec, _clock({timerfd.CLOCK_BOOTTIME: 1000})) == 1007


def test_timer_value_abstime_wall_clock_keeps_deadline():
    rec = {"clockid": timerfd.CLOCK_REALTIME, "settime_flags": 3, "value_ns": 7, "deadline_ns": 123}
    assert timerfd.restore_value(rec, _clock({timerfd.CLOCK_REALTIME: 10**18})) == 123
    # an absolute 0 would disarm the timer: a deadline long past still fires
    rec["deadline_ns"] = 0
    assert timerfd.restore_value(rec, _clock({})) == 1


def test_timer_snapshot_consistency():
    # nothing expired: ticks stable, remaining time went down
    assert timerfd.consistent((100, 50), 2, (90, 50), 2)
    # a periodic timer expired in between: remaining time jumped up to a new period
    assert not timerfd.consistent((5, 50), 2, (48, 50), 3)
    assert not timerfd.consistent((5, 50), 3, (48, 50), 3)
    # an expiry between the ticks readings
    assert not timerfd.consistent((100, 0), 0, (90, 0), 1)


def test_alarm_clocks_read_their_base_clock():
    assert timerfd.base_clock(timerfd.CLOCK_REALTIME_ALARM) == timerfd.CLOCK_REALTIME
    assert timerfd.base_clock(timerfd.CLOCK_BOOTTIME_ALARM) == timerfd.CLOCK_BOOTTIME
    assert timerfd.base_clock(timerfd.CLOCK_MONOTONIC) == timerfd.CLOCK_MONOTONIC


# --- records through the image schema ------------------------------------------------------------


RECORDS = [
    {"_type": "eventfd", "count": 0xFFFF_FFFF_FFFF_FFFE, "semaphore": True},
    {"_type": "signalfd", "sigmask": (1 << 9) | (1 << 35)},
    {
        "_type": "timerfd",
        "clockid": 0,
        "ticks": 3,
        "settime_flags": 3,
        "value_ns": 10**12,
        "interval_ns": 5,
        "deadline_ns": 1_795_652_394_000_020_241,
    },
    {
        "_type": "epoll",
        "targets": [
            {
                "tfd": 3,
                "events": 0x80000019,
                "data": 2**64 - 1,
                "holder_pid": 1,
                "holder_fd": 3,
                "ino": 9,
            },
        ],
    },
    {
        "_type": "inotify",
        "watches": [{"wd": 3, "mask": 0x84000102, "path": "/zdtm/x y", "ino": 5, "dev": "254:0"}],
    },
]


@pytest.mark.parametrize("detail", RECORDS, ids=lambda d: d["_type"])
def test_records_round_trip(detail):
    entry = {"id": 7, "flags": 0o4002, "pos": 0, "detail": detail}
    back = schema.decode("file_entry", schema.encode("file_entry", entry), where="test")
    assert back["detail"] == detail
    assert files.kind_for_detail(back["detail"]).name == detail["_type"]


def test_record_ids_in_our_range():
    for name in (
        "eventfd",
        "epoll",
        "epoll_target",
        "signalfd",
        "timerfd",
        "inotify",
        "inotify_watch",
    ):
        assert 1100 <= schema.record_type(name).id <= 1199


# --- dump from captured fdinfo ------------------------------------------------------------------


def test_dump_eventfd():
    text = (
        COMMON.format(flags="04002")
        + "eventfd-count:                5\neventfd-id: 1\neventfd-semaphore: 1\n"
    )
    rec = eventfd.dump_eventfd(probe(text, eventfd.LINK))
    assert rec == {"_type": "eventfd", "count": 5, "semaphore": True}


def test_dump_eventfd_without_mode_is_refused():
    text = COMMON.format(flags="02") + "eventfd-count:                5\n"
    with pytest.raises(UnsupportedError, match="task 42: fd 5 is an eventfd"):
        eventfd.dump_eventfd(probe(text, eventfd.LINK))


def test_dump_signalfd():
    text = COMMON.format(flags="04002") + "sigmask:\t0000000800000200\n"
    assert signalfd.dump_signalfd(probe(text, signalfd.LINK)) == {
        "_type": "signalfd",
        "sigmask": 0x800000200,
    }


def test_o_async_is_refused():
    text = COMMON.format(flags="024002") + "sigmask:\t0000000000000200\n"
    with pytest.raises(UnsupportedError, match="fd 5 is a signalfd .*O_ASYNC"):
        signalfd.dump_signalfd(probe(text, signalfd.LINK))


def test_timerfd_on_unknown_clock_is_refused():
    text = COMMON.format(flags="02") + (
        "clockid: 11\nticks: 0\nsettime flags: 00\nit_value: (1, 0)\nit_interval: (0, 0)\n"
    )
    with pytest.raises(UnsupportedError, match="clock 11"):
        timerfd.dump_timerfd(probe(text, timerfd.LINK))


def test_dump_timerfd_forwards_an_expired_periodic_timer():
    """fdinfo shows it_value 0 for it; timerfd_gettime gives the real remaining time."""
    tfd = ctypes.CDLL(None, use_errno=True).timerfd_create(timerfd.CLOCK_MONOTONIC, os.O_CLOEXEC)
    try:
        timerfd.timerfd_settime(tfd, 0, 1_000_000, 3_600 * 10**9)
        time.sleep(0.01)
        with open(f"/proc/self/fdinfo/{tfd}") as f:
            text = f.read()
        assert "it_value: (0, 0)" in text
        rec = timerfd.dump_timerfd(
            files.FdProbe(os.getpid(), 1, tfd, timerfd.LINK, procfs.parse_fdinfo(text), tfd, None)
        )
        assert rec["ticks"] == 1
        assert 3_590 * 10**9 < rec["value_ns"] <= 3_600 * 10**9
        assert rec["interval_ns"] == 3_600 * 10**9
    finally:
        os.close(tfd)


def test_unsupported_anon_kinds_name_what_they_are():
    kind = next(k for k in files.KINDS if isinstance(k, anon_inodes.UnsupportedAnonKind))
    text = COMMON.format(flags="02000002") + "Pid:\t1\nNSpid:\t1\n"
    p = probe(text, "anon_inode:[pidfd]", fd=9)
    assert kind.match(p)
    with pytest.raises(
        UnsupportedError, match=r"task 42: fd 9 is a pidfd \(anon_inode:\[pidfd\]\)"
    ):
        kind.dump(None, p)
    assert anon_inodes.unsupported_kind("anon_inode:bpf-map")[0] == "a BPF object"
    assert "wibble" in anon_inodes.unsupported_kind("anon_inode:[wibble]")[0]
    assert anon_inodes.unsupported_kind("/etc/passwd") is None


def test_kinds_vzpy_saves_are_not_refused():
    kind = next(k for k in files.KINDS if isinstance(k, anon_inodes.UnsupportedAnonKind))
    text = COMMON.format(flags="02") + "eventfd-count:                0\neventfd-semaphore: 0\n"
    p = probe(text, eventfd.LINK)
    assert not kind.match(p)
    assert next(k for k in files.KINDS if k.match(p)).name == "eventfd"


# --- restore sides, in this process ---------------------------------------------------------------


def _fdinfo(fd: int) -> procfs.FdInfo:
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        return procfs.parse_fdinfo(f.read())


def test_restore_eventfd_counter_above_32_bits():
    fd = eventfd.restore_eventfd({"count": 0x1_2345_6789, "semaphore": False}, os.O_NONBLOCK)
    try:
        assert os.get_blocking(fd) is False
        assert _fdinfo(fd).extra["eventfd-count"] == 0x1_2345_6789
        assert os.eventfd_read(fd) == 0x1_2345_6789
    finally:
        os.close(fd)


def test_restore_eventfd_semaphore():
    fd = eventfd.restore_eventfd({"count": 2, "semaphore": True}, 0)
    try:
        assert os.get_blocking(fd) is True
        assert os.eventfd_read(fd) == 1
        assert os.eventfd_read(fd) == 1
        assert _fdinfo(fd).extra["eventfd-count"] == 0
    finally:
        os.close(fd)


def test_restore_signalfd():
    fd = signalfd.restore_signalfd({"sigmask": 0x800000200 | (1 << 8)}, os.O_NONBLOCK)
    try:
        # SIGKILL is never in a signalfd's mask
        assert _fdinfo(fd).extra["sigmask"] == 0x800000200
        assert os.get_blocking(fd) is False
    finally:
        os.close(fd)


def test_restore_timerfd_ticks_and_remaining():
    rec = {
        "clockid": timerfd.CLOCK_MONOTONIC,
        "ticks": 5,
        "settime_flags": 0,
        "value_ns": 100 * 10**9,
        "interval_ns": 10**9,
    }
    fd = timerfd.restore_timerfd(rec, 0)
    try:
        value, interval = timerfd.timerfd_gettime(fd)
        assert 99 * 10**9 < value <= 100 * 10**9 and interval == 10**9
        assert struct.unpack("Q", os.read(fd, 8))[0] == 5
    finally:
        os.close(fd)


def test_restore_timerfd_wall_deadline_in_the_past_counts_its_expiry():
    rec = {
        "clockid": timerfd.CLOCK_REALTIME,
        "ticks": 2,
        "settime_flags": timerfd.TFD_TIMER_ABSTIME,
        "value_ns": 10**9,
        "interval_ns": 0,
        "deadline_ns": time.clock_gettime_ns(time.CLOCK_REALTIME) - 10**9,
    }
    fd = timerfd.restore_timerfd(rec, os.O_NONBLOCK)
    try:
        assert struct.unpack("Q", os.read(fd, 8))[0] == 3
        assert _fdinfo(fd).extra["settime flags"] == timerfd.TFD_TIMER_ABSTIME
    finally:
        os.close(fd)


def test_epoll_targets_added_under_their_dumped_numbers():
    ep = epoll.EpollKind().restore(None, {"flags": 0o2})
    r, w = os.pipe()
    e = os.eventfd(3, os.EFD_CLOEXEC)
    try:
        os.write(w, b"x")
        # numbers that are free here, and one that is taken here (our pipe's)
        items = [(900, 0x19, 0xAA, r), (901, 0x80000019, 0xBB, e), (w, 0x1C, 0xCC, e)]
        epoll.add_targets(ep, items)
        tfds = {(t.tfd, t.events, t.data) for t in _fdinfo(ep).extra["tfd"]}
        assert tfds == {(900, 0x19, 0xAA), (901, 0x80000019, 0xBB), (w, 0x1C, 0xCC)}
        assert not os.path.exists("/proc/self/fd/900"), "our own table was changed"
        # the files are polled: the pipe and the eventfd are ready
        poller = select.epoll.fromfd(os.dup(ep))
        try:
            assert len(poller.poll(0)) == 3
        finally:
            poller.close()
    finally:
        for fd in (ep, r, w, e):
            os.close(fd)


def test_epoll_add_failure_is_a_restore_error():
    from vzpy.errors import RestoreError

    ep = epoll.EpollKind().restore(None, {"flags": 0o2})
    f = os.open("/proc/self/status", os.O_RDONLY)  # regular files cannot be polled: EPERM
    try:
        with pytest.raises(RestoreError, match="Can't add fd 950"):
            epoll.add_targets(ep, [(950, 1, 0, f)])
    finally:
        os.close(f)
        os.close(ep)


class _Root:
    """The bit of RestoreCtx inotify needs: paths resolved in a root."""

    def __init__(self, root: str) -> None:
        self.root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY)

    def open_in_root(self, path: str, flags: int, mode: int = 0) -> int:
        from vzpy.initbin import open_in_root

        return open_in_root(self.root_fd, path, flags, mode)


def test_inotify_watches_come_back_with_their_wds(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    rctx = _Root(str(tmp_path))
    ifd = inotify.InotifyKind().restore(rctx, {"flags": os.O_NONBLOCK | 2})
    try:
        watches = [
            {"wd": 2, "mask": 0x100, "path": "/a"},
            {"wd": 5, "mask": 0x100 | inotify.IN_ONESHOT, "path": "/b"},
            {"wd": 6, "mask": 0x200 | inotify.IN_EXCL_UNLINK, "path": "/c"},
        ]
        inotify.restore_watches(rctx, ifd, watches)
        marks = {m.wd: m.mask for m in _fdinfo(ifd).extra["inotify"]}
        assert marks == {2: 0x100, 5: 0x100 | inotify.IN_ONESHOT, 6: 0x200 | inotify.IN_EXCL_UNLINK}
        assert inotify.fionread(ifd) == 0, "placeholder watches left events behind"
        (tmp_path / "b" / "new").touch()
        data = os.read(ifd, 4096)
        wd, mask, _cookie, _len = struct.unpack_from("iIII", data)
        assert (wd, mask & 0x100) == (5, 0x100)
    finally:
        os.close(ifd)
        os.close(rctx.root_fd)


def test_inotify_many_placeholders_do_not_overflow_the_queue(tmp_path):
    (tmp_path / "d").mkdir()
    rctx = _Root(str(tmp_path))
    ifd = inotify.InotifyKind().restore(rctx, {"flags": 0})
    try:
        inotify.restore_watches(rctx, ifd, [{"wd": 20000, "mask": 0x100, "path": "/d"}])
        assert [m.wd for m in _fdinfo(ifd).extra["inotify"]] == [20000]
        assert inotify.fionread(ifd) == 0
    finally:
        os.close(ifd)
        os.close(rctx.root_fd)
