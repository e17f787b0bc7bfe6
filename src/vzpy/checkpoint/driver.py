"""The dump driver: `vzctl chkpnt` (vzctl-reference.md §1.5, DESIGN.md "Checkpoint").

A dump is a transaction (CRIU's rule): the exits are written first.  Whatever
fails, the tree is released from ptrace, the network lock is lifted and the
container is thawed (unless the caller asked to leave it frozen, as
``chkpnt --dump`` of a suspended container does), and the partial image
directory is removed.  The inventory is written last.

Order of work:
  freeze + seize every thread          (checkpoint/seize.py)
  walk the tree, refuse what we cannot save
  lock the network when there are sockets to read in repair mode
  per process: task, threads, fds, fs, mm + pages   (resources/*)
  container-wide: namespaces, mounts, shared memory, pipes...
  commit the image (inventory last), then kill / re-freeze / resume
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import time
from dataclasses import dataclass, field

from .. import __version__, log, procfs
from ..container import net
from ..container.ct import Container
from ..errors import (
    CheckpointError,
    NotRunningError,
    UnsupportedError,
    VzError,
)
from ..images import ImageWriter
from ..resources import base as res_base
from ..resources import files as res_files
from ..resources import memory as res_memory
from ..resources import task as res_task
from ..sys import ptrace
from ..sys.inject import Injector
from .seize import Seizer


@dataclass
class Proc:
    pid: int
    nspid: int
    ppid: int
    pgid: int
    sid: int
    tids: list[int]
    nstids: list[int]
    stat: procfs.Stat
    status: procfs.Status
    zombie: bool = False
    group_stopped: bool = False
    pidfd: int = -1

    @property
    def comm(self) -> str:
        return self.stat.comm


@dataclass
class DumpCtx:
    ct: Container
    img: ImageWriter
    reader: procfs.ProcReader
    procs: list[Proc] = field(default_factory=list)
    tidmap: dict[int, int] = field(default_factory=dict)  # host tid -> ns tid
    files: res_files.FileTable = field(default_factory=res_files.FileTable)
    pipes: res_files.Pipes = field(default_factory=res_files.Pipes)
    deleted_files: res_files.DeletedFiles = field(default_factory=res_files.DeletedFiles)
    shmem: res_memory.ShmemObjects = field(default_factory=res_memory.ShmemObjects)
    stats: dict = field(default_factory=lambda: {"pages_bytes": 0, "shmem_bytes": 0})
    init_pid: int = 0
    netns_locked: bool = False
    extra: dict = field(default_factory=dict)  # per-module state, by module name

    def ns_tid(self, host_tid: int) -> int:
        return self.tidmap.get(host_tid, 0)

    def scratch_of(self, inj) -> int:
        area = getattr(inj, "_vz_scratch", None)
        if area is None:
            area = inj.scratch(4096 * 2)
            inj._vz_scratch = area
        return area


@dataclass
class DumpResult:
    path: str
    frozen_ms: float = 0.0
    dump_ms: float = 0.0
    pages_bytes: int = 0
    processes: int = 0
    threads: int = 0


def _nsvals(v: tuple | list | None, fallback: int) -> int:
    return int(v[-1]) if v else fallback


def collect_tree(ctx: DumpCtx, seizer: Seizer) -> None:
    """Build the process list (parents first) from the container's cgroup."""
    ct = ctx.ct
    cg = ct.cgroup
    reader = ctx.reader
    init = ct.init_pid()
    if init is None:
        raise NotRunningError("Unable to setup checkpointing: container is not running")
    pids = set(cg.procs())
    procs: dict[int, Proc] = {}
    for pid in sorted(pids):
        try:
            st = reader.stat(pid)
            status = reader.status(pid)
        except procfs.NoSuchProcess:
            continue
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
        tids.remove(pid)
        tids.insert(0, pid)
        nstids = []
        for t in tids:
            try:
                nstids.append(_nsvals(reader.status(pid, tid=t).NSpid, t))
            except procfs.NoSuchProcess:
                nstids.append(0)
        p = Proc(
            pid=pid,
            nspid=_nsvals(status.NSpid, pid),
            ppid=0,
            pgid=_nsvals(status.NSpgid, st.pgrp),
            sid=_nsvals(status.NSsid, st.session),
            tids=tids,
            nstids=nstids,
            stat=st,
            status=status,
            zombie=st.state == "Z",
            group_stopped=any(t in seizer.group_stopped for t in tids),
        )
        procs[pid] = p
        for t, n in zip(tids, nstids, strict=True):
            ctx.tidmap[t] = n
    # zombie children are not in cgroup.procs: find them through /proc/PID/task/*/children
    for p in list(procs.values()):
        for t in p.tids:
            try:
                kids = reader.children(p.pid, tid=t)
            except (OSError, procfs.NoSuchProcess):
                continue
            for k in kids:
                if k not in procs:
                    try:
                        st = reader.stat(k)
                        status = reader.status(k)
                    except procfs.NoSuchProcess:
                        continue
                    if st.state != "Z":
                        continue
                    zp = Proc(k, _nsvals(status.NSpid, k), 0, _nsvals(status.NSpgid, st.pgrp),
                              _nsvals(status.NSsid, st.session), [k], [_nsvals(status.NSpid, k)],
                              st, status, zombie=True)  # fmt: skip
                    procs[k] = zp
                    ctx.tidmap[k] = zp.nspid
    for p in procs.values():
        if p.pid == init:
            p.ppid = 0
            continue
        parent = procs.get(p.stat.ppid)
        if parent is None:
            raise UnsupportedError(
                f"Can't dump task {p.nspid} ({p.comm}): its parent (host pid {p.stat.ppid}) is "
                "outside the container (a running `vzctl exec`/`enter` session?)"
            )
        p.ppid = parent.nspid
    # parents before children: breadth-first from init
    order: list[Proc] = []
    children: dict[int, list[Proc]] = {}
    for p in procs.values():
        if p.pid != init:
            children.setdefault(p.stat.ppid, []).append(p)
    queue = [procs[init]]
    while queue:
        p = queue.pop(0)
        order.append(p)
        queue.extend(sorted(children.get(p.pid, []), key=lambda c: c.nspid))
    if len(order) != len(procs):
        raise CheckpointError("The container's process tree changed during the dump")
    ctx.procs = order
    ctx.init_pid = init
    check_tree(ctx)


def check_tree(ctx: DumpCtx) -> None:
    """Refuse sessions and process groups vzpy cannot rebuild.

    A task whose session (or group) leader has exited is rebuilt through a
    helper task holding the leader's pid (restore/driver.py), which works
    when the task's parent is init: the helper's exit re-parents it there.
    """
    by_ns = {p.nspid: p for p in ctx.procs}
    for p in ctx.procs:
        if p.nspid == 1:
            continue
        if p.sid == 0 or p.pgid == 0:
            raise UnsupportedError(
                f"Can't dump task {p.nspid} ({p.comm}): its session or process group is "
                "outside the container"
            )
        parent = by_ns.get(p.ppid)
        inherits = parent is not None and parent.sid == p.sid
        if p.sid != p.nspid and not inherits and p.sid not in by_ns and p.ppid != 1:
            raise UnsupportedError(
                f"Can't dump task {p.nspid} ({p.comm}): its session leader {p.sid} has exited "
                f"and its parent {p.ppid} is not init"
            )
        if p.sid != p.nspid and p.sid in by_ns and not inherits:
            raise UnsupportedError(
                f"Can't dump task {p.nspid} ({p.comm}): it is in session {p.sid} of another branch of the tree"
            )
        if p.pgid != p.nspid and p.pgid not in by_ns and p.pgid != p.sid:
            raise UnsupportedError(
                f"Can't dump task {p.nspid} ({p.comm}): its process group {p.pgid} has no leader"
            )
        if len(p.tids) > 1 and p.zombie:
            raise UnsupportedError(f"Can't dump zombie {p.nspid} with threads")


def dump_container(
    ct: Container, image_dir: str, *, leave: str = "kill", lock_net: bool = True,
    writer=None, parent_pages=None,
) -> DumpResult:  # fmt: skip
    """Dump a running container into image_dir.

    leave: 'kill' (full chkpnt), 'frozen' (chkpnt --dump), 'running' (keep running).
    On failure the container is left as it was (running, or frozen if it was frozen).
    writer: an ImageWriter-like object to dump into instead of image_dir (vzmigrate
    streams the image with it); parent_pages: which pages the writer's parent image
    holds (checkpoint/precopy.py, used by resources/memory.dump_mm).
    """
    res_files.load_kinds()
    cg = ct.cgroup
    was_frozen = cg.is_frozen()
    t_start = time.monotonic()
    if writer is None and os.path.lexists(image_dir):
        if os.path.isdir(image_dir) and not os.listdir(image_dir):
            os.rmdir(image_dir)
        else:
            raise CheckpointError(f"Dump file {image_dir} already exists")
    _raise_nofile()
    img = writer if writer is not None else ImageWriter(image_dir, str(ct.ctid))
    ctx = DumpCtx(ct=ct, img=img, reader=procfs.ProcReader())
    if parent_pages is not None:
        ctx.extra["parent_pages"] = parent_pages
    seizer = Seizer(cg)
    ok = False
    netns_pid = None
    t_frozen = time.monotonic()
    try:
        seizer.seize_all()
        ctx.extra["frozen_monotonic_ns"] = time.monotonic_ns()  # resources/timens.py
        collect_tree(ctx, seizer)
        netns_pid = ctx.init_pid
        if lock_net:
            from ..sys import netlock

            netlock.lock_network(netns_pid)
            ctx.netns_locked = True
        _dump_processes(ctx, seizer)
        _dump_container_wide(ctx)
        result = DumpResult(
            path=image_dir,
            pages_bytes=ctx.stats["pages_bytes"] + ctx.stats["shmem_bytes"],
            processes=len(ctx.procs),
            threads=sum(len(p.tids) for p in ctx.procs),
        )
        img.commit(
            {
                "kind": "dump",
                "root_pid": ctx.init_pid,
                "hostname": socket.gethostname(),
                "page_size": 4096,
                "vzpy_version": __version__,
                "kernel": os.uname().release,
                "machine": os.uname().machine,
                "created": time.time(),
                "cpu_flags": sorted(_cpu_flags()),
                "dump_uptime_ns": time.clock_gettime_ns(time.CLOCK_BOOTTIME),
            }
        )
        result.dump_ms = (time.monotonic() - t_start) * 1000
        ok = True
    except BaseException:
        img.abort()
        if writer is None:
            shutil.rmtree(image_dir, ignore_errors=True)
        raise
    finally:
        ctx.files.close()
        for p in ctx.procs:
            if p.pidfd >= 0:
                os.close(p.pidfd)
        if not ok:
            # Back to how it was: running (or frozen if it was), network open.
            _dump_finish(ctx, False, leave)
            seizer.release(refreeze=was_frozen)
            if ctx.netns_locked:
                _unlock(netns_pid)
            if not was_frozen:
                cg.thaw_all()
    # Success: finish the requested way.
    _dump_finish(ctx, True, leave)
    if leave == "running":
        seizer.release(refreeze=False)
        if ctx.netns_locked:
            _unlock(netns_pid)
        cg.thaw_all()
    else:
        seizer.release(refreeze=True)  # frozen, still locked
        if leave == "kill":
            cg.kill_all()
    result.frozen_ms = (time.monotonic() - t_frozen) * 1000
    return result


def _dump_finish(ctx: DumpCtx, ok: bool, leave: str) -> None:
    for r in res_base.CT_RESOURCES:
        try:
            r.dump_finish(ctx, ok, leave)
        except Exception as e:  # noqa: BLE001 - every resource gets its turn
            log.error(f"Warning: finishing the dump of {r.name} failed: {e}")


def _unlock(netns_pid: int | None) -> None:
    if netns_pid is None:
        return
    from ..sys import netlock

    try:
        netlock.unlock_network(netns_pid)
    except Exception as e:  # noqa: BLE001 - never leave a failure path half-done
        log.error(f"Warning: unable to lift the network lock: {e}")


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _dump_processes(ctx: DumpCtx, seizer: Seizer) -> None:
    img = ctx.img
    tree = []
    for p in ctx.procs:
        tree.append(
            {
                "pid": p.nspid,
                "ppid": p.ppid,
                "pgid": p.pgid,
                "sid": p.sid,
                "threads": p.nstids,
                "host_pid": p.pid,
            }
        )
    for p in ctx.procs:
        if p.zombie:
            img.write(
                "task",
                {"pid": p.nspid, "state": "zombie", "exit_code": p.stat.exit_code, "comm": p.comm,
                 "exit_signal": p.stat.exit_signal},
                name=p.nspid,
            )  # fmt: skip
            continue
        try:
            p.pidfd = os.pidfd_open(p.pid)
        except OSError as e:
            raise CheckpointError(f"Task {p.nspid} vanished during the dump: {e.strerror}") from e
        _dump_one(ctx, p)
    img.write("pstree", {"tasks": tree})


def _dump_one(ctx: DumpCtx, p: Proc) -> None:
    img = ctx.img
    leader = p.tids[0]
    try:
        with Injector(leader) as inj:
            task = res_task.dump_task(ctx, p, inj)
            threads = [res_task.dump_thread(ctx, p, leader, inj)]
            mm = res_memory.dump_mm(ctx, p, inj)
            extras = {}
            for r in res_base.TASK_RESOURCES:
                rec = r.dump(ctx, p, inj)
                if rec is not None:
                    extras[r.name] = rec
            inj.free_scratch()
        for tid in p.tids[1:]:
            with Injector(tid) as tinj:
                threads.append(res_task.dump_thread(ctx, p, tid, tinj))
                tinj.free_scratch()
    except (OSError, ptrace.TaskGone) as e:
        if isinstance(e, VzError):
            raise
        raise CheckpointError(f"Can't dump task {p.nspid} ({p.comm}): {e}") from e
    fdinfo = ctx.files.dump_fds(ctx, p)
    fs = {
        "fs_id": p.nspid,
        "cwd": _readlink(f"/proc/{p.pid}/cwd"),
        "root": _readlink(f"/proc/{p.pid}/root"),
        "umask": p.status.Umask,
    }
    img.write("task", task, name=p.nspid)
    for th in threads:
        img.write("thread", th, name=th["tid"])
    img.write("mm", mm, name=p.nspid)
    img.write("fdinfo", fdinfo, name=p.nspid)
    img.write("fs", fs, name=p.nspid)
    for extra_name, rec in extras.items():
        img.write(extra_name, rec, name=p.nspid)


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _dump_container_wide(ctx: DumpCtx) -> None:
    img = ctx.img
    img.write("files", {"entries": ctx.files.entries})
    img.write("shmem_objects", {"objects": ctx.shmem.records()})
    from ..sys.libc import run_in_ns

    uts = run_in_ns(ctx.init_pid, ("uts",), os.uname)
    img.write("uts_ns", {"nodename": uts.nodename, "domainname": _domainname(ctx.init_pid)})
    for r in res_base.CT_RESOURCES:
        r.dump(ctx)


def _domainname(pid: int) -> str:
    from ..sys.libc import run_in_ns

    def read() -> str:
        with open("/proc/sys/kernel/domainname") as f:
            return f.read().strip()

    return run_in_ns(pid, ("uts",), read)


# --- the vzctl command -------------------------------------------------------------------------


def chkpnt_command(
    ct: Container, sub: str | None, dumpfile: str | None, keep_running: bool = False
) -> None:
    cfg = ct.cfg
    dumpfile = dumpfile or cfg.default_dumpfile()
    cg = ct.cgroup
    if sub == "resume":
        resume_frozen(ct, after_dump=True)
        return
    if sub == "kill":
        kill_frozen(ct)
        return
    if not ct.is_running():
        raise NotRunningError("Unable to setup checkpointing: container is not running")
    log.info("Setting up checkpoint...")
    if sub == "suspend":
        log.info("\tsuspend...")
        try:
            cg.freeze()
        except (OSError, TimeoutError) as e:
            cg.thaw_all()
            raise CheckpointError(f"Can not suspend container: {e}") from e
        log.info("Checkpointing completed successfully")
        return
    if sub == "dump":
        if not cg.is_frozen():
            raise CheckpointError(
                "Can not dump container: it is not suspended (use --suspend first)"
            )
        log.info("\tdump...")
        try:
            dump_container(ct, dumpfile, leave="frozen")
        except VzError as e:
            log.error(f"Can not dump container: {e}")
            raise CheckpointError("Checkpointing failed") from e
        except OSError as e:
            log.error(f"Can not dump container: {e}")
            raise CheckpointError("Checkpointing failed") from e
        net.withdraw(ct.ctid, ct.ips(), cfg.get("NEIGHBOUR_DEVS"))
        log.info("Checkpointing completed successfully")
        return
    # full checkpoint: suspend, dump, kill, then the container is stopped and unmounted
    log.info("\tsuspend...")
    log.info("\tdump...")
    try:
        r = dump_container(ct, dumpfile, leave="running" if keep_running else "kill")
    except VzError as e:
        log.error(f"Can not dump container: {e}")
        raise CheckpointError("Checkpointing failed") from e
    except OSError as e:
        log.error(f"Can not dump container: {e}")
        raise CheckpointError("Checkpointing failed") from e
    if not keep_running:
        log.info("\tkill...")
        ct.cleanup_runtime(keep_mount=True)
        if ct.is_mounted():
            ct.umount(require_mounted=False)
    log.info(
        f"\tfrozen {r.frozen_ms:.0f} ms, dump {r.dump_ms:.0f} ms, {r.pages_bytes} bytes of memory",
        level=1,
    )
    log.info("Checkpointing completed successfully")


def resume_frozen(ct: Container, after_dump: bool) -> None:
    """`chkpnt --resume` / `restore --resume`: lift the lock, thaw, take the IPs back.

    after_dump: the container was dumped in place (`chkpnt --dump`), so state
    the dump left behind (sockets in repair mode) is undone first.
    """
    if not ct.is_running():
        raise NotRunningError("Container is not running")
    log.info("Resuming...")
    pid = ct.init_pid()
    if pid is not None:
        if after_dump:
            res_files.load_kinds()
            for r in res_base.CT_RESOURCES:
                r.resume_dumped(ct)  # e.g. sockets left in repair mode by --dump
        _unlock(pid)
    ct.cgroup.thaw()
    with_routes(ct)
    net.announce(ct.ctid, ct.ips(), ct.cfg.get("NEIGHBOUR_DEVS"))


def kill_frozen(ct: Container) -> None:
    """`chkpnt --kill` / `restore --kill`: kill a frozen container, keep it mounted."""
    if not ct.is_running():
        raise NotRunningError("Container is not running")
    log.info("Killing...")
    ct.cgroup.kill_all()
    ct.cleanup_runtime(keep_mount=True)


def with_routes(ct: Container) -> None:
    """Re-add the host routes of a container's IPs (removed by --dump)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=net.host_ifname(ct.ctid))
        if idx:
            net.add_routes(ipr, idx[0], ct.ips())
