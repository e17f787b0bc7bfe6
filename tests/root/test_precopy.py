"""Iterative memory pre-copy: userfaultfd write-protect dirty tracking, pre-dump chains,
and what a failed or cancelled migration leaves behind (nothing).

- The tracker finds exactly the pages a zdtm-style program wrote (populated pages
  and never-touched ones), re-protects them, and on stop leaves the process with no
  userfaultfd and no write-protected page (pagemap bit 57).
- A live migration with pre-copy (a process that keeps writing memory all the
  time among them) restores memory byte for byte: the programs verify it and
  PASS; the frozen window carried only the last delta, the rest came from the
  parent chain.
- A migration that fails after the pre-copy, and one cancelled in the middle of
  it, leave every process of the container running with no uffd and no wp bit.
- ``--noiter`` still migrates (everything in the frozen window).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import time

import pytest
from cbuild import build_c
from sshnode import SshNode

import zdtm
from vzpy.checkpoint import precopy
from vzpy.config import VzConfig
from vzpy.container.cgroup import CtCgroup
from vzpy.container.ct import Container
from vzpy.sys import uffd

pytestmark = pytest.mark.root

PAGE = 4096

DIRTY_C = r"""
/* Maps 64 MiB, touches its first half; on SIGUSR1 writes pages 3 4 5 100 8191
 * 9000 16383 of it (the last two were never touched), then creates dirty.done.
 * After SIGTERM every page must hold what was written. */
#include "zdtmlib.h"
#include <stdint.h>
#include <sys/mman.h>

#define NPAGES 16384
static const size_t pages[] = {3, 4, 5, 100, 8191, 9000, 16383};
static volatile sig_atomic_t go;
static void on_usr1(int s) { (void)s; go = 1; }

int main(int argc, char **argv)
{
	test_init(argc, argv);
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	sigset_t block, old;
	sigemptyset(&block);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, &old);
	char *p = mmap(NULL, (size_t)NPAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t i = 0; i < NPAGES / 2; i++) p[i * 4096] = 1;
	FILE *f = fopen("dirty_pages.addr", "w");
	fprintf(f, "%lu\n", (unsigned long)p);
	fclose(f);
	test_ready();
	while (!go && !zdtm_stop)
		sigsuspend(&old);
	sigprocmask(SIG_SETMASK, &old, NULL);
	for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) p[pages[i] * 4096 + 17] = 2;
	int fd = open("dirty_pages.done", O_CREAT | O_WRONLY, 0644);
	close(fd);
	test_waitsig();
	for (size_t i = 0; i < NPAGES; i++) {
		char want0 = i < NPAGES / 2 ? 1 : 0, want17 = 0;
		for (size_t k = 0; k < sizeof pages / sizeof pages[0]; k++) if (pages[k] == i) want17 = 2;
		if (p[i * 4096] != want0 || p[i * 4096 + 17] != want17) fail("page %zu", i);
	}
	pass();
}
"""

CHURN_C = r"""
/* Keeps writing memory all the time: page (g % N) of a 64 MiB area gets the value g
 * in every word, g counting up; after restore each page must hold, whole, the last
 * generation written to it.  Plus 8 MiB of heap that is written once. */
#include "zdtmlib.h"
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#define NPAGES 16384
#define WORDS (4096 / 8)

int main(int argc, char **argv)
{
	test_init(argc, argv);
	uint64_t *area = mmap(NULL, (size_t)NPAGES * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t *heap = malloc(8 << 20);
	for (size_t i = 0; i < (8 << 20) / 8; i++) heap[i] = i * 31;
	uint64_t g;
	for (g = 0; g < NPAGES; g++)
		for (int w = 0; w < WORDS; w++) area[g * WORDS + w] = g;
	test_ready();
	struct timespec ts = {0, 200000};
	while (!zdtm_stop) {
		for (int k = 0; k < 64 && !zdtm_stop; k++, g++) {
			uint64_t *p = area + (g % NPAGES) * WORDS;
			for (int w = 0; w < WORDS; w++) p[w] = g;
		}
		nanosleep(&ts, NULL);
	}
	for (uint64_t i = 0; i < NPAGES; i++) {
		uint64_t want = g - 1 - ((g - 1 - i) % NPAGES);
		uint64_t *p = area + i * WORDS;
		for (int w = 0; w < WORDS; w++)
			if (p[w] != want) fail("page %lu word %d: %lu, want %lu (g %lu)", i, w, p[w], want, g);
	}
	for (size_t i = 0; i < (8 << 20) / 8; i++) if (heap[i] != i * 31) fail("heap[%zu]", i);
	test_msg("generations %lu\n", g);
	pass();
}
"""

HOG_C = r"""
/* Holds N MiB of pseudo-random memory, then waits. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	size_t n = strtoul(argv[1], 0, 10) << 17;
	uint64_t *p = malloc(n * 8), x = 88172645463325252ULL;
	for (size_t i = 0; i < n; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; p[i] = x; }
	FILE *f = fopen("hog.ready", "w"); fclose(f);
	for (;;) pause();
}
"""


class Embedded(zdtm.ZdtmRun):
    """A zdtm-style program whose source lives in this file."""

    def __init__(self, node, ctid: int, name: str, source: str, args: str = "") -> None:
        with open(os.path.join(zdtm.ZDTM_DIR, "zdtmlib.h")) as f:
            lib = f.read()
        self.node = node
        self.ctid = ctid
        self.name = name
        self.args = args
        self.binary = build_c(source.replace('#include "zdtmlib.h"', lib), name)
        self.priv = os.path.join(node.vzdir, "private", str(ctid))
        self.dir = os.path.join(self.priv, "zdtm")


# --- fixtures and probes -----------------------------------------------------------------------


def migrate(src, dst: SshNode, ctid: int, *opts: str, timeout: float = 600):
    return src.run(
        "vzmigrate", f"--ssh={dst.ssh_opts()}", *opts, dst.ip, str(ctid), timeout=timeout
    )


def container(node, ctid: int, monkeypatch) -> Container:
    monkeypatch.setenv("VZ_CONFDIR", node.confdir)
    return Container(ctid, VzConfig.load(ctid))


def host_pid(node, ctid: int, nspid: int) -> int:
    for pid in node.ct_procs(ctid):
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:") and int(line.split()[-1]) == nspid:
                    return pid
    raise AssertionError(f"no process {nspid} in CT {ctid}")


def wp_pages(pid: int, start: int, end: int) -> int:
    """How many pages of [start, end) of pid have the uffd-wp bit (57) in pagemap."""
    n = (end - start) // PAGE
    fd = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY)
    try:
        data = os.pread(fd, n * 8, start // PAGE * 8)
    finally:
        os.close(fd)
    return sum(1 for (e,) in struct.iter_unpack("<Q", data) if e >> uffd.PM_UFFD_WP_BIT & 1)


def assert_untracked(node, ctid: int) -> None:
    """No process of the CT holds a userfaultfd, and no page anywhere is write-protected."""
    pids = node.ct_procs(ctid)
    assert pids
    for pid in pids:
        links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        assert "anon_inode:[userfaultfd]" not in links, (pid, links)
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                if hi > 0x7FFFFFFFF000 or "[vvar" in line:
                    continue
                assert wp_pages(pid, lo, hi) == 0, (pid, line)


def pages_of(runs, base: int, end: int) -> list[tuple[int, int]]:
    """runs clipped to [base, end), as page numbers relative to base."""
    return [
        ((s - base) // PAGE, (e - base) // PAGE) for s, e in precopy.intersect(runs, [(base, end)])
    ]


# --- tracking ------------------------------------------------------------------------------------


def test_tracking_finds_exactly_the_written_pages(node, monkeypatch):
    node.create(851)
    node.ok("start", "851")
    z = Embedded(node, 851, "dirty_pages", DIRTY_C)
    z.start()
    pid = host_pid(node, 851, z.pid())
    with open(z.path("addr")) as f:
        base = int(f.read())
    end = base + 16384 * PAGE
    ct = container(node, 851, monkeypatch)
    tracker = precopy.DirtyTracker(ct)
    try:
        info = tracker.start()
        assert pid not in info.untracked and info.tracked == len(node.ct_procs(851))
        # Our uffd is ours alone: the process's fd table is as it was.
        assert uffd.uffd_fds(pid) == []
        # Every page of the area is write-protected, the never-touched half included
        # (WP_UNPOPULATED markers).
        assert wp_pages(pid, base, end) == 16384
        assert pages_of(tracker.written(pid), base, end) == []

        os.kill(pid, signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while not os.path.exists(z.path("done")):
            assert time.monotonic() < deadline, z.output()
            time.sleep(0.01)
        want = [(3, 6), (100, 101), (8191, 8192), (9000, 9001), (16383, 16384)]
        assert pages_of(tracker.written(pid), base, end) == want
        assert wp_pages(pid, base, end) == 16384 - 7
        # A scan with PM_SCAN_WP_MATCHING returns them and protects them again.
        assert pages_of(tracker.written(pid, reprotect=True), base, end) == want
        assert pages_of(tracker.written(pid), base, end) == []
        assert wp_pages(pid, base, end) == 16384
    finally:
        tracker.stop()
    assert_untracked(node, 851)
    assert not CtCgroup(node.cgroup_prefix, 851).is_frozen()
    out = z.finish()
    assert out.strip().splitlines()[-1] == "PASS", out


def test_local_precopy_chain_restores(node, monkeypatch, tmp_path):
    """Pre-dumps into local directories, a final dump on top of them (most pages are
    PE_PARENT runs), restore through the chain: memory_basic and a process that never
    stops writing both verify every byte."""
    from vzpy.checkpoint import driver
    from vzpy.images import ImageReader, ImageWriter

    node.create(852)
    node.ok("start", "852")
    mb = zdtm.ZdtmRun(node, 852, "memory_basic")
    mb.start()
    churn = Embedded(node, 852, "churn", CHURN_C)
    churn.start()
    ct = container(node, 852, monkeypatch)
    imgs = str(tmp_path / "imgs")
    os.makedirs(imgs)
    with precopy.DirtyTracker(ct) as tracker:
        tracker.start()
        pc = precopy.PreCopy(tracker, precopy.local_images(imgs, 852))
        iters = pc.run()
        assert iters[0].copied > 100 << 20  # everything, first
        final = os.path.join(imgs, "final")
        w = ImageWriter(final, 852, parent=os.path.join(imgs, pc.last_image))
        res = driver.dump_container(ct, final, leave="kill", writer=w, parent_pages=pc.parent_pages)
    ct.cleanup_runtime(keep_mount=True)
    # memory_basic's 32 MiB heap did not change: it is in the parent chain, not here.
    img = ImageReader(final)
    mb_pid = str(mb.pid())
    rec = img.read("pagemap", mb_pid)
    assert rec["nr_parent_pages"] * PAGE >= 32 << 20, rec
    assert rec["nr_pages"] * PAGE < 4 << 20, rec
    assert res.pages_bytes < 80 << 20  # churn's 64 MiB at most, plus small change
    img.verify()  # checksums of the whole chain
    out = node.ok("restore", "852", "--dumpfile", final)
    assert "Restoring completed successfully" in out
    for z in (mb, churn):
        out = z.finish()
        assert out.strip().splitlines()[-1] == "PASS", out


# --- through vzmigrate -----------------------------------------------------------------------------


def test_migration_with_precopy_restores_memory(node, node_b, sb):
    node.create(853)
    node.ok("start", "853")
    mb = zdtm.ZdtmRun(node, 853, "memory_basic")
    mb.start()
    churn = Embedded(node, 853, "churn", CHURN_C)
    churn.start()
    tree = zdtm.ZdtmRun(node, 853, "process_tree")
    tree.start()
    r = migrate(node, sb, 853, "--online", "-v")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Pre-copying memory" in r.stdout
    iters = re.findall(r"pre-copy (\d+): ([0-9.]+) MiB", r.stdout)
    assert iters and float(iters[0][1]) > 100, r.stdout  # the first round copies everything
    sent = float(re.search(r"image: ([0-9.]+) MB sent", r.stdout).group(1))
    assert sent < 100, r.stdout  # memory_basic's heap and churn's heap stayed behind
    assert "Total frozen time" in r.stdout
    # Nothing of it is left on either node but the running container on B.
    assert node.ct_procs(853) == []
    assert os.listdir(os.path.join(node_b.vzdir, "dump")) == []
    for z in (mb, churn, tree):
        out = _on(z, node_b).finish()
        assert out.strip().splitlines()[-1] == "PASS", out
    node_b.vzctl("stop", "853", "--fast")


def _on(z: zdtm.ZdtmRun, node) -> zdtm.ZdtmRun:
    """The same program seen on another node."""
    z.node = node
    z.priv = os.path.join(node.vzdir, "private", str(z.ctid))
    z.dir = os.path.join(z.priv, "zdtm")
    return z


def flaky_rsync(tmp_path, fail_from: int = 2):
    counter = tmp_path / "calls"
    wrapper = tmp_path / "flaky-rsync"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"echo x >> {counter}\n"
        f'if [ "$(wc -l < {counter})" -ge {fail_from} ]; then echo "flaky-rsync: no" >&2; exit 12; fi\n'
        'exec rsync "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def test_failed_migration_leaves_no_uffd(node, node_b, sb, tmp_path):
    """The second rsync fails in the frozen window, after the pre-copy: the source runs on
    and no process has our uffd or a write-protected page."""
    node.create(854)
    node.ok("start", "854")
    mb = zdtm.ZdtmRun(node, 854, "memory_basic")
    mb.start()
    churn = Embedded(node, 854, "churn", CHURN_C)
    churn.start()
    wrapper = flaky_rsync(tmp_path)
    r = migrate(node, sb, 854, "--online", "-v", f"--rsync=--rsync-path={wrapper}")
    assert r.returncode == 6, r.stdout + r.stderr
    assert "pre-copy 1:" in r.stdout and "Failed to sync container private areas" in r.stderr
    assert not CtCgroup(node.cgroup_prefix, 854).is_frozen()
    assert_untracked(node, 854)
    assert os.listdir(os.path.join(node_b.vzdir, "dump")) == []
    for z in (mb, churn):
        out = z.finish()
        assert out.strip().splitlines()[-1] == "PASS", out


def test_cancelled_precopy_leaves_no_uffd(node, node_b, sb):
    """SIGTERM while the pre-copy streams: exit 3, rolled back, nothing of ours left."""
    node.create(855)
    node.ok("start", "855")
    mb = zdtm.ZdtmRun(node, 855, "memory_basic")
    mb.start()
    d = os.path.join(node.vzdir, "private", "855", "prog")
    os.makedirs(d)
    shutil.copy(build_c(HOG_C, "hog"), os.path.join(d, "hog"))
    assert (
        node.vzctl("exec", "855", "cd /prog && ./hog 384 >/dev/null 2>&1 </dev/null &").returncode
        == 0
    )
    deadline = time.monotonic() + 60
    while not os.path.exists(os.path.join(d, "hog.ready")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pre = os.path.join(node_b.vzdir, "dump", "tmp-dump.855.pre")
    p = subprocess.Popen(
        [*node.prefix(), "vzmigrate", f"--ssh={sb.ssh_opts()}", "--online", sb.ip, "855"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=node.env,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not os.path.isdir(pre) and p.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(0.2)  # in the middle of the stream
        assert p.poll() is None, p.communicate()
        os.kill(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=180)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 3, out + err
    assert "Cancelled by signal SIGTERM" in err and "Rolling back" in out
    assert not CtCgroup(node.cgroup_prefix, 855).is_frozen()
    assert_untracked(node, 855)
    assert os.listdir(os.path.join(node_b.vzdir, "dump")) == []
    assert not os.path.exists(os.path.join(node_b.confdir, "conf", "855.conf"))
    out = mb.finish()
    assert out.strip().splitlines()[-1] == "PASS", out


def test_noiter_still_works(node, node_b, sb):
    node.create(856)
    node.ok("start", "856")
    mb = zdtm.ZdtmRun(node, 856, "memory_basic")
    mb.start()
    r = migrate(node, sb, 856, "--online", "--noiter", "-v")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Pre-copying memory" not in r.stdout and "pre-copy" not in r.stdout
    sent = float(re.search(r"image: ([0-9.]+) MB sent", r.stdout).group(1))
    assert sent > 32, r.stdout  # all of it, frozen
    out = _on(mb, node_b).finish()
    assert out.strip().splitlines()[-1] == "PASS", out
    node_b.vzctl("stop", "856", "--fast")
