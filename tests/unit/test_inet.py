"""Pure parts of resources/inet.py and resources/netns.py: records, ordering, option
tables, socket rebuilding on loopback (no privileges needed), sysctl diffing."""

from __future__ import annotations

import os
import socket
import stat

import pytest

from vzpy.images import schema
from vzpy.resources import inet, netns
from vzpy.resources.files import FdProbe
from vzpy.sys import tcp_repair as tr


def _probe(fd: int) -> FdProbe:
    return FdProbe(
        pid=os.getpid(), nspid=7, fd=fd, link="socket:[1]", info=None, copy=fd, st=os.fstat(fd)
    )


def test_inet_record_round_trip():
    rec = {
        "_type": "inet_sk",
        "family": socket.AF_INET6,
        "type": socket.SOCK_STREAM,
        "proto": 6,
        "state": tr.TCP_ESTABLISHED,
        "src_addr": "::ffff:10.0.0.1",
        "src_port": 80,
        "dst_addr": "::ffff:10.0.0.2",
        "dst_port": 40000,
        "sockopts": {"TCP_NODELAY": 1, "SO_LINGER": [1, 5], "TCP_CONGESTION": "cubic"},
        "tcp": {
            "format": 1, "family": socket.AF_INET6, "state": 1, "src_addr": "::ffff:10.0.0.1",
            "src_port": 80, "dst_addr": "::ffff:10.0.0.2", "dst_port": 40000, "scope_id": 0,
            "inq_seq": 0xFFFFFFF0, "inq_len": 3, "inq": b"abc", "outq_seq": 2**31 + 5,
            "outq_len": 2, "outq": b"xy", "unsq_len": 1, "fin_unsent": False, "mss": 1460,
            "snd_wscale": 7, "rcv_wscale": 10, "tcpi_options": 7, "timestamp": 2**32 - 1,
            "window": {"snd_wl1": 1, "snd_wnd": 2, "max_window": 3, "rcv_wnd": 4, "rcv_wup": 5},
        },
        "bound": True,
    }  # fmt: skip
    tagged = schema.encode("inet_sk", rec)
    back = schema.decode("inet_sk", tagged, where="test")
    assert back["tcp"]["outq_seq"] == 2**31 + 5 and back["tcp"]["inq"] == b"abc"
    assert back["tcp"]["window"]["rcv_wup"] == 5
    assert back["sockopts"] == rec["sockopts"]
    assert back["ino"] is None and back["backlog"] is None


def test_netns_record_round_trip():
    st = {
        "links": [
            {"name": "venet0", "kind": "veth", "mac": "00:18:51:aa:bb:cc", "mtu": 1500, "up": True}
        ],
        "addrs": [
            {"ifname": "venet0", "family": 2, "address": "10.1.1.1", "prefixlen": 32, "scope": 0}
        ],
        "routes": [{"family": 2, "dst": None, "dst_len": 0, "oif": "venet0", "scope": 253}],
        "sysctls": {"core/somaxconn": "4096"},
        "host_mac": "00:18:51:00:00:01",
    }
    back = schema.decode("netns", schema.encode("netns", st), where="test")
    assert back["links"][0]["mac"] == "00:18:51:aa:bb:cc"
    assert back["routes"][0]["dst"] is None and back["sysctls"] == {"core/somaxconn": "4096"}


def test_build_order_listeners_first_connections_last():
    recs = [
        {"type": socket.SOCK_STREAM, "state": tr.TCP_ESTABLISHED, "tcp": {"x": 1}},
        {"type": socket.SOCK_DGRAM, "state": 0},
        {"type": socket.SOCK_STREAM, "state": tr.TCP_LISTEN},
        {"type": socket.SOCK_STREAM, "state": tr.TCP_CLOSE},
    ]
    order = sorted(recs, key=inet._build_order)
    assert order[0]["state"] == tr.TCP_LISTEN and "tcp" in order[-1]


@pytest.mark.parametrize(
    "host,port,bound",
    [("0.0.0.0", 0, False), ("::", 0, False), ("127.0.0.1", 0, True), ("0.0.0.0", 53, True)],
)
def test_is_bound(host, port, bound):
    assert inet.is_bound(host, port) is bound


def test_addresses():
    assert inet.sockaddr(socket.AF_INET6, "::1", 5, 3) == ("::1", 5, 0, 3)
    assert inet.sockaddr(socket.AF_INET, "1.2.3.4", 5) == ("1.2.3.4", 5)
    assert inet.split_addr(("fe80::1", 7, 0, 2)) == ("fe80::1", 7, 2)


@pytest.mark.parametrize("table", [inet.DGRAM_SOCKOPTS, inet.RAW_SOCKOPTS, inet.TCP_SOCKOPTS])
def test_option_tables_are_well_formed(table):
    for name, (level, opt, fmt, fams, phase) in table.items():
        assert phase in ("pre", "post", "reuse"), name
        assert fams and all(f in (socket.AF_INET, socket.AF_INET6) for f in fams), name
        assert fmt == "str" or fmt.strip("0123456789") in ("i", "I", "ii", "qq"), name
        assert isinstance(level, int) and isinstance(opt, int)
    # IP_TOS must come before SO_PRIORITY (setting the TOS resets the priority)
    names = list(table)
    if "IP_TOS" in names and "SO_PRIORITY" in names:
        assert names.index("IP_TOS") < names.index("SO_PRIORITY")


def test_udp_dump_and_rebuild_on_loopback():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        a.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        a.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x10)
        b.connect(a.getsockname())
        recs = []
        for s in (a, b):
            rec = {"family": socket.AF_INET, "type": socket.SOCK_DGRAM, "proto": 17}
            inet._dump_dgram(_probe(s.fileno()), s, rec, inet.DGRAM_SOCKOPTS)
            recs.append(rec)
        assert recs[0]["bound"] and "dst_addr" not in recs[0]
        assert recs[1]["dst_addr"] == "127.0.0.1" and recs[1]["dst_port"] == a.getsockname()[1]
        port_a = a.getsockname()[1]
        a.close()  # free the port for the rebuilt socket
        b.close()
        a2, b2 = inet.build_socket(recs[0]), inet.build_socket(recs[1])
        try:
            assert a2.getsockname() == ("127.0.0.1", port_a)
            assert a2.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 1
            assert a2.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 0x10
            assert b2.getpeername() == ("127.0.0.1", port_a)
            b2.send(b"hi")
            assert a2.recv(10) == b"hi"
        finally:
            a2.close()
            b2.close()
    finally:
        a.close()
        b.close()


def test_listener_dump_and_rebuild_and_pending_refused():
    lsn = socket.socket()
    try:
        lsn.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsn.bind(("127.0.0.1", 0))
        lsn.listen(5)
        rec = {"family": socket.AF_INET, "type": socket.SOCK_STREAM, "proto": 6}
        assert inet._dump_tcp_sock(object(), _probe(lsn.fileno()), lsn, rec) is False
        assert rec["state"] == tr.TCP_LISTEN and rec["backlog"] == 5
        c = socket.create_connection(lsn.getsockname())  # waits in the accept queue
        try:
            with pytest.raises(inet.UnsupportedError, match="accept queue"):
                inet._dump_tcp_sock(object(), _probe(lsn.fileno()), lsn, dict(rec))
        finally:
            c.close()
        addr = lsn.getsockname()
        lsn.close()
        l2 = inet.build_socket(rec)
        try:
            assert l2.getsockname() == addr
            assert l2.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
            assert l2.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
        finally:
            l2.close()
    finally:
        lsn.close()


def test_connection_needs_the_lock():
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(1)
    c = socket.create_connection(lsn.getsockname())
    s, _ = lsn.accept()
    try:
        rec = {"family": socket.AF_INET, "type": socket.SOCK_STREAM, "proto": 6}

        class Ctx:
            netns_locked = False
            extra: dict = {}

        with pytest.raises(inet.UnsupportedError, match="network locked"):
            inet._dump_tcp_sock(Ctx(), _probe(c.fileno()), c, rec)
    finally:
        for x in (c, s, lsn):
            x.close()


def test_sysctls_read_and_written_only_when_different(tmp_path, monkeypatch):
    root = tmp_path / "net"
    files = {
        "core/somaxconn": "4096",
        "ipv4/ip_local_port_range": "32768\t60999",
        "ipv4/conf/all/forwarding": "0",
        "ipv4/conf/venet0/forwarding": "0",
        "ipv4/conf/eth9/forwarding": "0",  # not one of ours: skipped
        "ipv4/route/flush": "",  # write-only
    }
    for name, val in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(val + "\n")
    os.chmod(root / "ipv4/route/flush", stat.S_IWUSR)
    monkeypatch.setattr(netns, "SYSCTL_ROOT", str(root))
    got = netns.read_sysctls(["lo", "venet0"])
    assert got == {
        "core/somaxconn": "4096",
        "ipv4/ip_local_port_range": "32768 60999",
        "ipv4/conf/all/forwarding": "0",
        "ipv4/conf/venet0/forwarding": "0",
    }
    before = (root / "core/somaxconn").stat().st_mtime_ns
    want = dict(got, **{"ipv4/ip_local_port_range": "20000 30000", "ipv4/nope": "1"})
    failed = netns.write_sysctls(want)
    assert (root / "ipv4/ip_local_port_range").read_text() == "20000 30000"
    assert (root / "core/somaxconn").stat().st_mtime_ns == before  # same value: not written
    assert len(failed) == 1 and failed[0].startswith("ipv4.nope=1")


def test_rst_guard_messages_build():
    msgs = netns._rst_guard_msgs()
    assert len(msgs) == 2
    for m in msgs:
        m.encode()
