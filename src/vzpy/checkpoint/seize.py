"""Freeze a container and take every thread into a ptrace stop.

Sequence (kernel-notes §7, CRIU's flow): freeze the cgroup, so nothing forks
or exits under us; PTRACE_SEIZE + PTRACE_INTERRUPT every thread; thaw the
cgroup so the interrupts are reported (a v1-frozen task reports nothing, and
a v2-frozen one would go back into the freezer as soon as an injected call
resumes it); wait for every stop.  No user code runs between the thaw and the
stop: a pending interrupt is handled on the way back to user mode.  Threads
that appeared meanwhile (a clone completing) are seized the same way until
the set is stable.

Release is the mirror: optionally re-freeze (tasks in a ptrace stop reach
FROZEN at once), then detach every thread.  Every exit path of a dump calls
``release``; a thread that vanished is simply forgotten.
"""

from __future__ import annotations

import os
import signal
import time

from ..errors import CheckpointError
from ..sys import libc, ptrace
from ..sys.ptrace import TaskGone

SEIZE_OPTIONS = ptrace.PTRACE_O_SUSPEND_SECCOMP | ptrace.PTRACE_O_TRACESYSGOOD


class Seizer:
    def __init__(self, cgroup, options: int = SEIZE_OPTIONS) -> None:
        self.cg = cgroup
        self.options = options
        self.tids: set[int] = set()
        self.stopped: dict[int, int] = {}  # tid -> stop status
        self.group_stopped: set[int] = set()  # tids that were in a group stop (SIGSTOPed)
        self.held: list[tuple[int, int]] = []  # (tid, signal) held back while seizing

    def seize_all(self, timeout: float = 10.0) -> None:
        self.cg.freeze()
        try:
            self._seize_new()
        finally:
            self.cg.thaw()
        deadline = time.monotonic() + timeout
        while True:
            for tid in sorted(set(self.tids) - set(self.stopped)):
                self._wait(tid, deadline)
            new = self._seize_new()
            if not new:
                break
        if not self.stopped:
            raise CheckpointError("Container has no processes to checkpoint")

    def _seize_new(self) -> list[int]:
        new = []
        for _ in range(100):
            found = [t for t in self.cg.threads() if t not in self.tids]
            if not found:
                break
            for tid in found:
                _refuse_io_worker(tid)
                try:
                    ptrace.seize(tid, self.options)
                    ptrace.interrupt(tid)
                except ProcessLookupError:
                    continue
                except PermissionError:
                    # zombie, or already traced by someone else
                    if _state(tid) == "Z":
                        continue
                    raise CheckpointError(
                        f"Can't seize task {tid}: it is traced by another process ({_tracer(tid)})"
                    ) from None
                self.tids.add(tid)
                new.append(tid)
        return new

    def _wait(self, tid: int, deadline: float) -> None:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CheckpointError(f"Task {tid} did not stop in time")
            try:
                status = ptrace.wait_stop(tid, left)
            except TaskGone:
                self.tids.discard(tid)
                return
            except TimeoutError:
                raise CheckpointError(f"Task {tid} did not stop in time") from None
            event = ptrace.stop_event(status)
            sig = ptrace.stop_sig(status)
            if event == ptrace.PTRACE_EVENT_STOP:
                if sig in (signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU):
                    # A group stop: the task was stopped before we came.
                    self.group_stopped.add(tid)
                self.stopped[tid] = status
                return
            if event == 0 and sig:
                # A signal was being delivered before the interrupt was
                # handled (a race: get_signal() handles the interrupt first
                # when both are pending).  Running its handler now would run
                # user code in the middle of the dump, so hold it back and
                # send it again when the task is released.
                self.held.append((tid, sig))
                ptrace.cont(tid, 0)
                continue
            ptrace.cont(tid, 0)

    def release(self, refreeze: bool) -> None:
        """Detach every thread; with refreeze, re-freeze first so tasks stay stopped."""
        if refreeze:
            try:
                self.cg.freeze()
            except (OSError, TimeoutError):
                pass
        for tid in sorted(self.tids):
            try:
                ptrace.detach(tid, 0)
            except ProcessLookupError:
                pass
            except OSError:
                # Not in a stop (should not happen): interrupt, then detach.
                try:
                    ptrace.interrupt(tid)
                    ptrace.wait_stop(tid, 1.0)
                    ptrace.detach(tid, 0)
                except (OSError, TimeoutError, TaskGone):
                    pass
        for tid, sig in self.held:
            try:
                libc.syscall(libc.SYS_tgkill, _tgid(tid), tid, sig)
            except OSError:
                pass
        self.held.clear()
        self.tids.clear()
        self.stopped.clear()

    def forget_held(self) -> list[tuple[int, int]]:
        """The held-back signals, for a dump that records them as pending instead."""
        held, self.held = self.held, []
        return held


PF_IO_WORKER = 0x10  # include/linux/sched.h


def _refuse_io_worker(tid: int) -> None:
    """Refuse a process with io_uring worker threads before trying to stop them.

    io-wq and SQPOLL workers are kernel threads in the user process's thread
    group: they never reach a ptrace stop (an injected call would wait on
    them forever) and come and go as they please.  io_uring itself cannot be
    checkpointed, so the dump would be refused anyway; say so at once.
    """
    try:
        with open(f"/proc/{tid}/stat") as f:
            flags = int(f.read().rsplit(")", 1)[1].split()[6])
    except (OSError, IndexError, ValueError):
        return
    if not flags & PF_IO_WORKER:
        return
    tgid = _tgid(tid)
    try:
        with open(f"/proc/{tgid}/comm") as f:
            comm = f.read().strip()
        with open(f"/proc/{tgid}/status") as f:
            nspid = next(ln.split()[-1] for ln in f if ln.startswith("NSpid:"))
    except (OSError, StopIteration):
        comm, nspid = "?", str(tgid)
    raise CheckpointError(
        f"Can't dump task {nspid} ({comm}): it uses io_uring (kernel worker thread {tid}), "
        "which vzpy cannot checkpoint"
    )


def _tgid(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return tid


def _state(tid: int) -> str:
    try:
        with open(f"/proc/{tid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "?"


def _tracer(tid: int) -> str:
    try:
        with open(f"/proc/{tid}/status") as f:
            for line in f:
                if line.startswith("TracerPid:"):
                    pid = int(line.split()[1])
                    try:
                        with open(f"/proc/{pid}/comm") as c:
                            return f"pid {pid} {c.read().strip()}"
                    except OSError:
                        return f"pid {pid}"
    except OSError:
        pass
    return "unknown"


__all__ = ["Seizer", "os"]
