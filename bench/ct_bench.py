#!/usr/bin/env python3
"""Container life-cycle timings: `vzctl create`, `start`, `status`, `stop`, `destroy`.

Run as root after the setup command:

    python bench/ct_bench.py [--runs 7] [--templates tiny,debian-12-x86_64-minimal]

Each run makes a fresh container on a throw-away node (tests/lib/vznode.py: its own
vz.conf tree, its own network namespace on a LAN bridge) and times each command as an
admin runs it (the installed `vzctl`, a new process each time).  Prints the median per
command and template; the baseline is `vzctl --help` (Python start-up and imports,
which every command pays), measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "lib"))

from vznode import Lan, Node  # noqa: E402

STEPS = ("create", "start", "status", "stop", "destroy")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--templates", default="tiny,debian-12-x86_64-minimal")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("ct_bench.py must run as root", file=sys.stderr)
        return 1
    base = []
    for _ in range(args.runs):
        t = time.monotonic()
        subprocess.run(["vzctl", "--help"], capture_output=True, check=True)
        base.append(time.monotonic() - t)
    baseline = statistics.median(base)
    lan = Lan()
    node = Node(tempfile.mkdtemp(prefix="vzt-node-", dir="/var/tmp"), lan, name="cb")
    rows = []
    try:
        for tmpl in args.templates.split(","):
            times: dict[str, list[float]] = {k: [] for k in STEPS}
            for i in range(args.runs):
                ctid = str(400 + i)
                cmds = {
                    "create": ("create", ctid, "--ostemplate", tmpl,
                               "--ipadd", f"10.66.0.{i + 10}", "--hostname", f"ct{ctid}"),
                    "start": ("start", ctid),
                    "status": ("status", ctid),
                    "stop": ("stop", ctid),
                    "destroy": ("destroy", ctid),
                }  # fmt: skip
                for step in STEPS:
                    t = time.monotonic()
                    node.ok(*cmds[step])
                    times[step].append(time.monotonic() - t)
            rows.append((tmpl, {k: statistics.median(v) for k, v in times.items()}))
    finally:
        node.cleanup()
        lan.cleanup()
    print(f"vzctl, median of {args.runs} runs; baseline `vzctl --help` {baseline * 1000:.0f} ms")
    print(f"{'template':28}" + "".join(f"{s:>18}" for s in STEPS))
    for tmpl, med in rows:
        cells = "".join(f"{med[s] * 1000:9.0f} ms {med[s] / baseline:4.1f}x" for s in STEPS)
        print(f"{tmpl:28}{cells}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
