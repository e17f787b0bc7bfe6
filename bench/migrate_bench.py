"""Live migration benchmark: what a TCP client sees while vzmigrate moves its server.

    sudo python3 bench/migrate_bench.py [--sizes 64,256,1024] [--runs 3]
                                        [--variants default,noiter,nokick]

Two nodes on one LAN bridge, each with its own vz.conf tree and its own sshd
(tests/lib/sshnode.py); a container on node A runs a small TCP server that has
touched SIZE MiB of memory (pseudo-random, incompressible) and keeps
rewriting HOT MiB of it at RATE MiB/s; a client in a third network namespace
sends a 16-byte request every millisecond on one connection (pipelined: it
does not wait for the answers) and timestamps each answer.  Then
``vzmigrate --online -v`` moves the container to node B (and back, run after
run).  For each size and variant, the median over the runs of:

  outage   the worst latency any single request saw (kernel-notes: "Live
           migration: what a TCP client actually sees")
  frozen   the container's frozen time, as vzmigrate measures it
  total    the whole vzmigrate command
  and where the frozen time goes: suspend, dump + streaming the image,
  waiting for the second rsync, undump, resume

next to a baseline measured in the same run: the raw time to push SIZE MiB
through the same ssh (``ssh B 'cat >/dev/null'``), and the anchor to beat:
CRIU moving its images with ``rsync -e ssh`` on these machines (client outage
1.5 s, 3.3 s and 13.9 s, median, for 64/256/1024 MiB; kernel-notes).

Variants: ``default`` (iterative pre-copy + peer kick), ``noiter``
(``--noiter``: the whole memory moves while frozen), ``nokick`` (``--nokick``:
no RFC 6069 nudge of the client after the resume).

Everything the benchmark creates (namespaces, sshd, containers, mounts,
cgroups, temp directories) is removed at the end, also after a failure.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lib"))

from cbuild import build_c  # noqa: E402
from sshnode import SshKeys, SshNode  # noqa: E402
from vznode import Lan, Node  # noqa: E402

CRIU_RSYNC_OUTAGE = {64: 1.5, 256: 3.3, 1024: 13.9}  # kernel-notes, median
PORT = 7000

SERVER_C = r"""
/* Touches MIB MiB, keeps rewriting HOT MiB of it at RATE MiB/s (a thread), and
 * answers 16-byte requests on TCP port 7000 with the same 16 bytes. */
#define _GNU_SOURCE
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint64_t *mem;
static size_t hot_pages, rate_mib;

static void *dirtier(void *arg)
{
	(void)arg;
	struct timespec next;
	clock_gettime(CLOCK_MONOTONIC, &next);
	uint64_t g = 0;
	size_t burst = 64; /* pages per step: 256 KiB */
	long step_ns = rate_mib ? (long)(1e9 * burst * 4096 / ((double)rate_mib * 1048576.0)) : 0;
	for (size_t p = 0;; p = (p + 1) % hot_pages) {
		uint64_t *w = mem + p * 512;
		for (int i = 0; i < 512; i += 8) w[i] = g++;
		if (step_ns && (p % burst) == burst - 1) {
			next.tv_nsec += step_ns;
			while (next.tv_nsec >= 1000000000) { next.tv_nsec -= 1000000000; next.tv_sec++; }
			clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
		}
	}
	return NULL;
}

int main(int argc, char **argv)
{
	size_t mib = strtoul(argv[1], 0, 10), hot = strtoul(argv[2], 0, 10);
	rate_mib = strtoul(argv[3], 0, 10);
	size_t n = mib << 17;
	mem = mmap(NULL, n * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t x = 88172645463325252ULL;
	for (size_t i = 0; i < n; i++) { x ^= x << 13; x ^= x >> 7; x ^= x << 17; mem[i] = x; }
	hot_pages = (hot < mib ? hot : mib) << 8;
	pthread_t t;
	if (hot_pages && rate_mib) pthread_create(&t, NULL, dirtier, NULL);
	int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in a; memset(&a, 0, sizeof a);
	a.sin_family = AF_INET; a.sin_port = htons(7000);
	if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4)) return 1;
	FILE *f = fopen("server.ready", "w"); fclose(f);
	for (;;) {
		int c = accept(s, 0, 0);
		if (c < 0) continue;
		setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		char buf[4096]; ssize_t got;
		while ((got = read(c, buf, sizeof buf)) > 0)
			for (ssize_t off = 0; off < got;) { ssize_t w = write(c, buf + off, got - off); if (w <= 0) break; off += w; }
		close(c);
	}
}
"""

CLIENT_C = r"""
/* Sends a 16-byte request (seq, send time) every PERIOD_US on one connection,
 * without waiting for answers; a second thread reads the echoes.  On SIGTERM
 * (or EOF/error) prints: sent answered maxlat_ms maxlat_at_s errors firstbad. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static int fd;
static uint64_t sent, answered, bad, maxlat, maxlat_at, t0;
static char err[256];

static uint64_t now(void) { struct timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec * 1000000000ULL + ts.tv_nsec; }
static void on_term(int s) { (void)s; stop = 1; }

static void *reader(void *a)
{
	(void)a;
	uint64_t want = 0, msg[2];
	size_t have = 0;
	while (!stop) {
		ssize_t r = read(fd, (char *)msg + have, sizeof msg - have);
		if (r <= 0) { if (!stop) snprintf(err, sizeof err, "read: %s", r ? strerror(errno) : "EOF"); stop = 1; break; }
		have += r;
		if (have < sizeof msg) continue;
		have = 0;
		uint64_t t = now();
		if (msg[0] != want) { if (!bad) snprintf(err, sizeof err, "answer %lu where %lu was due", msg[0], want); bad++; }
		want = msg[0] + 1;
		uint64_t lat = t - msg[1];
		if (lat > maxlat) { maxlat = lat; maxlat_at = msg[1] - t0; }
		answered++;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	long period_us = argc > 3 ? atol(argv[3]) : 1000;
	signal(SIGTERM, on_term);
	signal(SIGPIPE, SIG_IGN);
	struct sockaddr_in a; memset(&a, 0, sizeof a);
	a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[2]));
	inet_pton(AF_INET, argv[1], &a.sin_addr);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(fd, (struct sockaddr *)&a, sizeof a)) { perror("connect"); return 1; }
	t0 = now();
	pthread_t t;
	pthread_create(&t, NULL, reader, NULL);
	printf("connected\n"); fflush(stdout);
	struct timespec next; clock_gettime(CLOCK_MONOTONIC, &next);
	while (!stop) {
		uint64_t msg[2] = {sent, now()};
		if (write(fd, msg, sizeof msg) != sizeof msg) { if (!stop) snprintf(err, sizeof err, "write: %s", strerror(errno)); break; }
		sent++;
		next.tv_nsec += period_us * 1000;
		while (next.tv_nsec >= 1000000000) { next.tv_nsec -= 1000000000; next.tv_sec++; }
		clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
	}
	/* let the last answers arrive */
	uint64_t deadline = now() + 2000000000ULL;
	while (answered < sent && now() < deadline && !err[0]) usleep(1000);
	stop = 1;
	shutdown(fd, SHUT_RDWR);
	pthread_join(t, NULL);
	printf("sent %lu answered %lu maxlat_ms %.3f at_s %.3f bad %lu err %s\n", sent, answered,
		maxlat / 1e6, maxlat_at / 1e9, bad, err[0] ? err : "-");
	return 0;
}
"""

STAGE_RE = re.compile(r"^\s{4}(.+?):\s+([0-9.]+) s$")
PRECOPY_RE = re.compile(r"pre-copy (\d+): ([0-9.]+) MiB in ([0-9.]+) s, ([0-9.]+) MiB dirty")
IMAGE_RE = re.compile(r"image: ([0-9.]+) MB sent")


def parse_timings(out: str) -> dict[str, float]:
    t: dict[str, float] = {}
    in_t = False
    for line in out.splitlines():
        if line.startswith("Timings:"):
            in_t = True
            continue
        m = STAGE_RE.match(line) if in_t else None
        if m:
            name = m.group(1)
            if name.startswith("Pre-copy"):
                name = "Pre-copy"
            t[name] = float(m.group(2))
    t["iterations"] = float(len(PRECOPY_RE.findall(out)))
    m = IMAGE_RE.search(out)
    if m:
        t["image_mb"] = float(m.group(1))
    return t


class Bench:
    def __init__(self, args) -> None:
        self.args = args
        self.server = build_c(SERVER_C, "mbench-server")
        self.client = build_c(CLIENT_C, "mbench-client")
        self.base = tempfile.mkdtemp(prefix="vzt-mbench-", dir="/var/tmp")
        self.nodes: list[Node] = []
        self.sshds: list[SshNode] = []
        self.clients: list[subprocess.Popen] = []
        self.lan = Lan()
        try:
            self.keys = SshKeys(self.base)
            for name in ("a", "b"):
                n = Node(os.path.join(self.base, name), self.lan, name=name)
                self.nodes.append(n)
                self.sshds.append(SshNode(n, self.keys))
            self.client_ns = self.lan.client()
        except BaseException:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        for p in self.clients:
            if p.poll() is None:
                p.kill()
                p.wait()
        for s in self.sshds:
            s.cleanup()
        for n in self.nodes:
            n.cleanup()
        self.lan.cleanup()
        shutil.rmtree(self.base, ignore_errors=True)

    # --- pieces ---------------------------------------------------------------------------
    def start_ct(self, ctid: int, mib: int) -> str:
        a = self.nodes[0]
        ip = a.create(ctid)
        priv = os.path.join(a.vzdir, "private", str(ctid))
        shutil.copy(self.server, os.path.join(priv, "root", "server"))
        a.ok("start", str(ctid))
        hot, rate = self.args.hot, self.args.rate
        r = a.vzctl(
            "exec",
            str(ctid),
            f"cd /root && ./server {mib} {hot} {rate} >/dev/null 2>&1 </dev/null &",
        )
        assert r.returncode == 0, r.stderr
        ready = os.path.join(priv, "root", "server.ready")
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        return ip

    def raw_copy(self, src: int, dst: int, mib: int) -> float:
        """Seconds to push mib MiB through `ssh DST 'cat >/dev/null'` from node src."""
        s = self.sshds[dst]
        argv = ["nsenter", f"--net=/run/netns/{self.nodes[src].ns}", "ssh", "-o", "BatchMode=yes",
                *s.ssh_opts().split(), f"root@{s.ip}", "cat >/dev/null"]  # fmt: skip
        block = os.urandom(1 << 20)
        t0 = time.monotonic()
        p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        for _ in range(mib):
            p.stdin.write(block)
        p.stdin.close()
        p.wait()
        return time.monotonic() - t0

    def migrate(self, src: int, dst: int, ctid: int, ip: str, variant: str) -> dict:
        client = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.client_ns.ns}", self.client, ip, str(PORT), "1000"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self.clients.append(client)
        line = client.stdout.readline()
        if "connected" not in line:
            raise RuntimeError(f"client: {line}{client.stdout.read()}")
        time.sleep(1.0)
        opts = ["--online", "-v"]
        if variant == "noiter":
            opts.append("--noiter")
        if variant == "nokick":
            opts.append("--nokick")
        s = self.sshds[dst]
        t0 = time.monotonic()
        r = self.nodes[src].run(
            "vzmigrate", f"--ssh={s.ssh_opts()}", *opts, s.ip, str(ctid), timeout=1800
        )
        total = time.monotonic() - t0
        time.sleep(self.args.settle)
        client.send_signal(signal.SIGTERM)
        out, _ = client.communicate(timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"vzmigrate exit {r.returncode}:\n{r.stdout}\n{r.stderr}")
        m = re.search(
            r"sent (\d+) answered (\d+) maxlat_ms ([0-9.]+) at_s ([0-9.]+) bad (\d+) err (.*)", out
        )
        if not m:
            raise RuntimeError(f"client output: {out}")
        sent, answered, bad = int(m.group(1)), int(m.group(2)), int(m.group(5))
        if m.group(6).strip() != "-" or bad or answered != sent:
            raise RuntimeError(f"the client saw a broken connection: {out.strip()}")
        t = parse_timings(r.stdout)
        t.update(outage=float(m.group(3)) / 1000, total=total, requests=float(sent))
        if self.args.verbose:
            print(r.stdout)
        return t

    def run_size(self, mib: int, variant: str, ctid: int) -> list[dict]:
        ip = self.start_ct(ctid, mib)
        results = []
        where = 0
        try:
            for i in range(self.args.runs):
                src, dst = where, 1 - where
                t = self.migrate(src, dst, ctid, ip, variant)
                t["raw"] = self.raw_copy(src, dst, mib)
                results.append(t)
                where = dst
                print(
                    f"  {mib} MiB {variant} run {i + 1}: outage {t['outage']:.3f} s, frozen "
                    f"{t.get('Total frozen time', float('nan')):.3f} s, total {t['total']:.2f} s, "
                    f"raw copy {t['raw']:.2f} s",
                    flush=True,
                )
        finally:
            n = self.nodes[where]
            n.vzctl("stop", str(ctid), "--fast")
            n.vzctl("destroy", str(ctid))
        return results


def med(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return statistics.median(vals) if vals else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="64,256,1024", help="MiB of touched memory, comma-separated")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--variants", default="default,noiter", help="default, noiter, nokick")
    ap.add_argument("--hot", type=int, default=16, help="MiB the server keeps rewriting")
    ap.add_argument("--rate", type=int, default=32, help="MiB/s it rewrites them at")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of traffic after the move")
    ap.add_argument("-v", "--verbose", action="store_true", help="print vzmigrate's output")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("run as root", file=sys.stderr)
        return 1
    b = Bench(args)
    table: list[tuple[int, str, list[dict]]] = []
    try:
        ctid = 960
        for mib in (int(x) for x in args.sizes.split(",")):
            for variant in args.variants.split(","):
                ctid += 1
                table.append((mib, variant, b.run_size(mib, variant, ctid)))
    finally:
        b.cleanup()
    print(
        f"\nvzmigrate --online, median of {args.runs} runs; server rewrites {args.hot} MiB at "
        f"{args.rate} MiB/s; client: one 16-byte request per ms"
    )
    hdr = (
        f"{'MiB':>5} {'variant':>8} {'raw s':>6} {'outage s':>8} {'x raw':>6} {'x CRIU':>6} "
        f"{'frozen s':>8} {'x raw':>6} {'total s':>7} {'x raw':>6} {'iters':>5} | {'pre-copy':>8} "
        f"{'suspend':>7} {'dump+copy':>9} {'image MB':>8} {'rsync2 wait':>11} {'undump':>6} "
        f"{'resume':>6}"
    )
    print(hdr)
    for mib, variant, rows in table:
        raw = med(rows, "raw")
        outage = med(rows, "outage")
        frozen = med(rows, "Total frozen time")
        total = med(rows, "total")
        criu = CRIU_RSYNC_OUTAGE.get(mib)
        print(
            f"{mib:>5} {variant:>8} {raw:>6.2f} {outage:>8.3f} {outage / raw:>6.2f} "
            f"{(outage / criu) if criu else float('nan'):>6.2f} {frozen:>8.3f} {frozen / raw:>6.2f} "
            f"{total:>7.2f} {total / raw:>6.2f} {med(rows, 'iterations'):>5.0f} | "
            f"{med(rows, 'Pre-copy') if variant != 'noiter' else 0:>8.3f} "
            f"{med(rows, 'Suspend'):>7.3f} {med(rows, 'Dump + Copy dump file'):>9.3f} "
            f"{med(rows, 'image_mb'):>8.1f} "
            f"{med(rows, 'Waiting for the second rsync'):>11.3f} {med(rows, 'Undump'):>6.3f} "
            f"{med(rows, 'Resume'):>6.3f}"
        )
    print(
        "outage: worst latency of a single request; x CRIU: against CRIU + rsync -e ssh here "
        "(1.5/3.3/13.9 s for 64/256/1024 MiB); raw: ssh 'cat >/dev/null' of the same MiB;\n"
        "frozen = suspend + dump+copy (the dump streaming the final image, image MB) + rsync2 "
        "wait (the second rsync, run beside the dump) + undump (restore there) + resume"
    )
    for mib, variant, rows in table:
        outages = ", ".join(f"{r['outage']:.2f}" for r in rows)
        frozens = ", ".join(f"{r.get('Total frozen time', float('nan')):.2f}" for r in rows)
        print(f"  {mib} MiB {variant}: outages {outages} s; frozen {frozens} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
