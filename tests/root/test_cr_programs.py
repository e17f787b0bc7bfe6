"""Real programs in a Debian container through `vzctl chkpnt` + `vzctl restore`."""

from __future__ import annotations

import os
import shutil
import socket
import time

import pytest
from vznode import require_template

import zdtm

pytestmark = pytest.mark.root

PROGRAMS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "programs")


def test_python_threads_and_heap(node):
    node.create(301, template=require_template())
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
    ip = node.create(303, template=require_template("debian-12-x86_64-redis"))
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
    node.create(304, template=require_template("debian-12-x86_64-java"))
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


def wait_for_text(path: str, text: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        data = open(path).read() if os.path.exists(path) else ""
        if text in data or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


def test_postgresql_session_survives(node):
    """PostgreSQL 15 (postmaster, its workers, shared memory, a unix socket under the
    /var/run -> /run symlink) and a psql session connected to it, through two cycles:
    the same backend answers on the same connection, and new connections work."""
    node.create(305, template=require_template("debian-12-x86_64-apps"))
    node.ok("start", "305")
    root = os.path.join(node.vzdir, "private", "305", "root")
    node.ok("exec", "305", "(pg_ctlcluster $(pg_lsclusters -h | cut -d' ' -f1,2) start) "
            "</dev/null >/root/pg.log 2>&1")  # fmt: skip

    def psql(sql: str) -> str:
        return node.ok("exec", "305", f"su postgres -c \"psql -Atc '{sql}'\"").strip()

    deadline = time.monotonic() + 60
    while node.vzctl("exec", "305", "su postgres -c 'psql -Atc \"select 1\"'").returncode:
        assert time.monotonic() < deadline, open(os.path.join(root, "pg.log")).read()
        time.sleep(0.3)
    psql("create table t(a int); insert into t select generate_series(1, 1000)")
    # a long-lived session: psql reading the statements appended to /root/q.sql
    sql, out = os.path.join(root, "q.sql"), os.path.join(root, "psql.out")
    open(sql, "w").close()
    node.ok("exec", "305", "(tail -f /root/q.sql </dev/null 2>/dev/null | "
            "su postgres -c 'psql -At' >/root/psql.out 2>&1 &)")  # fmt: skip

    def ask(query: str, tag: str) -> list[str]:
        with open(sql, "a") as f:
            f.write(f"select '{tag}', {query};\n")
        data = wait_for_text(out, tag + "|")
        line = next((x for x in data.splitlines() if x.startswith(tag + "|")), None)
        assert line is not None, data
        return line.split("|")[1:]

    count, backend = ask("count(*), pg_backend_pid() from t", "before")
    assert count == "1000"
    procs = sorted(node.ok("exec", "305", "pgrep postgres").split())
    for _ in range(2):
        node.ok("chkpnt", "305")
        time.sleep(1)
        node.ok("restore", "305")
    with open(sql, "a") as f:
        f.write("insert into t values (5000);\n")
    assert ask("count(*), pg_backend_pid() from t", "after") == ["1001", backend]
    assert psql("select sum(a) from t") == str(sum(range(1, 1001)) + 5000)
    assert sorted(node.ok("exec", "305", "pgrep postgres").split()) == procs
    node.ok("stop", "305", "--fast")


def test_x_server_and_client(node):
    """Xvfb and a client connected to it (xev, over the X unix socket): after restore
    the server answers new clients and the old client still gets its events."""
    node.create(306, template=require_template("debian-12-x86_64-apps"))
    node.ok("start", "306")
    root = os.path.join(node.vzdir, "private", "306", "root")
    node.ok("exec", "306", "(Xvfb :1 -screen 0 800x600x24 -nolisten tcp "
            "</dev/null >/root/xvfb.log 2>&1 &)")  # fmt: skip
    deadline = time.monotonic() + 30
    while node.vzctl("exec", "306", "DISPLAY=:1 xdpyinfo >/dev/null 2>&1").returncode:
        assert time.monotonic() < deadline, open(os.path.join(root, "xvfb.log")).read()
        time.sleep(0.2)
    node.ok("exec", "306", "(DISPLAY=:1 xev -root </dev/null >/root/xev.log 2>&1 &)")
    xev = os.path.join(root, "xev.log")
    node.ok("exec", "306", "DISPLAY=:1 xprop -root -f VZPY_BEFORE 8s -set VZPY_BEFORE 1")
    assert "VZPY_BEFORE" in wait_for_text(xev, "VZPY_BEFORE")
    pids = node.ok("exec", "306", "pidof Xvfb xev").split()
    node.ok("chkpnt", "306")
    node.ok("restore", "306")
    node.ok("exec", "306", "DISPLAY=:1 xprop -root -f VZPY_AFTER 8s -set VZPY_AFTER restored")
    assert "VZPY_AFTER" in wait_for_text(xev, "VZPY_AFTER"), "xev got no event after restore"
    got = node.ok("exec", "306", "DISPLAY=:1 xprop -root VZPY_AFTER VZPY_BEFORE")
    assert 'VZPY_AFTER(STRING) = "restored"' in got and 'VZPY_BEFORE(STRING) = "1"' in got
    assert node.ok("exec", "306", "pidof Xvfb xev").split() == pids
    node.ok("stop", "306", "--fast")


def test_web_stack_nginx_mariadb_sshd(node, client):
    """nginx (master and workers talking over O_ASYNC socketpairs), MariaDB (O_TMPFILE
    files; native AIO off: io_uring cannot be checkpointed) and sshd, as `service`
    starts them: after restore nginx serves and reloads, MariaDB has its rows and
    takes writes, sshd greets new connections."""
    ip = node.create(307, template=require_template("debian-12-x86_64-apps"))
    node.ok("start", "307")
    node.ok("exec", "307", "printf '[mysqld]\\ninnodb_use_native_aio=0\\n' "
            ">/etc/mysql/mariadb.conf.d/99-vzpy.cnf")  # fmt: skip
    for svc in ("nginx", "ssh", "mariadb"):
        node.ok("exec", "307", f"service {svc} start </dev/null >/dev/null 2>&1")
    node.ok("exec", "307", "mysql -e 'create database d; create table d.t(a int); "
            "insert into d.t values (1),(2),(3)'")  # fmt: skip

    def http_get() -> bytes:
        def body():
            with socket.create_connection((ip, 80), timeout=10) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                return s.recv(64)

        return client.in_ns(body)

    def ssh_banner() -> bytes:
        def body():
            with socket.create_connection((ip, 22), timeout=10) as s:
                return s.recv(64)

        return client.in_ns(body)

    assert http_get().startswith(b"HTTP/1.1 200")
    assert ssh_banner().startswith(b"SSH-2.0-")
    procs = sorted(node.ok("exec", "307", "pgrep 'nginx|sshd|mariadbd'").split())
    node.ok("chkpnt", "307")
    node.ok("restore", "307")
    assert sorted(node.ok("exec", "307", "pgrep 'nginx|sshd|mariadbd'").split()) == procs
    assert http_get().startswith(b"HTTP/1.1 200")
    assert ssh_banner().startswith(b"SSH-2.0-")
    out = node.ok("exec", "307", "mysql -N -e 'insert into d.t values (4); select sum(a) from d.t'")
    assert out.split() == ["10"]
    # the master tells its workers to go over the restored channels (SIGIO-driven)
    workers = node.ok("exec", "307", "pgrep -f 'nginx: worker'").split()
    node.ok("exec", "307", "nginx -s reload")
    deadline = time.monotonic() + 20
    while set(node.ok("exec", "307", "pgrep -f 'nginx: worker'").split()) & set(workers):
        assert time.monotonic() < deadline, "nginx workers did not restart on reload"
        time.sleep(0.2)
    assert http_get().startswith(b"HTTP/1.1 200")
    node.ok("stop", "307", "--fast")
