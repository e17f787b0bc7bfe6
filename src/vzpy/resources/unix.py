"""Unix sockets (stream, datagram, seqpacket) through checkpoint and restore.

What the kernel shows, and where
  - sock_diag (NETLINK_SOCK_DIAG, AF_UNIX), asked from inside the container's
    network namespace: every socket's type, state, name, the inode of its
    socket file (UNIX_DIAG_VFS), its peer's inode (UNIX_DIAG_PEER: 0 when the
    peer has closed, or is a connection nobody accepted yet), a listener's
    backlog and, in accept-queue order, the inodes of the *clients* whose
    connections wait in it (UNIX_DIAG_ICONS), the bytes queued
    (UNIX_DIAG_RQLEN; for a connected socket the second value is what it sent
    that nobody has read) and the shutdown bits.
  - the receive queue, read without consuming it: SO_PEEK_OFF + MSG_PEEK.
    SO_PASSCRED is on while peeking, so every message comes with its
    credentials and the kernel never glues stream data of different senders;
    SCM_RIGHTS hands us a duplicate of every file in flight.  A zero-length
    datagram is seen by one peek pass only (the kernel marks it peeked), so
    there is exactly one pass, run by a child of ours that joined the
    container's pid namespace: credentials and SO_PEERCRED then carry the
    container's pid numbers, also of processes that have exited since (the
    struct pid keeps them).  SO_PEEK_OFF and SO_PASSCRED are put back after.
  - a receive that finds no message returns, and clears, a pending socket
    error (ECONNRESET left by a peer that closed with data unread), MSG_PEEK
    or not: stream queues are read up to the byte count sock_diag gave and
    no further, and a datagram or seqpacket socket with an error pending is
    refused rather than read.  poll() shows the error without clearing it.
  - getpeername() names the peer even after it has closed.

Dump (``UnixKind.dump`` only notes each socket; ``UnixResource.dump`` does the
work once every task's fds are known): files in flight are dumped by their own
kind (a socket in flight like a held one), every connection is matched with
its two ends, and how each socket will be made again is planned (``Planner``,
pure).  Refused, naming the task and fd: a peer outside the container (a host
daemon, or a listener outside that has not accepted the connection yet), a
socket of another network namespace, a connection waiting in an accept queue
whose client already sent data (only accept() could read it), a pending error
on a datagram or seqpacket socket, out-of-band data, socket filters,
datagrams queued in an order no sequence of sends can give again.

Restore (``UnixResource.restore_tree``: the tree is built, no task restored
yet) carries out the plan:
  - peer credentials are those of whoever called socketpair(), listen() or
    connect(): those calls are injected into the container task with the
    dumped pid, its euid, egid and groups switched for the calls (a helper
    is cloned from init with that pid when the process is gone; the worker
    thread below plays a process outside the container);
  - connected stream/seqpacket pairs are socketpairs, or are made through
    their listener (the live one, or a temporary one bound to the same name)
    so that the accepted end carries the listener's name; connections
    waiting in an accept queue are made again in order, after the
    established ones were accepted;
  - names are bound by a thread of ours that joined the container's mount
    and network namespaces, with the exact sun_path string (relative ones
    from the directory they were bound in); a stale socket file at that path
    is replaced and its owner and mode put back; a socket whose file had been
    removed is bound and its file removed again at the end;
  - queues are refilled by the peer (stream, seqpacket) or by the socket
    bound to the sender's name (datagrams: those from other senders before
    the socket connects to its peer, the peer's after), with the dumped
    SCM_CREDENTIALS (the pid given as the host pid of a live task that has
    the dumped one) and the files in flight; then the stand-ins for closed
    peers close, shutdowns, and the options last (SO_PASSCRED must be off
    while refilling, or the kernel would add the restorer's credentials).

Not exact (the kernel gives no way to know)
  - where inside a run of stream data an SCM_RIGHTS message starts: a peek
    returns the data up to the end of the message that carries files, glued
    to the data before it; the files go with the last byte of that run (they
    arrive with the read that reaches its end, never with data sent before
    them).
  - the peer credentials of a connection waiting in an accept queue: those of
    the connecting process, readable only by accepting; vzpy takes the first
    task holding the client socket, with the owner of that socket's inode (who
    created it) as euid/egid.
  - SCM_PIDFD / SO_PEERPIDFD of a sender or creator that had exited (or whose
    pid a helper played) refer to an exited process.
  - which end of a connection was accepted, when its listener has closed and
    both ends have names: the newer inode.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import queue
import select
import socket
import stat
import struct
import threading
import time
from dataclasses import dataclass, field

import msgpack

from .. import log, procfs
from ..errors import RestoreError, UnsupportedError
from ..images.schema import Field, register_record
from ..sys import libc
from . import base
from .files import KINDS, FdKind, FdProbe, kind_for_detail, register_fd_kind

# --- kernel constants -----------------------------------------------------------------------

AF_UNIX = 1
SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET = 1, 2, 5
SOCK_NONBLOCK = 0o4000
SOCK_CLOEXEC = 0o2000000
TYPE_NAMES = {SOCK_STREAM: "stream", SOCK_DGRAM: "datagram", SOCK_SEQPACKET: "seqpacket"}
TCP_ESTABLISHED, TCP_CLOSE, TCP_LISTEN = 1, 7, 10
RCV_SHUTDOWN, SEND_SHUTDOWN = 1, 2

SOL_SOCKET = 1
SO_DEBUG, SO_REUSEADDR, SO_TYPE, SO_DONTROUTE, SO_BROADCAST = 1, 2, 3, 5, 6
SO_SNDBUF, SO_RCVBUF, SO_KEEPALIVE, SO_OOBINLINE, SO_PRIORITY, SO_LINGER = 7, 8, 9, 10, 12, 13
SO_PASSCRED, SO_PEERCRED, SO_RCVLOWAT = 16, 17, 18
SO_RCVTIMEO, SO_SNDTIMEO = 20, 21  # the _OLD (struct timeval) forms
SO_GET_FILTER = 26
SO_TIMESTAMP, SO_ACCEPTCONN, SO_SNDBUFFORCE, SO_RCVBUFFORCE = 29, 30, 32, 33
SO_PASSSEC, SO_TIMESTAMPNS, SO_MARK, SO_TIMESTAMPING = 34, 35, 36, 37
SO_DOMAIN, SO_RXQ_OVFL, SO_PEEK_OFF, SO_PEERGROUPS = 39, 40, 42, 59
SO_PASSPIDFD, SO_PASSRIGHTS = 76, 83
SCM_RIGHTS, SCM_CREDENTIALS, SCM_SECURITY, SCM_PIDFD = 1, 2, 3, 4
SCM_MAX_FD = 253
MSG_OOB, MSG_PEEK, MSG_CTRUNC, MSG_TRUNC, MSG_DONTWAIT, MSG_NOSIGNAL = 1, 2, 8, 0x20, 0x40, 0x4000
SIOCGSKNS = 0x894C

SYS_connect, SYS_socketpair, SYS_listen, SYS_chdir = 42, 53, 50, 80
SYS_setgroups, SYS_setresuid, SYS_setresgid = 116, 117, 119
NO_ID = 0xFFFFFFFF  # "leave unchanged" for setres[ug]id, and uid/gid "none"

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
UNIX_DIAG_NAME, UNIX_DIAG_VFS, UNIX_DIAG_PEER, UNIX_DIAG_ICONS = 0, 1, 2, 3
UNIX_DIAG_RQLEN, UNIX_DIAG_MEMINFO, UNIX_DIAG_SHUTDOWN, UNIX_DIAG_UID = 4, 5, 6, 7
UDIAG_SHOW_NAME, UDIAG_SHOW_VFS, UDIAG_SHOW_PEER, UDIAG_SHOW_ICONS = 1, 2, 4, 8
UDIAG_SHOW_RQLEN = 0x10  # UNIX_DIAG_SHUTDOWN comes with every socket
SHOW_ALL = UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_ICONS | UDIAG_SHOW_RQLEN

PAGE = 4096

# --- image records (ids 1500-1549) -----------------------------------------------------------

# fmt: off
UNIX_FILE = register_record("unix_file", id=1500, category="socket", fields=[
    Field("ino", 1, "uint", optional=False, doc="socket inode at dump: the key in unix_sockets"),
], doc="a unix socket (file_entry detail); the socket itself is in unix_sockets.img")
UNIX_CRED = register_record("unix_cred", id=1501, category="socket", fields=[
    Field("pid", 1, "uint", optional=False, doc="container pid; 0: a process outside the container"),
    Field("uid", 2, "uint"),
    Field("gid", 3, "uint"),
    Field("groups", 4, "list[uint]"),
], doc="credentials: SO_PEERCRED (+SO_PEERGROUPS), or a queued message's SCM_CREDENTIALS")
UNIX_MSG = register_record("unix_msg", id=1502, category="socket", fields=[
    Field("data", 1, "bytes"),
    Field("fds", 2, "list[uint]", doc="file ids (files.img or unix_sockets inflight) passed with it"),
    Field("creds", 3, "unix_cred", doc="absent: the message carries no credentials"),
    Field("addr", 4, "bytes", doc="datagrams: the sender's name; absent: unnamed sender"),
    Field("sender", 5, "uint", doc="datagrams: the image socket that sends it again"),
    Field("temp", 6, "uint", doc="datagrams: else the temporary socket (unix_temp id) that does"),
], doc="one queued message (dgram, seqpacket) or run of stream data")
UNIX_BIND = register_record("unix_bind", id=1503, category="socket", fields=[
    Field("dir", 1, "str", doc="directory a relative name was bound in ('/' for absolute names)"),
    Field("linked", 2, "bool", doc="the socket file was still at its path at dump"),
    Field("mode", 3, "uint", doc="socket file mode"),
    Field("uid", 4, "uint"),
    Field("gid", 5, "uint"),
], doc="where a socket bound to a path lives in the container's file system")
UNIX_OPTS = register_record("unix_opts", id=1504, category="socket", fields=[
    Field("sndbuf", 1, "uint"),
    Field("rcvbuf", 2, "uint"),
    Field("passcred", 3, "bool"),
    Field("passsec", 4, "bool"),
    Field("passpidfd", 5, "bool"),
    Field("passrights", 6, "bool", default=True),
    Field("peek_off", 7, "int", default=-1),
    Field("rcvlowat", 8, "uint", default=1),
    Field("priority", 9, "uint"),
    Field("mark", 10, "uint"),
    Field("keepalive", 11, "bool"),
    Field("oobinline", 12, "bool"),
    Field("timestamp", 13, "bool"),
    Field("timestampns", 14, "bool"),
    Field("timestamping", 15, "uint"),
    Field("rxq_ovfl", 16, "bool"),
    Field("linger", 17, "int", doc="seconds; absent: off"),
    Field("rcvtimeo_us", 18, "uint"),
    Field("sndtimeo_us", 19, "uint"),
    Field("reuseaddr", 20, "bool"),
    Field("broadcast", 21, "bool"),
    Field("dontroute", 22, "bool"),
    Field("debug", 23, "bool"),
], doc="socket options of a unix socket")
UNIX_TEMP = register_record("unix_temp", id=1505, category="socket", fields=[
    Field("id", 1, "uint", optional=False),
    Field("type", 2, "uint"),
    Field("name", 3, "bytes", doc="absent: unnamed"),
    Field("how", 4, "str", doc="abstract | create_unlink (path free: bind, unlink after) | replace"),
    Field("mode", 5, "uint", doc="replace: the stale socket file's mode, owner"),
    Field("uid", 6, "uint"),
    Field("gid", 7, "uint"),
], doc="a socket that exists only during restore (a closed listener, sender or peer)")
UNIX_CONN = register_record("unix_conn", id=1506, category="socket", fields=[
    Field("client", 1, "uint", doc="client socket; 0: a temporary one, closed at the end"),
    Field("client_temp", 2, "uint", doc="temporary client: its unix_temp id (for its name)"),
    Field("accepted", 3, "uint", doc="accepted socket; absent: left waiting in the queue"),
    Field("accepted_temp", 4, "bool", doc="accepted, then closed at the end"),
    Field("connector", 5, "unix_cred", doc="who connects: the accepted end's SO_PEERCRED"),
    Field("listen_cred", 6, "unix_cred", doc="who listens then: the client's SO_PEERCRED"),
], doc="one connection made through a listener at restore")
UNIX_LISTEN = register_record("unix_listen", id=1507, category="socket", fields=[
    Field("listener", 1, "uint", doc="the listener; absent: a temporary one"),
    Field("temp", 2, "uint", doc="temporary listener: its unix_temp id"),
    Field("conns", 3, "list[unix_conn]", doc="established first, then the accept queue in order"),
], doc="connections made through one listener")
UNIX_SK = register_record("unix_sk", id=1508, category="socket", fields=[
    Field("ino", 1, "uint", optional=False),
    Field("type", 2, "uint", optional=False),
    Field("state", 3, "uint"),
    Field("name", 4, "bytes", doc="getsockname: path bytes, or abstract (leading NUL)"),
    Field("bound", 5, "bool", doc="the name is bound on this socket (not inherited by accept)"),
    Field("bind", 6, "unix_bind"),
    Field("peer", 7, "uint", doc="the peer's ino; 0: closed; absent: not connected"),
    Field("make", 8, "str", doc="socket | pair | listen (made by a unix_listen plan)"),
    Field("pair", 9, "uint", doc="make=pair: the other end; 0: an end that was closed"),
    Field("backlog", 10, "uint"),
    Field("shutdown", 11, "uint"),
    Field("error", 12, "bool", doc="pending ECONNRESET (the peer closed with unread data)"),
    Field("peercred", 13, "unix_cred"),
    Field("opts", 14, "unix_opts"),
    Field("owner_uid", 15, "uint", doc="socket inode owner and mode (fstat)"),
    Field("owner_gid", 16, "uint"),
    Field("mode", 17, "uint"),
    Field("queue", 18, "list[unix_msg]"),
    Field("dgram_prefix", 19, "uint", doc="queued datagrams sent before it connected"),
    Field("peer_temp", 20, "uint", doc="datagram whose peer closed: the temporary peer's id"),
    Field("peername", 21, "bytes"),
    Field("flags", 22, "uint", doc="file status flags, for a socket that is only in flight"),
    Field("where", 23, "str", doc="who held it at dump, for messages"),
], doc="one unix socket")
UNIX_SOCKETS = register_record("unix_sockets", id=1509, category="socket", fields=[
    Field("sockets", 1, "list[unix_sk]"),
    Field("inflight", 2, "list[file_entry]", doc="files only in flight (SCM_RIGHTS in a queue)"),
    Field("temps", 3, "list[unix_temp]"),
    Field("listens", 4, "list[unix_listen]"),
], doc="every unix socket of the container: unix_sockets.img")
# fmt: on


# --- pure helpers ----------------------------------------------------------------------------


def is_abstract(name: bytes | None) -> bool:
    return bool(name) and name[0] == 0


def sockaddr(name: bytes) -> bytes:
    """struct sockaddr_un for a name (abstract: exact length; path: NUL-terminated)."""
    if len(name) > 107 + is_abstract(name):
        raise ValueError(f"unix socket name too long: {name!r}")
    return struct.pack("=H", AF_UNIX) + name + (b"" if is_abstract(name) else b"\0")


def show_name(name: bytes | None) -> str:
    if not name:
        return "unnamed"
    if is_abstract(name):
        return "@" + name[1:].decode(errors="backslashreplace")
    return name.decode(errors="backslashreplace")


def py_addr(addr) -> bytes | None:
    """A name as Python's socket module returns it (str for paths, bytes for abstract)."""
    if addr is None or addr == "" or addr == b"":
        return None
    if isinstance(addr, str):
        return os.fsencode(addr)
    return bytes(addr)


def shutdown_how(bits: int) -> int:
    """shutdown(2)'s `how` for RCV/SEND_SHUTDOWN bits (SHUT_RD 0, SHUT_WR 1, SHUT_RDWR 2)."""
    return {RCV_SHUTDOWN: socket.SHUT_RD, SEND_SHUTDOWN: socket.SHUT_WR}.get(bits, socket.SHUT_RDWR)


def mirror(bits: int) -> int:
    """What shutdown(bits) of a stream socket sets on its peer (unix_shutdown)."""
    return (RCV_SHUTDOWN if bits & SEND_SHUTDOWN else 0) | (
        SEND_SHUTDOWN if bits & RCV_SHUTDOWN else 0
    )


def shutdown_consistent(a: int, b: int) -> bool:
    """Can shutdown() on both ends of a connected stream pair give exactly (a, b)?"""
    return mirror(a) & ~b == 0 and mirror(b) & ~a == 0


def autobound(name: bytes | None) -> bool:
    """An autobind name: NUL + 5 hex digits (unix_autobind)."""
    return (
        name is not None
        and len(name) == 6
        and name[0] == 0
        and all(c in b"0123456789abcdef" for c in name[1:])
    )


def kdev_to_dev(kdev: int) -> int:
    """A kernel dev_t (MAJOR << 20 | MINOR, as sock_diag reports it) as st_dev."""
    return os.makedev(kdev >> 20, kdev & 0xFFFFF)


# --- sock_diag -------------------------------------------------------------------------------


@dataclass
class DiagSock:
    """One socket as unix_diag reports it (struct unix_diag_msg + attributes)."""

    ino: int
    type: int
    state: int
    name: bytes | None = None
    vfs: tuple[int, int] | None = None  # (inode, st_dev) of the socket file
    peer: int | None = None
    icons: list[int] = field(default_factory=list)
    rqueue: int = 0
    wqueue: int = 0
    shutdown: int = 0


def diag_request(seq: int = 1, show: int = SHOW_ALL) -> bytes:
    """nlmsghdr + struct unix_diag_req dumping every state."""
    req = struct.pack("=BBHIIIII", AF_UNIX, 0, 0, 0xFFFFFFFF, 0, show, 0xFFFFFFFF, 0xFFFFFFFF)
    hdr = struct.pack(
        "=IHHII", 16 + len(req), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return hdr + req


def parse_diag(data: bytes) -> tuple[list[DiagSock], bool]:
    """Parse one recv() worth of netlink messages: (sockets, done)."""
    out: list[DiagSock] = []
    off = 0
    while off + 16 <= len(data):
        length, typ, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16 or off + length > len(data):
            raise ValueError("truncated netlink message")
        body = data[off + 16 : off + length]
        off += (length + 3) & ~3
        if typ == NLMSG_DONE:
            return out, True
        if typ == NLMSG_ERROR:
            err = -struct.unpack_from("=i", body, 0)[0]
            raise OSError(err, f"sock_diag: {os.strerror(err)}")
        if typ != SOCK_DIAG_BY_FAMILY:
            continue
        _fam, styp, state, _pad, ino = struct.unpack_from("=BBBBI", body, 0)
        s = DiagSock(ino=ino, type=styp, state=state)
        a = 16
        while a + 4 <= len(body):
            alen, atype = struct.unpack_from("=HH", body, a)
            if alen < 4:
                break
            val = body[a + 4 : a + alen]
            a += (alen + 3) & ~3
            if atype == UNIX_DIAG_NAME:
                name = bytes(val)
                s.name = name if is_abstract(name) else name.rstrip(b"\0") or None
            elif atype == UNIX_DIAG_VFS:
                vino, vdev = struct.unpack_from("=II", val)
                s.vfs = (vino, kdev_to_dev(vdev))
            elif atype == UNIX_DIAG_PEER:
                s.peer = struct.unpack_from("=I", val)[0]
            elif atype == UNIX_DIAG_ICONS:
                s.icons = list(struct.unpack_from(f"={len(val) // 4}I", val))
            elif atype == UNIX_DIAG_RQLEN:
                s.rqueue, s.wqueue = struct.unpack_from("=II", val)
            elif atype == UNIX_DIAG_SHUTDOWN:
                s.shutdown = val[0]
        out.append(s)
    return out, False


def unix_diag_dump() -> dict[int, DiagSock]:
    """Every unix socket of the calling thread's network namespace, by inode."""
    out: dict[int, DiagSock] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG) as nl:
        nl.send(diag_request())
        done = False
        while not done:
            socks, done = parse_diag(nl.recv(1 << 20))
            for s in socks:
                out[s.ino] = s
    return out


# --- reading a socket -------------------------------------------------------------------------


class _Wrap:
    """A socket object over an fd we do not own (detached, not closed, on exit)."""

    def __init__(self, fd: int) -> None:
        self.s = socket.socket(fileno=fd)

    def __enter__(self) -> socket.socket:
        return self.s

    def __exit__(self, *exc: object) -> None:
        self.s.detach()


def _overflow_ids() -> tuple[int, int]:
    ids = []
    for name in ("overflowuid", "overflowgid"):
        try:
            with open(f"/proc/sys/kernel/{name}") as f:
                ids.append(int(f.read()))
        except OSError:
            ids.append(65534)
    return ids[0], ids[1]


@dataclass
class Chunk:
    """One peeked message (dgram, seqpacket) or run of stream data."""

    data: bytes
    fds: list[int]  # fds of the peeking process
    creds: tuple[int, int, int] | None  # (pid, uid, gid) in the peeker's pid namespace
    addr: bytes | None


class PeekError(Exception):
    pass


def peek_queue(fd: int, sotype: int, total: int | None = None) -> list[Chunk]:
    """Every message in the socket's receive queue, without consuming any.

    One pass only (a zero-length datagram is seen once, see the module doc).
    SO_PEEK_OFF and SO_PASSCRED are set for the pass and put back after.
    A stream socket is read up to `total` bytes (UNIX_DIAG_RQLEN) and no
    further: a receive that finds the queue exhausted returns, and clears, a
    pending socket error (unix_stream_read_generic -> sock_error), MSG_PEEK
    or not.  (Datagram and seqpacket receives do that on every call: the
    caller must not peek those when an error is pending.)
    """
    none_uid, none_gid = _overflow_ids()
    out: list[Chunk] = []
    with _Wrap(fd) as s:
        old_off = s.getsockopt(SOL_SOCKET, SO_PEEK_OFF)
        old_cred = s.getsockopt(SOL_SOCKET, SO_PASSCRED)
        s.setsockopt(SOL_SOCKET, SO_PASSCRED, 1)
        s.setsockopt(SOL_SOCKET, SO_PEEK_OFF, 0)
        try:
            if sotype == SOCK_STREAM:
                try:
                    s.recv(1, MSG_OOB | MSG_PEEK | MSG_DONTWAIT)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.EAGAIN):
                        raise
                else:
                    raise PeekError("out-of-band data (MSG_OOB) is waiting in it")
            offset = 0
            bufsize = 1 << 18
            anc = socket.CMSG_SPACE(4 * SCM_MAX_FD) + 4 * socket.CMSG_SPACE(16) + 512
            while True:
                if sotype == SOCK_STREAM and total is not None:
                    if offset >= total:
                        break
                    bufsize = total - offset
                try:
                    data, cmsgs, flags, addr = s.recvmsg(bufsize, anc, MSG_PEEK | MSG_DONTWAIT)
                except BlockingIOError:
                    break
                fds: list[int] = []
                creds = None
                seen_creds = False
                for level, typ, payload in cmsgs:
                    if level != SOL_SOCKET:
                        continue
                    if typ == SCM_RIGHTS:
                        fds += list(array.array("i", payload[: len(payload) - len(payload) % 4]))
                    elif typ == SCM_PIDFD:
                        for pfd in array.array("i", payload[: len(payload) - len(payload) % 4]):
                            os.close(pfd)
                    elif typ == SCM_CREDENTIALS:
                        seen_creds = True
                        pid, uid, gid = struct.unpack("=iII", payload[:12])
                        if not (pid == 0 and uid == none_uid and gid == none_gid):
                            creds = (pid, uid, gid)
                if not seen_creds or (sotype == SOCK_STREAM and not data):
                    # No message: the end of a shut-down queue (recv returns 0;
                    # a stream socket still reports empty credentials then).
                    for f in fds:
                        os.close(f)
                    break
                if flags & MSG_CTRUNC:
                    for f in fds:
                        os.close(f)
                    raise PeekError("a queued message carries more control data than vzpy can read")
                if sotype != SOCK_STREAM and flags & MSG_TRUNC:
                    # Too small a buffer: peek the same message again, whole.
                    for f in fds:
                        os.close(f)
                    if bufsize >= 1 << 30:
                        raise PeekError("a queued datagram is too large")
                    bufsize *= 4
                    s.setsockopt(SOL_SOCKET, SO_PEEK_OFF, offset)
                    continue
                offset += len(data)
                out.append(Chunk(data, fds, creds, py_addr(addr)))
        except BaseException:
            for c in out:
                for f in c.fds:
                    os.close(f)
            raise
        finally:
            s.setsockopt(SOL_SOCKET, SO_PEEK_OFF, old_off)
            s.setsockopt(SOL_SOCKET, SO_PASSCRED, old_cred)
    return out


def peercred(fd: int) -> tuple[int, int, int] | None:
    """SO_PEERCRED (pid in the caller's pid namespace), None when never set."""
    with _Wrap(fd) as s:
        pid, uid, gid = struct.unpack("=iII", s.getsockopt(SOL_SOCKET, SO_PEERCRED, 12))
    if pid == 0 and uid == NO_ID and gid == NO_ID:
        return None
    return pid, uid, gid


def peergroups(fd: int) -> list[int]:
    size = 256
    with _Wrap(fd) as s:
        while True:
            try:
                raw = s.getsockopt(SOL_SOCKET, SO_PEERGROUPS, size)
                return list(struct.unpack(f"={len(raw) // 4}I", raw))
            except OSError as e:
                if e.errno == errno.ENODATA:
                    return []
                if e.errno != errno.ERANGE or size > 1 << 20:
                    raise
                size *= 4


INT_OPTS = (
    ("passcred", SO_PASSCRED, bool),
    ("passsec", SO_PASSSEC, bool),
    ("passpidfd", SO_PASSPIDFD, bool),
    ("passrights", SO_PASSRIGHTS, bool),
    ("peek_off", SO_PEEK_OFF, int),
    ("rcvlowat", SO_RCVLOWAT, int),
    ("priority", SO_PRIORITY, int),
    ("mark", SO_MARK, int),
    ("keepalive", SO_KEEPALIVE, bool),
    ("oobinline", SO_OOBINLINE, bool),
    ("timestamp", SO_TIMESTAMP, bool),
    ("timestampns", SO_TIMESTAMPNS, bool),
    ("timestamping", SO_TIMESTAMPING, int),
    ("rxq_ovfl", SO_RXQ_OVFL, bool),
    ("reuseaddr", SO_REUSEADDR, bool),
    ("broadcast", SO_BROADCAST, bool),
    ("dontroute", SO_DONTROUTE, bool),
    ("debug", SO_DEBUG, bool),
)


def read_opts(fd: int) -> dict:
    """The socket options worth keeping (see UNIX_OPTS)."""
    opts: dict = {}
    with _Wrap(fd) as s:
        opts["sndbuf"] = s.getsockopt(SOL_SOCKET, SO_SNDBUF)
        opts["rcvbuf"] = s.getsockopt(SOL_SOCKET, SO_RCVBUF)
        for name, opt, conv in INT_OPTS:
            try:
                opts[name] = conv(s.getsockopt(SOL_SOCKET, opt))
            except OSError as e:
                if e.errno != errno.ENOPROTOOPT:  # an option this kernel lacks
                    raise
        onoff, secs = struct.unpack("=ii", s.getsockopt(SOL_SOCKET, SO_LINGER, 8))
        opts["linger"] = secs if onoff else None
        for name, opt in (("rcvtimeo_us", SO_RCVTIMEO), ("sndtimeo_us", SO_SNDTIMEO)):
            sec, usec = struct.unpack("=qq", s.getsockopt(SOL_SOCKET, opt, 16))
            opts[name] = sec * 1_000_000 + usec
    return opts


# What a fresh socket has: the image leaves these out.
OPT_DEFAULTS = {
    "passrights": True,
    "peek_off": -1,
    "rcvlowat": 1,
    "linger": None,
    "rcvtimeo_us": 0,
    "sndtimeo_us": 0,
    "priority": 0,
    "mark": 0,
    "timestamping": 0,
}


def prune_opts(opts: dict) -> dict:
    return {
        k: v
        for k, v in opts.items()
        if k in ("sndbuf", "rcvbuf") or v != OPT_DEFAULTS.get(k, False)
    }


def write_opts(fd: int, opts: dict) -> None:
    """Set the dumped options (buffers with the FORCE forms: the sysctl caps do not apply
    to what the kernel had already granted)."""
    with _Wrap(fd) as s:
        for name, opt in (("sndbuf", SO_SNDBUFFORCE), ("rcvbuf", SO_RCVBUFFORCE)):
            if opts.get(name):
                # the kernel doubles what it is given (sk_sndbuf = 2 * val)
                s.setsockopt(SOL_SOCKET, opt, opts[name] // 2)
        for name, opt, _conv in INT_OPTS:
            val = opts.get(name)
            if val is None:
                continue
            try:
                cur = s.getsockopt(SOL_SOCKET, opt)
            except OSError as e:
                if e.errno == errno.ENOPROTOOPT:
                    if name == "passrights" and val:
                        continue  # the default where the option does not exist
                    raise RestoreError(f"this kernel has no socket option {name}") from e
                raise
            if int(cur) != int(val):
                s.setsockopt(SOL_SOCKET, opt, int(val))
        linger = opts.get("linger")
        if linger is not None:
            s.setsockopt(SOL_SOCKET, SO_LINGER, struct.pack("=ii", 1, linger))
        for name, opt in (("rcvtimeo_us", SO_RCVTIMEO), ("sndtimeo_us", SO_SNDTIMEO)):
            us = opts.get(name) or 0
            if us:
                s.setsockopt(SOL_SOCKET, opt, struct.pack("=qq", us // 1_000_000, us % 1_000_000))


def socket_netns(fd: int) -> int:
    """Inode of the network namespace a socket lives in (SIOCGSKNS)."""
    nsfd = fcntl.ioctl(fd, SIOCGSKNS)
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


def has_filter(fd: int) -> bool:
    with _Wrap(fd) as s:
        return s.getsockopt(SOL_SOCKET, SO_GET_FILTER) != 0


def pending_error(fd: int) -> bool:
    """sk_err set (POLLERR), seen without reading SO_ERROR (which would clear it)."""
    p = select.poll()
    p.register(fd, select.POLLERR)
    return any(ev & select.POLLERR for _, ev in p.poll(0))


# --- the peeker: a child in the container's pid namespace -----------------------------------


def _send_frame(fd: int, obj) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    view = memoryview(struct.pack("<I", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _recv_exact(fd: int, n: int) -> bytes | None:
    out = bytearray()
    while len(out) < n:
        chunk = os.read(fd, n - len(out))
        if not chunk:
            return None
        out += chunk
    return bytes(out)


def _recv_frame(fd: int):
    head = _recv_exact(fd, 4)
    if head is None:
        return None
    body = _recv_exact(fd, struct.unpack("<I", head)[0])
    if body is None:
        return None
    return msgpack.unpackb(body, raw=False)


def _peeker_serve(req_r: int, resp_w: int) -> None:
    """The child's loop: ["sk", fd, type, peek] -> {"cred", "chunks", "err"}."""
    while True:
        req = _recv_frame(req_r)
        if req is None or req[0] != "sk":
            return
        _op, fd, sotype, peek, total = req
        resp: dict = {"cred": None, "chunks": [], "err": None}
        try:
            cred = peercred(fd)
            resp["cred"] = list(cred) if cred else None
            if peek:
                resp["chunks"] = [
                    [c.data, c.fds, list(c.creds) if c.creds else None, c.addr]
                    for c in peek_queue(fd, sotype, total)
                ]
        except PeekError as e:
            resp["err"] = str(e)
        except OSError as e:
            resp["err"] = f"reading it failed: {e}"
        _send_frame(resp_w, resp)


class NsPeeker:
    """A child of ours that joined the container's pid namespace and reads sockets for us.

    SO_PEERCRED and SCM_CREDENTIALS give pids as the reader's pid namespace
    numbers them; read from the container's own namespace they are the
    numbers to restore, also for a process that has exited since (which no
    /proc lookup could translate).  The child is forked (it inherits our
    copies of the container's fds) from a thread that joined the namespace:
    setns(CLONE_NEWPID) only decides where that thread's children go.  Files
    it receives in flight stay open in it until it exits; we copy them with
    pidfd_getfd.
    """

    def __init__(self, ns_pid: int) -> None:
        self.ns_pid = ns_pid
        self.pid = 0
        self.pidfd = -1
        self.req_w = -1
        self.resp_r = -1

    def __enter__(self) -> NsPeeker:
        req_r, self.req_w = os.pipe2(os.O_CLOEXEC)
        self.resp_r, resp_w = os.pipe2(os.O_CLOEXEC)
        nsfd = os.open(f"/proc/{self.ns_pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        result: dict = {}

        def body() -> None:
            try:
                libc.setns(nsfd, libc.CLONE_NEWPID)
                pid = os.fork()
                if pid == 0:  # the child: never returns
                    code = 1
                    try:
                        os.close(self.req_w)
                        os.close(self.resp_r)
                        _peeker_serve(req_r, resp_w)
                        code = 0
                    finally:
                        os._exit(code)
                result["pid"] = pid
            except BaseException as e:  # noqa: BLE001 - re-raised below
                result["error"] = e

        try:
            t = threading.Thread(target=body, name="unix-peeker")
            t.start()
            t.join()
        finally:
            os.close(nsfd)
            os.close(req_r)
            os.close(resp_w)
        if "error" in result:
            self.close()
            raise result["error"]
        self.pid = result["pid"]
        self.pidfd = os.pidfd_open(self.pid)
        return self

    def query(self, fd: int, sotype: int, peek: bool, total: int | None = None) -> dict:
        _send_frame(self.req_w, ["sk", fd, sotype, peek, total])
        resp = _recv_frame(self.resp_r)
        if resp is None:
            raise OSError(errno.EPIPE, "the socket reader in the container's pid namespace died")
        return resp

    def close(self) -> None:
        for attr in ("req_w", "resp_r", "pidfd"):
            fd = getattr(self, attr)
            if fd >= 0:
                os.close(fd)
                setattr(self, attr, -1)
        if self.pid:
            # EOF on its request pipe ends it; a child that does not go is killed.
            if not _reaped(self.pid):
                try:
                    os.kill(self.pid, 9)
                except ProcessLookupError:
                    pass
                try:
                    os.waitpid(self.pid, 0)
                except ChildProcessError:
                    pass
            self.pid = 0

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reaped(pid: int) -> bool:
    """Wait a moment for the child to leave after EOF on its request pipe."""
    for _ in range(200):
        try:
            got, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return True
        if got:
            return True
        threading.Event().wait(0.005)
    return False


# --- the dump side ---------------------------------------------------------------------------


@dataclass
class Sock:
    """What the dump knows about one socket."""

    ino: int
    fd: int  # our copy
    cfd: int  # the same socket in the peeker (same number for inherited copies)
    holder: tuple[int, int, int] | None = None  # (container pid, fd, host pid) of the first holder
    carrier: int | None = None  # a socket only in flight: the one whose queue holds it
    fid: int = 0
    flags: int = 0
    type: int = 0
    diag: DiagSock | None = None
    cred: tuple[int, int, int] | None = None  # SO_PEERCRED, container pid
    groups: list[int] = field(default_factory=list)
    opts: dict = field(default_factory=dict)
    st: os.stat_result | None = None
    msgs: list[dict] = field(default_factory=list)
    peername: bytes | None = None
    error: bool = False
    embryo_cred: dict | None = None

    @property
    def name(self) -> bytes | None:
        return self.diag.name if self.diag else None

    @property
    def state(self) -> int:
        return self.diag.state if self.diag else TCP_CLOSE

    @property
    def peer(self) -> int | None:
        return self.diag.peer if self.diag else None


@dataclass
class DumpState:
    socks: dict[int, Sock] = field(default_factory=dict)


def _state(ctx) -> DumpState:
    st = ctx.extra.get("unix")
    if st is None:
        st = ctx.extra["unix"] = DumpState()
    return st


def cred_rec(cred: tuple[int, int, int] | None, groups: list[int] | None = None) -> dict | None:
    if cred is None:
        return None
    pid, uid, gid = cred
    return {"pid": max(pid, 0), "uid": uid, "gid": gid, "groups": list(groups or [])}


class UnixKind(FdKind):
    """AF_UNIX sockets.  dump() only notes the socket: the work needs every task's
    fds (peers, files in flight) and is done by UnixResource.dump."""

    name = "unix"
    record_types = ("unix_file",)

    def match(self, probe: FdProbe) -> bool:
        if not probe.link.startswith("socket:[") or probe.copy < 0:
            return False
        try:
            with _Wrap(probe.copy) as s:
                return s.getsockopt(SOL_SOCKET, SO_DOMAIN) == AF_UNIX
        except OSError:
            return False

    def dump(self, ctx, probe: FdProbe) -> dict:
        st = _state(ctx)
        ino = probe.st.st_ino
        if ino not in st.socks:
            st.socks[ino] = Sock(
                ino,
                probe.copy,
                probe.copy,
                holder=(probe.nspid, probe.fd, probe.pid),
                flags=probe.flags,
            )
        return {"_type": "unix_file", "ino": ino}

    def restore(self, rctx, entry: dict) -> int:
        ur: UnixRestore | None = rctx.extra.get("unix")
        ino = entry["detail"]["ino"]
        if ur is None or ino not in ur.socks:
            raise RestoreError(f"unix socket socket:[{ino}] was not rebuilt")
        fd = os.dup(ur.socks[ino].fileno())
        try:
            _set_status_flags(fd, entry.get("flags", 0))
        except OSError:
            os.close(fd)
            raise
        return fd


def _set_status_flags(fd: int, flags: int) -> None:
    cur = fcntl.fcntl(fd, fcntl.F_GETFL)
    want = (cur & ~os.O_NONBLOCK) | (flags & os.O_NONBLOCK)
    if want != cur:
        fcntl.fcntl(fd, fcntl.F_SETFL, want)


class Refused(Exception):
    """The planner refuses socket `ino`; the dump turns it into UnsupportedError."""

    def __init__(self, ino: int, why: str) -> None:
        super().__init__(why)
        self.ino = ino
        self.why = why


# --- the plan: how each socket is made again (pure: unit-tested) ----------------------------


@dataclass
class TempReq:
    """A socket needed only during restore, bound to a name some closed socket had."""

    id: int
    type: int
    name: bytes | None
    role: str  # listener | client | sender | peer
    owner: int  # the image socket it is made for (refusal messages)


@dataclass
class Plan:
    make: dict[int, str] = field(default_factory=dict)  # ino -> socket | pair | listen
    pair: dict[int, int] = field(default_factory=dict)  # make=pair: other end, 0 = closed one
    accepted: set[int] = field(default_factory=set)  # made by accept(): name not bound
    listens: list[dict] = field(default_factory=list)
    temps: dict[int, TempReq] = field(default_factory=dict)
    prefix: dict[int, int] = field(default_factory=dict)  # dgram: datagrams queued before connect
    peer_temp: dict[int, int] = field(default_factory=dict)  # dgram whose peer closed
    senders: dict[tuple[int, int], dict] = field(default_factory=dict)  # (ino, msg) -> sender

    def bound(self, s: Sock) -> bool:
        return s.name is not None and s.ino not in self.accepted


class Planner:
    """Decide, from what the dump saw, how every socket is made again.

    Connected stream and seqpacket pairs: a socketpair (both ends unnamed),
    or a connection through a listener, whose name the accepted end carries
    (the live listener with that name, or a temporary one bound to it).  An
    end whose peer closed gets a temporary peer, closed at the end.
    Datagram sockets: bound and connected by name, socketpairs where one end
    is unnamed; each queued datagram is sent again by the socket bound to its
    sender's name, those from the peer after the connect, the others before.
    """

    def __init__(self, socks: dict[int, Sock]) -> None:
        self.socks = socks
        self.p = Plan()
        self._temp_keys: dict[tuple[int, bytes], int] = {}
        self._listen_plans: dict[tuple[str, int], dict] = {}

    def refuse(self, s: Sock, why: str) -> Refused:
        return Refused(s.ino, why)

    # -- helpers -----------------------------------------------------------------------------
    def temp(self, type_: int, name: bytes | None, role: str, owner: Sock) -> int:
        if name is not None:
            key = (type_, name)
            tid = self._temp_keys.get(key)
            if tid is not None:
                if (self.p.temps[tid].role == "listener") != (role == "listener"):
                    raise self.refuse(
                        owner,
                        f"the closed sockets it was connected to used the name {show_name(name)} "
                        "both to listen and to send, which vzpy cannot rebuild",
                    )
                return tid
        tid = len(self.p.temps) + 1
        self.p.temps[tid] = TempReq(tid, type_, name, role, owner.ino)
        if name is not None:
            self._temp_keys[(type_, name)] = tid
        return tid

    def live_listener(self, type_: int, name: bytes | None, vfs=None) -> Sock | None:
        if name is None:
            return None
        for s in self.socks.values():
            if s.type == type_ and s.state == TCP_LISTEN and s.name == name:
                if is_abstract(name) or vfs is None or s.diag.vfs == vfs:
                    return s
        return None

    def listen_plan(
        self, listener: Sock | None, temp_name: bytes | None, type_: int, owner: Sock
    ) -> dict:
        if listener is not None:
            key = ("L", listener.ino)
        else:
            tid = self.temp(type_, temp_name, "listener", owner)
            key = ("T", tid)
        plan = self._listen_plans.get(key)
        if plan is None:
            plan = {"listener": listener.ino if listener else None, "temp": None, "conns": []}
            if listener is None:
                plan["temp"] = key[1]
            self._listen_plans[key] = plan
            self.p.listens.append(plan)
        return plan

    @staticmethod
    def cred(s: Sock) -> dict | None:
        return cred_rec(s.cred, s.groups)

    def connect_through(
        self, listener: Sock | None, name: bytes | None, accepted: Sock, client: Sock
    ) -> None:
        plan = self.listen_plan(listener, name, accepted.type, accepted)
        plan["conns"].append(
            {
                "client": client.ino,
                "accepted": accepted.ino,
                "connector": self.cred(accepted),
                "listen_cred": self.cred(client),
            }
        )
        self.p.make[accepted.ino] = self.p.make[client.ino] = "listen"
        self.p.accepted.add(accepted.ino)

    # -- the plan ----------------------------------------------------------------------------
    def run(self) -> Plan:
        socks = [self.socks[i] for i in sorted(self.socks)]
        for s in socks:
            self.p.make[s.ino] = "socket"
            if s.type not in TYPE_NAMES:
                raise self.refuse(s, f"sockets of type {s.type} are not supported")
        for lst in (x for x in socks if x.state == TCP_LISTEN):
            self.listen_plan(lst, None, lst.type, lst)  # every listener listens again
        pending = self.pending()
        done: set[int] = set()
        for s in socks:
            if s.type == SOCK_DGRAM or s.state == TCP_LISTEN or s.peer is None:
                if s.error:
                    raise self.refuse(s, "an error (ECONNRESET) is pending on it")
                continue
            if s.ino in pending or s.ino in done:
                continue
            if s.peer == 0:
                self.stream_closed_peer(s)
                continue
            if s.error:
                raise self.refuse(s, "an error (ECONNRESET) is pending on it")
            o = self.outside_check(s)
            if o.peer != s.ino or o.type != s.type:
                raise self.refuse(s, f"its peer socket:[{o.ino}] is not connected back to it")
            if not shutdown_consistent(s.diag.shutdown, o.diag.shutdown):
                raise self.refuse(s, "the shutdown states of its two ends do not match")
            done |= {s.ino, o.ino}
            self.stream_pair(s, o)
        for lst in (x for x in socks if x.state == TCP_LISTEN):
            for c in lst.diag.icons:
                client = self.socks[c]
                plan = self.listen_plan(lst, None, lst.type, lst)
                plan["conns"].append(
                    {
                        "client": c,
                        "accepted": None,
                        "connector": client.embryo_cred,
                        "listen_cred": self.cred(client),
                    }
                )
                self.p.make[c] = "listen"
        for s in socks:
            if s.type == SOCK_DGRAM:
                self.dgram_links(s)
        for s in socks:
            if s.type == SOCK_DGRAM:
                self.dgram_queue(s)
        return self.p

    def outside_check(self, s: Sock) -> Sock:
        o = self.socks.get(s.peer)
        if o is None:
            raise self.refuse(
                s,
                f"it is connected to socket:[{s.peer}] ({show_name(s.peername)}), which no task "
                "of the container holds: a process outside the container (a host daemon?) has "
                "the other end, and vzpy cannot checkpoint that connection",
            )
        return o

    def pending(self) -> dict[int, int]:
        """Clients whose connection waits in an accept queue -> their listener."""
        out: dict[int, int] = {}
        for lst in self.socks.values():
            if lst.state != TCP_LISTEN:
                continue
            for c in lst.diag.icons:
                client = self.socks.get(c)
                if client is None:
                    raise self.refuse(
                        lst,
                        f"a connection waiting in its accept queue comes from socket:[{c}], "
                        "which no task of the container holds (a process outside the container?)",
                    )
                if client.diag.wqueue:
                    raise self.refuse(
                        client,
                        f"its connection to {show_name(lst.name)} was not accepted yet and already "
                        f"holds data it sent ({client.diag.wqueue} bytes of socket buffer); only "
                        "accept() could read them",
                    )
                if client.embryo_cred is None:
                    raise self.refuse(
                        client,
                        f"its connection to {show_name(lst.name)} was not accepted yet and no task "
                        "holds the client socket, so vzpy cannot tell who connected",
                    )
                out[c] = lst.ino
        return out

    def stream_pair(self, s: Sock, o: Sock) -> None:
        ls = self.live_listener(s.type, s.name, s.diag.vfs)
        lo = self.live_listener(o.type, o.name, o.diag.vfs)
        if ls is not None and lo is None:
            acc, cli, via = s, o, ls
        elif lo is not None and ls is None:
            acc, cli, via = o, s, lo
        elif ls is not None and lo is not None:
            # The accepted end is made at accept(), after the client: the newer inode.
            acc, cli = (s, o) if s.ino > o.ino else (o, s)
            via = ls if acc is s else lo
        elif s.name is None and o.name is None:
            if s.cred is None or s.cred != o.cred:
                raise self.refuse(
                    s, "its connection is neither a socketpair nor made through a listener"
                )
            self.p.make[s.ino] = self.p.make[o.ino] = "pair"
            self.p.pair[s.ino], self.p.pair[o.ino] = o.ino, s.ino
            return
        else:
            # The listener has closed.  The end that carries a name it did not bind
            # is the accepted one: the only named end, or else the newer one.
            if s.name is None or o.name is None:
                acc, cli = (s, o) if s.name is not None else (o, s)
            else:
                acc, cli = (s, o) if s.ino > o.ino else (o, s)
            via = None
        self.connect_through(via, acc.name, acc, cli)

    def stream_closed_peer(self, s: Sock) -> None:
        """A stream/seqpacket socket whose peer has closed: a temporary peer, closed at the end."""
        if s.diag.shutdown != RCV_SHUTDOWN | SEND_SHUTDOWN:
            # A closing peer shuts its peer down both ways (unix_release_sock): this one
            # is a connection still waiting in the accept queue of a listener no task of
            # the container holds.
            raise self.refuse(
                s,
                f"it is connected to {show_name(s.peername)}, whose listener is outside the "
                "container and has not accepted the connection yet",
            )
        lst = self.live_listener(s.type, s.name, s.diag.vfs)
        was_accepted = s.name is not None and (
            s.peername is None or (autobound(s.peername) and not autobound(s.name))
        )
        if lst is not None or was_accepted:
            # s was accepted (from `lst`, or from a listener that closed too).
            plan = self.listen_plan(lst, s.name, s.type, s)
            tid = self.temp(s.type, s.peername, "client", s) if s.peername else None
            plan["conns"].append(
                {"client": 0, "client_temp": tid, "accepted": s.ino, "connector": self.cred(s)}
            )
            self.p.make[s.ino] = "listen"
            self.p.accepted.add(s.ino)
            return
        if s.peername is not None:
            # s connected to a listener (live or closed) whose accepted end has closed.
            via = self.live_listener(s.type, s.peername)
            plan = self.listen_plan(via, s.peername, s.type, s)
            plan["conns"].append(
                {
                    "client": s.ino,
                    "accepted": None,
                    "accepted_temp": True,
                    "listen_cred": self.cred(s),
                }
            )
            self.p.make[s.ino] = "listen"
            return
        if s.cred is None:
            raise self.refuse(s, "its peer closed and vzpy cannot tell how it was connected")
        self.p.make[s.ino] = "pair"
        self.p.pair[s.ino] = 0

    def dgram_links(self, s: Sock) -> None:
        if s.peer is None:
            return
        if s.peer == 0:
            if s.peername is not None:
                self.p.peer_temp[s.ino] = self.temp(SOCK_DGRAM, s.peername, "peer", s)
            elif s.cred is not None and s.ino not in self.p.pair:
                self.p.make[s.ino] = "pair"  # a socketpair whose other end closed
                self.p.pair[s.ino] = 0
            elif s.ino not in self.p.pair:
                raise self.refuse(s, "its peer closed and vzpy cannot tell how it was connected")
            return
        o = self.outside_check(s)
        mutual = o.peer == s.ino
        if o.name is None or (mutual and s.cred is not None and s.cred == o.cred):
            # Only socketpair() connects to an unnamed socket (and sets SO_PEERCRED).
            if s.cred is None or s.cred != o.cred:
                raise self.refuse(
                    s,
                    f"it is connected to socket:[{o.ino}], which has no name and is not its socketpair twin",
                )
            for a, b in ((s, o), (o, s)):
                if self.p.pair.get(a.ino, b.ino) != b.ino:
                    raise self.refuse(a, "it is part of two socketpairs")
            self.p.make[s.ino] = self.p.make[o.ino] = "pair"
            self.p.pair[s.ino], self.p.pair[o.ino] = o.ino, s.ino

    def peer_name(self, s: Sock) -> bytes | None:
        if s.peer is None:
            return None
        if s.peer == 0:
            return s.peername
        return self.socks[s.peer].name

    def dgram_queue(self, s: Sock) -> None:
        """Who sends each queued datagram again, and which ones go before connect()."""
        connected = s.peer is not None
        partner = self.p.pair.get(s.ino)
        peer_name = self.peer_name(s)
        prefix = 0
        if connected:
            from_peer = [m.get("addr") == peer_name for m in s.msgs]
            prefix = next((i for i, x in enumerate(from_peer) if x), len(s.msgs))
            if not all(from_peer[prefix:]):
                raise self.refuse(
                    s,
                    "datagrams from other senders are queued behind datagrams from its peer "
                    f"{show_name(peer_name)}; vzpy cannot queue them in that order again",
                )
            if prefix and partner is not None:
                raise self.refuse(s, "datagrams from other senders are queued in a socketpair end")
        self.p.prefix[s.ino] = prefix
        for i, m in enumerate(s.msgs):
            if i >= prefix and connected:
                if s.peer and partner != s.peer:
                    self.p.senders[(s.ino, i)] = {"sender": s.peer}
                elif s.peer == 0 and s.ino in self.p.peer_temp:
                    self.p.senders[(s.ino, i)] = {"temp": self.p.peer_temp[s.ino]}
                else:
                    self.p.senders[(s.ino, i)] = {}  # the socketpair twin (or its closed stand-in)
                continue
            if s.name is None:
                raise self.refuse(s, "datagrams from other senders are queued in an unnamed socket")
            addr = m.get("addr")
            if addr is None:
                self.p.senders[(s.ino, i)] = {"anon": True}
                continue
            sender = next(
                (x for x in self.socks.values() if x.type == SOCK_DGRAM and x.name == addr),
                None,
            )
            if sender is not None:
                self.p.senders[(s.ino, i)] = {"sender": sender.ino}
            else:
                self.p.senders[(s.ino, i)] = {"temp": self.temp(SOCK_DGRAM, addr, "sender", s)}


# --- the dump: reading every socket, then the record -----------------------------------------


def _read_fdinfo(fd: int) -> procfs.FdInfo:
    with open(f"/proc/self/fdinfo/{fd}", "rb") as f:
        return procfs.parse_fdinfo(f.read())


def _status_ids(pid: int) -> tuple[int, int, list[int]]:
    """(euid, egid, supplementary groups) of a task, from /proc/PID/status."""
    euid = egid = 0
    groups: list[int] = []
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                euid = int(line.split()[2])
            elif line.startswith("Gid:"):
                egid = int(line.split()[2])
            elif line.startswith("Groups:"):
                groups = [int(x) for x in line.split()[1:]]
    return euid, egid, groups


class UnixDump:
    """Read every socket the tasks hold (and those in flight), plan, write unix_sockets.img."""

    def __init__(self, ctx, st: DumpState) -> None:
        self.ctx = ctx
        self.socks = st.socks
        self.copies: list[int] = []  # our copies of files in flight
        self.inflight: list[dict] = []
        self.other: list[tuple[int, int]] = []  # (file id, our fd) of non-socket files in flight
        self.netns = 0
        self.diag: dict[int, DiagSock] = {}
        self.root = f"/proc/{ctx.init_pid}/root"

    def run(self) -> None:
        ctx = self.ctx
        t0 = time.monotonic()
        try:
            self.netns = os.stat(f"/proc/{ctx.init_pid}/ns/net").st_ino
            self.diag = libc.run_in_netns(ctx.init_pid, unix_diag_dump)
            fids = {
                e["detail"]["ino"]: e["id"]
                for e in ctx.files.entries
                if isinstance(e.get("detail"), dict) and e["detail"].get("_type") == "unix_file"
            }
            for sk in self.socks.values():
                sk.fid = fids[sk.ino]
            with NsPeeker(ctx.init_pid) as pk:
                work = list(self.socks.values())
                while work:
                    self.read(work.pop(0), pk, work)
            self.embryo_creds()
            try:
                plan = Planner(self.socks).run()
                rec = self.record(plan)
            except Refused as r:
                raise self.refused(self.socks[r.ino], r.why) from None
            ctx.img.write("unix_sockets", rec)
            log.info(
                f"\tunix sockets: {len(self.socks)} ({len(self.inflight)} files in flight) "
                f"dumped in {(time.monotonic() - t0) * 1000:.0f} ms",
                level=1,
            )
        finally:
            for fd in self.copies:
                os.close(fd)
            self.copies.clear()

    # -- messages --------------------------------------------------------------------------
    def where(self, sk: Sock) -> str:
        what = f"a unix {TYPE_NAMES[sk.type]} socket" if sk.type in TYPE_NAMES else "a unix socket"
        if sk.holder is not None:
            return f"task {sk.holder[0]}: fd {sk.holder[1]} is {what} (socket:[{sk.ino}])"
        carrier = self.socks[sk.carrier]
        return f"{self.where(carrier)}, whose queue holds {what} in flight (socket:[{sk.ino}])"

    def refused(self, sk: Sock, why: str) -> UnsupportedError:
        return UnsupportedError(f"Can't dump {self.where(sk)}: {why}")

    def holder(self, sk: Sock) -> tuple[int, int, int] | None:
        while sk.holder is None and sk.carrier is not None:
            sk = self.socks[sk.carrier]
        return sk.holder

    # -- reading -----------------------------------------------------------------------------
    def read(self, sk: Sock, pk: NsPeeker, work: list[Sock]) -> None:
        with _Wrap(sk.fd) as s:
            sk.type = s.getsockopt(SOL_SOCKET, SO_TYPE)
        try:
            ns = socket_netns(sk.fd)
        except OSError:
            ns = None
        if ns != self.netns:
            raise self.refused(
                sk,
                "it belongs to another network namespace than the container's (made outside "
                "the container and passed in, or in a namespace a task created); vzpy rebuilds "
                "sockets in the container's own namespace only",
            )
        d = self.diag.get(sk.ino)
        if d is None:
            raise self.refused(
                sk, "the kernel does not list it in the container's network namespace"
            )
        sk.diag = d
        sk.type = d.type
        if sk.type not in TYPE_NAMES:
            raise self.refused(sk, f"unix sockets of type {sk.type} are not supported")
        if has_filter(sk.fd):
            raise self.refused(sk, "a socket filter (SO_ATTACH_FILTER/BPF) is attached to it")
        sk.st = os.fstat(sk.fd)
        sk.opts = prune_opts(read_opts(sk.fd))
        if d.peer is not None:
            with _Wrap(sk.fd) as s:
                try:
                    sk.peername = py_addr(s.getpeername())
                except OSError:
                    sk.peername = None
        sk.error = pending_error(sk.fd)
        if sk.error and sk.type != SOCK_STREAM:
            # Any receive would return the error and clear it (see peek_queue).
            raise self.refused(
                sk,
                "an error (ECONNRESET) is pending on it, which reading its queue would clear",
            )
        resp = pk.query(sk.cfd, sk.type, d.state != TCP_LISTEN, d.rqueue)
        if resp.get("err"):
            raise self.refused(sk, resp["err"])
        sk.cred = tuple(resp["cred"]) if resp.get("cred") else None
        if sk.cred is not None:
            sk.groups = peergroups(sk.fd)
        total = 0
        for data, cfds, creds, addr in resp.get("chunks") or []:
            m: dict = {"data": data}
            if cfds:
                m["fds"] = [self.in_flight(sk, pk, c, work) for c in cfds]
            if creds:
                m["creds"] = {"pid": max(creds[0], 0), "uid": creds[1], "gid": creds[2]}
            if sk.type == SOCK_DGRAM and addr is not None:
                m["addr"] = addr
            sk.msgs.append(m)
            total += len(data)
        if sk.type != SOCK_DGRAM and d.state != TCP_LISTEN and total != d.rqueue:
            raise self.refused(
                sk, f"read {total} queued bytes of {d.rqueue}: the queue changed while it was read"
            )

    def new_id(self) -> int:
        fid = self.ctx.files.next_id
        self.ctx.files.next_id += 1
        return fid

    def in_flight(self, carrier: Sock, pk: NsPeeker, cfd: int, work: list[Sock]) -> int:
        """File id of a file passed in carrier's queue (dumping it if it is new)."""
        ours = libc.pidfd_getfd(pk.pidfd, cfd)
        self.copies.append(ours)
        st = os.fstat(ours)
        info = _read_fdinfo(ours)
        flags = info.flags & ~os.O_CLOEXEC
        if stat.S_ISSOCK(st.st_mode):
            try:
                with _Wrap(ours) as s:
                    domain = s.getsockopt(SOL_SOCKET, SO_DOMAIN)
            except OSError:
                domain = None
            if domain == AF_UNIX:
                known = self.socks.get(st.st_ino)
                if known is not None:
                    return known.fid
                fid = self.new_id()
                sk = Sock(st.st_ino, ours, cfd, carrier=carrier.ino, fid=fid, flags=flags)
                self.socks[sk.ino] = sk
                work.append(sk)
                detail = {"_type": "unix_file", "ino": sk.ino}
                self.inflight.append({"id": fid, "flags": flags, "pos": 0, "detail": detail})
                return fid
        link = os.readlink(f"/proc/self/fd/{ours}")
        holder = self.holder(carrier)
        probe = FdProbe(os.getpid(), holder[0] if holder else 0, ours, link, info, ours, st)
        identify = getattr(self.ctx.files, "_identify", None)
        fid = identify(probe) if identify is not None else None
        if fid:
            return fid
        me = os.getpid()
        for fid2, other in self.other:
            if libc.kcmp(me, me, libc.KCMP_FILE, ours, other) == 0:
                return fid2
        kind = next((k for k in KINDS if k.match(probe)), None)
        if kind is None:
            raise self.refused(
                carrier,
                f"a file in flight in its queue ({link}) is of a kind vzpy cannot checkpoint yet",
            )
        try:
            detail = kind.dump(self.ctx, probe)
        except UnsupportedError as e:
            # The kind's message names our copy's fd: keep only why it refuses.
            why = str(e).split("): ", 1)[-1]
            raise self.refused(
                carrier, f"a file in flight in its queue ({link}) cannot be saved: {why}"
            ) from e
        fid = self.new_id()
        self.inflight.append({"id": fid, "flags": flags, "pos": info.pos, "detail": detail})
        self.other.append((fid, ours))
        return fid

    def embryo_creds(self) -> None:
        """Who connected, for connections still in an accept queue (see the module doc)."""
        for lst in list(self.socks.values()):
            if lst.state != TCP_LISTEN:
                continue
            for c in lst.diag.icons:
                client = self.socks.get(c)
                if client is None or client.holder is None:
                    continue
                nspid, _fd, host = client.holder
                try:
                    groups = _status_ids(host)[2]
                except OSError:
                    groups = []
                client.embryo_cred = {
                    "pid": nspid,
                    "uid": client.st.st_uid,
                    "gid": client.st.st_gid,
                    "groups": groups,
                }

    # -- names in the file system ------------------------------------------------------------
    def in_root(self, path: bytes) -> str:
        return self.root + os.fsdecode(path)

    def _open_dir_in_root(self, path_in_root: str) -> int | None:
        """An O_PATH fd of the directory of a path under self.root, None if there is none.

        Resolved with openat2(RESOLVE_IN_ROOT): through /proc/PID/root an absolute
        symlink (Debian's /var/run -> /run) would lead into the node's own tree.
        """
        from ..initbin import open_in_root

        rel = path_in_root[len(self.root) :]
        rootfd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return open_in_root(rootfd, os.path.dirname(rel) or "/", os.O_PATH | os.O_DIRECTORY)
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        finally:
            os.close(rootfd)

    def bound_at(self, path: str) -> os.stat_result | None:
        """lstat of a path under self.root (resolved inside it) or of any other path."""
        try:
            if not path.startswith(self.root + "/"):
                return os.lstat(path)
            d = self._open_dir_in_root(path)
            if d is None:
                return None
            try:
                return os.stat(os.path.basename(path), dir_fd=d, follow_symlinks=False)
            finally:
                os.close(d)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def dir_exists(self, path_in_root: str) -> bool:
        d = self._open_dir_in_root(path_in_root)
        if d is not None:
            os.close(d)
        return d is not None

    def resolve_bind(self, sk: Sock, plan: Plan) -> dict:
        name = sk.name
        vfs = sk.diag.vfs
        if name.startswith(b"/"):
            candidates = [("/", self.in_root(name))]
        else:
            h = self.holder(sk) if sk.holder is not None else None
            candidates = []
            if h is not None:
                try:
                    cwd = os.readlink(f"/proc/{h[2]}/cwd")
                    candidates.append((cwd, f"/proc/{h[2]}/cwd/" + os.fsdecode(name)))
                except OSError:
                    pass
        for d, path in candidates:
            st = self.bound_at(path)
            if st is not None and vfs is not None and (st.st_ino, st.st_dev) == vfs:
                return {
                    "dir": d,
                    "linked": True,
                    "mode": st.st_mode,
                    "uid": st.st_uid,
                    "gid": st.st_gid,
                }
        if not name.startswith(b"/"):
            raise Refused(
                sk.ino,
                f"it is bound to the relative path {show_name(name)}, which vzpy cannot find from "
                "the working directory of the task holding it",
            )
        path = self.in_root(name)
        if self.bound_at(path) is not None:
            raise Refused(
                sk.ino,
                f"its socket file {show_name(name)} was removed and another file now has that "
                "path, so vzpy cannot bind the socket there again",
            )
        if not self.dir_exists(path):
            raise Refused(
                sk.ino, f"the directory of its removed socket file {show_name(name)} is gone too"
            )
        return {"dir": "/", "linked": False}

    def resolve_temp(self, t: TempReq, plan: Plan) -> dict:
        rec: dict = {"id": t.id, "type": t.type, "name": t.name}
        owner = self.socks[t.owner]
        name = t.name
        if name is None:
            rec["how"] = "unnamed"
            return rec
        if is_abstract(name):
            for x in self.socks.values():
                if x.type == t.type and x.name == name and plan.bound(x):
                    raise Refused(
                        owner.ino,
                        f"the closed socket it was connected to had the name {show_name(name)}, "
                        "which another socket has now",
                    )
            rec["how"] = "abstract"
            return rec
        if not name.startswith(b"/"):
            raise Refused(
                owner.ino,
                f"the closed socket it was connected to had the relative name {show_name(name)}",
            )
        path = self.in_root(name)
        st = self.bound_at(path)
        if st is None:
            if not self.dir_exists(path):
                raise Refused(
                    owner.ino,
                    f"the directory of {show_name(name)} (a closed socket's name) is gone",
                )
            rec["how"] = "create_unlink"
            return rec
        live = any(
            x.diag.vfs == (st.st_ino, st.st_dev) and plan.bound(x) for x in self.socks.values()
        )
        if not stat.S_ISSOCK(st.st_mode) or live:
            raise Refused(
                owner.ino,
                f"the closed socket it was connected to was bound to {show_name(name)}, "
                "where another file or socket is now",
            )
        rec.update(how="replace", mode=st.st_mode, uid=st.st_uid, gid=st.st_gid)
        return rec

    # -- the record --------------------------------------------------------------------------
    def record(self, plan: Plan) -> dict:
        temps = [self.resolve_temp(t, plan) for t in plan.temps.values()]
        sks = []
        for ino in sorted(self.socks):
            sk = self.socks[ino]
            d = sk.diag
            rec: dict = {
                "ino": ino,
                "type": sk.type,
                "state": d.state,
                "name": d.name,
                "bound": plan.bound(sk),
                "peer": d.peer,
                "make": plan.make[ino],
                "shutdown": d.shutdown,
                "error": sk.error,
                "peercred": cred_rec(sk.cred, sk.groups),
                "opts": sk.opts,
                "owner_uid": sk.st.st_uid,
                "owner_gid": sk.st.st_gid,
                "mode": sk.st.st_mode,
                "peername": sk.peername,
                "where": self.where(sk),
            }
            if plan.make[ino] == "pair":
                rec["pair"] = plan.pair[ino]
            if d.state == TCP_LISTEN:
                rec["backlog"] = d.wqueue
            if sk.type == SOCK_DGRAM:
                rec["dgram_prefix"] = plan.prefix.get(ino, 0)
                if ino in plan.peer_temp:
                    rec["peer_temp"] = plan.peer_temp[ino]
            if sk.holder is None:
                rec["flags"] = sk.flags
            if rec["bound"] and not is_abstract(d.name):
                rec["bind"] = self.resolve_bind(sk, plan)
            queue_ = []
            for i, m in enumerate(sk.msgs):
                m = dict(m)
                how = plan.senders.get((ino, i), {})
                if "sender" in how:
                    m["sender"] = how["sender"]
                elif "temp" in how:
                    m["temp"] = how["temp"]
                queue_.append(m)
            rec["queue"] = queue_
            sks.append(rec)
        return {"sockets": sks, "inflight": self.inflight, "temps": temps, "listens": plan.listens}


# --- the restore side ------------------------------------------------------------------------


class CtWorker:
    """A thread of ours in the container's mount and network namespaces.

    unshare(CLONE_FS) gives it its own root and cwd, which setns(CLONE_NEWNS)
    then sets to the container's root; setns(CLONE_NEWNET) puts the sockets it
    makes in the container's network namespace.  Names resolve there as the
    container's tasks see them, and abstract names land in its namespace.
    Our other threads are untouched.  ``run(fn, *args)`` runs fn in it.
    """

    def __init__(self, pid: int) -> None:
        self._q: queue.Queue = queue.Queue()
        self._started = threading.Event()
        self._err: BaseException | None = None
        mnt = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
        net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._thread = threading.Thread(
            target=self._body, args=(mnt, net), name="unix-ct", daemon=True
        )
        self._thread.start()
        self._started.wait()
        if self._err is not None:
            self._thread.join()
            raise self._err

    def _body(self, mnt: int, net: int) -> None:
        try:
            libc.unshare(libc.CLONE_FS)
            libc.setns(net, libc.CLONE_NEWNET)
            libc.setns(mnt, libc.CLONE_NEWNS)
            os.chdir("/")
        except BaseException as e:  # noqa: BLE001 - re-raised by the constructor
            self._err = e
        finally:
            os.close(mnt)
            os.close(net)
            self._started.set()
        if self._err is not None:
            return
        while True:
            item = self._q.get()
            if item is None:
                return
            fn, args, box = item
            try:
                box["value"] = fn(*args)
            except BaseException as e:  # noqa: BLE001 - re-raised by run()
                box["error"] = e
            box["done"].set()

    def run(self, fn, *args):
        box: dict = {"done": threading.Event()}
        self._q.put((fn, args, box))
        box["done"].wait()
        if "error" in box:
            raise box["error"]
        return box.get("value")

    def close(self) -> None:
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join()


def _new_socket(type_: int) -> socket.socket:
    return socket.socket(socket.AF_UNIX, type_ | SOCK_NONBLOCK | SOCK_CLOEXEC)


def _split_name(name: bytes, bind: dict | None) -> tuple[bytes | None, bytes]:
    """(directory to be in, name to use) for bind/connect of a name (relative ones need their dir)."""
    if is_abstract(name) or name.startswith(b"/"):
        return None, name
    return os.fsencode((bind or {}).get("dir") or "/"), name


def _in_dir(d: bytes | None, fn, *args):
    """Run fn with the calling (worker) thread's cwd at d."""
    if d is None:
        return fn(*args)
    os.chdir(d)
    try:
        return fn(*args)
    finally:
        os.chdir("/")


def _thread_setids(cred: dict | None) -> list[int] | None:
    """Give the calling thread (only: raw syscalls) the euid/egid/groups of cred; return
    what to restore, or None when nothing changed."""
    if cred is None:
        return None
    want = sorted(set(cred.get("groups") or []))
    cur = os.getgroups()
    if cred.get("uid", 0) == 0 and cred.get("gid", 0) == 0 and want == sorted(set(cur)):
        return None
    arr = (libc.ctypes.c_uint * max(len(want), 1))(*want)
    libc.syscall(SYS_setgroups, len(want), arr)
    libc.syscall(SYS_setresgid, NO_ID, cred.get("gid", 0), NO_ID)
    libc.syscall(SYS_setresuid, NO_ID, cred.get("uid", 0), NO_ID)
    return cur


def _thread_resetids(saved: list[int]) -> None:
    libc.syscall(SYS_setresuid, NO_ID, 0, NO_ID)
    libc.syscall(SYS_setresgid, NO_ID, 0, NO_ID)
    arr = (libc.ctypes.c_uint * max(len(saved), 1))(*saved)
    libc.syscall(SYS_setgroups, len(saved), arr)


def _as_thread(cred: dict | None, fn, *args):
    saved = _thread_setids(cred)
    try:
        return fn(*args)
    finally:
        if saved is not None:
            _thread_resetids(saved)


class _Session:
    """An injector held open on one task, with its credentials switched for one actor."""

    def __init__(self, inj, host: int, area: int, key: tuple, saved) -> None:
        self.inj = inj
        self.host = host
        self.area = area
        self.key = key
        self.saved = saved  # (euid, egid, groups) to put back, or None
        self.channel = None
        self.pidfd = -1


class Actors:
    """socketpair(), listen() and connect() made by the process whose credentials the
    kernel records for them (SO_PEERCRED): injected into the container task with the
    dumped pid, its euid, egid and groups switched around the calls (its saved ids
    stay root, so it switches back); a helper cloned from init with set_tid plays a
    pid whose process is gone.  Credentials of a process outside the container (pid
    0) are played by the worker thread, which the container cannot see.

    Consecutive calls as the same actor share one injector session (opening one
    reads the task's maps, the costly part); ``flush()`` closes it, and must be
    called before anything else injects into the tasks.
    """

    def __init__(self, rctx, worker: CtWorker) -> None:
        self.rctx = rctx
        self.worker = worker
        self.tree = {t.pid: t.host_pid for t in rctx.tasks if t.host_pid}
        self.helpers: dict[int, int] = {}
        self.helpers_made: list[int] = []
        self.init_host = rctx.tasks[0].host_pid
        self.syscall_ip: dict[int, int] = {}
        self.session: _Session | None = None
        self.sessions = 0
        self.calls = 0

    def _injector(self, host: int):
        from ..sys.inject import Injector

        return Injector(host, syscall_ip=self.syscall_ip.get(host))

    def host_pid(self, nspid: int) -> int:
        """Host pid of a live task that has container pid nspid (making a helper if need be)."""
        from ..sys.inject import wait_new_child

        host = self.tree.get(nspid) or self.helpers.get(nspid)
        if host:
            return host
        self.flush()
        with self._injector(self.init_host) as inj:
            rax, child = inj.clone3(0, 17, [nspid])  # SIGCHLD
            self.syscall_ip[self.init_host] = inj.syscall_ip
        if rax != nspid or child is None:
            raise RestoreError(
                f"Can't make a helper task with pid {nspid} for unix sockets (got {rax})"
            )
        wait_new_child(child)
        self.rctx.seized.append(child)
        self.helpers[nspid] = child
        self.helpers_made.append(nspid)
        self.syscall_ip[child] = self.syscall_ip[self.init_host]  # a copy of init's memory
        return child

    def release(self) -> None:
        """Helpers exit, init reaps them (before any task is restored)."""
        self.flush()
        while self.helpers:
            nspid, h = self.helpers.popitem()
            with self._injector(h) as inj:
                inj.exit_group(0)
            self.rctx.seized.remove(h)
            with self._injector(self.init_host) as inj:
                inj.wait4(nspid, 0)

    # -- sessions ------------------------------------------------------------------------
    @staticmethod
    def _key(cred: dict) -> tuple:
        return (
            cred["pid"],
            cred.get("uid", 0),
            cred.get("gid", 0),
            tuple(sorted(set(cred.get("groups") or []))),
        )

    def _open(self, cred: dict) -> _Session:
        key = self._key(cred)
        if self.session is not None and self.session.key == key:
            return self.session
        self.flush()
        host = self.host_pid(cred["pid"])
        inj = self._injector(host)
        inj.__enter__()
        try:
            self.syscall_ip[host] = inj.syscall_ip
            area = inj.scratch(3 * PAGE)
            saved = self._task_setids(inj, host, area + 2 * PAGE + 2048, cred)
        except BaseException as e:
            inj.__exit__(type(e), e, e.__traceback__)
            raise
        self.session = _Session(inj, host, area, key, saved)
        self.sessions += 1
        return self.session

    def flush(self) -> None:
        """Close the open session: credentials back, channel closed, injector left."""
        ses, self.session = self.session, None
        if ses is None:
            return
        inj = ses.inj
        try:
            if ses.channel is not None:
                ses.channel.close()
            if ses.pidfd >= 0:
                os.close(ses.pidfd)
            if ses.saved is not None:
                euid, egid, groups = ses.saved
                inj.call(SYS_setresuid, NO_ID, euid, NO_ID)
                inj.call(SYS_setresgid, NO_ID, egid, NO_ID)
                self._setgroups(inj, ses.area + 2 * PAGE + 2048, groups)
        except BaseException as e:
            inj.__exit__(type(e), e, e.__traceback__)
            raise
        inj.__exit__(None, None, None)

    @staticmethod
    def _setgroups(inj, buf: int, groups: list[int]) -> None:
        if groups:
            inj.write(buf, struct.pack(f"={len(groups)}I", *groups))
        inj.call(SYS_setgroups, len(groups), buf if groups else 0)

    def _task_setids(self, inj, host: int, buf: int, cred: dict):
        euid, egid, groups = _status_ids(host)
        want = sorted(set(cred.get("groups") or []))
        if (
            cred.get("uid", 0) == euid
            and cred.get("gid", 0) == egid
            and want == sorted(set(groups))
        ):
            return None
        self._setgroups(inj, buf, want)
        inj.call(SYS_setresgid, NO_ID, cred.get("gid", 0), NO_ID)
        inj.call(SYS_setresuid, NO_ID, cred.get("uid", 0), NO_ID)
        return euid, egid, groups

    def _pass_in(self, ses: _Session, sock: socket.socket) -> int:
        """Our socket into the session's task: its fd there."""
        from ..restore.fdchannel import FdChannel

        if ses.channel is None:
            ses.channel = FdChannel(ses.inj, ses.area, self.rctx.stub_pid)
        return ses.channel.send([sock.fileno()])[0]

    # -- the calls -----------------------------------------------------------------------
    def socketpair(self, cred: dict | None, type_: int) -> tuple[socket.socket, socket.socket]:
        flags = type_ | SOCK_NONBLOCK | SOCK_CLOEXEC
        if cred is None or not cred.get("pid"):
            return self.worker.run(_as_thread, cred, socket.socketpair, socket.AF_UNIX, flags)
        ses = self._open(cred)
        inj = ses.inj
        buf = ses.area + 2 * PAGE
        inj.call(SYS_socketpair, AF_UNIX, flags, 0, buf)
        t0, t1 = struct.unpack("=ii", inj.read(buf, 8))
        if ses.pidfd < 0:
            ses.pidfd = os.pidfd_open(ses.host)
        a = libc.pidfd_getfd(ses.pidfd, t0)
        b = libc.pidfd_getfd(ses.pidfd, t1)
        inj.close(t0)
        inj.close(t1)
        self.calls += 1
        return socket.socket(fileno=a), socket.socket(fileno=b)

    def listen(self, cred: dict | None, sock: socket.socket, backlog: int) -> None:
        if cred is None or not cred.get("pid"):
            self.worker.run(_as_thread, cred, sock.listen, backlog)
            return
        ses = self._open(cred)
        tfd = self._pass_in(ses, sock)
        rc = ses.inj.syscall(SYS_listen, tfd, backlog)
        ses.inj.close(tfd)
        self.calls += 1
        if rc < 0:
            raise RestoreError(f"listen() on a unix socket failed: {os.strerror(-rc)}")

    def connect(
        self, cred: dict | None, sock: socket.socket, name: bytes, bind: dict | None
    ) -> None:
        d, use = _split_name(name, bind)
        if cred is None or not cred.get("pid"):
            self.worker.run(_as_thread, cred, _in_dir, d, sock.connect, use)
            return
        ses = self._open(cred)
        inj = ses.inj
        tfd = self._pass_in(ses, sock)
        buf = ses.area + 2 * PAGE
        addr = sockaddr(use)
        inj.write(buf, addr)
        if d is not None:
            inj.write(buf + 256, d + b"\0")
            inj.call(SYS_chdir, buf + 256)
        rc = inj.syscall(SYS_connect, tfd, buf, len(addr))
        if d is not None:
            inj.write(buf + 256, b"/\0")
            inj.call(SYS_chdir, buf + 256)
        inj.close(tfd)
        self.calls += 1
        if rc < 0:
            raise RestoreError(f"connect() to {show_name(name)} failed: {os.strerror(-rc)}")


BIG_SNDBUF = 1 << 28  # while refilling queues: SO_SNDBUFFORCE doubles it


def _bind_path(s: socket.socket, name: bytes, bind: dict, where: str) -> bytes | None:
    """In the worker: bind to a path name; returns the path to unlink at the end, if any."""
    d, use = _split_name(name, bind)
    path = os.path.join(d, use) if d is not None else use
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        st = None
    linked = bind.get("linked", True)
    if st is not None:
        if not linked:
            raise RestoreError(
                f"{where}: {show_name(path)} exists, but its socket file had been removed at dump"
            )
        if not stat.S_ISSOCK(st.st_mode):
            raise RestoreError(f"{where}: {show_name(path)} is no longer a socket file")
        os.unlink(path)  # the stale file of the dumped socket
    try:
        _in_dir(d, s.bind, use)
    except OSError as e:
        raise RestoreError(
            f"{where}: can't bind it to {show_name(path)} again: {e.strerror}"
        ) from e
    if not linked:
        return path
    if bind.get("mode") is not None:
        os.chown(path, bind.get("uid", 0), bind.get("gid", 0))
        os.chmod(path, stat.S_IMODE(bind["mode"]))
    return None


def _make_temp(t: dict) -> tuple[socket.socket, bytes | None]:
    """In the worker: a temporary socket bound as planned; (socket, path to unlink at the end)."""
    s = _new_socket(t["type"])
    name = t.get("name")
    how = t.get("how")
    try:
        if not name or how == "unnamed":
            return s, None
        if how == "abstract":
            s.bind(name)
            return s, None
        if how == "replace":
            bind = {
                "dir": "/",
                "linked": True,
                "mode": t.get("mode"),
                "uid": t.get("uid"),
                "gid": t.get("gid"),
            }
            _bind_path(s, name, bind, f"temporary socket {show_name(name)}")
            return s, None
        if os.path.lexists(name):
            raise RestoreError(
                f"{show_name(name)} exists: a temporary unix socket cannot be bound there"
            )
        s.bind(name)
        return s, name
    except BaseException:
        s.close()
        raise


def _send_all(parts: list, where: str) -> None:
    """In the worker: [(socket, data, ancillary, address or None)] sent in order."""
    for s, data, anc, dest in parts:
        try:
            if dest is None:
                n = s.sendmsg([data], anc, MSG_DONTWAIT | MSG_NOSIGNAL)
            else:
                n = s.sendmsg([data], anc, MSG_DONTWAIT | MSG_NOSIGNAL, dest)
        except OSError as e:
            raise RestoreError(f"{where}: refilling its queue failed: {e}") from e
        if n != len(data):
            raise RestoreError(f"{where}: refilling its queue: {n} of {len(data)} bytes went")


class UnixRestore:
    """Rebuild every unix socket of the image (see the module doc for the order)."""

    def __init__(self, rctx, rec: dict) -> None:
        self.rctx = rctx
        self.sks = {s["ino"]: s for s in rec.get("sockets") or []}
        self.inflight = {e["id"]: e for e in rec.get("inflight") or []}
        self.temps = {t["id"]: t for t in rec.get("temps") or []}
        self.listens = rec.get("listens") or []
        self.socks: dict[int, socket.socket] = {}
        self.temp_socks: dict[int, socket.socket] = {}
        self.anon: dict[int, socket.socket] = {}
        self.dead: dict[int, socket.socket] = {}  # ino -> the stand-in for its closed peer
        self.cur_peer: dict[object, int] = {}  # sender key -> ino it is connected to
        self.pending: set[int] = set()
        self.boosted: set[int] = set()
        self.unlink_after: list[bytes] = []
        self.worker: CtWorker | None = None
        self.actors: Actors | None = None
        self._files: dict[int, dict] | None = None

    # -- driver --------------------------------------------------------------------------
    def run(self) -> None:
        t0 = time.monotonic()
        self.worker = CtWorker(self.rctx.stub_pid)
        self.actors = Actors(self.rctx, self.worker)
        ok = False
        try:
            self.create()
            self.pairs()
            self.bind_all()
            self.through_listeners()
            self.dgram_connect(first=True)
            self.fill(first=True)
            self.dgram_connect(first=False)
            self.fill(first=False)
            self.close_dead()
            self.shutdowns()
            self.options()
            self.worker.run(self._unlink_all)
            ok = True
        finally:
            self.close_temps()
            try:
                self.actors.release()
            except Exception:  # noqa: BLE001 - the tree is killed on failure anyway
                if ok:
                    raise
            self.worker.close()
        log.info(
            f"\tunix sockets: {len(self.sks)} rebuilt in {(time.monotonic() - t0) * 1000:.0f} ms "
            f"({self.actors.calls} calls in {self.actors.sessions} injector sessions, "
            f"{len(self.actors.helpers_made)} helper tasks)",
            level=1,
        )

    def close(self) -> None:
        self.close_temps()
        for s in self.socks.values():
            s.close()
        self.socks.clear()

    def close_temps(self) -> None:
        for group in (self.dead, self.temp_socks, self.anon):
            for s in group.values():
                s.close()
            group.clear()

    def after_tasks(self) -> None:
        """after_tasks of the kinds of files that were only in flight (epoll sets...)."""
        for fid, entry in self.inflight.items():
            d = entry.get("detail") or {}
            if d.get("_type") != "unix_file" and fid in self.rctx.file_fds:
                kind_for_detail(d).after_tasks(self.rctx, entry)

    # -- steps ---------------------------------------------------------------------------
    def create(self) -> None:
        accepted = set()
        for plan in self.listens:
            for c in plan.get("conns") or []:
                if c.get("accepted"):
                    accepted.add(c["accepted"])
                elif not c.get("accepted_temp"):
                    self.pending.add(c["client"])
        for ino, sk in sorted(self.sks.items()):
            if sk.get("make") == "pair" or ino in accepted:
                continue
            self.socks[ino] = self.worker.run(_new_socket, sk["type"])

    def pairs(self) -> None:
        # Grouped by creator: one injector session each.
        def creator(item):
            c = item[1].get("peercred") or {}
            return (c.get("pid", 0), c.get("uid", 0), c.get("gid", 0), item[0])

        for ino, sk in sorted(self.sks.items(), key=creator):
            if sk.get("make") != "pair":
                continue
            other = sk.get("pair") or 0
            if other and other < ino:
                continue
            a, b = self.actors.socketpair(sk.get("peercred"), sk["type"])
            self.socks[ino] = a
            if other:
                self.socks[other] = b
                self.cur_peer[ino], self.cur_peer[other] = other, ino
            else:
                self.dead[ino] = b
                self.cur_peer[ino] = 0
                self.cur_peer[("dead", ino)] = ino

    def bind_all(self) -> None:
        for ino, sk in sorted(self.sks.items()):
            if not sk.get("bound") or ino not in self.socks:
                continue
            s, name = self.socks[ino], sk["name"]
            if is_abstract(name):
                try:
                    self.worker.run(s.bind, name)
                except OSError as e:
                    raise RestoreError(
                        f"{sk.get('where')}: can't bind it to {show_name(name)} again: {e.strerror}"
                    ) from e
                continue
            path = self.worker.run(_bind_path, s, name, sk.get("bind") or {}, sk.get("where", ""))
            if path is not None:
                self.unlink_after.append(path)

    def temp_sock(self, tid: int) -> socket.socket:
        s = self.temp_socks.get(tid)
        if s is None:
            s, path = self.worker.run(_make_temp, self.temps[tid])
            self.temp_socks[tid] = s
            if path is not None:
                self.unlink_after.append(path)
        return s

    def anon_sock(self, type_: int) -> socket.socket:
        s = self.anon.get(type_)
        if s is None:
            s = self.anon[type_] = self.worker.run(_new_socket, type_)
        return s

    def through_listeners(self) -> None:
        for plan in self.listens:
            live = plan.get("listener")
            if live:
                lsk = self.sks[live]
                lst = self.socks[live]
                backlog = lsk.get("backlog") or 0
                target = (lsk["name"], lsk.get("bind"))
                own = lsk.get("peercred")
            else:
                t = self.temps[plan["temp"]]
                lst = self.temp_sock(t["id"])
                backlog = 1 + len(plan.get("conns") or [])
                target = (t["name"], None)
                own = None
            current: object = "unset"
            for conn in plan.get("conns") or []:
                want = conn.get("listen_cred")
                if current == "unset" or (want is not None and want != current):
                    who = want if want is not None else own
                    self.actors.listen(who, lst, backlog)
                    current = who
                if conn.get("client"):
                    client = self.socks[conn["client"]]
                else:
                    t = self.temps.get(conn.get("client_temp")) or {
                        "type": self.sks[conn["accepted"]]["type"]
                    }
                    client, path = self.worker.run(_make_temp, t)
                    if path is not None:
                        self.unlink_after.append(path)
                    self.dead[conn["accepted"]] = client
                self.actors.connect(conn.get("connector"), client, *target)
                if conn.get("accepted") or conn.get("accepted_temp"):
                    try:
                        acc, _addr = lst.accept()
                    except BlockingIOError as e:
                        raise RestoreError(
                            f"a connection to {show_name(target[0])} made again did not reach its accept queue"
                        ) from e
                    if conn.get("accepted"):
                        self.socks[conn["accepted"]] = acc
                    else:
                        self.dead[conn["client"]] = acc
            if live and (current == "unset" or current != own):
                self.actors.listen(own, lst, backlog)

    def dgram_connect(self, first: bool) -> None:
        for ino, sk in sorted(self.sks.items()):
            peer = sk.get("peer")
            if sk["type"] != SOCK_DGRAM or peer is None:
                continue
            if ((sk.get("dgram_prefix") or 0) == 0) != first:
                continue
            if sk.get("make") == "pair" and (sk.get("pair") or 0) == peer:
                continue  # a socketpair is connected from birth
            if peer == 0:
                if "peer_temp" not in sk or sk["peer_temp"] is None:
                    continue
                t = self.temps[sk["peer_temp"]]
                self.temp_sock(t["id"])
                self.worker.run(_in_dir, None, self.socks[ino].connect, t["name"])
            else:
                p = self.sks[peer]
                d, use = _split_name(p["name"], p.get("bind"))
                self.worker.run(_in_dir, d, self.socks[ino].connect, use)
            self.cur_peer[ino] = peer

    def file_fd(self, fid: int) -> int:
        fd = self.rctx.file_fds.get(fid)
        if fd is not None:
            return fd
        if self._files is None:
            files = self.rctx.img.read("files") if self.rctx.img.has("files") else {"entries": []}
            self._files = {e["id"]: e for e in files.get("entries") or []}
        entry = self._files.get(fid) or self.inflight.get(fid)
        if entry is None:
            raise RestoreError(
                f"a message in a unix socket queue passes file {fid}, which the image lacks"
            )
        d = entry.get("detail") or {}
        if d.get("_type") == "unix_file":
            return self.socks[d["ino"]].fileno()
        fd = kind_for_detail(d).restore(self.rctx, entry)
        self.rctx.file_fds[fid] = fd
        return fd

    def sender(self, ino: int, sk: dict, m: dict, from_peer: bool) -> tuple[socket.socket, object]:
        """(socket that sends m again, its key for cur_peer)."""
        if sk["type"] != SOCK_DGRAM:
            peer = sk.get("peer")
            if peer:
                return self.socks[peer], peer
            return self.dead[ino], ("dead", ino)
        if m.get("sender"):
            return self.socks[m["sender"]], m["sender"]
        if m.get("temp"):
            return self.temp_sock(m["temp"]), ("temp", m["temp"])
        if from_peer:
            other = sk.get("pair") or 0
            if other:
                return self.socks[other], other
            return self.dead[ino], ("dead", ino)
        return self.anon_sock(SOCK_DGRAM), ("anon",)

    def fill(self, first: bool) -> None:
        for ino, sk in sorted(self.sks.items()):
            q = sk.get("queue") or []
            if not q:
                continue
            n = (sk.get("dgram_prefix") or 0) if sk["type"] == SOCK_DGRAM else 0
            todo = list(enumerate(q))[:n] if first else list(enumerate(q))[n:]
            if not todo:
                continue
            parts = []
            for i, m in todo:
                s, key = self.sender(ino, sk, m, i >= n and sk.get("peer") is not None)
                if id(s) not in self.boosted:
                    s.setsockopt(SOL_SOCKET, SO_SNDBUFFORCE, BIG_SNDBUF)
                    self.boosted.add(id(s))
                dest = None
                if sk["type"] == SOCK_DGRAM and self.cur_peer.get(key) != ino:
                    if not sk.get("name"):
                        raise RestoreError(
                            f"{sk.get('where')}: no way to send its queued datagrams again"
                        )
                    d, use = _split_name(sk["name"], sk.get("bind"))
                    dest = use if d is None else os.path.join(d, use)
                creds = []
                c = m.get("creds")
                if c is not None:
                    host = self.actors.host_pid(c["pid"]) if c.get("pid") else os.getpid()
                    creds = [
                        (SOL_SOCKET, SCM_CREDENTIALS, struct.pack("=iII", host, c["uid"], c["gid"]))
                    ]
                rights = []
                if m.get("fds"):
                    fds = [self.file_fd(f) for f in m["fds"]]
                    rights = [(SOL_SOCKET, SCM_RIGHTS, array.array("i", fds))]
                data = m.get("data") or b""
                if rights and sk["type"] == SOCK_STREAM and len(data) > 1:
                    # The files go with the last byte of the run (see the module doc).
                    parts.append((s, data[:-1], creds, dest))
                    parts.append((s, data[-1:], creds + rights, dest))
                else:
                    parts.append((s, data, creds + rights, dest))
            self.worker.run(_send_all, parts, sk.get("where", f"socket:[{ino}]"))

    def close_dead(self) -> None:
        for ino, stand_in in list(self.dead.items()):
            sk = self.sks[ino]
            if sk.get("error") and sk["type"] != SOCK_DGRAM:
                # The peer closed with data unread: that is what set ECONNRESET.
                self.socks[ino].send(b"\0", MSG_DONTWAIT | MSG_NOSIGNAL)
            stand_in.close()
            del self.dead[ino]

    def shutdowns(self) -> None:
        for ino, sk in sorted(self.sks.items()):
            bits = sk.get("shutdown") or 0
            if not bits:
                continue
            if sk["type"] != SOCK_DGRAM and sk.get("peer") == 0 and ino not in self.pending:
                continue  # its peer's close() set them
            self.socks[ino].shutdown(shutdown_how(bits))

    def options(self) -> None:
        for ino, sk in sorted(self.sks.items()):
            s = self.socks[ino]
            fd = s.fileno()
            opts = dict(sk.get("opts") or {})
            write_opts(fd, opts)
            st = os.fstat(fd)
            uid, gid = sk.get("owner_uid"), sk.get("owner_gid")
            if uid is not None and (st.st_uid, st.st_gid) != (uid, gid):
                os.fchown(fd, uid, gid)
            if sk.get("mode") is not None and stat.S_IMODE(st.st_mode) != stat.S_IMODE(sk["mode"]):
                os.fchmod(fd, stat.S_IMODE(sk["mode"]))
            if sk.get("flags") is not None:
                _set_status_flags(fd, sk["flags"])

    def _unlink_all(self) -> None:
        for path in self.unlink_after:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.unlink_after.clear()


# --- registration ----------------------------------------------------------------------------


class UnixResource(base.CtResource):
    name = "unix"
    order = 60

    def dump(self, ctx) -> None:
        st = ctx.extra.get("unix")
        if st is not None and st.socks:
            UnixDump(ctx, st).run()

    def restore_tree(self, rctx) -> None:
        if not rctx.img.has("unix_sockets"):
            return
        ur = UnixRestore(rctx, rctx.img.read("unix_sockets"))
        rctx.extra["unix"] = ur
        ur.run()

    def restore_late(self, rctx) -> None:
        ur = rctx.extra.get("unix")
        if ur is not None:
            ur.after_tasks()
            ur.close()

    def cleanup(self, rctx) -> None:
        ur = rctx.extra.get("unix")
        if ur is not None:
            ur.close()


register_fd_kind(UnixKind())
UNIX_RESOURCE = base.register_ct_resource(UnixResource())
