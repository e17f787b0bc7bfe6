"""Internet sockets (AF_INET, AF_INET6): TCP, UDP, ICMP "ping" and raw sockets.

One fd kind, ``inet_sk``, claims every IPv4/IPv6 socket; packet and netlink
sockets are refused at dump with a message naming the task, the fd and the
kind (Unix sockets belong to resources/unix.py).

Dump (``dump_inet``), from our pidfd_getfd copy of the task's fd, with the
tree frozen and the container's network namespace locked (checkpoint/driver.py
locks it before any fd is read):

- every socket must live in the container's own netns (``SIOCGSKNS``); a
  socket of a nested namespace is refused;
- TCP LISTEN: address, backlog, options (``tcp_repair.dump_listen``).  A
  listener with connections waiting in its accept queue is refused: they have
  no fd to be saved through and would be reset at restore;
- TCP ESTABLISHED and the half-closed states: the full repair state, queues
  included (``tcp_repair.dump_tcp``).  The socket is *left in repair mode*:
  when the dumped tasks are killed their close sends nothing, no FIN and no
  RST.  The dump keeps a copy of each such socket until the dump is over
  (``InetResource.dump_finish``): if the dump fails, or the container is to go
  on running, they leave repair mode again with their own SO_REUSEADDR.  A
  container left frozen (``chkpnt --dump``) keeps them in repair mode until
  ``chkpnt --kill`` (nothing is sent) or ``chkpnt --resume``
  (``InetResource.resume_dumped`` takes them out of it);
- TCP CLOSE (a socket not connected yet, bound or not): address and options;
  SYN_SENT and SYN_RECV (a connect() in progress) are refused;
- UDP/UDP-Lite, ICMP echo ("ping") and raw sockets: local and connected
  address, options (``DGRAM_SOCKOPTS``).  Datagrams waiting in a receive
  queue are not carried: a datagram may be lost on the way anyway, and each
  protocol above UDP copes with it.  A corked UDP socket holding data is
  refused (that data would be lost silently).

Restore: every inet socket of the image is built in one go, before the tree
(``InetResource.restore_early``), by a thread that joined the new container's
network namespace, which is locked already (resources/netns.py locks it
before the container's interfaces come up): listeners and bound sockets
first, so that the connections accepted from a listener can share its port,
then the connections (``tcp_repair.restore_tcp``).  ``InetKind.restore``
then hands each one to the FdChannel, which passes it to its tasks.

Connections whose two ends are both inside the container go through loopback,
which the network lock lets pass: while one end exists and the other not yet,
a segment of the first (the window probe sent on leaving repair mode) would
be answered with RST by the kernel.  netns.py therefore also drops every
outgoing TCP RST for as long as the lock is held (``RST_GUARD_TABLE``).

Per-connection timings are kept (``ctx.extra``/``rctx.extra`` ``"inet"``)
and printed with ``--verbose``; bench/netlock_time.py reads them.

Not carried (documented refusals or losses): connections waiting in a
listener's accept queue (refused), half-open handshakes (SYN_RECV request
sockets of a listener are dropped: the client's next ACK gets a RST),
out-of-order data (the peer retransmits it), urgent data, TCP-MD5/AO keys,
multicast group memberships and source filters (no getsockopt reads them),
queued datagrams, MPTCP and SCTP sockets (refused).
"""

from __future__ import annotations

import errno
import fcntl
import os
import resource
import socket
import stat
import struct
import time
from typing import Any

from .. import log
from ..errors import RestoreError, UnsupportedError
from ..images.schema import Field, register_record
from ..sys import tcp_repair as tr
from ..sys.libc import run_in_netns
from . import base
from .files import FdKind, FdProbe, register_fd_kind

# --- constants (asm-generic/socket.h, linux/in.h, linux/in6.h, linux/sockios.h) -----
SO_TYPE = 3
SO_GET_FILTER = 26  # = SO_ATTACH_FILTER
SO_BROADCAST = 6
SO_TIMESTAMP = 29  # SO_TIMESTAMP_OLD on x86_64
SO_TIMESTAMPNS = 35  # SO_TIMESTAMPNS_OLD
SO_PROTOCOL = 38
SO_DOMAIN = 39
SO_RXQ_OVFL = 40
SIOCGSKNS = 0x894C  # a netns fd for the socket's namespace

SOL_RAW = 255
SOL_UDP = 17
SOL_ICMPV6 = 58
ICMP_FILTER = 1
ICMPV6_FILTER = 1
IP_HDRINCL = 3
IP_PKTINFO = 8
IP_RECVTTL = 12
IP_RECVTOS = 13
IP_MULTICAST_TTL = 33
IP_MULTICAST_LOOP = 34
IP_MULTICAST_ALL = 49
IPV6_CHECKSUM = 7
IPV6_MULTICAST_HOPS = 18
IPV6_MULTICAST_LOOP = 19
IPV6_RECVPKTINFO = 49
IPV6_RECVTCLASS = 66
UDP_CORK = 1

IPPROTO_UDPLITE = 136
IPPROTO_MPTCP = 262
AF_PACKET = 17
AF_NETLINK = 16
INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)
DGRAM_PROTOS = {
    socket.IPPROTO_UDP: "UDP",
    IPPROTO_UDPLITE: "UDP-Lite",
    socket.IPPROTO_ICMP: "ICMP echo",
    socket.IPPROTO_ICMPV6: "ICMPv6 echo",
}

_AF_BOTH = (socket.AF_INET, socket.AF_INET6)
_AF4 = (socket.AF_INET,)
_AF6 = (socket.AF_INET6,)
# name -> (level, optname, struct format or "str", families, phase); the format of
# tcp_repair.SOCKOPTS, so its dump_sockopts/restore_sockopts serve both.
DGRAM_SOCKOPTS: dict[str, tuple[int, int, str, tuple[int, ...], str]] = {
    "SO_BINDTODEVICE": tr.SOCKOPTS["SO_BINDTODEVICE"],
    "SO_REUSEPORT": tr.SOCKOPTS["SO_REUSEPORT"],
    "SO_MARK": tr.SOCKOPTS["SO_MARK"],
    "IP_FREEBIND": tr.SOCKOPTS["IP_FREEBIND"],
    "IP_TRANSPARENT": tr.SOCKOPTS["IP_TRANSPARENT"],
    "IPV6_V6ONLY": tr.SOCKOPTS["IPV6_V6ONLY"],
    "IPV6_FREEBIND": tr.SOCKOPTS["IPV6_FREEBIND"],
    "IPV6_TRANSPARENT": tr.SOCKOPTS["IPV6_TRANSPARENT"],
    # IP_TOS before SO_PRIORITY (setting the TOS also sets the priority).
    "IP_TOS": tr.SOCKOPTS["IP_TOS"],
    "SO_PRIORITY": tr.SOCKOPTS["SO_PRIORITY"],
    "SO_BROADCAST": (tr.SOL_SOCKET, SO_BROADCAST, "i", _AF_BOTH, "post"),
    "SO_DONTROUTE": tr.SOCKOPTS["SO_DONTROUTE"],
    "SO_RCVLOWAT": tr.SOCKOPTS["SO_RCVLOWAT"],
    "SO_RCVTIMEO": tr.SOCKOPTS["SO_RCVTIMEO"],
    "SO_SNDTIMEO": tr.SOCKOPTS["SO_SNDTIMEO"],
    "SO_TIMESTAMP": (tr.SOL_SOCKET, SO_TIMESTAMP, "i", _AF_BOTH, "post"),
    "SO_TIMESTAMPNS": (tr.SOL_SOCKET, SO_TIMESTAMPNS, "i", _AF_BOTH, "post"),
    "SO_RXQ_OVFL": (tr.SOL_SOCKET, SO_RXQ_OVFL, "i", _AF_BOTH, "post"),
    "IP_TTL": tr.SOCKOPTS["IP_TTL"],
    "IP_MTU_DISCOVER": tr.SOCKOPTS["IP_MTU_DISCOVER"],
    "IP_RECVERR": tr.SOCKOPTS["IP_RECVERR"],
    "IP_PKTINFO": (tr.SOL_IP, IP_PKTINFO, "i", _AF_BOTH, "post"),
    "IP_RECVTTL": (tr.SOL_IP, IP_RECVTTL, "i", _AF_BOTH, "post"),
    "IP_RECVTOS": (tr.SOL_IP, IP_RECVTOS, "i", _AF_BOTH, "post"),
    "IP_MULTICAST_TTL": (tr.SOL_IP, IP_MULTICAST_TTL, "i", _AF_BOTH, "post"),
    "IP_MULTICAST_LOOP": (tr.SOL_IP, IP_MULTICAST_LOOP, "i", _AF_BOTH, "post"),
    "IP_MULTICAST_ALL": (tr.SOL_IP, IP_MULTICAST_ALL, "i", _AF_BOTH, "post"),
    "IPV6_TCLASS": tr.SOCKOPTS["IPV6_TCLASS"],
    "IPV6_UNICAST_HOPS": tr.SOCKOPTS["IPV6_UNICAST_HOPS"],
    "IPV6_MTU_DISCOVER": tr.SOCKOPTS["IPV6_MTU_DISCOVER"],
    "IPV6_RECVERR": tr.SOCKOPTS["IPV6_RECVERR"],
    "IPV6_RECVPKTINFO": (tr.SOL_IPV6, IPV6_RECVPKTINFO, "i", _AF6, "post"),
    "IPV6_RECVTCLASS": (tr.SOL_IPV6, IPV6_RECVTCLASS, "i", _AF6, "post"),
    "IPV6_MULTICAST_HOPS": (tr.SOL_IPV6, IPV6_MULTICAST_HOPS, "i", _AF6, "post"),
    "IPV6_MULTICAST_LOOP": (tr.SOL_IPV6, IPV6_MULTICAST_LOOP, "i", _AF6, "post"),
    "UDP_CORK": (SOL_UDP, UDP_CORK, "i", _AF_BOTH, "post"),
    "SO_REUSEADDR": tr.SOCKOPTS["SO_REUSEADDR"],
}
# Raw sockets: the datagram options plus their own (ENOPROTOOPT where one does
# not apply, e.g. ICMP_FILTER on a raw socket of another protocol: left out).
RAW_SOCKOPTS: dict[str, tuple[int, int, str, tuple[int, ...], str]] = {
    **{k: v for k, v in DGRAM_SOCKOPTS.items() if k != "UDP_CORK"},
    "IP_HDRINCL": (tr.SOL_IP, IP_HDRINCL, "i", _AF_BOTH, "post"),
    "ICMP_FILTER": (SOL_RAW, ICMP_FILTER, "I", _AF4, "post"),
    "IPV6_CHECKSUM": (tr.SOL_IPV6, IPV6_CHECKSUM, "i", _AF6, "post"),
    "ICMPV6_FILTER": (SOL_ICMPV6, ICMPV6_FILTER, "8I", _AF6, "post"),
}
TCP_SOCKOPTS = {**tr.SOCKOPTS, **tr.LISTEN_SOCKOPTS}

# --- image records (ids 1550-1559 are this module's) ------------------------------------
TCP_WINDOW = register_record(
    "tcp_window",
    id=1552,
    category="socket",
    fields=[
        Field("snd_wl1", 1, "uint"),
        Field("snd_wnd", 2, "uint"),
        Field("max_window", 3, "uint"),
        Field("rcv_wnd", 4, "uint"),
        Field("rcv_wup", 5, "uint"),
    ],
    doc="struct tcp_repair_window",
)
TCP_CONN = register_record(
    "tcp_conn",
    id=1551,
    category="socket",
    fields=[
        Field("format", 1, "uint", doc="tcp_repair.TCP_STATE_FORMAT"),
        Field("family", 2, "uint"),
        Field("state", 3, "uint", doc="TCP state (tcp_states.h)"),
        Field("src_addr", 4, "str"),
        Field("src_port", 5, "uint"),
        Field("dst_addr", 6, "str"),
        Field("dst_port", 7, "uint"),
        Field("scope_id", 8, "uint"),
        Field("inq_seq", 9, "uint", hex=True, doc="rcv_nxt"),
        Field("inq_len", 10, "uint"),
        Field("inq", 11, "bytes", doc="received, not read by the task"),
        Field("outq_seq", 12, "uint", hex=True, doc="write_seq"),
        Field("outq_len", 13, "uint"),
        Field("outq", 14, "bytes", doc="written by the task, not acked by the peer"),
        Field("unsq_len", 15, "uint", doc="tail of outq never sent"),
        Field("fin_unsent", 16, "bool"),
        Field("mss", 17, "uint"),
        Field("snd_wscale", 18, "uint"),
        Field("rcv_wscale", 19, "uint"),
        Field("tcpi_options", 20, "uint", hex=True),
        Field("timestamp", 21, "uint"),
        Field("window", 22, "tcp_window"),
    ],
    doc="a TCP connection in repair form (vzpy.sys.tcp_repair.dump_tcp)",
)
INET_SK = register_record("inet_sk", id=1550, category="socket", fields=[
    Field("family", 1, "uint", optional=False),
    Field("type", 2, "uint", optional=False, doc="SOCK_STREAM, SOCK_DGRAM, SOCK_RAW"),
    Field("proto", 3, "uint", optional=False),
    Field("state", 4, "uint", doc="TCP state; 0 for datagram and raw sockets"),
    Field("src_addr", 5, "str"),
    Field("src_port", 6, "uint", doc="raw sockets: the protocol"),
    Field("dst_addr", 7, "str", doc="connected peer, if any"),
    Field("dst_port", 8, "uint"),
    Field("scope_id", 9, "uint"),
    Field("backlog", 10, "uint", doc="listen() backlog"),
    Field("sockopts", 11, "any", doc="option name -> value"),
    Field("tcp", 12, "tcp_conn", doc="connected TCP sockets"),
    Field("ino", 13, "uint", doc="socket inode at dump (for humans)"),
    Field("bound", 14, "bool", doc="has a local address or port of its own"),
], doc="an internet socket (file_entry detail)")  # fmt: skip


def _name(fam: int, typ: int, proto: int, state: int = 0) -> str:
    f = "IPv6" if fam == socket.AF_INET6 else "IPv4"
    if typ == socket.SOCK_STREAM:
        return f"a TCP/{f} socket ({tr.STATE_NAMES.get(state, state)})"
    if typ == socket.SOCK_DGRAM:
        return f"a {DGRAM_PROTOS.get(proto, proto)}/{f} socket"
    return f"a raw {f} socket (protocol {proto})"


def refuse(probe: FdProbe, what: str, why: str) -> UnsupportedError:
    return UnsupportedError(
        f"Can't dump task {probe.nspid}: fd {probe.fd} is {what} ({probe.link}): {why}"
    )


# --- small socket helpers -----------------------------------------------------------------
def sock_ids(fd: int) -> tuple[int, int, int]:
    """(SO_DOMAIN, SO_TYPE, SO_PROTOCOL) of a socket fd; OSError if it is none."""
    s = socket.socket(fileno=fd)
    try:
        return (
            s.getsockopt(socket.SOL_SOCKET, SO_DOMAIN),
            s.getsockopt(socket.SOL_SOCKET, SO_TYPE),
            s.getsockopt(socket.SOL_SOCKET, SO_PROTOCOL),
        )
    finally:
        s.detach()


def sock_netns_ino(fd: int) -> int:
    """Inode of the network namespace a socket belongs to (SIOCGSKNS)."""
    nsfd = fcntl.ioctl(fd, SIOCGSKNS)
    try:
        return os.fstat(nsfd).st_ino
    finally:
        os.close(nsfd)


def _has_bpf_filter(fd: int) -> bool:
    """SO_GET_FILTER with room for no instruction: 0 when no filter is attached,
    the filter's length (or EINVAL: it does not fit) when one is."""
    s = socket.socket(fileno=fd)
    try:
        return s.getsockopt(socket.SOL_SOCKET, SO_GET_FILTER) != 0
    except OSError as e:
        return e.errno == errno.EINVAL
    finally:
        s.detach()


def split_addr(sa: Any) -> tuple[str, int, int]:
    """A Python socket address (v4 or v6 tuple) -> (host, port, scope_id)."""
    return sa[0], sa[1], (sa[3] if len(sa) > 3 else 0)


def is_bound(host: str, port: int) -> bool:
    return port != 0 or host not in ("0.0.0.0", "::", "")


def sockaddr(fam: int, host: str, port: int, scope: int = 0) -> tuple:
    return (host, port, 0, scope) if fam == socket.AF_INET6 else (host, port)


def _peer(sock: socket.socket) -> tuple[str, int] | None:
    try:
        host, port, _ = split_addr(sock.getpeername())
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            return None
        raise
    return host, port


# --- dump ------------------------------------------------------------------------------
def dump_state(ctx) -> dict:
    """Per-dump bookkeeping: sockets left in repair mode, timings."""
    st = ctx.extra.get("inet")
    if st is None:
        st = ctx.extra["inet"] = {"repaired": [], "tcp_ns": 0, "tcp_count": 0, "netns_ino": None}
    return st


def _ct_netns_ino(ctx) -> int:
    st = dump_state(ctx)
    if st["netns_ino"] is None:
        st["netns_ino"] = os.stat(f"/proc/{ctx.init_pid}/ns/net").st_ino
    return st["netns_ino"]


def dump_inet(ctx, probe: FdProbe) -> dict:
    fam, typ, proto = sock_ids(probe.copy)
    what = _name(fam, typ, proto)
    if sock_netns_ino(probe.copy) != _ct_netns_ino(ctx):
        raise refuse(probe, what, "it belongs to another network namespace than the container's")
    if _has_bpf_filter(probe.copy):
        raise refuse(probe, what, "a BPF socket filter is attached (SO_ATTACH_FILTER)")
    sock = socket.socket(fileno=os.dup(probe.copy))
    rec: dict[str, Any] = {
        "_type": "inet_sk",
        "family": fam,
        "type": typ,
        "proto": proto,
        "ino": probe.st.st_ino if probe.st is not None else 0,
    }
    keep = False
    try:
        if typ == socket.SOCK_STREAM:
            keep = _dump_tcp_sock(ctx, probe, sock, rec)
        elif typ == socket.SOCK_DGRAM:
            if proto not in DGRAM_PROTOS:
                raise refuse(probe, what, "a datagram protocol vzpy does not know")
            _dump_dgram(probe, sock, rec, DGRAM_SOCKOPTS)
        elif typ == socket.SOCK_RAW:
            _dump_dgram(probe, sock, rec, RAW_SOCKOPTS)
        else:
            raise refuse(
                probe, f"an internet socket of type {typ}", "vzpy cannot checkpoint this type"
            )
    except tr.TcpRepairUnsupported as e:
        raise refuse(probe, what, str(e)) from e
    except OSError as e:
        if isinstance(e, UnsupportedError):
            raise
        raise refuse(probe, what, f"reading it failed: {e}") from e
    finally:
        if not keep:
            sock.close()
    return rec


def _dump_tcp_sock(ctx, probe: FdProbe, sock: socket.socket, rec: dict) -> bool:
    """Fill ``rec``; True if the socket was left in repair mode (kept by us)."""
    fam, proto = rec["family"], rec["proto"]
    if proto not in (0, socket.IPPROTO_TCP):
        kind = "an MPTCP" if proto == IPPROTO_MPTCP else f"a protocol {proto} stream"
        raise refuse(probe, f"{kind} socket", "vzpy can checkpoint plain TCP only")
    state = tr.tcp_state(sock)
    rec["state"] = state
    what = _name(fam, socket.SOCK_STREAM, proto, state)
    if state == tr.TCP_LISTEN:
        st = tr.dump_listen(sock)
        if st["pending"]:
            raise refuse(
                probe, what,
                f"{st['pending']} connection(s) wait in its accept queue; they cannot be carried "
                "(retry when the server has accepted them)",
            )  # fmt: skip
        rec.update(
            src_addr=st["src_addr"], src_port=st["src_port"], scope_id=st["scope_id"],
            backlog=st["backlog"], sockopts=st["sockopts"], bound=True,
        )  # fmt: skip
        return False
    if state in tr.REPAIRABLE_STATES:
        if not getattr(ctx, "netns_locked", False):
            raise refuse(probe, what, "connections can only be dumped with the network locked")
        ds = dump_state(ctx)
        t0 = time.perf_counter_ns()
        st = tr.dump_tcp(sock)
        ds["tcp_ns"] += time.perf_counter_ns() - t0
        ds["tcp_count"] += 1
        ds["repaired"].append((sock, st["sockopts"]))
        rec.update(
            src_addr=st["src_addr"], src_port=st["src_port"], dst_addr=st["dst_addr"],
            dst_port=st["dst_port"], scope_id=st["scope_id"], sockopts=st.pop("sockopts"),
            tcp=st, bound=True,
        )  # fmt: skip
        return True
    if state == tr.TCP_CLOSE:
        host, port, scope = split_addr(sock.getsockname())
        rec.update(
            src_addr=host, src_port=port, scope_id=scope, bound=is_bound(host, port),
            sockopts=tr.dump_sockopts(sock, TCP_SOCKOPTS),
        )  # fmt: skip
        return False
    raise refuse(
        probe, what,
        "a connection being set up (connect() or handshake in progress) cannot be checkpointed yet",
    )  # fmt: skip


def _dump_dgram(probe: FdProbe, sock: socket.socket, rec: dict, table: dict) -> None:
    opts = tr.dump_sockopts(sock, table)
    what = _name(rec["family"], rec["type"], rec["proto"])
    if opts.get("UDP_CORK"):
        buf = bytearray(4)
        fcntl.ioctl(sock.fileno(), tr.SIOCOUTQ, buf)
        if struct.unpack("=i", buf)[0] > 0:
            raise refuse(probe, what, "it is corked (UDP_CORK) with data not sent yet")
    host, port, scope = split_addr(sock.getsockname())
    rec.update(src_addr=host, src_port=port, scope_id=scope, sockopts=opts, state=0)
    rec["bound"] = (
        is_bound(host, port) if rec["type"] != socket.SOCK_RAW else host not in ("0.0.0.0", "::")
    )
    peer = _peer(sock)
    if peer is not None:
        rec["dst_addr"], rec["dst_port"] = peer


def finish_dump(ctx, ok: bool, leave: str) -> None:
    """End of the dump: take the sockets out of repair mode unless their owners die.

    ok and leave == "kill": the tasks are killed next; their last close of a
    socket in repair mode sends nothing.  ok and "frozen": left in repair mode
    (``chkpnt --kill`` or ``--resume`` decides).  Otherwise (failed, or the
    container goes on running): leave repair mode now, while the network is
    still locked, so the owners find their connections as they were.
    """
    ds = ctx.extra.get("inet")
    if not ds:
        return
    keep_repair = ok and leave in ("kill", "frozen")
    errors = []
    for sock, opts in ds["repaired"]:
        if not keep_repair:
            try:
                tr.leave_repair(sock, {"sockopts": opts})
            except OSError as e:
                errors.append(str(e))
        sock.close()
    ds["repaired"] = []
    if ds["tcp_count"]:
        n = ds["tcp_count"]
        log.info(
            f"\t{n} TCP connection(s) dumped in {ds['tcp_ns'] / 1e6:.1f} ms "
            f"({ds['tcp_ns'] / 1e3 / n:.0f} us each)",
            level=1,
        )
    if errors:
        log.error(f"Warning: {len(errors)} connection(s) could not leave repair mode: {errors[0]}")


def leave_repair_all(pids: list[int]) -> int:
    """Take every TCP socket of ``pids`` that is in repair mode out of it.

    For ``chkpnt --resume`` of a container dumped with ``--dump``: the dumper
    that put them in repair mode is gone.  SO_REUSEADDR, which leaving repair
    mode resets, is given the value of a listener on the same local port (an
    accepted socket inherits it from there), else left 0.  Returns the count.
    """
    socks: list[socket.socket] = []
    seen: set[int] = set()
    try:
        for pid in pids:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                for name in os.listdir(f"/proc/{pid}/fd"):
                    try:
                        if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:["):
                            continue
                        fd = _pidfd_getfd(pidfd, int(name))
                    except OSError:
                        continue
                    st = os.fstat(fd)
                    if st.st_ino in seen or not stat.S_ISSOCK(st.st_mode):
                        os.close(fd)
                        continue
                    seen.add(st.st_ino)
                    try:
                        fam, typ, _ = sock_ids(fd)
                    except OSError:
                        os.close(fd)
                        continue
                    if fam not in INET_FAMILIES or typ != socket.SOCK_STREAM:
                        os.close(fd)
                        continue
                    socks.append(socket.socket(fileno=fd))
            finally:
                os.close(pidfd)
        reuse = {}
        for s in socks:
            if tr.tcp_state(s) == tr.TCP_LISTEN:
                reuse[s.getsockname()[1]] = s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        n = 0
        for s in socks:
            if not _in_repair(s):
                continue
            tr.leave_repair(s, {"sockopts": {"SO_REUSEADDR": reuse.get(s.getsockname()[1], 0)}})
            n += 1
        return n
    finally:
        for s in socks:
            s.close()


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    from ..sys.libc import pidfd_getfd

    return pidfd_getfd(pidfd, fd)


def _in_repair(sock: socket.socket) -> bool:
    """TCP_REPAIR_WINDOW can only be read in repair mode (EPERM otherwise)."""
    try:
        sock.getsockopt(tr.SOL_TCP, tr.TCP_REPAIR_WINDOW, 20)
    except OSError:
        return False
    return True


# --- restore ---------------------------------------------------------------------------
def _set_flags(sock: socket.socket, file_flags: int) -> int:
    """Detach the fd from ``sock`` with the dumped O_NONBLOCK."""
    fd = sock.detach()
    cur = fcntl.fcntl(fd, fcntl.F_GETFL)
    want = (cur & ~os.O_NONBLOCK) | (file_flags & os.O_NONBLOCK)
    if want != cur:
        fcntl.fcntl(fd, fcntl.F_SETFL, want)
    return fd


def _tcp_state_of(rec: dict) -> dict:
    st = dict(rec["tcp"])
    st["sockopts"] = rec.get("sockopts") or {}
    return st


def build_socket(rec: dict) -> socket.socket:
    """Make one socket of the image in the calling thread's network namespace."""
    fam, typ, proto = rec["family"], rec["type"], rec["proto"]
    opts = rec.get("sockopts") or {}
    if typ == socket.SOCK_STREAM:
        state = rec.get("state")
        if state == tr.TCP_LISTEN:
            return tr.restore_listen(
                {"family": fam, "src_addr": rec["src_addr"], "src_port": rec["src_port"],
                 "scope_id": rec.get("scope_id") or 0, "backlog": rec.get("backlog") or 0,
                 "sockopts": opts}
            )  # fmt: skip
        if rec.get("tcp"):
            return tr.restore_tcp(_tcp_state_of(rec))
        if state == tr.TCP_CLOSE:
            return _build_plain(rec, socket.SOCK_STREAM, TCP_SOCKOPTS)
        raise RestoreError(f"Can't restore {_name(fam, typ, proto, state or 0)}")
    if typ == socket.SOCK_DGRAM:
        return _build_plain(rec, typ, DGRAM_SOCKOPTS)
    if typ == socket.SOCK_RAW:
        return _build_plain(rec, typ, RAW_SOCKOPTS)
    raise RestoreError(f"Can't restore an internet socket of type {typ}")


def _build_plain(rec: dict, typ: int, table: dict) -> socket.socket:
    """socket, options, bind, connect: an unconnected TCP, datagram or raw socket."""
    fam, proto = rec["family"], rec["proto"]
    opts = rec.get("sockopts") or {}
    sock = socket.socket(fam, typ, proto)
    try:
        tr.restore_sockopts(sock, opts, "pre", table)
        tr.restore_sockopts(sock, opts, "reuse", table)
        tr._restore_bufs(sock, opts)
        scope = rec.get("scope_id") or 0
        if rec.get("bound"):
            port = (rec.get("src_port") or 0) if typ != socket.SOCK_RAW else 0
            try:
                sock.bind(sockaddr(fam, rec["src_addr"], port, scope))
            except OSError as e:
                raise RestoreError(
                    f"Can't bind {_name(fam, typ, proto, rec.get('state') or 0)} to "
                    f"{rec['src_addr']}:{port}: {e.strerror}"
                ) from e
        if rec.get("dst_addr") and typ != socket.SOCK_STREAM:
            port = (rec.get("dst_port") or 0) if typ != socket.SOCK_RAW else 0
            sock.connect(sockaddr(fam, rec["dst_addr"], port, scope))
        tr.restore_sockopts(sock, opts, "post", table)
    except BaseException:
        sock.close()
        raise
    return sock


def _build_order(rec: dict) -> int:
    """Listeners, then other sockets holding a port, then connections."""
    if rec["type"] == socket.SOCK_STREAM and rec.get("state") == tr.TCP_LISTEN:
        return 0
    if rec.get("tcp"):
        return 2
    return 1


def build_all(entries: list[dict]) -> tuple[dict[int, int], int, int]:
    """Build every inet socket of ``entries`` here; (file id -> fd, tcp count, tcp ns)."""
    out: dict[int, int] = {}
    tcp_ns = tcp_count = 0
    try:
        for e in sorted(entries, key=lambda e: _build_order(e["detail"])):
            rec = e["detail"]
            t0 = time.perf_counter_ns()
            try:
                sock = build_socket(rec)
            except OSError as err:
                if isinstance(err, RestoreError):
                    raise
                raise RestoreError(
                    f"Can't restore {_name(rec['family'], rec['type'], rec['proto'], rec.get('state') or 0)} "
                    f"{rec.get('src_addr')}:{rec.get('src_port')}: {err}"
                ) from err
            if rec.get("tcp"):
                tcp_ns += time.perf_counter_ns() - t0
                tcp_count += 1
            out[e["id"]] = _set_flags(sock, e.get("flags", 0))
    except BaseException:
        for fd in out.values():
            _close_quietly(fd)
        raise
    return out, tcp_count, tcp_ns


def _raise_nofile(need: int) -> None:
    """Room for our copy of every socket plus the driver's dups of them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * need + 256 and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _close_quietly(fd: int) -> None:
    """Close one of our sockets without a RST or FIN reaching a peer (repair mode)."""
    try:
        s = socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return
    try:
        if s.type == socket.SOCK_STREAM:
            s.setsockopt(tr.SOL_TCP, tr.TCP_REPAIR, tr.pack_int(tr.TCP_REPAIR_ON))
    except OSError:
        pass  # not a connection: nothing is sent on close
    s.close()


# --- plugging into the drivers ---------------------------------------------------------------
class InetKind(FdKind):
    name = "inet_sk"
    record_types = ("inet_sk",)

    def match(self, probe: FdProbe) -> bool:
        if probe.copy < 0 or not probe.link.startswith("socket:["):
            return False
        try:
            return sock_ids(probe.copy)[0] in INET_FAMILIES
        except OSError:
            return False

    def dump(self, ctx, probe: FdProbe) -> dict:
        return dump_inet(ctx, probe)

    def restore(self, rctx, entry: dict) -> int:
        # We keep our own fd of each socket until the restore is over (see
        # InetResource.cleanup); the driver gets a dup and closes it.
        built = rctx.extra.setdefault("inet_fds", {})
        fd = built.get(entry["id"])
        if fd is None:  # not pre-built (restore_early did not see it): build it now
            sock = run_in_netns(rctx.stub_pid, build_socket, entry["detail"])
            fd = built[entry["id"]] = _set_flags(sock, entry.get("flags", 0))
        return os.dup(fd)


class RefusedSocketKind(FdKind):
    """Packet and netlink sockets: refused with a clear message."""

    name = "refused_socket"
    record_types = ()
    NAMES = {AF_PACKET: "a packet socket (AF_PACKET)", AF_NETLINK: "a netlink socket"}

    def match(self, probe: FdProbe) -> bool:
        if probe.copy < 0 or not probe.link.startswith("socket:["):
            return False
        try:
            return sock_ids(probe.copy)[0] in self.NAMES
        except OSError:
            return False

    def dump(self, ctx, probe: FdProbe) -> dict:
        fam, typ, proto = sock_ids(probe.copy)
        raise refuse(
            probe,
            self.NAMES[fam],
            f"type {typ}, protocol {proto}: vzpy cannot checkpoint these sockets yet",
        )


class InetResource(base.CtResource):
    """Container-wide side of inet sockets: the end of a dump, and building them at restore."""

    name = "inet"
    order = 40

    def dump_finish(self, ctx, ok: bool, leave: str) -> None:
        finish_dump(ctx, ok, leave)

    def resume_dumped(self, ct) -> None:
        n = leave_repair_all(ct.cgroup.procs())
        if n:
            log.info(f"\t{n} TCP connection(s) left repair mode", level=1)

    def restore_early(self, rctx) -> None:
        if not rctx.img.has("files"):
            return
        entries = [
            e for e in rctx.img.read("files").get("entries") or []
            if (e.get("detail") or {}).get("_type") == "inet_sk"
        ]  # fmt: skip
        if not entries:
            return
        _raise_nofile(len(entries))
        fds, n, ns = run_in_netns(rctx.stub_pid, build_all, entries)
        rctx.extra["inet_fds"] = fds
        rctx.extra["inet_stats"] = {"tcp_count": n, "tcp_ns": ns}
        if n:
            log.info(
                f"\t{n} TCP connection(s) restored in {ns / 1e6:.1f} ms ({ns / 1e3 / n:.0f} us each)",
                level=1,
            )

    def after_release(self, rctx) -> None:
        for fd in (rctx.extra.get("inet_fds") or {}).values():
            os.close(fd)  # the tasks hold theirs
        rctx.extra["inet_fds"] = {}

    def cleanup(self, rctx) -> None:
        # The tasks are dead: ours are the last references.  Closed in repair
        # mode, the connections die without a FIN or RST reaching their peers.
        for fd in (rctx.extra.get("inet_fds") or {}).values():
            _close_quietly(fd)
        rctx.extra["inet_fds"] = {}


register_fd_kind(InetKind())
register_fd_kind(RefusedSocketKind())
base.register_ct_resource(InetResource())
