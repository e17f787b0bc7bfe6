"""Per-process and per-thread core state: registers, signals, timers, credentials, limits.

Read from outside where the kernel allows (/proc, ptrace regsets, sigmask,
PEEKSIGINFO, get_robust_list, rseq configuration); the rest (signal actions,
itimers, posix timer values, sigaltstack, the clear-tid address, securebits,
pdeath signal, subreaper) by syscalls injected into the stopped task.

Restore order inside a task, and why (restore/driver.py calls these):

  restore_task            sigactions, rlimits, personality, umask, subreaper,
                          oom_score_adj, comm      (leader, before threads exist)
  restore_posix_timers    timer_create with the dumped ids, *disarmed*: after
                          the threads exist (SIGEV_THREAD_ID needs its target)
  restore_thread_state    per thread: sigaltstack, robust list, rseq,
                          clear-tid, pdeath signal, comm, then its seccomp
                          filters (seccomp.py) while the thread is still root:
                          installing a filter needs CAP_SYS_ADMIN or
                          no_new_privs, and TSYNC needs every thread to exist
  arm_timers              itimers and posix timers get their remaining time as
                          late as possible, just before the dumped pending
                          signals are queued, so that no time passes on them
                          while the restore goes on
  restore_creds           last injected calls of each thread: groups, ids,
                          capabilities, securebits, no_new_privs; then the
                          pdeath signal and dumpable flag again, since
                          commit_creds() resets both when the euid changes
  registers, blocked mask the driver, at the final stop

What is not restored exactly, and why (the kernel gives no way to):
  - timer_getoverrun() of a timer whose last signal was delivered before the
    dump reads 0 after restore until its next signal: it_overrun_last can
    only be set by a delivery, and timer_settime() zeroes it.
  - a timer whose signal was pending at dump is made to fire again at once
    (so the signal is the timer's own and re-arms it on delivery); overruns
    counted before the dump are not known to userspace and start again from
    the restore.
  - a CLOCK_REALTIME timer armed with TIMER_ABSTIME comes back relative
    (timer_gettime does not say which it was): it no longer follows clock
    steps made while it runs.
Seccomp strict mode, a hard rlimit above the restorer's own and a negative
oom_score_adj (both need CAP_SYS_RESOURCE, which the test nodes lack) are
refused at dump time.
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import struct
import time

from .. import procfs
from ..errors import RestoreError, UnsupportedError
from ..sys import ptrace
from . import seccomp

SIGKILL, SIGSTOP = 9, 19
NSIG = 64

SYS_rt_sigaction = 13
SYS_getitimer = 36
SYS_setitimer = 38
SYS_sigaltstack = 131
SYS_personality = 135
SYS_prctl = 157
SYS_setrlimit = 160
SYS_set_tid_address = 218
SYS_timer_create = 222
SYS_timer_settime = 223
SYS_timer_gettime = 224
SYS_timer_getoverrun = 225
SYS_timer_delete = 226
SYS_set_robust_list = 273
SYS_get_robust_list = 274
SYS_rt_tgsigqueueinfo = 297
SYS_rt_sigqueueinfo = 129
SYS_rt_sigtimedwait = 128
SYS_prlimit64 = 302
SYS_rseq = 334
SYS_setresuid = 117
SYS_setresgid = 119
SYS_setgroups = 116
SYS_setfsuid = 122
SYS_setfsgid = 123
SYS_capset = 126
SYS_umask = 95

PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2
PR_GET_DUMPABLE, PR_SET_DUMPABLE = 3, 4
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_GET_SECUREBITS, PR_SET_SECUREBITS = 27, 28
PR_SET_CHILD_SUBREAPER, PR_GET_CHILD_SUBREAPER = 36, 37
PR_SET_NO_NEW_PRIVS = 38
PR_GET_TID_ADDRESS = 40
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
# include/uapi/linux/prctl.h, Linux 6.17+: timer_create() takes the id to
# allocate from *timer_id (probed on 6.18: works; EBUSY for an id in use).
PR_TIMER_CREATE_RESTORE_IDS = 77
PR_TIMER_CREATE_RESTORE_IDS_OFF, PR_TIMER_CREATE_RESTORE_IDS_ON = 0, 1
SECBIT_NO_SETUID_FIXUP = 1 << 2
SECBIT_KEEP_CAPS = 1 << 4
CAP_SYS_RESOURCE = 24
LINUX_CAPABILITY_VERSION_3 = 0x20080522

SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD_ID = 0, 1, 4
ITIMER_REAL = 0
SI_TIMER = -2
# How far the create-and-delete fallback walks to reach a timer id.
MAX_TIMER_ID_WALK = 100_000

REGS = (
    "r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss "
    "fs_base gs_base ds es fs gs".split()
)
REGS_C = (
    "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
    "fs_base gs_base ds es fs gs".split()
)

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def regs_to_record(regs: ptrace.UserRegs) -> dict:
    return {n: getattr(regs, c) & 0xFFFFFFFFFFFFFFFF for n, c in zip(REGS, REGS_C, strict=True)}


def record_to_regs(rec: dict) -> ptrace.UserRegs:
    regs = ptrace.UserRegs()
    for n, c in zip(REGS, REGS_C, strict=True):
        setattr(regs, c, rec[n])
    return regs


ERESTART_RESTARTBLOCK = 516
SYS_nanosleep, SYS_clock_nanosleep = 35, 230
TIMER_ABSTIME = 1
U64 = 0xFFFFFFFFFFFFFFFF


def restartable_regs(rec: dict) -> ptrace.UserRegs:
    """The dumped registers, with a sleep interrupted by the dump made to go on.

    A thread seized inside nanosleep/clock_nanosleep/futex/poll returns
    -ERESTART_RESTARTBLOCK; the kernel would continue through
    restart_syscall() with state kept in the task's restart_block, which a
    new task does not have.  Instead the syscall is executed again: a
    relative nanosleep with the remaining time the kernel wrote into `rem`
    when it was interrupted (else the full time again: a sleep may last
    longer, never shorter), anything else with its original arguments.
    """
    regs = record_to_regs(rec)
    if regs.rax == (-ERESTART_RESTARTBLOCK) & U64 and regs.orig_rax < (1 << 63):
        nr = regs.orig_rax
        if nr == SYS_nanosleep and regs.rsi:
            regs.rdi = regs.rsi
        elif nr == SYS_clock_nanosleep and not regs.rsi & TIMER_ABSTIME and regs.r10:
            regs.rdx = regs.r10
        regs.rax = nr
        regs.rip -= 2
        regs.orig_rax = U64  # -1: no further restart handling by the kernel
    return regs


def _s32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _has_cap(capeff: int, cap: int) -> bool:
    return bool(capeff >> cap & 1)


def _own_capeff() -> int:
    return procfs.ProcReader().status(os.getpid()).CapEff


# --- dump ----------------------------------------------------------------------------


def dump_task(ctx, proc, inj) -> dict:
    pid = proc.pid
    reader = ctx.reader
    who = f"task {proc.nspid} ({proc.comm})"
    can_resource = _has_cap(_own_capeff(), CAP_SYS_RESOURCE)
    lim = reader.limits(pid)
    rlimits = []
    for res, (cur, mx) in sorted(lim.by_resource.items()):
        own = resource.getrlimit(res)[1] & U64
        if mx > own and not can_resource:
            # The restored task inherits the restorer's limits; raising a hard
            # limit needs CAP_SYS_RESOURCE (kernel-notes: "Capabilities").
            raise UnsupportedError(
                f"Can't dump {who}: its hard limit of resource {res} ({mx}) is above the "
                f"restorer's own ({own}), and raising it needs CAP_SYS_RESOURCE"
            )
        rlimits.append({"resource": res, "cur": cur, "max": mx})
    sigactions = []
    scratch = ctx.scratch_of(inj)
    for sig in range(1, NSIG + 1):
        if sig in (SIGKILL, SIGSTOP):
            continue
        handler, flags, restorer, mask = inj.rt_sigaction_get(sig)
        if handler or flags or restorer or mask:
            sigactions.append(
                {
                    "signo": sig,
                    "handler": handler,
                    "flags": flags,
                    "restorer": restorer,
                    "mask": mask,
                }
            )
    itimers = []
    for which in (0, 1, 2):
        inj.call(SYS_getitimer, which, scratch)
        isec, iusec, vsec, vusec = struct.unpack("qqqq", inj.read(scratch, 32))
        if vsec or vusec or isec or iusec:
            itimers.append(
                {
                    "which": which,
                    "interval_sec": isec,
                    "interval_usec": iusec,
                    "value_sec": vsec,
                    "value_usec": vusec,
                }
            )
    posix_timers = [
        _dump_posix_timer(ctx, proc, inj, t, scratch)
        for t in sorted(reader.timers(pid), key=lambda t: t.id)
    ]
    shared = [
        {"signo": ptrace.siginfo_header(si)[0], "raw": si}
        for si in ptrace.peek_siginfo(proc.tids[0], True)
    ]
    with open(f"/proc/{pid}/personality") as f:
        pers = int(f.read(), 16)
    with open(f"/proc/{pid}/oom_score_adj") as f:
        oom = int(f.read())
    if oom < 0 and not can_resource:
        # Lowering oom_score_adj below its minimum (0 for a task nobody
        # privileged touched) needs CAP_SYS_RESOURCE (fs/proc/base.c).
        raise UnsupportedError(
            f"Can't dump {who}: its oom_score_adj {oom} is negative, and setting that "
            "needs CAP_SYS_RESOURCE, which this node lacks"
        )
    inj.write(scratch, b"\0\0\0\0")
    inj.call(SYS_prctl, PR_GET_CHILD_SUBREAPER, scratch)
    is_subreaper = bool(struct.unpack("i", inj.read(scratch, 4))[0])
    return {
        "pid": proc.nspid,
        "state": "stopped" if proc.group_stopped else "alive",
        "comm": proc.stat.comm,
        "personality": pers,
        "flags": proc.stat.flags,
        "exe": _readlink(f"/proc/{pid}/exe"),
        "cmdline": [a.decode(errors="replace") for a in reader.cmdline(pid)],
        "rlimits": rlimits,
        "sigactions": sigactions,
        "shared_signals": shared,
        "itimers": itimers,
        "posix_timers": posix_timers,
        "oom_score_adj": oom,
        "child_subreaper": is_subreaper,
        "start_time": proc.stat.starttime,
        "exit_signal": proc.stat.exit_signal,
        "umask": proc.status.Umask,
    }


def _dump_posix_timer(ctx, proc, inj, t: procfs.PosixTimer, scratch: int) -> dict:
    """One timer: its identity from /proc/PID/timers, its times from the task."""
    who = f"task {proc.nspid} ({proc.comm})"
    notify = t.sigev_notify
    if notify not in (SIGEV_SIGNAL, SIGEV_NONE, SIGEV_SIGNAL | SIGEV_THREAD_ID):
        raise UnsupportedError(
            f"Can't dump {who}: posix timer {t.id} has notification {t.notify!r}"
        )
    notify_tid = 0
    if notify & SIGEV_THREAD_ID:
        # /proc shows the target in the reader's (host) pid namespace.
        notify_tid = ctx.ns_tid(t.notify_pid)
        if not notify_tid or t.notify_pid not in proc.tids:
            raise UnsupportedError(
                f"Can't dump {who}: posix timer {t.id} signals thread {t.notify_pid}, "
                "which is not one of its threads"
            )
    # itimerspec { it_interval, it_value }, both { tv_sec, tv_nsec }
    inj.call(SYS_timer_gettime, t.id, scratch)
    isec, insec, vsec, vnsec = struct.unpack("qqqq", inj.read(scratch, 32))
    overrun = inj.syscall(SYS_timer_getoverrun, t.id)
    return {
        "timer_id": t.id,
        "clock_id": t.clock_id & 0xFFFFFFFF,  # CPU clocks are negative clockid_t
        "sigev_notify": notify,
        "sigev_signo": t.signo,
        "sigev_value": t.sival_ptr,
        "notify_tid": notify_tid,
        "overrun": max(overrun, 0),
        "interval_sec": isec,
        "interval_nsec": insec,
        "value_sec": vsec,
        "value_nsec": vnsec,
    }


def _readlink(p: str) -> str:
    try:
        return os.readlink(p)
    except OSError:
        return ""


def dump_thread(ctx, proc, tid: int, inj) -> dict:
    # The registers as they were when seized, not those of our injected calls.
    regs = inj.saved_regs if inj.saved_regs is not None else ptrace.get_regs(tid)
    xstate = ptrace.get_xstate(tid)
    blocked = inj.saved_sigmask if inj.saved_sigmask is not None else ptrace.get_sigmask(tid)
    scratch = ctx.scratch_of(inj)
    inj.call(SYS_sigaltstack, 0, scratch)
    # stack_t { void *ss_sp; int ss_flags; size_t ss_size; }
    ss_sp, ss_flags, ss_size = struct.unpack("Qi4xQ", inj.read(scratch, 24))
    inj.call(SYS_prctl, PR_GET_TID_ADDRESS, scratch)
    clear_tid = struct.unpack("Q", inj.read(scratch, 8))[0]
    inj.call(SYS_prctl, PR_GET_PDEATHSIG, scratch)
    pdeath = struct.unpack("i", inj.read(scratch, 4))[0]
    head = ctypes.c_uint64()
    length = ctypes.c_uint64()
    rl = _libc.syscall(SYS_get_robust_list, tid, ctypes.byref(head), ctypes.byref(length))
    robust, robust_len = (head.value, length.value) if rl == 0 else (0, 0)
    rseq = ptrace.get_rseq_config(tid)
    status = ctx.reader.status(proc.pid, tid=tid)
    secbits = inj.call(SYS_prctl, PR_GET_SECUREBITS)
    signals = [
        {"signo": ptrace.siginfo_header(si)[0], "raw": si} for si in ptrace.peek_siginfo(tid, False)
    ]
    with open(f"/proc/{proc.pid}/task/{tid}/comm") as f:
        comm = f.read().rstrip("\n")
    return {
        "tid": ctx.ns_tid(tid),
        "arch": "x86_64",
        "regs": regs_to_record(regs),
        "xstate": xstate,
        "blocked": blocked,
        "signals": signals,
        "sigaltstack": {"sp": ss_sp, "size": ss_size, "flags": ss_flags},
        "clear_tid_addr": clear_tid,
        "robust_list": robust,
        "robust_list_len": robust_len,
        "rseq_addr": rseq.rseq_abi_pointer,
        "rseq_len": rseq.rseq_abi_size,
        "rseq_sig": rseq.signature,
        "pdeath_sig": pdeath,
        "creds": _creds(status, secbits),
        "seccomp_mode": int(status.Seccomp or 0),
        "comm": comm,
        "in_syscall": regs.orig_rax if regs.orig_rax < (1 << 63) else -1,
    }


def _creds(st: procfs.Status, secbits: int) -> dict:
    uid, euid, suid, fsuid = st.Uid
    gid, egid, sgid, fsgid = st.Gid
    return {
        "uid": uid, "euid": euid, "suid": suid, "fsuid": fsuid,
        "gid": gid, "egid": egid, "sgid": sgid, "fsgid": fsgid,
        "groups": list(st.Groups),
        "cap_inh": st.CapInh, "cap_prm": st.CapPrm, "cap_eff": st.CapEff,
        "cap_bnd": st.CapBnd, "cap_amb": st.CapAmb,
        "secbits": secbits,
        "no_new_privs": bool(st.NoNewPrivs),
    }  # fmt: skip


# --- restore ---------------------------------------------------------------------------


def restore_task(rctx, task, inj, rec: dict) -> None:
    """Process-wide state (run in the leader before threads are created)."""
    scratch = rctx.args_area
    # Every action: the dumped one, or the default.  The task was cloned from
    # the restore stub (a Python process: its SIGINT handler, SIGPIPE ignored),
    # and only non-default actions are in the image.
    dumped = {sa["signo"]: sa for sa in rec.get("sigactions") or []}
    for sig in range(1, NSIG + 1):
        if sig in (SIGKILL, SIGSTOP):
            continue
        sa = dumped.get(sig)
        if sa is not None:
            inj.rt_sigaction_set(sig, sa["handler"], sa["flags"], sa["restorer"], sa["mask"])
        else:
            inj.rt_sigaction_set(sig, 0, 0, 0, 0)
    for r in rec.get("rlimits") or []:
        inj.write(scratch, struct.pack("QQ", r["cur"], r["max"]))
        rc = inj.syscall(SYS_prlimit64, 0, r["resource"], scratch, 0)
        if rc < 0:
            raise RestoreError(
                f"Can't restore rlimit {r['resource']} = {r['cur']}:{r['max']} of task {task.pid}: "
                f"{os.strerror(-rc)} (a hard limit above the restorer's own cannot be set)"
            )
    if rec.get("personality") is not None:
        rc = inj.syscall(SYS_personality, rec["personality"])
        if rc < 0:
            raise RestoreError(
                f"Can't set personality {rec['personality']:#x} of task {task.pid}: {os.strerror(-rc)}"
            )
    if rec.get("umask") is not None:
        inj.syscall(SYS_umask, rec["umask"])
    if rec.get("child_subreaper"):
        inj.call(SYS_prctl, PR_SET_CHILD_SUBREAPER, 1)
    oom = rec.get("oom_score_adj")
    if oom is not None:
        try:
            with open(f"/proc/{task.host_pid}/oom_score_adj", "w") as f:
                f.write(str(oom))
        except OSError as e:
            raise RestoreError(
                f"Can't set oom_score_adj {oom} of task {task.pid}: {e.strerror}"
            ) from e
    if rec.get("comm"):
        name = rec["comm"].encode()[:15] + b"\0"
        inj.write(scratch, name)
        inj.syscall(SYS_prctl, PR_SET_NAME, scratch)


# --- posix timers and itimers ------------------------------------------------------------


def _sigevent(t: dict) -> bytes:
    """struct sigevent (64 bytes): sigval_t sigev_value; int sigev_signo;
    int sigev_notify; union { int _pad[12]; int _tid; ... } at offset 16."""
    return struct.pack(
        "Qiii44x",
        t.get("sigev_value") or 0,
        t.get("sigev_signo") or 0,
        t.get("sigev_notify") or 0,
        t.get("notify_tid") or 0,
    )


def restore_posix_timers(rctx, task, inj, rec: dict) -> None:
    """Create the task's posix timers with their dumped ids, disarmed.

    Needs every thread of the task (a SIGEV_THREAD_ID target must exist);
    ``arm_timers`` sets their times at the end.
    """
    timers = sorted(rec.get("posix_timers") or [], key=lambda t: t["timer_id"])
    if not timers:
        return
    create_posix_timers(inj, rctx.args_area, timers, who=f"task {task.pid}")
    rctx.extra.setdefault("task.posix_timers", {})[task.pid] = timers


def create_posix_timers(
    inj, scratch: int, timers: list[dict], *, choose_ids: bool = True, who: str = "the task"
) -> None:
    """timer_create() each of `timers` (sorted by id) in the task with its id.

    With PR_TIMER_CREATE_RESTORE_IDS on (Linux 6.17+; `choose_ids`),
    timer_create() allocates the id it finds in *timer_id.  Without it, ids
    are handed out in increasing order per process (from 0 in a new one), so
    dummies are created and deleted until each id comes up.
    """
    sev, tid_addr = scratch, scratch + 64
    chosen = choose_ids and (
        inj.syscall(SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON) == 0
    )
    try:
        for t in timers:
            want = t["timer_id"]
            inj.write(sev, _sigevent(t))
            clock = _s32(t["clock_id"])
            for _ in range(1 if chosen else MAX_TIMER_ID_WALK):
                inj.write(tid_addr, struct.pack("i", want))
                rc = inj.syscall(SYS_timer_create, clock, sev, tid_addr)
                if rc < 0:
                    raise RestoreError(
                        f"Can't create posix timer {want} (clock {clock}) of {who}: {os.strerror(-rc)}"
                    )
                got = struct.unpack("i", inj.read(tid_addr, 4))[0]
                if got == want:
                    break
                inj.syscall(SYS_timer_delete, got)
                if got > want:
                    raise RestoreError(f"Can't recreate posix timer {want} of {who}: got id {got}")
            else:
                raise RestoreError(f"Can't recreate posix timer {want} of {who}: its id is too far")
    finally:
        if chosen:
            inj.syscall(SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF)


def _timer_siginfo(raw: bytes) -> tuple[int, int] | None:
    """(timer id, sigev_value) of a pending posix timer signal, else None.

    siginfo_t for SI_TIMER: si_signo, si_errno, si_code, pad, then
    _timer { int si_tid; int si_overrun; sigval_t si_sigval; ... } at 16."""
    _signo, _errno, code = ptrace.siginfo_header(raw)
    if code != SI_TIMER:
        return None
    tid, _overrun, value = struct.unpack_from("iiQ", raw, 16)
    return tid, value


def _take_timer_signals(sigs: list[dict], ids: set[int]) -> set[int]:
    """Remove from `sigs` (in place) the pending signals of timers in `ids`;
    return the ids whose signal was there."""
    found: set[int] = set()
    keep = []
    for s in sigs:
        ti = _timer_siginfo(s["raw"])
        if ti is not None and ti[0] in ids:
            found.add(ti[0])
        else:
            keep.append(s)
    sigs[:] = keep
    return found


def arm_timers(rctx, task, inj) -> None:
    """Give itimers and posix timers their remaining time (relative, as
    dumped).  Run after pending signals were drained and before the dumped
    ones are queued: a timer whose signal was pending at dump fires at once
    instead, so that the pending signal is the timer's own (which re-arms a
    periodic timer and counts overruns when it is delivered), and its copy
    is taken out of the signals to queue."""
    rec = task.rec
    scratch = rctx.args_area
    for it in rec.get("itimers") or []:
        value = it["value_sec"] * 1_000_000 + it["value_usec"]
        if it["which"] == ITIMER_REAL:
            if not value and (it["interval_sec"] or it["interval_usec"]):
                # Fired and its SIGALRM not taken yet: the kernel re-arms a
                # periodic ITIMER_REAL only when that signal is dequeued, and
                # only if it is armed.  Fire it now (the SIGALRM is queued
                # once: a second one of a legacy signal merges).
                value = 1
        elif value > _cpu_itimer_tick_us():
            # set_cpu_itimer() adds one tick to the value it is given, which
            # getitimer() then shows: take it off again.
            value -= _cpu_itimer_tick_us()
        if not value:
            continue
        inj.write(
            scratch,
            struct.pack("qqqq", it["interval_sec"], it["interval_usec"], *divmod(value, 1_000_000)),
        )
        inj.call(SYS_setitimer, it["which"], scratch, 0)
    timers = rctx.extra.get("task.posix_timers", {}).get(task.pid) or []
    if not timers:
        return
    ids = {t["timer_id"] for t in timers}
    pending = _take_timer_signals(rec.setdefault("shared_signals", []), ids)
    for th in (task.threads_rec or {}).values():
        pending |= _take_timer_signals(th.setdefault("signals", []), ids)
    fired = []
    for t in timers:
        value = (t["value_sec"], t["value_nsec"])
        interval = (t["interval_sec"], t["interval_nsec"])
        if t["timer_id"] in pending:
            if interval == (0, 0) and value != (0, 0):
                # A one-shot timer armed again after its signal was queued: that
                # signal is stale (the kernel drops it on delivery); arm as dumped.
                pass
            elif t["sigev_notify"] != SIGEV_NONE:
                value = (0, 1)
                fired.append(t)
        if value == (0, 0):
            continue  # disarmed
        inj.write(scratch, struct.pack("qqqq", *interval, *value))
        rc = inj.syscall(SYS_timer_settime, t["timer_id"], 0, scratch, 0)
        if rc < 0:
            raise RestoreError(
                f"Can't arm posix timer {t['timer_id']} of task {task.pid}: {os.strerror(-rc)}"
            )
    for t in fired:
        _wait_timer_signal(rctx, task, t)


_tick_us: int | None = None


def _cpu_itimer_tick_us() -> int:
    """The kernel tick in us (1e6 / CONFIG_HZ), measured once on ourselves: an
    ITIMER_VIRTUAL of 1000 s reads 1000 s plus one tick."""
    global _tick_us
    if _tick_us is None:
        old = signal.setitimer(signal.ITIMER_VIRTUAL, 1000.0)
        try:
            extra = signal.getitimer(signal.ITIMER_VIRTUAL)[0] - 1000.0
        finally:
            signal.setitimer(signal.ITIMER_VIRTUAL, *old)
        ticks = [1_000_000 // hz for hz in (1000, 300, 250, 100)]
        _tick_us = min(ticks, key=lambda t: abs(t - extra * 1e6))
    return _tick_us


def _wait_timer_signal(rctx, task, t: dict, timeout: float = 0.5) -> None:
    """Wait until the signal of a timer armed to fire at once is queued."""
    sig = t["sigev_signo"]
    if t["sigev_notify"] & SIGEV_THREAD_ID:
        host, field = task.host_tids.get(t["notify_tid"], task.host_pid), "SigPnd"
    else:
        host, field = task.host_pid, "ShdPnd"
    reader = procfs.ProcReader()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = reader.status(task.host_pid, tid=host)
        if getattr(st, field) >> (sig - 1) & 1:
            return
        time.sleep(0.001)
    raise RestoreError(
        f"The signal of posix timer {t['timer_id']} of task {task.pid} was not queued"
    )


def restore_thread_state(rctx, task, tid_host: int, inj, th: dict) -> None:
    """Thread-local state that needs injected calls (run in that thread)."""
    scratch = rctx.args_area
    ss = th.get("sigaltstack") or {}
    if ss.get("sp") or ss.get("size"):
        # stack_t { void *ss_sp; int ss_flags; size_t ss_size; }; SS_ONSTACK can't be set.
        inj.write(scratch, struct.pack("QiiQ", ss["sp"], ss["flags"] & ~1, 0, ss["size"]))
        inj.syscall(SYS_sigaltstack, scratch, 0)
    if th.get("robust_list"):
        inj.syscall(SYS_set_robust_list, th["robust_list"], th["robust_list_len"])
    inj.syscall(SYS_set_tid_address, th.get("clear_tid_addr") or 0)
    if th.get("rseq_addr"):
        rc = inj.syscall(SYS_rseq, th["rseq_addr"], th["rseq_len"], 0, th["rseq_sig"])
        if rc < 0:
            raise RestoreError(f"Can't register rseq of thread {th['tid']}: {os.strerror(-rc)}")
    if th.get("pdeath_sig"):
        inj.syscall(SYS_prctl, PR_SET_PDEATHSIG, th["pdeath_sig"])
    if th.get("comm"):
        inj.write(scratch, th["comm"].encode()[:15] + b"\0")
        inj.syscall(SYS_prctl, PR_SET_NAME, scratch)
    seccomp.restore_thread_filters(rctx, task, inj, th["tid"])


def drain_signals(inj, scratch: int) -> None:
    """Consume every pending signal (left by the restore itself, e.g. SIGCHLD)."""
    # rt_sigtimedwait(all signals, NULL, {0,0}, 8)
    inj.write(scratch, struct.pack("Q", 0xFFFFFFFFFFFFFFFF & ~((1 << 8) | (1 << 18))))
    inj.write(scratch + 16, struct.pack("qq", 0, 0))
    for _ in range(200):
        rc = inj.syscall(SYS_rt_sigtimedwait, scratch, 0, scratch + 16, 8)
        if rc < 0:
            break


def queue_signals(inj, scratch: int, tgid_ns: int, tid_ns: int | None, sigs: list[dict]) -> None:
    for s in sigs:
        raw = s["raw"]
        inj.write(scratch + 64, raw)
        if tid_ns is None:
            rc = inj.syscall(SYS_rt_sigqueueinfo, tgid_ns, s["signo"], scratch + 64)
        else:
            rc = inj.syscall(SYS_rt_tgsigqueueinfo, tgid_ns, tid_ns, s["signo"], scratch + 64)
        if rc < 0:
            raise RestoreError(f"Can't queue signal {s['signo']} to {tgid_ns}: {os.strerror(-rc)}")


# --- credentials -----------------------------------------------------------------------------


def _cap_last() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except OSError:
        return 40


def _capset(inj, scratch: int, eff: int, prm: int, inh: int) -> None:
    # header { u32 version; int pid } + data[2] { u32 effective, permitted, inheritable }
    lo = struct.pack("III", eff & 0xFFFFFFFF, prm & 0xFFFFFFFF, inh & 0xFFFFFFFF)
    hi = struct.pack("III", eff >> 32, prm >> 32, inh >> 32)
    inj.write(scratch, struct.pack("Ii", LINUX_CAPABILITY_VERSION_3, 0) + lo + hi)
    inj.call(SYS_capset, scratch, scratch + 8)


def restore_creds(rctx, inj, c: dict) -> None:
    """Groups, ids, capabilities, securebits, no_new_privs of one thread (the
    calls are per thread: no glibc set*id broadcast here).  The last injected
    calls of a thread; the thread is root with every capability until now.

    Order (security/commoncap.c): ids while SECBIT_NO_SETUID_FIXUP keeps the
    capabilities; the inheritable set and ambient raises while all of
    permitted is still there (ambient needs permitted & inheritable); the
    bounding set and securebits while CAP_SETPCAP is effective; the final
    capset; no_new_privs.  commit_creds() cleared the pdeath signal and reset
    the dumpable flag if the euid changed: both are set again.
    """
    if not c:
        return
    scratch = rctx.args_area
    inj.call(SYS_prctl, PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP)
    groups = c.get("groups") or []
    inj.write(scratch, struct.pack(f"{len(groups)}I", *groups) if groups else b"\0")
    inj.call(SYS_setgroups, len(groups), scratch)
    inj.call(SYS_setresgid, c["gid"], c["egid"], c["sgid"])
    inj.call(SYS_setresuid, c["uid"], c["euid"], c["suid"])
    # setresuid/setresgid made fsuid/fsgid follow euid/egid; setfs*id return the old value.
    if c.get("fsuid") is not None:
        inj.syscall(SYS_setfsuid, c["fsuid"])
    if c.get("fsgid") is not None:
        inj.syscall(SYS_setfsgid, c["fsgid"])
    st = procfs.ProcReader().status(inj.tid, tid=inj.tid)
    eff, prm, inh = c["cap_eff"], c["cap_prm"], c["cap_inh"]
    _capset(inj, scratch, st.CapEff, st.CapPrm, inh)
    amb = c.get("cap_amb") or 0
    for cap in range(_cap_last() + 1):
        if amb >> cap & 1:
            inj.call(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0)
    bnd = c.get("cap_bnd")
    if bnd is not None:
        for cap in range(_cap_last() + 1):
            if not bnd >> cap & 1:
                inj.call(SYS_prctl, PR_CAPBSET_DROP, cap)
    inj.call(SYS_prctl, PR_SET_SECUREBITS, c.get("secbits") or 0)
    _capset(inj, scratch, eff, prm, inh)
    if c.get("no_new_privs"):
        inj.call(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    _after_creds(rctx, inj)
    _check_creds(inj.tid, c)
    secbits = inj.call(SYS_prctl, PR_GET_SECUREBITS)
    if secbits != (c.get("secbits") or 0):
        raise RestoreError(
            f"Securebits of thread {inj.tid} not restored: {secbits:#x}, expected {c.get('secbits') or 0:#x}"
        )


def _after_creds(rctx, inj) -> None:
    """The pdeath signal and dumpable flag, which commit_creds() resets."""
    for t in getattr(rctx, "tasks", []):
        for ns_tid, host in t.host_tids.items():
            if host != inj.tid:
                continue
            th = (t.threads_rec or {}).get(ns_tid) or {}
            if th.get("pdeath_sig"):
                inj.call(SYS_prctl, PR_SET_PDEATHSIG, th["pdeath_sig"])
            if ns_tid == t.pid:
                dumpable = _dumpable_of(rctx, t.pid)
                # prctl takes 0 or 1 only; 2 (suid_dumpable=2) comes from commit_creds itself.
                if dumpable in (0, 1):
                    inj.call(SYS_prctl, PR_SET_DUMPABLE, dumpable)
            return


def _dumpable_of(rctx, pid: int) -> int | None:
    cache = rctx.extra.setdefault("task.dumpable", {})
    if pid not in cache:
        mm = rctx.img.read("mm", str(pid)) if rctx.img.has("mm", str(pid)) else {}
        cache[pid] = mm.get("dumpable")
    return cache[pid]


def _check_creds(tid: int, c: dict) -> None:
    """The kernel must now show exactly the dumped credentials."""
    st = procfs.ProcReader().status(tid, tid=tid)
    fsuid = c["euid"] if c.get("fsuid") is None else c["fsuid"]
    fsgid = c["egid"] if c.get("fsgid") is None else c["fsgid"]
    want = {
        "Uid": (c["uid"], c["euid"], c["suid"], fsuid),
        "Gid": (c["gid"], c["egid"], c["sgid"], fsgid),
        "Groups": tuple(c.get("groups") or ()),
        "CapInh": c["cap_inh"],
        "CapPrm": c["cap_prm"],
        "CapEff": c["cap_eff"],
        "CapAmb": c.get("cap_amb") or 0,
        "NoNewPrivs": int(bool(c.get("no_new_privs"))),
    }
    if c.get("cap_bnd") is not None:
        want["CapBnd"] = c["cap_bnd"]
    for key, value in want.items():
        got = getattr(st, key)
        if key == "Groups":
            got, value = tuple(sorted(got)), tuple(sorted(value))
        if got != value:
            raise RestoreError(
                f"Credentials of thread {tid} not restored: {key} is {got}, expected {value}"
            )
