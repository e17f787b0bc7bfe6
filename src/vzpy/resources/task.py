"""Per-process and per-thread core state: registers, signals, timers, credentials, limits.

Read from outside where the kernel allows (/proc, ptrace regsets, sigmask,
PEEKSIGINFO, get_robust_list, rseq configuration); the rest (signal actions,
itimers, sigaltstack, the clear-tid address, securebits) by syscalls
injected into the stopped task.

Restore order inside a task matters:
  signal actions, timers, limits, personality  (any time)
  credentials                                  (after everything that needs root)
  per thread: sigaltstack, robust list, rseq, clear-tid, pending signals
  blocked mask and registers                   (last, at the final stop)
"""

from __future__ import annotations

import ctypes
import os
import struct

from .. import procfs
from ..errors import RestoreError
from ..sys import ptrace

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
SYS_capset = 126
SYS_umask = 95

PR_GET_SECUREBITS, PR_SET_SECUREBITS = 27, 28
PR_SET_NAME = 15
PR_GET_TID_ADDRESS = 40
PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE = 47, 2
PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37
PR_SET_PDEATHSIG, PR_GET_PDEATHSIG = 1, 2
SECBIT_KEEP_CAPS = 1 << 4
SECBIT_NO_SETUID_FIXUP = 1 << 2

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


# --- dump ----------------------------------------------------------------------------


def dump_task(ctx, proc, inj) -> dict:
    pid = proc.pid
    reader = ctx.reader
    lim = reader.limits(pid)
    rlimits = [
        {"resource": res, "cur": cur, "max": mx} for res, (cur, mx) in sorted(lim.by_resource.items())
    ]
    sigactions = []
    scratch = ctx.scratch_of(inj)
    for sig in range(1, NSIG + 1):
        if sig in (SIGKILL, SIGSTOP):
            continue
        handler, flags, restorer, mask = inj.rt_sigaction_get(sig)
        if handler or flags or restorer or mask:
            sigactions.append(
                {"signo": sig, "handler": handler, "flags": flags, "restorer": restorer, "mask": mask}
            )
    itimers = []
    for which in (0, 1, 2):
        inj.call(SYS_getitimer, which, scratch)
        isec, iusec, vsec, vusec = struct.unpack("qqqq", inj.read(scratch, 32))
        if vsec or vusec or isec or iusec:
            itimers.append(
                {"which": which, "interval_sec": isec, "interval_usec": iusec, "value_sec": vsec, "value_usec": vusec}
            )
    posix_timers = []
    for t in reader.timers(pid):
        inj.call(SYS_timer_gettime, t.id, scratch)
        isec, insec, vsec, vnsec = struct.unpack("qqqq", inj.read(scratch, 32))
        overrun = inj.syscall(SYS_timer_getoverrun, t.id)
        posix_timers.append(
            {
                "timer_id": t.id,
                "clock_id": t.clock_id,
                "sigev_notify": _notify_code(t),
                "sigev_signo": t.signo,
                "sigev_value": t.sival_ptr,
                "notify_tid": ctx.ns_tid(t.notify_tid) if t.notify_tid else 0,
                "overrun": max(overrun, 0),
                "interval_sec": isec,
                "interval_nsec": insec,
                "value_sec": vsec,
                "value_nsec": vnsec,
            }
        )
    shared = [
        {"signo": ptrace.siginfo_header(si)[0], "raw": si} for si in ptrace.peek_siginfo(proc.tids[0], True)
    ]
    with open(f"/proc/{pid}/personality") as f:
        pers = int(f.read(), 16)
    with open(f"/proc/{pid}/oom_score_adj") as f:
        oom = int(f.read())
    subreaper = inj.syscall(SYS_prctl, PR_GET_CHILD_SUBREAPER, scratch)
    is_subreaper = bool(struct.unpack("i", inj.read(scratch, 4))[0]) if subreaper == 0 else False
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


def _notify_code(t) -> int:
    n = (t.notify or "").split("/")[0]
    return {"signal": 0, "none": 1, "thread": 2}.get(n, 0) | (4 if "tid" in (t.notify or "") else 0)


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
    secbits = inj.syscall(SYS_prctl, PR_GET_SECUREBITS)
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
        "secbits": max(secbits, 0),
        "no_new_privs": bool(st.NoNewPrivs),
    }  # fmt: skip


# --- restore ---------------------------------------------------------------------------


def restore_task(rctx, task, inj, rec: dict) -> None:
    """Process-wide state (run in the leader before threads are created)."""
    scratch = rctx.args_area
    for sa in rec.get("sigactions") or []:
        inj.rt_sigaction_set(sa["signo"], sa["handler"], sa["flags"], sa["restorer"], sa["mask"])
    for it in rec.get("itimers") or []:
        inj.write(scratch, struct.pack("qqqq", it["interval_sec"], it["interval_usec"], it["value_sec"], it["value_usec"]))
        inj.call(SYS_setitimer, it["which"], scratch, 0)
    for r in rec.get("rlimits") or []:
        inj.write(scratch, struct.pack("QQ", r["cur"], r["max"]))
        rc = inj.syscall(SYS_prlimit64, 0, r["resource"], scratch, 0)
        if rc < 0:
            raise RestoreError(
                f"Can't restore rlimit {r['resource']} = {r['cur']}:{r['max']} of task {task.pid}: "
                f"{os.strerror(-rc)} (a hard limit above the restorer's own cannot be set)"
            )
    if rec.get("personality") is not None:
        inj.syscall(SYS_personality, rec["personality"])
    if rec.get("umask") is not None:
        inj.syscall(SYS_umask, rec["umask"])
    if rec.get("child_subreaper"):
        inj.call(SYS_prctl, PR_SET_CHILD_SUBREAPER, 1)
    if rec.get("oom_score_adj") is not None:
        try:
            with open(f"/proc/{task.host_pid}/oom_score_adj", "w") as f:
                f.write(str(rec["oom_score_adj"]))
        except OSError:
            pass
    if rec.get("comm"):
        name = rec["comm"].encode()[:15] + b"\0"
        inj.write(scratch, name)
        inj.syscall(SYS_prctl, PR_SET_NAME, scratch)


def restore_posix_timers(rctx, task, inj, rec: dict) -> None:
    timers = rec.get("posix_timers") or []
    if not timers:
        return
    rctx.posix_timers.restore(rctx, task, inj, timers)


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


def restore_creds(rctx, inj, c: dict) -> None:
    """uid/gid/groups/capabilities/securebits; the last injected calls of a thread."""
    scratch = rctx.args_area
    if not c:
        return
    inj.call(SYS_prctl, PR_SET_SECUREBITS, SECBIT_KEEP_CAPS | SECBIT_NO_SETUID_FIXUP)
    groups = c.get("groups") or []
    inj.write(scratch, struct.pack(f"{len(groups)}I", *groups) if groups else b"\0")
    inj.call(SYS_setgroups, len(groups), scratch)
    inj.call(SYS_setresgid, c["gid"], c["egid"], c["sgid"])
    inj.call(SYS_setresuid, c["uid"], c["euid"], c["suid"])
    # fsuid/fsgid follow euid/egid unless changed; setfsuid(122)/setfsgid(123) otherwise.
    if c.get("fsuid") not in (None, c["euid"]):
        inj.syscall(122, c["fsuid"])
    if c.get("fsgid") not in (None, c["egid"]):
        inj.syscall(123, c["fsgid"])
    # bounding set: drop what the dumped task did not have
    bnd = c.get("cap_bnd")
    if bnd is not None:
        for cap in range(0, 64):
            if not bnd & (1 << cap):
                rc = inj.syscall(SYS_prctl, PR_CAPBSET_DROP, cap)
                if rc < 0:
                    break
    # capset: header {version 3, pid 0} + 2 x {effective, permitted, inheritable}
    eff, prm, inh = c["cap_eff"], c["cap_prm"], c["cap_inh"]
    data = struct.pack("III", eff & 0xFFFFFFFF, prm & 0xFFFFFFFF, inh & 0xFFFFFFFF) + struct.pack(
        "III", eff >> 32, prm >> 32, inh >> 32
    )
    inj.write(scratch, struct.pack("Ii", 0x20080522, 0) + data)
    inj.call(SYS_capset, scratch, scratch + 8)
    amb = c.get("cap_amb") or 0
    for cap in range(64):
        if amb & (1 << cap):
            inj.syscall(SYS_prctl, PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap)
    inj.call(SYS_prctl, PR_SET_SECUREBITS, c.get("secbits") or 0)
    if c.get("no_new_privs"):
        inj.call(SYS_prctl, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
