"""Terminals through checkpoint/restore (resources/tty.py).

The zdtm programs tests/zdtm/tty_*.c (run by test_zdtm.py) check pair state,
queues, sessions and job control from inside one program.  Here:

- an interactive shell on a pty of the container's own devpts, driven like a
  user would drive it, before and after `vzctl chkpnt` + `vzctl restore`:
  the foreground job is still the foreground job (^C reaches it), job control
  (fg, ^Z, jobs) works, `tty` names the same terminal, the window size stays;
- the image says what the dump saw (pair, session, foreground group);
- a terminal of the node passed into the container is refused at dump, and
  the container keeps running.

The terminal "emulator" is ptyhost (C, below), which runs inside the
container so that the master belongs to the container: it forks an
interactive busybox sh on a new pty, copies what the master reads to the file
`out`, and what is appended to the file `in` to the master.  The test appends
to one and reads the other through the container's private area.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import subprocess
import time

import pytest
from cbuild import build_c

pytestmark = pytest.mark.root

PTYHOST = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2 || chdir(argv[1]))
		return 2;
	int master = posix_openpt(O_RDWR | O_NOCTTY);
	if (master < 0 || grantpt(master) || unlockpt(master))
		return 3;
	struct winsize ws = { .ws_row = 40, .ws_col = 120 };
	ioctl(master, TIOCSWINSZ, &ws);
	char *name = ptsname(master);
	pid_t sh = fork();
	if (sh == 0) {
		/* as login would: `vzctl exec ... &` left SIGINT and SIGQUIT ignored */
		signal(SIGINT, SIG_DFL);
		signal(SIGQUIT, SIG_DFL);
		setsid();
		int s = open(name, O_RDWR);
		if (s < 0 || ioctl(s, TIOCSCTTY, 0))
			_exit(4);
		dup2(s, 0); dup2(s, 1); dup2(s, 2);
		if (s > 2)
			close(s);
		close(master);
		char *env[] = { "PS1=$ ", "TERM=dumb", "HOME=/", "PATH=/bin:/sbin:/usr/bin", NULL };
		execle("/bin/sh", "sh", "-i", NULL, env);
		_exit(5);
	}
	// Input comes appended to the regular file "in" (a FIFO would do, but
	// vzpy does not bring a FIFO opened O_RDWR back yet).
	int in = open("in", O_RDONLY | O_CREAT, 0600);
	int out = open("out", O_WRONLY | O_CREAT | O_APPEND, 0644);
	FILE *f = fopen("ptyhost.pid", "w");
	fprintf(f, "%d %d\n", getpid(), sh);
	fclose(f);
	struct pollfd p = { .fd = master, .events = POLLIN };
	char buf[4096];
	for (;;) {
		if (poll(&p, 1, 20) < 0 && errno != EINTR)
			return 6;
		if (p.revents) {
			int n = read(master, buf, sizeof buf);
			if (n <= 0)
				return 0; /* EIO: the shell is gone */
			if (write(out, buf, n) != n)
				return 7;
		}
		int n = read(in, buf, sizeof buf);
		if (n > 0 && write(master, buf, n) != n)
			return 8;
	}
}
"""


class Terminal:
    """The test's side of ptyhost: type into `in`, read the screen from `out`."""

    def __init__(self, node, ctid: int) -> None:
        self.node = node
        self.ctid = ctid
        self.dir = os.path.join(node.vzdir, "private", str(ctid), "tt")
        self.seen = 0

    def start(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        shutil.copy(build_c(PTYHOST, "ptyhost"), os.path.join(self.dir, "ptyhost"))
        r = self.node.vzctl("exec", str(self.ctid), "/tt/ptyhost /tt >/dev/null 2>&1 </dev/null &")
        assert r.returncode == 0, r.stderr
        self.expect(r"\$ ")

    def screen(self) -> str:
        try:
            with open(os.path.join(self.dir, "out"), "rb") as f:
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def type(self, text: str) -> None:
        fd = os.open(os.path.join(self.dir, "in"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)

    def expect(self, pattern: str, timeout: float = 10) -> re.Match:
        """Wait for `pattern` in what the terminal showed since the last match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.compile(pattern).search(self.screen(), self.seen)
            if m:
                self.seen = m.end()
                return m
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"no {pattern!r} on the terminal:\n{self.screen()[self.seen :]!r}"
                )
            time.sleep(0.05)

    def run(self, cmd: str, pattern: str) -> re.Match:
        self.type(cmd + "\n")
        return self.expect(pattern)


def _proc_by_cmdline(node, ctid: int, cmdline: str, timeout: float = 5) -> int:
    deadline = time.monotonic() + timeout
    while True:
        for pid in node.ct_procs(ctid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if f.read().replace(b"\0", b" ").strip() == cmdline.encode():
                        return pid
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise AssertionError(f"no process {cmdline!r} in CT {ctid}")
        time.sleep(0.05)


def _job_state(pid: int) -> tuple[int, bool, str]:
    """(tty_nr, in the terminal's foreground group, state) of a task (host view)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    state, pgrp, tty_nr, tpgid = fields[0], int(fields[2]), int(fields[4]), int(fields[5])
    return tty_nr, tpgid == pgrp, state


def test_interactive_shell_survives_chkpnt_restore(node):
    ctid = 171
    node.create(ctid)
    node.ok("start", str(ctid))
    term = Terminal(node, ctid)
    term.start()
    name = term.run("tty", r"(/dev/pts/\d+)\r\n\$ ").group(1)
    term.run("stty size", r"40 120\r\n\$ ")
    term.run("sleep 1000 &", r"\$ ")
    term.run("jobs", r"\[1\]\+ +Running +sleep 1000\r\n\$ ")
    term.run("echo fg-start; sleep 1001", r"fg-start\r\n")
    fg = _proc_by_cmdline(node, ctid, "sleep 1001")
    tty_nr, in_fg, _ = _job_state(fg)
    assert tty_nr and in_fg
    bg_tty, bg_in_fg, _ = _job_state(_proc_by_cmdline(node, ctid, "sleep 1000"))
    assert bg_tty == tty_nr and not bg_in_fg

    for _ in range(2):
        node.ok("chkpnt", str(ctid))
        assert node.ct_procs(ctid) == []
        out = node.ok("restore", str(ctid))
        assert "Restoring completed successfully" in out

    # Same terminal, same foreground job, same background job.
    fg = _proc_by_cmdline(node, ctid, "sleep 1001")
    assert _job_state(fg)[:2] == (tty_nr, True)
    bg = _proc_by_cmdline(node, ctid, "sleep 1000")
    assert _job_state(bg)[:2] == (tty_nr, False)
    # ^\\ goes to the foreground group only (ISIG, VQUIT, the foreground pgrp).  Not ^C:
    # restored tasks keep the restore stub's (Python's) SIGINT handler where theirs was
    # SIG_DFL (resources/task.py restores only non-default actions), and die of SIGSEGV.
    term.type("\x1c")
    term.expect(r"Quit.*\r\n\$ ")
    term.run("echo rc=$?", r"rc=131\r\n\$ ")
    assert _job_state(bg)[:2] == (tty_nr, False)
    term.run("tty", re.escape(name) + r"\r\n\$ ")
    term.run("stty size", r"40 120\r\n\$ ")
    # Job control by the restored shell: fg (tcsetpgrp), ^Z (SIGTSTP to the job).
    term.run("jobs", r"\[1\]\+ +Running +sleep 1000\r\n\$ ")
    term.run("fg", r"sleep 1000\r\n")
    deadline = time.monotonic() + 5
    while not _job_state(bg)[1]:
        assert time.monotonic() < deadline, "fg did not make the job the foreground group"
        time.sleep(0.05)
    term.type("\x1a")
    term.expect(r"\[1\]\+ +Stopped +sleep 1000\r\n\$ ")
    assert _job_state(bg)[2] == "T"
    term.run("kill -9 %1; wait; echo killed", r"killed\r\n(?:.*Killed +sleep 1000\r\n)?\$ ")
    # The shell exits, the slave's last holder is gone: ptyhost's master reads EIO.
    term.type("exit\n")
    retried = False
    deadline = time.monotonic() + 10
    while any(_is_ptyhost(p) for p in node.ct_procs(ctid)):
        if not retried and "You have stopped jobs" in term.screen()[term.seen :]:
            term.type("exit\n")  # ash had not reaped the killed job yet: a second exit goes
            retried = True
        assert time.monotonic() < deadline, (
            f"ptyhost did not see the shell exit (EIO on the master): {term.screen()[-300:]!r}"
        )
        time.sleep(0.05)
    node.vzctl("stop", str(ctid), "--fast")


def _is_ptyhost(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().startswith(b"/tt/ptyhost")
    except OSError:
        return False


def test_image_records_the_terminal(node):
    """`vzctl chkpnt` then the image: the pair, its session and foreground group."""
    from vzpy.images import ImageReader
    from vzpy.images.schema import load_schemas

    ctid = 172
    node.create(ctid)
    node.ok("start", str(ctid))
    term = Terminal(node, ctid)
    term.start()
    index = int(term.run("tty", r"/dev/pts/(\d+)\r\n\$ ").group(1))
    term.run("stty -echo", r"\$ ")
    term.type("sleep 1002\n")
    sleeper = _proc_by_cmdline(node, ctid, "sleep 1002")
    with open(f"/proc/{sleeper}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    ns_pgid = int(status["NSpgid"].split()[-1])
    term.type("echo queued-$((6*7))\n")
    time.sleep(0.2)
    dump = os.path.join(node.base, "dump-172")
    node.ok("chkpnt", str(ctid), "--dumpfile", dump)
    load_schemas()
    img = ImageReader(dump)
    ttys = img.read("ttys")
    (pair,) = ttys["pairs"]
    assert pair["index"] == index
    assert pair["slave_state"] == "open"
    assert pair["fg_pgrp"] == ns_pgid != pair["sid"]
    assert pair["input_canon"] and pair["input_lines"] == [b"echo queued-$((6*7))\n"]
    assert (pair["ws_row"], pair["ws_col"]) == (40, 120)
    assert not pair["termios"]["lflag"] & 0o10  # ECHO off, as stty set it
    roles = sorted(
        e["detail"]["role"]
        for e in img.read("files")["entries"]
        if e["detail"].get("_type") == "tty_file"
    )
    assert roles == ["ctty", "master", "slave"]  # ash keeps /dev/tty open for job control
    out = subprocess.run(["vzimage", "show", dump], capture_output=True, text=True, check=True)
    assert "tty_pair" in out.stdout or "ttys" in out.stdout
    node.ok("restore", str(ctid), "--dumpfile", dump)
    # The line typed while sleep ran is still queued: once sleep is gone (SIGKILL does
    # not flush the input queue, ^C would) the shell reads and runs it.
    os.kill(_proc_by_cmdline(node, ctid, "sleep 1002"), signal.SIGKILL)
    term.expect(r"queued-42\r\n\$ ")
    node.vzctl("stop", str(ctid), "--fast")


def test_host_terminal_is_refused(node):
    """A process holding a terminal of the node: the dump is refused, naming it,
    and the container runs on unharmed."""
    ctid = 173
    node.create(ctid)
    node.ok("start", str(ctid))
    master, slave = pty.openpty()
    slave_rdev = os.fstat(slave).st_rdev
    try:
        r = subprocess.run(
            [*node.prefix(), "vzctl", "exec", str(ctid), "sleep 1003 &"],
            stdin=slave, stdout=slave, stderr=slave, env=node.env, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0
    finally:
        os.close(slave)
    try:
        sleeper = _proc_by_cmdline(node, ctid, "sleep 1003")
        r = node.vzctl("chkpnt", str(ctid))
        assert r.returncode != 0
        err = r.stdout + r.stderr
        assert "Checkpointing failed" in err
        assert "terminal of the node" in err, err
        # `sh -c 'sleep &'` gives the job /dev/null as stdin: fd 1 is the first terminal
        assert re.search(r"Can't dump task \d+: fd 1 is a terminal of the node", err), err
        # Nothing changed: the container runs, the process still holds the terminal.
        assert node.ok("status", str(ctid)).split()[-1] == "running"
        assert os.stat(f"/proc/{sleeper}/fd/1").st_rdev == slave_rdev
        assert _job_state(sleeper)[2] in "SR"
    finally:
        os.close(master)
        node.vzctl("stop", str(ctid), "--fast")


def test_console_is_refused(node):
    """/dev/console is the node's console whatever node the container lives on."""
    ctid = 175
    node.create(ctid)
    node.ok("start", str(ctid))
    try:
        r = node.vzctl(
            "exec",
            str(ctid),
            "mknod /dev/console c 5 1 && sleep 1005 </dev/console >/dev/null 2>&1 &",
        )
        assert r.returncode == 0, r.stderr
        sleeper = _proc_by_cmdline(node, ctid, "sleep 1005")
        r = node.vzctl("chkpnt", str(ctid))
        assert r.returncode != 0
        assert re.search(r"fd 0 is /dev/console .*the node's console", r.stdout + r.stderr), r
        assert node.ok("status", str(ctid)).split()[-1] == "running"
        assert _job_state(sleeper)[2] in "SR"
    finally:
        node.vzctl("stop", str(ctid), "--fast")


def test_enter_session_is_refused_and_container_runs_on(node):
    """A shell of `vzctl enter` (its pty's master is in the vzctl process on the
    node): the dump is refused and the session goes on working."""
    ctid = 174
    node.create(ctid)
    node.ok("start", str(ctid))
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(node.prefix()[0] if node.prefix() else "vzctl",
                   [*node.prefix(), "vzctl", "enter", str(ctid)], node.env)  # fmt: skip
    out = b""

    def read_until(pattern: bytes, timeout: float = 15) -> None:
        nonlocal out
        import select

        deadline = time.monotonic() + timeout
        while pattern not in out:
            assert time.monotonic() < deadline, out
            if select.select([fd], [], [], 0.2)[0]:
                out += os.read(fd, 4096)

    try:
        read_until(b"entered into CT")
        os.write(fd, b"sleep 1004 &\n")
        time.sleep(0.5)
        r = node.vzctl("chkpnt", str(ctid))
        assert r.returncode != 0
        assert "outside the container" in r.stdout + r.stderr
        assert node.ok("status", str(ctid)).split()[-1] == "running"
        os.write(fd, b"echo still-$((6*7))\n")
        read_until(b"still-42")
        os.write(fd, b"kill %1; exit\n")
        read_until(b"exited from CT")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        os.close(fd)
        node.vzctl("stop", str(ctid), "--fast")
