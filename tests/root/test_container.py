"""Container lifecycle through the real `vzctl`/`vzlist` commands, as an admin uses them."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from vznode import debian_template

pytestmark = pytest.mark.root


def wait_for(cond, timeout=10.0, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def http_get(client, ip, port, path="/", timeout=10):
    """GET from the client namespace; returns the body (bytes)."""

    def body():
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((ip, port), timeout=2) as s:
                    s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                    data = b""
                    while chunk := s.recv(65536):
                        data += chunk
                    return data
            except OSError as e:
                last = e
                time.sleep(0.1)
        raise last

    return client.in_ns(body)


def test_lifecycle_tiny(node, client):
    ip = node.create(101, hostname="ct101")
    assert "CTID 101 exist unmounted down" in node.ok("status", "101")
    out = node.ok("start", "101")
    assert "Starting container..." in out and "Container start in progress..." in out
    assert f"Adding IP address(es): {ip}" in out
    assert node.ok("status", "101").strip() == "CTID 101 exist mounted running"

    # Only the container's processes, init as pid 1.
    ps = node.ok("exec", "101", "ps", "-o", "pid,comm")
    lines = [ln.split() for ln in ps.strip().splitlines()[1:]]
    pids = {int(p): c for p, c in lines}
    assert pids[1] == "init"
    assert len(pids) <= 3, ps  # init, sh -c, ps
    assert node.ok("exec", "101", "hostname").strip() == "ct101"

    # The container cannot see the host's mounts or network.
    mounts = node.ok("exec", "101", "cat", "/proc/mounts")
    assert node.base not in mounts
    links = node.ok("exec", "101", "ip", "-o", "link")
    assert "eth0" not in links and "venet0" in links

    # A server inside is reachable from another namespace on the LAN.
    r = node.vzctl(
        "exec",
        "101",
        "mkdir -p /www && echo hello-from-101 > /www/index.html && httpd -p 8080 -h /www",
    )
    assert r.returncode == 0, r.stderr
    assert b"hello-from-101" in http_get(client, ip, 8080, "/index.html")

    # vzlist sees it.
    out = node.vzlist("-a").stdout
    assert "101" in out and "running" in out and ip in out and "ct101" in out
    js = json.loads(node.vzlist("-j").stdout)
    assert js[0]["ctid"] == 101 and js[0]["status"] == "running" and js[0]["ip"] == [ip]

    out = node.ok("stop", "101")
    assert "Container was stopped" in out and "Container is unmounted" in out
    assert node.ok("status", "101").strip() == "CTID 101 exist unmounted down"
    assert node.ct_procs(101) == []
    out = node.ok("destroy", "101")
    assert "Container private area was destroyed" in out
    assert node.ok("status", "101").strip() == "CTID 101 deleted unmounted down"
    # Nothing left: process, mount, cgroup, veth, route.
    assert node.cgroup_dirs() == []
    assert node.mounts() == []
    links = node.run("ip", "-o", "link").stdout
    assert "veth101" not in links
    assert ip not in node.run("ip", "route").stdout
    assert ip not in node.run("ip", "neigh", "show", "proxy").stdout
    assert os.path.exists(os.path.join(node.confdir, "conf", "101.conf.destroyed"))


def test_python_http_server_debian(node, client):
    if debian_template() is None:
        pytest.skip("Debian template not built (the setup command builds it)")
    tmpl = os.path.basename(debian_template()).removesuffix(".tar.gz")
    ip = node.create(102, hostname="ct102", template=tmpl)
    node.ok("start", "102")
    try:
        r = node.vzctl(
            "exec", "102",
            "cd /root && echo python-says-hi > hi.txt && "
            "(nohup python3 -m http.server 8000 >/dev/null 2>&1 &)",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert b"python-says-hi" in http_get(client, ip, 8000, "/hi.txt", timeout=20)
        ps = node.ok("exec", "102", "ps", "ax", "-o", "pid,comm")
        assert "python3" in ps and "    1 init" in ps.replace("\t", " ") or " 1 init" in ps
    finally:
        node.ok("stop", "102", "--fast")
        node.ok("destroy", "102")


def test_graceful_stop_runs_shutdown(node):
    node.create(103)
    node.ok("start", "103")
    # A process that writes a marker on SIGTERM: graceful stop must let it run.
    node.ok(
        "exec",
        "103",
        "(trap 'echo bye > /root/bye; exit 0' TERM; while :; do sleep 0.1; done) >/dev/null 2>&1 &",
    )
    time.sleep(0.3)
    t0 = time.monotonic()
    node.ok("stop", "103")
    assert time.monotonic() - t0 < 8
    priv = os.path.join(node.vzdir, "private", "103")
    assert open(os.path.join(priv, "root", "bye")).read().strip() == "bye"


def test_stop_fast_and_timeout_kill(node):
    node.create(104)
    node.vzctl("set", "104", "--stop-timeout", "1", "--save")
    node.ok("start", "104")
    node.ok("exec", "104", "(trap '' TERM; while :; do sleep 1; done) >/dev/null 2>&1 &")
    out = node.ok("stop", "104")
    assert "Killing container ..." in out
    assert node.ct_procs(104) == []
    node.ok("start", "104")
    out = node.ok("stop", "104", "--fast")
    assert "Container was stopped" in out


def test_restart_and_mount_umount(node):
    node.create(105)
    out = node.ok("mount", "105")
    assert "Container is mounted" in out
    assert node.ok("mount", "105").strip() == "Container is already mounted"
    assert node.ok("status", "105").strip() == "CTID 105 exist mounted down"
    node.ok("umount", "105")
    r = node.vzctl("umount", "105")
    assert r.returncode == 40 and "CT is not mounted" in r.stderr
    node.ok("start", "105")
    r = node.vzctl("umount", "105")
    assert r.returncode == 32
    out = node.ok("restart", "105")
    assert "Restarting container" in out and "Container start in progress" in out
    node.ok("stop", "105")


def test_killed_start_is_cleaned_up(node):
    """SIGKILL `vzctl start` half-way: stop/destroy still clean up, the stale lock is detected."""
    node.create(106)
    # Stop vzctl right after the container's namespaces exist (network set-up
    # time): SIGSTOP it there, then SIGKILL it.
    env = dict(node.env, VZPY_DEBUG="1")
    p = subprocess.Popen([*node.prefix(), "vzctl", "start", "106"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    lock = os.path.join(node.vzdir, "lock", "106.lck")
    assert wait_for(lambda: node.ct_procs(106), timeout=20), "container never got a process"
    p.send_signal(signal.SIGKILL)
    p.wait()
    # Lock file still there with a dead pid: the next command removes it.
    if os.path.exists(lock):
        r = node.vzctl("stop", "106")
        assert r.returncode == 0, r.stderr
        assert "Removing stale lock file" in r.stderr
    else:
        node.ok("stop", "106")
    assert node.ct_procs(106) == []
    node.vzctl("umount", "106")
    node.ok("destroy", "106")
    assert node.cgroup_dirs() == []
    assert node.mounts() == []
    assert "veth106" not in node.run("ip", "-o", "link").stdout


def test_locked_container(node):
    node.create(107)
    lock = os.path.join(node.vzdir, "lock", "107.lck")
    holder = subprocess.Popen(["sleep", "30"])
    try:
        with open(lock, "w") as f:
            f.write(f"{holder.pid}\nstart\n")
        r = node.vzctl("start", "107")
        assert r.returncode == 9
        assert "Container already locked" in r.stderr
        assert f"Locked by: pid {holder.pid}" in r.stderr
    finally:
        holder.kill()
        holder.wait()
    # Dead holder: stale, removed, command goes on.
    r = node.vzctl("mount", "107")
    assert r.returncode == 0 and "Removing stale lock file" in r.stderr
    node.ok("umount", "107")


def test_containers_are_isolated(node):
    node.create(108)
    node.ok("start", "108")
    # Host processes are invisible; the host's pid of our own test is not there.
    ps = node.ok("exec", "108", "ps", "-o", "pid")
    assert str(os.getpid()) not in ps.split()
    # No host devices reachable by mknod: devices cgroup or missing caps refuse it.
    r = node.vzctl("exec", "108", "mknod /tmp/sda b 8 0 && head -c1 /tmp/sda")
    assert r.returncode != 0
    # Cannot load kernel modules (bounding set).
    caps = node.ok("exec", "108", "cat", "/proc/1/status")
    capbnd = int([ln for ln in caps.splitlines() if ln.startswith("CapBnd")][0].split()[1], 16)
    assert not capbnd & (1 << 16)  # CAP_SYS_MODULE
    node.ok("stop", "108")


def test_enter_pty(node):
    import pty
    import select

    node.create(109)
    node.ok("start", "109")
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(node.prefix()[0] if node.prefix() else "vzctl",
                   [*node.prefix(), "vzctl", "enter", "109"], node.env)  # fmt: skip
    out = b""
    sent = False
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
                if b"\x1b[6n" in chunk:
                    # busybox ash asks the terminal where the cursor is: answer like one
                    os.write(fd, b"\x1b[1;1R")
            if not sent and b"entered into CT 109" in out and b"/# " in out:
                os.write(fd, b"tty; echo pid-is-$$; exit\n")
                sent = True
    finally:
        try:
            os.kill(pid, signal.SIGKILL) if not sent else None
            os.waitpid(pid, 0)
        except (ChildProcessError, ProcessLookupError):
            pass
        os.close(fd)
    text = out.decode(errors="replace")
    assert "entered into CT 109" in text
    assert "/dev/pts/0" in text
    assert "exited from CT 109" in text
    node.ok("stop", "109")


def test_gratuitous_arp_on_start(node, client):
    """The node announces the container's IP: a LAN peer that accepts gratuitous
    ARP learns the node's MAC for it without asking."""
    ip = node.create(110)
    client.run("sysctl", "-w", "net.ipv4.conf.eth0.arp_accept=1")
    node.ok("start", "110")
    mac = node.run("ip", "-o", "link", "show", "eth0").stdout.split("link/ether ")[1].split()[0]
    assert mac

    def learned():
        out = client.run("ip", "neigh", "show", ip).stdout
        return mac in out

    assert wait_for(learned, timeout=5), client.run("ip", "neigh").stdout
    node.ok("stop", "110")
