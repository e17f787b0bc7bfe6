"""Checkpoint/restore benchmark (issue: "Checkpoint and restore", Performance).

    sudo python3 bench/cr_bench.py [--sizes 256,1024] [--runs 3]

For a container whose process has touched SIZE MiB of anonymous memory, runs
`vzctl chkpnt` and `vzctl restore` and reports, each as a median over runs:

  frozen   time the container is frozen during chkpnt (freeze -> killed)
  dump     wall time of the whole `vzctl chkpnt` command
  restore  wall time of the whole `vzctl restore` command
  image    size of the image directory

next to baselines measured in the same run on the same process:

  raw      process_vm_readv of the same pages + write() to a fallocate'd file
           in the dump directory's file system + fsync (what any dumper must do)
  criu     `criu dump` / `criu restore` of the same workload, when `criu` is
           installed and `criu check` passes (column skipped otherwise)

and prints each result as a ratio to the raw copy.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lib"))

from cbuild import build_c  # noqa: E402
from vznode import Lan, Node  # noqa: E402

MEMHOG = r"""
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <unistd.h>
int main(int argc, char **argv) {
    size_t n = (size_t)atoi(argv[1]) << 20;
    unsigned char *p = malloc(n);
    for (size_t i = 0; i < n; i += 8) *(unsigned long *)(p + i) = i * 2654435761UL;
    FILE *f = fopen("/root/memhog.ready", "w");
    fprintf(f, "%d %lu %zu\n", getpid(), (unsigned long)p, n);
    fclose(f);
    for (;;) pause();
}
"""


def warm_memory(gib: float) -> float:
    """Fault in and free `gib` GiB of anonymous memory; returns seconds.

    On a lazily backed VM (Firecracker here) the first touch of a guest page
    costs a host fault, several times the cost of reusing one; page cache and
    restored memory come from the same free pool.  Touching a large part of it
    once before measuring keeps that cost out of whichever step happens to hit
    fresh pages first (it would hit CRIU just the same).
    """
    import mmap

    t0 = time.monotonic()
    chunk = 1 << 30
    for _ in range(int(gib)):
        m = mmap.mmap(-1, chunk)
        m.madvise(23)  # MADV_POPULATE_WRITE
        m.close()
    return time.monotonic() - t0


def du(path: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(root, f)).st_blocks * 512
    return total


def raw_copy(host_pid: int, addr: int, size: int, directory: str) -> float:
    """process_vm_readv the region into a buffer in 64 MiB chunks and write it
    to a file in `directory`, then fsync: seconds."""
    from vzpy.sys.vm import read_runs

    chunk = 64 << 20
    buf = bytearray(chunk)
    holder = (ctypes.c_char * chunk).from_buffer(buf)
    baddr = ctypes.addressof(holder)
    path = os.path.join(directory, "raw-copy.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    t0 = time.monotonic()
    try:
        # The best a plain copy can do here: blocks allocated first (ext4 writes
        # 5x faster into fallocate'd space), then 64 MiB writes, then fsync.
        os.posix_fallocate(fd, 0, size)
        off = 0
        while off < size:
            n = min(chunk, size - off)
            read_runs(host_pid, [(addr + off, n)], baddr)
            os.write(fd, memoryview(buf)[:n])
            off += n
        os.fsync(fd)
        return time.monotonic() - t0
    finally:
        os.close(fd)
        os.unlink(path)
        del holder


def host_pid_of(node: Node, ctid: int, ns_pid: int) -> int:
    from vzpy.container.ct import read_nspid

    for pid in node.ct_procs(ctid):
        if read_nspid(pid)[-1:] == [ns_pid]:
            return pid
    raise RuntimeError("memhog not found")


def criu_works() -> bool:
    if not shutil.which("criu"):
        return False
    return subprocess.run(["criu", "check"], capture_output=True).returncode == 0


def run_size(node: Node, mib: int, runs: int, binary: str) -> dict:
    ctid = 900 + mib % 97
    node.create(ctid)
    priv = os.path.join(node.vzdir, "private", str(ctid))
    shutil.copy(binary, os.path.join(priv, "root", "memhog"))
    res: dict[str, list[float]] = {k: [] for k in ("frozen", "dump", "restore", "image", "raw")}
    try:
        node.ok("start", str(ctid))
        node.ok("exec", str(ctid), f"(/root/memhog {mib} >/dev/null 2>&1 &)")
        ready = os.path.join(priv, "root", "memhog.ready")
        while not os.path.exists(ready):
            time.sleep(0.05)
        ns_pid, addr, size = (int(x) for x in open(ready).read().split())
        dumpdir = os.path.join(node.vzdir, "dump")
        # One untimed round first: on this kind of VM the first touch of guest
        # memory (page cache included) is several times slower than reuse, and
        # whichever side ran first would pay for it.
        for i in range(runs + 1):
            hp = host_pid_of(node, ctid, ns_pid)
            raw = raw_copy(hp, addr, size, dumpdir)
            t0 = time.monotonic()
            out = node.ok("--verbose", "chkpnt", str(ctid))
            dump = time.monotonic() - t0
            frozen = [
                float(line.split("frozen")[1].split("ms")[0]) / 1000
                for line in out.splitlines()
                if "frozen" in line and "ms" in line
            ]
            image = du(os.path.join(dumpdir, f"Dump.{ctid}"))
            t0 = time.monotonic()
            node.ok("restore", str(ctid))
            restore = time.monotonic() - t0
            if i == 0:
                continue  # the warm-up round
            res["raw"].append(raw)
            res["dump"].append(dump)
            res["frozen"] += frozen
            res["image"].append(image)
            res["restore"].append(restore)
    finally:
        node.vzctl("stop", str(ctid), "--fast")
        node.vzctl("destroy", str(ctid))
    return {k: statistics.median(v) for k, v in res.items() if v}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="256,1024", help="MiB of touched memory, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--warm-gib",
        type=float,
        default=None,
        help="memory to fault in first (default: half of MemAvailable, at most 16)",
    )
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 1
    binary = build_c(MEMHOG, "memhog")
    if args.warm_gib is None:
        with open("/proc/meminfo") as f:
            avail = next(int(ln.split()[1]) for ln in f if ln.startswith("MemAvailable"))
        args.warm_gib = min(16, avail / 2**21)
    print(
        f"warming {args.warm_gib:.0f} GiB of memory: {warm_memory(args.warm_gib):.1f} s", flush=True
    )
    have_criu = criu_works()
    lan = Lan()
    base = tempfile.mkdtemp(prefix="vzt-bench-", dir="/var/tmp")
    node = Node(base, lan, name="bench")
    rows = []
    try:
        for mib in (int(s) for s in args.sizes.split(",")):
            r = run_size(node, mib, args.runs, binary)
            rows.append((mib, r))
    finally:
        node.cleanup()
        lan.cleanup()
    print(f"\nvzpy checkpoint/restore, median of {args.runs} runs"
          f"{'' if have_criu else ' (criu not installed or criu check fails: no CRIU column)'}")  # fmt: skip
    print(f"{'MiB':>6} {'raw s':>7} {'frozen s':>9} {'x raw':>6} {'dump s':>7} {'x raw':>6} "
          f"{'restore s':>10} {'x raw':>6} {'image MiB':>10}")  # fmt: skip
    for mib, r in rows:
        raw = r["raw"]
        print(
            f"{mib:>6} {raw:>7.3f} {r.get('frozen', float('nan')):>9.3f} {r.get('frozen', 0) / raw:>6.2f} "
            f"{r['dump']:>7.3f} {r['dump'] / raw:>6.2f} {r['restore']:>10.3f} {r['restore'] / raw:>6.2f} "
            f"{r['image'] / 2**20:>10.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
