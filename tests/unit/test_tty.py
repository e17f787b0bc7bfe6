"""resources/tty.py without root: struct sizes, device numbers, and the byte stream
that re-injects a canonical input queue (checked against a real pty where the
test can open one: any user can, and TIOCSTI is only tried as root)."""

from __future__ import annotations

import ctypes
import os

import pytest

from vzpy.images.schema import decode, encode
from vzpy.resources import tty


def test_struct_sizes():
    assert ctypes.sizeof(tty.Termios2) == 44  # struct termios2, asm-generic
    assert ctypes.sizeof(tty.KTermios) == 36  # the kernel's struct termios
    assert ctypes.sizeof(tty.Winsize) == 8


def test_ioctl_numbers():
    # _IOR('T', n, size): dir 2 << 30 | size << 16 | 'T' << 8 | n
    def ior(n, size):
        return (2 << 30) | (size << 16) | (ord("T") << 8) | n

    assert tty.TCGETS2 == ior(0x2A, 44)
    assert tty.TCSETS2 == (1 << 30) | (44 << 16) | (ord("T") << 8) | 0x2B
    assert tty.TIOCGPTN == ior(0x30, 4)
    assert tty.TIOCGDEV == ior(0x32, 4)
    assert tty.TIOCGPKT == ior(0x38, 4)
    assert tty.TIOCGPTLCK == ior(0x39, 4)
    assert tty.TIOCGEXCL == ior(0x40, 4)


def test_decode_dev():
    # new_encode_dev: minor low byte, major, then the minor's high bits
    assert tty.decode_dev(0x8800) == (136, 0)
    assert tty.decode_dev(0x8801 | (0x1 << 20)) == (136, 0x101)
    assert tty.decode_dev(0x500) == (5, 0)
    assert tty.pts_index(136, 300) == 300
    assert tty.pts_index(137, 4) == 260


def canon_termios(**cc) -> tty.Termios2:
    t = tty.Termios2()
    t.c_iflag = tty.ICRNL | tty.IXON
    t.c_lflag = tty.ICANON | tty.ISIG | tty.ECHO | tty.IEXTEN
    defaults = {tty.VINTR: 3, tty.VERASE: 0x7F, tty.VKILL: 0x15, tty.VEOF: 4, tty.VLNEXT: 0x16}
    for k, v in defaults.items():
        t.c_cc[k] = v
    for k, v in cc.items():
        t.c_cc[getattr(tty, k)] = v
    return t


def test_split_eof():
    t = canon_termios(VEOL=ord(";"))
    assert tty.split_eof([b"a\n", b"b;", b"", b"c"], t) == [False, False, True, True]
    # VEOL2 ends a line only with IEXTEN
    t2 = canon_termios(VEOL2=ord("!"))
    assert tty.split_eof([b"x!"], t2) == [False]
    t2.c_lflag &= ~tty.IEXTEN
    assert tty.split_eof([b"x!"], t2) == [True]


def test_injection_termios_is_transparent():
    t = canon_termios()
    inj, lnext, eof = tty.injection_termios(t, canon=True)
    assert not inj.c_iflag & (tty.ICRNL | tty.IXON)
    assert not inj.c_lflag & (tty.ISIG | tty.ECHO)
    assert inj.c_lflag & tty.ICANON and inj.c_lflag & tty.IEXTEN
    assert inj.c_cc[tty.VERASE] == inj.c_cc[tty.VKILL] == inj.c_cc[tty.VWERASE] == 0
    assert inj.c_cc[tty.VLNEXT] == lnext and inj.c_cc[tty.VEOF] == eof
    assert len({lnext, eof, 0x0A}) == 3
    raw, lnext, eof = tty.injection_termios(t, canon=False)
    assert not raw.c_lflag & (tty.ICANON | tty.ISIG | tty.ECHO | tty.IEXTEN)
    assert (lnext, eof) == (0, 0)


def test_injection_avoids_the_dumped_terminators():
    # A program that made ^V its end-of-line character: the escape must be another byte.
    t = canon_termios(VEOL=0x16)
    inj, lnext, eof = tty.injection_termios(t, canon=True)
    assert lnext != 0x16 and eof != 0x16
    assert inj.c_cc[tty.VEOL] == 0x16


def test_input_stream_escapes_and_ends_lines():
    t = canon_termios(VEOL=ord(";"))
    rec = {
        "input_canon": True,
        "input_lines": [b"ab\n", b"x\x04y\n", b"w1;", b"", b"eof-line"],
        "input_eof": [False, False, False, True, True],
        "input_partial": b"p\n;q",
    }
    inj, stream = tty.input_stream(rec, t)
    L, E = inj.c_cc[tty.VLNEXT], inj.c_cc[tty.VEOF]
    want = (
        b"ab\n"
        + b"x" + bytes([L, 4]) + b"y\n"  # a literal ^D (was escaped by the user)
        + b"w1;"
        + bytes([E])  # an empty EOF line
        + b"eof-line" + bytes([E])
        + b"p" + bytes([L]) + b"\n" + bytes([L]) + b";q"  # the unfinished line: all literal
    )  # fmt: skip
    assert stream == want


def test_input_stream_raw_is_verbatim():
    t = canon_termios()
    t.c_lflag &= ~tty.ICANON
    rec = {"input_canon": False, "input_partial": bytes(range(256))}
    inj, stream = tty.input_stream(rec, t)
    assert stream == bytes(range(256))
    assert not inj.c_lflag & tty.ICANON


def test_records_round_trip():
    pair = {
        "index": 3,
        "termios": tty.termios_rec(canon_termios()),
        "input_lines": [b"a\n"],
        "input_eof": [False],
        "output": b"\r\n",
        "sid": 7,
        "fg_pgrp": 9,
        "slave_state": "open",
    }
    back = decode("ttys", encode("ttys", {"pairs": [pair], "detached": [8]}), where="t")
    assert back["pairs"][0]["input_lines"] == [b"a\n"]
    assert back["pairs"][0]["termios"]["cc"] == bytes(canon_termios().c_cc)
    assert back["detached"] == [8]
    t = tty.termios_from_rec(back["pairs"][0]["termios"])
    assert bytes(t) == bytes(canon_termios())


@pytest.mark.skipif(os.geteuid() != 0, reason="TIOCSTI into a tty one does not own needs root")
def test_reinjected_canonical_queue_reads_back():
    """Through a real pty: what input_stream injects reads back line by line."""
    import fcntl

    m, s = os.openpty()
    try:
        t = tty.tcgets2(m)
        t.c_cc[tty.VEOL] = ord(";")
        tty.tcsets2(m, t)
        rec = {
            "input_canon": True,
            "input_lines": [b"ab\n", b"x\x04y\x7f\n", b"w1;", b""],
            "input_eof": [False, False, False, True],
            "input_partial": b"pa\x03rt",
        }
        tty.inject_queues(m, s, t, rec)
        assert bytes(tty.tcgets2(m)) == bytes(t)
        fcntl.fcntl(s, fcntl.F_SETFL, fcntl.fcntl(s, fcntl.F_GETFL) | os.O_NONBLOCK)
        got = []
        while True:
            try:
                got.append(os.read(s, 100))
            except BlockingIOError:
                break
        assert got == rec["input_lines"]
        os.write(m, b"\n")
        assert os.read(s, 100) == b"pa\x03rt\n"
    finally:
        os.close(m)
        os.close(s)
