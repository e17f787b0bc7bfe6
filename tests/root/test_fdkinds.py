"""Anonymous-inode files vzpy cannot checkpoint are refused at dump time with a message
naming the task, the fd and what it is, and the container goes on untouched.

(The kinds vzpy does save -- eventfd, epoll, signalfd, timerfd, inotify -- are the zdtm
tests of the same names.)"""

from __future__ import annotations

import os
import shutil
import time

import pytest

import zdtm

pytestmark = pytest.mark.root

HERE = os.path.dirname(os.path.abspath(__file__))
CTID = 152

CASES = [
    ("pidfd", "is a pidfd"),
    ("userfaultfd", "is a userfaultfd"),
    ("fanotify", "is a fanotify group"),
    ("io_uring", "is an io_uring instance"),
    ("inotify_queued", "bytes of events are queued"),
    ("inotify_async", "O_ASYNC"),
]


def _binary() -> str:
    return zdtm.build_path(os.path.join(HERE, "targets", "anon_refuse.c"))


def _output(d: str) -> str:
    try:
        with open(os.path.join(d, "anon_refuse.out")) as f:
            return f.read()
    except OSError:
        return ""


def test_refused_kinds(node):
    binary = _binary()
    node.create(CTID)
    node.ok("start", str(CTID))
    d = os.path.join(node.vzdir, "private", str(CTID), "zdtm")
    os.makedirs(d, exist_ok=True)
    shutil.copy(binary, os.path.join(d, "anon_refuse"))
    dump = os.path.join(node.base, "refused-dump")
    ran = 0
    skipped: list[str] = []
    try:
        for kind, message in CASES:
            for name in ("anon_refuse.ready", "anon_refuse.out", "anon_refuse.pid"):
                if os.path.exists(os.path.join(d, name)):
                    os.unlink(os.path.join(d, name))
            node.ok(
                "exec",
                str(CTID),
                f"cd /zdtm && ./anon_refuse {kind} >anon_refuse.out 2>&1 </dev/null &",
            )
            zdtm.wait_file(os.path.join(d, "anon_refuse.ready"))
            if _output(d).startswith("SKIP"):
                skipped.append(f"{kind}: {_output(d).strip()}")
                continue
            ran += 1
            pid = int(open(os.path.join(d, "anon_refuse.pid")).read())
            fd = int(_output(d).split()[1])
            r = node.vzctl("chkpnt", str(CTID), "--dumpfile", dump)
            text = r.stdout + r.stderr
            assert r.returncode == 16, (kind, r.returncode, text)
            assert message in text, (kind, text)
            assert f"task {pid}: fd {fd} " in text, (kind, text)
            assert "Traceback" not in text
            assert not os.path.exists(dump), "a refused dump left an image behind"
            # thawed, running, and the file's state untouched
            assert node.ok("status", str(CTID)).split()[-1] == "running"
            node.ok("exec", str(CTID), f"kill -TERM {pid}")
            deadline = time.monotonic() + 10
            while "PASS" not in _output(d) and "FAIL" not in _output(d):
                assert time.monotonic() < deadline, (kind, _output(d))
                time.sleep(0.05)
            assert _output(d).strip().splitlines()[-1] == "PASS", (kind, _output(d))
    finally:
        node.vzctl("stop", str(CTID), "--fast")
        node.vzctl("destroy", str(CTID))
    print("refusals checked:", ran, "skipped:", skipped)
    assert ran >= 3, f"too few kinds could be created here to test their refusal: {skipped}"
