"""Container-wide state modules (resources/mounts, ipc, memfd, mapped_files, uts)
without root: the mount table plan from captured mountinfo (what is kept, what
is refused, where each bind comes from at restore), mount flag and option
parsing, kernel struct sizes, records through the image schema, and the parts
that run against the kernel in this process (a memfd made the restore way, a
tmpfs tree walked and refilled in a plain directory)."""

from __future__ import annotations

import ctypes
import fcntl
import os

import pytest

from vzpy import procfs
from vzpy.errors import RestoreError, UnsupportedError
from vzpy.images import schema
from vzpy.resources import ipc, memfd, memory, mounts
from vzpy.sys.libc import (
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_RELATIME,
    MS_STRICTATIME,
    MS_UNBINDABLE,
)

PRIV = "/var/tmp/vzt-node-x/vz/private/101"

# /proc/INIT/mountinfo of a running test container (captured), plus mounts made inside.
CT_MOUNTINFO = f"""\
100 53 254:0 {PRIV} / rw,relatime - ext4 /dev/vda rw,discard
101 100 0:52 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
102 100 0:53 / /sys ro,nosuid,nodev,noexec,relatime - sysfs sysfs ro
103 100 0:54 / /dev rw,nosuid,relatime - tmpfs none rw,size=65536k,mode=755
104 103 0:55 / /dev/pts rw,nosuid,noexec,relatime - devpts devpts rw,gid=5,mode=620,ptmxmode=666
105 103 0:56 / /dev/shm rw,nosuid,nodev,relatime - tmpfs shm rw
106 103 0:51 / /dev/mqueue rw,nosuid,nodev,noexec,relatime - mqueue mqueue rw
107 100 0:60 / /mnt/t rw,noatime shared:5 - tmpfs t rw,size=1024k
108 100 0:60 /sub /mnt/tro ro,nosuid,relatime shared:5 - tmpfs t rw,size=1024k
109 100 0:60 / /mnt/sl rw,relatime master:5 - tmpfs t rw,size=1024k
110 100 254:0 {PRIV}/zdtm/src /mnt/bdir rw,relatime - ext4 /dev/vda rw,discard
111 100 0:52 /sys /mnt/psys ro,relatime - proc proc rw
112 100 0:61 / /mnt/ub rw,relatime unbindable - tmpfs u rw
"""


def parse(text: str) -> list[procfs.Mount]:
    return procfs.parse_mountinfo(text)


def test_plan_dump_kinds_and_roots():
    recs = mounts.plan_dump(parse(CT_MOUNTINFO))
    by_mp = {r["mountpoint"]: r for r in recs}
    assert [r["mountpoint"] for r in recs][:7] == [
        "/",
        "/proc",
        "/sys",
        "/dev",
        "/dev/pts",
        "/dev/shm",
        "/dev/mqueue",
    ]
    assert by_mp["/"]["kind"] == "root" and by_mp["/"]["root"] == "/"
    assert by_mp["/dev"]["kind"] == "fs" and by_mp["/dev"]["flags"] == MS_NOSUID | MS_RELATIME
    assert by_mp["/sys"]["sb_flags"] == MS_RDONLY and by_mp["/sys"]["flags"] & MS_RDONLY
    # a root file system bind is stored relative to the container's root
    assert by_mp["/mnt/bdir"]["kind"] == "bind" and by_mp["/mnt/bdir"]["root"] == "/zdtm/src"
    assert by_mp["/mnt/tro"]["kind"] == "bind" and by_mp["/mnt/tro"]["shared_id"] == 5
    assert by_mp["/mnt/sl"]["master_id"] == 5 and not by_mp["/mnt/sl"]["shared_id"]
    assert by_mp["/mnt/ub"]["flags"] & MS_UNBINDABLE
    assert by_mp["/mnt/psys"]["root"] == "/sys"


def test_plan_restore_finds_bind_sources():
    recs = mounts.plan_dump(parse(CT_MOUNTINFO))
    entries = [{k: v for k, v in r.items() if k != "kind"} for r in recs]
    plan = {r["mountpoint"]: r for r in mounts.plan_restore(entries)}
    assert plan["/mnt/bdir"]["bind_path"] == "/zdtm/src"
    assert plan["/mnt/tro"]["bind_path"] == "/mnt/t/sub"  # from its peer: joins the group
    assert plan["/mnt/sl"]["bind_path"] == "/mnt/t"  # from its master's group
    assert plan["/mnt/psys"]["bind_path"] == "/proc/sys"
    assert plan["/dev/shm"]["kind"] == "fs"


def test_parents_first_after_a_move():
    text = (
        CT_MOUNTINFO.replace("104 103 0:55", "104 113 0:55")
        + "113 100 0:70 / /late rw - tmpfs l rw\n"
    )
    order = [r["mountpoint"] for r in mounts.plan_dump(parse(text))]
    assert order.index("/late") < order.index("/dev/pts")


@pytest.mark.parametrize(
    "line,words",
    [
        ("120 100 0:70 / /mnt/o rw - overlay overlay rw,lowerdir=/a", ["/mnt/o", "overlay"]),
        ("120 100 0:70 / /mnt/f rw - fuse.sshfs host:/ rw", ["fuse.sshfs"]),
        ("120 100 0:70 / /mnt/n rw - nfs4 srv:/x rw", ["nfs4"]),
        ("120 100 8:1 / /mnt/b rw - ext4 /dev/sda1 rw", ["/mnt/b", "ext4"]),
        ("120 100 0:70 / /mnt/c rw - cgroup2 none rw", ["cgroup2"]),
        ("120 100 254:0 /etc /mnt/host rw - ext4 /dev/vda rw", ["outside the container's root"]),
        ("120 100 0:70 /x /mnt/p rw - tmpfs t rw", ["not mounted whole"]),
        ("120 100 0:70 / /mnt/s rw master:77 - tmpfs t rw", ["slave of peer group 77"]),
        ("120 100 0:70 / /mnt/d//deleted rw - tmpfs t rw", ["deleted"]),
    ],
)
def test_plan_dump_refuses(line, words):
    with pytest.raises(UnsupportedError) as e:
        mounts.plan_dump(parse(CT_MOUNTINFO + line + "\n"))
    for w in words:
        assert w in str(e.value)


def test_shared_mounts_with_submounts():
    # alone in its peer group (mount --make-rshared /): kept
    text = CT_MOUNTINFO.replace(" / rw,relatime - ext4", " / rw,relatime shared:1 - ext4")
    text += "120 112 0:71 / /mnt/ub/in rw shared:9 - tmpfs i rw\n"
    text = text.replace("/mnt/ub rw,relatime unbindable", "/mnt/ub rw,relatime shared:8")
    recs = mounts.plan_dump(parse(text))
    assert recs[0]["shared_id"] == 1
    # with peers (or slaves) its submounts would propagate: refused
    text = CT_MOUNTINFO + "120 107 0:71 / /mnt/t/in rw - tmpfs i rw\n"
    with pytest.raises(UnsupportedError, match="submounts and its peer group 5"):
        mounts.plan_dump(parse(text))


def test_mount_flags_and_data():
    assert (
        mounts.mnt_flags("rw,nosuid,nodev,noexec,relatime")
        == MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_RELATIME
    )
    assert mounts.mnt_flags("ro") == MS_RDONLY | MS_STRICTATIME
    assert mounts.fs_data("tmpfs", "rw,size=65536k,mode=755") == "size=65536k,mode=755"
    assert mounts.fs_data("proc", "rw") is None
    assert mounts.fs_data("devpts", "ro,gid=5,mode=620") == "gid=5,mode=620"


def test_records_through_the_schema():
    recs = mounts.plan_dump(parse(CT_MOUNTINFO))
    entries = [{k: v for k, v in r.items() if k != "kind"} for r in recs]
    enc = schema.encode("mounts", {"ns_id": 1, "entries": entries})
    back = schema.decode(schema.record_type("mounts"), enc, where="t")["entries"]
    assert [{k: v for k, v in e.items() if v is not None} for e in back] == entries
    rec = {
        "ns_id": 9,
        "sysctls": [{"name": "kernel/msgmnb", "value": "16384"}],
        "shm": [{"id": 32768, "key": 0x1234, "mode": 0o1640, "uid": 1, "gid": 2, "cuid": 0,
                 "cgid": 0, "size": 100, "nattch": 1, "pages": "shmem-32768"}],
        "sem": [{"id": 0, "key": 0, "mode": 0o600, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0,
                 "values": [1, 2, 32767]}],
        "msg": [{"id": 1, "key": -1, "mode": 0o600, "uid": 0, "gid": 0, "cuid": 0, "cgid": 0,
                 "qbytes": 16384, "messages": [{"mtype": 3, "data": b"\0x"}]}],
        "mqueues": [{"name": "q", "mode": 0o644, "uid": 0, "gid": 0, "maxmsg": 10, "msgsize": 64,
                     "messages": [{"prio": 9, "data": b"hi"}]}],
    }  # fmt: skip
    assert (
        schema.decode(schema.record_type("ipc_ns"), schema.encode("ipc_ns", rec), where="t") == rec
    )


def test_ipc_struct_sizes():
    # glibc's struct ipc_perm/shmid_ds/semid_ds/msqid_ds/mq_attr/statfs on x86_64
    assert ctypes.sizeof(ipc.Ipc64Perm) == 48
    assert ctypes.sizeof(ipc.ShmidDs) == 112
    assert ctypes.sizeof(ipc.SemidDs) == 104
    assert ctypes.sizeof(ipc.MsqidDs) == 120
    assert ctypes.sizeof(ipc.MqAttr) == 64
    assert ctypes.sizeof(ipc.Statfs) == 120


def test_memfd_names_and_the_internal_shm_device():
    assert memfd.memfd_name("/memfd:zdtm-a (deleted)") == "zdtm-a"
    assert memfd.memfd_name("/memfd:a b") == "a b"
    fd = os.memfd_create("x", 0)
    try:
        st = os.fstat(fd)
        assert st.st_dev == memfd.shm_dev()
        assert (os.major(st.st_dev), os.minor(st.st_dev)) == memory._internal_shm_dev()
    finally:
        os.close(fd)


def test_dev_shm_files_are_files_not_anonymous_memory():
    anon = procfs.parse_maps(
        f"7f0000000000-7f0000001000 rw-s 00000000 {memory._internal_shm_dev()[0]:02x}:{memory._internal_shm_dev()[1]:02x} 123 /dev/zero (deleted)\n"
    )[0]
    posix = procfs.parse_maps("7f0000000000-7f0000001000 rw-s 00000000 00:32 7 /dev/shm/obj\n")[0]
    assert memory.classify(anon) == "shmem"
    assert memory.classify(posix) == "file_shared"


class _Rctx:
    def __init__(self, img=None):
        self.img = img
        self.shmem_meta = {}


class _NoImg:
    def has(self, *a):
        return False


def test_memfd_made_with_mode_and_seals():
    rec = {"ino": 1, "name": "made", "size": 8192, "mode": 0o640, "uid": os.getuid(),
           "gid": os.getgid(), "seals": memfd.F_SEAL_WRITE | memfd.F_SEAL_SHRINK | memfd.F_SEAL_SEAL}  # fmt: skip
    fd = memfd._make(_Rctx(_NoImg()), rec)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}") == "/memfd:made (deleted)"
        st = os.fstat(fd)
        assert st.st_size == 8192 and st.st_mode & 0o777 == 0o640
        assert fcntl.fcntl(fd, memfd.F_GET_SEALS) == rec["seals"]
    finally:
        os.close(fd)
    # F_SEAL_FUTURE_WRITE (and SEAL after it) wait for restore_late
    rec["seals"] = memfd.F_SEAL_FUTURE_WRITE | memfd.F_SEAL_SEAL
    fd = memfd._make(_Rctx(_NoImg()), rec)
    try:
        assert fcntl.fcntl(fd, memfd.F_GET_SEALS) == 0
    finally:
        os.close(fd)


class _Pages:
    """A PageWriter/PageReader stand-in keeping the runs in memory."""

    def __init__(self):
        self.data: dict[int, bytes] = {}
        self._buf = bytearray()

    def reserve(self, n):
        self._buf = bytearray(n)
        return memoryview(self._buf)

    def add_run(self, vaddr, n):
        self.data[vaddr] = bytes(self._buf[:n])

    @property
    def runs(self):
        from vzpy.images.pages import Run

        return [Run(v, len(b) // 4096, 0, 1) for v, b in sorted(self.data.items())]

    def segments_in(self, vaddr, n):
        for v, b in self.data.items():
            if v <= vaddr < v + len(b):
                yield vaddr, memoryview(b)[vaddr - v : vaddr - v + n]


def test_tmpfs_walk_and_fill_round_trip(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "d").mkdir()
    (src / "d" / "f").write_bytes(b"x" * 5000)
    with open(src / "sparse", "wb") as f:
        f.seek(1 << 20)
        f.write(b"end")
    os.link(src / "d" / "f", src / "hard")
    os.symlink("d/f", src / "sym")
    os.mkfifo(src / "fifo", 0o640)
    os.chmod(src / "d" / "f", 0o604)
    os.utime(src / "d", ns=(1_000_000_000_123, 2_000_000_000_456))
    pages = _Pages()
    w = mounts._Walk(base=str(src), pw=pages)
    entries = mounts.walk_tree(w)
    kinds = {e["path"]: e["type"] for e in entries}
    assert kinds == {"": "dir", "d": "dir", "d/f": "reg", "fifo": "fifo", "hard": "link", "sparse": "reg", "sym": "symlink"} or \
        kinds == {"": "dir", "d": "dir", "d/f": "link", "fifo": "fifo", "hard": "reg", "sparse": "reg", "sym": "symlink"}  # fmt: skip
    dst = tmp_path / "dst"
    dst.mkdir()
    mounts.fill_tree(str(dst), entries, pages)
    assert (dst / "d" / "f").read_bytes() == b"x" * 5000
    assert os.stat(dst / "d" / "f").st_mode & 0o777 == 0o604
    assert os.stat(dst / "hard").st_ino == os.stat(dst / "d" / "f").st_ino
    assert os.readlink(dst / "sym") == "d/f"
    data = (dst / "sparse").read_bytes()
    assert len(data) == (1 << 20) + 3 and data.endswith(b"end") and data[:4096] == bytes(4096)
    assert os.stat(dst / "d").st_mtime_ns == 2_000_000_000_456
    assert os.stat(dst / "fifo").st_mode & 0o777 == 0o640


@pytest.mark.parametrize(
    "entries",
    [
        [{"path": "", "type": "dir"}, {"path": "../escape", "type": "reg"}],
        [{"path": "", "type": "dir"}, {"path": "/abs", "type": "reg"}],
        # through a symlink of the tree itself
        [
            {"path": "", "type": "dir"},
            {"path": "s", "type": "symlink", "target": "/"},
            {"path": "s/etc", "type": "dir"},
        ],
        [{"path": "", "type": "dir"}, {"path": "h", "type": "link", "target": "../../x"}],
        [{"path": "", "type": "symlink", "target": "/"}],
    ],
)
def test_fill_tree_stays_in_its_mount(tmp_path, entries):
    base = {"mode": 0o40755, "uid": 0, "gid": 0, "atime_ns": 0, "mtime_ns": 0}
    with pytest.raises(RestoreError):
        mounts.fill_tree(str(tmp_path), [base | e for e in entries], None)
    assert not os.path.exists(tmp_path.parent / "escape")


def test_plan_restore_refuses_bad_paths():
    recs = mounts.plan_dump(parse(CT_MOUNTINFO))
    entries = [{k: v for k, v in r.items() if k != "kind"} for r in recs]
    entries[-1] = entries[-1] | {"mountpoint": "/mnt/../../etc"}
    with pytest.raises(RestoreError):
        mounts.plan_restore(entries)
