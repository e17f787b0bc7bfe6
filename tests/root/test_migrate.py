"""vzmigrate between real nodes: each its own netns on a LAN bridge, its own vz.conf
tree and its own sshd; the real rsync and ssh, paramiko for control and image.

Every test checks state on both nodes, not just the exit code: where the
container's files, config, processes, cgroups, mounts, veth, routes and proxy
ARP entries are afterwards.  Fault-injection tests break the destination the
way it breaks in life (sshd gone, rsync failing there, an image that arrives
damaged, the connection dropped mid-transfer, a CTID or an IP already taken)
and check that the source runs on exactly as before (a zdtm program's memory
still verifies) and that the destination is left clean.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import netload
import pytest
from cbuild import build_c
from cprogs import HOG_C
from sshnode import SshNode
from vznode import require_template

import zdtm
from vzpy.container.cgroup import CtCgroup

pytestmark = pytest.mark.root


# --- fixtures ------------------------------------------------------------------------------------


def migrate(
    src, dst: SshNode, ctid: int, *opts: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run vzmigrate on the source node (in its netns, with its config) towards dst."""
    return src.run(
        "vzmigrate", f"--ssh={dst.ssh_opts()}", *opts, dst.ip, str(ctid), timeout=timeout
    )


def wait_for(cond, timeout=10.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


# --- state probes ---------------------------------------------------------------------------------


def ip_out(node, *args: str) -> str:
    return subprocess.run(["ip", "-n", node.ns, *args], capture_output=True, text=True).stdout


def net_state(node, ctid: int, ip: str) -> dict:
    return {
        "veth": f"veth{ctid}.0" in ip_out(node, "-o", "link"),
        "route": ip in ip_out(node, "route", "show", ip),
        "proxy": ip in ip_out(node, "neigh", "show", "proxy"),
    }


def conf(node, ctid: int, suffix: str = "") -> str:
    return os.path.join(node.confdir, "conf", f"{ctid}.conf{suffix}")


def private(node, ctid: int) -> str:
    return os.path.join(node.vzdir, "private", str(ctid))


def ct_root(node, ctid: int) -> str:
    return os.path.join(node.vzdir, "root", str(ctid))


def ct_cgroups(node, ctid: int) -> list[str]:
    return [
        os.path.join(d, str(ctid))
        for d in node.cgroup_dirs()
        if os.path.isdir(os.path.join(d, str(ctid)))
    ]


def ct_mounts(node, ctid: int) -> list[str]:
    root = ct_root(node, ctid)
    return [m for m in node.mounts() if m == root or m.startswith(root + "/")]


def dumps(node) -> list[str]:
    d = os.path.join(node.vzdir, "dump")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def status(node, ctid: int | str) -> str:
    return node.ok("status", str(ctid)).strip()


def assert_no_runtime(node, ctid: int, ip: str | None) -> None:
    """Nothing of the container runs on node: processes, cgroups, mounts, network."""
    assert node.ct_procs(ctid) == []
    assert ct_cgroups(node, ctid) == []
    assert ct_mounts(node, ctid) == []
    if ip:
        assert net_state(node, ctid, ip) == {"veth": False, "route": False, "proxy": False}


def assert_dest_clean(node, ctid: int, ip: str | None) -> None:
    """A destination after a rolled-back migration: as if nothing had been tried."""
    assert_no_runtime(node, ctid, ip)
    leftovers = [
        p for p in os.listdir(os.path.join(node.confdir, "conf")) if p.startswith(f"{ctid}.")
    ]
    assert leftovers == []
    assert not os.path.lexists(private(node, ctid))
    assert not os.path.lexists(ct_root(node, ctid))
    assert dumps(node) == []


def assert_source_gone(node, ctid: int, ip: str) -> None:
    assert_no_runtime(node, ctid, ip)
    assert not os.path.exists(conf(node, ctid))
    assert os.path.exists(conf(node, ctid, ".destroyed"))
    assert not os.path.lexists(private(node, ctid))
    assert dumps(node) == []
    assert not os.path.exists(os.path.join(node.vzdir, "lock", f"{ctid}.lck"))


def init_pid(node, ctid: int) -> int:
    """Host pid of the container's init (pid 1 inside)."""
    for pid in node.ct_procs(ctid):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:") and line.split()[-1] == "1":
                    return pid
    raise AssertionError(f"CT {ctid} has no init")


# --- programs --------------------------------------------------------------------------------------

ECHO_C = r"""
/* TCP echo server on port 7000: one client, echoes every byte back. */
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a; memset(&a, 0, sizeof a);
	a.sin_family = AF_INET; a.sin_port = htons(7000);
	if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 1)) return 1;
	FILE *f = fopen("echo.ready", "w"); fclose(f);
	int c = accept(s, 0, 0);
	close(s);
	char buf[65536]; ssize_t n;
	while ((n = read(c, buf, sizeof buf)) > 0)
		for (ssize_t off = 0; off < n;) { ssize_t w = write(c, buf + off, n - off); if (w <= 0) return 2; off += w; }
	return 0;
}
"""


def start_program(
    node, ctid: int, source: str, name: str, args: str = "", ready: str | None = None
) -> None:
    binary = build_c(source, name)
    d = os.path.join(private(node, ctid), "prog")
    os.makedirs(d, exist_ok=True)
    shutil.copy(binary, os.path.join(d, name))
    r = node.vzctl("exec", str(ctid), f"cd /prog && ./{name} {args} >{name}.out 2>&1 </dev/null &")
    assert r.returncode == 0, r.stderr
    if ready:
        assert wait_for(lambda: os.path.exists(os.path.join(d, ready)), timeout=60), (
            f"{name} not ready"
        )


def running_zdtm(node, ctid: int, name: str = "memory_basic") -> tuple[zdtm.ZdtmRun, str]:
    """A running container with a zdtm test ready in it; returns the test and the CT's IP."""
    ip = node.create(ctid)
    node.ok("start", str(ctid))
    z = zdtm.ZdtmRun(node, ctid, name)
    z.start()
    return z, ip


def zdtm_on(node, ctid: int, name: str = "memory_basic") -> zdtm.ZdtmRun:
    """The same zdtm test seen on another node (after it was migrated there)."""
    return zdtm.ZdtmRun(node, ctid, name)


# --- offline ---------------------------------------------------------------------------------------


def test_offline_stopped(node, node_b, sa, sb):
    ip = node.lan.alloc_ip()
    node.ok(
        "create",
        "201",
        "--ostemplate",
        "tiny",
        "--ipadd",
        ip,
        "--hostname",
        "ct201",
        "--name",
        "web201",
    )
    with open(os.path.join(private(node, 201), "marker"), "w") as f:
        f.write("from node a\n")
    os.mkfifo(os.path.join(private(node, 201), "fifo"))
    os.link(
        os.path.join(private(node, 201), "marker"), os.path.join(private(node, 201), "marker.hl")
    )
    script = os.path.join(node.confdir, "conf", "201.start")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho started\n")
    os.chmod(script, 0o750)

    # The container is named by its name; DEST is user@host:port.
    r = node.run("vzmigrate", f"--ssh={sb.ssh_opts()}", f"root@{sb.ip}:{sb.port}", "web201")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Starting migration of CT 201 to root@{sb.ip}:{sb.port}" in r.stdout

    # Destination: registered, files there (hard links and fifos kept), not started.
    assert status(node_b, 201) == "CTID 201 exist unmounted down"
    with open(os.path.join(private(node_b, 201), "marker")) as f:
        assert f.read() == "from node a\n"
    st = os.stat(os.path.join(private(node_b, 201), "marker"))
    assert st.st_nlink == 2
    assert os.path.samestat(st, os.stat(os.path.join(private(node_b, 201), "marker.hl")))
    assert os.path.exists(os.path.join(private(node_b, 201), "fifo"))
    with open(conf(node_b, 201)) as f:
        text = f.read()
    assert ip in text and "ct201" in text
    assert 'VE_PRIVATE="' + os.path.join(node_b.vzdir, "private", "$VEID") + '"' in text
    assert os.readlink(os.path.join(node_b.confdir, "names", "web201")) == conf(node_b, 201)
    assert status(node_b, "web201") == "CTID 201 exist unmounted down"
    st = os.stat(os.path.join(node_b.confdir, "conf", "201.start"))
    assert st.st_mode & 0o777 == 0o750
    # Source: destroyed.
    assert_source_gone(node, 201, ip)
    # It starts on the destination.
    node_b.ok("start", "201")
    assert node_b.ok("exec", "201", "cat /marker").strip() == "from node a"


def test_offline_suspended(node, node_b, sa, sb):
    """A suspended container (stopped with Dump.CTID) moves with its dump; start restores it."""
    z, ip = running_zdtm(node, 203)
    node.ok("chkpnt", "203")
    assert status(node, 203) == "CTID 203 exist unmounted down suspended"
    r = migrate(node, sb, 203)
    assert r.returncode == 0, r.stdout + r.stderr
    assert status(node_b, 203) == "CTID 203 exist unmounted down suspended"
    assert_source_gone(node, 203, ip)
    out = node_b.ok("start", "203")
    assert "trying to restore from it" in out
    out = zdtm_on(node_b, 203).finish()
    assert out.strip().splitlines()[-1] == "PASS", out


def test_offline_running_keep_source(node, node_b, sa, sb, client):
    ip = node.create(202, hostname="ct202")
    node.ok("start", "202")
    node.ok("exec", "202", "echo written-while-running > /data.txt")

    r = migrate(node, sb, 202, "-r", "no", "-t")
    assert r.returncode == 0, r.stdout + r.stderr
    for word in (
        "Syncing private",
        "Stopping container",
        "Starting container",
        "Cleaning up",
        "Total downtime",
    ):
        assert word in r.stdout, r.stdout

    # Destination: running, with the file, reachable on its IP from the LAN.
    assert status(node_b, 202) == "CTID 202 exist mounted running"
    assert node_b.ok("exec", "202", "cat /data.txt").strip() == "written-while-running"
    assert net_state(node_b, 202, ip) == {"veth": True, "route": True, "proxy": True}
    node_b.ok(
        "exec",
        "202",
        "mkdir -p /www && echo hello-from-b > /www/index.html && httpd -p 8080 -h /www",
    )

    def get() -> bytes:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection((ip, 8080), timeout=2) as s:
                    s.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                    data = b""
                    while chunk := s.recv(4096):
                        data += chunk
                    return data
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    assert b"hello-from-b" in client.in_ns(get)

    # Source (-r no): stopped, nothing runs, config renamed, private area kept.
    assert_no_runtime(node, 202, ip)
    assert not os.path.exists(conf(node, 202))
    assert os.path.exists(conf(node, 202, ".migrated"))
    with open(os.path.join(private(node, 202), "data.txt")) as f:
        assert f.read().strip() == "written-while-running"


# --- online ----------------------------------------------------------------------------------------


def test_online_there_and_back(node, node_b, sa, sb):
    z, ip = running_zdtm(node, 301)
    tree = zdtm.ZdtmRun(node, 301, "process_tree")
    tree.start()
    pid_in_ct = z.pid()

    r = migrate(node, sb, 301, "--online", "-t")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Starting live migration of CT 301 to {sb.ip}" in r.stdout
    assert "Total frozen time" in r.stdout and "Copy dump file" in r.stdout

    # Destination: the same process (same pid inside), routes and proxy ARP for the IP.
    assert status(node_b, 301) == "CTID 301 exist mounted running"
    zb = zdtm_on(node_b, 301)
    assert zb.pid() == pid_in_ct
    assert node_b.ok("exec", "301", f"cat /proc/{pid_in_ct}/comm").strip() == "memory_basic"
    assert net_state(node_b, 301, ip) == {"veth": True, "route": True, "proxy": True}
    # Source: no trace at all.
    assert_source_gone(node, 301, ip)
    assert dumps(node_b) == []
    # Its memory made it: memory_basic verifies everything on the destination.
    out = zb.finish()
    assert out.strip().splitlines()[-1] == "PASS", out

    # And back (B -> A): the process tree (pids, sessions, groups) verifies on A.
    r = migrate(node_b, sa, 301, "--online")
    assert r.returncode == 0, r.stdout + r.stderr
    assert status(node, 301) == "CTID 301 exist mounted running"
    assert net_state(node, 301, ip) == {"veth": True, "route": True, "proxy": True}
    assert_source_gone(node_b, 301, ip)
    out = zdtm_on(node, 301, "process_tree").finish()
    assert out.strip().splitlines()[-1] == "PASS", out


# --- fault injection: the source runs on as before, the destination is clean ---------------------------


def check_source_intact(node, ctid: int, ip: str, z: zdtm.ZdtmRun, init_before: int) -> None:
    assert status(node, ctid) == f"CTID {ctid} exist mounted running"
    assert not CtCgroup(node.cgroup_prefix, ctid).is_frozen()
    assert init_pid(node, ctid) == init_before
    assert net_state(node, ctid, ip) == {"veth": True, "route": True, "proxy": True}
    assert dumps(node) == []
    assert not os.path.exists(os.path.join(node.vzdir, "lock", f"{ctid}.lck"))
    out = z.finish()
    assert out.strip().splitlines()[-1] == "PASS", out


def test_fault_sshd_unreachable(node, node_b, sa, sb):
    z, ip = running_zdtm(node, 401)
    before = init_pid(node, 401)
    sb.stop()
    r = migrate(node, sb, 401, "--online")
    assert r.returncode == 4, r.stdout + r.stderr
    assert "Can't connect" in r.stderr
    assert_dest_clean(node_b, 401, ip)
    check_source_intact(node, 401, ip, z, before)


def test_fault_rsync_fails_after_dump(node, node_b, sa, sb, tmp_path):
    """The second rsync (container already frozen and dumped) fails on the destination."""
    z, ip = running_zdtm(node, 402)
    before = init_pid(node, 402)
    wrapper, counter = flaky_rsync(tmp_path)
    r = migrate(node, sb, 402, "--online", f"--rsync=--rsync-path={wrapper}")
    assert r.returncode == 6, r.stdout + r.stderr
    assert "Failed to sync container private areas" in r.stderr
    assert "Live migrating container..." in r.stdout  # it did freeze and dump first
    assert counter.read_text().count("x") == 2
    assert_dest_clean(node_b, 402, ip)
    check_source_intact(node, 402, ip, z, before)


FLIP_PY = r"""
import os, sys
off, pos = int(sys.argv[1]), 0
while True:
    b = os.read(0, 1 << 16)
    if not b:
        break
    if pos <= off < pos + len(b):
        b = bytearray(b)
        b[off - pos] ^= 0xFF
    pos += len(b)
    v = memoryview(b)
    while v:
        v = v[os.write(1, v):]
"""


@pytest.mark.parametrize("iterative", [True, False], ids=["precopy", "noiter"])
def test_fault_image_corrupt_on_arrival(node, node_b, sa, keys, tmp_path, iterative):
    """A byte of the image changes on the way in (the destination's agent reads its stream
    through a filter that flips one bit): the agent's checksum catches it, nothing is
    restored, the source runs on."""
    flip = tmp_path / "flip.py"
    flip.write_text(FLIP_PY)
    wrapper = tmp_path / "force"
    wrapper.write_text(
        "#!/bin/bash\n"
        'case "$SSH_ORIGINAL_COMMAND" in\n'
        "  internal-sftp) exec /usr/lib/openssh/sftp-server ;;\n"
        f'  "vzmigrate --agent "*) /usr/bin/python3 {flip} {4 << 20} | bash -c "$SSH_ORIGINAL_COMMAND"; exit $? ;;\n'
        "esac\n"
        'exec bash -c "$SSH_ORIGINAL_COMMAND"\n'
    )
    wrapper.chmod(0o755)
    sb = SshNode(node_b, keys, force_command=str(wrapper))
    try:
        z, ip = running_zdtm(node, 403)
        before = init_pid(node, 403)
        r = migrate(node, sb, 403, "--online", *([] if iterative else ["--noiter"]))
        assert r.returncode == 6, r.stdout + r.stderr
        assert "Failed to copy dump file" in r.stderr and "checksum mismatch" in r.stderr
        assert ("Pre-copying memory" in r.stdout) == iterative
        assert "Undumping container" not in r.stdout
        assert_dest_clean(node_b, 403, ip)
        check_source_intact(node, 403, ip, z, before)
    finally:
        sb.cleanup()


def test_fault_undump_fails(node, node_b, sa, sb, tmp_path):
    """The destination's restore fails: a file the process maps vanished there after the
    second rsync (an rsync for the destination that removes it).  Exit 7; the source runs on."""
    counter = tmp_path / "calls"
    wrapper = tmp_path / "lossy-rsync"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"echo x >> {counter}\n"
        'rsync "$@"; rc=$?\n'
        f'if [ "$(wc -l < {counter})" -ge 2 ]; then for a; do last=$a; done; rm -f "$last/zdtm/memory_basic"; fi\n'
        "exit $rc\n"
    )
    wrapper.chmod(0o755)
    z, ip = running_zdtm(node, 411)
    before = init_pid(node, 411)
    r = migrate(node, sb, 411, "--online", f"--rsync=--rsync-path={wrapper}")
    assert r.returncode == 7, r.stdout + r.stderr
    assert "Failed to undump container" in r.stderr and "memory_basic" in r.stderr
    assert "Undumping container" in r.stdout and "Resuming container" not in r.stdout
    assert_dest_clean(node_b, 411, ip)
    check_source_intact(node, 411, ip, z, before)


def test_fault_connection_dropped_during_image_copy(node, node_b, sa, sb):
    z, ip = running_zdtm(node, 404)
    start_program(node, 404, HOG_C, "hog", "384", ready="hog.ready")
    before = init_pid(node, 404)
    dump = os.path.join(node_b.vzdir, "dump", "tmp-dump.404")
    dropped: list[int] = []

    def parts() -> list[str]:
        # The image being written: a pre-dump's, or the final one's.
        pre = dump + ".pre"
        found = [dump + ".part"]
        if os.path.isdir(pre):
            found += [os.path.join(pre, d) for d in os.listdir(pre) if d.endswith(".part")]
        return found

    def saboteur() -> None:
        # As soon as image files arrive, kill every sshd session on the destination.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not dropped:
            for part in parts():
                try:
                    if any(
                        os.path.getsize(os.path.join(part, f)) > (8 << 20) for f in os.listdir(part)
                    ):
                        dropped.extend(sb.drop_sessions())
                        return
                except OSError:
                    pass
            time.sleep(0.002)

    t = threading.Thread(target=saboteur)
    t.start()
    try:
        r = migrate(node, sb, 404, "--online", "-v")
    finally:
        t.join()
    assert dropped, "the image transfer was never seen"
    assert r.returncode == 6, r.stdout + r.stderr
    assert "Failed to copy dump file" in r.stderr
    assert_dest_clean(node_b, 404, ip)
    assert os.path.exists(os.path.join(private(node, 404), "prog", "hog.ready"))
    assert len(node.ct_procs(404)) >= 3  # init, memory_basic, hog
    check_source_intact(node, 404, ip, z, before)


def test_cancelled_by_signal(node, node_b, sa, sb):
    """SIGTERM while the image is on its way: exit 3, rolled back like any failure."""
    z, ip = running_zdtm(node, 410)
    start_program(node, 410, HOG_C, "hog", "128", ready="hog.ready")  # a copy that takes a while
    before = init_pid(node, 410)
    part = os.path.join(node_b.vzdir, "dump", "tmp-dump.410.pre")  # pre-copy has begun
    p = subprocess.Popen(
        [*node.prefix(), "vzmigrate", f"--ssh={sb.ssh_opts()}", "--online", sb.ip, "410"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=node.env,
    )  # fmt: skip
    try:
        assert wait_for(
            lambda: os.path.exists(part) or p.poll() is not None, timeout=120, step=0.002
        )
        assert p.poll() is None, p.communicate()
        os.kill(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 3, out + err
    assert "Cancelled by signal SIGTERM" in err and "Rolling back" in out
    assert_dest_clean(node_b, 410, ip)
    check_source_intact(node, 410, ip, z, before)


def test_fault_ctid_exists_on_destination(node, node_b, sa, sb):
    ip = node.create(405)
    node.ok("start", "405")
    before = init_pid(node, 405)
    ip_b = node_b.create(405)  # someone else's CT 405 there
    with open(os.path.join(private(node_b, 405), "theirs"), "w") as f:
        f.write("keep me\n")
    r = migrate(node, sb, 405)
    assert r.returncode == 9, r.stdout + r.stderr
    assert "CT #405 already exists on destination node" in r.stderr
    # Theirs is untouched; ours still runs.
    with open(os.path.join(private(node_b, 405), "theirs")) as f:
        assert f.read() == "keep me\n"
    with open(conf(node_b, 405)) as f:
        assert ip_b in f.read()
    assert status(node, 405) == "CTID 405 exist mounted running"
    assert init_pid(node, 405) == before
    assert net_state(node, 405, ip) == {"veth": True, "route": True, "proxy": True}


def test_fault_ip_in_use_on_destination(node, node_b, sa, sb):
    ip = node.create(406)
    node.ok("start", "406")
    before = init_pid(node, 406)
    node_b.create(506, ip=ip)  # another CT there already has our IP
    r = migrate(node, sb, 406, "--online")
    assert r.returncode == 12, r.stdout + r.stderr
    assert f"IP address(es) already in use on destination node: {ip} (CT 506)" in r.stderr
    assert_dest_clean(node_b, 406, None)
    assert status(node, 406) == "CTID 406 exist mounted running"
    assert init_pid(node, 406) == before


def flaky_rsync(tmp_path, fail_from: int = 2):
    """An rsync for the destination (--rsync-path) that fails from its Nth run on."""
    counter = tmp_path / "calls"
    wrapper = tmp_path / "flaky-rsync"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"echo x >> {counter}\n"
        f'if [ "$(wc -l < {counter})" -ge {fail_from} ]; then echo "flaky-rsync: disk on fire" >&2; exit 12; fi\n'
        'exec rsync "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper, counter


def test_keep_dst_then_retry(node, node_b, sa, sb, tmp_path):
    """Offline: the second rsync fails after the stop; the source restarts, the synced
    private area stays on the destination (--keep-dst) and a retry reuses it."""
    ip = node.create(407)
    node.ok("start", "407")
    node.ok("exec", "407", "echo v1 > /data.txt")
    wrapper, counter = flaky_rsync(tmp_path)
    r = migrate(node, sb, 407, "--keep-dst", f"--rsync=--rsync-path={wrapper}")
    assert r.returncode == 6, r.stdout + r.stderr
    assert "Stopping container" in r.stdout
    # The source runs again (restarted: it had been stopped), network and all.
    assert status(node, 407) == "CTID 407 exist mounted running"
    assert net_state(node, 407, ip) == {"veth": True, "route": True, "proxy": True}
    # The destination kept the private area, and nothing else.
    with open(os.path.join(private(node_b, 407), "data.txt")) as f:
        assert f.read() == "v1\n"
    assert not os.path.exists(conf(node_b, 407))
    assert_no_runtime(node_b, 407, ip)
    assert dumps(node_b) == []

    node.ok("exec", "407", "echo v2 > /data.txt")
    r = migrate(node, sb, 407, "-v")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Using the existing private area {private(node_b, 407)}" in r.stdout
    assert node_b.ok("exec", "407", "cat /data.txt").strip() == "v2"
    assert_source_gone(node, 407, ip)


def test_refusals(node, node_b, sa, sb):
    node.create(408)
    # --online needs a running container.
    r = migrate(node, sb, 408, "--online")
    assert r.returncode == 2 and "Can't perform live migration of a stopped container" in r.stderr
    # A container locked by a live process.
    holder = subprocess.Popen(["sleep", "60"])
    try:
        lock = os.path.join(node.vzdir, "lock", "408.lck")
        with open(lock, "w") as f:
            f.write(f"{holder.pid}\nstart\n")
        r = migrate(node, sb, 408)
        assert r.returncode == 20, r.stdout + r.stderr
        assert f"CT 408 already locked by PID {holder.pid}" in r.stderr
        os.unlink(lock)
    finally:
        holder.kill()
        holder.wait()
    # Unknown names and CTIDs.
    r = migrate(node, sb, "nosuchname")
    assert r.returncode == 10 and "doesn't exist" in r.stderr
    assert_dest_clean(node_b, 408, None)
    assert os.path.exists(conf(node, 408))


def test_destination_checks(node, node_b, sa, keys, tmp_path):
    """What the destination says about itself: no vzpy there (14); an older CPU (18)."""
    ip = node.create(409)
    node.ok("start", "409")
    no_vzpy = tmp_path / "no-vzpy"
    no_vzpy.write_text(
        '#!/bin/sh\nexec env -i HOME=/root PATH=/usr/bin:/bin /bin/sh -c "$SSH_ORIGINAL_COMMAND"\n'
    )
    no_vzpy.chmod(0o755)
    old_cpu = tmp_path / "old-cpu"
    old_cpu.write_text(
        "#!/bin/bash\n"
        'case "$SSH_ORIGINAL_COMMAND" in\n'
        "  internal-sftp) exec /usr/lib/openssh/sftp-server ;;\n"
        '  *--node-info*) bash -c "$SSH_ORIGINAL_COMMAND" | sed -e \'s/"xcr0": [0-9]*/"xcr0": 7/\' '
        "-e 's/\"avx512f\", //'; exit ${PIPESTATUS[0]} ;;\n"
        "esac\n"
        'exec bash -c "$SSH_ORIGINAL_COMMAND"\n'
    )
    old_cpu.chmod(0o755)
    started: list[SshNode] = []
    try:
        s1 = SshNode(node_b, keys, port=2223, force_command=str(no_vzpy))
        started.append(s1)
        s2 = SshNode(node_b, keys, port=2224, force_command=str(old_cpu))
        started.append(s2)
        r = migrate(node, s1, 409, "--check-only")
        assert r.returncode == 14, r.stdout + r.stderr
        assert "vzpy is not installed on the destination node" in r.stderr

        r = migrate(node, s2, 409, "--online", "--check-only")
        assert r.returncode == 18, r.stdout + r.stderr
        assert "CPU capabilities check failed!" in r.stderr
        assert "xstate AVX-512 opmask" in r.stderr and "avx512f" in r.stderr
        r = migrate(node, s2, 409, "--online", "--check-only", "-f", "cpu")
        assert r.returncode == 0, r.stdout + r.stderr
        assert "Ignoring the above error (migration can fail)..." in r.stdout
        # Offline migration of a running container restarts it: no CPU check.
        r = migrate(node, s2, 409, "--check-only")
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        for sn in started:
            sn.cleanup()
    assert_dest_clean(node_b, 409, ip)
    assert status(node, 409) == "CTID 409 exist mounted running"


# --- driven by a script, checks only ---------------------------------------------------------------------


def test_script_without_tty(node, node_b, sa, sb, tmp_path):
    ip = node.create(601)
    node_b.create(602)
    node.create(602)
    script = tmp_path / "move.sh"
    script.write_text(
        "#!/bin/sh\n"
        f'vzmigrate --ssh="{sb.ssh_opts()}" {sb.ip} 601 >{tmp_path}/601.log 2>&1\n'
        'echo "601=$?"\n'
        f'vzmigrate --ssh="{sb.ssh_opts()}" {sb.ip} 602 >{tmp_path}/602.log 2>&1\n'
        'echo "602=$?"\n'
    )
    script.chmod(0o755)
    # setsid: no controlling terminal at all; stdin from /dev/null, like cron.
    r = subprocess.run(
        ["nsenter", f"--net=/run/netns/{node.ns}", "setsid", "-w", str(script)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, env=node.env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["601=0", "602=9"], r.stdout + (tmp_path / "601.log").read_text()
    assert status(node_b, 601) == "CTID 601 exist unmounted down"
    assert_source_gone(node, 601, ip)
    assert os.path.exists(conf(node, 602))


def test_check_only(node, node_b, sa, sb, keys):
    ip = node.create(701)
    node.ok("start", "701")
    before = init_pid(node, 701)
    r = migrate(node, sb, 701, "--online", "--check-only")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Checking live migration of CT 701 to {sb.ip}" in r.stdout
    assert_dest_clean(node_b, 701, ip)
    assert init_pid(node, 701) == before

    # --dry-run finds a problem: the IP is taken there.
    node_b.create(702, ip=ip)
    r = migrate(node, sb, 701, "--dry-run")
    assert r.returncode == 12, r.stdout + r.stderr

    # An unknown host key is refused, clearly; StrictHostKeyChecking=no lets it through.
    keys.forget_host(sb.ip, sb.port)
    r = migrate(node, sb, 701, "--check-only")
    assert r.returncode == 4
    assert "Host key verification failed" in r.stderr and "not in the known hosts" in r.stderr
    r = node.run(
        "vzmigrate",
        f"--ssh={sb.ssh_opts()} -o StrictHostKeyChecking=no",
        "--check-only",
        sb.ip,
        "701",
    )
    assert r.returncode == 12, r.stdout + r.stderr  # got past the connection, to the IP check
    assert status(node, 701) == "CTID 701 exist mounted running"


def test_usage_errors(node):
    for args, code, text in (
        ([], 0, "Usage: vzmigrate"),
        (["host"], 1, "Invalid usage: not enough parameters"),
        (["a", "b", "c"], 1, "Invalid usage: too many parameters: c"),
        (["-r", "maybe", "host", "101"], 1, "yes or no"),
        (["--bogus", "host", "101"], 1, "unknown option --bogus"),
        (["host", "4242"], 10, "CT #4242 doesn't exist"),
    ):
        r = node.run("vzmigrate", *args)
        assert r.returncode == code, (args, r.stdout, r.stderr)
        assert text in r.stdout + r.stderr


# --- TCP through migration -------------------------------------------------------------------------------


def test_online_tcp_connection_survives(node, node_b, sa, sb, client):
    ip = node.create(801)
    node.ok("start", "801")
    start_program(node, 801, ECHO_C, "echo", ready="echo.ready")
    errors: list[str] = []
    stop = threading.Event()
    rounds = [0]

    def talk() -> None:
        try:
            with socket.create_connection((ip, 7000), timeout=30) as s:
                s.settimeout(30)
                while not stop.is_set():
                    msg = f"ping {rounds[0]:08d}\n".encode() * 8
                    s.sendall(msg)
                    got = b""
                    while len(got) < len(msg):
                        chunk = s.recv(len(msg) - len(got))
                        if not chunk:
                            raise ConnectionError("closed by the server")
                        got += chunk
                    if got != msg:
                        raise AssertionError(f"corrupt echo at round {rounds[0]}")
                    rounds[0] += 1
                    time.sleep(0.005)
        except Exception as e:  # noqa: BLE001 - reported to the test below
            errors.append(f"{type(e).__name__}: {e}")

    t = threading.Thread(target=lambda: client.in_ns(talk))
    t.start()
    try:
        assert wait_for(lambda: rounds[0] > 20 or errors, timeout=10)
        r = migrate(node, sb, 801, "--online", "-t")
        before = rounds[0]
        assert r.returncode == 0, r.stdout + r.stderr
        assert wait_for(lambda: rounds[0] > before + 50 or errors, timeout=30), (
            "no echo after migration"
        )
    finally:
        stop.set()
        t.join(timeout=60)
    assert not errors, errors
    assert status(node_b, 801) == "CTID 801 exist mounted running"
    assert_source_gone(node, 801, ip)


# --- real servers under load -----------------------------------------------------------------------


class RedisCounter:
    """One RESP connection sending `INCR seq` back to back (a request every ~2 ms): every
    reply must be the previous one plus one, so a request lost or run twice shows."""

    def __init__(self, ip: str) -> None:
        self.ip = ip
        self.stop = threading.Event()
        self.last = 0
        self.worst = 0.0
        self.errors: list[str] = []

    def run(self) -> None:
        try:
            with socket.create_connection((self.ip, 6379), timeout=30) as s:
                s.settimeout(30)
                f = s.makefile("rb")
                while not self.stop.is_set():
                    t = time.monotonic()
                    s.sendall(b"*2\r\n$4\r\nINCR\r\n$3\r\nseq\r\n")
                    line = f.readline()
                    self.worst = max(self.worst, time.monotonic() - t)
                    if not line.startswith(b":") or int(line[1:]) != self.last + 1:
                        raise AssertionError(f"INCR after {self.last} answered {line!r}")
                    self.last += 1
                    time.sleep(0.002)
        except Exception as e:  # noqa: BLE001 - reported to the test
            self.errors.append(f"{type(e).__name__}: {e}")


def redis_call(client, ip: str, *args: str) -> bytes:
    def body():
        with socket.create_connection((ip, 6379), timeout=10) as s:
            req = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
            s.sendall(req.encode())
            return s.recv(1 << 16)

    return client.in_ns(body)


def test_online_python_and_redis_under_load_there_and_back(node, node_b, sa, sb, client):
    """A Debian container serving a Python echo server and redis moves A -> B -> A while
    clients on the LAN stream to both: no reset, every echoed byte back once and in
    order, every INCR answered exactly once, the same server processes on arrival."""
    ip = node.create(820, template=require_template("debian-12-x86_64-redis"))
    node.ok("start", "820")
    root = os.path.join(private(node, 820), "root")
    with open(os.path.join(root, "srv.py"), "w") as f:
        f.write(netload.SERVER)
    node.ok("exec", "820", f"cd /root && (python3 srv.py {netload.PORT} >/root/srv.log 2>&1 &)")
    node.ok(
        "exec", "820",
        "redis-server --bind 0.0.0.0 --protected-mode no --save '' --appendonly no --daemonize yes",
    )  # fmt: skip
    assert wait_for(lambda: os.path.exists(os.path.join(root, "srv.ready")), timeout=30)

    def redis_up() -> bool:
        try:
            return redis_call(client, ip, "PING").startswith(b"+PONG")
        except OSError:
            return False

    assert wait_for(redis_up, timeout=30, step=0.2)
    for i in range(100):
        assert redis_call(client, ip, "SET", f"key{i}", f"value-{i}" * 10) == b"+OK\r\n"
    pids = node.ok("exec", "820", "pidof redis-server; pgrep -f srv.py").split()

    ec = netload.EchoClient(ip)
    rc = RedisCounter(ip)
    threads = [netload.NsThread(f"/run/netns/{client.ns}", fn) for fn in (ec.run, rc.run)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: all(ec.got) and rc.last > 20, timeout=20), (ec.errors, rc.errors)
        for src, dst, dst_ssh, there in ((node, node_b, sb, "B"), (node_b, node, sa, "A")):
            r = migrate(src, dst_ssh, 820, "--online", "-t")
            assert r.returncode == 0, r.stdout + r.stderr
            assert status(dst, 820) == "CTID 820 exist mounted running"
            assert_source_gone(src, 820, ip)
            # traffic flows on the new node, on the same connections
            got, last = list(ec.got), rc.last
            assert wait_for(
                lambda got=got, last=last: (
                    (all(g > a for g, a in zip(ec.got, got, strict=True)) and rc.last > last + 50)
                    or ec.errors
                    or rc.errors
                ),
                timeout=30,
            ), f"no traffic on {there}"
            assert not ec.errors and not rc.errors, (ec.errors, rc.errors)
            assert dst.ok("exec", "820", "pidof redis-server; pgrep -f srv.py").split() == pids
    finally:
        ec.stop.set()
        rc.stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a client is stuck"
    assert all(t.error is None for t in threads), [t.error for t in threads]
    assert not ec.errors and not rc.errors, (ec.errors, rc.errors)
    assert ec.got == ec.sent  # every echoed byte came back, once
    assert redis_call(client, ip, "GET", "seq") == f"${len(str(rc.last))}\r\n{rc.last}\r\n".encode()
    assert redis_call(client, ip, "GET", "key42") == b"$80\r\n" + b"value-42" * 10 + b"\r\n"
    print(f"\nworst echo wait {ec.worst:.3f} s, worst INCR {rc.worst:.3f} s, {rc.last} INCRs")
    node.ok("stop", "820", "--fast")
