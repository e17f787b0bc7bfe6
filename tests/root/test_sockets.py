"""Internet sockets and the container's network namespace through `vzctl chkpnt` +
`vzctl restore`, with real peers in other network namespaces on the LAN.

The client namespace (fixture ``client``) plays a machine on the LAN; its code runs
in threads that joined that namespace.  Servers inside the container are Python
(Debian template) or redis; zdtm programs cover each socket kind on their own
(tests/zdtm/sock_*.c)."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from netload import PORT, SERVER, EchoClient, NsThread, pattern
from vznode import require_template

import zdtm
from vzpy.sys import netlock
from vzpy.sys.libc import run_in_netns

pytestmark = pytest.mark.root


# --- helpers ------------------------------------------------------------------------------
def ns_path(client) -> str:
    return f"/run/netns/{client.ns}"


def tcp_state(s: socket.socket) -> int:
    return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


def init_pid(node, ctid: int) -> int:
    for pid in node.ct_procs(ctid):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:") and line.split()[-1] == "1":
                    return pid
    raise AssertionError(f"CT {ctid} has no init")


def start_server(node, ctid: int) -> str:
    ip = node.create(ctid, template=require_template("debian-12-x86_64-minimal"))
    node.ok("start", str(ctid))
    root = os.path.join(node.vzdir, "private", str(ctid), "root")
    with open(os.path.join(root, "srv.py"), "w") as f:
        f.write(SERVER)
    node.ok("exec", str(ctid), f"cd /root && (nohup python3 srv.py {PORT} >/root/srv.log 2>&1 &)")
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(root, "srv.ready")):
        assert time.monotonic() < deadline, open(os.path.join(root, "srv.log")).read()
        time.sleep(0.05)
    return ip


def command(client, ip: str, *words: str) -> str:
    def body():
        with socket.create_connection((ip, PORT), timeout=20) as s:
            s.sendall((" ".join(words) + "\n").encode())
            return s.makefile().readline().strip()

    return client.in_ns(body)


def cycle(node, ctid: int, down: float = 0.0) -> tuple[str, str]:
    """A full `vzctl chkpnt` + `vzctl restore`, verbose; returns both outputs."""
    out1 = node.ok("--verbose", "chkpnt", str(ctid))
    assert node.ok("status", str(ctid)).split()[-1] == "suspended"
    time.sleep(down)
    out2 = node.ok("--verbose", "restore", str(ctid))
    return out1, out2


def stop(node, ctid: int) -> None:
    node.vzctl("stop", str(ctid), "--fast")
    node.vzctl("destroy", str(ctid))


# --- tests ------------------------------------------------------------------------------
def test_client_keeps_sending_through_chkpnt_and_restore(node, client):
    """An echo client on the LAN sends during the checkpoint, the container stays down
    3 s, is restored: every byte comes back in order and no connection resets."""
    ip = start_server(node, 401)
    try:
        ec = EchoClient(ip)
        t = NsThread(ns_path(client), ec.run)
        t.start()
        deadline = time.monotonic() + 20
        while not all(ec.got):
            assert time.monotonic() < deadline and t.is_alive(), f"no echo {ec.errors} {t.error!r}"
            time.sleep(0.05)
        time.sleep(0.5)
        out1 = node.ok("--verbose", "chkpnt", "401")
        # The container is gone; the client keeps sending into the void.  No RST may
        # come back (the netns died locked, the node's path to it was cut first).
        for _ in range(30):
            time.sleep(0.1)
            states = [tcp_state(s) for s in ec.socks]
            assert states == [1] * len(states), f"client connections left ESTABLISHED: {states}"
        out2 = node.ok("--verbose", "restore", "401")
        t_restored = time.monotonic()
        # traffic goes on after the restore: every connection gets its backlog echoed
        got_at_restore = list(ec.got)
        deadline = t_restored + 30
        while any(g <= a for g, a in zip(ec.got, got_at_restore, strict=True)):
            assert time.monotonic() < deadline and t.is_alive(), (
                f"no echo after restore {ec.errors}"
            )
            time.sleep(0.01)
        resumed = time.monotonic() - t_restored
        time.sleep(1.0)
        ec.stop.set()
        t.join(60)
        assert not t.is_alive(), "echo client stuck"
        assert t.error is None, f"client failed: {t.error!r} {ec.errors}"
        assert ec.got == ec.sent
        print(
            f"\nechoes resumed {resumed:.2f}s after restore returned; worst echo wait "
            f"{ec.worst:.2f}s\nchkpnt: {out1.strip()}\nrestore: {out2.strip()}"
        )
        assert "TCP connection(s) dumped" in out1 and "TCP connection(s) restored" in out2
        assert not netlock.is_locked(init_pid(node, 401))
    finally:
        stop(node, 401)


def test_unacked_and_unsent_data_arrive_exactly_once(node, client):
    """Both directions stuffed while the peer does not read, across chkpnt+restore."""
    ip = start_server(node, 402)
    n_down = 8 << 20  # container -> client, client not reading
    n_up = 6 << 20  # client -> container, server not reading

    def stuff():
        down = socket.create_connection((ip, PORT), timeout=30)
        down.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
        down.sendall(f"SEND {n_down}\n".encode())
        up = socket.create_connection((ip, PORT), timeout=30)
        up.sendall(f"HOLD {n_up}\n".encode())
        up.setblocking(False)
        sent = 0
        while sent < n_up:
            try:
                sent += up.send(pattern(sent, min(1 << 16, n_up - sent)))
            except BlockingIOError:
                break
        up.setblocking(True)
        return down, up, sent

    down, up, sent_before = client.in_ns(stuff)
    try:
        time.sleep(0.5)
        assert sent_before < n_up, "the server's receive queue never filled"
        cycle(node, 402, down=1.0)

        def finish():
            up.settimeout(30)
            down.settimeout(30)
            got = bytearray()
            while len(got) < n_down:
                d = down.recv(1 << 20)
                assert d, f"EOF after {len(got)} bytes"
                got += d
            return bytes(got)

        got = client.in_ns(finish)
        assert len(got) == n_down and got == pattern(0, n_down)
        # the server starts reading what waits in its receive queue, then the rest
        assert command(client, ip, "RELEASE") == "ok"
        client.in_ns(up.sendall, pattern(sent_before, n_up - sent_before))
        line = client.in_ns(lambda: up.makefile().readline().split())
        assert int(line[0]) == n_up
        assert line[1] == hashlib.sha256(pattern(0, n_up)).hexdigest()
    finally:
        down.close()
        up.close()
        stop(node, 402)


def redis_request(sock: socket.socket, *args: str) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for a in args:
        b = a.encode()
        parts.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
    sock.sendall(b"".join(parts))
    return sock.recv(1 << 20)


def test_redis_answers_on_the_same_connection(node, client):
    ip = node.create(403, template=require_template("debian-12-x86_64-redis"))
    node.ok("start", "403")
    try:
        node.ok(
            "exec", "403",
            "redis-server --bind 0.0.0.0 --protected-mode no --save '' --appendonly no --daemonize yes",
        )  # fmt: skip

        def connect():
            deadline = time.monotonic() + 20
            while True:
                try:
                    s = socket.create_connection((ip, 6379), timeout=20)
                    assert redis_request(s, "PING") == b"+PONG\r\n"
                    return s
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

        s = client.in_ns(connect)
        try:
            peer = s.getsockname()
            for i in range(100):
                assert client.in_ns(redis_request, s, "SET", f"k{i}", f"v{i}" * 20) == b"+OK\r\n"
            node.ok("chkpnt", "403")
            # A request sent while the container is down is answered after the restore.
            client.in_ns(s.sendall, b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n")
            time.sleep(2)
            node.ok("restore", "403")
            assert client.in_ns(s.recv, 100) == b":1\r\n"
            assert (
                client.in_ns(redis_request, s, "GET", "k42") == b"$60\r\n" + b"v42" * 20 + b"\r\n"
            )
            assert client.in_ns(redis_request, s, "INCR", "n") == b":2\r\n"
            assert s.getsockname() == peer
            # and it is the same connection for redis too
            info = client.in_ns(redis_request, s, "CLIENT", "LIST")
            assert f"addr={peer[0]}:{peer[1]}".encode() in info
        finally:
            s.close()
    finally:
        stop(node, 403)


def run_echo_server(client, port: int) -> subprocess.Popen:
    code = (
        "import socket,threading\n"
        "l=socket.socket();l.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"l.bind(('0.0.0.0',{port}));l.listen(8);print('ready',flush=True)\n"
        "def h(c):\n"
        "  while True:\n"
        "    d=c.recv(65536)\n"
        "    if not d: break\n"
        "    c.sendall(d)\n"
        "  c.close()\n"
        "while True:\n"
        "  c,_=l.accept();threading.Thread(target=h,args=(c,),daemon=True).start()\n"
    )
    p = subprocess.Popen(
        ["nsenter", f"--net={ns_path(client)}", sys.executable, "-c", code],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert p.stdout.readline().strip() == "ready"
    return p


def test_connection_to_a_server_outside(node, client):
    """sock_tcp_ext.c talks to an echo server in the client namespace, with every
    queue on the way full at the dump."""
    srv = run_echo_server(client, 7100)
    node.create(404)
    node.ok("start", "404")
    try:
        z = zdtm.ZdtmRun(node, 404, "sock_tcp_ext", args=f"{client.ip} 7100")
        z.start()
        z.cycle(2)
        out = z.finish(60)
        assert out.strip().splitlines()[-1] == "PASS", out
    finally:
        stop(node, 404)
        srv.kill()
        srv.wait()


def test_failed_dump_keeps_connections_and_unlocks(node, client):
    """A dump refused half-way (a packet socket, after a connection was read in repair
    mode) leaves the container running, its connection working, no lock behind."""
    ip = start_server(node, 405)
    try:

        def open_echo():
            s = socket.create_connection((ip, PORT), timeout=10)
            s.sendall(b"ECHO\nbefore")
            assert s.recv(100) == b"before"
            return s

        s = client.in_ns(open_echo)
        ctl = client.in_ns(socket.create_connection, (ip, PORT), 10)
        client.in_ns(ctl.sendall, b"PACKET\n")
        assert client.in_ns(ctl.recv, 10) == b"ok\n"
        r = node.vzctl("chkpnt", "405")
        assert r.returncode == 16, (r.stdout, r.stderr)
        assert "packet socket" in r.stderr and "Traceback" not in r.stderr
        assert node.ok("status", "405").strip() == "CTID 405 exist mounted running"
        assert not netlock.is_locked(init_pid(node, 405))

        def echo(data: bytes) -> bytes:
            s.sendall(data)
            got = b""
            while len(got) < len(data):
                got += s.recv(100)
            return got

        assert client.in_ns(echo, b"after-failed-dump") == b"after-failed-dump"
        # once the packet socket is gone the same connection goes through a full cycle
        assert command(client, ip, "NOPACKET") == "ok"
        cycle(node, 405, down=0.5)
        assert client.in_ns(echo, b"after-restore") == b"after-restore"
        s.close()
        ctl.close()
    finally:
        stop(node, 405)


def test_dump_resume_and_undump_keep_the_lock_right(node, client):
    """chkpnt --suspend/--dump keeps the lock and the sockets in repair mode;
    --resume lifts both.  restore --undump keeps the new netns locked until
    restore --resume."""
    ip = start_server(node, 406)
    d = os.path.join(node.vzdir, "dump", "406-staged")
    try:
        s = client.in_ns(socket.create_connection, (ip, PORT), 10)
        client.in_ns(s.sendall, b"ECHO\n")

        def echo(data: bytes) -> bytes:
            s.settimeout(20)
            s.sendall(data)
            got = b""
            while len(got) < len(data):
                got += s.recv(100)
            return got

        assert client.in_ns(echo, b"one") == b"one"
        node.ok("chkpnt", "406", "--suspend")
        node.ok("chkpnt", "406", "--dump", "--dumpfile", d)
        pid = init_pid(node, 406)
        assert netlock.is_locked(pid)
        node.ok("chkpnt", "406", "--resume")
        assert not netlock.is_locked(pid)
        assert client.in_ns(echo, b"two") == b"two"  # out of repair mode, routes back
        # now the other way: a full dump, then undump (frozen, locked), then resume
        shutil.rmtree(d, ignore_errors=True)
        node.ok("chkpnt", "406", "--dumpfile", d)
        node.ok("restore", "406", "--undump", "--dumpfile", d)
        pid = init_pid(node, 406)
        assert netlock.is_locked(pid)
        node.ok("restore", "406", "--resume")
        assert not netlock.is_locked(pid)
        assert client.in_ns(echo, b"three") == b"three"
        s.close()
    finally:
        stop(node, 406)


def _netns_view() -> dict:
    from pyroute2 import IPRoute

    out = {}
    with IPRoute() as ipr:
        for link in ipr.get_links():
            out[link.get_attr("IFLA_IFNAME")] = (
                link.get_attr("IFLA_ADDRESS"),
                link.get_attr("IFLA_MTU"),
            )
        out["addrs"] = sorted(
            (a.get_attr("IFA_ADDRESS"), a["prefixlen"]) for a in ipr.get_addr() if a["scope"] != 253
        )
        out["routes"] = sorted(
            (r["family"], r.get_attr("RTA_DST") or "", r["dst_len"], r.get_attr("RTA_TABLE"))
            for fam in (socket.AF_INET, socket.AF_INET6)
            for r in ipr.route("dump", family=fam)
            if r.get_attr("RTA_TABLE") != 255
        )
    for name in (
        "core/somaxconn", "ipv4/ip_forward", "ipv4/ip_local_port_range", "ipv4/tcp_keepalive_time",
        "ipv4/conf/venet0/rp_filter", "ipv6/conf/all/disable_ipv6",
    ):  # fmt: skip
        with open(f"/proc/sys/net/{name}") as f:
            out[name] = " ".join(f.read().split())
    return out


def test_network_namespace_is_restored_from_the_image(node):
    """Interfaces (MACs), addresses, routes and sysctls set inside the container come
    back from the image, not from the config; the host end keeps its MAC."""
    node.create(407)
    node.ok("start", "407")
    try:
        pid = init_pid(node, 407)

        def configure():
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                idx = ipr.link_lookup(ifname="venet0")[0]
                ipr.link("set", index=idx, mtu=1400)
                ipr.addr("add", index=idx, address="192.0.2.77", prefixlen=32)
                ipr.addr(
                    "add",
                    index=ipr.link_lookup(ifname="lo")[0],
                    address="127.0.0.9",
                    prefixlen=8,
                    scope=254,
                )
                ipr.addr(
                    "add",
                    index=idx,
                    address="fd00:77::7",
                    prefixlen=128,
                    family=socket.AF_INET6,
                    flags=2,
                )
                ipr.route("add", dst="198.51.100.0", dst_len=24, oif=idx, scope=253)
                ipr.route("add", dst="203.0.113.0", dst_len=24, oif=idx, scope=253, table=100)
                ipr.route("add", dst="::", dst_len=0, oif=idx, family=socket.AF_INET6)
            for name, value in (
                ("core/somaxconn", "777"), ("ipv4/ip_forward", "1"),
                ("ipv4/ip_local_port_range", "20000 30000"), ("ipv4/tcp_keepalive_time", "99"),
                ("ipv4/conf/venet0/rp_filter", "2"),
            ):  # fmt: skip
                with open(f"/proc/sys/net/{name}", "w") as f:
                    f.write(value)

        run_in_netns(pid, configure)
        before = run_in_netns(pid, _netns_view)
        assert before["core/somaxconn"] == "777"
        host_mac = node.in_ns(_host_mac, 407)
        node.ok("chkpnt", "407")
        node.ok("restore", "407")
        after = run_in_netns(init_pid(node, 407), _netns_view)
        assert after == before
        assert node.in_ns(_host_mac, 407) == host_mac
        # and the node routes the container's address again
        assert node.in_ns(_host_route, 407)
    finally:
        stop(node, 407)


def _host_mac(ctid: int) -> str:
    from pyroute2 import IPRoute

    from vzpy.container import net

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=net.host_ifname(ctid))[0]
        return ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")


def _host_route(ctid: int) -> bool:
    from pyroute2 import IPRoute

    from vzpy.container import net

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=net.host_ifname(ctid))[0]
        return any(r.get_attr("RTA_OIF") == idx for r in ipr.route("dump", family=socket.AF_INET))


NETLINK_HOLDER = r"""
#include <fcntl.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void)
{
	int fd = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	if (fd < 0) return 1;
	close(open("/root/nl.ready", O_CREAT | O_WRONLY, 0644));
	for (;;) pause();
}
"""


def test_refusals_name_the_fd(node):
    """A netlink socket in a task refuses the dump with a clear message; nothing breaks."""
    from cbuild import build_c

    node.create(408)
    node.ok("start", "408")
    try:
        root = os.path.join(node.vzdir, "private", "408", "root")
        shutil.copy(build_c(NETLINK_HOLDER, "nl_holder"), os.path.join(root, "nl"))
        node.ok("exec", "408", "(/root/nl >/dev/null 2>&1 &)")
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(root, "nl.ready")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        r = node.vzctl("chkpnt", "408")
        assert r.returncode == 16, (r.stdout, r.stderr)
        assert "netlink socket" in r.stderr and "fd 3" in r.stderr, r.stderr
        assert "Traceback" not in r.stderr
        assert node.ok("status", "408").strip().endswith("running")
        assert not netlock.is_locked(init_pid(node, 408))
    finally:
        stop(node, 408)
