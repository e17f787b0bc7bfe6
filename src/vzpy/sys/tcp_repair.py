"""TCP repair: save a live TCP connection and rebuild it elsewhere (our "soccr").

A connection is dumped from a *copy* of the owner's fd (``pidfd_getfd``): repair
mode belongs to the socket, not the fd, so switching the copy puts the owner's
socket in repair mode too (kernel-notes §4).  The owner must be frozen and its
network namespace locked (``vzpy.sys.netlock``) for the whole dump: a segment
that arrives while the numbers are read makes them disagree (we check), and one
that arrives while no socket exists is answered with RST, which kills the
connection at the peer.

Dump (``dump_tcp``), in this order:

1. ``TCP_INFO`` first, without repair: an unsupported state is refused before
   the socket is touched.
2. Read the app-visible socket options *before* ``TCP_REPAIR=1``: repair mode
   overwrites ``sk_reuse`` (SO_REUSEADDR reads 2) and leaving it resets it to 0.
3. ``TCP_REPAIR=1``.  From here on the owner's recv() fails with EPERM and its
   send() with EINVAL, or lands in the queue being read: it must be frozen.
   Every failure below leaves repair mode again.
4. ``SIOCOUTQ`` (unacked + unsent), ``SIOCOUTQNSD`` (unsent), ``SIOCINQ``.
   In a state where our FIN is queued both counts include the FIN: drop it.
5. ``TCP_MAXSEG`` (in repair mode it returns ``mss_clamp``), wscale and option
   bits from ``TCP_INFO``, ``TCP_TIMESTAMP`` (an opaque u32 whose low bit is the
   usec-timestamp flag), ``TCP_REPAIR_WINDOW`` (5×u32).
6. For each queue: ``TCP_REPAIR_QUEUE=q``, ``TCP_QUEUE_SEQ`` (RECV gives
   rcv_nxt, SEND gives write_seq), then ``recv(len+1, MSG_PEEK|MSG_DONTWAIT)``
   which must return exactly ``len`` bytes.  The sequence is read again
   afterwards: a change means the namespace was not locked.
7. The socket is *left in repair mode*: the caller SIGKILLs the owner and then
   closes the copy; the last close of a socket in repair mode sends no RST
   (``tcp_disconnect`` skips the reset when ``tp->repair``).  If the
   checkpoint is abandoned instead, ``leave_repair(copy, state)``.

Restore (``restore_tcp``), in the calling thread's network namespace; the order
is forced by the kernel (net/ipv4/tcp.c, do_tcp_setsockopt):

1. ``socket()``, ``TCP_REPAIR=1`` (sets ``SK_FORCE_REUSE``, so bind() may share
   the port with a restored listener: do *not* set SO_REUSEADDR here, that
   lowers sk_reuse to "can reuse" and bind() next to a listener fails with
   EADDRINUSE, verified on 6.18).  Options that
   only act before bind()/connect() (SO_BINDTODEVICE, IPV6_V6ONLY, SO_MARK…)
   and the send/receive buffer sizes needed to hold both queues.
2. ``TCP_QUEUE_SEQ`` for RECV = ``inq_seq - inq_len`` and SEND =
   ``outq_seq - outq_len`` (minus our/their FIN, see below): only allowed
   while the socket is TCP_CLOSE, i.e. before connect.
3. ``bind(local)``, ``connect(remote)``: in repair mode no SYN is sent and the
   socket goes straight to ESTABLISHED.
4. ``TCP_REPAIR_OPTIONS``: ``{u32 code, u32 val}`` pairs, MSS(2)=mss_clamp,
   WINDOW(3)=snd_wscale | rcv_wscale<<16, SACK_PERM(4), TIMESTAMP(8).  Only
   accepted in ESTABLISHED before any data is queued.
5. ``TCP_TIMESTAMP`` = the dumped value (sets ``tsoffset``).
6. ``TCP_REPAIR_QUEUE=RECV`` + send(inq): goes straight to the receive queue.
   ``TCP_REPAIR_QUEUE=SEND`` + send(the sent-but-unacked part of outq): queued
   and marked as sent, retransmitted by the RTO timer if the peer lost it.
7. ``TCP_REPAIR_QUEUE=NO``, then ``TCP_REPAIR_WINDOW``.  The kernel refuses an
   rcv_wup after the *current* rcv_nxt: while the peer's FIN is still to be
   replayed, the window goes in with its left edge one back, and is set again
   exactly after the replay.
8. ``TCP_REPAIR=0``: sends a window probe, which makes the peer answer with
   its current ACK and window.  Then SO_REUSEADDR (reset by leaving repair).
9. ``send()`` the never-sent tail normally.

Half-closed connections are restored as ESTABLISHED with the FINs taken out of
the sequence numbers, then the FINs are replayed in the order they happened:
our FIN with ``shutdown(SHUT_WR)`` (under ``TCP_REPAIR_QUEUE=SEND`` it is
queued as already sent), the peer's FIN (and, in FIN_WAIT2, the peer's ACK of
ours) as a segment forged on a raw socket and delivered to the new socket over
loopback.  If our FIN had not been sent yet (data ahead of it was unsent),
everything FIN-related happens after step 9 instead, with a plain shutdown().
The facts come from CRIU's soccr.c; the code is ours.

The u32 gotcha: sequence numbers, timestamps and marks are u32 and often
>= 2**31.  ``socket.setsockopt(level, opt, int)`` converts to a C int and raises
TypeError for them ("a bytes-like object is required"), and
``getsockopt(level, opt)`` returns them negative.
Every value here goes through ``struct.pack``/``unpack`` with an explicit format.

Not carried: out-of-order queue (the peer retransmits it: SACKed data is only
advisory), urgent data, ECN negotiation, SHUT_RD without a FIN, TCP-MD5/AO keys.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import ipaddress
import socket
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from vzpy.errors import KernelError, UnsupportedError

# --- constants (include/uapi/linux/tcp.h, asm-generic/socket.h, sockios.h) -----
SOL_IP = 0
SOL_SOCKET = 1
SOL_TCP = 6
SOL_IPV6 = 41

TCP_NODELAY = 1
TCP_MAXSEG = 2
TCP_CORK = 3
TCP_KEEPIDLE = 4
TCP_KEEPINTVL = 5
TCP_KEEPCNT = 6
TCP_LINGER2 = 8
TCP_DEFER_ACCEPT = 9
TCP_WINDOW_CLAMP = 10
TCP_INFO = 11
TCP_CONGESTION = 13
TCP_THIN_LINEAR_TIMEOUTS = 16
TCP_USER_TIMEOUT = 18
TCP_REPAIR = 19
TCP_REPAIR_QUEUE = 20
TCP_QUEUE_SEQ = 21
TCP_REPAIR_OPTIONS = 22
TCP_FASTOPEN = 23
TCP_TIMESTAMP = 24
TCP_NOTSENT_LOWAT = 25
TCP_REPAIR_WINDOW = 29

TCP_REPAIR_ON = 1
TCP_REPAIR_OFF = 0
TCP_REPAIR_OFF_NO_WP = -1  # leave repair mode without sending a window probe (4.11+)

TCP_NO_QUEUE = 0
TCP_RECV_QUEUE = 1
TCP_SEND_QUEUE = 2

TCPOPT_MSS = 2
TCPOPT_WINDOW = 3
TCPOPT_SACK_PERM = 4
TCPOPT_TIMESTAMP = 8

TCPI_OPT_TIMESTAMPS = 1
TCPI_OPT_SACK = 2
TCPI_OPT_WSCALE = 4
TCPI_OPT_ECN = 8
TCPI_OPT_USEC_TS = 64

SO_REUSEADDR = 2
SO_DONTROUTE = 5
SO_SNDBUF = 7
SO_RCVBUF = 8
SO_KEEPALIVE = 9
SO_OOBINLINE = 10
SO_PRIORITY = 12
SO_LINGER = 13
SO_REUSEPORT = 15
SO_RCVLOWAT = 18
SO_RCVTIMEO = 20  # SO_RCVTIMEO_OLD: 64-bit timeval on x86_64
SO_SNDTIMEO = 21
SO_BINDTODEVICE = 25
SO_ACCEPTCONN = 30
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SO_MARK = 36
SO_ZEROCOPY = 60
SO_BUF_LOCK = 72  # 5.14+: sk_userlocks & (SOCK_SNDBUF_LOCK | SOCK_RCVBUF_LOCK)
SOCK_SNDBUF_LOCK = 1
SOCK_RCVBUF_LOCK = 2

IP_TOS = 1
IP_TTL = 2
IP_MTU_DISCOVER = 10
IP_RECVERR = 11
IP_FREEBIND = 15
IP_TRANSPARENT = 19

IPV6_UNICAST_HOPS = 16
IPV6_MTU_DISCOVER = 23
IPV6_RECVERR = 25
IPV6_V6ONLY = 26
IPV6_TCLASS = 67
IPV6_TRANSPARENT = 75
IPV6_FREEBIND = 78

SIOCOUTQ = 0x5411  # TIOCOUTQ: write_seq - snd_una
SIOCINQ = 0x541B  # FIONREAD: rcv_nxt - copied_seq (a received FIN excluded)
SIOCOUTQNSD = 0x894B  # write_seq - snd_nxt

# tcp_states.h
TCP_ESTABLISHED = 1
TCP_SYN_SENT = 2
TCP_SYN_RECV = 3
TCP_FIN_WAIT1 = 4
TCP_FIN_WAIT2 = 5
TCP_TIME_WAIT = 6
TCP_CLOSE = 7
TCP_CLOSE_WAIT = 8
TCP_LAST_ACK = 9
TCP_LISTEN = 10
TCP_CLOSING = 11

STATE_NAMES = {
    TCP_ESTABLISHED: "ESTABLISHED",
    TCP_SYN_SENT: "SYN_SENT",
    TCP_SYN_RECV: "SYN_RECV",
    TCP_FIN_WAIT1: "FIN_WAIT1",
    TCP_FIN_WAIT2: "FIN_WAIT2",
    TCP_TIME_WAIT: "TIME_WAIT",
    TCP_CLOSE: "CLOSE",
    TCP_CLOSE_WAIT: "CLOSE_WAIT",
    TCP_LAST_ACK: "LAST_ACK",
    TCP_LISTEN: "LISTEN",
    TCP_CLOSING: "CLOSING",
}

# States in which our FIN is in the write queue / the peer's FIN is in rcv_nxt.
SND_FIN_STATES = frozenset({TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSING, TCP_LAST_ACK})
RCV_FIN_STATES = frozenset({TCP_CLOSE_WAIT, TCP_LAST_ACK, TCP_CLOSING})
REPAIRABLE_STATES = frozenset({TCP_ESTABLISHED}) | SND_FIN_STATES | RCV_FIN_STATES

TCP_STATE_FORMAT = 1  # bump when the meaning of a key changes; keys are only added

_FIN_WAIT_TIMEOUT = 2.0  # seconds to wait for a forged segment to be processed


# --- errors ----------------------------------------------------------------------
class TcpRepairError(KernelError):
    """A TCP repair step failed; ``phase`` names the step, ``errno`` the cause."""


class TcpRepairUnsupported(UnsupportedError, ValueError):
    """The socket is in a state this module cannot checkpoint."""


# --- kernel structs ----------------------------------------------------------------
class TcpRepairWindow(ctypes.Structure):
    """struct tcp_repair_window (uapi/linux/tcp.h)::

    struct tcp_repair_window {
        __u32   snd_wl1;
        __u32   snd_wnd;
        __u32   max_window;
        __u32   rcv_wnd;
        __u32   rcv_wup;
    };
    """

    _fields_ = [
        ("snd_wl1", ctypes.c_uint32),
        ("snd_wnd", ctypes.c_uint32),
        ("max_window", ctypes.c_uint32),
        ("rcv_wnd", ctypes.c_uint32),
        ("rcv_wup", ctypes.c_uint32),
    ]


class TcpRepairOpt(ctypes.Structure):
    """struct tcp_repair_opt (uapi/linux/tcp.h)::

    struct tcp_repair_opt {
        __u32   opt_code;
        __u32   opt_val;
    };
    """

    _fields_ = [("opt_code", ctypes.c_uint32), ("opt_val", ctypes.c_uint32)]


class TcpInfoHead(ctypes.Structure):
    """The first 32 bytes of struct tcp_info (uapi/linux/tcp.h)::

    struct tcp_info {
        __u8    tcpi_state;
        __u8    tcpi_ca_state;
        __u8    tcpi_retransmits;
        __u8    tcpi_probes;
        __u8    tcpi_backoff;
        __u8    tcpi_options;
        __u8    tcpi_snd_wscale : 4, tcpi_rcv_wscale : 4;
        __u8    tcpi_delivery_rate_app_limited:1, tcpi_fastopen_client_fail:2;
        __u32   tcpi_rto;
        __u32   tcpi_ato;
        __u32   tcpi_snd_mss;
        __u32   tcpi_rcv_mss;
        __u32   tcpi_unacked;   /* LISTEN: accept queue length (sk_ack_backlog) */
        __u32   tcpi_sacked;    /* LISTEN: listen() backlog (sk_max_ack_backlog) */
        ...
    };

    Bitfields are allocated from the low bit on x86: snd_wscale is the low nibble.
    """

    _fields_ = [
        ("tcpi_state", ctypes.c_uint8),
        ("tcpi_ca_state", ctypes.c_uint8),
        ("tcpi_retransmits", ctypes.c_uint8),
        ("tcpi_probes", ctypes.c_uint8),
        ("tcpi_backoff", ctypes.c_uint8),
        ("tcpi_options", ctypes.c_uint8),
        ("tcpi_wscale", ctypes.c_uint8),
        ("tcpi_flags", ctypes.c_uint8),
        ("tcpi_rto", ctypes.c_uint32),
        ("tcpi_ato", ctypes.c_uint32),
        ("tcpi_snd_mss", ctypes.c_uint32),
        ("tcpi_rcv_mss", ctypes.c_uint32),
        ("tcpi_unacked", ctypes.c_uint32),
        ("tcpi_sacked", ctypes.c_uint32),
    ]

    @property
    def snd_wscale(self) -> int:
        return self.tcpi_wscale & 0xF

    @property
    def rcv_wscale(self) -> int:
        return self.tcpi_wscale >> 4


# --- packing helpers (the u32 gotcha) ------------------------------------------------
def u32(value: int) -> int:
    """Reduce a sequence-number expression modulo 2**32."""
    return value & 0xFFFFFFFF


def pack_u32(value: int) -> bytes:
    return struct.pack("=I", u32(value))


def pack_int(value: int) -> bytes:
    return struct.pack("=i", value)


def pack_repair_window(win: dict) -> bytes:
    w = TcpRepairWindow(*(u32(win[k]) for k, _ in TcpRepairWindow._fields_))
    return bytes(w)


def unpack_repair_window(raw: bytes) -> dict:
    w = TcpRepairWindow.from_buffer_copy(raw[: ctypes.sizeof(TcpRepairWindow)])
    return {k: getattr(w, k) for k, _ in TcpRepairWindow._fields_}


def pack_repair_options(tcpi_options: int, mss: int, snd_wscale: int, rcv_wscale: int) -> bytes:
    """The TCP_REPAIR_OPTIONS array for what the connection negotiated."""
    opts = [(TCPOPT_MSS, mss)]
    if tcpi_options & TCPI_OPT_WSCALE:
        opts.append((TCPOPT_WINDOW, snd_wscale | (rcv_wscale << 16)))
    if tcpi_options & TCPI_OPT_SACK:
        opts.append((TCPOPT_SACK_PERM, 0))
    if tcpi_options & TCPI_OPT_TIMESTAMPS:
        opts.append((TCPOPT_TIMESTAMP, 0))
    return b"".join(bytes(TcpRepairOpt(code, u32(val))) for code, val in opts)


def parse_tcp_info(raw: bytes) -> TcpInfoHead:
    if len(raw) < ctypes.sizeof(TcpInfoHead):
        raise ValueError(f"tcp_info too short: {len(raw)} bytes")
    return TcpInfoHead.from_buffer_copy(raw[: ctypes.sizeof(TcpInfoHead)])


# --- FIN replay plan (pure, unit-tested) ----------------------------------------------
FIN_SHUTDOWN = "shutdown"  # our FIN: shutdown(SHUT_WR)
FIN_PEER = "peer_fin"  # the peer's FIN: forged FIN|ACK at rcv_nxt
FIN_PEER_ACK = "peer_ack"  # the peer's ACK of our FIN: forged ACK (FIN_WAIT2)


def seq_adjust(state: int) -> tuple[int, int]:
    """How many FINs to take out of (inq_seq, outq_seq) to restore as ESTABLISHED."""
    return (1 if state in RCV_FIN_STATES else 0, 1 if state in SND_FIN_STATES else 0)


def fin_plan(state: int, fin_unsent: bool) -> tuple[list[str], bool]:
    """The FIN events to replay on a socket restored as ESTABLISHED, in order.

    Returns (steps, in_repair).  ``in_repair`` is True when they are replayed in
    repair mode, before leaving it (our FIN had been sent: it is queued as sent);
    False when our FIN was still unsent behind unsent data, so it must go after
    the unsent tail, once repair mode is left.

    FIN_WAIT1/FIN_WAIT2/CLOSING: we closed first; CLOSE_WAIT/LAST_ACK: the peer
    did.  CLOSING = our FIN, then theirs before ours was acked.
    """
    if state == TCP_ESTABLISHED:
        return [], True
    if state not in REPAIRABLE_STATES:
        raise TcpRepairUnsupported(
            f"TCP socket in state {STATE_NAMES.get(state, state)} cannot be checkpointed yet"
        )
    steps: list[str] = []
    we_first = state in (TCP_FIN_WAIT1, TCP_FIN_WAIT2, TCP_CLOSING)
    if state in SND_FIN_STATES and we_first:
        steps.append(FIN_SHUTDOWN)
    if state in RCV_FIN_STATES:
        steps.append(FIN_PEER)
    if state in SND_FIN_STATES and not we_first:
        steps.append(FIN_SHUTDOWN)
    if state == TCP_FIN_WAIT2:
        steps.append(FIN_PEER_ACK)
    return steps, not (fin_unsent and state in SND_FIN_STATES)


# --- forged segments ----------------------------------------------------------------
def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


TH_FIN = 0x01
TH_ACK = 0x10


def build_segment(
    src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, window: int
) -> tuple[int, bytes]:
    """An IP packet carrying one bare TCP segment; returns (family, packet).

    IPv4-mapped IPv6 addresses give an IPv4 packet (that is what is on the wire).
    The IPv4 header checksum and total length are filled in by the kernel
    (raw(7), IP_HDRINCL); the TCP checksum and the IPv6 header are ours.
    """
    sa, da = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if sa.version == 6 and sa.ipv4_mapped is not None:
        sa, da = sa.ipv4_mapped, da.ipv4_mapped  # type: ignore[union-attr]
    win = min(window, 0xFFFF)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, u32(seq), u32(ack), 5 << 4, flags, win, 0, 0)
    if sa.version == 4:
        pseudo = sa.packed + da.packed + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0,
            sa.packed, da.packed,
        )  # fmt: skip
        return socket.AF_INET, ip + tcp
    pseudo = sa.packed + da.packed + struct.pack("!IxxxB", len(tcp), socket.IPPROTO_TCP)
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!IHBB", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64) + sa.packed + da.packed
    return socket.AF_INET6, ip + tcp


def _send_forged(st: dict, seq: int, ack: int, flags: int) -> None:
    """Deliver a segment "from the peer" to our restored socket.

    Sent on a raw socket in the calling thread's netns to our own local address:
    it is routed over loopback, so it passes the network lock (which accepts
    loopback) and skips rp_filter.  Carries no TCP options: with timestamps
    negotiated Linux still accepts a segment without one (no PAWS check).
    """
    fam, pkt = build_segment(
        st["dst_addr"], st["src_addr"], st["dst_port"], st["src_port"], seq, ack, flags,
        st["window"]["snd_wnd"] >> st["snd_wscale"],
    )  # fmt: skip
    local = st["src_addr"]
    if fam == socket.AF_INET and ":" in local:
        local = str(ipaddress.ip_address(local).ipv4_mapped)  # type: ignore[union-attr]
    with socket.socket(fam, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
        raw.sendto(pkt, (local, 0))


def _wait_state(sock: socket.socket, want: int) -> None:
    deadline = time.monotonic() + _FIN_WAIT_TIMEOUT
    while True:
        got = tcp_state(sock)
        if got == want:
            return
        if time.monotonic() > deadline:
            raise TcpRepairError(
                f"replaying a FIN: socket stayed {STATE_NAMES.get(got, got)}, "
                f"expected {STATE_NAMES[want]}",
                phase="restore",
            )
        time.sleep(0.0005)


# --- socket option helpers ------------------------------------------------------------
@contextmanager
def _step(what: str, phase: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise TcpRepairError(
            f"TCP repair {phase}: {what}: {e.strerror or e}", errno=e.errno or 0, phase=phase
        ) from e


def _setopt(sock: socket.socket, level: int, opt: int, raw: bytes) -> None:
    sock.setsockopt(level, opt, raw)


def _get_u32(sock: socket.socket, level: int, opt: int) -> int:
    return struct.unpack("=I", sock.getsockopt(level, opt, 4))[0]


def _ioctl_int(sock: socket.socket, req: int) -> int:
    buf = bytearray(4)
    fcntl.ioctl(sock.fileno(), req, buf)
    return struct.unpack("=i", buf)[0]


def tcp_info(sock: socket.socket) -> TcpInfoHead:
    return parse_tcp_info(sock.getsockopt(SOL_TCP, TCP_INFO, 256))


def tcp_state(sock: socket.socket) -> int:
    return sock.getsockopt(SOL_TCP, TCP_INFO, 1)[0]


# name -> (level, optname, struct format or "str", families, phase)
#   phase "pre": must be set before bind()/connect(); "post": any time, we set it
#   in repair mode before leaving it; "reuse": after leaving repair mode.
_AF_BOTH = (socket.AF_INET, socket.AF_INET6)
_AF6 = (socket.AF_INET6,)
SOCKOPTS: dict[str, tuple[int, int, str, tuple[int, ...], str]] = {
    "SO_BINDTODEVICE": (SOL_SOCKET, SO_BINDTODEVICE, "str", _AF_BOTH, "pre"),
    "SO_REUSEPORT": (SOL_SOCKET, SO_REUSEPORT, "i", _AF_BOTH, "pre"),
    "SO_MARK": (SOL_SOCKET, SO_MARK, "I", _AF_BOTH, "pre"),
    "IP_FREEBIND": (SOL_IP, IP_FREEBIND, "i", _AF_BOTH, "pre"),
    "IP_TRANSPARENT": (SOL_IP, IP_TRANSPARENT, "i", _AF_BOTH, "pre"),
    "IPV6_V6ONLY": (SOL_IPV6, IPV6_V6ONLY, "i", _AF6, "pre"),
    "IPV6_FREEBIND": (SOL_IPV6, IPV6_FREEBIND, "i", _AF6, "pre"),
    "IPV6_TRANSPARENT": (SOL_IPV6, IPV6_TRANSPARENT, "i", _AF6, "pre"),
    # IP_TOS first: setting it also sets sk_priority (rt_tos2priority), which
    # SO_PRIORITY must then override.
    "IP_TOS": (SOL_IP, IP_TOS, "i", _AF_BOTH, "post"),
    "SO_KEEPALIVE": (SOL_SOCKET, SO_KEEPALIVE, "i", _AF_BOTH, "post"),
    "SO_OOBINLINE": (SOL_SOCKET, SO_OOBINLINE, "i", _AF_BOTH, "post"),
    "SO_DONTROUTE": (SOL_SOCKET, SO_DONTROUTE, "i", _AF_BOTH, "post"),
    "SO_PRIORITY": (SOL_SOCKET, SO_PRIORITY, "i", _AF_BOTH, "post"),
    "SO_RCVLOWAT": (SOL_SOCKET, SO_RCVLOWAT, "i", _AF_BOTH, "post"),
    "SO_LINGER": (SOL_SOCKET, SO_LINGER, "ii", _AF_BOTH, "post"),
    "SO_RCVTIMEO": (SOL_SOCKET, SO_RCVTIMEO, "qq", _AF_BOTH, "post"),
    "SO_SNDTIMEO": (SOL_SOCKET, SO_SNDTIMEO, "qq", _AF_BOTH, "post"),
    "SO_ZEROCOPY": (SOL_SOCKET, SO_ZEROCOPY, "i", _AF_BOTH, "post"),
    "TCP_NODELAY": (SOL_TCP, TCP_NODELAY, "i", _AF_BOTH, "post"),
    "TCP_CORK": (SOL_TCP, TCP_CORK, "i", _AF_BOTH, "post"),
    "TCP_KEEPIDLE": (SOL_TCP, TCP_KEEPIDLE, "i", _AF_BOTH, "post"),
    "TCP_KEEPINTVL": (SOL_TCP, TCP_KEEPINTVL, "i", _AF_BOTH, "post"),
    "TCP_KEEPCNT": (SOL_TCP, TCP_KEEPCNT, "i", _AF_BOTH, "post"),
    "TCP_LINGER2": (SOL_TCP, TCP_LINGER2, "i", _AF_BOTH, "post"),
    "TCP_USER_TIMEOUT": (SOL_TCP, TCP_USER_TIMEOUT, "I", _AF_BOTH, "post"),
    "TCP_NOTSENT_LOWAT": (SOL_TCP, TCP_NOTSENT_LOWAT, "I", _AF_BOTH, "post"),
    "TCP_THIN_LINEAR_TIMEOUTS": (SOL_TCP, TCP_THIN_LINEAR_TIMEOUTS, "i", _AF_BOTH, "post"),
    "TCP_CONGESTION": (SOL_TCP, TCP_CONGESTION, "str", _AF_BOTH, "post"),
    "IP_TTL": (SOL_IP, IP_TTL, "i", _AF_BOTH, "post"),
    "IP_MTU_DISCOVER": (SOL_IP, IP_MTU_DISCOVER, "i", _AF_BOTH, "post"),
    "IP_RECVERR": (SOL_IP, IP_RECVERR, "i", _AF_BOTH, "post"),
    "IPV6_TCLASS": (SOL_IPV6, IPV6_TCLASS, "i", _AF6, "post"),
    "IPV6_UNICAST_HOPS": (SOL_IPV6, IPV6_UNICAST_HOPS, "i", _AF6, "post"),
    "IPV6_MTU_DISCOVER": (SOL_IPV6, IPV6_MTU_DISCOVER, "i", _AF6, "post"),
    "IPV6_RECVERR": (SOL_IPV6, IPV6_RECVERR, "i", _AF6, "post"),
    "SO_REUSEADDR": (SOL_SOCKET, SO_REUSEADDR, "i", _AF_BOTH, "reuse"),
}
# Only meaningful on a listener (inherited by the sockets it accepts).
LISTEN_SOCKOPTS: dict[str, tuple[int, int, str, tuple[int, ...], str]] = {
    "TCP_DEFER_ACCEPT": (SOL_TCP, TCP_DEFER_ACCEPT, "i", _AF_BOTH, "post"),
    "TCP_FASTOPEN": (SOL_TCP, TCP_FASTOPEN, "i", _AF_BOTH, "post"),
    "TCP_MAXSEG": (SOL_TCP, TCP_MAXSEG, "i", _AF_BOTH, "pre"),
    "TCP_WINDOW_CLAMP": (SOL_TCP, TCP_WINDOW_CLAMP, "i", _AF_BOTH, "pre"),
}


def _get_opt(sock: socket.socket, level: int, opt: int, fmt: str) -> Any:
    if fmt == "str":
        return sock.getsockopt(level, opt, 64).split(b"\0", 1)[0].decode()
    vals = struct.unpack("=" + fmt, sock.getsockopt(level, opt, struct.calcsize(fmt)))
    return vals[0] if len(vals) == 1 else list(vals)


def _set_opt(sock: socket.socket, level: int, opt: int, fmt: str, value: Any) -> None:
    if fmt == "str":
        sock.setsockopt(level, opt, value.encode())
    elif isinstance(value, list):
        sock.setsockopt(level, opt, struct.pack("=" + fmt, *value))
    else:
        sock.setsockopt(level, opt, struct.pack("=" + fmt, value))


def dump_sockopts(sock: socket.socket, table: dict | None = None) -> dict:
    """Read every option of ``table`` (default SOCKOPTS) that applies to the family.

    An option the kernel does not know (ENOPROTOOPT) is left out.  SO_SNDBUF /
    SO_RCVBUF / SO_BUF_LOCK are read too; see ``_restore_bufs``.
    """
    out: dict[str, Any] = {}
    for name, (level, opt, fmt, fams, _phase) in (table or SOCKOPTS).items():
        if sock.family not in fams:
            continue
        try:
            out[name] = _get_opt(sock, level, opt, fmt)
        except OSError as e:
            if e.errno not in (errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                raise
    out["SO_SNDBUF"] = sock.getsockopt(SOL_SOCKET, SO_SNDBUF)
    out["SO_RCVBUF"] = sock.getsockopt(SOL_SOCKET, SO_RCVBUF)
    try:
        out["SO_BUF_LOCK"] = sock.getsockopt(SOL_SOCKET, SO_BUF_LOCK)
    except OSError as e:
        if e.errno != errno.ENOPROTOOPT:
            raise
    return out


def restore_sockopts(
    sock: socket.socket, opts: dict, phase: str, table: dict | None = None
) -> None:
    """Set the options of one phase whose value differs from the socket's own.

    Comparing first keeps kernel defaults (sysctl-derived TTL, keepalive times,
    congestion control) as defaults on the new node instead of pinning them.
    """
    for name, (level, opt, fmt, fams, ph) in (table or SOCKOPTS).items():
        if ph != phase or name not in opts or sock.family not in fams:
            continue
        value = opts[name]
        with _step(f"setsockopt {name}={value!r}", "restore"):
            if _get_opt(sock, level, opt, fmt) != value:
                _set_opt(sock, level, opt, fmt, value)


def _grow_bufs(sock: socket.socket, need_snd: int, need_rcv: int) -> None:
    """Make room for the queues we are about to refill (kernel charges ~2× truesize)."""
    for opt, force, need in (
        (SO_SNDBUF, SO_SNDBUFFORCE, need_snd),
        (SO_RCVBUF, SO_RCVBUFFORCE, need_rcv),
    ):
        want = 2 * need + 65536
        if need and sock.getsockopt(SOL_SOCKET, opt) < want:
            # The kernel doubles the value it is given: pass half.
            sock.setsockopt(SOL_SOCKET, force, pack_int(min(want // 2 + 1, 0x3FFFFFFF)))


def _restore_bufs(sock: socket.socket, opts: dict) -> None:
    """Give back the exact dumped SO_SNDBUF/SO_RCVBUF, and the lock bits.

    ``setsockopt(SO_SNDBUF, v)`` stores ``2*v`` (what getsockopt returns), so we
    pass half of the dumped value, through the *FORCE variants so that
    net.core.wmem_max/rmem_max of this node do not clip it.  Setting a size
    locks it (SOCK_SNDBUF_LOCK: no more autotuning); SO_BUF_LOCK then puts back
    the dumped lock bits, so an autotuned buffer keeps being autotuned.
    Shrinking below what is queued drops nothing: the app just waits.
    """
    if "SO_BUF_LOCK" not in opts:
        return  # kernel < 5.14: cannot tell a set size from an autotuned one
    for name, opt, force in (
        ("SO_SNDBUF", SO_SNDBUF, SO_SNDBUFFORCE),
        ("SO_RCVBUF", SO_RCVBUF, SO_RCVBUFFORCE),
    ):
        if name in opts and sock.getsockopt(SOL_SOCKET, opt) != opts[name]:
            sock.setsockopt(SOL_SOCKET, force, pack_int(opts[name] // 2))
    sock.setsockopt(SOL_SOCKET, SO_BUF_LOCK, pack_int(opts["SO_BUF_LOCK"]))


# --- addresses -------------------------------------------------------------------------
def _split_addr(sa: tuple) -> tuple[str, int, int]:
    host, port = sa[0], sa[1]
    scope = sa[3] if len(sa) > 3 else 0
    return host, port, scope


def _sockaddr(family: int, host: str, port: int, scope: int = 0) -> tuple:
    if family == socket.AF_INET6:
        return (host, port, 0, scope)
    return (host, port)


# --- dump --------------------------------------------------------------------------------
def dump_tcp(sock: socket.socket) -> dict:
    """Put a connected TCP socket in repair mode and return its full state.

    ``sock`` is our pidfd_getfd copy of the owner's fd; the owner is frozen and
    its netns locked.  On success the socket stays in repair mode (see the module
    docstring); on failure it has left repair mode and the owner can go on.
    Raises TcpRepairUnsupported for states other than ESTABLISHED and the
    half-closed ones, TcpRepairError if a kernel call fails.
    """
    with _step("TCP_INFO", "dump"):
        state = tcp_state(sock)
    if state not in REPAIRABLE_STATES:
        raise TcpRepairUnsupported(
            f"TCP socket in state {STATE_NAMES.get(state, state)} cannot be checkpointed yet"
            + (" (use dump_listen)" if state == TCP_LISTEN else "")
        )
    with _step("reading socket options", "dump"):
        opts = dump_sockopts(sock)
    with _step("TCP_REPAIR=1", "dump"):
        sock.setsockopt(SOL_TCP, TCP_REPAIR, pack_int(TCP_REPAIR_ON))
    try:
        st = _dump_repaired(sock)
    except BaseException:
        leave_repair(sock, {"sockopts": opts})
        raise
    st["sockopts"] = opts
    return st


def _dump_repaired(sock: socket.socket) -> dict:
    ph = "dump"
    with _step("TCP_INFO", ph):
        ti = tcp_info(sock)
    state = ti.tcpi_state
    if state not in REPAIRABLE_STATES:  # changed under us: the owner is not frozen
        raise TcpRepairError(f"TCP state changed to {STATE_NAMES.get(state)} during dump")
    with _step("SIOCOUTQ/SIOCOUTQNSD/SIOCINQ", ph):
        outq_len = _ioctl_int(sock, SIOCOUTQ)
        unsq_len = _ioctl_int(sock, SIOCOUTQNSD)
        inq_len = _ioctl_int(sock, SIOCINQ)
    fin_unsent = False
    if state in SND_FIN_STATES:
        # The FIN takes a sequence number and is counted in both ioctls while
        # queued; it is the last thing in the write queue.
        fin_unsent = unsq_len > 0
        outq_len = max(outq_len - 1, 0)
        unsq_len = max(unsq_len - 1, 0)
    with _step("TCP_MAXSEG", ph):
        mss = sock.getsockopt(SOL_TCP, TCP_MAXSEG)  # mss_clamp while in repair mode
    timestamp = 0
    if ti.tcpi_options & TCPI_OPT_TIMESTAMPS:
        with _step("TCP_TIMESTAMP", ph):
            timestamp = _get_u32(sock, SOL_TCP, TCP_TIMESTAMP)
    with _step("TCP_REPAIR_WINDOW", ph):
        window = unpack_repair_window(
            sock.getsockopt(SOL_TCP, TCP_REPAIR_WINDOW, ctypes.sizeof(TcpRepairWindow))
        )
    inq_seq, inq = _peek_queue(sock, TCP_RECV_QUEUE, inq_len)
    outq_seq, outq = _peek_queue(sock, TCP_SEND_QUEUE, outq_len)
    with _step("TCP_REPAIR_QUEUE=NO", ph):
        sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, pack_int(TCP_NO_QUEUE))
    src, sport, scope = _split_addr(sock.getsockname())
    dst, dport, _ = _split_addr(sock.getpeername())
    return {
        "format": TCP_STATE_FORMAT,
        "family": int(sock.family),
        "state": state,
        "src_addr": src,
        "src_port": sport,
        "dst_addr": dst,
        "dst_port": dport,
        "scope_id": scope,
        "inq_seq": inq_seq,
        "inq_len": inq_len,
        "inq": inq,
        "outq_seq": outq_seq,
        "outq_len": outq_len,
        "outq": outq,
        "unsq_len": unsq_len,
        "fin_unsent": fin_unsent,
        "mss": mss,
        "snd_wscale": ti.snd_wscale,
        "rcv_wscale": ti.rcv_wscale,
        "tcpi_options": ti.tcpi_options,
        "timestamp": timestamp,
        "window": window,
    }


def _peek_queue(sock: socket.socket, queue: int, length: int) -> tuple[int, bytes]:
    ph = "dump"
    qname = "RECV" if queue == TCP_RECV_QUEUE else "SEND"
    with _step(f"TCP_REPAIR_QUEUE={qname}", ph):
        sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, pack_int(queue))
    with _step(f"TCP_QUEUE_SEQ ({qname})", ph):
        seq = _get_u32(sock, SOL_TCP, TCP_QUEUE_SEQ)
    data = b""
    if length:
        with _step(f"peeking the {qname} queue", ph):
            data = sock.recv(length + 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    with _step(f"TCP_QUEUE_SEQ ({qname})", ph):
        seq2 = _get_u32(sock, SOL_TCP, TCP_QUEUE_SEQ)
    if len(data) != length or seq2 != seq:
        raise TcpRepairError(
            f"TCP repair dump: {qname} queue changed while read "
            f"({len(data)} bytes of {length}, seq {seq}->{seq2}); is the network locked?",
            errno=errno.EAGAIN,
            phase=ph,
        )
    return seq, data


def leave_repair(sock: socket.socket, state: dict | None = None) -> None:
    """Abandon a dump: take the socket out of repair mode so its owner goes on.

    Uses TCP_REPAIR_OFF_NO_WP: the dump only read the socket, so the peer needs
    no window probe (falls back to TCP_REPAIR_OFF on kernels < 4.11).  Leaving
    repair mode resets SO_REUSEADDR to 0; pass the dumped ``state`` (or just
    ``{"sockopts": ...}``) to give the owner its value back.
    """
    with _step("TCP_REPAIR_QUEUE=NO", "leave"):
        try:
            sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, pack_int(TCP_NO_QUEUE))
        except OSError as e:
            if e.errno != errno.EPERM:  # EPERM: not in repair mode (already left)
                raise
    with _step("TCP_REPAIR=OFF", "leave"):
        try:
            sock.setsockopt(SOL_TCP, TCP_REPAIR, pack_int(TCP_REPAIR_OFF_NO_WP))
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            sock.setsockopt(SOL_TCP, TCP_REPAIR, pack_int(TCP_REPAIR_OFF))
    opts = (state or {}).get("sockopts", {})
    if opts.get("SO_REUSEADDR"):
        with _step("SO_REUSEADDR", "leave"):
            sock.setsockopt(SOL_SOCKET, SO_REUSEADDR, pack_int(opts["SO_REUSEADDR"]))


# --- restore -----------------------------------------------------------------------------
def _send_all(sock: socket.socket, data: bytes, what: str, grow: bool) -> None:
    """send() everything without blocking; the kernel may take it in pieces.

    In repair mode the receive-queue path allocates one skb per call and fails
    with ENOMEM when asked for too much at once: halve the chunk and go on
    (what soccr does).  A full send buffer (EAGAIN) is enlarged if ``grow``.
    """
    view = memoryview(data)
    chunk = len(view)
    tries = 0
    while view:
        try:
            n = sock.send(view[:chunk], socket.MSG_DONTWAIT)
        except OSError as e:
            err = getattr(e, "errno", None)
            if err == errno.ENOMEM and chunk > 1024:
                chunk //= 2
                continue
            if err in (errno.EAGAIN, errno.ENOMEM) and grow and tries < 8:
                tries += 1
                cur = sock.getsockopt(SOL_SOCKET, SO_SNDBUF)
                sock.setsockopt(SOL_SOCKET, SO_SNDBUFFORCE, pack_int(min(cur, 0x3FFFFFFF)))
                continue
            raise TcpRepairError(
                f"TCP repair restore: refilling {what}: {e}", errno=err or 0, phase="restore"
            ) from e
        if n <= 0:
            raise TcpRepairError(f"TCP repair restore: refilling {what}: send returned {n}")
        view = view[n:]


def _replay_fins(sock: socket.socket, st: dict, steps: list[str], in_repair: bool) -> None:
    inq_seq, outq_seq = u32(st["inq_seq"]), u32(st["outq_seq"])
    adj_in, adj_out = seq_adjust(st["state"])
    snd_una = u32(outq_seq - adj_out - st["outq_len"])
    for step in steps:
        if step == FIN_SHUTDOWN:
            before = tcp_state(sock)
            with _step("shutdown(SHUT_WR) for our FIN", "restore"):
                if in_repair:
                    # Queued under the SEND repair queue, the FIN counts as sent
                    # (retransmitted by the RTO timer if it was not acked).
                    sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, pack_int(TCP_SEND_QUEUE))
                sock.shutdown(socket.SHUT_WR)
                if in_repair:
                    sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, pack_int(TCP_NO_QUEUE))
            _wait_state(sock, TCP_FIN_WAIT1 if before == TCP_ESTABLISHED else TCP_LAST_ACK)
        elif step == FIN_PEER:
            before = tcp_state(sock)
            with _step("forging the peer's FIN", "restore"):
                _send_forged(st, inq_seq - adj_in, snd_una, TH_FIN | TH_ACK)
            _wait_state(sock, TCP_CLOSE_WAIT if before == TCP_ESTABLISHED else TCP_CLOSING)
        elif step == FIN_PEER_ACK:
            with _step("forging the peer's ACK of our FIN", "restore"):
                _send_forged(st, inq_seq, outq_seq, TH_ACK)
            _wait_state(sock, TCP_FIN_WAIT2)


def restore_tcp(state: dict) -> socket.socket:
    """Rebuild a dumped connection in the calling thread's network namespace.

    The local address must exist here and the original socket must be gone
    (same 4-tuple).  Returns a blocking socket out of repair mode, in the dumped
    TCP state; the caller installs its fd in the restored task.
    """
    st = state
    tcp_st = st["state"]
    steps, in_repair = fin_plan(tcp_st, bool(st.get("fin_unsent")))
    adj_in, adj_out = seq_adjust(tcp_st)
    fam = st["family"]
    opts = st.get("sockopts", {})
    ph = "restore"
    sock = socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        # 1. repair mode, pre-bind options, room for the queues
        with _step("TCP_REPAIR=1", ph):
            sock.setsockopt(SOL_TCP, TCP_REPAIR, pack_int(TCP_REPAIR_ON))
        restore_sockopts(sock, opts, "pre")
        with _step("growing SO_SNDBUF/SO_RCVBUF", ph):
            _grow_bufs(sock, st["outq_len"], st["inq_len"])
        # 2. sequence numbers (only while TCP_CLOSE)
        inq_seq = u32(st["inq_seq"] - adj_in)
        outq_seq = u32(st["outq_seq"] - adj_out)
        for q, seq, name in (
            (TCP_RECV_QUEUE, inq_seq - st["inq_len"], "RECV"),
            (TCP_SEND_QUEUE, outq_seq - st["outq_len"], "SEND"),
        ):
            with _step(f"TCP_QUEUE_SEQ {name}={u32(seq)}", ph):
                sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, pack_int(q))
                sock.setsockopt(SOL_TCP, TCP_QUEUE_SEQ, pack_u32(seq))
        # 3. bind + connect: no SYN in repair mode, straight to ESTABLISHED
        with _step(f"bind({st['src_addr']}:{st['src_port']})", ph):
            sock.bind(_sockaddr(fam, st["src_addr"], st["src_port"], st.get("scope_id", 0)))
        with _step(f"connect({st['dst_addr']}:{st['dst_port']})", ph):
            sock.connect(_sockaddr(fam, st["dst_addr"], st["dst_port"], st.get("scope_id", 0)))
        # 4. negotiated options, 5. timestamp
        with _step("TCP_REPAIR_OPTIONS", ph):
            sock.setsockopt(
                SOL_TCP,
                TCP_REPAIR_OPTIONS,
                pack_repair_options(
                    st["tcpi_options"], st["mss"], st["snd_wscale"], st["rcv_wscale"]
                ),
            )
        if st["tcpi_options"] & TCPI_OPT_TIMESTAMPS:
            with _step("TCP_TIMESTAMP", ph):
                sock.setsockopt(SOL_TCP, TCP_TIMESTAMP, pack_u32(st["timestamp"]))
        # 6. queues: receive queue, then the sent-but-unacked part of the send queue
        if st["inq_len"]:
            with _step("TCP_REPAIR_QUEUE=RECV", ph):
                sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, pack_int(TCP_RECV_QUEUE))
            _send_all(sock, st["inq"], "the receive queue", grow=False)
        sent_len = st["outq_len"] - st["unsq_len"]
        if sent_len:
            with _step("TCP_REPAIR_QUEUE=SEND", ph):
                sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, pack_int(TCP_SEND_QUEUE))
            _send_all(sock, st["outq"][:sent_len], "the send queue", grow=True)
        with _step("TCP_REPAIR_QUEUE=NO", ph):
            sock.setsockopt(SOL_TCP, TCP_REPAIR_QUEUE, pack_int(TCP_NO_QUEUE))
        # 7. window: when the peer's FIN is still to come, rcv_nxt is one short of
        # the dumped one, and the kernel refuses rcv_wup > rcv_nxt: move the left
        # edge back by one, keeping the right edge (soccr does the same).
        win = dict(st["window"])
        if tcp_st in RCV_FIN_STATES:
            win["rcv_wup"] = u32(win["rcv_wup"] - 1)
            win["rcv_wnd"] = win["rcv_wnd"] + 1
        with _step("TCP_REPAIR_WINDOW", ph):
            sock.setsockopt(SOL_TCP, TCP_REPAIR_WINDOW, pack_repair_window(win))
        if steps and in_repair:
            _replay_fins(sock, st, steps, in_repair=True)
            # The forged segments moved rcv_nxt/snd_wnd: now the dumped window fits.
            with _step("TCP_REPAIR_WINDOW", ph):
                sock.setsockopt(SOL_TCP, TCP_REPAIR_WINDOW, pack_repair_window(st["window"]))
        restore_sockopts(sock, opts, "post")
        # 8. leave repair mode (window probe), then the options it reset
        with _step("TCP_REPAIR=0", ph):
            sock.setsockopt(SOL_TCP, TCP_REPAIR, pack_int(TCP_REPAIR_OFF))
        restore_sockopts(sock, opts, "reuse")
        # 9. the never-sent tail goes out the normal way
        if st["unsq_len"]:
            _send_all(sock, st["outq"][sent_len:], "the unsent tail", grow=True)
        if steps and not in_repair:
            _replay_fins(sock, st, steps, in_repair=False)
        with _step("SO_SNDBUF/SO_RCVBUF", ph):
            _restore_bufs(sock, opts)
    except BaseException:
        _abort(sock)
        raise
    return sock


def _abort(sock: socket.socket) -> None:
    """Drop a half-built socket without a RST reaching the peer."""
    try:
        sock.setsockopt(SOL_TCP, TCP_REPAIR, pack_int(TCP_REPAIR_ON))
    except OSError:
        pass  # already in repair mode, or never got a connection: no RST either way
    sock.close()


# --- listening sockets ----------------------------------------------------------------
def dump_listen(sock: socket.socket) -> dict:
    """State of a listening socket: address, backlog, options.  No repair mode.

    On a listener TCP_INFO reports the listen() backlog in tcpi_sacked
    (sk_max_ack_backlog, after the somaxconn cap) and the accept-queue length in
    tcpi_unacked.  Connections still in the accept queue cannot be carried (no
    fd to dump them through): ``pending`` says how many; they are reset when the
    listener goes away, so the caller may prefer to refuse.
    """
    with _step("TCP_INFO", "dump"):
        ti = tcp_info(sock)
    if ti.tcpi_state != TCP_LISTEN:
        raise TcpRepairUnsupported(
            f"dump_listen: socket is {STATE_NAMES.get(ti.tcpi_state)}, not LISTEN"
        )
    with _step("reading socket options", "dump"):
        opts = dump_sockopts(sock, {**SOCKOPTS, **LISTEN_SOCKOPTS})
    src, sport, scope = _split_addr(sock.getsockname())
    return {
        "format": TCP_STATE_FORMAT,
        "family": int(sock.family),
        "state": TCP_LISTEN,
        "src_addr": src,
        "src_port": sport,
        "scope_id": scope,
        "backlog": ti.tcpi_sacked,
        "pending": ti.tcpi_unacked,
        "sockopts": opts,
    }


def restore_listen(state: dict) -> socket.socket:
    """socket/bind/listen again in the calling thread's netns, with the options."""
    table = {**SOCKOPTS, **LISTEN_SOCKOPTS}
    opts = state.get("sockopts", {})
    fam = state["family"]
    sock = socket.socket(fam, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        restore_sockopts(sock, opts, "pre", table)
        restore_sockopts(sock, opts, "reuse", table)
        with _step("SO_SNDBUF/SO_RCVBUF", "restore"):
            _restore_bufs(sock, opts)  # before listen: rcvbuf sets children's wscale
        with _step(f"bind({state['src_addr']}:{state['src_port']})", "restore"):
            sock.bind(_sockaddr(fam, state["src_addr"], state["src_port"], state["scope_id"]))
        with _step("listen", "restore"):
            sock.listen(state["backlog"])
        restore_sockopts(sock, opts, "post", table)
    except BaseException:
        sock.close()
        raise
    return sock
