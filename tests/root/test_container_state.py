"""Container-wide state as seen from outside the processes: the mount table, the
contents of the container's tmpfs mounts, its IPC namespace (objects nobody
holds, limits) and its UTS names are the same after `vzctl chkpnt` + `vzctl
restore` (twice); what vzpy cannot restore is refused at dump with a message
naming it, and the container runs on untouched."""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

import zdtm

pytestmark = pytest.mark.root

HERE = os.path.dirname(os.path.abspath(__file__))

SETUP = " && ".join(
    [
        "mkdir -p /mnt/st /mnt/stb /mnt/stro /mnt/stf",
        "mount -t tmpfs -o size=2m,mode=700,nosuid st /mnt/st",
        "mkdir -p /mnt/st/d/deep",
        "echo hello > /mnt/st/d/f",
        "dd if=/dev/urandom of=/mnt/st/d/deep/rand bs=1k count=300 2>/dev/null",
        "ln -s d/f /mnt/st/l",
        "ln /mnt/st/d/f /mnt/st/hard",
        "mknod /mnt/st/n c 1 3",
        "chown 12:34 /mnt/st/d/f",
        "chmod 640 /mnt/st/d/f",
        "touch -d '2001-02-03 04:05:06' /mnt/st/d/deep",
        "mount --bind /mnt/st/d /mnt/stb",
        "mount -o remount,bind,ro,nodev /mnt/stb",
        "mount -t tmpfs -o ro,size=64k none /mnt/stro",
        "touch /mnt/stf/file",
        "mount --bind /etc/passwd /mnt/stf/file",
        "echo posix-shm > /dev/shm/pos",
        "mkdir /dev/extra && mknod /dev/extra/zero c 1 5",
        "sysctl -w kernel.msgmnb=32768 kernel.shmmni=2000 kernel.sem='250 32000 32 200' fs.mqueue.msg_max=20 >/dev/null",
        "hostname inside.example",
        "echo nis.example > /proc/sys/kernel/domainname",
    ]
)

SYSCTLS = "kernel.msgmnb kernel.msgmax kernel.shmmni kernel.shmmax kernel.sem kernel.shm_rmid_forced fs.mqueue.msg_max fs.mqueue.queues_max"


def _binary() -> str:
    return zdtm.build_path(os.path.join(HERE, "targets", "ipc_state.c"))


def _install(node, ctid: int) -> str:
    d = os.path.join(node.vzdir, "private", str(ctid), "zdtm")
    os.makedirs(d, exist_ok=True)
    shutil.copy(_binary(), os.path.join(d, "ipc_state"))
    return d


def _ex(node, ctid: int, cmd: str) -> str:
    return node.ok("exec", str(ctid), cmd)


def normalize_mountinfo(text: str) -> list[str]:
    """mountinfo with what a restore may change replaced: mount ids by their
    order, the devices of virtual file systems, peer group numbers by order."""
    lines = [ln.split(" ") for ln in text.strip().splitlines()]
    ids = {f[0]: str(i) for i, f in enumerate(lines)}
    groups: dict[str, str] = {}
    out = []
    for f in lines:
        sep = f.index("-", 6)
        opt = []
        for tag in f[6:sep]:
            name, _, num = tag.partition(":")
            if num:
                num = groups.setdefault(num, str(len(groups)))
            opt.append(f"{name}:{num}" if num else name)
        dev = f[2] if not f[2].startswith("0:") else "0:*"
        out.append(" ".join([ids[f[0]], ids.get(f[1], "out"), dev, *f[3:6], *opt, *f[sep:]]))
    return out


def snapshot(node, ctid: int) -> dict:
    # (./pts and ./mqueue: find lists the mount points, stat shows the roots of
    # the devpts and mqueue mounted there: fresh instances, their own times)
    tree = "for m in /dev /dev/shm /mnt/st; do cd $m && find . -xdev | sort | grep -v -e '^./pts$' -e '^./mqueue$' | " \
        "while read f; do stat -c '%n %f %u %g %s %Y %t:%T %h' \"$f\"; done; done"  # fmt: skip
    sums = "find /mnt/st /dev/shm -xdev -type f | sort | xargs md5sum"
    ipc = "for f in shm sem msg; do cat /proc/sysvipc/$f; done; ls -l /dev/mqueue; cat /dev/mqueue/state-q"
    return {
        "mounts": _ex(node, ctid, "cat /proc/mounts"),
        "mountinfo": normalize_mountinfo(_ex(node, ctid, "cat /proc/self/mountinfo")),
        "tree": _ex(node, ctid, tree),
        "sums": _ex(node, ctid, sums),
        "ipc": _ipc_rows(_ex(node, ctid, ipc)),
        "sysctl": _ex(node, ctid, f"sysctl {SYSCTLS}"),
        "uts": _ex(node, ctid, "hostname; cat /proc/sys/kernel/domainname; uname -n"),
    }


def _ipc_rows(text: str) -> list[str]:
    """/proc/sysvipc rows without the pids and times the kernel sets itself;
    the mqueue listing without its time; QSIZE kept."""
    out = []
    header: list[str] = []
    for line in text.splitlines():
        w = line.split()
        if w and w[0] == "key":
            header = w
            out.append(line)
            continue
        if header and len(w) == len(header):
            keep = [
                v
                for h, v in zip(header, w, strict=True)
                if not re.match(r"(c|l|ls|lr|o)pid|.time|rss|swap", h)
            ]
            out.append(" ".join(keep))
        else:
            out.append(re.sub(r"\w{3} +\d+ +[\d:]+", "<time>", line))
    return out


@pytest.mark.parametrize("cycles", [1, 2])
def test_state_same_after_restore(node, cycles):
    ctid = 160 + cycles
    node.create(ctid)
    node.ok("start", str(ctid))
    try:
        _install(node, ctid)
        _ex(node, ctid, SETUP)
        assert "MADE" in _ex(node, ctid, "/zdtm/ipc_state make")
        before = snapshot(node, ctid)
        assert "/mnt/stb tmpfs ro,nosuid,nodev" in before["mounts"]
        assert "inside.example" in before["uts"] and "nis.example" in before["uts"]
        for _ in range(cycles):
            node.ok("chkpnt", str(ctid))
            assert not node.ct_procs(ctid)
            node.ok("restore", str(ctid))
            after = snapshot(node, ctid)
            for key in before:
                assert after[key] == before[key], key
        out = _ex(node, ctid, "/zdtm/ipc_state check")
        assert out.strip().splitlines()[-1] == "PASS", out
    finally:
        node.vzctl("stop", str(ctid), "--fast")
        node.vzctl("destroy", str(ctid))


REFUSED = [
    # (name, command run in the container (backgrounded), words the refusal must name)
    ("cgroup2", "mkdir -p /mnt/cg && mount -t cgroup2 none /mnt/cg", ["/mnt/cg", "cgroup2"]),
    ("mntns", "unshare -m sleep 1000", ["own mount namespace"]),
    ("ipcns", "unshare -i sleep 1000", ["own IPC namespace"]),
    ("partial_shm", "/zdtm/ipc_state partial_shm", ["SysV shm segment", "only part"]),
    ("mq_notify", "/zdtm/ipc_state mq_notify", ["/notified", "mq_notify"]),
    (
        "hidden_tmpfs",
        "mkdir -p /mnt/h && mount -t tmpfs a /mnt/h && mount -t tmpfs b /mnt/h",
        ["/mnt/h", "hides"],
    ),
]


@pytest.mark.parametrize("name,cmd,words", REFUSED, ids=[c[0] for c in REFUSED])
def test_refused_at_dump(node, name, cmd, words):
    ctid = 165
    node.create(ctid)
    node.ok("start", str(ctid))
    d = _install(node, ctid)
    dump = os.path.join(node.base, "refused-dump")
    try:
        if cmd.startswith("/zdtm/"):
            node.ok("exec", str(ctid), f"cd /zdtm && {cmd} >ipc_state.out 2>&1 </dev/null &")
            zdtm.wait_file(os.path.join(d, "ipc_state.ready"))
        elif name in ("cgroup2", "hidden_tmpfs"):
            _ex(node, ctid, cmd)
        else:
            node.ok("exec", str(ctid), f"{cmd} >/dev/null 2>&1 </dev/null &")
            time.sleep(0.3)
        procs = sorted(node.ct_procs(ctid))
        r = node.vzctl("chkpnt", str(ctid), "--dumpfile", dump)
        text = r.stdout + r.stderr
        assert r.returncode == 16, (r.returncode, text)
        for w in words:
            assert w in text, (w, text)
        assert "Traceback" not in text
        assert not os.path.exists(dump), "a refused dump left an image behind"
        assert node.ok("status", str(ctid)).split()[-1] == "running"
        assert sorted(node.ct_procs(ctid)) == procs
        if cmd.startswith("/zdtm/"):
            pid = int(open(os.path.join(d, "ipc_state.pid")).read())
            node.ok("exec", str(ctid), f"kill -TERM {pid}")
            deadline = time.monotonic() + 10
            out = ""
            while "PASS" not in out and "FAIL" not in out:
                assert time.monotonic() < deadline, out
                time.sleep(0.05)
                out = open(os.path.join(d, "ipc_state.out")).read()
            assert out.strip().splitlines()[-1] == "PASS", out
    finally:
        node.vzctl("stop", str(ctid), "--fast")
        node.vzctl("destroy", str(ctid))
