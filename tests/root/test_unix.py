"""Unix socket states vzpy cannot checkpoint are refused at dump time, with a message
naming the task and the fd, and the container runs on as it was: a connection to a
daemon outside the container, a socket of the host's network namespace, a connection
not accepted yet that already carries data, a pending error that reading would clear.

(What vzpy does save is checked by the zdtm programs tests/zdtm/unix_*.c.)"""

from __future__ import annotations

import array
import os
import shutil
import socket
import threading
import time

import pytest
from vznode import debian_template

import zdtm

pytestmark = pytest.mark.root

HERE = os.path.dirname(os.path.abspath(__file__))
CTID = 154

CASES = [
    ("host_peer", "outside the container"),
    ("host_socket", "another network namespace"),
    ("host_pending", "has not accepted"),
    ("pending_data", "was not accepted yet"),
    ("seqpacket_error", "pending on it"),
]


def _binary() -> str:
    return zdtm.build_path(os.path.join(HERE, "targets", "unix_refuse.c"))


class HostDaemon:
    """A stream listener on the host, bound inside the container's private area: an
    echo server that hands out one end of a host socketpair when asked "fd?"."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        os.chmod(path, 0o777)
        self.sock.listen(4)
        # a second listener that never accepts
        self.noaccept = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.noaccept.bind(os.path.join(os.path.dirname(path), "host-noaccept.sock"))
        self.noaccept.listen(4)
        self.keep: list[socket.socket] = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.keep.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        while True:
            try:
                data = conn.recv(64)
            except OSError:
                return
            if not data:
                return
            if data == b"fd?":
                a, b = socket.socketpair()
                a.send(b"hostpair")
                self.keep += [a, b]
                conn.sendmsg(
                    [b"f"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [b.fileno()]))]
                )
            else:
                conn.sendall(data)

    def close(self) -> None:
        self.stop = True
        self.thread.join()
        for s in self.keep + [self.sock, self.noaccept]:
            s.close()
        for p in (self.path, os.path.join(os.path.dirname(self.path), "host-noaccept.sock")):
            try:
                os.unlink(p)
            except OSError:
                pass


def _output(d: str) -> str:
    try:
        with open(os.path.join(d, "unix_refuse.out")) as f:
            return f.read()
    except OSError:
        return ""


def test_refused_unix_states(node):
    binary = _binary()
    node.create(CTID)
    node.ok("start", str(CTID))
    d = os.path.join(node.vzdir, "private", str(CTID), "zdtm")
    os.makedirs(d, exist_ok=True)
    shutil.copy(binary, os.path.join(d, "unix_refuse"))
    daemon = HostDaemon(os.path.join(d, "host.sock"))
    dump = os.path.join(node.base, "refused-dump")
    try:
        for kind, message in CASES:
            for name in ("unix_refuse.ready", "unix_refuse.out", "unix_refuse.pid"):
                if os.path.exists(os.path.join(d, name)):
                    os.unlink(os.path.join(d, name))
            node.ok(
                "exec",
                str(CTID),
                f"cd /zdtm && ./unix_refuse {kind} >unix_refuse.out 2>&1 </dev/null &",
            )
            zdtm.wait_file(os.path.join(d, "unix_refuse.ready"))
            pid = int(open(os.path.join(d, "unix_refuse.pid")).read())
            fd = int(_output(d).split()[1])
            r = node.vzctl("chkpnt", str(CTID), "--dumpfile", dump)
            text = r.stdout + r.stderr
            assert r.returncode == 16, (kind, r.returncode, text)
            assert message in text, (kind, text)
            assert f"task {pid}: fd {fd} " in text, (kind, text)
            assert "Traceback" not in text
            print(kind, "->", [line for line in text.splitlines() if "Can't dump" in line])
            assert not os.path.exists(dump), "a refused dump left an image behind"
            assert node.ok("status", str(CTID)).split()[-1] == "running"
            node.ok("exec", str(CTID), f"kill -TERM {pid}")
            deadline = time.monotonic() + 10
            while "PASS" not in _output(d) and "FAIL" not in _output(d):
                assert time.monotonic() < deadline, (kind, _output(d))
                time.sleep(0.05)
            assert _output(d).strip().splitlines()[-1] == "PASS", (kind, _output(d))
    finally:
        daemon.close()
        node.vzctl("stop", str(CTID), "--fast")
        node.vzctl("destroy", str(CTID))


ECHO_PROGRAM = r"""
import asyncio, multiprocessing, os, signal, socket, sys, time

PATH = "/run/vzpy-echo.sock"
DIR = sys.argv[1]


def note(name, text):
    with open(os.path.join(DIR, name + ".tmp"), "w") as f:
        f.write(text)
    os.rename(os.path.join(DIR, name + ".tmp"), os.path.join(DIR, name))


async def handle(reader, writer):
    while line := await reader.readline():
        writer.write(line.upper())
        await writer.drain()
    writer.close()


def squarer(conn):
    while True:
        n = conn.recv()
        if n is None:
            return
        conn.send(n * n)


def server():
    async def main():
        try:
            os.unlink(PATH)
        except FileNotFoundError:
            pass
        srv = await asyncio.start_unix_server(handle, PATH)
        note("server.ready", str(os.getpid()))
        async with srv:
            await srv.serve_forever()
    asyncio.run(main())


def client():
    parent, child = multiprocessing.Pipe()
    worker = multiprocessing.Process(target=squarer, args=(child,))
    worker.start()
    s = socket.socket(socket.AF_UNIX)
    s.connect(PATH)
    f = s.makefile("rwb")
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    i = 0
    while not stop:
        msg = b"req-%d\n" % i
        f.write(msg)
        f.flush()
        if f.readline() != msg.upper():
            note("client.result", f"FAIL: bad echo at {i}")
            return
        parent.send(i)
        if parent.recv() != i * i:
            note("client.result", f"FAIL: bad square at {i}")
            return
        i += 1
        if i % 10 == 0:
            note("client.count", str(i))
        time.sleep(0.01)
    parent.send(None)
    worker.join()
    note("client.result", f"PASS {i}")


(server if sys.argv[2] == "server" else client)()
"""


def _wait(path: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return open(path).read()


def test_python_asyncio_echo_through_checkpoint(node):
    """A Python asyncio server on a unix socket and a client streaming requests (plus a
    multiprocessing.Pipe worker) go on through two checkpoint/restore cycles; the
    socket file is still there and takes new clients."""
    deb = debian_template()
    if deb is None:
        pytest.skip("the Debian template is not built (the setup command builds it)")
    ctid = 155
    node.create(ctid, template="debian-12-x86_64-minimal")
    node.ok("start", str(ctid))
    try:
        root = os.path.join(node.vzdir, "private", str(ctid), "root")
        with open(os.path.join(root, "echo.py"), "w") as f:
            f.write(ECHO_PROGRAM)
        node.ok(
            "exec", str(ctid), "cd /root && (nohup python3 echo.py /root server >server.log 2>&1 &)"
        )
        _wait(os.path.join(root, "server.ready"))
        node.ok(
            "exec", str(ctid), "cd /root && (nohup python3 echo.py /root client >client.log 2>&1 &)"
        )
        count = os.path.join(root, "client.count")
        _wait(count)
        for _ in range(2):
            before = int(open(count).read())
            node.ok("chkpnt", str(ctid))
            assert node.ok("status", str(ctid)).split()[-1] == "suspended"
            node.ok("restore", str(ctid))
            deadline = time.monotonic() + 20
            while int(open(count).read()) < before + 30:
                assert time.monotonic() < deadline, "the client stopped making progress"
                time.sleep(0.05)
        probe = (
            'python3 -c "import socket; s=socket.socket(socket.AF_UNIX); '
            "s.connect('/run/vzpy-echo.sock'); s.sendall(b'new\\n'); print(s.recv(10))\""
        )
        assert "NEW" in node.ok("exec", str(ctid), probe)
        node.ok("exec", str(ctid), "pkill -TERM -f 'echo.py /root client'")
        result = _wait(os.path.join(root, "client.result"))
        assert result.startswith("PASS"), result + open(os.path.join(root, "client.log")).read()
    finally:
        node.vzctl("stop", str(ctid), "--fast")
        node.vzctl("destroy", str(ctid))
