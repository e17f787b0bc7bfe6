"""userfaultfd(2) through ctypes: write-protect dirty tracking of *another* process.

This kernel has no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY is off), so pages
written since a point in time are found the way kernel-notes §8 verified: an
asynchronous write-protect userfaultfd plus ``PAGEMAP_SCAN``.

Call sequence (the target's part needs an injector, see checkpoint/precopy.py)::

    # in the target, through sys/inject.Injector (the uffd binds to the
    # *caller's* mm, so only the target itself can create it):
    fd_in_target = inj.syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY)
    fd = libc.pidfd_getfd(pidfd, fd_in_target)      # our copy
    inj.syscall(SYS_close, fd_in_target)            # its fd table is as it was
    # from here on every ioctl comes from our process and acts on the target's mm:
    uffd.api(fd, UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED)
    uffd.register(fd, start, length, UFFDIO_REGISTER_MODE_WP)   # per VMA
    uffd.writeprotect(fd, start, length, True)
    ... PAGEMAP_SCAN(PM_SCAN_WP_MATCHING, category WRITTEN) on /proc/PID/pagemap
        lists the pages written since and write-protects them again ...
    uffd.unregister(fd, start, length)               # clears the wp bits too
    os.close(fd)

Why these flags:

- ``UFFD_USER_MODE_ONLY``: with ``vm.unprivileged_userfaultfd=0`` a task
  without CAP_SYS_PTRACE (any non-root container process) may only create a
  user-mode-only uffd.  It does not matter for us: in WP_ASYNC mode a write
  fault on a protected page is resolved by the kernel itself (the wp bit is
  dropped, ``do_wp_page``) and never reaches ``handle_userfault``, so writes
  from kernel mode (``read(2)`` into a protected buffer) work as before.
- ``UFFD_FEATURE_WP_ASYNC``: no messages, no thread of ours on the fault
  path; the target never blocks.
- ``UFFD_FEATURE_WP_UNPOPULATED``: pte markers on pages never touched, so an
  anonymous VMA counts as "WP allowed" for PAGEMAP_SCAN
  (``userfaultfd_wp_use_markers``).  Price: write-protecting a range
  allocates its page tables (one 4 KiB table per 2 MiB), which is why callers
  do not register huge sparse VMAs.

The ioctls and struct layouts are from include/uapi/linux/userfaultfd.h;
each struct asserts its size.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os

# --- syscall flags -------------------------------------------------------------------
UFFD_USER_MODE_ONLY = 1
O_CLOEXEC = os.O_CLOEXEC
O_NONBLOCK = os.O_NONBLOCK

UFFD_API = 0xAA

# --- features (UFFDIO_API) ---------------------------------------------------------------
UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_EVENT_FORK = 1 << 1
UFFD_FEATURE_EVENT_REMAP = 1 << 2
UFFD_FEATURE_EVENT_REMOVE = 1 << 3
UFFD_FEATURE_MISSING_HUGETLBFS = 1 << 4
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_EVENT_UNMAP = 1 << 6
UFFD_FEATURE_SIGBUS = 1 << 7
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_MINOR_HUGETLBFS = 1 << 9
UFFD_FEATURE_MINOR_SHMEM = 1 << 10
UFFD_FEATURE_EXACT_ADDRESS = 1 << 11
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_POISON = 1 << 14
UFFD_FEATURE_WP_ASYNC = 1 << 15
UFFD_FEATURE_MOVE = 1 << 16

# --- register modes and writeprotect modes -----------------------------------------------
UFFDIO_REGISTER_MODE_MISSING = 1
UFFDIO_REGISTER_MODE_WP = 2
UFFDIO_REGISTER_MODE_MINOR = 4
UFFDIO_WRITEPROTECT_MODE_WP = 1
UFFDIO_WRITEPROTECT_MODE_DONTWAKE = 2

# --- ioctls (_IOWR(0xAA, nr, struct)) ------------------------------------------------------
UFFDIO_API = 0xC018AA3F
UFFDIO_REGISTER = 0xC020AA00
UFFDIO_UNREGISTER = 0x8010AA01
UFFDIO_WRITEPROTECT = 0xC018AA06
USERFAULTFD_IOC_NEW = 0xAA00

# pagemap bit 57: the pte is write-protected by userfaultfd (Documentation/admin-guide/mm/pagemap.rst)
PM_UFFD_WP_BIT = 57


class UffdioApi(ctypes.Structure):
    """struct uffdio_api { __u64 api; __u64 features; __u64 ioctls; };"""

    _fields_ = [
        ("api", ctypes.c_uint64),
        ("features", ctypes.c_uint64),
        ("ioctls", ctypes.c_uint64),
    ]


class UffdioRange(ctypes.Structure):
    """struct uffdio_range { __u64 start; __u64 len; };"""

    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class UffdioRegister(ctypes.Structure):
    """struct uffdio_register { struct uffdio_range range; __u64 mode; __u64 ioctls; };"""

    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64), ("ioctls", ctypes.c_uint64)]


class UffdioWriteprotect(ctypes.Structure):
    """struct uffdio_writeprotect { struct uffdio_range range; __u64 mode; };"""

    _fields_ = [("range", UffdioRange), ("mode", ctypes.c_uint64)]


assert ctypes.sizeof(UffdioApi) == 24
assert ctypes.sizeof(UffdioRange) == 16
assert ctypes.sizeof(UffdioRegister) == 32
assert ctypes.sizeof(UffdioWriteprotect) == 24
# The size is part of each ioctl number (_IOC_SIZE, bits 16..29): check they agree.
assert (UFFDIO_API >> 16) & 0x3FFF == ctypes.sizeof(UffdioApi)
assert (UFFDIO_REGISTER >> 16) & 0x3FFF == ctypes.sizeof(UffdioRegister)
assert (UFFDIO_UNREGISTER >> 16) & 0x3FFF == ctypes.sizeof(UffdioRange)
assert (UFFDIO_WRITEPROTECT >> 16) & 0x3FFF == ctypes.sizeof(UffdioWriteprotect)

TRACKING_FEATURES = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED


def api(fd: int, features: int = TRACKING_FEATURES) -> int:
    """The UFFDIO_API handshake (once per fd); returns the features the kernel offers.

    Raises OSError(EINVAL) when a requested feature is missing.
    """
    arg = UffdioApi(UFFD_API, features, 0)
    fcntl.ioctl(fd, UFFDIO_API, arg)
    return arg.features


def register(fd: int, start: int, length: int, mode: int = UFFDIO_REGISTER_MODE_WP) -> int:
    """Register [start, start+length) of the uffd's mm; returns the ioctls allowed there.

    EINVAL: a VMA of the range cannot be tracked (vvar, vdso, VM_PFNMAP...) or
    the range has a hole; EBUSY: another uffd holds the range; EPERM: a
    shared mapping of a file we could not write.
    """
    arg = UffdioRegister(UffdioRange(start, length), mode, 0)
    fcntl.ioctl(fd, UFFDIO_REGISTER, arg)
    return arg.ioctls


def unregister(fd: int, start: int, length: int) -> None:
    """Unregister the range; on 6.x this also clears the wp bits of its ptes."""
    fcntl.ioctl(fd, UFFDIO_UNREGISTER, UffdioRange(start, length))


def writeprotect(fd: int, start: int, length: int, protect: bool = True) -> None:
    mode = UFFDIO_WRITEPROTECT_MODE_WP if protect else 0
    fcntl.ioctl(fd, UFFDIO_WRITEPROTECT, UffdioWriteprotect(UffdioRange(start, length), mode))


def is_uffd(fd: int, pid: int | str = "self") -> bool:
    """Whether fd of pid is a userfaultfd (its /proc link reads anon_inode:[userfaultfd])."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:[userfaultfd]"
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ESRCH):
            return False
        raise


def uffd_fds(pid: int) -> list[int]:
    """The fds of pid that are userfaultfds."""
    out = []
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except FileNotFoundError:
        return out
    for n in names:
        if is_uffd(int(n), pid):
            out.append(int(n))
    return sorted(out)
