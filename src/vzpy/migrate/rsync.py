"""The file system goes with the real rsync over the real ssh.

Options as vzctl 4.x's vzmigrate: ``-aHAX --numeric-ids --delete`` always,
``--sparse`` on the first pass only (the first pass creates the files; the
second, while the container is frozen or stopped, only updates what changed,
and --sparse would only slow it), then the user's ``--rsync=`` options.  The
remote shell is ssh with ``-o BatchMode=yes`` and the user's ``--ssh=``
options, so both transports go the same way (see migrate.target).

``start_sync`` runs a pass in the background (the online migration copies the
image while the second pass runs); ``sync_private`` runs one and waits.

``prepare_sync`` starts the *remote* half of a pass ahead of time: an ssh
session running exactly the ``rsync --server ...`` command rsync itself would
run (found by letting rsync call a capturing script as its remote shell),
waiting for its client.  ``start_sync(prepared=...)`` then runs the local
rsync with a relay script as its remote shell, wired to that session's pipes.
Measured here, a session costs 0.2-0.3 s before the remote rsync even starts
(sshd's fork and the login shell's rc files): prepared while the container
still runs, the frozen pass of a small container takes 30-60 ms instead of
0.25-0.4 s.

rsync's exit 24 ("some files vanished before they could be transferred") is
normal while the container runs and is tolerated, as vzmigrate did.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time

from ..errors import MigrateError
from .checks import MIG_COPY
from .target import SshTarget

BASE_OPTS = ["-aHAX", "--numeric-ids", "--delete"]
RSYNC_VANISHED = 24


def rsync_argv(
    target: SshTarget,
    local_dir: str,
    remote_dir: str,
    *,
    first_pass: bool,
    extra: list[str],
    verbose: int = 0,
) -> list[str]:
    argv = ["rsync", *BASE_OPTS]
    if first_pass:
        argv.append("--sparse")
    if verbose >= 2:
        argv.append("-v")
    argv += extra
    argv += ["-e", shlex.join(target.ssh_command(verbose))]
    argv += [local_dir.rstrip("/") + "/", f"{target.rsync_host()}:{remote_dir.rstrip('/')}/"]
    return argv


class Prepared:
    """The remote half of an rsync pass, started ahead of time (``prepare_sync``)."""

    def __init__(self, proc: subprocess.Popen, relay: str, workdir: str) -> None:
        self.proc = proc  # ssh ... rsync --server ..., stdin/stdout are our pipes
        self.relay = relay
        self.workdir = workdir
        self.err = ""
        self._reader = threading.Thread(target=self._drain, name="rsync-prep", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        data = self.proc.stderr.read()
        self.err = data.decode(errors="replace") if data else ""

    def fds(self) -> tuple[int, int]:
        return self.proc.stdout.fileno(), self.proc.stdin.fileno()

    def handed_over(self) -> None:
        """The local rsync holds the pipes now: drop ours, or EOF would never come."""
        self.proc.stdin.close()
        self.proc.stdout.close()

    def wait(self) -> int:
        rc = self.proc.wait()
        self._reader.join()
        self._remove_files()
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                f.close()
        self._reader.join()
        self._remove_files()

    def _remove_files(self) -> None:
        if os.path.isdir(self.workdir):
            for name in os.listdir(self.workdir):
                os.unlink(os.path.join(self.workdir, name))
            os.rmdir(self.workdir)


def prepare_sync(
    target: SshTarget,
    local_dir: str,
    remote_dir: str,
    *,
    first_pass: bool,
    extra: list[str],
    verbose: int = 0,
    workdir: str | None = None,
) -> Prepared | None:
    """Start the remote half of a later pass now; None if rsync would not tell us how."""
    wd = tempfile.mkdtemp(prefix="rsync-", dir=workdir)
    cap = os.path.join(wd, "args")
    capture = os.path.join(wd, "capture")
    with open(capture, "w") as f:
        f.write(f'#!/bin/sh\nprintf "%s\\0" "$@" > {shlex.quote(cap)}\nexit 1\n')
    os.chmod(capture, 0o700)
    argv = rsync_argv(
        target, local_dir, remote_dir, first_pass=first_pass, extra=extra, verbose=verbose
    )
    i = argv.index("-e")
    argv[i + 1] = capture
    subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    try:
        with open(cap, "rb") as f:
            words = [w.decode(errors="surrogateescape") for w in f.read().split(b"\0")[:-1]]
    except OSError:
        words = []
    # rsync calls its remote shell as: [-l USER] HOST COMMAND...
    host_at = 2 if words[:1] == ["-l"] else 0
    if len(words) <= host_at + 1:
        for name in os.listdir(wd):
            os.unlink(os.path.join(wd, name))
        os.rmdir(wd)
        return None
    ssh = [*target.ssh_command(verbose), *words]
    if verbose >= 2:
        print("    $ " + shlex.join(ssh) + "   (prepared)", flush=True)
    proc = subprocess.Popen(
        ssh, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    prep = Prepared(proc, os.path.join(wd, "relay"), wd)
    rd, wr = prep.fds()
    # rsync's remote shell: its stdin goes to the session, the session's output to
    # its stdout; it ends when the session does (ssh would: rsync waits for it).
    with open(prep.relay, "w") as f:
        f.write(
            f"#!/bin/sh\nexec 3<&0\ncat <&3 >&{wr} &\nup=$!\ncat <&{rd}\nkill $up 2>/dev/null\n"
        )
    os.chmod(prep.relay, 0o700)
    return prep


class RsyncRun:
    """One rsync pass running in the background."""

    def __init__(self, argv: list[str], verbose: int, prepared: Prepared | None = None) -> None:
        self.argv = argv
        self.verbose = verbose
        self.prepared = prepared
        if verbose >= 2:
            print("    $ " + shlex.join(argv), flush=True)
        self.t0 = time.monotonic()
        try:
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=None if verbose >= 2 else subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                pass_fds=prepared.fds() if prepared is not None else (),
            )
        except FileNotFoundError:
            raise MigrateError("rsync is not installed on this node", exit_code=MIG_COPY) from None
        finally:
            if prepared is not None:
                prepared.handed_over()
        self.err = ""
        self.t_end = 0.0
        # A reader thread drains stderr and notes when rsync ended, so the pass's
        # own duration is known even when we look only after the image copy.
        self._reader = threading.Thread(target=self._drain, name="rsync", daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        _out, self.err = self.proc.communicate()
        self.t_end = time.monotonic()

    def wait(self) -> float:
        """Wait for the pass; return its duration; raise MigrateError (exit 6) if it failed."""
        while self._reader.is_alive():
            self._reader.join(0.1)  # in slices: a signal must still be able to cancel us
        err = self.err
        dt = self.t_end - self.t0
        rc = self.proc.returncode
        if self.prepared is not None:
            # The remote half's status, as ssh would have handed it to rsync.
            remote = self.prepared.wait()
            err = (err or "") + self.prepared.err
            if rc in (0, RSYNC_VANISHED) and remote not in (0, RSYNC_VANISHED):
                rc = remote
        if rc not in (0, RSYNC_VANISHED):
            for line in (err or "").strip().splitlines()[-5:]:
                print(f"    {line}", file=sys.stderr, flush=True)
            raise MigrateError(
                f"Failed to sync container private areas (rsync exit {rc})",
                exit_code=MIG_COPY,
            )
        if self.verbose >= 2 and err and err.strip():
            print(err.rstrip(), file=sys.stderr, flush=True)
        return dt

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self._reader.join()
        if self.prepared is not None:
            self.prepared.kill()


def start_sync(
    target: SshTarget,
    local_dir: str,
    remote_dir: str,
    *,
    first_pass: bool,
    extra: list[str],
    verbose: int = 0,
    prepared: Prepared | None = None,
) -> RsyncRun:
    argv = rsync_argv(
        target, local_dir, remote_dir, first_pass=first_pass, extra=extra, verbose=verbose
    )
    if prepared is not None:
        argv[argv.index("-e") + 1] = prepared.relay
    return RsyncRun(argv, verbose, prepared)


def sync_private(
    target: SshTarget,
    local_dir: str,
    remote_dir: str,
    *,
    first_pass: bool,
    extra: list[str],
    verbose: int = 0,
) -> float:
    """Run one rsync pass; return its duration; raise MigrateError (exit 6) on failure."""
    run = start_sync(
        target, local_dir, remote_dir, first_pass=first_pass, extra=extra, verbose=verbose
    )
    try:
        return run.wait()
    except BaseException:
        run.kill()
        raise
