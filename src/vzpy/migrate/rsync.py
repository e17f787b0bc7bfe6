"""The file system goes with the real rsync over the real ssh.

Options as vzctl 4.x's vzmigrate: ``-aHAX --numeric-ids --delete`` always,
``--sparse`` on the first pass only (the first pass creates the files; the
second, while the container is frozen or stopped, only updates what changed,
and --sparse would only slow it), then the user's ``--rsync=`` options.  The
remote shell is ssh with ``-o BatchMode=yes`` and the user's ``--ssh=``
options, so both transports go the same way (see migrate.target).

``start_sync`` runs a pass in the background (the online migration copies the
image while the second pass runs); ``sync_private`` runs one and waits.

rsync's exit 24 ("some files vanished before they could be transferred") is
normal while the container runs and is tolerated, as vzmigrate did.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
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


class RsyncRun:
    """One rsync pass running in the background."""

    def __init__(self, argv: list[str], verbose: int) -> None:
        self.argv = argv
        self.verbose = verbose
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
            )
        except FileNotFoundError:
            raise MigrateError("rsync is not installed on this node", exit_code=MIG_COPY) from None
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
        if self.proc.returncode not in (0, RSYNC_VANISHED):
            for line in (err or "").strip().splitlines()[-5:]:
                print(f"    {line}", file=sys.stderr, flush=True)
            raise MigrateError(
                f"Failed to sync container private areas (rsync exit {self.proc.returncode})",
                exit_code=MIG_COPY,
            )
        if self.verbose >= 2 and err and err.strip():
            print(err.rstrip(), file=sys.stderr, flush=True)
        return dt

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self._reader.join()


def start_sync(
    target: SshTarget,
    local_dir: str,
    remote_dir: str,
    *,
    first_pass: bool,
    extra: list[str],
    verbose: int = 0,
) -> RsyncRun:
    argv = rsync_argv(
        target, local_dir, remote_dir, first_pass=first_pass, extra=extra, verbose=verbose
    )
    return RsyncRun(argv, verbose)


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
