"""Terminals: pseudo-terminal pairs of the container's /dev/pts, controlling
terminals and job control.

What is saved
    Unix98 pty pairs of the container's own devpts instance (container/spawn.py
    mounts it ``newinstance``): the index N of ``/dev/pts/N``, the slave's
    termios (TCGETS2, speeds included) and locked termios, the window size,
    the lock (TIOCGPTLCK), packet mode (TIOCGPKT), exclusive mode of either
    end (TIOCGEXCL), the session the slave is the controlling terminal of
    (TIOCGSID through the master) and its foreground process group
    (TIOCGPGRP), data queued in either direction, and whether the slave side
    was never opened, is open, or was opened and closed again (then the
    master reads EIO: ``TTY_OTHER_CLOSED``).  Files: the master (there is only
    ever one open file description of a master: ptmx makes a new pair on each
    open and a master cannot be reopened), slave files (each open of
    ``/dev/pts/N`` is its own description), ``/dev/tty`` files (``TIOCGDEV``
    names the terminal they reach) and O_PATH files of these nodes.  Per
    process: a task in a session with a controlling terminal that has no
    ``signal->tty`` itself (it was forked before the leader got the terminal,
    or it called TIOCNOTTY) is remembered as "detached".
    Hung-up terminals (a slave whose master was closed, e.g. what a
    background job keeps after its ``vzctl enter`` session ended) are saved
    as such and come back hung up: reads return 0, writes EIO.

What is refused at dump (UnsupportedError naming the task, the fd and what it is)
    a terminal of the node (another devpts instance: a host pty inherited
    through ``vzctl exec``), ``/dev/console``, virtual consoles and serial
    lines, BSD ptys; a slave whose master is held outside the container (a
    running ``vzctl enter``); a task whose controlling terminal is one of
    those; a ``/dev/tty`` whose holder's controlling terminal is not the one
    it reaches (the index alone does not name a devpts instance);
    a pending packet-mode status byte; more than 4095 bytes queued in one
    direction (the line discipline's buffer, see "Queued data"); a
    foreground process group that no longer has any member.

Queued data (the decision)
    A tty has no way to read its queues without consuming them, so the dump
    reads them and writes them straight back, into the same tty, the same
    way the restore writes them into the new one: with TIOCSTI, byte by
    byte, straight into the receiving line discipline (``tiocsti()`` calls
    ``ldisc->receive_buf`` synchronously; it needs CAP_SYS_ADMIN, which the
    dumper and the restorer have).  The tasks are frozen meanwhile.
    - Toward the master: the master's line discipline is always raw (ptm
      ``init_termios`` has no iflag/lflag; TCSETS on a master sets the
      *slave's* termios), so the bytes go back as they are.
    - Toward the slave, non-canonical (or EXTPROC): raw bytes, re-injected
      under a "transparent" termios (no ICRNL/INLCR/IGNCR/ISTRIP/IUCLC/
      IXON/PARMRK, no ISIG, no echo: they were echoed when typed).
    - Toward the slave, canonical: read() returns one line at a time; a line
      that does not end with a terminator (\\n, VEOL, VEOL2 with IEXTEN) was
      ended by VEOF, which read() does not return.  The unfinished line
      after the last complete one is not readable in canonical mode, so the
      dump switches ICANON off (n_tty then publishes it) and reads it raw,
      then switches it back on (with nothing left, n_tty starts clean).  The
      restore re-injects each line under a transparent canonical termios:
      VERASE/VKILL/VWERASE/VREPRINT disabled, a VLNEXT and a VEOF chosen so
      they clash with nothing, literal bytes that would act as terminators
      escaped with that VLNEXT, EOF lines ended with that VEOF; then the real
      termios goes back (ICANON unchanged: n_tty keeps the line marks).
    Locked termios are lifted during this and put back.  Packet mode is
    switched off while reading and on again (which also clears the status
    byte; the dump refuses when one is pending).  The line discipline holds
    4095 bytes (N_TTY_BUF_SIZE - 1) and so can TIOCSTI: more than that in
    one direction is refused.
    Not saved: input queued for a slave that was *never opened* (checking it
    needs opening the slave, which changes the master's EIO state); the
    ^S/^Q output-stopped state; a pending ^V (lnext) and n_tty's echo column
    bookkeeping; the number in a hung-up file's "/dev/pts/N (deleted)" when
    a live pair has N again (the file was hung up by vhangup()).

Restore order (restore/driver.py)
    restore_early   (stub seized, no task yet): every pair is made at its
                    index (devpts hands out the lowest free index: extra
                    masters are opened as fillers and closed), unlocked,
                    queues injected, termios, locked termios, winsize,
                    packet mode and master exclusivity set.
    session_created (a leader just called setsid, before its children are
                    cloned): TIOCSCTTY injected into it, so that the tasks
                    it clones inherit ``signal->tty`` as they did by fork();
                    then the terminal's /dev/tty files are opened by it
                    (opening /dev/tty reaches the opener's controlling
                    terminal) and copied out with pidfd_getfd.
    fd restore      master: our master (dup); slave: a new open of
                    /dev/pts/N with the dumped flags; /dev/tty: the copy made
                    above; hung-up files: opened on a stand-in pair (a
                    hung-up /dev/tty by a short-lived child of the restorer
                    that takes that slave as its controlling terminal), whose
                    master restore_late closes.
    restore_late    (every task and pgrp exists): TIOCSPGRP by the session
                    leader, TIOCNOTTY in "detached" tasks, the pty lock and
                    slave exclusivity, then our own slave fds are closed (the
                    master then reads EIO again where the slave had been
                    closed) and the stand-in masters too (hanging their
                    slaves up).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import select
import socket
import stat
import struct
from dataclasses import dataclass, field

from ..errors import ImageError, RestoreError, UnsupportedError
from ..images.schema import Field, register_record
from . import base
from .files import KINDS, FdKind, FdProbe

# --- kernel interface -------------------------------------------------------------------------

SYS_ioctl = 16
TCGETS, TCSETS = 0x5401, 0x5402
TCGETS2, TCSETS2 = 0x802C542A, 0x402C542B  # _IOR/_IOW('T', 0x2A/0x2B, struct termios2)
TIOCGLCKTRMIOS, TIOCSLCKTRMIOS = 0x5456, 0x5457
TIOCGWINSZ, TIOCSWINSZ = 0x5413, 0x5414
TIOCSCTTY, TIOCNOTTY = 0x540E, 0x5422
TIOCGPGRP, TIOCSPGRP, TIOCGSID = 0x540F, 0x5410, 0x5429
TIOCEXCL, TIOCGEXCL = 0x540C, 0x80045440
TIOCPKT, TIOCGPKT = 0x5420, 0x80045438
TIOCSPTLCK, TIOCGPTLCK = 0x40045431, 0x80045439
TIOCGPTN, TIOCGPTPEER, TIOCGDEV = 0x80045430, 0x5441, 0x80045432
TIOCSTI, FIONREAD = 0x5412, 0x541B

TTYAUX_MAJOR = 5  # 5:0 /dev/tty, 5:1 /dev/console, 5:2 /dev/ptmx
PTM_MAJORS = range(128, 136)  # UNIX98_PTY_MASTER_MAJOR .. +7
PTS_MAJORS = range(136, 144)  # UNIX98_PTY_SLAVE_MAJOR .. +7
# Other terminal drivers: BSD ptys (2, 3), VTs and serial (4), ttyUSB (188),
# low-density serial (204), hvc (229).  Refused, but named as terminals.
OTHER_TTY_MAJORS = frozenset({2, 3, 4, 188, 204, 229})

O_ACCMODE = 0o3
O_CLOEXEC = 0o2000000
O_PATH = 0o10000000
N_TTY_BUF = 4095  # N_TTY_BUF_SIZE - 1: what one line discipline holds

# termios bits (include/uapi/asm-generic/termbits.h)
IGNBRK, BRKINT, IGNPAR, PARMRK, INPCK, ISTRIP = 0o1, 0o2, 0o4, 0o10, 0o20, 0o40
INLCR, IGNCR, ICRNL, IUCLC, IXON, IXANY, IXOFF, IMAXBEL = (
    0o100, 0o200, 0o400, 0o1000, 0o2000, 0o4000, 0o10000, 0o20000,
)  # fmt: skip
ISIG, ICANON, XCASE, ECHO, ECHOE, ECHOK, ECHONL = 0o1, 0o2, 0o4, 0o10, 0o20, 0o40, 0o100
TOSTOP, ECHOCTL, ECHOPRT, ECHOKE, PENDIN, IEXTEN, EXTPROC = (
    0o400, 0o1000, 0o2000, 0o4000, 0o40000, 0o100000, 0o200000,
)  # fmt: skip
VINTR, VQUIT, VERASE, VKILL, VEOF, VTIME, VMIN = 0, 1, 2, 3, 4, 5, 6
VSTART, VSTOP, VSUSP, VEOL, VREPRINT, VDISCARD, VWERASE, VLNEXT, VEOL2 = (
    8, 9, 10, 11, 12, 13, 14, 15, 16,
)  # fmt: skip
NCCS = 19

# What the transparent termios used to re-inject queued input clears.
INJECT_IFLAG_OFF = BRKINT | PARMRK | INPCK | ISTRIP | INLCR | IGNCR | ICRNL | IUCLC | IXON | IXOFF
INJECT_LFLAG_OFF = (
    ISIG | XCASE | ECHO | ECHOE | ECHOK | ECHONL | ECHOCTL | ECHOPRT | ECHOKE | PENDIN
)


class Termios2(ctypes.Structure):
    """``struct termios2`` (include/uapi/asm-generic/termbits.h), 44 bytes::

    struct termios2 {
            tcflag_t c_iflag;               /* input mode flags */
            tcflag_t c_oflag;               /* output mode flags */
            tcflag_t c_cflag;               /* control mode flags */
            tcflag_t c_lflag;               /* local mode flags */
            cc_t c_line;                    /* line discipline */
            cc_t c_cc[NCCS];                /* control characters, NCCS = 19 */
            speed_t c_ispeed;               /* input speed */
            speed_t c_ospeed;               /* output speed */
    };
    """

    _fields_ = [
        ("c_iflag", ctypes.c_uint32),
        ("c_oflag", ctypes.c_uint32),
        ("c_cflag", ctypes.c_uint32),
        ("c_lflag", ctypes.c_uint32),
        ("c_line", ctypes.c_uint8),
        ("c_cc", ctypes.c_uint8 * NCCS),
        ("c_ispeed", ctypes.c_uint32),
        ("c_ospeed", ctypes.c_uint32),
    ]


class KTermios(ctypes.Structure):
    """``struct termios`` as the kernel's TCGETS/TIOCGLCKTRMIOS copy it (36 bytes;
    glibc's own ``struct termios`` is larger)::

        struct termios {
                tcflag_t c_iflag, c_oflag, c_cflag, c_lflag;
                cc_t c_line;
                cc_t c_cc[NCCS];                /* NCCS = 19 */
        };
    """

    _fields_ = Termios2._fields_[:6]


class Winsize(ctypes.Structure):
    """``struct winsize`` (include/uapi/asm-generic/termios.h), 8 bytes::

    struct winsize {
            unsigned short ws_row, ws_col, ws_xpixel, ws_ypixel;
    };
    """

    _fields_ = [
        ("ws_row", ctypes.c_ushort),
        ("ws_col", ctypes.c_ushort),
        ("ws_xpixel", ctypes.c_ushort),
        ("ws_ypixel", ctypes.c_ushort),
    ]


# --- image records (ids 1200-1299) ------------------------------------------------------------

# fmt: off
TTY_FILE = register_record("tty_file", id=1200, category="file", fields=[
    Field("role", 1, "str", optional=False,
          doc="'master', 'slave', 'ctty' (a /dev/tty file) or 'path' (O_PATH)"),
    Field("index", 2, "int", doc="N of /dev/pts/N; -1 when unknown (hung-up /dev/tty)"),
    Field("path", 3, "str", doc="the fd's link at dump"),
    Field("hung_up", 4, "bool", doc="the terminal was hung up (its master closed)"),
    Field("rdev", 5, "uint", hex=True, doc="st_rdev of the file, for diagnostics"),
], doc="a terminal file (file_entry detail)")
TTY_TERMIOS = register_record("tty_termios", id=1202, category="file", fields=[
    Field("iflag", 1, "uint", hex=True),
    Field("oflag", 2, "uint", hex=True),
    Field("cflag", 3, "uint", hex=True),
    Field("lflag", 4, "uint", hex=True),
    Field("line", 5, "uint", doc="line discipline number (0 = N_TTY)"),
    Field("cc", 6, "bytes", doc="c_cc[19]"),
    Field("ispeed", 7, "uint"),
    Field("ospeed", 8, "uint"),
], doc="struct termios2")
TTY_PAIR = register_record("tty_pair", id=1201, category="file", fields=[
    Field("index", 1, "uint", optional=False, doc="N of /dev/pts/N"),
    Field("master_path", 2, "str", doc="path the master was opened by (/dev/pts/ptmx...)"),
    Field("master_flags", 3, "uint", hex=True, doc="open flags of the master"),
    Field("termios", 4, "tty_termios", doc="the slave's termios (TCGETS2)"),
    Field("termios_locked", 5, "tty_termios", doc="TIOCGLCKTRMIOS"),
    Field("ws_row", 6, "uint"),
    Field("ws_col", 7, "uint"),
    Field("ws_xpixel", 8, "uint"),
    Field("ws_ypixel", 9, "uint"),
    Field("locked", 10, "bool", doc="TIOCGPTLCK: the slave cannot be opened"),
    Field("packet", 11, "bool", doc="TIOCGPKT on the master"),
    Field("excl_master", 12, "bool", doc="TIOCGEXCL on the master"),
    Field("excl_slave", 13, "bool", doc="TIOCGEXCL on the slave"),
    Field("slave_state", 14, "str", doc="'never' opened, 'open', or 'closed' (master reads EIO)"),
    Field("sid", 15, "uint", doc="session it is the controlling terminal of (0: none)"),
    Field("fg_pgrp", 16, "uint", doc="foreground process group (TIOCGPGRP)"),
    Field("input_canon", 17, "bool", doc="input was read line by line (ICANON, no EXTPROC)"),
    Field("input_lines", 18, "list[bytes]", doc="complete lines queued for the slave, as read()"),
    Field("input_eof", 19, "list[bool]", doc="per line: ended by VEOF (not returned by read)"),
    Field("input_partial", 20, "bytes", doc="input after the last complete line (or all, raw)"),
    Field("output", 21, "bytes", doc="bytes queued for the master's reader"),
], doc="one pseudo-terminal pair")
TTYS = register_record("ttys", id=1203, category="file", fields=[
    Field("pairs", 1, "list[tty_pair]"),
    Field("detached", 2, "list[uint]",
          doc="tasks in a session with a controlling terminal that have none themselves"),
], doc="the container's terminals: ttys.img")
# fmt: on


# --- small helpers ----------------------------------------------------------------------------


def get_int(fd: int, req: int) -> int:
    return struct.unpack("i", fcntl.ioctl(fd, req, b"\0" * 4))[0]


def set_int(fd: int, req: int, value: int) -> None:
    fcntl.ioctl(fd, req, struct.pack("i", value))


def tcgets2(fd: int) -> Termios2:
    return Termios2.from_buffer_copy(fcntl.ioctl(fd, TCGETS2, bytes(ctypes.sizeof(Termios2))))


def tcsets2(fd: int, t: Termios2) -> None:
    fcntl.ioctl(fd, TCSETS2, bytes(t))


def get_locked(fd: int) -> KTermios:
    return KTermios.from_buffer_copy(
        fcntl.ioctl(fd, TIOCGLCKTRMIOS, bytes(ctypes.sizeof(KTermios)))
    )


def set_locked(fd: int, t: KTermios) -> None:
    fcntl.ioctl(fd, TIOCSLCKTRMIOS, bytes(t))


def termios_rec(t: Termios2 | KTermios) -> dict:
    rec = {
        "iflag": t.c_iflag,
        "oflag": t.c_oflag,
        "cflag": t.c_cflag,
        "lflag": t.c_lflag,
        "line": t.c_line,
        "cc": bytes(t.c_cc),
    }
    if isinstance(t, Termios2):
        rec["ispeed"], rec["ospeed"] = t.c_ispeed, t.c_ospeed
    return rec


def termios_from_rec(rec: dict | None, cls: type = Termios2):
    t = cls()
    if not rec:
        return t
    t.c_iflag, t.c_oflag = rec.get("iflag") or 0, rec.get("oflag") or 0
    t.c_cflag, t.c_lflag = rec.get("cflag") or 0, rec.get("lflag") or 0
    t.c_line = rec.get("line") or 0
    cc = (rec.get("cc") or b"")[:NCCS]
    t.c_cc[: len(cc)] = cc
    if cls is Termios2:
        t.c_ispeed, t.c_ospeed = rec.get("ispeed") or 0, rec.get("ospeed") or 0
    return t


def decode_dev(n: int) -> tuple[int, int]:
    """(major, minor) of a ``new_encode_dev()`` number (/proc/PID/stat tty_nr, TIOCGDEV)."""
    return (n >> 8) & 0xFFF, (n & 0xFF) | ((n >> 12) & 0xFFF00)


def pts_index(major: int, minor: int) -> int:
    """Index N of /dev/pts/N from the slave's device number (devpts uses major 136 and
    the full minor range; the 8 legacy majors split it in blocks of 256)."""
    return (major - PTS_MAJORS.start) * 256 + minor if major != PTS_MAJORS.start else minor


def is_canonical(lflag: int) -> bool:
    """n_tty reads line by line only with ICANON and without EXTPROC."""
    return bool(lflag & ICANON) and not lflag & EXTPROC


def line_terminators(t: Termios2) -> set[int]:
    """Bytes that end a canonical line and stay in it (VEOF ends one but is dropped)."""
    out = {0x0A}
    if t.c_cc[VEOL]:
        out.add(t.c_cc[VEOL])
    if t.c_cc[VEOL2] and t.c_lflag & IEXTEN:
        out.add(t.c_cc[VEOL2])
    return out


def split_eof(lines: list[bytes], t: Termios2) -> list[bool]:
    """For each line read in canonical mode: was it ended by VEOF (not returned)?"""
    ends = line_terminators(t)
    return [not line or line[-1] not in ends for line in lines]


def injection_termios(t: Termios2, canon: bool) -> tuple[Termios2, int, int]:
    """The termios under which queued input is re-injected, and the VLNEXT and VEOF
    bytes it uses (canonical only; 0 otherwise).

    Nothing may act on the bytes but line ending: no input translation, no
    signals, no echo, no flow control, no editing.  Canonical line marks need
    ICANON on, with VEOL/VEOL2 as dumped (they stay in the line), and IEXTEN
    for VLNEXT, which escapes literal bytes that would end a line.
    """
    inj = Termios2.from_buffer_copy(bytes(t))
    inj.c_iflag &= ~INJECT_IFLAG_OFF
    inj.c_lflag &= ~INJECT_LFLAG_OFF
    if not canon:
        inj.c_lflag &= ~(ICANON | IEXTEN)
        inj.c_cc[VMIN], inj.c_cc[VTIME] = 1, 0
        return inj, 0, 0
    inj.c_lflag |= ICANON | IEXTEN
    for c in (VERASE, VKILL, VWERASE, VREPRINT):
        inj.c_cc[c] = 0  # __DISABLED_CHAR: n_tty never treats 0 as special
    if not t.c_lflag & IEXTEN:
        inj.c_cc[VEOL2] = 0  # not a terminator for the dumped termios
    taken = line_terminators(inj)
    free = [b for b in (0x16, 0x04, 0x01, 0x02, 0x03, 0x05, 0x06, 0x07) if b not in taken]
    lnext, eof = free[0], free[1]
    inj.c_cc[VLNEXT], inj.c_cc[VEOF] = lnext, eof
    return inj, lnext, eof


def input_stream(rec: dict, t: Termios2) -> tuple[Termios2, bytes]:
    """The transparent termios and the bytes to TIOCSTI into the slave so that its
    input queue reads back as dumped (lines, EOF lines, the unfinished line)."""
    canon = bool(rec.get("input_canon"))
    inj, lnext, eof = injection_termios(t, canon)
    partial = rec.get("input_partial") or b""
    if not canon:
        return inj, partial
    special = line_terminators(inj) | {lnext, eof}

    def escaped(data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if b in special:
                out.append(lnext)
            out.append(b)
        return bytes(out)

    out = bytearray()
    lines = rec.get("input_lines") or []
    eofs = rec.get("input_eof") or [False] * len(lines)
    for line, at_eof in zip(lines, eofs, strict=True):
        if at_eof:
            out += escaped(line) + bytes([eof])
        else:
            out += escaped(line[:-1]) + line[-1:]
    out += escaped(partial)
    return inj, bytes(out)


def sti(fd: int, data: bytes) -> None:
    """Push bytes into the line discipline of the tty behind fd (synchronous)."""
    for b in data:
        fcntl.ioctl(fd, TIOCSTI, bytes((b,)))


def _refuse(probe: FdProbe, what: str, why: str) -> UnsupportedError:
    return UnsupportedError(
        f"Can't dump task {probe.nspid}: fd {probe.fd} is {what} ({probe.link}): {why}"
    )


def _open_peer(master: int, flags: int) -> int:
    """TIOCGPTPEER: the slave of our master, opened without a path lookup."""
    return fcntl.ioctl(master, TIOCGPTPEER, flags | os.O_NOCTTY | O_CLOEXEC)


def _alive(fd: int) -> bool:
    """False for a hung-up terminal file (its file operations answer EIO)."""
    try:
        fcntl.ioctl(fd, TCGETS, bytes(ctypes.sizeof(KTermios)))
    except OSError as e:
        if e.errno == errno.EIO:
            return False
        raise
    return True


# --- the dump side: files ---------------------------------------------------------------------


@dataclass
class TtyDumpState:
    """What the fd walk found, per pair index (our pidfd_getfd copies)."""

    devpts_dev: int
    masters: dict[int, FdProbe] = field(default_factory=dict)
    slaves: dict[int, list[FdProbe]] = field(default_factory=dict)
    devtty: list[tuple[int, FdProbe]] = field(default_factory=list)


def _dump_state(ctx) -> TtyDumpState:
    st = ctx.extra.get("tty")
    if st is None:
        try:
            dev = os.stat(f"/proc/{ctx.init_pid}/root/dev/pts").st_dev
        except OSError:
            dev = -1
        st = ctx.extra["tty"] = TtyDumpState(devpts_dev=dev)
    return st


class TtyKind(FdKind):
    """Terminal files: pty masters and slaves, /dev/tty; every other tty is refused."""

    name = "tty"
    record_types = ("tty_file",)

    def match(self, probe: FdProbe) -> bool:
        if probe.st is None or not stat.S_ISCHR(probe.st.st_mode):
            return False
        major = os.major(probe.st.st_rdev)
        if major == TTYAUX_MAJOR or major in PTM_MAJORS or major in PTS_MAJORS:
            return True
        if major in OTHER_TTY_MAJORS:
            return True
        return probe.copy >= 0 and not probe.flags & O_PATH and os.isatty(probe.copy)

    def dump(self, ctx, probe: FdProbe) -> dict:
        return dump_tty_file(ctx, probe)

    def restore(self, rctx, entry: dict) -> int:
        return restore_tty_file(rctx, entry)


def dump_tty_file(ctx, probe: FdProbe) -> dict:
    st = probe.st
    major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
    rec = {"_type": "tty_file", "path": probe.link, "rdev": st.st_rdev, "index": -1}
    if probe.flags & O_PATH:
        if probe.link.endswith(" (deleted)") or not probe.link.startswith("/dev/"):
            raise _refuse(probe, "an O_PATH terminal node", "its path cannot be reopened")
        return dict(rec, role="path")
    what = f"a terminal ({major}:{minor})"
    if probe.copy < 0:
        raise _refuse(probe, what, "it could not be copied with pidfd_getfd")
    state = _dump_state(ctx)
    if (major == TTYAUX_MAJOR and minor == 2) or major in PTM_MAJORS:
        what = "a pseudo-terminal master"
        index = get_int(probe.copy, TIOCGPTN)
        try:
            peer = _open_peer(probe.copy, O_PATH)
        except OSError as e:
            raise _refuse(probe, what, f"its devpts instance cannot be found ({e.strerror})") from e
        try:
            peer_dev = os.fstat(peer).st_dev
        finally:
            os.close(peer)
        if peer_dev != state.devpts_dev:
            raise _refuse(
                probe, what, "it belongs to the node's /dev/pts, not the container's own devpts"
            )
        state.masters[index] = probe
        return dict(rec, role="master", index=index)
    if major in PTS_MAJORS:
        index = pts_index(major, minor)
        what = f"the pseudo-terminal /dev/pts/{index}"
        if st.st_dev != state.devpts_dev:
            raise _refuse(
                probe,
                "a terminal of the node, not of the container's devpts",
                "a terminal from outside the container (inherited through `vzctl exec`?) "
                "cannot be checkpointed",
            )
        hung = not _alive(probe.copy)
        if probe.link.removesuffix(" (deleted)") != f"/dev/pts/{index}":
            raise _refuse(probe, what, "it was opened through another path than /dev/pts")
        if not hung:
            state.slaves.setdefault(index, []).append(probe)
        return dict(rec, role="slave", index=index, hung_up=hung)
    if major == TTYAUX_MAJOR and minor == 0:
        try:
            dev = get_int(probe.copy, TIOCGDEV)
        except OSError as e:
            if e.errno != errno.EIO:
                raise
            return dict(rec, role="ctty", hung_up=True)
        dmaj, dmin = decode_dev(dev)
        if dmaj not in PTS_MAJORS:
            raise _refuse(
                probe,
                "/dev/tty",
                f"it reaches terminal {dmaj}:{dmin}, which is not a pseudo-terminal of the container",
            )
        index = pts_index(dmaj, dmin)
        state.devtty.append((index, probe))
        return dict(rec, role="ctty", index=index)
    if major == TTYAUX_MAJOR and minor == 1:
        raise _refuse(probe, "/dev/console", "the node's console cannot be checkpointed")
    raise _refuse(
        probe,
        what,
        "only pseudo-terminals of the container's /dev/pts can be checkpointed "
        "(not virtual consoles, serial lines or BSD ptys)",
    )


# --- the dump side: pairs, sessions, queues ---------------------------------------------------


class TtyResource(base.CtResource):
    name = "ttys"
    order = 80  # late: every fd was walked; queues are read when little else can fail

    def dump(self, ctx) -> None:
        dump_ttys(ctx)

    def restore_early(self, rctx) -> None:
        if rctx.img.has("ttys"):
            restore_pairs(rctx)

    def session_created(self, rctx, task) -> None:
        st = rctx.extra.get("tty")
        if st is not None:
            set_ctty(rctx, st, task)

    def restore_late(self, rctx) -> None:
        st = rctx.extra.get("tty")
        if st is not None:
            finish_ttys(rctx, st)

    def cleanup(self, rctx) -> None:
        st = rctx.extra.pop("tty", None)
        if st is not None:
            st.close()


def _name(dev: int) -> str:
    major, minor = decode_dev(dev)
    if major in PTS_MAJORS:
        return f"/dev/pts/{pts_index(major, minor)}"
    return f"terminal {major}:{minor}"


def dump_ttys(ctx) -> None:
    state = ctx.extra.get("tty")
    alive = [p for p in ctx.procs if not p.zombie]
    if state is None and not any(p.stat.tty_nr for p in alive):
        return
    state = _dump_state(ctx)
    # Host pid numbers (what TIOCGSID/TIOCGPGRP answer us) -> container numbers.
    sid_ns = {p.stat.session: p.sid for p in ctx.procs}
    pgrp_ns = {p.stat.pgrp: p.pgid for p in ctx.procs}
    by_ns = {p.nspid: p for p in ctx.procs}

    def who(probe: FdProbe) -> str:
        p = next((p for p in ctx.procs if p.pid == probe.pid), None)
        return f"task {probe.nspid} ({p.comm if p else '?'}) fd {probe.fd}"

    # Every controlling terminal must be a pair whose master the container holds.
    for p in alive:
        if not p.stat.tty_nr:
            continue
        major, minor = decode_dev(p.stat.tty_nr)
        index = pts_index(major, minor) if major in PTS_MAJORS else -1
        if index not in state.masters:
            raise UnsupportedError(
                f"Can't dump task {p.nspid} ({p.comm}): its controlling terminal "
                f"{_name(p.stat.tty_nr)} is not a pseudo-terminal whose master is open in the "
                "container (a terminal of the node, or a `vzctl enter` session?)"
            )
    for index, probes in state.slaves.items():
        if index not in state.masters:
            raise UnsupportedError(
                f"Can't dump {who(probes[0])}: it is /dev/pts/{index}, whose master is not open "
                "in the container (held outside it, e.g. by a running `vzctl enter`)"
            )
    holders_ctty = {}
    for index, probe in state.devtty:
        holder = next((p for p in alive if p.pid == probe.pid), None)
        major, minor = decode_dev(holder.stat.tty_nr) if holder and holder.stat.tty_nr else (0, 0)
        if major not in PTS_MAJORS or pts_index(major, minor) != index:
            raise UnsupportedError(
                f"Can't dump {who(probe)}: it is /dev/tty reaching pts {index}, which is not the "
                "task's controlling terminal, so vzpy cannot tell which devpts it belongs to"
            )
        if index not in state.masters:
            raise UnsupportedError(
                f"Can't dump {who(probe)}: it is /dev/tty of /dev/pts/{index}, whose master is "
                "not open in the container"
            )
        holders_ctty.setdefault(index, []).append(probe)
    pairs = []
    ctty_sessions: dict[int, int] = {}  # ns sid -> index
    for index in sorted(state.masters):
        master = state.masters[index]
        slaves = state.slaves.get(index, []) + holders_ctty.get(index, [])
        rec = _dump_pair(ctx, index, master, slaves, sid_ns, pgrp_ns, by_ns)
        if rec.get("sid"):
            ctty_sessions[rec["sid"]] = index
        pairs.append(rec)
    # Each task's own signal->tty against its session's terminal.
    detached = []
    for p in alive:
        index = ctty_sessions.get(p.sid)
        if not p.stat.tty_nr:
            if index is not None:
                detached.append(p.nspid)
            continue
        major, minor = decode_dev(p.stat.tty_nr)
        if index is None or pts_index(major, minor) != index:
            raise UnsupportedError(
                f"Can't dump task {p.nspid} ({p.comm}): its controlling terminal "
                f"{_name(p.stat.tty_nr)} is not the container's terminal of its session "
                f"{p.sid} (a terminal of the node with the same number?)"
            )
    ctx.img.write("ttys", {"pairs": pairs, "detached": detached})


def _dump_pair(ctx, index, master: FdProbe, slaves, sid_ns, pgrp_ns, by_ns) -> dict:
    m = master.copy
    what = f"/dev/pts/{index}"
    try:
        t = tcgets2(m)
        locked = get_locked(m)
        ws = Winsize.from_buffer_copy(fcntl.ioctl(m, TIOCGWINSZ, bytes(8)))
        rec = {
            "index": index,
            "master_path": master.link,
            "master_flags": master.flags & ~O_CLOEXEC,
            "termios": termios_rec(t),
            "termios_locked": termios_rec(locked),
            "ws_row": ws.ws_row,
            "ws_col": ws.ws_col,
            "ws_xpixel": ws.ws_xpixel,
            "ws_ypixel": ws.ws_ypixel,
            "locked": bool(get_int(m, TIOCGPTLCK)),
            "packet": bool(get_int(m, TIOCGPKT)),
            "excl_master": bool(get_int(m, TIOCGEXCL)),
            "excl_slave": bool(get_int(slaves[0].copy, TIOCGEXCL)) if slaves else False,
        }
    except OSError as e:
        raise _refuse(master, "a pseudo-terminal master", f"its state cannot be read: {e}") from e
    try:
        host_sid = get_int(m, TIOCGSID)
    except OSError as e:
        if e.errno != errno.ENOTTY:
            raise
        host_sid = 0
    if host_sid:
        sid = sid_ns.get(host_sid)
        leader = by_ns.get(sid)
        if sid is None or leader is None or leader.zombie:
            raise UnsupportedError(
                f"Can't dump {what}: it is the controlling terminal of session {host_sid} "
                "(host pid), whose leader is not in the container"
            )
        host_fg = get_int(m, TIOCGPGRP)
        fg = pgrp_ns.get(host_fg) if host_fg else sid
        if fg is None:
            raise UnsupportedError(
                f"Can't dump {what}: its foreground process group (host {host_fg}) has no "
                "member left (a job just ended?); try again"
            )
        rec["sid"], rec["fg_pgrp"] = sid, fg
    slave = slaves[0].copy if slaves else -1
    rec.update(save_queues(m, slave, t, rec, what))
    if slaves:
        rec["slave_state"] = "open"
    return rec


class QueueOverflow(UnsupportedError):
    pass


def _set_nonblock(fd: int) -> int:
    fl = fcntl.fcntl(fd, fcntl.F_GETFL)
    if not fl & os.O_NONBLOCK:
        fcntl.fcntl(fd, fcntl.F_SETFL, fl | os.O_NONBLOCK)
    return fl


def _read_all(fd: int, out: bytearray, limit: int, what: str) -> bool:
    """Append what a non-blocking tty fd has to `out`; True if it ended with EIO.
    What was read stays in `out` even when this raises (it is put back)."""
    while True:
        try:
            chunk = os.read(fd, 8192)
        except BlockingIOError:
            return False
        except OSError as e:
            if e.errno == errno.EIO:
                return True
            raise
        if not chunk:
            return False
        out += chunk
        if len(out) > limit:
            raise QueueOverflow(f"Can't dump {what}: more than {limit} bytes are queued in it")


def _read_lines(fd: int, lines: list[bytes], what: str) -> None:
    """Append the complete canonical lines, one per read() (an EOF line may be empty)."""
    total = 0
    while True:
        try:
            line = os.read(fd, 8192)
        except BlockingIOError:
            return
        lines.append(line)
        total += len(line) + 1
        if total > N_TTY_BUF + 1:
            raise QueueOverflow(f"Can't dump {what}: more than {N_TTY_BUF} bytes are queued")


def save_queues(master: int, slave: int, t: Termios2, rec: dict, what: str) -> dict:
    """Read both queues of a pair and write them straight back (module doc).

    `slave` is a task's slave (or /dev/tty) file, -1 if none.  Returns the
    queue fields of the pair record and its slave_state.
    """
    out: dict = {"input_canon": is_canonical(t.c_lflag)}
    restore_fl: list[tuple[int, int]] = []
    own_peer = -1
    relock = False
    locked = get_locked(master)
    unlocked = bytes(locked) != bytes(KTermios())
    packet = rec.get("packet")
    consumed_out = consumed_in = False
    try:
        if packet:
            if select.select([], [], [master], 0)[2]:
                raise UnsupportedError(
                    f"Can't dump {what}: a packet-mode status byte is pending on its master"
                )
            set_int(master, TIOCPKT, 0)
        if unlocked:
            set_locked(master, KTermios())
        restore_fl.append((master, _set_nonblock(master)))
        if get_int(master, FIONREAD) >= N_TTY_BUF:
            raise UnsupportedError(
                f"Can't dump {what}: its master's input buffer is full ({N_TTY_BUF} bytes)"
            )
        output = bytearray()
        out["output"] = output
        consumed_out = True
        other_closed = _read_all(master, output, N_TTY_BUF, what)
        out["output"] = bytes(output)
        out["slave_state"] = "closed" if other_closed else "never"
        if slave < 0 and other_closed:
            # Nobody holds the slave: open one to read its queue (the master reads EIO
            # again once it is closed, as it did).
            if rec.get("locked"):
                set_int(master, TIOCSPTLCK, 0)
                relock = True
            own_peer = slave = _open_peer(master, os.O_RDWR | os.O_NONBLOCK)
        if slave >= 0:
            if own_peer < 0:
                restore_fl.append((slave, _set_nonblock(slave)))
            lines: list[bytes] = []
            partial = bytearray()
            out["input_lines"], out["input_partial"] = lines, partial
            consumed_in = True
            if out["input_canon"]:
                _read_lines(slave, lines, what)
                out["input_eof"] = split_eof(lines, t)
                # The unfinished line: n_tty publishes it when ICANON goes off.
                raw = Termios2.from_buffer_copy(bytes(t))
                raw.c_lflag &= ~ICANON
                raw.c_cc[VMIN], raw.c_cc[VTIME] = 1, 0
                tcsets2(master, raw)
                try:
                    _read_all(slave, partial, N_TTY_BUF, what)
                finally:
                    tcsets2(master, t)
            else:
                _read_all(slave, partial, N_TTY_BUF, what)
            out["input_partial"] = bytes(partial)
    finally:
        try:
            # Put back what was read, whatever happens next (the container may run on).
            if consumed_out or consumed_in:
                if "input_eof" not in out:
                    out["input_eof"] = split_eof(out.get("input_lines") or [], t)
                inject_queues(master, slave, t, out)
        finally:
            if own_peer >= 0:
                os.close(own_peer)
            if relock:
                set_int(master, TIOCSPTLCK, 1)
            for fd, fl in restore_fl:
                fcntl.fcntl(fd, fcntl.F_SETFL, fl)
            if unlocked:
                set_locked(master, locked)
            if packet:
                set_int(master, TIOCPKT, 1)
    return out


def inject_queues(master: int, slave: int, t: Termios2, rec: dict) -> None:
    """Write a pair's queued data into it with TIOCSTI, then set termios `t`."""
    if slave >= 0 and (rec.get("input_lines") or rec.get("input_partial")):
        inj, stream = input_stream(rec, t)
        tcsets2(master, inj)
        try:
            sti(slave, stream)
        finally:
            tcsets2(master, t)
    if rec.get("output"):
        sti(master, rec["output"])


# --- the restore side -------------------------------------------------------------------------


@dataclass
class RPair:
    rec: dict
    master: int
    slave: int = -1  # ours, kept until restore_late


@dataclass
class TtyRestoreState:
    pairs: dict[int, RPair] = field(default_factory=dict)
    detached: list[int] = field(default_factory=list)
    fakes: dict[int, int] = field(default_factory=dict)  # index -> master of a stand-in pair
    devtty: dict[int, int] = field(default_factory=dict)  # file id -> our /dev/tty file
    entries: list[dict] | None = None  # the image's terminal file entries

    def close(self) -> None:
        fds = [p.master for p in self.pairs.values()] + [p.slave for p in self.pairs.values()]
        for fd in fds + list(self.fakes.values()) + list(self.devtty.values()):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pairs.clear()
        self.fakes.clear()
        self.devtty.clear()


def open_ptmx_at(rctx, path: str, flags: int, index: int | None) -> int:
    """A new master with index `index` (None: any).  devpts gives the lowest free
    index, so masters below it are kept open as fillers until we get it."""
    fillers: list[int] = []
    try:
        for _ in range((index or 0) + 1):
            fd = rctx.open_in_root(path, flags | os.O_NOCTTY)
            got = get_int(fd, TIOCGPTN)
            if index is None or got == index:
                return fd
            fillers.append(fd)
            if got > index:
                break
        raise RestoreError(f"Can't get pseudo-terminal index {index}: it is taken")
    finally:
        for fd in fillers:
            os.close(fd)


def restore_pairs(rctx) -> None:
    rec = rctx.img.read("ttys")
    st = TtyRestoreState(detached=list(rec.get("detached") or []))
    rctx.extra["tty"] = st
    for prec in sorted(rec.get("pairs") or [], key=lambda p: p["index"]):
        try:
            st.pairs[prec["index"]] = make_pair(rctx, prec)
        except OSError as e:
            raise RestoreError(f"Can't restore /dev/pts/{prec['index']}: {e}") from e


def make_pair(rctx, rec: dict) -> RPair:
    index = rec["index"]
    flags = (rec.get("master_flags") or os.O_RDWR) & (O_ACCMODE | os.O_NONBLOCK | os.O_APPEND)
    master = open_ptmx_at(rctx, rec.get("master_path") or "/dev/pts/ptmx", flags, index)
    pair = RPair(rec, master)
    try:
        set_int(master, TIOCSPTLCK, 0)  # until restore_late: slaves are opened meanwhile
        if rec.get("slave_state") in ("open", "closed") or rec.get("sid"):
            pair.slave = _open_peer(master, os.O_RDWR)
        t = termios_from_rec(rec.get("termios"))
        inject_queues(master, pair.slave, t, rec)
        tcsets2(master, t)
        set_locked(master, termios_from_rec(rec.get("termios_locked"), KTermios))
        ws = Winsize(rec.get("ws_row") or 0, rec.get("ws_col") or 0,
                     rec.get("ws_xpixel") or 0, rec.get("ws_ypixel") or 0)  # fmt: skip
        fcntl.ioctl(master, TIOCSWINSZ, bytes(ws))
        # Packet mode after termios: turning it on clears the status byte that an
        # IXON change made by TCSETS2 would have set.
        if rec.get("packet"):
            set_int(master, TIOCPKT, 1)
        if rec.get("excl_master"):
            fcntl.ioctl(master, TIOCEXCL)
    except BaseException:
        os.close(master)
        if pair.slave >= 0:
            os.close(pair.slave)
        raise
    return pair


def _pair(rctx, index: int) -> RPair:
    st = rctx.extra.get("tty")
    pair = st.pairs.get(index) if st else None
    if pair is None:
        raise ImageError(f"The image has a file of /dev/pts/{index} but no such terminal")
    return pair


def restore_tty_file(rctx, entry: dict) -> int:
    d = entry["detail"]
    role, index = d["role"], d.get("index", -1)
    flags = _file_flags(entry)
    try:
        if role == "path":
            return rctx.open_in_root(d["path"], O_PATH)
        if role == "master":
            return fcntl.fcntl(_pair(rctx, index).master, fcntl.F_DUPFD_CLOEXEC, 0)
        if d.get("hung_up"):
            return _hung_up_file(rctx, role, index, flags)
        if role == "slave":
            _pair(rctx, index)
            return rctx.open_in_root(f"/dev/pts/{index}", flags | os.O_NOCTTY)
        if role == "ctty":
            # Opened by the session leader when it got the terminal (set_ctty).
            fd = rctx.extra["tty"].devtty.pop(entry["id"], None)
            if fd is None:
                raise ImageError(f"/dev/tty file {entry['id']} of /dev/pts/{index} has no session")
            return fd
    except OSError as e:
        raise RestoreError(f"Can't reopen terminal {d.get('path')}: {e}") from e
    raise ImageError(f"Unknown terminal file role {role!r}")


def _hung_up_file(rctx, role: str, index: int, flags: int) -> int:
    """A live file on a stand-in pair, hung up in restore_late by closing its master."""
    st = rctx.extra.setdefault("tty", TtyRestoreState())
    master = st.fakes.get(index)
    if master is None:
        try:
            master = open_ptmx_at(rctx, "/dev/pts/ptmx", os.O_RDWR, index if index >= 0 else None)
        except RestoreError:
            # The index is in use by a live pair (the dumped file was hung up by
            # vhangup()): any index will do for a file that only answers EIO.
            master = open_ptmx_at(rctx, "/dev/pts/ptmx", os.O_RDWR, None)
        st.fakes[index] = master
        set_int(master, TIOCSPTLCK, 0)
    got = get_int(master, TIOCGPTN)
    if role == "ctty":
        return open_dev_tty(rctx, got, flags)
    return rctx.open_in_root(f"/dev/pts/{got}", flags | os.O_NOCTTY)


def open_dev_tty(rctx, index: int, flags: int) -> int:
    """A /dev/tty file reaching /dev/pts/N, a terminal of no session (a stand-in
    to be hung up).  Opening /dev/tty attaches to the opener's controlling
    terminal (tty_open_current_tty), so a child of ours makes a new session,
    takes the slave as its controlling terminal, opens the container's
    /dev/tty and hands it over; its exit detaches the terminal again
    (disassociate_ctty: it only signals the child's own group)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the child: nothing here may take a lock another thread of ours holds
        try:
            ours.close()
            os.setsid()
            s = rctx.open_in_root(f"/dev/pts/{index}", os.O_RDWR | os.O_NOCTTY)
            fcntl.ioctl(s, TIOCSCTTY, 0)
            fd = rctx.open_in_root("/dev/tty", flags | os.O_NOCTTY)
            socket.send_fds(theirs, [b"ok"], [fd])
            os._exit(0)
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            try:
                theirs.send(f"{type(e).__name__}: {e}".encode())
            finally:
                os._exit(1)
    theirs.close()
    try:
        msg, fds, _, _ = socket.recv_fds(ours, 4096, 1)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    if not fds:
        raise RestoreError(
            f"Can't open /dev/tty on /dev/pts/{index}: {msg.decode(errors='replace')}"
        )
    return fds[0]


def set_ctty(rctx, st: TtyRestoreState, task) -> None:
    """`task` just became a session leader: make the dumped terminal its controlling
    terminal now, so the tasks it clones next inherit it as they did through fork().

    The terminal's /dev/tty files are opened here too, by the leader (opening
    /dev/tty reaches the opener's controlling terminal), and copied out with
    pidfd_getfd: once the terminal belongs to a session nobody else can take it.
    """
    from ..sys.inject import Injector
    from ..sys.libc import pidfd_getfd

    for index, pair in st.pairs.items():
        if pair.rec.get("sid") != task.pid:
            continue
        devtty = [e for e in _tty_entries(rctx) if e["detail"]["role"] == "ctty"
                  and not e["detail"].get("hung_up") and e["detail"].get("index") == index]  # fmt: skip
        pidfd = os.pidfd_open(task.host_pid)
        try:
            with Injector(task.host_pid) as inj:
                fd = inj.open(f"/dev/pts/{index}", os.O_RDWR | os.O_NOCTTY)
                try:
                    rc = inj.syscall(SYS_ioctl, fd, TIOCSCTTY, 0)
                finally:
                    inj.close(fd)
                if rc < 0:
                    raise RestoreError(
                        f"Can't make /dev/pts/{index} the controlling terminal of session "
                        f"{task.pid}: {os.strerror(-rc)}"
                    )
                for e in devtty:
                    tfd = inj.open("/dev/tty", _file_flags(e) | os.O_NOCTTY)
                    try:
                        st.devtty[e["id"]] = pidfd_getfd(pidfd, tfd)
                    finally:
                        inj.close(tfd)
        finally:
            os.close(pidfd)


def _tty_entries(rctx) -> list[dict]:
    st = rctx.extra["tty"]
    if st.entries is None:
        files = rctx.img.read("files") if rctx.img.has("files") else {"entries": []}
        entries = files.get("entries") or []
        st.entries = [e for e in entries if e["detail"].get("_type") == "tty_file"]
    return st.entries


def _file_flags(entry: dict) -> int:
    flags = entry.get("flags") or os.O_RDWR
    return flags & ~(O_CLOEXEC | os.O_CREAT | os.O_EXCL | os.O_TRUNC | os.O_NOCTTY)


def _ioctl_in_task(rctx, task, slave: int, req: int, arg: int | None) -> int:
    """Pass our slave into `task`, run ioctl(fd, req, &arg) there, close it."""
    from ..restore.driver import SCRATCH_PAGES
    from ..restore.fdchannel import FdChannel
    from ..sys.inject import Injector

    area = task.scratch
    with Injector(task.host_pid, keep_scratch=True) as inj:
        inj.set_arg_area(area, SCRATCH_PAGES * 4096)
        channel = FdChannel(inj, area + 2 * 4096, rctx.stub_pid)
        try:
            fd = channel.send([slave])[0]
            try:
                ptr = 0
                if arg is not None:
                    inj.write(area, struct.pack("i", arg))
                    ptr = area
                return inj.syscall(SYS_ioctl, fd, req, ptr)
            finally:
                inj.close(fd)
        finally:
            channel.close()


def finish_ttys(rctx, st: TtyRestoreState) -> None:
    by_pid = {t.pid: t for t in rctx.tasks}
    try:
        for index, pair in st.pairs.items():
            rec = pair.rec
            sid = rec.get("sid")
            if sid and rec.get("fg_pgrp") and rec["fg_pgrp"] != sid:
                rc = _ioctl_in_task(rctx, by_pid[sid], pair.slave, TIOCSPGRP, rec["fg_pgrp"])
                if rc < 0:
                    raise RestoreError(
                        f"Can't make process group {rec['fg_pgrp']} the foreground group of "
                        f"/dev/pts/{index}: {os.strerror(-rc)}"
                    )
        sessions = {p.rec.get("sid"): p for p in st.pairs.values() if p.rec.get("sid")}
        for pid in st.detached:
            task = by_pid.get(pid)
            pair = sessions.get(task.sid) if task is not None else None
            if task is None or task.zombie or pair is None:
                continue
            rc = _ioctl_in_task(rctx, task, pair.slave, TIOCNOTTY, None)
            if rc < 0:
                raise RestoreError(f"Can't detach task {pid} from its terminal: {os.strerror(-rc)}")
        for pair in st.pairs.values():
            if pair.rec.get("excl_slave") and pair.slave >= 0:
                fcntl.ioctl(pair.slave, TIOCEXCL)
            if pair.rec.get("locked"):
                set_int(pair.master, TIOCSPTLCK, 1)
    except OSError as e:
        raise RestoreError(f"Can't restore terminals: {e}") from e
    # Our slaves go (a pair nobody else holds the slave of reads EIO again), then the
    # stand-in masters (hanging their slaves up).
    st.close()


# Terminal nodes are character devices under /dev, which files.RegFileKind would
# claim and reopen by path (giving the restorer's own terminal for /dev/tty): this
# kind goes first.  Its match is narrow (terminal devices only).
KINDS.insert(0, TtyKind())
TTY_RESOURCE = base.register_ct_resource(TtyResource())
