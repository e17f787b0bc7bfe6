"""The container's init when its template has none: ``data/vzpy-init.c``, built static.

    path = init_binary()            # /var/lib/vzpy/vzpy-init-<hash>, compiled on first need
    argv0 = container_init(ve_root) # "/sbin/init" if the CT has one, else installs ours

The binary is compiled with ``gcc -static`` once per source version and kept under
LIB_DIR named by the hash of the source and flags, so an upgraded vzpy builds a new
one beside the old.  install_init() copies it into a container's tree as
``/sbin/vzpy-init``, resolving every path *inside* the container root with
openat2(RESOLVE_IN_ROOT): the tree belongs to the container, whose root may have
planted symlinks such as ``/sbin -> /etc`` that must not lead to the host's files.

Only ``vzctl start`` should install.  A restore must not: the restored init maps the
``/sbin/vzpy-init`` that was dumped, which travels with the private area.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from importlib import resources

from vzpy.errors import VzError
from vzpy.sys import libc

LIB_DIR = "/var/lib/vzpy"
INIT_IN_CT = "/sbin/vzpy-init"
CFLAGS = ("-static", "-O2", "-s", "-Wall")

SYS_openat2 = 437
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10


class OpenHow(ctypes.Structure):
    """``struct open_how`` (include/uapi/linux/openat2.h, v5.6)::

    struct open_how {
            __u64 flags;
            __u64 mode;
            __u64 resolve;
    };
    """

    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(root_fd, path) with every symlink resolved as if root_fd were "/"."""
    how = OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    try:
        return libc.syscall(
            SYS_openat2, root_fd, path.encode(), ctypes.byref(how), ctypes.sizeof(how)
        )
    except OSError as err:
        raise OSError(err.errno, os.strerror(err.errno), path) from None


def init_source() -> bytes:
    return resources.files("vzpy").joinpath("data/vzpy-init.c").read_bytes()


def init_binary(lib_dir: str = LIB_DIR) -> str:
    """Path of the static vzpy-init for this source, compiling it on first need.

    Concurrent callers each compile to their own temporary file and rename it into
    place, so nobody ever sees a partial binary.
    """
    source = init_source()
    digest = hashlib.sha256(source + "\0".join(CFLAGS).encode()).hexdigest()[:16]
    path = os.path.join(lib_dir, f"vzpy-init-{digest}")
    if os.path.isfile(path):
        return path
    gcc = shutil.which("gcc")
    if gcc is None:
        raise VzError("Cannot build vzpy-init: gcc not found (install gcc and libc6-dev)")
    os.makedirs(lib_dir, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=lib_dir, prefix=".vzpy-init-", suffix=".tmp")
    os.close(fd)
    try:
        proc = subprocess.run(
            [gcc, *CFLAGS, "-x", "c", "-o", tmp, "-"],
            input=source,
            capture_output=True,
        )
        if proc.returncode != 0:
            lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
            why = next((ln for ln in lines if "cannot find -lc" in ln), None)
            if why is not None:
                raise VzError(
                    "Cannot build vzpy-init: the static C library is missing (install libc6-dev)"
                )
            raise VzError(f"Cannot build vzpy-init: gcc failed: {lines[-1]}")
        os.chmod(tmp, 0o755)
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _same_file_contents(dir_fd: int, name: str, data: bytes) -> bool:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False  # absent, or a symlink (ELOOP): replaced below
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or stat.S_IMODE(st.st_mode) != 0o755:
            return False
        if st.st_size != len(data):
            return False
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read() == data
    finally:
        os.close(fd)


def install_init(ve_root: str, binary: str | None = None) -> str:
    """Copy vzpy-init (``binary``, default init_binary()) to ``/sbin/vzpy-init`` in the
    container rooted at ``ve_root``, mode 0755, unless an identical one is there.

    Replaces by rename: a running process keeps the old inode.  Returns the path
    inside the container.
    """
    binary = binary or init_binary()
    with open(binary, "rb") as f:
        data = f.read()
    try:
        root_fd = os.open(ve_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as err:
        raise VzError(f"Cannot install {INIT_IN_CT}: {ve_root}: {err.strerror}") from err
    sbin_fd = -1
    try:
        sbin_dir, name = os.path.split(INIT_IN_CT)
        try:
            sbin_fd = open_in_root(root_fd, sbin_dir, os.O_PATH | os.O_DIRECTORY)
        except FileNotFoundError:
            os.mkdir(sbin_dir.lstrip("/"), 0o755, dir_fd=root_fd)
            sbin_fd = open_in_root(root_fd, sbin_dir, os.O_PATH | os.O_DIRECTORY)
        if _same_file_contents(sbin_fd, name, data):
            return INIT_IN_CT
        tmp = f".{name}.tmp{os.getpid()}"
        try:  # a leftover of a crashed run; O_EXCL below never reuses a file
            os.unlink(tmp, dir_fd=sbin_fd)
        except FileNotFoundError:
            pass
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o700,
            dir_fd=sbin_fd,
        )
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                os.fchmod(f.fileno(), 0o755)  # not subject to the umask
            os.rename(tmp, name, src_dir_fd=sbin_fd, dst_dir_fd=sbin_fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=sbin_fd)
            except OSError:
                pass
            raise
    except OSError as err:
        where = f" ({err.filename})" if err.filename else ""
        raise VzError(f"Cannot install {INIT_IN_CT} in {ve_root}: {err.strerror}{where}") from err
    finally:
        if sbin_fd >= 0:
            os.close(sbin_fd)
        os.close(root_fd)
    return INIT_IN_CT


def has_own_init(ve_root: str) -> bool:
    """True if ``/sbin/init`` inside the container resolves to an executable file."""
    root_fd = os.open(ve_root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_in_root(root_fd, "/sbin/init", os.O_PATH)
    except OSError as err:
        if err.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return False
        raise
    finally:
        os.close(root_fd)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return stat.S_ISREG(st.st_mode) and bool(st.st_mode & 0o111)


def container_init(ve_root: str) -> str:
    """The in-container path of the init to exec as the container's pid 1: the
    template's ``/sbin/init`` if it has one, else vzpy-init, installed now."""
    if has_own_init(ve_root):
        return "/sbin/init"
    return install_init(ve_root)
