"""The restore driver: `vzctl restore` (vzctl-reference.md §1.5, DESIGN.md "Restore").

  read + verify the image (inventory, checksums, CTID, format version)
  mount the container, create its cgroups
  spawn the restore stub: pid 1 of fresh namespaces, rooted in VE_ROOT,
    network plugged in (container/spawn.py); seize it (EXITKILL: if we die,
    nothing half-restored survives)
  build the process tree: clone3(set_tid) injected into each parent, setsid
    and setpgid where the dump says
  per process: address space, files, cwd/root, signal actions, timers,
    limits; threads (clone3 CLONE_THREAD with set_tid); per thread state;
    credentials
  zombies exit with their status; stray pending signals of the restore are
    drained, dumped pending signals queued
  registers and blocked masks last, at the final ptrace stop
  --undump: freeze the cgroup, detach (tasks stay frozen);
  full restore: detach (tasks run), delete the image.

Any failure kills the whole new tree (cgroup kill), removes the network and
cgroups, and unmounts the container if we mounted it: nothing half-restored
is left running.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from dataclasses import dataclass, field

from .. import log
from ..checkpoint.driver import kill_frozen, resume_frozen
from ..container import net
from ..container.ct import Container, remove_path
from ..errors import ImageError, RestoreError, RunningError, VzError
from ..images import ImageReader
from ..initbin import open_in_root
from ..resources import base as res_base
from ..resources import files as res_files
from ..resources import memory as res_memory
from ..resources import task as res_task
from ..sys import ptrace
from ..sys.inject import Injector, wait_new_child
from .fdchannel import FdChannel

RESTORE_OPTIONS = (
    ptrace.PTRACE_O_TRACEFORK
    | ptrace.PTRACE_O_TRACEVFORK
    | ptrace.PTRACE_O_TRACECLONE
    | ptrace.PTRACE_O_EXITKILL
    | ptrace.PTRACE_O_SUSPEND_SECCOMP
    | ptrace.PTRACE_O_TRACESYSGOOD
)
THREAD_FLAGS = (
    0x100 | 0x200 | 0x400 | 0x800 | 0x10000 | 0x40000
)  # VM FS FILES SIGHAND THREAD SYSVSEM
TASK_SIZE = 0x7FFFFFFFF000
SCRATCH_PAGES = 4
SYS_setsid, SYS_setpgid, SYS_close_range, SYS_fchdir, SYS_chroot = 112, 109, 436, 81, 161


@dataclass
class RTask:
    pid: int
    ppid: int
    pgid: int
    sid: int
    threads: list[int]
    host_pid: int = 0
    host_tids: dict[int, int] = field(default_factory=dict)
    rec: dict = field(default_factory=dict)
    threads_rec: dict = field(default_factory=dict)
    scratch: int = 0

    @property
    def zombie(self) -> bool:
        return self.rec.get("state") == "zombie"


@dataclass
class RestoreCtx:
    ct: Container
    img: ImageReader
    tasks: list[RTask] = field(default_factory=list)
    stub_pid: int = 0
    root_fd: int = -1
    args_area: int = 0
    pipes: res_files.PipeRestorer = field(default_factory=res_files.PipeRestorer)
    deleted_files: res_files.DeletedFiles = field(default_factory=res_files.DeletedFiles)
    shmem: dict[int, int] = field(default_factory=dict)  # ino -> our fd
    shmem_meta: dict[int, dict] = field(default_factory=dict)
    file_fds: dict[int, int] = field(default_factory=dict)  # file id -> our fd
    seized: list[int] = field(default_factory=list)  # host tids we trace
    extra: dict = field(default_factory=dict)
    channel: FdChannel | None = None

    # --- helpers for resource modules -----------------------------------------------
    def open_in_root(self, path: str, flags: int, mode: int = 0) -> int:
        return open_in_root(self.root_fd, path, flags, mode)

    def unlink_in_root(self, path: str) -> None:
        d, name = os.path.split(path)
        dfd = open_in_root(self.root_fd, d or "/", os.O_PATH | os.O_DIRECTORY)
        try:
            os.unlink(name, dir_fd=dfd)
        finally:
            os.close(dfd)

    def scratch_addr(self, vmas: list[dict]) -> int:
        """A free spot of SCRATCH_PAGES pages in the dumped layout."""
        need = SCRATCH_PAGES * 4096
        taken = sorted((v["start"], v["end"]) for v in vmas)
        cand = 0x200000
        for s, e in taken:
            if cand + need <= s:
                return cand
            cand = max(cand, e)
        if cand + need <= TASK_SIZE:
            return cand
        raise RestoreError("No room for the restorer's scratch page")

    def set_args_area(self, inj, addr: int) -> None:
        inj.set_arg_area(addr, SCRATCH_PAGES * 4096)
        self.args_area = addr

    def shmem_fd_for(self, inj, task: RTask, vma: dict) -> int:
        """The task's fd of the shared memory object behind `vma` (caller closes it)."""
        ino = vma["shmid"]
        ours = self.shmem.get(ino)
        if ours is None:
            ours = self._make_shmem(ino, vma)
            self.shmem[ino] = ours
        return self.channel.send([ours])[0]

    def _make_shmem(self, ino: int, vma: dict) -> int:
        meta = self.shmem_meta.get(ino, {"size": vma["end"] - vma["start"] + vma["pgoff"] * 4096})
        kind = vma["kind"]
        if kind in ("memfd", "memfd_private"):
            name = (meta.get("path") or vma["path"]).removeprefix("/memfd:")
            fd = os.memfd_create(name, os.MFD_CLOEXEC)
            os.ftruncate(fd, meta["size"])
        elif kind == "shmem":
            # An anonymous shared object: map it shared here and take its file from map_files.
            import mmap

            size = max(meta["size"], 4096)
            m = mmap.mmap(-1, size, mmap.MAP_SHARED)
            addr, holder = _addr_of(m)
            try:
                fd = os.open(
                    f"/proc/self/map_files/{addr:x}-{addr + size:x}", os.O_RDWR | os.O_CLOEXEC
                )
            finally:
                del holder
                m.close()
        else:
            raise RestoreError(f"Can't restore shared memory of kind {kind} yet")
        name = f"shmem-{ino}"
        if self.img.has("pagemap", name):
            pr = self.img.pages(name)
            try:
                for off, view in pr.segments():
                    os.pwritev(fd, [view], off)
                    view.release()
            finally:
                pr.close()
        return fd

    def close(self) -> None:
        self.pipes.close()
        self.deleted_files.close()
        for fd in list(self.shmem.values()) + list(self.file_fds.values()):
            try:
                os.close(fd)
            except OSError:
                pass
        self.shmem.clear()
        self.file_fds.clear()
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1


def _addr_of(m):
    import ctypes

    holder = (ctypes.c_char * len(m)).from_buffer(m)
    return ctypes.addressof(holder), holder


# --- the restore ----------------------------------------------------------------------------


def open_image(ct: Container, path: str, verify_parents: bool = True) -> ImageReader:
    if not os.path.exists(path):
        raise ImageError(f"Dump file {path} does not exist")
    # verify=False here: verify() checks every checksum, once.
    img = ImageReader(path, expect_ctid=str(ct.ctid), verify=False)
    img.verify(parents=verify_parents)
    return img


def restore_container(
    ct: Container, path: str, mode: str = "full", skip_arpdetect: bool = False,
    verify_parents: bool = True,
) -> float:  # fmt: skip
    """Restore `ct` from the image at `path`; returns the restore time in ms.

    mode 'full': tasks run afterwards and the image is removed;
    'undump': tasks are left frozen (``restore --resume`` thaws them).
    verify_parents=False: the parent images (pre-dumps) were verified already
    (vzmigrate's agent checks each one as it arrives, before the freeze).
    """
    t0 = time.monotonic()
    res_files.load_kinds()
    if ct.is_running():
        raise RunningError("Unable to perform restore: container already running")
    img = open_image(ct, path, verify_parents)
    log.info("Restoring container ...")
    was_mounted = ct.is_mounted()
    ct.cleanup_runtime(keep_mount=True)
    ct.mount(quiet_if_mounted=True)
    rctx = RestoreCtx(ct=ct, img=img)
    ok = False
    try:
        log.info("\tundump...")
        _undump(rctx, skip_arpdetect)
        if mode == "undump":
            ct.cgroup.freeze()
        _release(rctx)
        ok = True
        for r in res_base.CT_RESOURCES:
            r.after_release(rctx)
    except VzError:
        raise
    except (OSError, ptrace.TaskGone, KeyError, ValueError) as e:
        if os.environ.get("VZPY_DEBUG"):
            traceback.print_exc()
        raise RestoreError(f"Restore error, undump failed: {e}") from e
    finally:
        rctx.close()
        if not ok:
            _kill_tree(rctx)
            for r in res_base.CT_RESOURCES:
                try:
                    r.cleanup(rctx)
                except Exception as e:  # noqa: BLE001 - keep cleaning up
                    log.error(f"Warning: cleanup of {r.name} failed: {e}")
            ct.cleanup_runtime(keep_mount=was_mounted)
            log.error(
                'Container restore failed (try to check kernel messages, e.g. "dmesg | tail")'
            )
    if mode == "full":
        log.info("\tresume...")
    return (time.monotonic() - t0) * 1000


def _kill_tree(rctx: RestoreCtx) -> None:
    try:
        rctx.ct.cgroup.kill_all()
    except (OSError, TimeoutError):
        pass
    for tid in rctx.seized:
        try:
            os.waitpid(tid, os.WNOHANG | 0x40000000)
        except ChildProcessError:
            pass


def _release(rctx: RestoreCtx) -> None:
    for tid in rctx.seized:
        try:
            ptrace.detach(tid, 0)
        except ProcessLookupError:
            pass
    rctx.seized.clear()


def _undump(rctx: RestoreCtx, skip_arpdetect: bool) -> None:
    from ..container.params import apply_cgroup_limits
    from ..container.spawn import SpawnSpec, spawn

    ct = rctx.ct
    img = rctx.img
    tree = img.read("pstree")["tasks"]
    rctx.tasks = [
        RTask(t["pid"], t["ppid"], t["pgid"], t["sid"], list(t.get("threads") or [t["pid"]]))
        for t in tree
    ]
    for t in rctx.tasks:
        t.rec = img.read("task", str(t.pid))
    if not rctx.tasks or rctx.tasks[0].pid != 1:
        raise ImageError("Image has no container init (pid 1)")
    meta = img.read("shmem_objects") if img.has("shmem_objects") else {"objects": []}
    rctx.shmem_meta = {o["ino"]: o for o in meta.get("objects") or []}
    uts = img.read("uts_ns") if img.has("uts_ns") else {}
    cg = ct.cgroup
    cg.create()
    apply_cgroup_limits(ct, cg)
    ips = ct.ips()

    def network(pid: int) -> None:
        net.setup_host_side(ct.ctid, pid, ips, None if not skip_arpdetect else "none")
        # Resources may lock the new netns and configure it from the image.
        if not any([r.restore_network(rctx, pid) for r in res_base.CT_RESOURCES]):
            net.setup_ct_side(pid, ct.ctid, ips)

    spec = SpawnSpec(
        ctid=ct.ctid,
        root=ct.root,
        hostname=uts.get("nodename") or ct.cfg.hostname,
        init_argv=None,
        capability=ct.cfg.get("CAPABILITY"),
        join_cgroup=cg.join,
    )
    for r in res_base.CT_RESOURCES:
        r.prepare(rctx, spec)
    stub = spawn(spec, network)
    rctx.stub_pid = stub
    rctx.root_fd = os.open(f"/proc/{stub}/root", os.O_PATH | os.O_CLOEXEC)
    ptrace.seize(stub, RESTORE_OPTIONS)
    rctx.seized.append(stub)
    ptrace.interrupt(stub)
    _wait_event_stop(stub)
    init = rctx.tasks[0]
    init.host_pid = stub
    init.host_tids[init.pid] = stub
    for r in res_base.CT_RESOURCES:
        r.restore_early(rctx)
    _build_tree(rctx)
    for r in res_base.CT_RESOURCES:
        r.restore_tree(rctx)
    for t in rctx.tasks:
        if not t.zombie:
            _restore_task(rctx, t)
    for t in rctx.tasks:
        if t.zombie:
            _make_zombie(rctx, t)
    # File kinds that need every file to exist first (epoll targets...).
    # Signal-driven I/O too, now that the owners exist.
    for entry in _files_by_id(rctx).values():
        ours = rctx.file_fds.get(entry["id"])
        if ours is None:
            continue
        res_files.kind_for_detail(entry["detail"]).after_tasks(rctx, entry)
        if entry.get("fown") or entry["flags"] & res_files.O_ASYNC:
            res_files.restore_owner(rctx, entry, ours)
    for r in res_base.CT_RESOURCES:
        r.restore_late(rctx)
    for t in rctx.tasks:
        if not t.zombie:
            _finish_task(rctx, t)


def _wait_event_stop(tid: int) -> None:
    while True:
        st = ptrace.wait_stop(tid, 10.0)
        if ptrace.stop_event(st) == ptrace.PTRACE_EVENT_STOP:
            return
        ptrace.cont(tid, 0)


def _clone(rctx: RestoreCtx, parent_host: int, ns_pid: int, exit_signal: int) -> int:
    with Injector(parent_host) as inj:
        rax, child = inj.clone3(0, exit_signal, [ns_pid])
        if rax != ns_pid or child is None:
            raise RestoreError(f"Could not recreate task {ns_pid} (got {rax})")
    wait_new_child(child)
    rctx.seized.append(child)
    return child


def _build_tree(rctx: RestoreCtx) -> None:
    """Fork the tree with the dumped pids; sessions whose leader has exited are
    rebuilt with a helper task holding the leader's pid (setsid, fork, exit)."""
    by_pid = {t.pid: t for t in rctx.tasks}
    init = rctx.tasks[0]
    if init.sid == 1:
        with Injector(init.host_pid) as inj:
            inj.call(SYS_setsid)
        _session_created(rctx, init)
    helpers: dict[int, int] = {}
    for t in rctx.tasks[1:]:
        parent = by_pid.get(t.ppid)
        if parent is None or not parent.host_pid:
            raise ImageError(f"Task {t.pid} has no parent {t.ppid} in the image")
        exit_signal = t.rec.get("exit_signal", signal.SIGCHLD) or 0
        creator = parent.host_pid
        if t.sid != t.pid and t.sid != parent.sid and t.sid not in by_pid:
            h = helpers.get(t.sid)
            if h is None:
                h = _clone(rctx, init.host_pid, t.sid, signal.SIGCHLD)
                with Injector(h) as inj:
                    inj.call(SYS_setsid)
                helpers[t.sid] = h
            creator = h
        child = _clone(rctx, creator, t.pid, exit_signal)
        t.host_pid = child
        t.host_tids[t.pid] = child
        if t.sid == t.pid:
            with Injector(child) as inj:
                inj.call(SYS_setsid)
            _session_created(rctx, t)
    # process groups, once every possible leader exists
    for t in rctx.tasks:
        if t.pgid and t.pgid != _cur_pgid(t.host_pid):
            with Injector(t.host_pid) as inj:
                rc = inj.syscall(SYS_setpgid, 0, t.pgid)
                if rc < 0:
                    raise RestoreError(
                        f"Can't put task {t.pid} into process group {t.pgid}: {os.strerror(-rc)}"
                    )
    # helpers go; their children are re-parented to init, which reaps the helpers now
    for sid, h in helpers.items():
        with Injector(h) as inj:
            inj.exit_group(0)
        rctx.seized.remove(h)
        with Injector(init.host_pid) as inj:
            inj.wait4(sid, 0)


def _session_created(rctx: RestoreCtx, t: RTask) -> None:
    for r in res_base.CT_RESOURCES:
        r.session_created(rctx, t)


def _cur_pgid(host_pid: int) -> int:
    with open(f"/proc/{host_pid}/status") as f:
        for line in f:
            if line.startswith("NSpgid:"):
                return int(line.split()[-1])
    return 0


def _restore_task(rctx: RestoreCtx, t: RTask) -> None:
    img = rctx.img
    mm = img.read("mm", str(t.pid))
    pages = img.pages(t.pid) if img.has("pagemap", str(t.pid)) else None
    fdinfo = img.read("fdinfo", str(t.pid)) if img.has("fdinfo", str(t.pid)) else {"fds": []}
    fs = img.read("fs", str(t.pid)) if img.has("fs", str(t.pid)) else {}
    threads = {th: img.read("thread", str(th)) for th in t.threads}
    files = _files_by_id(rctx)
    with Injector(t.host_pid) as inj:
        inj.keep_regs()
        # Our scratch and fd channel live in a spot the dumped layout leaves free.
        mmr = res_memory.MmRestorer(rctx, t, inj, mm, pages)
        # Close every fd the stub had; the dumped ones come later.
        inj.syscall(SYS_close_range, 0, 0xFFFFFFFF, 0)
        _unmap_all_but_vdso(inj, t)
        mmr.move_vdso()
        scratch = rctx.scratch_addr(mm["vmas"])
        inj.mmap(scratch, SCRATCH_PAGES * 4096, 3, 0x02 | 0x20 | 0x10)
        rctx.set_args_area(inj, scratch)
        inj.keep_scratch = True  # used until _finish_task
        rctx.channel = FdChannel(inj, scratch + 2 * 4096, rctx.stub_pid)
        try:
            mmr.map_and_fill()
            if pages is not None:
                pages.close()
            _restore_fds(rctx, t, inj, fdinfo, files)
            _restore_fs(rctx, t, inj, fs)
        finally:
            rctx.channel.close()
            rctx.channel = None
        res_task.restore_task(rctx, t, inj, t.rec)
        for r in res_base.TASK_RESOURCES:
            if img.has(r.name, str(t.pid)):
                r.restore(rctx, t, inj, img.read(r.name, str(t.pid)))
        mmr.set_mm_fields()
        # Threads: clone them now that the address space is in place.
        for ns_tid in t.threads[1:]:
            rax, child = inj.clone3(THREAD_FLAGS, 0, [ns_tid])
            if rax != ns_tid or child is None:
                raise RestoreError(
                    f"Could not recreate thread {ns_tid} of task {t.pid} (got {rax})"
                )
            wait_new_child(child)
            rctx.seized.append(child)
            t.host_tids[ns_tid] = child
        # Timers after the threads: a SIGEV_THREAD_ID timer needs its thread.
        res_task.restore_posix_timers(rctx, t, inj, t.rec)
        res_task.restore_thread_state(rctx, t, t.host_pid, inj, threads[t.pid])
    for ns_tid in t.threads[1:]:
        with Injector(t.host_tids[ns_tid], keep_scratch=True) as tinj:
            tinj.set_arg_area(rctx.args_area, SCRATCH_PAGES * 4096)
            res_task.restore_thread_state(rctx, t, t.host_tids[ns_tid], tinj, threads[ns_tid])
    t.threads_rec = threads
    t.scratch = rctx.args_area


def _unmap_all_but_vdso(inj, t: RTask) -> None:
    from .. import procfs

    with open(f"/proc/{t.host_pid}/maps", "rb") as f:
        cur = procfs.parse_maps(f.read())
    special = [v for v in cur if v.path in res_memory.SPECIAL and v.path != "[vsyscall]"]
    lo = min(v.start for v in special)
    hi = max(v.end for v in special)
    # The stub's rseq area is about to go: unregister it first, or the kernel's
    # rseq update on the way back to user mode faults (SIGSEGV at the syscall).
    rs = ptrace.get_rseq_config(t.host_pid)
    if rs.rseq_abi_pointer:
        inj.call(
            334, rs.rseq_abi_pointer, rs.rseq_abi_size, 1, rs.signature
        )  # RSEQ_FLAG_UNREGISTER
    inj.syscall(273, 0, 0)  # set_robust_list(NULL): nothing of the stub's must be touched at exit
    inj.syscall(218, 0)  # set_tid_address(NULL)
    if lo > 0x10000:
        inj.munmap(0x10000, lo - 0x10000)
    if hi < TASK_SIZE:
        inj.munmap(hi, TASK_SIZE - hi)


def _files_by_id(rctx: RestoreCtx) -> dict[int, dict]:
    cache = rctx.extra.get("files")
    if cache is None:
        rec = rctx.img.read("files") if rctx.img.has("files") else {"entries": []}
        cache = {e["id"]: e for e in rec.get("entries") or []}
        rctx.extra["files"] = cache
    return cache


def _restore_fds(rctx: RestoreCtx, t: RTask, inj, fdinfo: dict, files: dict[int, dict]) -> None:
    fd_map: dict[int, tuple[int, bool]] = {}
    for e in fdinfo.get("fds") or []:
        fid = e["file_id"]
        ours = rctx.file_fds.get(fid)
        if ours is None:
            entry = files.get(fid)
            if entry is None:
                raise ImageError(f"fd {e['fd']} of task {t.pid} refers to missing file {fid}")
            kind = res_files.kind_for_detail(entry["detail"])
            # O_ASYNC comes last (files.restore_owner): open(2) would take the flag
            # without arming it, and F_SETFL could then neither clear nor arm it.
            ours = kind.restore(rctx, dict(entry, flags=entry["flags"] & ~res_files.O_ASYNC))
            rctx.file_fds[fid] = ours
        fd_map[e["fd"]] = (ours, bool(e.get("cloexec")))
    rctx.channel.place(fd_map)


def _restore_fs(rctx: RestoreCtx, t: RTask, inj, fs: dict) -> None:
    cwd = fs.get("cwd")
    if cwd:
        try:
            ours = rctx.open_in_root(cwd, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise RestoreError(
                f"Can't find the working directory {cwd} of task {t.pid}: {e.strerror}"
            ) from e
        try:
            theirs = rctx.channel.send([ours])[0]
        finally:
            os.close(ours)
        inj.call(SYS_fchdir, theirs)
        inj.close_fd(theirs)
    root = fs.get("root")
    if root and root != "/":
        ours = rctx.open_in_root(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            theirs = rctx.channel.send([ours])[0]
        finally:
            os.close(ours)
        inj.call(SYS_fchdir, theirs)
        inj.write(rctx.args_area, b".\0")
        inj.call(SYS_chroot, rctx.args_area)
        inj.close_fd(theirs)
        if cwd:
            inj.write(rctx.args_area, cwd.encode() + b"\0")
            inj.syscall(80, rctx.args_area)  # chdir


def _make_zombie(rctx: RestoreCtx, t: RTask) -> None:
    code = t.rec.get("exit_code") or 0
    with Injector(t.host_pid) as inj:
        if code & 0x7F:
            sig = code & 0x7F
            inj.rt_sigaction_set(sig, 0, 0, 0, 0)
            inj.syscall(62, t.pid, sig)  # kill(self, sig)
            inj.saved_sigmask = 0
        else:
            inj.exit_group(code >> 8)
            rctx.seized.remove(t.host_pid)
            return
    # killed by a signal: let it die, reap the trace stop
    ptrace.cont(t.host_pid, code & 0x7F)
    rctx.seized.remove(t.host_pid)


def _finish_task(rctx: RestoreCtx, t: RTask) -> None:
    """Signals, credentials, then registers and masks: the very last steps."""
    threads = t.threads_rec
    scratch = t.scratch
    area = (scratch, SCRATCH_PAGES * 4096)
    for ns_tid in t.threads[1:]:
        with Injector(t.host_tids[ns_tid], keep_scratch=True) as tinj:
            tinj.set_arg_area(*area)
            res_task.restore_creds(rctx, tinj, threads[ns_tid].get("creds"))
            tinj.saved_sigmask = threads[ns_tid].get("blocked", 0)
    # The leader last: it unmaps the scratch area when its injector closes.
    with Injector(t.host_pid) as inj:
        inj.set_arg_area(*area)
        rctx.args_area = scratch
        res_task.drain_signals(inj, scratch)
        res_task.arm_timers(rctx, t, inj)
        res_task.queue_signals(inj, scratch, t.pid, None, t.rec.get("shared_signals") or [])
        for ns_tid in t.threads:
            res_task.queue_signals(
                inj, scratch, t.pid, ns_tid, threads[ns_tid].get("signals") or []
            )
        res_task.restore_creds(rctx, inj, threads[t.pid].get("creds"))
        inj.saved_sigmask = threads[t.pid].get("blocked", 0)
    for ns_tid in t.threads:
        tid = t.host_tids[ns_tid]
        th = threads[ns_tid]
        ptrace.set_regs(tid, res_task.restartable_regs(th["regs"]))
        if th.get("xstate"):
            ptrace.set_xstate(tid, th["xstate"])
        ptrace.set_sigmask(tid, th.get("blocked", 0))
    if t.rec.get("state") == "stopped":
        os.kill(t.host_pid, signal.SIGSTOP)


# --- the vzctl command -------------------------------------------------------------------------


def restore_command(
    ct: Container, sub: str | None, dumpfile: str | None, skip_arpdetect: bool = False
) -> None:
    cfg = ct.cfg
    path = dumpfile or cfg.default_dumpfile()
    if sub == "resume":
        resume_frozen(ct, after_dump=False)
        log.info("Restoring completed successfully")
        return
    if sub == "kill":
        kill_frozen(ct)
        return
    if ct.is_running():
        raise RunningError("Unable to perform restore: container already running")
    try:
        ms = restore_container(
            ct, path, mode="undump" if sub == "undump" else "full", skip_arpdetect=skip_arpdetect
        )
    except VzError as e:
        if not isinstance(e, RestoreError):
            raise RestoreError(str(e)) from e
        raise
    if sub is None:
        remove_path(path)
    log.info(f"\trestore took {ms:.0f} ms", level=1)
    log.info("Restoring completed successfully")
