"""Process state beyond memory and files, where a zdtm program alone cannot tell:
the container's clocks across a long downtime (time namespace offsets) and the
refusal of state vzpy cannot restore (seccomp strict mode)."""

from __future__ import annotations

import os
import time

import pytest
from cbuild import build_c

import zdtm

pytestmark = pytest.mark.root

STRICT_SECCOMP = r"""
#include <fcntl.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>
int main(void) {
    int p[2];
    pipe(p);
    close(open("/root/strict.ready", O_CREAT | O_WRONLY, 0644));
    prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT);
    char c;
    read(p[0], &c, 1);   /* forever: we hold the write end */
    syscall(SYS_exit, 0);
}
"""


def _offsets(pid: int) -> dict[str, int]:
    """/proc/PID/timens_offsets as {clock name: ns}."""
    out = {}
    with open(f"/proc/{pid}/timens_offsets") as f:
        for line in f:
            name, sec, nsec = line.split()
            out[name] = int(sec) * 1_000_000_000 + int(nsec)
    return out


def _ns(pid: int, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def test_clocks_skip_the_downtime(node):
    """Down 3 s between chkpnt and restore: the container's monotonic and
    boottime clocks do not count them, absolute deadlines stay right."""
    ctid = 170
    node.create(ctid)
    node.ok("start", str(ctid))
    try:
        z = zdtm.ZdtmRun(node, ctid, "timens_clock", args="3")
        z.start()
        procs = node.ct_procs(ctid)
        assert procs
        # The container has its own time namespace, and `vzctl exec` joined it.
        for pid in procs:
            assert _ns(pid, "time") == _ns(procs[0], "time") != _ns(os.getpid(), "time")
        before = _offsets(procs[0])
        assert before == {"monotonic": 0, "boottime": 0}
        t0 = time.monotonic()
        node.ok("chkpnt", str(ctid))
        time.sleep(3)
        node.ok("restore", str(ctid))
        down = time.monotonic() - t0
        after = _offsets(node.ct_procs(ctid)[0])
        for clock in ("monotonic", "boottime"):
            # Behind the node's clock by the time the container was down, give or
            # take what dump and restore took.
            lag = -after[clock] / 1e9
            assert 3.0 <= lag <= down + 0.05, (clock, lag, down)
        out = z.finish()
        assert out.strip().splitlines()[-1] == "PASS", out
    finally:
        node.vzctl("stop", str(ctid), "--fast")
        node.vzctl("destroy", str(ctid))


def test_strict_seccomp_is_refused(node):
    ctid = 171
    node.create(ctid)
    node.ok("start", str(ctid))
    try:
        priv = os.path.join(node.vzdir, "private", str(ctid))
        with open(build_c(STRICT_SECCOMP, "strict_seccomp"), "rb") as src:
            data = src.read()
        dst = os.path.join(priv, "root", "strict")
        with open(dst, "wb") as f:
            f.write(data)
        os.chmod(dst, 0o755)
        node.ok("exec", str(ctid), "(/root/strict >/dev/null 2>&1 &)")
        deadline = time.monotonic() + 10
        while not os.path.exists(os.path.join(priv, "root", "strict.ready")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)  # into strict mode and blocked in read()
        before = sorted(node.ct_procs(ctid))
        strict = [p for p in before if _status(p).get("Seccomp") == "1"]
        assert len(strict) == 1, before
        r = node.vzctl("chkpnt", str(ctid))
        assert r.returncode == 16, (r.stdout, r.stderr)
        assert "Checkpointing failed" in r.stderr
        assert "seccomp mode 1" in r.stderr and "strict" in r.stderr, r.stderr
        assert "(strict)" in r.stderr  # names the process
        assert "Traceback" not in r.stderr
        assert not os.path.exists(os.path.join(node.vzdir, "dump", f"Dump.{ctid}"))
        # Left running, as it was.
        assert sorted(node.ct_procs(ctid)) == before
        assert node.ok("status", str(ctid)).strip() == f"CTID {ctid} exist mounted running"
        assert _status(strict[0])["State"].startswith("S")
        assert _status(strict[0]).get("TracerPid") == "0"
    finally:
        node.vzctl("stop", str(ctid), "--fast")
        node.vzctl("destroy", str(ctid))


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


@pytest.mark.parametrize("choose_ids", [True, False], ids=["prctl", "create-delete"])
def test_timer_ids_recreated(choose_ids):
    """Both ways of getting a timer id back: PR_TIMER_CREATE_RESTORE_IDS, and
    creating and deleting dummies (kernels before 6.17) - in a fresh task."""
    from vzpy.resources import task as res_task
    from vzpy.sys import ptrace
    from vzpy.sys.inject import Injector

    timers = [
        {"timer_id": 0, "clock_id": 1, "sigev_notify": 0, "sigev_signo": 34, "sigev_value": 7},
        {"timer_id": 4, "clock_id": 7, "sigev_notify": 1, "sigev_signo": 10, "sigev_value": 0},
        # CLOCK_PROCESS_CPUTIME_ID as the kernel shows it: MAKE_PROCESS_CPUCLOCK(0, SCHED)
        {
            "timer_id": 9,
            "clock_id": (-6) & 0xFFFFFFFF,
            "sigev_notify": 0,
            "sigev_signo": 12,
            "sigev_value": 9,
        },
    ]
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/bin/sleep", ["sleep", "100"])
        finally:
            os._exit(127)
    try:
        time.sleep(0.05)
        ptrace.seize(pid, ptrace.PTRACE_O_TRACESYSGOOD | ptrace.PTRACE_O_EXITKILL)
        ptrace.interrupt(pid)
        ptrace.wait_stop(pid, 5.0)
        with Injector(pid) as inj:
            res_task.create_posix_timers(inj, inj.scratch(4096), timers, choose_ids=choose_ids)
        with open(f"/proc/{pid}/timers") as f:
            text = f.read()
        blocks: dict[int, list[str]] = {}
        for line in text.splitlines():
            if line.startswith("ID: "):
                cur = blocks.setdefault(int(line[4:]), [])
            else:
                cur.append(line)
        assert sorted(blocks) == [0, 4, 9], text
        assert blocks[0] == [
            "signal: 34/0000000000000007",
            f"notify: signal/pid.{pid}",
            "ClockID: 1",
        ]
        assert blocks[4] == ["signal: 10/0000000000000000", f"notify: none/pid.{pid}", "ClockID: 7"]
        assert blocks[9] == [
            "signal: 12/0000000000000009",
            f"notify: signal/pid.{pid}",
            "ClockID: -6",
        ]
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0x40000000)
