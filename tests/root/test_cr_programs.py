"""Real programs in a Debian container through `vzctl chkpnt` + `vzctl restore`."""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest
from vznode import debian_template

import zdtm

pytestmark = pytest.mark.root

PROGRAMS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "programs")


def template(name="debian-12-x86_64-minimal"):
    deb = debian_template()
    if deb is None or not os.path.exists(os.path.join(os.path.dirname(deb), name + ".tar.gz")):
        pytest.skip(f"template {name} not built (the setup command builds it)")
    return name


def test_python_threads_and_heap(node):
    node.create(301, template=template())
    node.ok("start", "301")
    priv = os.path.join(node.vzdir, "private", "301")
    shutil.copy(os.path.join(PROGRAMS, "pyheap.py"), os.path.join(priv, "root", "pyheap.py"))
    node.ok("exec", "301", "cd /root && (nohup python3 pyheap.py /root 192 >/root/py.log 2>&1 &)")
    zdtm.wait_file(os.path.join(priv, "root", "pyheap.ready"), 60)
    pid, digest = open(os.path.join(priv, "root", "pyheap.ready")).read().split()
    result = os.path.join(priv, "root", "pyheap.result")

    def report():
        if os.path.exists(result):
            os.unlink(result)
        node.ok("exec", "301", f"kill -USR1 {pid}")
        zdtm.wait_file(result, 30)
        return open(result).read().split()

    before = report()
    for _ in range(2):
        node.ok("chkpnt", "301")
        assert node.ok("status", "301").split()[-1] == "suspended"
        time.sleep(1)
        node.ok("restore", "301")
    after = report()
    assert after[0] == digest, "heap contents changed"
    assert all(int(a) > int(b) for a, b in zip(after[1:5], before[1:5], strict=True)), (
        before,
        after,
    )
    ps = node.ok("exec", "301", "ps -o pid,nlwp,comm -p " + pid)
    assert "python3" in ps and " 5 " in ps  # same pid, 5 threads
    node.ok("stop", "301", "--fast")


def test_shell_pipeline_with_data_in_flight(node):
    """`yes | ...` keeps pipes full across the checkpoint; the counts carry on."""
    node.create(302)
    node.ok("start", "302")
    priv = os.path.join(node.vzdir, "private", "302")
    script = (
        "#!/bin/sh\n"
        "# a pipeline with data always in flight: yes writes faster than the reader reads\n"
        "yes 0123456789 | while read l; do n=$((n+1)); [ $((n % 1000)) = 0 ] && echo $n > /root/count; done\n"
    )
    with open(os.path.join(priv, "root", "pipe.sh"), "w") as f:
        f.write(script)
    node.ok("exec", "302", "(sh /root/pipe.sh >/dev/null 2>&1 &)")
    count = os.path.join(priv, "root", "count")
    zdtm.wait_file(count, 60)
    time.sleep(0.5)
    node.ok("chkpnt", "302")
    n0 = int(open(count).read())
    node.ok("restore", "302")
    time.sleep(1.0)
    n1 = int(open(count).read())
    assert n1 > n0, (n0, n1)
    ps = node.ok("exec", "302", "ps -o comm")
    assert "yes" in ps and "sh" in ps
    node.ok("stop", "302", "--fast")


def redis_cmd(client, ip, *args, timeout=10):
    """Send one RESP command from the client namespace; return the raw reply."""

    def body():
        with socket.create_connection((ip, 6379), timeout=timeout) as s:
            parts = [f"*{len(args)}\r\n".encode()]
            for a in args:
                b = a.encode() if isinstance(a, str) else a
                parts.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
            s.sendall(b"".join(parts))
            return s.recv(1 << 20)

    return client.in_ns(body)


def test_redis_answers_with_same_data(node, client):
    ip = node.create(303, template=template("debian-12-x86_64-redis"))
    node.ok("start", "303")
    node.ok(
        "exec", "303",
        "redis-server --bind 0.0.0.0 --protected-mode no --save '' --appendonly no --daemonize yes",
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while True:
        try:
            if redis_cmd(client, ip, "PING").startswith(b"+PONG"):
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    for i in range(200):
        assert redis_cmd(client, ip, "SET", f"key{i}", f"value-{i}" * 10).startswith(b"+OK")
    redis_cmd(client, ip, "RPUSH", "list", *[str(i) for i in range(1000)])
    node.ok("chkpnt", "303")
    time.sleep(1)
    node.ok("restore", "303")
    assert redis_cmd(client, ip, "GET", "key123") == b"$90\r\n" + b"value-123" * 10 + b"\r\n"
    assert redis_cmd(client, ip, "LLEN", "list") == b":1000\r\n"
    assert redis_cmd(client, ip, "INCR", "counter") == b":1\r\n"
    node.ok("stop", "303", "--fast")


def test_jvm_threads_heap_and_gc(node):
    """OpenJDK 17 (G1, ~20 JVM threads, a 96 MiB heap) through two chkpnt/restore cycles."""
    node.create(304, template=template("debian-12-x86_64-java"))
    node.ok("start", "304")
    root = os.path.join(node.vzdir, "private", "304", "root")
    shutil.copy(os.path.join(PROGRAMS, "JavaHeap.java"), os.path.join(root, "JavaHeap.java"))
    node.ok("exec", "304", "(cd /root && exec java -Xmx256m JavaHeap.java /root) "
            "</dev/null >/root/java.log 2>&1 &")  # fmt: skip
    zdtm.wait_file(os.path.join(root, "java.ready"), 120)
    pid = open(os.path.join(root, "java.ready")).read().strip()
    result = os.path.join(root, "java.result")

    def report():
        deadline = time.monotonic() + 30
        while True:
            fields = open(result).read().split() if os.path.exists(result) else []
            if len(fields) == 5 or time.monotonic() > deadline:
                return fields
            time.sleep(0.05)

    def threads():
        return node.ok("exec", "304", f"ps -o nlwp= -p {pid}").strip()

    zdtm.wait_file(result, 60)
    nlwp = threads()
    before = report()
    assert before[0] == "OK", (before, open(os.path.join(root, "java.log")).read())
    for _ in range(2):
        node.ok("chkpnt", "304")
        time.sleep(1)
        node.ok("restore", "304")
        os.unlink(result)  # the next report is written after the restore
        after = report()
        assert after and after[0] == "OK", (after, open(os.path.join(root, "java.log")).read())
        assert all(int(a) > int(b) for a, b in zip(after[1:], before[1:], strict=True)), (
            before,
            after,
        )
        before = after
    assert threads() == nlwp  # the same JVM process, every thread back
    node.ok("stop", "304", "--fast")
