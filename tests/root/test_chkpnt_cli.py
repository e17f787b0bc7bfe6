"""`vzctl chkpnt` / `vzctl restore` as an admin drives them (vzctl-reference.md §1.5)."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import struct
import subprocess
import time
import zlib

import pytest
from cbuild import build_c
from cprogs import HOG_C

import zdtm

pytestmark = pytest.mark.root

IO_URING_HOLDER = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
int main(void) {
    unsigned char params[120];
    memset(params, 0, sizeof params);
    int fd = syscall(425, 4, params);   /* io_uring_setup */
    FILE *f = fopen("/root/uring.ready", "w");
    fprintf(f, "%d\n", fd);
    fclose(f);
    for (;;) pause();
}
"""


IO_URING_WORKER = r"""
/* Sets up an io_uring and parks a read of an empty pipe in an io-wq worker thread
 * (IOSQE_ASYNC), then waits: the process then has a kernel worker thread. */
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	int fd = syscall(__NR_io_uring_setup, 4, &p);
	if (fd < 0) { perror("io_uring_setup"); return 1; }
	size_t sqsz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
	char *sq = mmap(0, sqsz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
	struct io_uring_sqe *sqes = mmap(0, p.sq_entries * sizeof *sqes, PROT_READ | PROT_WRITE,
		MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
	if (sq == MAP_FAILED || sqes == MAP_FAILED) { perror("mmap"); return 1; }
	int pfd[2];
	if (pipe(pfd)) return 1;
	static char buf[16];
	memset(&sqes[0], 0, sizeof sqes[0]);
	sqes[0].opcode = IORING_OP_READ;
	sqes[0].flags = IOSQE_ASYNC;
	sqes[0].fd = pfd[0];
	sqes[0].addr = (unsigned long)buf;
	sqes[0].len = sizeof buf;
	unsigned *tail = (unsigned *)(sq + p.sq_off.tail), *array = (unsigned *)(sq + p.sq_off.array);
	array[0] = 0;
	__atomic_store_n(tail, 1, __ATOMIC_RELEASE);
	if (syscall(__NR_io_uring_enter, fd, 1, 0, 0, NULL, 0) != 1) { perror("io_uring_enter"); return 1; }
	FILE *f = fopen("iowrk.ready", "w");
	fclose(f);
	for (;;) pause();
}
"""


def start_counter_ct(node, ctid):
    node.create(ctid)
    node.ok("start", str(ctid))
    z = zdtm.ZdtmRun(node, ctid, "memory_basic")
    z.start()
    return z


def dumpfile(node, ctid):
    return os.path.join(node.vzdir, "dump", f"Dump.{ctid}")


def test_full_chkpnt_restore_and_start(node):
    z = start_counter_ct(node, 160)
    out = node.ok("chkpnt", "160")
    for line in ("Setting up checkpoint...", "\tsuspend...", "\tdump...", "\tkill...",
                 "Checkpointing completed successfully"):  # fmt: skip
        assert line in out, out
    assert node.ok("status", "160").strip() == "CTID 160 exist unmounted down suspended"
    assert node.vzlist("-a", "-H", "-o", "ctid,status").stdout.split() == ["160", "suspended"]
    d = dumpfile(node, 160)
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    for name in os.listdir(d):
        assert stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode) == 0o600, name
    # `vzctl start` on a suspended container restores it
    out = node.ok("start", "160")
    assert f"Dump file {d} exists, trying to restore from it" in out
    assert "Restoring completed successfully" in out
    assert not os.path.exists(d)
    assert node.ok("status", "160").strip() == "CTID 160 exist mounted running"
    assert z.finish().strip().endswith("PASS")
    node.ok("stop", "160")


def test_staged_suspend_dump_kill_restore(node):
    z = start_counter_ct(node, 161)
    d = os.path.join(node.vzdir, "dump", "staged")
    node.ok("chkpnt", "161", "--suspend")
    pids = node.ct_procs(161)
    states = {open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] for p in pids}
    assert states <= {"S", "D", "T"}, states  # frozen
    node.ok("chkpnt", "161", "--dump", "--dumpfile", d)
    assert os.path.exists(os.path.join(d, "inventory.img"))
    assert node.ct_procs(161) == pids  # still there, frozen
    # resume instead of kill: the container goes on unchanged
    node.ok("chkpnt", "161", "--resume")
    assert node.ok("status", "161").split()[4] == "running"
    # then kill and bring it back from the staged image in two steps
    node.ok("chkpnt", "161", "--suspend")
    node.ok("chkpnt", "161", "--kill")
    assert node.ct_procs(161) == []
    out = node.ok("restore", "161", "--undump", "--dumpfile", d)
    assert "Restoring" in out
    frozen = node.ct_procs(161)
    assert frozen
    assert os.path.exists(os.path.join(d, "inventory.img"))  # kept: not a full restore
    node.ok("restore", "161", "--resume")
    assert z.finish().strip().endswith("PASS")
    node.ok("stop", "161")


def test_restore_kill_after_undump(node):
    start_counter_ct(node, 162)
    d = os.path.join(node.vzdir, "dump", "u")
    node.ok("chkpnt", "162", "--dumpfile", d)
    node.ok("restore", "162", "--undump", "--dumpfile", d)
    assert node.ct_procs(162)
    node.ok("restore", "162", "--kill")
    assert node.ct_procs(162) == []
    assert node.ok("status", "162").split()[4] == "down"


def test_failed_dump_leaves_container_running(node):
    z = start_counter_ct(node, 163)
    priv = os.path.join(node.vzdir, "private", "163")
    shutil.copy(build_c(IO_URING_HOLDER, "uring_holder"), os.path.join(priv, "root", "uring"))
    node.ok("exec", "163", "(/root/uring >/dev/null 2>&1 &)")
    deadline = time.monotonic() + 10
    while not os.path.exists(os.path.join(priv, "root", "uring.ready")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    before = sorted(node.ct_procs(163))
    r = node.vzctl("chkpnt", "163")
    assert r.returncode == 16, (r.stdout, r.stderr)
    assert "Checkpointing failed" in r.stderr
    assert "io_uring" in r.stderr  # names the fd and what it is
    assert "Traceback" not in r.stderr
    assert not os.path.exists(dumpfile(node, 163))
    assert sorted(node.ct_procs(163)) == before
    assert node.ok("status", "163").strip() == "CTID 163 exist mounted running"
    # not frozen: the test program still answers
    assert z.finish().strip().endswith("PASS")
    node.ok("stop", "163")


def corrupt(kind, d, other_image=None):
    files = sorted(os.listdir(d))
    if kind == "truncated":
        p = os.path.join(d, next(f for f in files if f.startswith("mm-")))
        with open(p, "r+b") as f:
            f.truncate(os.path.getsize(p) // 2)
    elif kind == "flipped":
        p = os.path.join(d, next(f for f in files if f.startswith("pages-")))
        with open(p, "r+b") as f:
            f.seek(100)
            b = f.read(1)
            f.seek(100)
            f.write(bytes([b[0] ^ 0xFF]))
    elif kind == "missing":
        os.unlink(os.path.join(d, next(f for f in files if f.startswith("thread-"))))
    elif kind == "newer":
        # As a later vzpy would write it: format major 99 in a valid envelope.
        p = os.path.join(d, "inventory.img")
        data = open(p, "rb").read()
        body = data[:8] + struct.pack("<H", 99) + data[10:-4]
        with open(p, "wb") as f:
            f.write(body + struct.pack("<I", zlib.crc32(body)))
    elif kind == "other_ct":
        shutil.rmtree(d)
        shutil.copytree(other_image, d)


@pytest.mark.parametrize("kind", ["truncated", "flipped", "missing", "newer", "other_ct"])
def test_bad_images_are_refused(node, kind):
    start_counter_ct(node, 164)
    node.ok("chkpnt", "164")
    other = None
    if kind == "other_ct":
        start_counter_ct(node, 165)
        other = os.path.join(node.vzdir, "dump", "other")
        node.ok("chkpnt", "165", "--dumpfile", other)
    d = dumpfile(node, 164)
    corrupt(kind, d, other)
    r = node.vzctl("restore", "164")
    assert r.returncode == 17, (kind, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    msg = r.stderr.strip().splitlines()[0]
    assert len(msg) < 300
    if kind == "other_ct":
        assert "belongs to CT 165" in r.stderr
    if kind == "newer":
        assert "version" in r.stderr
    assert node.ct_procs(164) == []  # nothing started
    assert node.ok("status", "164").split()[4] == "down"
    assert os.path.exists(d)  # the user's image is not deleted


@pytest.mark.parametrize("freezer", ["v1", "v2"])
def test_both_freezers(node, freezer):
    """Checkpoints work with the cgroup v2 freezer and with the v1 freezer."""
    from vzpy.config import ConfFile

    conf = ConfFile.load(os.path.join(node.confdir, "vz.conf"))
    conf.set("FREEZER", freezer)
    conf.save()
    z = start_counter_ct(node, 166)
    node.ok("chkpnt", "166", "--suspend")
    if freezer == "v1":
        state = (
            open(f"/sys/fs/cgroup/freezer/{node.cgroup_prefix}/166/freezer.state").read().strip()
        )
        assert state == "FROZEN"
    else:
        events = open(f"/sys/fs/cgroup/unified/{node.cgroup_prefix}/166/cgroup.events").read()
        assert "frozen 1" in events
    node.ok("chkpnt", "166", "--resume")
    z.cycle(1)
    assert z.finish().strip().endswith("PASS")
    node.ok("stop", "166")


def test_file_outside_the_container_is_refused(node, tmp_path):
    """A daemon started by `vzctl exec` without redirecting its output keeps vzctl's stdout.

    If that is a host file, restore could only reopen some other file under the same path
    inside the container: the dump refuses, naming the task, fd and file, and the
    container keeps running.
    """
    z = start_counter_ct(node, 164)
    log = tmp_path / "exec.out"
    with open(log, "w") as out:
        r = subprocess.run(
            [*node.prefix(), "vzctl", "exec", "164", "sleep 1000 &"],
            stdout=out, stderr=subprocess.STDOUT, env=node.env, timeout=60,
        )  # fmt: skip
    assert r.returncode == 0, log.read_text()
    before = sorted(node.ct_procs(164))
    r = node.vzctl("chkpnt", "164")
    assert r.returncode == 16, (r.stdout, r.stderr)
    assert f"fd 1 is {log}, a file outside the container" in r.stderr
    assert "Traceback" not in r.stderr
    assert not os.path.exists(dumpfile(node, 164))
    assert sorted(node.ct_procs(164)) == before
    assert node.ok("status", "164").strip() == "CTID 164 exist mounted running"
    # the same daemon with its output redirected inside the container is fine
    node.ok("exec", "164", "kill $(pidof sleep); (sleep 1000 >/dev/null 2>&1 &)")
    node.ok("chkpnt", "164")
    node.ok("restore", "164")
    assert "sleep 1000" in node.ok("exec", "164", "ps -o args")
    assert z.finish().strip().endswith("PASS")
    node.ok("stop", "164")


def test_io_uring_worker_refused_at_once(node):
    """A process with an io-wq worker thread (a kernel thread in its thread group, never
    stopping for ptrace) is refused by name before anything waits on that thread."""
    z = start_counter_ct(node, 167)
    priv = os.path.join(node.vzdir, "private", "167")
    shutil.copy(build_c(IO_URING_WORKER, "iowrk"), os.path.join(priv, "root", "iowrk"))
    node.ok("exec", "167", "cd /root && (./iowrk >/dev/null 2>&1 &)")
    zdtm.wait_file(os.path.join(priv, "root", "iowrk.ready"), 10)
    before = sorted(node.ct_procs(167))
    t0 = time.monotonic()
    r = node.vzctl("chkpnt", "167", timeout=60)
    assert r.returncode == 16, (r.stdout, r.stderr)
    assert "(iowrk): it uses io_uring (kernel worker thread" in r.stderr
    assert time.monotonic() - t0 < 30
    assert not os.path.exists(dumpfile(node, 167))
    assert sorted(node.ct_procs(167)) == before
    assert node.ok("status", "167").strip() == "CTID 167 exist mounted running"
    assert z.finish().strip().endswith("PASS")
    node.ok("stop", "167")


def test_sigterm_cancels_chkpnt_cleanly(node):
    """`kill` (cron's timeout, a closed terminal) during the dump: the container runs on,
    unfrozen, its memory intact, and no half-written image is left."""
    z = start_counter_ct(node, 168)
    priv = os.path.join(node.vzdir, "private", "168")
    shutil.copy(build_c(HOG_C, "hog"), os.path.join(priv, "root", "hog"))
    node.ok("exec", "168", "cd /root && (./hog 768 >/dev/null 2>&1 &)")
    zdtm.wait_file(os.path.join(priv, "root", "hog.ready"), 60)
    before = sorted(node.ct_procs(168))
    p = subprocess.Popen(
        [*node.prefix(), "vzctl", "chkpnt", "168"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=node.env,
    )  # fmt: skip
    d = dumpfile(node, 168)
    deadline = time.monotonic() + 30
    while not (os.path.isdir(d) and any(f.startswith("pages-") for f in os.listdir(d))):
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.005)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 3, (out, err)
    assert "Cancelled" in err and "Traceback" not in err
    assert not os.path.exists(d)
    assert node.ok("status", "168").strip() == "CTID 168 exist mounted running"
    assert sorted(node.ct_procs(168)) == before
    assert z.finish().strip().endswith("PASS")
    node.ok("stop", "168")
