"""TCP repair and the network lock on real sockets in throwaway namespaces.

Every test makes its own network namespaces (``vzt-<random>``) and registers
their removal in a cleanup registry that runs even when the test fails.
Traffic stays on loopback inside those namespaces or on veths between them.
Sockets of a namespace are created on a thread that joined it
(``run_in_netns``); the test does their I/O from its main thread.

"Loss" is made with nftables drop rules keyed on the TCP source port, hooked
on *input* so the sender still counts the segment as sent (an output drop would
leave it unsent instead).
"""

from __future__ import annotations

import errno
import json
import os
import random
import secrets
import select
import signal
import socket
import struct
import subprocess
import time
import traceback
from collections.abc import Callable

import pytest

from vzpy.sys import netlock
from vzpy.sys import tcp_repair as tr
from vzpy.sys.libc import CLONE_NEWNET, pidfd_getfd, run_in_netns, set_pdeathsig, setns

pytestmark = pytest.mark.root

# --- fixtures and helpers --------------------------------------------------------------


class Cleanup:
    """Callables run in reverse order at teardown, all of them even if some fail."""

    def __init__(self) -> None:
        self.fns: list[Callable[[], object]] = []

    def __call__(self, fn: Callable[[], object]) -> None:
        self.fns.append(fn)

    def run(self) -> None:
        errors = []
        while self.fns:
            try:
                self.fns.pop()()
            except Exception as e:  # keep cleaning; report the first failure below
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def cleanup():
    c = Cleanup()
    try:
        yield c
    finally:
        c.run()


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def make_netns(cleanup: Cleanup) -> str:
    name = f"vzt-{secrets.token_hex(4)}"
    ip("netns", "add", name)
    cleanup(lambda: subprocess.run(["ip", "netns", "del", name], check=False))
    ip("-n", name, "link", "set", "lo", "up")
    return name


def nspath(ns: str) -> str:
    return f"/run/netns/{ns}"


def in_ns(ns: str, fn, *args, **kw):
    return run_in_netns(nspath(ns), fn, *args, **kw)


def listener(ns: str, addr: tuple, rcvbuf: int | None = None, family=socket.AF_INET):
    def make() -> socket.socket:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited, locked
        s.bind(addr)
        s.listen(16)
        return s

    return in_ns(ns, make)


def pattern(n: int, seed: str) -> bytes:
    return random.Random(seed).randbytes(n)


def recv_exact(sock: socket.socket, n: int, timeout: float = 10.0) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"got {len(buf)} of {n} bytes")
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    sock.settimeout(None)
    return bytes(buf)


def expect_eof(sock: socket.socket, timeout: float = 10.0) -> None:
    sock.settimeout(timeout)
    assert sock.recv(4096) == b""
    sock.settimeout(None)


def fill_send(sock: socket.socket, seed: str, limit: int = 64 << 20) -> bytes:
    """send() without blocking until the kernel refuses more; return what it took."""
    data = pattern(limit, seed)
    sent = 0
    while sent < limit:
        try:
            sent += sock.send(data[sent : sent + 65536], socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
    return data[:sent]


def wait_state(sock: socket.socket, want: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while tr.tcp_state(sock) != want:
        if time.monotonic() > deadline:
            got = tr.tcp_state(sock)
            raise AssertionError(f"state {tr.STATE_NAMES[got]}, wanted {tr.STATE_NAMES[want]}")
        time.sleep(0.005)


def drop_tcp_from_port(ns: str, sport: int, cleanup: Cleanup) -> Callable[[], None]:
    """Drop, at input in ``ns``, TCP segments with source port ``sport`` and options.

    Real segments of these connections all carry a timestamp option (data
    offset > 5); the ones tcp_repair forges to replay a FIN carry none, and
    must get through as they would through the network lock.
    Returns a callable that lifts the rule (also registered for cleanup).
    """
    table = f"vzt_drop_{sport}"
    msgs = netlock.table_msgs(table, replace=True)
    msgs.append(netlock.chain_msg(table, "input", netlock.NF_INET_LOCAL_IN, -400, 1))
    msgs.append(
        netlock.rule_msg(
            table,
            "input",
            [
                netlock.meta_load(16),  # NFT_META_L4PROTO
                netlock.cmp_eq(bytes([socket.IPPROTO_TCP])),
                [tr_payload(offset=0, length=2)],
                netlock.cmp_eq(struct.pack("!H", sport)),
                [tr_payload(offset=12, length=1)],  # data offset << 4
                [_bitwise(b"\xf0")],
                [_cmp(1, b"\x50")],  # NFT_CMP_NEQ: has options
                netlock.verdict(netlock.NF_DROP),
            ],
        )
    )
    in_ns(ns, netlock.nft_batch, msgs)

    def lift() -> None:
        in_ns(ns, netlock.nft_batch, netlock.table_msgs(table, replace=False))

    cleanup(lift)
    return lift


def _bitwise(mask: bytes) -> dict:
    from pyroute2.nftables.expressions import genex

    return genex(
        "bitwise",
        {
            "sreg": 1,
            "dreg": 1,
            "len": len(mask),
            "mask": {"attrs": [("NFTA_DATA_VALUE", mask)]},
            "xor": {"attrs": [("NFTA_DATA_VALUE", bytes(len(mask)))]},
        },
    )


def _cmp(op: int, data: bytes) -> dict:
    from pyroute2.nftables.expressions import genex

    return genex("cmp", {"sreg": 1, "op": op, "data": {"attrs": [("NFTA_DATA_VALUE", data)]}})


def tr_payload(offset: int, length: int) -> dict:
    from pyroute2.nftables.expressions import genex

    # base 2 = NFT_PAYLOAD_TRANSPORT_HEADER
    return genex("payload", {"dreg": 1, "base": 2, "offset": offset, "len": length})


class Owner:
    """A child process that owns sockets, as a container task would.

    ``setup()`` runs in the child, inside ``ns``, and returns a JSON-able dict
    (fd numbers included) plus a context; ``on_go(ctx)`` runs when the test
    calls ``go()`` and its result comes back.  The child dies with the test.
    """

    def __init__(self, ns: str | None, setup, on_go=None, cleanup: Cleanup | None = None):
        info_r, info_w = os.pipe()
        cmd_r, cmd_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns into pytest
            code = 0
            try:
                keep = {info_w, cmd_r}
                for fd in map(int, os.listdir("/proc/self/fd")):
                    if fd > 2 and fd not in keep:
                        try:
                            os.close(fd)
                        except OSError:
                            pass
                set_pdeathsig(signal.SIGKILL)
                if ns:
                    nsfd = os.open(nspath(ns), os.O_RDONLY)
                    setns(nsfd, CLONE_NEWNET)
                    os.close(nsfd)
                info, ctx = setup()
                os.write(info_w, json.dumps(info).encode() + b"\n")
                if os.read(cmd_r, 1) == b"g" and on_go:
                    os.write(info_w, json.dumps(on_go(ctx)).encode() + b"\n")
                os.read(cmd_r, 1)
            except BaseException:
                os.write(info_w, json.dumps({"error": traceback.format_exc()}).encode() + b"\n")
                code = 1
            os._exit(code)
        os.close(info_w)
        os.close(cmd_r)
        self.pid = pid
        self.pidfd = os.pidfd_open(pid)
        self._r = os.fdopen(info_r, "rb")
        self._cmd = cmd_w
        if cleanup:
            cleanup(self.kill)
        self.info = self._read()

    def _read(self, timeout: float = 20.0) -> dict:
        ready, _, _ = select.select([self._r], [], [], timeout)
        assert ready, "owner child did not answer"
        msg = json.loads(self._r.readline() or b'{"error": "child died"}')
        assert "error" not in msg, msg["error"]
        return msg

    def steal(self, fd: int) -> socket.socket:
        return socket.socket(fileno=pidfd_getfd(self.pidfd, fd))

    def go(self) -> dict:
        os.write(self._cmd, b"g")
        return self._read()

    def kill(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(self.pid, 0)
            self.pid = 0
            os.close(self.pidfd)
            os.close(self._cmd)
            self._r.close()


def connect_pair(ns: str, lst: socket.socket, family=socket.AF_INET):
    """A connected (client, server) pair inside ``ns``, both in this process."""
    client = in_ns(ns, lambda: socket.create_connection(lst.getsockname()[:2], timeout=5))
    client.settimeout(None)
    server, _ = lst.accept()
    return client, server


def migrate_in_place(ns: str, sock: socket.socket) -> tuple[dict, socket.socket]:
    """Dump ``sock`` (our own), close it in repair mode, restore it in ``ns``."""
    st = tr.dump_tcp(sock)
    sock.close()
    return st, in_ns(ns, tr.restore_tcp, st)


# --- loopback: a child owns the socket ----------------------------------------------------


def test_loopback_both_queues_through_a_killed_owner(cleanup):
    ns = make_netns(cleanup)
    lst = listener(ns, ("127.0.0.1", 0), rcvbuf=65536)
    cleanup(lst.close)
    port = lst.getsockname()[1]
    p2c_before = pattern(20000, "p2c-before")

    def setup():
        c = socket.create_connection(("127.0.0.1", port))
        return {"fd": c.fileno(), "port": c.getsockname()[1]}, c

    def on_go(c):
        # The test dropped the peer's ACKs: what we send now stays unacked
        # (a window's worth) or unsent (the rest).
        return {"sent": len(fill_send(c, "c2p"))}

    owner = Owner(ns, setup, on_go, cleanup)
    peer, _ = lst.accept()
    cleanup(peer.close)
    peer.sendall(p2c_before)
    time.sleep(0.05)  # let it be acked before the drop rule goes in
    lift = drop_tcp_from_port(ns, port, cleanup)
    sent = owner.go()["sent"]
    c2p = pattern(64 << 20, "c2p")[:sent]

    copy = owner.steal(owner.info["fd"])
    st = tr.dump_tcp(copy)
    assert st["state"] == tr.TCP_ESTABLISHED
    assert st["inq"] == p2c_before
    unacked = st["outq_len"] - st["unsq_len"]
    assert unacked > 0 and st["unsq_len"] > 0, (unacked, st["unsq_len"])
    assert st["outq"] == c2p[sent - st["outq_len"] :]
    owner.kill()
    copy.close()  # last reference, in repair mode: no RST

    p2c_gap = pattern(700, "p2c-gap")
    peer.sendall(p2c_gap)  # dropped (the drop rule acts as the lock)
    restored = in_ns(ns, tr.restore_tcp, st)
    cleanup(restored.close)
    lift()

    assert recv_exact(restored, len(p2c_before) + len(p2c_gap)) == p2c_before + p2c_gap
    assert recv_exact(peer, sent) == c2p  # every byte exactly once, in order
    for i in range(3):
        msg = pattern(100000, f"after-{i}")
        restored.sendall(msg)
        assert recv_exact(peer, len(msg)) == msg
        peer.sendall(msg[::-1])
        assert recv_exact(restored, len(msg)) == msg[::-1]
    assert peer.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # never reset


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6])
def test_options_roundtrip(cleanup, family):
    ns = make_netns(cleanup)
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    lst = listener(ns, (host, 0), family=family)
    cleanup(lst.close)

    def make_client() -> socket.socket:
        c = socket.socket(family, socket.SOCK_STREAM)
        if family == socket.AF_INET6:
            c.setsockopt(tr.SOL_IPV6, tr.IPV6_V6ONLY, 1)
            c.setsockopt(tr.SOL_IPV6, tr.IPV6_TCLASS, 0x28)
        else:
            c.setsockopt(tr.SOL_IP, tr.IP_TOS, 0x10)
        c.setsockopt(tr.SOL_SOCKET, tr.SO_REUSEADDR, 1)
        c.setsockopt(tr.SOL_SOCKET, tr.SO_MARK, struct.pack("=I", 0x90000001))  # >= 2**31
        c.connect(lst.getsockname()[:2])
        return c

    client = in_ns(ns, make_client)
    server, _ = lst.accept()
    cleanup(server.close)
    sets = [
        (tr.SOL_TCP, tr.TCP_NODELAY, 1),
        (tr.SOL_SOCKET, tr.SO_KEEPALIVE, 1),
        (tr.SOL_TCP, tr.TCP_KEEPIDLE, 33),
        (tr.SOL_TCP, tr.TCP_KEEPINTVL, 7),
        (tr.SOL_TCP, tr.TCP_KEEPCNT, 4),
        (tr.SOL_TCP, tr.TCP_USER_TIMEOUT, 12345),
        (tr.SOL_SOCKET, tr.SO_SNDBUF, 300000),
        (tr.SOL_SOCKET, tr.SO_RCVBUF, 200000),
        (tr.SOL_SOCKET, tr.SO_PRIORITY, 5),
        (tr.SOL_SOCKET, tr.SO_OOBINLINE, 1),
        (tr.SOL_SOCKET, tr.SO_LINGER, struct.pack("ii", 1, 9)),
        (tr.SOL_TCP, tr.TCP_NOTSENT_LOWAT, 131072),
        (tr.SOL_TCP, tr.TCP_LINGER2, 11),
    ]
    for level, opt, val in sets:
        client.setsockopt(level, opt, val)
    cong = (
        "reno" if client.getsockopt(tr.SOL_TCP, tr.TCP_CONGESTION, 16)[:4] != b"reno" else "cubic"
    )
    client.setsockopt(tr.SOL_TCP, tr.TCP_CONGESTION, cong.encode())
    before = tr.dump_sockopts(client)
    assert before["SO_BUF_LOCK"] == tr.SOCK_SNDBUF_LOCK | tr.SOCK_RCVBUF_LOCK
    client.sendall(b"x" * 1000)
    assert recv_exact(server, 1000)

    st, restored = migrate_in_place(ns, client)
    cleanup(restored.close)
    assert st["sockopts"] == before
    after = tr.dump_sockopts(restored)
    assert after == before
    assert after["TCP_CONGESTION"] == cong and after["SO_MARK"] == 0x90000001
    restored.sendall(b"ping")
    assert recv_exact(server, 4) == b"ping"


def test_autotuned_buffers_stay_autotuned(cleanup):
    ns = make_netns(cleanup)
    lst = listener(ns, ("127.0.0.1", 0), rcvbuf=65536)
    cleanup(lst.close)
    client, server = connect_pair(ns, lst)
    cleanup(server.close)
    sent = fill_send(client, "fill")  # grows the autotuned send buffer and queues data
    before = tr.dump_sockopts(client)
    assert before["SO_BUF_LOCK"] == 0
    st, restored = migrate_in_place(ns, client)
    cleanup(restored.close)
    after = tr.dump_sockopts(restored)
    assert after["SO_BUF_LOCK"] == 0
    assert after["SO_SNDBUF"] == before["SO_SNDBUF"]
    assert recv_exact(server, len(sent)) == sent


def test_sequence_numbers_wrap(cleanup):
    """Connections are made until one has a sequence number >= 2**31 in each queue."""
    ns = make_netns(cleanup)
    lst = listener(ns, ("127.0.0.1", 0))
    cleanup(lst.close)
    for _ in range(64):
        client, server = connect_pair(ns, lst)
        cleanup(server.close)
        client.sendall(b"a" * 10)
        server.sendall(b"b" * 10)
        time.sleep(0.01)
        st, restored = migrate_in_place(ns, client)
        cleanup(restored.close)
        assert recv_exact(server, 10) == b"a" * 10
        assert recv_exact(restored, 10) == b"b" * 10
        if st["inq_seq"] >= 1 << 31 and st["outq_seq"] >= 1 << 31:
            break
    else:
        pytest.fail("no connection with both sequence numbers >= 2**31 in 64 tries")


def test_dump_refuses_listen_and_leaves_socket_alone(cleanup):
    ns = make_netns(cleanup)
    lst = listener(ns, ("127.0.0.1", 0))
    cleanup(lst.close)
    with pytest.raises(tr.TcpRepairUnsupported, match="LISTEN.*dump_listen"):
        tr.dump_tcp(lst)
    client, server = connect_pair(ns, lst)  # still listening
    client.close()
    server.close()


def test_leave_repair_lets_the_owner_go_on(cleanup):
    ns = make_netns(cleanup)
    lst = listener(ns, ("127.0.0.1", 0))
    cleanup(lst.close)
    port = lst.getsockname()[1]

    def setup():
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        return {"fd": c.fileno()}, c

    def on_go(c):
        got = recv_exact(c, 3000)
        c.sendall(got[::-1])
        return {
            "ok": got == pattern(3000, "x"),
            "reuse": c.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
            "repair_off": _repair_off(c),
        }

    owner = Owner(ns, setup, on_go, cleanup)
    peer, _ = lst.accept()
    cleanup(peer.close)
    peer.sendall(pattern(3000, "x")[:1000])
    time.sleep(0.05)
    copy = owner.steal(owner.info["fd"])
    st = tr.dump_tcp(copy)
    assert st["inq_len"] == 1000
    with pytest.raises(OSError) as ei:
        copy.recv(10)  # the owner's socket is in repair mode too
    assert ei.value.errno == errno.EPERM
    # ... the checkpoint is abandoned:
    tr.leave_repair(copy, st)
    copy.close()
    peer.sendall(pattern(3000, "x")[1000:])
    res = owner.go()
    assert res == {"ok": True, "reuse": 1, "repair_off": True}
    assert recv_exact(peer, 3000) == pattern(3000, "x")[::-1]


def _repair_off(sock: socket.socket) -> bool:
    """True if TCP_REPAIR_QUEUE is refused with EPERM, i.e. repair mode is off."""
    try:
        sock.setsockopt(tr.SOL_TCP, tr.TCP_REPAIR_QUEUE, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return False


# --- half-closed states ----------------------------------------------------------------
#
# C is the socket we checkpoint, P its peer.  Each scenario builds the state,
# then after the restore drives the connection to its end and checks the data.


def _half_closed_setup(cleanup, family: str):
    """C and P on loopback: IPv4, IPv6, or an IPv6 socket talking IPv4 (mapped)."""
    ns = make_netns(cleanup)
    fam = socket.AF_INET if family == "ipv4" else socket.AF_INET6
    bind = {"ipv4": "127.0.0.1", "ipv6": "::1", "mapped": "::"}[family]
    lst = listener(ns, (bind, 0), rcvbuf=65536, family=fam)
    cleanup(lst.close)
    dst = {"ipv4": "127.0.0.1", "ipv6": "::1", "mapped": "::ffff:127.0.0.1"}[family]

    def connect() -> socket.socket:
        c = socket.socket(fam, socket.SOCK_STREAM)
        c.connect((dst, lst.getsockname()[1]))
        return c

    c = in_ns(ns, connect)
    p, _ = lst.accept()
    cleanup(p.close)
    return ns, c, p


HALF_CLOSED = [
    "FIN_WAIT1",
    "FIN_WAIT1-unsent",
    "FIN_WAIT2",
    "CLOSE_WAIT",
    "LAST_ACK",
    "LAST_ACK-unsent",
    "CLOSING",
    "CLOSING-unsent",
]


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "mapped"])
@pytest.mark.parametrize("case", HALF_CLOSED)
def test_half_closed(cleanup, case, family):
    ns, c, p = _half_closed_setup(cleanup, family)
    cport, pport = c.getsockname()[1], p.getsockname()[1]
    name, unsent = case.split("-")[0], case.endswith("-unsent")
    want = getattr(tr, f"TCP_{name}")
    p2c = pattern(5000, "p2c")
    p.sendall(p2c)  # unread by C: its receive queue
    time.sleep(0.02)
    c2p = b""
    if unsent:
        c2p = fill_send(c, "c2p")  # P does not read: zero window, C's data unsent
    lift = None
    if name == "CLOSE_WAIT":
        p.shutdown(socket.SHUT_WR)
    elif name == "FIN_WAIT2":
        c.shutdown(socket.SHUT_WR)
    elif name == "FIN_WAIT1":
        if not unsent:
            lift = drop_tcp_from_port(ns, pport, cleanup)  # P's ACK of our FIN is lost
        c.shutdown(socket.SHUT_WR)
    elif name == "LAST_ACK":
        p.shutdown(socket.SHUT_WR)
        wait_state(c, tr.TCP_CLOSE_WAIT)
        if not unsent:
            lift = drop_tcp_from_port(ns, pport, cleanup)
        c.shutdown(socket.SHUT_WR)
    elif name == "CLOSING":
        lift = drop_tcp_from_port(ns, cport, cleanup)  # C's FIN (and ACKs) never reach P
        c.shutdown(socket.SHUT_WR)
        wait_state(c, tr.TCP_FIN_WAIT1)
        p.shutdown(socket.SHUT_WR)  # P's FIN reaches C before any ACK of C's FIN
    wait_state(c, want)

    st, r = migrate_in_place(ns, c)
    cleanup(r.close)
    assert st["state"] == want and st["fin_unsent"] == unsent
    assert tr.tcp_state(r) == want
    assert st["inq"] == p2c
    assert st["outq"] == c2p[len(c2p) - st["outq_len"] :]
    assert (st["unsq_len"] > 0) == unsent
    if lift:
        lift()

    # The data C had not read yet, then EOF if P had closed its side.
    assert recv_exact(r, len(p2c)) == p2c
    if want in tr.RCV_FIN_STATES:
        expect_eof(r)
    else:
        p.sendall(b"late data for C")
        assert recv_exact(r, 15) == b"late data for C"
        p.shutdown(socket.SHUT_WR)
        expect_eof(r)
    if want == tr.TCP_CLOSE_WAIT:
        r.sendall(b"reply after EOF")
        r.shutdown(socket.SHUT_WR)
    # P sees all of C's bytes, then C's FIN.
    assert recv_exact(p, len(c2p)) == c2p
    if want == tr.TCP_CLOSE_WAIT:
        assert recv_exact(p, 15) == b"reply after EOF"
    expect_eof(p)
    # Both FINs acknowledged: C ends in CLOSE (TIME_WAIT lives on without the fd).
    wait_state(r, tr.TCP_CLOSE, timeout=15)


# --- listening sockets -------------------------------------------------------------------


def test_listen_roundtrip_then_an_accepted_connection_on_its_port(cleanup):
    ns = make_netns(cleanup)

    def make() -> socket.socket:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(tr.SOL_TCP, tr.TCP_DEFER_ACCEPT, 5)
        s.setsockopt(tr.SOL_TCP, tr.TCP_MAXSEG, 1200)
        s.bind(("127.0.0.1", 0))
        s.listen(37)
        return s

    lst = in_ns(ns, make)
    client = in_ns(ns, lambda: socket.create_connection(lst.getsockname(), timeout=5))
    cleanup(client.close)
    client.sendall(b"?")  # TCP_DEFER_ACCEPT: accept() returns once data came
    server, _ = lst.accept()
    assert recv_exact(server, 1) == b"?"
    pending = in_ns(ns, lambda: socket.create_connection(lst.getsockname(), timeout=5))
    pending.sendall(b"!")  # TCP_DEFER_ACCEPT: queued once data arrives
    time.sleep(0.05)
    lst_state = tr.dump_listen(lst)
    assert lst_state["backlog"] == 37 and lst_state["pending"] == 1
    assert lst_state["sockopts"]["TCP_MAXSEG"] == 1200
    conn_state = tr.dump_tcp(server)
    lst.close()
    server.close()
    pending.close()

    new_lst = in_ns(ns, tr.restore_listen, lst_state)
    cleanup(new_lst.close)
    # The accepted connection shares the listener's port: repair mode's
    # SK_FORCE_REUSE lets it bind there.
    new_server = in_ns(ns, tr.restore_tcp, conn_state)
    cleanup(new_server.close)
    again = tr.dump_listen(new_lst)
    assert again["backlog"] == 37
    for k in ("SO_REUSEADDR", "TCP_DEFER_ACCEPT", "TCP_MAXSEG"):
        assert again["sockopts"][k] == lst_state["sockopts"][k], k
    client.sendall(b"still here")
    assert recv_exact(new_server, 10) == b"still here"
    addr = (lst_state["src_addr"], lst_state["src_port"])
    other = in_ns(ns, lambda: socket.create_connection(addr, timeout=5))
    cleanup(other.close)
    other.sendall(b"hi")
    acc, _ = new_lst.accept()
    cleanup(acc.close)
    assert recv_exact(acc, 2) == b"hi"


# --- cross-netns migration with the lock ---------------------------------------------------


@pytest.mark.parametrize("peer_closed", [False, True], ids=["established", "close_wait"])
def test_migration_between_namespaces_with_the_lock(cleanup, peer_closed):
    """Peer in P, source in A, destination B with A's IP and MAC, all on a bridge in S.

    Both A (from before the dump) and B (until the restore is done) are locked,
    as the checkpoint and restore drivers do.  With ``peer_closed`` the peer has
    shut down its side: the restore replays its FIN through B's lock.
    """
    nsp, nsa, nsb, nss = (make_netns(cleanup) for _ in range(4))
    net = f"10.{random.randint(64, 250)}.{random.randint(0, 250)}"
    ip("-n", nss, "link", "add", "br0", "type", "bridge")
    ip("-n", nss, "link", "set", "br0", "up")
    for ns, tag in ((nsp, "p"), (nsa, "a"), (nsb, "b")):
        ip("-n", nss, "link", "add", f"h{tag}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("-n", nss, "link", "set", f"h{tag}", "master", "br0", "up")
    mac = f"02:00:0a:{random.randint(0, 255):02x}:{random.randint(0, 255):02x}:02"
    ip("-n", nsp, "addr", "add", f"{net}.1/24", "dev", "eth0")
    ip("-n", nsp, "link", "set", "eth0", "up")
    for ns in (nsa, nsb):
        ip("-n", ns, "link", "set", "eth0", "address", mac)
        ip("-n", ns, "addr", "add", f"{net}.2/24", "dev", "eth0")
    ip("-n", nsa, "link", "set", "eth0", "up")  # B stays down until the migration
    cleanup(lambda: netlock.unlock_network(nspath(nsa)))
    cleanup(lambda: netlock.unlock_network(nspath(nsb)))

    lst = listener(nsp, (f"{net}.1", 7000), rcvbuf=65536)
    cleanup(lst.close)

    def setup():
        c = socket.create_connection((f"{net}.1", 7000), timeout=5)
        c.settimeout(None)
        return {"fd": c.fileno()}, c

    owner = Owner(nsa, setup, lambda c: {"sent": len(fill_send(c, "a2p"))}, cleanup)
    peer, _ = lst.accept()
    cleanup(peer.close)
    p2a = pattern(30000, "p2a")
    peer.sendall(p2a)
    if peer_closed:
        peer.shutdown(socket.SHUT_WR)
    time.sleep(0.05)
    # The peer's ACKs are lost from now on, so what A sends stays in flight
    # (the lock itself drops at A's output, which would leave data unsent).
    drop_tcp_from_port(nsa, 7000, cleanup)
    sent = owner.go()["sent"]
    a2p = pattern(64 << 20, "a2p")[:sent]

    t0 = time.perf_counter()
    netlock.lock_network(nspath(nsa))
    t_lock = time.perf_counter() - t0
    assert netlock.is_locked(nspath(nsa))
    gap = b"" if peer_closed else pattern(1400, "gap")
    if gap:
        peer.sendall(gap)  # dropped by the lock; the peer retransmits after the restore
    copy = owner.steal(owner.info["fd"])
    t0 = time.perf_counter()
    st = tr.dump_tcp(copy)
    t_dump = time.perf_counter() - t0
    assert st["state"] == (tr.TCP_CLOSE_WAIT if peer_closed else tr.TCP_ESTABLISHED)
    assert st["outq_len"] > st["unsq_len"] > 0  # both unacked and unsent data
    assert st["outq"] == a2p[sent - st["outq_len"] :]
    owner.kill()
    copy.close()
    ip("-n", nss, "link", "set", "ha", "nomaster")  # cut A off outside its netns

    netlock.lock_network(nspath(nsb))
    ip("-n", nsb, "link", "set", "eth0", "up")
    t0 = time.perf_counter()
    restored = in_ns(nsb, tr.restore_tcp, st)
    t_restore = time.perf_counter() - t0
    cleanup(restored.close)
    assert tr.tcp_state(restored) == st["state"]
    netlock.unlock_network(nspath(nsb))
    print(
        f"\nlock {t_lock * 1e3:.1f} ms, dump {t_dump * 1e3:.2f} ms "
        f"({st['inq_len']} B in, {st['outq_len'] - st['unsq_len']} B unacked, "
        f"{st['unsq_len']} B unsent), restore {t_restore * 1e3:.2f} ms"
    )

    assert recv_exact(restored, len(p2a) + len(gap), timeout=20) == p2a + gap
    if peer_closed:
        expect_eof(restored)
    assert recv_exact(peer, sent, timeout=20) == a2p
    restored.sendall(b"from B")
    assert recv_exact(peer, 6) == b"from B"
    if peer_closed:
        restored.shutdown(socket.SHUT_WR)
        expect_eof(peer)
    else:
        peer.sendall(b"to B")
        assert recv_exact(restored, 4) == b"to B"
    assert peer.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0  # never reset


# --- the network lock ------------------------------------------------------------------------


def test_netlock_blocks_and_unlocks(cleanup):
    nsp, nsa = make_netns(cleanup), make_netns(cleanup)
    ip("-n", nsp, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", nsa)
    for ns, addr in ((nsp, "10.201.0.1/24"), (nsa, "10.201.0.2/24")):
        ip("-n", ns, "addr", "add", addr, "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
    lst = listener(nsa, ("0.0.0.0", 8000))
    cleanup(lst.close)
    client = in_ns(nsp, lambda: socket.create_connection(("10.201.0.2", 8000), timeout=5))
    cleanup(client.close)
    server, _ = lst.accept()
    cleanup(server.close)
    cleanup(lambda: netlock.unlock_network(nsa))

    assert not netlock.is_locked(nsa)
    t0 = time.perf_counter()
    netlock.lock_network(nsa)
    t_lock = time.perf_counter() - t0
    netlock.lock_network(nsa)  # twice is fine
    assert netlock.is_locked(nsa)
    assert not netlock.is_locked(nsp)

    def try_connect():
        s = socket.socket()
        s.settimeout(1.0)
        try:
            s.connect(("10.201.0.2", 8000))
        except TimeoutError:
            return "timeout"
        finally:
            s.close()
        return "connected"

    assert in_ns(nsp, try_connect) == "timeout"
    client.sendall(b"locked out")
    server.settimeout(0.5)
    with pytest.raises(TimeoutError):
        server.recv(100)
    server.settimeout(None)

    def loopback_inside():  # the container still talks to itself
        c = socket.create_connection(("10.201.0.2", 8000), timeout=2)
        c.close()
        return True

    assert in_ns(nsa, loopback_inside)
    lst.accept()[0].close()

    t0 = time.perf_counter()
    netlock.unlock_network(nsa)
    t_unlock = time.perf_counter() - t0
    netlock.unlock_network(nsa)  # twice is fine
    assert not netlock.is_locked(nsa)
    assert recv_exact(server, 10, timeout=10) == b"locked out"  # the peer's retransmission
    assert in_ns(nsp, try_connect) == "connected"
    lst.accept()[0].close()
    print(f"\nlock {t_lock * 1e3:.1f} ms, unlock {t_unlock * 1e3:.1f} ms")


# --- scale ------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 1000])
def test_many_connections_timing(cleanup, n):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4 * n + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * n + 100), hard))
        cleanup(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    ns = make_netns(cleanup)
    lst = listener(ns, ("127.0.0.1", 0))
    cleanup(lst.close)
    lst.listen(n)
    port = lst.getsockname()[1]

    def setup():
        conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
        for i, c in enumerate(conns):
            c.sendall(b"c%06d" % i)
        return {"fds": [c.fileno() for c in conns]}, conns

    owner = Owner(ns, setup, None, cleanup)
    peers = []
    for _ in range(n):
        p, _ = lst.accept()
        cleanup(p.close)
        peers.append(p)
    for i, p in enumerate(peers):
        p.sendall(b"p%06d" % i)
    time.sleep(0.1)
    copies = [owner.steal(fd) for fd in owner.info["fds"]]
    t0 = time.perf_counter()
    states = [tr.dump_tcp(c) for c in copies]
    t_dump = time.perf_counter() - t0
    owner.kill()
    for c in copies:
        c.close()

    def restore_all():
        return [tr.restore_tcp(s) for s in states]

    t0 = time.perf_counter()
    restored = in_ns(ns, restore_all)
    t_restore = time.perf_counter() - t0
    for r in restored:
        cleanup(r.close)
    print(
        f"\n{n} connections: dump {t_dump / n * 1e6:.0f} us/conn, "
        f"restore {t_restore / n * 1e6:.0f} us/conn"
    )
    by_port = {s["src_port"]: r for s, r in zip(states, restored, strict=True)}
    for p in peers:
        msg = recv_exact(p, 7)
        assert msg.startswith(b"c")
        r = by_port[p.getpeername()[1]]
        assert recv_exact(r, 7).startswith(b"p")
        r.sendall(b"ok")
        assert recv_exact(p, 2) == b"ok"


def test_big_queues(cleanup):
    """Megabytes in both queues: many skbs to peek, refills in pieces, bigger buffers."""
    ns = make_netns(cleanup)
    lst = listener(ns, ("127.0.0.1", 0), rcvbuf=65536)
    cleanup(lst.close)

    def make_client() -> socket.socket:
        c = socket.socket()
        c.setsockopt(tr.SOL_SOCKET, tr.SO_RCVBUFFORCE, 8 << 20)
        c.setsockopt(tr.SOL_SOCKET, tr.SO_SNDBUFFORCE, 8 << 20)
        c.connect(lst.getsockname())
        return c

    client = in_ns(ns, make_client)
    peer, _ = lst.accept()
    cleanup(peer.close)
    p2c = fill_send(peer, "big-p2c")  # the client does not read
    c2p = fill_send(client, "big-c2p")  # the peer does not read
    time.sleep(0.1)
    st, restored = migrate_in_place(ns, client)
    cleanup(restored.close)
    assert st["inq_len"] > 4 << 20 and st["outq_len"] > 4 << 20, (st["inq_len"], st["outq_len"])
    assert tr.dump_sockopts(restored)["SO_SNDBUF"] == st["sockopts"]["SO_SNDBUF"]
    # p2c not in the client's receive queue is still in the peer's send queue
    assert st["inq"] == p2c[: st["inq_len"]]
    assert recv_exact(restored, len(p2c), timeout=30) == p2c
    assert recv_exact(peer, len(c2p), timeout=30) == c2p


def test_failed_dump_leaves_repair_by_itself(cleanup, monkeypatch):
    ns = make_netns(cleanup)
    lst = listener(ns, ("127.0.0.1", 0))
    cleanup(lst.close)
    client, server = connect_pair(ns, lst)
    cleanup(client.close)
    cleanup(server.close)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.sendall(b"queued")
    time.sleep(0.02)

    def boom(*a, **kw):
        raise tr.TcpRepairError("injected", phase="dump")

    monkeypatch.setattr(tr, "_peek_queue", boom)
    with pytest.raises(tr.TcpRepairError, match="injected"):
        tr.dump_tcp(client)
    assert _repair_off(client)
    assert client.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert recv_exact(client, 6) == b"queued"
    client.sendall(b"alive")
    assert recv_exact(server, 5) == b"alive"
