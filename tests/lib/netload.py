"""Network load for tests: a Python echo/stream server to run inside a container
and the clients that talk to it from another namespace (used by test_sockets and
test_migrate)."""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
import time

from vzpy.sys.libc import CLONE_NEWNET, setns

SERVER = r"""
import os, socket, struct, sys, threading, hashlib
port = int(sys.argv[1])
release = threading.Event()
held = []

def pattern(start, n):
    return b"".join(struct.pack(">Q", i) for i in range(start // 8, (start + n) // 8))

def readline(c):
    b = b""
    while not b.endswith(b"\n"):
        x = c.recv(1)
        if not x:
            raise EOFError
        b += x
    return b.decode().split()

def handle(c):
    try:
        cmd = readline(c)
        if cmd[0] == "ECHO":
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        elif cmd[0] == "SEND":
            n = int(cmd[1])
            for off in range(0, n, 1 << 20):
                c.sendall(pattern(off, min(1 << 20, n - off)))
            c.recv(1)
        elif cmd[0] == "HOLD":
            n = int(cmd[1])
            release.wait()
            h, got = hashlib.sha256(), 0
            while got < n:
                d = c.recv(min(65536, n - got))
                if not d:
                    break
                h.update(d)
                got += len(d)
            c.sendall(f"{got} {h.hexdigest()}\n".encode())
        elif cmd[0] == "PACKET":
            held.append(socket.socket(socket.AF_PACKET, socket.SOCK_RAW))
            c.sendall(b"ok\n")
        elif cmd[0] == "NOPACKET":
            while held:
                held.pop().close()
            c.sendall(b"ok\n")
        elif cmd[0] == "RELEASE":
            release.set()
            c.sendall(b"ok\n")
    except (EOFError, OSError):
        pass
    finally:
        c.close()

l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", port))
l.listen(64)
open("/root/srv.ready", "w").close()
while True:
    c, _ = l.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""
PORT = 7000


def pattern(start: int, n: int) -> bytes:
    return b"".join(struct.pack(">Q", i) for i in range(start // 8, (start + n) // 8))


class NsThread(threading.Thread):
    """A thread that joins a network namespace, then runs fn; errors are kept."""

    def __init__(self, ns_path: str, fn, *args) -> None:
        super().__init__(daemon=True)
        self.ns_path, self.fn, self.args = ns_path, fn, args
        self.error: BaseException | None = None
        self.result = None

    def run(self) -> None:
        fd = os.open(self.ns_path, os.O_RDONLY)
        try:
            setns(fd, CLONE_NEWNET)
        finally:
            os.close(fd)
        try:
            self.result = self.fn(*self.args)
        except BaseException as e:  # reported by the test
            self.error = e


class EchoClient:
    """Connections to the echo server that keep sending while the test runs.

    Each connection sends a 1 KiB chunk every 5 ms and reads the echo; every byte
    must come back once and in order.  ``worst`` is the longest any chunk waited
    for its echo (the outage a user of the connection saw).
    """

    def __init__(self, ip: str, conns: int = 3) -> None:
        self.ip, self.n = ip, conns
        self.stop = threading.Event()
        self.sent = [0] * conns
        self.got = [0] * conns
        self.worst = 0.0
        self.errors: list[str] = []
        self.socks: list[socket.socket] = []

    def run(self) -> None:
        socks = self.socks
        for _ in range(self.n):
            s = socket.create_connection((self.ip, PORT), timeout=10)
            s.sendall(b"ECHO\n")
            s.setblocking(False)
            socks.append(s)
        stamps: list[list[tuple[int, float]]] = [[] for _ in socks]
        pending = [bytearray() for _ in socks]  # sent, echo not seen yet
        chunk = 1024
        try:
            next_send = time.monotonic()
            while True:
                now = time.monotonic()
                stopping = self.stop.is_set()
                if stopping and not any(pending):
                    return
                if not stopping and now >= next_send:
                    next_send = now + 0.005
                    for i, s in enumerate(socks):
                        data = pattern(self.sent[i], chunk)
                        try:
                            n = s.send(data)
                        except BlockingIOError:
                            continue
                        pending[i] += data[:n]
                        self.sent[i] += n
                        stamps[i].append((self.sent[i], now))
                r, _, _ = select.select(socks, [], [], 0.005)
                for s in r:
                    i = socks.index(s)
                    data = s.recv(1 << 16)
                    if not data:
                        raise ConnectionError(f"connection {i}: EOF")
                    if pending[i][: len(data)] != data:
                        raise AssertionError(f"connection {i}: bytes at {self.got[i]} differ")
                    del pending[i][: len(data)]
                    self.got[i] += len(data)
                    t = time.monotonic()
                    while stamps[i] and stamps[i][0][0] <= self.got[i]:
                        self.worst = max(self.worst, t - stamps[i].pop(0)[1])
        except OSError as e:
            self.errors.append(f"{type(e).__name__}: {e}")
            raise
        finally:
            for s in socks:
                s.close()
