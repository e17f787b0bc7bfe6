"""Run a zdtm-style static C test inside a container through checkpoint/restore.

The test binary is copied into the container's private area (/zdtm), started
with `vzctl exec` in the background, and once it has created NAME.ready the
container goes through `cycles` rounds of `vzctl chkpnt` + `vzctl restore`
(or any `between` callable).  Then the test gets SIGTERM, checks its state
and writes PASS or FAIL: reason.
"""

from __future__ import annotations

import os
import shutil
import time

from cbuild import build_c

ZDTM_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "zdtm")


def build_path(src: str, extra: list[str] | None = None) -> str:
    """Build a C program that includes zdtmlib.h (inlined, so it builds anywhere)."""
    name = os.path.splitext(os.path.basename(src))[0]
    with open(src) as f:
        text = f.read()
    with open(os.path.join(ZDTM_DIR, "zdtmlib.h")) as f:
        text = text.replace('#include "zdtmlib.h"', f.read())
    return build_c(text, name, extra)


def build(name: str, extra: list[str] | None = None) -> str:
    return build_path(os.path.join(ZDTM_DIR, name + ".c"), extra)


def wait_file(path: str, timeout: float = 20.0) -> None:
    """Wait until `path` exists (a test program's .ready file...)."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


class ZdtmRun:
    def __init__(
        self, node, ctid: int, name: str, extra: list[str] | None = None, args: str = ""
    ) -> None:
        self.node = node
        self.ctid = ctid
        self.name = name
        self.binary = build(name, extra)
        self.args = args
        self.priv = os.path.join(node.vzdir, "private", str(ctid))
        self.dir = os.path.join(self.priv, "zdtm")

    def path(self, suffix: str) -> str:
        return os.path.join(self.dir, f"{self.name}.{suffix}")

    def start(self, timeout: float = 20) -> None:
        os.makedirs(self.dir, exist_ok=True)
        shutil.copy(self.binary, os.path.join(self.dir, self.name))
        r = self.node.vzctl(
            "exec", str(self.ctid),
            f"cd /zdtm && ./{self.name} {self.args} >{self.name}.out 2>&1 </dev/null &",
        )  # fmt: skip
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path("ready")):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} never got ready: {self.output()}")
            time.sleep(0.02)

    def output(self) -> str:
        try:
            with open(self.path("out")) as f:
                return f.read()
        except OSError:
            return "<no output>"

    def pid(self) -> int:
        with open(self.path("pid")) as f:
            return int(f.read())

    def cycle(self, n: int = 1) -> None:
        for _ in range(n):
            out = self.node.ok("chkpnt", str(self.ctid))
            assert "Checkpointing completed successfully" in out
            status = self.node.ok("status", str(self.ctid)).split()
            assert status[-1] == "suspended", status
            out = self.node.ok("restore", str(self.ctid))
            assert "Restoring completed successfully" in out

    def finish(self, timeout: float = 20) -> str:
        r = self.node.vzctl("exec", str(self.ctid), f"kill -TERM {self.pid()}")
        assert r.returncode == 0, f"test process gone after restore? {r.stderr} / {self.output()}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.output()
            if "PASS" in out or "FAIL" in out:
                return out
            time.sleep(0.05)
        return self.output()


def run(node, ctid: int, name: str, cycles: int = 1, **kw) -> str:
    """Full run: create + start a container, run the test through `cycles`, stop, destroy."""
    node.create(ctid)
    node.ok("start", str(ctid))
    try:
        z = ZdtmRun(node, ctid, name, **kw)
        z.start()
        z.cycle(cycles)
        out = z.finish()
    finally:
        node.vzctl("stop", str(ctid), "--fast")
        node.vzctl("destroy", str(ctid))
    return out
