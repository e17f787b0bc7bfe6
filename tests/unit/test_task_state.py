"""Pure parts of the process-state resources: struct layouts, siginfo parsing,
which timer signals are re-fired, how seccomp chains are split, image records."""

from __future__ import annotations

import ctypes
import struct
from types import SimpleNamespace

from vzpy.images.image import ImageReader, ImageWriter
from vzpy.resources import seccomp, task, timens  # noqa: F401 - registers record types


def test_sigevent_layout():
    # struct sigevent: sival 0, signo 8, notify 12, _tid 16; 64 bytes
    t = {"sigev_value": 0x1122334455, "sigev_signo": 35, "sigev_notify": 4, "notify_tid": 77}
    raw = task._sigevent(t)
    assert len(raw) == 64
    assert struct.unpack_from("Qiii", raw) == (0x1122334455, 35, 4, 77)
    assert raw[20:] == bytes(44)


def test_seccomp_struct_sizes():
    assert ctypes.sizeof(seccomp.SockFprog) == 16
    assert seccomp.SockFprog.filter.offset == 8
    assert ctypes.sizeof(seccomp.SeccompMetadata) == 16


def _siginfo(signo: int, code: int, timer_id: int = 0, value: int = 0) -> bytes:
    return struct.pack("iii4xiiQ", signo, 0, code, timer_id, 3, value).ljust(128, b"\0")


def test_timer_siginfo():
    assert task._timer_siginfo(_siginfo(35, task.SI_TIMER, 6, 6000)) == (6, 6000)
    assert task._timer_siginfo(_siginfo(35, -1)) is None  # SI_QUEUE


def test_take_timer_signals():
    sigs = [
        {"signo": 35, "raw": _siginfo(35, task.SI_TIMER, 6)},
        {"signo": 36, "raw": _siginfo(36, task.SI_TIMER, 9)},  # no such timer: stays
        {"signo": 10, "raw": _siginfo(10, 0)},
    ]
    assert task._take_timer_signals(sigs, {0, 6}) == {6}
    assert [s["signo"] for s in sigs] == [36, 10]


def test_seccomp_common_prefix():
    t = SimpleNamespace(pid=10, threads=[10, 11, 12])
    rec = {
        "threads": [
            {"tid": 10, "filters": [0, 1, 2]},
            {"tid": 11, "filters": [0, 1]},
            {"tid": 12, "filters": [0, 1, 3]},
        ]
    }
    assert seccomp._common_prefix(t, rec) == [0, 1]
    # a thread without filters shares nothing
    rec["threads"].pop()
    assert seccomp._common_prefix(t, rec) == []
    assert seccomp._common_prefix(
        SimpleNamespace(pid=1, threads=[1]), {"threads": [{"tid": 1, "filters": [4, 5]}]}
    ) == [
        4,
        5,
    ]


def test_records_round_trip(tmp_path):
    w = ImageWriter(str(tmp_path / "img"), "101")
    w.write(
        "seccomp",
        {
            "filters": [{"prog": b"\x06\0\0\0\0\0\xff\x7f", "flags": 2}],
            "threads": [{"tid": 1, "mode": 2, "filters": [0]}],
        },
        name=1,
    )
    w.write(
        "time_ns",
        {
            "ns_id": 4026531834,
            "monotonic_sec": -5,
            "monotonic_nsec": 10,
            "monotonic_clock_ns": 123,
            "boottime_clock_ns": 456,
        },
    )
    w.commit({})
    r = ImageReader(str(tmp_path / "img"))
    r.verify()
    assert r.read("seccomp", "1")["threads"][0]["filters"] == [0]
    assert r.read("seccomp", "1")["filters"][0]["flags"] == 2
    tn = r.read("time_ns")
    assert (tn["monotonic_sec"], tn["monotonic_clock_ns"], tn["boottime_clock_ns"]) == (
        -5,
        123,
        456,
    )
