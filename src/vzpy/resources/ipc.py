"""The container's IPC namespace: SysV shared memory, semaphores, message
queues, POSIX message queues, and the namespace's limits (ipc sysctls).

Everything here is read and rebuilt from a thread of ours that joined the
container's IPC namespace (``setns`` is per thread): the SysV calls, the
``/proc/sysvipc/*`` tables and the ``kernel.*``/``fs.mqueue.*`` sysctls all act
on the caller's IPC namespace (ipc/util.c ``sysvipc_proc_open``,
ipc/ipc_sysctl.c ``set_lookup``).

Dump (tree seized, after every process; ``IpcResource.dump``):
  - refuse a task in another IPC namespace than init's (nested namespaces);
  - the sysctls of the namespace (limits, ``shm_rmid_forced``);
  - SysV shm: ``IPC_STAT`` of each segment; contents read once.  A segment
    some task has attached was read by resources/memory.py already
    (pages-shmem-ID.img: the inode of a SysV shm mapping is its id,
    ipc/shm.c ``newseg``); any other is attached read-only here, read through
    ``/proc/self/map_files`` (holes skipped) and detached.  A task's mapping of
    a segment must cover it whole (``shmat`` cannot rebuild a part);
  - semaphore sets: ``IPC_STAT`` and ``GETALL``;
  - message queues: ``IPC_STAT`` (``msg_qbytes``) and every queued message in
    order, type included, copied with ``msgrcv(MSG_COPY)`` so the queue keeps
    it (CONFIG_CHECKPOINT_RESTORE);
  - POSIX message queues: our thread also unshares its mount namespace and
    mounts the container's mqueue file system on a private directory to list
    them.  POSIX queues have no peek: each message is received and sent
    straight back, in the order received (highest priority first, FIFO
    within a priority), which leaves the queue as it was.  A queue with an
    ``mq_notify`` registration is refused (re-sending into the emptied queue
    would fire it, and its sigevent cannot be read).

Restore (``restore_early``: the stub exists in its fresh namespaces, no task
yet):
  - sysctls first (the limits the objects were made under);
  - each object is made with the dumped id: ``kernel.{shm,sem,msg}_next_id``
    picks the id of the next one made (CONFIG_CHECKPOINT_RESTORE,
    ipc/util.c ``ipc_idr_alloc``), then checked; our thread takes the
    creator's uid/gid (``cuid``/``cgid`` are the creator's, never settable),
    then ``IPC_SET`` gives owner and mode back;
  - shm contents written through a mapping of ours; ``SHM_LOCK`` if locked;
    semaphore values by ``SETALL``; messages by ``msgsnd`` in order, with
    ``msgmnb``/``msgmax`` raised meanwhile when a queue was bigger than the
    namespace default (raising ``msg_qbytes`` above ``msgmnb`` takes
    CAP_SYS_RESOURCE, which the restorer may not have: a new queue gets
    ``msgmnb`` as its size);
  - POSIX queues: ``mq_open(O_CREAT|O_EXCL)`` with the attributes, owner and
    mode, then the messages with their priorities;
  - the dumped sysctls are written again (the raised limits go back).
  Tasks then attach their segments: resources/memory.py hands a VMA of kind
  ``sysv_shm`` to ``SysvShmVmas.map``, which injects ``shmat`` at the dumped
  address.  ``restore_late``: segments that were marked for destruction
  (``IPC_RMID`` while attached) are removed again now that their users hold
  them.

Not saved: SEM_UNDO adjustments (no kernel interface shows them); the pids
and times in the IPC objects (``shm_cpid``, ``sempid``, ``msg_stime``...:
the kernel sets them itself).  Refused: SHM_HUGETLB segments, partial
attachments, ``shm_rmid_forced=1`` with an unattached segment (its creator is
gone at restore and the kernel would destroy it), mqueue notifications.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import struct
import tempfile
import threading
from collections.abc import Callable
from typing import Any

from .. import procfs
from ..errors import RestoreError, UnsupportedError
from ..images.schema import Field, register_record
from ..sys import libc
from . import base
from . import memory as res_memory
from .filedata import load_file_data, save_file_data
from .files import FdKind, FdProbe, register_fd_kind

# --- the image ---------------------------------------------------------------------------

IPC_SYSCTL = register_record(
    "ipc_sysctl",
    id=1300,
    category="namespace",
    fields=[
        Field("name", 1, "str", optional=False, doc="path under /proc/sys, e.g. kernel/msgmnb"),
        Field("value", 2, "str", optional=False),
    ],
)
SYSV_SHM = register_record(
    "sysv_shm",
    id=1301,
    category="namespace",
    fields=[
        Field("id", 1, "uint", optional=False, doc="shmid"),
        Field("key", 2, "int", doc="0: IPC_PRIVATE (or removed while attached)"),
        Field("mode", 3, "uint", doc="permission bits and SHM_DEST/SHM_LOCKED", hex=True),
        Field("uid", 4, "uint"),
        Field("gid", 5, "uint"),
        Field("cuid", 6, "uint"),
        Field("cgid", 7, "uint"),
        Field("size", 8, "uint", doc="shm_segsz in bytes"),
        Field("nattch", 9, "uint"),
        Field("pages", 10, "str", doc="id of the page file holding the contents"),
    ],
)
SYSV_SEM = register_record(
    "sysv_sem",
    id=1302,
    category="namespace",
    fields=[
        Field("id", 1, "uint", optional=False, doc="semid"),
        Field("key", 2, "int"),
        Field("mode", 3, "uint", hex=True),
        Field("uid", 4, "uint"),
        Field("gid", 5, "uint"),
        Field("cuid", 6, "uint"),
        Field("cgid", 7, "uint"),
        Field("values", 8, "list[uint]", doc="semval of each semaphore"),
    ],
)
SYSV_MSG = register_record(
    "sysv_msg",
    id=1303,
    category="namespace",
    fields=[
        Field("mtype", 1, "int", optional=False),
        Field("data", 2, "bytes", optional=False),
    ],
)
SYSV_MSQ = register_record(
    "sysv_msq",
    id=1304,
    category="namespace",
    fields=[
        Field("id", 1, "uint", optional=False, doc="msqid"),
        Field("key", 2, "int"),
        Field("mode", 3, "uint", hex=True),
        Field("uid", 4, "uint"),
        Field("gid", 5, "uint"),
        Field("cuid", 6, "uint"),
        Field("cgid", 7, "uint"),
        Field("qbytes", 8, "uint", doc="msg_qbytes: the queue's capacity"),
        Field("messages", 9, "list[sysv_msg]", doc="in queue order"),
    ],
)
POSIX_MQ_MSG = register_record(
    "posix_mq_msg",
    id=1305,
    category="namespace",
    fields=[
        Field("prio", 1, "uint", optional=False),
        Field("data", 2, "bytes", optional=False),
    ],
)
POSIX_MQUEUE = register_record(
    "posix_mqueue",
    id=1306,
    category="namespace",
    fields=[
        Field("name", 1, "str", optional=False, doc="without the leading /"),
        Field("mode", 2, "uint"),
        Field("uid", 3, "uint"),
        Field("gid", 4, "uint"),
        Field("maxmsg", 5, "uint"),
        Field("msgsize", 6, "uint"),
        Field("messages", 7, "list[posix_mq_msg]", doc="in the order mq_receive gives them"),
    ],
)
IPC_NS = register_record(
    "ipc_ns",
    id=1307,
    category="namespace",
    fields=[
        Field("ns_id", 1, "uint", doc="nsfs inode at dump"),
        Field("sysctls", 2, "list[ipc_sysctl]"),
        Field("shm", 3, "list[sysv_shm]"),
        Field("sem", 4, "list[sysv_sem]"),
        Field("msg", 5, "list[sysv_msq]"),
        Field("mqueues", 6, "list[posix_mqueue]"),
    ],
    doc="the container's IPC namespace: ipc_ns.img",
)
MQUEUE_FILE = register_record("mqueue_file", id=1308, category="file", fields=[
    Field("name", 1, "str", optional=False, doc="queue name, without the leading /"),
], doc="an open POSIX message queue descriptor (file_entry detail)")  # fmt: skip

# --- kernel interface ----------------------------------------------------------------------

SYS_shmget, SYS_shmat, SYS_shmctl, SYS_shmdt = 29, 30, 31, 67
SYS_semget, SYS_semctl = 64, 66
SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl = 68, 69, 70, 71
SYS_mq_open, SYS_mq_timedsend, SYS_mq_timedreceive, SYS_mq_getsetattr = 240, 242, 243, 245
SYS_setresuid, SYS_setresgid = 117, 119

IPC_PRIVATE = 0
IPC_CREAT, IPC_EXCL, IPC_NOWAIT = 0o1000, 0o2000, 0o4000
IPC_RMID, IPC_SET, IPC_STAT = 0, 1, 2
SHM_RDONLY, SHM_EXEC = 0o10000, 0o100000
SHM_LOCK = 11
SHM_DEST, SHM_LOCKED = 0o1000, 0o2000
GETALL, SETALL = 13, 17
MSG_COPY = 0o40000
MQUEUE_MAGIC = 0x19800202
HUGETLBFS_MAGIC = 0x958458F6
PAGE = 4096

KERNEL_SYSCTLS = ("shmmax", "shmall", "shmmni", "msgmax", "msgmni", "msgmnb", "sem")
MQUEUE_SYSCTLS = ("queues_max", "msg_max", "msgsize_max", "msg_default", "msgsize_default")


class Ipc64Perm(ctypes.Structure):
    """struct ipc64_perm (include/uapi/asm-generic/ipcbuf.h, x86_64)::

    struct ipc64_perm {
        __kernel_key_t key; __kernel_uid32_t uid; __kernel_gid32_t gid;
        __kernel_uid32_t cuid; __kernel_gid32_t cgid; __kernel_mode_t mode;
        unsigned char __pad1[4 - sizeof(__kernel_mode_t)];
        unsigned short seq; unsigned short __pad2;
        __kernel_ulong_t __unused1; __kernel_ulong_t __unused2;
    };
    """

    _fields_ = [
        ("key", ctypes.c_int32), ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
        ("cuid", ctypes.c_uint32), ("cgid", ctypes.c_uint32), ("mode", ctypes.c_uint32),
        ("seq", ctypes.c_uint16), ("pad2", ctypes.c_uint16),
        ("unused1", ctypes.c_uint64), ("unused2", ctypes.c_uint64),
    ]  # fmt: skip


class ShmidDs(ctypes.Structure):
    """struct shmid64_ds (arch/x86/include/uapi/asm/shmbuf.h, x86_64)::

    struct shmid64_ds {
        struct ipc64_perm shm_perm; __kernel_size_t shm_segsz;
        __kernel_long_t shm_atime, shm_dtime, shm_ctime;
        __kernel_pid_t shm_cpid, shm_lpid; __kernel_ulong_t shm_nattch;
        __kernel_ulong_t __unused4, __unused5;
    };
    """

    _fields_ = [
        ("perm", Ipc64Perm), ("segsz", ctypes.c_uint64),
        ("atime", ctypes.c_int64), ("dtime", ctypes.c_int64), ("ctime", ctypes.c_int64),
        ("cpid", ctypes.c_int32), ("lpid", ctypes.c_int32), ("nattch", ctypes.c_uint64),
        ("unused4", ctypes.c_uint64), ("unused5", ctypes.c_uint64),
    ]  # fmt: skip


class SemidDs(ctypes.Structure):
    """struct semid64_ds (arch/x86/include/uapi/asm/sembuf.h, x86_64)::

    struct semid64_ds {
        struct ipc64_perm sem_perm;
        __kernel_long_t sem_otime; __kernel_ulong_t __unused1;
        __kernel_long_t sem_ctime; __kernel_ulong_t __unused2;
        __kernel_ulong_t sem_nsems; __kernel_ulong_t __unused3, __unused4;
    };
    """

    _fields_ = [
        ("perm", Ipc64Perm), ("otime", ctypes.c_int64), ("unused1", ctypes.c_uint64),
        ("ctime", ctypes.c_int64), ("unused2", ctypes.c_uint64), ("nsems", ctypes.c_uint64),
        ("unused3", ctypes.c_uint64), ("unused4", ctypes.c_uint64),
    ]  # fmt: skip


class MsqidDs(ctypes.Structure):
    """struct msqid64_ds (include/uapi/asm-generic/msgbuf.h, 64-bit)::

    struct msqid64_ds {
        struct ipc64_perm msg_perm;
        long msg_stime, msg_rtime, msg_ctime;
        unsigned long msg_cbytes, msg_qnum, msg_qbytes;
        __kernel_pid_t msg_lspid, msg_lrpid;
        unsigned long __unused4, __unused5;
    };
    """

    _fields_ = [
        ("perm", Ipc64Perm), ("stime", ctypes.c_int64), ("rtime", ctypes.c_int64),
        ("ctime", ctypes.c_int64), ("cbytes", ctypes.c_uint64), ("qnum", ctypes.c_uint64),
        ("qbytes", ctypes.c_uint64), ("lspid", ctypes.c_int32), ("lrpid", ctypes.c_int32),
        ("unused4", ctypes.c_uint64), ("unused5", ctypes.c_uint64),
    ]  # fmt: skip


class MqAttr(ctypes.Structure):
    """struct mq_attr (include/uapi/linux/mqueue.h)::

    struct mq_attr { __kernel_long_t mq_flags, mq_maxmsg, mq_msgsize, mq_curmsgs, __reserved[4]; };
    """

    _fields_ = [
        ("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long),
        ("curmsgs", ctypes.c_long), ("reserved", ctypes.c_long * 4),
    ]  # fmt: skip


class Statfs(ctypes.Structure):
    """struct statfs (x86_64, as glibc's fstatfs fills it): f_type first."""

    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_long * 14)]


assert ctypes.sizeof(Ipc64Perm) == 48
assert ctypes.sizeof(ShmidDs) == 112
assert ctypes.sizeof(SemidDs) == 104
assert ctypes.sizeof(MsqidDs) == 120
assert ctypes.sizeof(MqAttr) == 64
assert ctypes.sizeof(Statfs) == 120

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fstatfs.argtypes = [ctypes.c_int, ctypes.POINTER(Statfs)]
_libc.fstatfs.restype = ctypes.c_int


def fs_magic(fd: int) -> int:
    """f_type of the file system `fd` is on."""
    buf = Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return buf.f_type & 0xFFFFFFFF


def _sys(nr: int, *args: Any) -> int:
    return libc.syscall(nr, *args)


def _ref(obj: ctypes.Structure | ctypes.Array) -> int:
    return ctypes.addressof(obj)


def _ipc_stat(nr: int, ident: int, ds: ctypes.Structure) -> ctypes.Structure:
    _sys(nr, ident, IPC_STAT, _ref(ds))
    return ds


def _ipc_set(nr: int, ident: int, ds: ctypes.Structure, uid: int, gid: int, mode: int) -> None:
    ds.perm.uid = uid
    ds.perm.gid = gid
    ds.perm.mode = mode & 0o777
    _sys(nr, ident, IPC_SET, _ref(ds))


def _perm_fields(p: Ipc64Perm) -> dict:
    return {
        "key": p.key,
        "mode": p.mode,
        "uid": p.uid,
        "gid": p.gid,
        "cuid": p.cuid,
        "cgid": p.cgid,
    }


# --- a thread in the container's IPC namespace ------------------------------------------------


def in_ipc_ns(pid: int, fn: Callable[..., Any], *args: Any, mqueue: bool = False) -> Any:
    """Run fn(*args) in a new thread of ours that joined the IPC namespace of `pid`.

    With ``mqueue``, the thread also gets a private mount namespace with the
    namespace's mqueue file system mounted; fn then gets its path as a first
    argument.  Both namespaces go away with the thread.
    """
    ipc_fd = os.open(f"/proc/{pid}/ns/ipc", os.O_RDONLY | os.O_CLOEXEC)
    tmp = tempfile.mkdtemp(prefix="vzpy-mq-") if mqueue else None
    result: dict = {}

    def body() -> None:
        try:
            libc.setns(ipc_fd, libc.CLONE_NEWIPC)
            if tmp is not None:
                # CLONE_NEWNS also unshares this thread's fs_struct: our other threads keep theirs.
                libc.unshare(libc.CLONE_NEWNS)
                libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
                libc.mount("mqueue", tmp, "mqueue", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
                result["value"] = fn(tmp, *args)
            else:
                result["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            result["error"] = e

    try:
        t = threading.Thread(target=body, name="ipc-ns")
        t.start()
        t.join()
    finally:
        os.close(ipc_fd)
        if tmp is not None:
            # The mount lived in the thread's own namespace, gone with it.
            shutil.rmtree(tmp, ignore_errors=True)
    if "error" in result:
        raise result["error"]
    return result.get("value")


class _AsCreator:
    """Be `uid`/`gid` in this *thread* (raw syscalls: glibc's wrappers would
    change every thread) while it creates an object, so that the object has
    them as creator (cuid/cgid, a queue's owner) and its memory is charged to
    that user (RLIMIT_MSGQUEUE goes by the real uid).  The saved uid stays 0,
    which keeps the permitted capabilities and lets us be root again after."""

    def __init__(self, uid: int, gid: int) -> None:
        self.uid, self.gid = uid, gid

    def __enter__(self) -> _AsCreator:
        if self.gid:
            _sys(SYS_setresgid, -1, self.gid, -1)
        if self.uid:
            _sys(SYS_setresuid, self.uid, self.uid, 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.uid:
            _sys(SYS_setresuid, 0, 0, 0)
        if self.gid:
            _sys(SYS_setresgid, -1, 0, -1)


def _read_sysctl(name: str) -> str | None:
    try:
        with open(f"/proc/sys/{name}") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    with open(f"/proc/sys/{name}", "w") as f:
        f.write(value)


def _sysctl_names() -> list[str]:
    return [f"kernel/{n}" for n in KERNEL_SYSCTLS + ("shm_rmid_forced",)] + [
        f"fs/mqueue/{n}" for n in MQUEUE_SYSCTLS
    ]


# --- dump ----------------------------------------------------------------------------------


def _read_segment(ctx, shmid: int, size: int, name: str) -> None:
    """Attach segment `shmid` read-only in our process and copy it into pages-NAME.img."""
    addr = _sys(SYS_shmat, shmid, 0, SHM_RDONLY)
    try:
        length = -(-size // PAGE) * PAGE
        fd = os.open(f"/proc/self/map_files/{addr:x}-{addr + length:x}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            if fs_magic(fd) == HUGETLBFS_MAGIC:
                raise UnsupportedError(
                    f"Can't dump SysV shm segment {shmid}: SHM_HUGETLB is not supported"
                )
            with ctx.img.pages(name) as pw:
                n = save_file_data(fd, pw, size)
                ctx.stats["shmem_bytes"] = ctx.stats.get("shmem_bytes", 0) + n
                pw.close()
        finally:
            os.close(fd)
    finally:
        _sys(SYS_shmdt, addr)


def _dump_sysv(ctx, attached: dict[int, str]) -> dict:
    """In the IPC thread: sysctls, shm, sem, msg."""
    out: dict = {"sysctls": [], "shm": [], "sem": [], "msg": []}
    for name in _sysctl_names():
        v = _read_sysctl(name)
        if v is not None:
            out["sysctls"].append({"name": name, "value": v})
    rmid_forced = _read_sysctl("kernel/shm_rmid_forced") == "1"
    with open("/proc/sysvipc/shm") as f:
        segs = procfs.parse_sysvipc_shm(f.read())
    for s in segs:
        ds = _ipc_stat(SYS_shmctl, s.shmid, ShmidDs())
        if rmid_forced and ds.nattch == 0:
            raise UnsupportedError(
                f"Can't dump SysV shm segment {s.shmid}: it is attached by no task while "
                "kernel.shm_rmid_forced=1 (the restored segment would lose its creator and be destroyed)"
            )
        rec = _perm_fields(ds.perm) | {"id": s.shmid, "size": ds.segsz, "nattch": ds.nattch}
        pages = attached.get(s.shmid)
        if pages is None:
            pages = f"sysvshm-{s.shmid}"
            _read_segment(ctx, s.shmid, ds.segsz, pages)
        rec["pages"] = pages
        out["shm"].append(rec)
    with open("/proc/sysvipc/sem") as f:
        sets = procfs.parse_sysvipc_sem(f.read())
    for s in sets:
        ds = SemidDs()  # semctl takes a semnum before the command
        _sys(SYS_semctl, s.semid, 0, IPC_STAT, _ref(ds))
        vals = (ctypes.c_uint16 * max(1, ds.nsems))()
        _sys(SYS_semctl, s.semid, 0, GETALL, _ref(vals))
        rec = _perm_fields(ds.perm) | {"id": s.semid, "values": list(vals)[: ds.nsems]}
        out["sem"].append(rec)
    with open("/proc/sysvipc/msg") as f:
        queues = procfs.parse_sysvipc_msg(f.read())
    msgmax = int(_read_sysctl("kernel/msgmax") or 8192)
    for q in queues:
        ds = _ipc_stat(SYS_msgctl, q.msqid, MsqidDs())
        # No message is bigger than the bytes of its queue (msgmax may have
        # been lowered since it was sent); E2BIG rather than a silent cut.
        size = max(msgmax, ds.cbytes, 1)
        buf = ctypes.create_string_buffer(8 + size)
        messages = []
        for i in range(ds.qnum):
            # MSG_COPY: msgtyp is the position; the message stays queued.
            n = _sys(SYS_msgrcv, q.msqid, _ref(buf), size, i, IPC_NOWAIT | MSG_COPY)
            mtype = struct.unpack_from("<q", buf.raw, 0)[0]
            messages.append({"mtype": mtype, "data": buf.raw[8 : 8 + n]})
        rec = _perm_fields(ds.perm) | {"id": q.msqid, "qbytes": ds.qbytes, "messages": messages}
        out["msg"].append(rec)
    return out


def _mq_info(path: str) -> dict[str, int]:
    """The fields of an mqueue file's text (QSIZE:.. NOTIFY:.. SIGNO:.. NOTIFY_PID:..)."""
    with open(path) as f:
        text = f.read()
    out = {}
    for item in text.split():
        k, _, v = item.partition(":")
        if v.lstrip("-").isdigit():
            out[k] = int(v)
    return out


def _mq_receive_all(fd: int, msgsize: int, out: list[dict]) -> None:
    """Take every message of the queue into `out` (highest priority first)."""
    buf = ctypes.create_string_buffer(max(1, msgsize))
    prio = ctypes.c_uint(0)
    while True:
        try:
            n = _sys(SYS_mq_timedreceive, fd, _ref(buf), msgsize, ctypes.addressof(prio), 0)
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return
            raise
        out.append({"prio": prio.value, "data": buf.raw[:n]})


def _mq_send_all(fd: int, messages: list[dict]) -> None:
    for m in messages:
        data = ctypes.create_string_buffer(m["data"], max(1, len(m["data"])))
        _sys(SYS_mq_timedsend, fd, _ref(data), len(m["data"]), m["prio"], 0)


def _dump_mqueues(mnt: str) -> list[dict]:
    """In the IPC thread, the mqueue fs mounted at `mnt`: every queue with its messages."""
    out = []
    for name in sorted(os.listdir(mnt)):
        path = os.path.join(mnt, name)
        st = os.stat(path)
        info = _mq_info(path)
        if info.get("NOTIFY_PID", 0) or info.get("NOTIFY", 0):
            raise UnsupportedError(
                f"Can't dump POSIX message queue /{name}: a task registered for notification "
                "(mq_notify), which vzpy cannot restore"
            )
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            attr = MqAttr()
            _sys(SYS_mq_getsetattr, fd, 0, _ref(attr))
            messages: list[dict] = []
            try:
                _mq_receive_all(fd, attr.msgsize, messages)
            finally:
                # Straight back, in the order received: the queue is as it was,
                # also when the dump fails here.
                _mq_send_all(fd, messages)
        finally:
            os.close(fd)
        out.append({
            "name": name, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
            "maxmsg": attr.maxmsg, "msgsize": attr.msgsize, "messages": messages,
        })  # fmt: skip
    return out


def _shm_vmas(ctx) -> dict[int, list[tuple[int, int, int, int]]]:
    """SysV shm attachments of the container's tasks: shmid -> [(pid, start, end, pgoff)]."""
    out: dict[int, list[tuple[int, int, int, int]]] = {}
    for p in ctx.procs:
        if p.zombie:
            continue
        for v in ctx.reader.maps(p.pid):
            if res_memory.classify(v) == "sysv_shm":
                out.setdefault(v.inode, []).append((p.nspid, v.start, v.end, v.offset))
    return out


def dump_ipc(ctx) -> None:
    init = ctx.init_pid
    ns = os.stat(f"/proc/{init}/ns/ipc").st_ino
    for p in ctx.procs:
        if p.zombie:
            continue
        if os.stat(f"/proc/{p.pid}/ns/ipc").st_ino != ns:
            raise UnsupportedError(
                f"Can't dump task {p.nspid} ({p.comm}): it is in its own IPC namespace "
                "(nested IPC namespaces are not supported)"
            )
    attached = {
        ino: f"shmem-{ino}" for ino, o in ctx.shmem.done.items() if o.get("kind") == "sysv_shm"
    }
    rec = in_ipc_ns(init, _dump_sysv, ctx, attached)
    sizes = {s["id"]: s["size"] for s in rec["shm"]}
    for shmid, uses in _shm_vmas(ctx).items():
        for nspid, start, end, pgoff in uses:
            whole = -(-sizes.get(shmid, 0) // PAGE) * PAGE
            if pgoff or end - start != whole:
                raise UnsupportedError(
                    f"Can't dump task {nspid}: its mapping {start:#x}-{end:#x} of SysV shm segment "
                    f"{shmid} covers only part of it (partial attachments are not supported)"
                )
    rec["mqueues"] = in_ipc_ns(init, _dump_mqueues, mqueue=True)
    rec["ns_id"] = ns
    ctx.img.write("ipc_ns", rec)


# --- restore -------------------------------------------------------------------------------


def _set_next_id(kind: str, ident: int) -> None:
    _write_sysctl(f"kernel/{kind}_next_id", str(ident))


def _check_id(what: str, want: int, got: int) -> None:
    if got != want:
        raise RestoreError(
            f"SysV {what} got id {got} instead of the dumped {want} (id already in use?)"
        )


def _fill_segment(rctx, shmid: int, size: int, pages: str) -> None:
    """Write the dumped contents into segment `shmid` through its shmem file
    (reached via a mapping of ours): holes stay holes, one copy."""
    if not pages or not rctx.img.has("pagemap", pages):
        return
    addr = _sys(SYS_shmat, shmid, 0, 0)
    try:
        length = -(-size // PAGE) * PAGE
        fd = os.open(f"/proc/self/map_files/{addr:x}-{addr + length:x}", os.O_RDWR | os.O_CLOEXEC)
        try:
            pr = rctx.img.pages(pages)
            try:
                load_file_data(fd, pr, size)
            finally:
                pr.close()
        finally:
            os.close(fd)
    finally:
        _sys(SYS_shmdt, addr)


def _creation_limits(rec: dict, sysctls: dict[str, str]) -> dict[str, str]:
    """Limits under which every dumped object can be made again: the dumped
    ones, raised where an object exceeds them (a limit lowered after the
    object was made, a msg_qbytes raised with CAP_SYS_RESOURCE...)."""

    def cur(name: str, default: int = 0) -> int:
        try:
            return int(sysctls.get(name, default))
        except ValueError:
            return default

    shm, sem, msg = rec.get("shm") or [], rec.get("sem") or [], rec.get("msg") or []
    sizes = [len(x.get("values") or []) for x in sem]
    msl, mns, opm, mni = ([int(v) for v in sysctls.get("kernel/sem", "").split()] + [0, 0, 0, 0])[
        :4
    ]
    return {
        "kernel/shmmax": str(max([cur("kernel/shmmax")] + [x["size"] for x in shm])),
        "kernel/shmall": str(1 << 62),  # pages; the dumped value comes back at the end
        "kernel/shmmni": str(max(cur("kernel/shmmni"), len(shm))),
        "kernel/msgmni": str(max(cur("kernel/msgmni"), len(msg))),
        "kernel/msgmax": str(
            max(
                [cur("kernel/msgmax")]
                + [len(m["data"]) for q in msg for m in q.get("messages") or []]
            )
        ),
        "kernel/sem": f"{max([msl] + sizes)} {max(mns, sum(sizes))} {opm or 32} {max(mni, len(sem))}",
        "kernel/shm_rmid_forced": "0",  # the dumped value: restore_late, once tasks are attached
    }


def _restore_sysv(rctx, rec: dict) -> None:
    """In the IPC thread of the new namespace."""
    sysctls = {s["name"]: s["value"] for s in rec.get("sysctls") or []}
    for name, value in sysctls.items():
        _write_sysctl(name, value)
    for name, value in _creation_limits(rec, sysctls).items():
        _write_sysctl(name, value)
    for s in sorted(rec.get("shm") or [], key=lambda x: x["id"]):
        _set_next_id("shm", s["id"])
        key = s.get("key") or IPC_PRIVATE
        with _AsCreator(s.get("cuid", 0), s.get("cgid", 0)):
            got = _sys(SYS_shmget, key, s["size"], (s["mode"] & 0o777) | IPC_CREAT | IPC_EXCL)
        _check_id("shm segment", s["id"], got)
        ds = _ipc_stat(SYS_shmctl, got, ShmidDs())
        _ipc_set(SYS_shmctl, got, ds, s["uid"], s["gid"], s["mode"])
        _fill_segment(rctx, got, s["size"], s.get("pages"))
        if s["mode"] & SHM_LOCKED:
            _sys(SYS_shmctl, got, SHM_LOCK, 0)
    for s in sorted(rec.get("sem") or [], key=lambda x: x["id"]):
        _set_next_id("sem", s["id"])
        vals = s.get("values") or []
        flags = (s["mode"] & 0o777) | IPC_CREAT | IPC_EXCL
        with _AsCreator(s.get("cuid", 0), s.get("cgid", 0)):
            got = _sys(SYS_semget, s.get("key") or IPC_PRIVATE, len(vals), flags)
        _check_id("semaphore set", s["id"], got)
        arr = (ctypes.c_uint16 * max(1, len(vals)))(*vals)
        _sys(SYS_semctl, got, 0, SETALL, _ref(arr))
        ds = SemidDs()
        _sys(SYS_semctl, got, 0, IPC_STAT, _ref(ds))
        ds.perm.uid, ds.perm.gid, ds.perm.mode = s["uid"], s["gid"], s["mode"] & 0o777
        _sys(SYS_semctl, got, 0, IPC_SET, _ref(ds))
    for q in sorted(rec.get("msg") or [], key=lambda x: x["id"]):
        _set_next_id("msg", q["id"])
        # A new queue's msg_qbytes is msgmnb (ipc/msg.c newque); raising it
        # later with IPC_SET would take CAP_SYS_RESOURCE.
        _write_sysctl("kernel/msgmnb", str(q["qbytes"]))
        flags = (q["mode"] & 0o777) | IPC_CREAT | IPC_EXCL
        with _AsCreator(q.get("cuid", 0), q.get("cgid", 0)):
            got = _sys(SYS_msgget, q.get("key") or IPC_PRIVATE, flags)
        _check_id("message queue", q["id"], got)
        for m in q.get("messages") or []:
            data = m["data"]
            buf = ctypes.create_string_buffer(struct.pack("<q", m["mtype"]) + data, 8 + len(data))
            _sys(SYS_msgsnd, got, _ref(buf), len(data), IPC_NOWAIT)
        ds = _ipc_stat(SYS_msgctl, got, MsqidDs())
        _ipc_set(SYS_msgctl, got, ds, q["uid"], q["gid"], q["mode"])
    for name, value in sysctls.items():
        if name != "kernel/shm_rmid_forced":
            _write_sysctl(name, value)


def _restore_mqueues(mnt: str, queues: list[dict], sysctls: dict[str, str]) -> None:
    """In the IPC thread (mqueue fs at `mnt`): create each queue and refill it."""
    if not queues:
        return
    # mq_open refuses attributes above the namespace's limits without
    # CAP_SYS_RESOURCE (ipc/mqueue.c): raise them meanwhile.
    _write_sysctl(
        "fs/mqueue/queues_max",
        str(max(len(queues) + 256, int(sysctls.get("fs/mqueue/queues_max", "0")))),
    )
    _write_sysctl("fs/mqueue/msg_max", str(max([q["maxmsg"] for q in queues] + [10])))
    _write_sysctl("fs/mqueue/msgsize_max", str(max([q["msgsize"] for q in queues] + [8192])))
    try:
        for q in queues:
            name = q["name"].encode() + b"\0"
            attr = MqAttr(0, q["maxmsg"], q["msgsize"], 0)
            with _AsCreator(q.get("uid", 0), q.get("gid", 0)):
                fd = _sys(SYS_mq_open, ctypes.c_char_p(name),
                          os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NONBLOCK | os.O_CLOEXEC,
                          q["mode"], _ref(attr))  # fmt: skip
            try:
                os.fchmod(fd, q["mode"])
                os.fchown(fd, q["uid"], q["gid"])
                _mq_send_all(fd, q.get("messages") or [])
            finally:
                os.close(fd)
    finally:
        for n in MQUEUE_SYSCTLS:
            key = f"fs/mqueue/{n}"
            if key in sysctls:
                _write_sysctl(key, sysctls[key])


def _remove_dest_segments(ids: list[int], rmid_forced: str | None) -> None:
    for shmid in ids:
        _sys(SYS_shmctl, shmid, IPC_RMID, 0)
    if rmid_forced is not None:
        _write_sysctl("kernel/shm_rmid_forced", rmid_forced)


class IpcResource(base.CtResource):
    name = "ipc_ns"
    order = 30  # before tasks map their segments; after mounts (mqueue)

    def dump(self, ctx) -> None:
        dump_ipc(ctx)

    def restore_early(self, rctx) -> None:
        if not rctx.img.has("ipc_ns"):
            return
        rec = rctx.img.read("ipc_ns")
        rctx.extra["ipc_ns"] = rec
        stub = rctx.stub_pid
        in_ipc_ns(stub, _restore_sysv, rctx, rec)
        sysctls = {s["name"]: s["value"] for s in rec.get("sysctls") or []}
        in_ipc_ns(stub, _restore_mqueues, rec.get("mqueues") or [], sysctls, mqueue=True)

    def restore_late(self, rctx) -> None:
        rec = rctx.extra.get("ipc_ns")
        if rec is None:
            return
        dest = [s["id"] for s in rec.get("shm") or [] if s["mode"] & SHM_DEST]
        forced = {s["name"]: s["value"] for s in rec.get("sysctls") or []}.get(
            "kernel/shm_rmid_forced"
        )
        in_ipc_ns(rctx.stub_pid, _remove_dest_segments, dest, forced)


IPC_RESOURCE = base.register_ct_resource(IpcResource())


# --- SysV shm attachments of the tasks ------------------------------------------------------


class SysvShmVmas:
    """Maps a task's SysV shm attachment back with an injected shmat(2), so the
    kernel counts it (shm_nattch) and shmdt(2) works on it."""

    name = "sysv_shm"

    def match(self, rec: dict) -> bool:
        return rec.get("kind") == "sysv_shm"

    def dump(self, ctx, proc, vma, rec: dict) -> None:
        pass  # contents: memory.py's shmem objects; checks: dump_ipc

    def map(self, rctx, task, inj, rec: dict) -> None:
        shmid = rec.get("shmid", rec.get("ino"))
        flags = 0 if rec["prot"] & res_memory.PROT_WRITE else SHM_RDONLY
        if rec["prot"] & res_memory.PROT_EXEC:
            flags |= SHM_EXEC
        got = inj.syscall(SYS_shmat, shmid, rec["start"], flags)
        if got != rec["start"]:
            err = os.strerror(-got) if got < 0 else f"mapped at {got:#x}"
            raise RestoreError(
                f"Can't attach SysV shm segment {shmid} at {rec['start']:#x} in task {task.pid}: {err}"
            )
        if not rec["prot"] & res_memory.PROT_READ:
            inj.mprotect(rec["start"], rec["end"] - rec["start"], rec["prot"])


res_memory.register_vma_handler(SysvShmVmas())


# --- POSIX message queue descriptors ------------------------------------------------------


class MqueueKind(FdKind):
    """An mqd_t: an open file of the namespace's mqueue file system.  The
    queue itself (attributes, messages) is part of ipc_ns.img."""

    name = "mqueue_file"
    record_types = ("mqueue_file",)

    def match(self, probe: FdProbe) -> bool:
        if probe.copy < 0 or probe.st is None or not stat.S_ISREG(probe.st.st_mode):
            return False
        try:
            return fs_magic(probe.copy) == MQUEUE_MAGIC
        except OSError:
            return False

    def dump(self, ctx, probe: FdProbe) -> dict:
        if probe.flags & 0o20000:  # O_ASYNC
            raise UnsupportedError(
                f"Can't dump task {probe.nspid}: fd {probe.fd} is POSIX message queue {probe.link} "
                "with O_ASYNC, which vzpy cannot restore"
            )
        if probe.st.st_nlink == 0:
            raise UnsupportedError(
                f"Can't dump task {probe.nspid}: fd {probe.fd} is POSIX message queue {probe.link}, "
                "which was unlinked while open (vzpy cannot restore a nameless queue)"
            )
        return {"_type": "mqueue_file", "name": probe.link.lstrip("/")}

    def restore(self, rctx, entry: dict) -> int:
        name = entry["detail"]["name"].encode() + b"\0"
        flags = entry.get("flags", 0) & (os.O_ACCMODE | os.O_NONBLOCK)

        def op() -> int:
            return _sys(SYS_mq_open, ctypes.c_char_p(name), flags | os.O_CLOEXEC, 0, 0)

        try:
            return in_ipc_ns(rctx.stub_pid, op)
        except OSError as e:
            raise RestoreError(
                f"Can't reopen POSIX message queue /{entry['detail']['name']}: {e.strerror}"
            ) from e


register_fd_kind(MqueueKind(), first=True)
