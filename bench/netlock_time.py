#!/usr/bin/env python3
"""How long the container's network stays locked through `vzctl chkpnt` + `vzctl restore`,
and what each TCP connection costs, for 1, 100 and 1000 established connections.

Run as root on a machine with the Debian template built (the setup command builds it):

    python bench/netlock_time.py [--conns 1,100,1000] [--repeat 3]

A throw-away node and a client namespace on a LAN bridge are made (tests/lib/vznode.py);
a single-threaded Python echo server in the container holds the connections, which a
client in its own namespace opens and keeps (each with a few bytes echoed, so both
sides have sequence state).  Each round is a full `vzctl --verbose chkpnt` followed at
once by `vzctl --verbose restore`; the numbers come from their verbose lines
(resources/netns.py and resources/inet.py print them):

  dump lock     from the freeze (the lock is taken right after) to the kill
  restore lock  from locking the new netns to lifting it once the tasks run
  total         from the freeze of the dump to the unlock of the restore: what a peer
                of the container sees as "no answer" at best
  per conn      TCP_REPAIR dump / rebuild time of one connection

The baseline is the same container with no connection (0): every row is also shown
as a ratio to it.  After each restore every connection must still echo.
"""

from __future__ import annotations

import argparse
import os
import re
import select
import socket
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lib"))

from vznode import Lan, Node, debian_template  # noqa: E402

from vzpy.sys.libc import run_in_netns  # noqa: E402

SERVER = r"""
import resource, selectors, socket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
sel = selectors.DefaultSelector()
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", 7200))
l.listen(4096)
l.setblocking(False)
sel.register(l, selectors.EVENT_READ)
open("/root/bench.ready", "w").close()
while True:
    for key, _ in sel.select():
        s = key.fileobj
        if s is l:
            try:
                c, _ = l.accept()
            except BlockingIOError:
                continue
            c.setblocking(False)
            sel.register(c, selectors.EVENT_READ)
            continue
        try:
            d = s.recv(65536)
        except (BlockingIOError, ConnectionError):
            continue
        if not d:
            sel.unregister(s)
            s.close()
        else:
            s.send(d)
"""

PATTERNS = {
    "dump_lock": r"network locked (\d+) ms during the dump",
    "restore_lock": r"network locked (\d+) ms during the restore",
    "total": r"(\d+) ms since the dump froze it",
    "dump_us": r"TCP connection\(s\) dumped in [\d.]+ ms \((\d+) us each\)",
    "restore_us": r"TCP connection\(s\) restored in [\d.]+ ms \((\d+) us each\)",
    "frozen": r"frozen (\d+) ms",
}


def parse(text: str) -> dict[str, float]:
    out = {}
    for k, pat in PATTERNS.items():
        m = re.search(pat, text)
        if m:
            out[k] = float(m.group(1))
    return out


def open_conns(ip: str, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection((ip, 7200), timeout=10)
        socks.append(s)
    check(socks, b"hello")
    return socks


def check(socks: list[socket.socket], msg: bytes, timeout: float = 60.0) -> None:
    """Every connection echoes ``msg``."""
    for s in socks:
        s.setblocking(True)
        s.sendall(msg)
        s.setblocking(False)
    want = {s.fileno(): [s, len(msg)] for s in socks}
    poller = select.poll()  # fds past 1024: no select()
    for fd in want:
        poller.register(fd, select.POLLIN)
    deadline = time.monotonic() + timeout
    while want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(want)} connections did not echo")
        for fd, _ in poller.poll(500):
            s = want[fd][0]
            d = s.recv(4096)
            if not d:
                raise RuntimeError("a connection was closed")
            want[fd][1] -= len(d)
            if want[fd][1] <= 0:
                del want[fd]
                poller.unregister(fd)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--conns", default="1,100,1000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 2
    deb = debian_template()
    if deb is None:
        print("the Debian template is not built", file=sys.stderr)
        return 2
    import resource
    import tempfile

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    counts = [0] + [int(x) for x in args.conns.split(",")]
    lan = Lan()
    node = client = None
    ctid = 990
    results: dict[int, list[dict]] = {}
    try:
        node = Node(tempfile.mkdtemp(prefix="vzt-bench-", dir="/var/tmp"), lan, name="bench")
        client = lan.client()
        tmpl = os.path.basename(deb).removesuffix(".tar.gz")
        ip = node.create(ctid, template=tmpl)
        node.ok("start", str(ctid))
        root = os.path.join(node.vzdir, "private", str(ctid), "root")
        with open(os.path.join(root, "bench.py"), "w") as f:
            f.write(SERVER)
        node.ok("exec", str(ctid), "cd /root && (nohup python3 bench.py >/root/bench.log 2>&1 &)")
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(root, "bench.ready")):
            if time.monotonic() > deadline:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.05)
        socks: list[socket.socket] = []
        for n in counts:
            more = run_in_netns(f"/run/netns/{client.ns}", open_conns, ip, n - len(socks))
            socks += more
            for _ in range(args.repeat):
                out1 = node.ok("--verbose", "chkpnt", str(ctid))
                out2 = node.ok("--verbose", "restore", str(ctid))
                r = parse(out1 + out2)
                r["down_ms"] = 0.0
                results.setdefault(n, []).append(r)
                if socks:
                    run_in_netns(f"/run/netns/{client.ns}", check, socks, b"again")
            print(f"{n:5d} connections: {results[n]}", flush=True)
        for s in socks:
            s.close()
    finally:
        if node is not None:
            node.vzctl("stop", str(ctid), "--fast")
            node.vzctl("destroy", str(ctid))
            node.cleanup()
        lan.cleanup()

    def med(n: int, k: str) -> float:
        vals = [r[k] for r in results[n] if k in r]
        return statistics.median(vals) if vals else float("nan")

    base = {k: med(0, k) for k in ("dump_lock", "restore_lock", "total")}
    print()
    print(f"median of {args.repeat}; ratio to the same container without connections (0)")
    print(f"{'conns':>6} {'dump lock ms':>14} {'restore lock ms':>16} {'total ms':>14} "
          f"{'dump us/conn':>13} {'restore us/conn':>16}")  # fmt: skip
    for n in counts:
        row = [f"{n:6d}"]
        for k, w in (("dump_lock", 14), ("restore_lock", 16), ("total", 14)):
            v = med(n, k)
            row.append(f"{v:6.0f} ({v / base[k]:4.2f}x)".rjust(w) if base[k] else f"{v:{w}.0f}")
        row.append(f"{med(n, 'dump_us'):13.0f}" if n else f"{'-':>13}")
        row.append(f"{med(n, 'restore_us'):16.0f}" if n else f"{'-':>16}")
        print(" ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
