"""resources/unix.py without a container: sock_diag parsing, the shutdown arithmetic,
the plan for rebuilding connections (and its refusals), and reading queues without
consuming them, on real socketpairs (no root needed)."""

from __future__ import annotations

import array
import os
import socket
import struct

import pytest

from vzpy.images import schema
from vzpy.resources import unix as U

# --- sock_diag ------------------------------------------------------------------------------


def _attr(typ: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), typ) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _diag_msg(ino: int, typ: int, state: int, attrs: bytes) -> bytes:
    body = struct.pack("=BBBBIII", U.AF_UNIX, typ, state, 0, ino, 0, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), U.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


def test_diag_request_layout():
    req = U.diag_request(seq=7)
    assert len(req) == 16 + 24  # nlmsghdr + struct unix_diag_req
    length, typ, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, typ, seq) == (40, U.SOCK_DIAG_BY_FAMILY, 7)
    assert flags == U.NLM_F_REQUEST | U.NLM_F_DUMP
    family, _proto, _pad, states, ino, show = struct.unpack_from("=BBHIII", req, 16)
    assert (family, states, ino) == (U.AF_UNIX, 0xFFFFFFFF, 0)
    assert show & U.UDIAG_SHOW_ICONS and show & U.UDIAG_SHOW_PEER and show & U.UDIAG_SHOW_VFS


def test_parse_diag_attributes():
    kdev = (8 << 20) | 3
    listener = _diag_msg(
        100,
        U.SOCK_STREAM,
        U.TCP_LISTEN,
        _attr(U.UNIX_DIAG_NAME, b"/run/x.sock\0")
        + _attr(U.UNIX_DIAG_VFS, struct.pack("=II", 555, kdev))
        + _attr(U.UNIX_DIAG_ICONS, struct.pack("=3I", 7, 8, 9))
        + _attr(U.UNIX_DIAG_RQLEN, struct.pack("=II", 3, 128))
        + _attr(U.UNIX_DIAG_SHUTDOWN, b"\0"),
    )
    client = _diag_msg(
        101,
        U.SOCK_DGRAM,
        U.TCP_ESTABLISHED,
        _attr(U.UNIX_DIAG_NAME, b"\0abstract")
        + _attr(U.UNIX_DIAG_PEER, struct.pack("=I", 0))
        + _attr(U.UNIX_DIAG_SHUTDOWN, b"\3"),
    )
    done = struct.pack("=IHHII", 20, U.NLMSG_DONE, 2, 1, 0) + b"\0" * 4
    socks, finished = U.parse_diag(listener + client + done)
    assert finished
    lst, cli = socks
    assert lst.name == b"/run/x.sock" and lst.state == U.TCP_LISTEN
    assert lst.vfs == (555, os.makedev(8, 3))
    assert lst.icons == [7, 8, 9] and (lst.rqueue, lst.wqueue) == (3, 128)
    assert lst.peer is None
    assert cli.name == b"\0abstract" and cli.peer == 0 and cli.shutdown == 3


def test_parse_diag_error():
    err = struct.pack("=IHHII", 36, U.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -13) + b"\0" * 16
    with pytest.raises(OSError) as e:
        U.parse_diag(err)
    assert e.value.errno == 13


def test_unix_diag_sees_a_socketpair():
    a, b = socket.socketpair()
    with a, b:
        d = U.unix_diag_dump()
        ia, ib = os.fstat(a.fileno()).st_ino, os.fstat(b.fileno()).st_ino
        assert d[ia].peer == ib and d[ib].peer == ia and d[ia].state == U.TCP_ESTABLISHED


# --- names and shutdown arithmetic --------------------------------------------------------------


def test_names():
    assert U.sockaddr(b"\0ab") == struct.pack("=H", 1) + b"\0ab"
    assert U.sockaddr(b"/x") == struct.pack("=H", 1) + b"/x\0"
    assert U.show_name(b"\0ab") == "@ab" and U.show_name(None) == "unnamed"
    assert U.py_addr("/p") == b"/p" and U.py_addr("") is None and U.py_addr(b"\0q") == b"\0q"
    assert U.autobound(b"\x0000a1f") and not U.autobound(b"\0zzzzz") and not U.autobound(b"/x")
    with pytest.raises(ValueError):
        U.sockaddr(b"/" + b"x" * 200)


def test_shutdown_arithmetic():
    rd, wr = U.RCV_SHUTDOWN, U.SEND_SHUTDOWN
    assert U.mirror(wr) == rd and U.mirror(rd) == wr and U.mirror(rd | wr) == rd | wr
    assert U.shutdown_how(rd) == socket.SHUT_RD and U.shutdown_how(wr) == socket.SHUT_WR
    assert U.shutdown_how(rd | wr) == socket.SHUT_RDWR
    # A shut its writing side: B cannot read more.
    assert U.shutdown_consistent(wr, rd)
    assert not U.shutdown_consistent(wr, 0)
    assert U.shutdown_consistent(rd | wr, rd | wr) and U.shutdown_consistent(0, 0)


# --- the plan -------------------------------------------------------------------------------------


def sk(ino, typ=U.SOCK_STREAM, state=U.TCP_ESTABLISHED, name=None, peer=None, cred=(1, 0, 0), **kw):
    d = U.DiagSock(ino=ino, type=typ, state=state, name=name, peer=peer)
    for k in ("icons", "wqueue", "shutdown", "vfs"):
        if k in kw:
            setattr(d, k, kw.pop(k))
    s = U.Sock(ino, -1, -1, holder=(1, ino, 1), type=typ, diag=d, cred=cred, **kw)
    return s


def plan(*socks):
    return U.Planner({s.ino: s for s in socks}).run()


def test_plan_socketpair():
    p = plan(sk(1, peer=2), sk(2, peer=1))
    assert p.make == {1: "pair", 2: "pair"} and p.pair == {1: 2, 2: 1}


def test_plan_through_live_listener():
    lst = sk(10, state=U.TCP_LISTEN, name=b"\0srv", cred=(5, 0, 0), icons=[30])
    client = sk(20, peer=21, cred=(5, 0, 0))
    accepted = sk(21, name=b"\0srv", peer=20, cred=(7, 1000, 1000))
    pending = sk(
        30, peer=0, cred=(5, 0, 0), embryo_cred={"pid": 9, "uid": 0, "gid": 0, "groups": []}
    )
    p = plan(lst, client, accepted, pending)
    assert p.bound(lst) and not p.bound(accepted) and not p.bound(client)
    (lp,) = p.listens
    assert lp["listener"] == 10
    est, pend = lp["conns"]
    assert est["client"] == 20 and est["accepted"] == 21
    assert (
        est["connector"]["pid"] == 7 and est["connector"]["uid"] == 1000
    )  # accepted's SO_PEERCRED
    assert est["listen_cred"]["pid"] == 5
    assert pend["client"] == 30 and pend["accepted"] is None and pend["connector"]["pid"] == 9


def test_plan_listener_gone():
    # The accepted end carries the closed listener's name: a temporary listener.
    p = plan(sk(1, peer=2), sk(2, name=b"\0gone", peer=1, cred=(3, 0, 0)))
    (lp,) = p.listens
    assert lp["listener"] is None and p.temps[lp["temp"]].name == b"\0gone"
    assert lp["conns"][0]["accepted"] == 2 and 2 in p.accepted


def test_plan_refuses_outside_peer():
    with pytest.raises(U.Refused) as e:
        plan(sk(1, peer=99))
    assert e.value.ino == 1 and "outside the container" in e.value.why


def test_plan_refuses_pending_data():
    lst = sk(10, state=U.TCP_LISTEN, name=b"\0srv", icons=[11])
    client = sk(11, peer=0, wqueue=768, embryo_cred={"pid": 1, "uid": 0, "gid": 0})
    with pytest.raises(U.Refused) as e:
        plan(lst, client)
    assert e.value.ino == 11 and "not accepted yet" in e.value.why


def test_plan_closed_peers():
    # An unnamed stream socket whose twin closed; an accepted one whose client closed.
    # (a closing peer shuts its peer down both ways)
    lst = sk(10, state=U.TCP_LISTEN, name=b"\0srv")
    lone = sk(1, peer=0, shutdown=3)
    acc = sk(2, name=b"\0srv", peer=0, shutdown=3)
    p = plan(lst, lone, acc)
    assert p.make[1] == "pair" and p.pair[1] == 0
    conn = p.listens[0]["conns"][0]
    assert conn["client"] == 0 and conn["accepted"] == 2


def test_plan_refuses_connection_pending_outside():
    # peer inode 0 without the shutdown a closing peer leaves: an unaccepted
    # connection to a listener outside the container
    with pytest.raises(U.Refused) as e:
        plan(sk(1, peer=0), sk(2))
    assert e.value.ino == 1 and "has not accepted" in e.value.why


def test_plan_dgram_senders_and_prefix():
    srv = sk(1, U.SOCK_DGRAM, U.TCP_CLOSE, name=b"/srv", cred=None)
    cli = sk(2, U.SOCK_DGRAM, name=b"\0cli", peer=1, cred=None)
    other = sk(3, U.SOCK_DGRAM, U.TCP_CLOSE, name=b"\0other", cred=None)
    cli.msgs = [
        {"data": b"a", "addr": b"\0other"},
        {"data": b"b", "addr": b"/srv"},
        {"data": b"c", "addr": b"/srv"},
    ]
    srv.msgs = [{"data": b"x"}, {"data": b"y", "addr": b"\0gone"}, {"data": b"z", "addr": b"\0cli"}]
    p = plan(srv, cli, other)
    assert p.prefix[2] == 1
    assert p.senders[(2, 0)] == {"sender": 3} and p.senders[(2, 1)] == {"sender": 1}
    assert p.senders[(1, 0)] == {"anon": True}
    assert p.temps[p.senders[(1, 1)]["temp"]].name == b"\0gone"
    assert p.senders[(1, 2)] == {"sender": 2}


def test_plan_dgram_refuses_interleaved_senders():
    srv = sk(1, U.SOCK_DGRAM, U.TCP_CLOSE, name=b"/srv", cred=None)
    cli = sk(2, U.SOCK_DGRAM, name=b"\0cli", peer=1, cred=None)
    cli.msgs = [{"data": b"b", "addr": b"/srv"}, {"data": b"a", "addr": b"\0other"}]
    with pytest.raises(U.Refused) as e:
        plan(srv, cli)
    assert "queued behind" in e.value.why


def test_plan_dgram_socketpair_and_refusal():
    p = plan(sk(1, U.SOCK_DGRAM, peer=2), sk(2, U.SOCK_DGRAM, peer=1))
    assert p.make[1] == p.make[2] == "pair"
    with pytest.raises(U.Refused):
        # connected to an unnamed socket that is not its twin (no common creator)
        plan(sk(1, U.SOCK_DGRAM, peer=2, cred=None), sk(2, U.SOCK_DGRAM, U.TCP_CLOSE, cred=None))


def test_record_schema_round_trip():
    rec = {
        "sockets": [
            {
                "ino": 5,
                "type": 2,
                "state": 7,
                "name": b"/dev/log",
                "bound": True,
                "bind": {"dir": "/", "linked": True, "mode": 0o140666, "uid": 0, "gid": 0},
                "make": "socket",
                "opts": {"sndbuf": 212992, "passcred": True, "peek_off": -1, "linger": None},
                "queue": [{"data": b"", "creds": {"pid": 0, "uid": 0, "gid": 0}, "temp": 1}],
            }
        ],
        "temps": [{"id": 1, "type": 2, "name": b"\0x", "how": "abstract"}],
        "listens": [{"listener": 9, "conns": [{"client": 3, "accepted": None, "connector": None}]}],
        "inflight": [{"id": 40, "flags": 2, "pos": 0, "detail": {"_type": "unix_file", "ino": 7}}],
    }
    back = schema.decode("unix_sockets", schema.encode("unix_sockets", rec), where="t")
    s = back["sockets"][0]
    assert s["name"] == b"/dev/log" and s["bind"]["linked"] and s["opts"]["peek_off"] == -1
    assert s["queue"][0]["creds"]["pid"] == 0 and s["queue"][0]["data"] == b""
    assert back["inflight"][0]["detail"]["ino"] == 7


# --- reading queues without consuming them --------------------------------------------------


def _fds(anc):
    return [
        fd for lvl, typ, data in anc if typ == socket.SCM_RIGHTS for fd in array.array("i", data)
    ]


def test_peek_stream_fds_and_credentials():
    a, b = socket.socketpair()
    with a, b, open("/dev/null", "rb") as f:
        b.send(b"aaa")
        b.sendmsg(
            [b"bbb"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [f.fileno()]))]
        )
        me = struct.pack("=iII", os.getpid(), os.getuid(), os.getgid())
        b.sendmsg([b"ccc"], [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, me)])
        chunks = U.peek_queue(a.fileno(), U.SOCK_STREAM, 9)
        # data up to the message that carries files, glued; different credentials split
        assert [c.data for c in chunks] == [b"aaabbb", b"ccc"]
        assert len(chunks[0].fds) == 1 and chunks[0].creds is None
        assert os.path.samestat(os.fstat(chunks[0].fds[0]), os.fstat(f.fileno()))
        assert chunks[1].creds == (os.getpid(), os.getuid(), os.getgid())
        for c in chunks:
            for fd in c.fds:
                os.close(fd)
        # nothing consumed, options back as they were
        assert a.getsockopt(socket.SOL_SOCKET, U.SO_PEEK_OFF) == -1
        assert a.getsockopt(socket.SOL_SOCKET, U.SO_PASSCRED) == 0
        data, anc, _, _ = a.recvmsg(100, 100)
        assert data == b"aaabbb" and len(_fds(anc)) == 1
        for fd in _fds(anc):
            os.close(fd)
        assert a.recv(100) == b"ccc"


def test_peek_datagrams_keeps_boundaries_and_senders():
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    anon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = b"\0vzpy-unit-%d" % os.getpid()
    with r, s, anon:
        r.bind(name)
        s.bind(name + b"-s")
        big = os.urandom(300000 // 4)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.sendto(b"one", name)
        anon.sendto(b"", name)
        s.sendto(b"", name)
        s.sendto(big, name)
        chunks = U.peek_queue(r.fileno(), U.SOCK_DGRAM)
        assert [c.data for c in chunks] == [b"one", b"", b"", big]
        assert [c.addr for c in chunks] == [name + b"-s", None, name + b"-s", name + b"-s"]
        assert [r.recv(1 << 20) for _ in range(4)] == [b"one", b"", b"", big]


def test_peek_seqpacket_boundaries():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        for m in (b"m1", b"", b"m3"):
            b.send(m)
        assert [c.data for c in U.peek_queue(a.fileno(), U.SOCK_SEQPACKET)] == [b"m1", b"", b"m3"]
        assert [a.recv(10) for _ in range(3)] == [b"m1", b"", b"m3"]


def test_peek_keeps_pending_error():
    # The peer closed with data unread: ECONNRESET is pending; reading up to the end of
    # the queue (and not past it) must not clear it.
    a, b = socket.socketpair()
    with a:
        b.send(b"bye")
        a.send(b"unread")
        b.close()
        assert U.pending_error(a.fileno())
        chunks = U.peek_queue(a.fileno(), U.SOCK_STREAM, 3)
        assert [c.data for c in chunks] == [b"bye"]
        assert U.pending_error(a.fileno())
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 104


def test_peek_refuses_oob():
    a, b = socket.socketpair()
    with a, b:
        b.send(b"ab")
        b.send(b"c", socket.MSG_OOB)
        with pytest.raises(U.PeekError):
            U.peek_queue(a.fileno(), U.SOCK_STREAM, 3)
        assert a.recv(10) == b"ab"


def test_peercred_and_options():
    a, b = socket.socketpair()
    with a, b:
        assert U.peercred(a.fileno()) == (os.getpid(), os.geteuid(), os.getegid())
        d = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        with d:
            assert U.peercred(d.fileno()) is None
            assert U.peergroups(d.fileno()) == []
        a.setsockopt(socket.SOL_SOCKET, U.SO_PASSCRED, 1)
        a.setsockopt(socket.SOL_SOCKET, U.SO_PEEK_OFF, 5)
        a.settimeout(None)
        a.setsockopt(
            socket.SOL_SOCKET, U.SO_RCVTIMEO, struct.pack("=qq", 2, 0)
        )  # whole jiffies survive
        opts = U.read_opts(a.fileno())
        assert opts["passcred"] and opts["peek_off"] == 5 and opts["rcvtimeo_us"] == 2_000_000
        assert opts["linger"] is None and opts["sndbuf"] > 0
        schema.encode("unix_opts", opts)


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_SNDBUFFORCE needs CAP_NET_ADMIN")
def test_write_opts_round_trip():
    a, b = socket.socketpair()
    with a, b:
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 50000)
        a.setsockopt(socket.SOL_SOCKET, U.SO_PASSCRED, 1)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("=ii", 1, 7))
        opts = U.read_opts(a.fileno())
        U.write_opts(b.fileno(), opts)
        assert U.read_opts(b.fileno()) == opts
