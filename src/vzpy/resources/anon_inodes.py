"""What the anonymous-inode file kinds share, and the refusal of those vzpy cannot save.

eventfd, epoll, signalfd, timerfd and inotify files live on the kernel's
anon_inode file system: no path reopens them, so each is made anew in the
restorer by its own syscall (one module per kind: eventfd.py, epoll.py,
signalfd.py, timerfd.py, inotify.py) and handed to the tasks like any other
file.  ``/proc/PID/fd/N`` names the kind (``anon_inode:[eventfd]``); all of
them share one inode, so only kcmp(KCMP_FILE) tells two of them apart (which
files.FileTable does).

Every one of these kinds carries only O_NONBLOCK among the status flags a
program can change (F_SETFL); O_ASYNC would also need the F_SETOWN owner and
F_SETSIG signal, which vzpy does not save yet, so it is refused.

The other anonymous-inode kinds (fanotify, io_uring, userfaultfd, perf
events, BPF objects, pidfds...) hold state vzpy cannot read or rebuild; they
are refused here with a message naming what the fd is, unless a module that
knows how to save one is registered (this kind is the last resort).
"""

from __future__ import annotations

import fcntl
import os

from ..errors import UnsupportedError
from .files import KINDS, O_ASYNC, FdKind, FdProbe, register_fd_kind

O_NONBLOCK = os.O_NONBLOCK


def refuse(probe: FdProbe, what: str, why: str) -> UnsupportedError:
    """The error that refuses a dump because of one fd; the caller raises it."""
    return UnsupportedError(
        f"Can't dump task {probe.nspid}: fd {probe.fd} is {what} ({probe.link}): {why}"
    )


def check_status_flags(probe: FdProbe, what: str) -> None:
    """Refuse what a fresh file of this kind cannot get back (O_ASYNC and its owner)."""
    if probe.flags & O_ASYNC:
        raise refuse(
            probe,
            what,
            "it has O_ASYNC set (signal-driven I/O with an F_SETOWN owner), "
            "which vzpy cannot restore yet",
        )


def set_status_flags(fd: int, flags: int) -> None:
    """Give our new file the dumped O_NONBLOCK (the one status flag these kinds keep)."""
    cur = fcntl.fcntl(fd, fcntl.F_GETFL)
    want = (cur & ~O_NONBLOCK) | (flags & O_NONBLOCK)
    if want != cur:
        fcntl.fcntl(fd, fcntl.F_SETFL, want)


# --- kinds refused at dump ----------------------------------------------------------------

# Link target -> (what it is, why vzpy refuses it); prefixes for kinds whose name varies.
UNSUPPORTED = {
    "anon_inode:[fanotify]": (
        "a fanotify group",
        "its marks (on inodes, mounts, file systems) and queued events cannot be saved yet",
    ),
    "anon_inode:[io_uring]": (
        "an io_uring instance",
        "its rings, registered files and buffers and in-flight requests cannot be saved",
    ),
    "anon_inode:[userfaultfd]": (
        "a userfaultfd",
        "its registered ranges and pending faults cannot be saved yet",
    ),
    "anon_inode:[perf_event]": ("a perf event", "perf counters and their buffers cannot be saved"),
    "anon_inode:[pidfd]": ("a pidfd", "a process handle cannot be restored yet"),
    "anon_inode:[fscontext]": ("a file system context (fsopen)", "it cannot be saved"),
}
UNSUPPORTED_PREFIXES = {
    "anon_inode:bpf": ("a BPF object", "BPF maps, programs and links cannot be saved"),
    "anon_inode:kvm": ("a KVM object", "virtual machines cannot be checkpointed"),
}


def unsupported_kind(link: str) -> tuple[str, str] | None:
    """(what, why) for an anon_inode link target, or None for any other file."""
    hit = UNSUPPORTED.get(link)
    if hit is not None:
        return hit
    for prefix, val in UNSUPPORTED_PREFIXES.items():
        if link.startswith(prefix):
            return val
    if link.startswith("anon_inode:"):
        name = link[len("anon_inode:") :].strip("[]")
        return (f"an anonymous-inode file of kind '{name}'", "vzpy does not know how to save it")
    return None


class UnsupportedAnonKind(FdKind):
    """The last resort for anon_inode files: a dump refusal naming what the fd is."""

    name = "anon_unsupported"
    record_types = ()

    def match(self, probe: FdProbe) -> bool:
        if unsupported_kind(probe.link) is None:
            return False
        # A module registered (now or later) that can save this kind wins.
        return not any(k.match(probe) for k in KINDS if k is not self)

    def dump(self, ctx, probe: FdProbe) -> dict:
        what, why = unsupported_kind(probe.link)
        raise refuse(probe, what, why)

    def restore(self, rctx, entry: dict) -> int:  # never in an image: dump refuses
        raise NotImplementedError


register_fd_kind(UnsupportedAnonKind())
