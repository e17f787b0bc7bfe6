"""Run system calls inside a ptrace-stopped task: vzpy's "compel".

The dump side asks a task what only it can tell (signal actions, timers...);
the restore side builds a task's tree and address space.  Both do it by
making the stopped task itself execute ``syscall`` instructions we choose.
No code is loaded into the task: every call runs the one ``syscall``
instruction already present in its ``[vdso]``.

API
    ``with Injector(tid, *, syscall_ip=None, method="syscall",
    keep_scratch=False, timeout=None, pin_cpu=True) as inj:``
    ``inj.syscall(nr, *args) -> rax`` (raw, ``-errno`` on failure),
    ``inj.call(nr, *args) -> int`` (raises ``OSError``),
    ``inj.last_children``, ``inj.syscall_ip`` (settable), ``inj.keep_regs()``,
    ``inj.saved_regs``/``inj.saved_sigmask`` (what exit restores),
    ``inj.scratch(size) -> addr``, ``inj.free_scratch()``,
    ``inj.read(addr, n)``, ``inj.write(addr, data)``; wrappers ``mmap munmap
    mremap mprotect close dup2 open getpid gettid prctl rt_sigaction_get
    rt_sigaction_set wait4 clone3 exit_group exit_thread``.  Module level:
    ``wait_new_child(tid)``, ``find_syscall_insn(tid)``, ``vdso_range(tid)``.

Preconditions
    The task is seized by *this thread* (``ptrace.seize``, with
    PTRACE_O_TRACESYSGOOD for speed) and sits in a ptrace stop that is not a
    syscall-entry stop: the EVENT_STOP of ``PTRACE_INTERRUPT``, a group-stop,
    an event stop, or the stop a previous ``Injector`` left.  For ``clone3``
    to report its child, the task must be seized with
    ``PTRACE_O_TRACEFORK|TRACEVFORK|TRACECLONE``.

``with Injector(tid) as inj:``
    1. Open ``/proc/TID/mem`` once (all memory traffic goes through it:
       ``pread``/``pwrite`` ignore page protections, kernel-notes §3).
    2. Save the task's ``user_regs_struct`` and blocked mask.
    3. Block every signal with PTRACE_SETSIGMASK (SIGKILL and SIGSTOP stay
       deliverable; the kernel refuses to block them).  Without this, a signal
       that arrives meanwhile (SIGCHLD of an injected child...) turns the stop
       we wait for into a signal-delivery stop (kernel-notes §2).
    4. Find a ``0f 05`` (``syscall``) in the task's ``[vdso]``, unless the
       caller gave ``syscall_ip``.  The bytes need not start an instruction of
       the vdso's own code: we jump to them.  Restore moves the vdso with
       mremap and then updates ``inj.syscall_ip``.
    5. Pin the task and this thread to the task's last CPU (see below).

``inj.syscall(nr, a1..a6)`` (one injected call)
    6. regs = saved regs with ``rip = syscall_ip``, ``rax = nr``, arguments in
       ``rdi rsi rdx r10 r8 r9``, and **orig_rax = -1**: "no syscall in
       progress".  The task may have been stopped in ``clock_nanosleep`` with
       orig_rax = 230 and rax = -ERESTART_RESTARTBLOCK; the kernel's restart
       logic (``arch_do_signal_or_restart``) keys on orig_rax >= 0 and must not
       act on our registers.  The saved pair comes back in step 11, and then
       it must act: that is how the interrupted sleep goes on.
    7. PTRACE_SETREGS, then PTRACE_SYSCALL twice: the syscall-entry stop, then
       the syscall-exit stop.  Between them event stops can come: FORK, VFORK
       or CLONE from an injected ``clone3`` (the new tid, from
       PTRACE_GETEVENTMSG, goes to ``inj.last_children``; the child is
       auto-seized and its first stop, an EVENT_STOP, is consumed by
       ``wait_new_child``), EXIT (PTRACE_O_TRACEEXIT) when the call was
       ``exit_group`` or the task got SIGKILL.  A stray EVENT_STOP is stepped
       over; a SIGSTOP (it cannot be blocked) is held back and sent again
       after the registers are restored; any other signal-delivery stop (a
       fault: the injection itself is broken) raises ``InjectionError``,
       leaves the task stopped where it faulted, and no more calls are run.
       If the task dies (SIGKILL), its exit is reaped and ``TaskGone`` is
       raised; an injector whose task is gone restores nothing.  With
       ``timeout``, a call that blocks is interrupted back into a stop and
       ``TimeoutError`` raised.
    8. The result is ``rax`` (``-errno`` on failure; ``inj.call`` raises
       ``OSError`` for it).  ``rip`` must then be ``syscall_ip + 2``.

on exit (also after an exception, unless the task is gone)
    9. Unmap the scratch areas (unless ``keep_scratch``, or after an
       ``InjectionError``: better a leaked area than more calls into a task in
       an unknown state).
    10. PTRACE_INTERRUPT + PTRACE_CONT and wait for the EVENT_STOP: this moves
        the task from the syscall-exit stop into a stop inside ``get_signal()``
        (where an interrupt or a group stop leaves it), so that when it
        resumes, the kernel's syscall-restart logic sees the original
        registers: a task stopped in ``clock_nanosleep`` goes on with
        ``restart_syscall``.  Resumed straight from a syscall-exit stop with
        PTRACE_CONT it skips that logic and its ``clock_nanosleep`` returns
        516.  (PTRACE_DETACH happens to hide this: it sets TIF_SIGPENDING.)
    11. Restore the saved registers (unless ``inj.keep_regs()``: restore sets
        them itself), the saved blocked mask (``inj.saved_sigmask``, which the
        caller may change) and both CPU masks, then re-send held-back SIGSTOPs.
        The task is left in that EVENT_STOP; the caller resumes or detaches it.
        A child that exited during the injection left a SIGCHLD pending in its
        parent: resumed while traced, the parent reports a signal-delivery
        stop for it, which the caller passes on (``cont(tid, sig)``).

Why PTRACE_SYSCALL and not PTRACE_SINGLESTEP
    Measured on the 2-vCPU test VM (``bench_injection``, injected ``getpid``,
    task seized with TRACESYSGOOD, task and tracer on one CPU, see below):
    PTRACE_SINGLESTEP 16-20 us per call, PTRACE_SYSCALL 21-28 us (two stops
    instead of one), plus one extra round trip per ``Injector`` for step 10.
    The step is faster but not transparent: its trap is a *forced* SIGTRAP
    (``force_sig_fault``), and when SIGTRAP is blocked or ignored the kernel
    unblocks it and **resets its action to SIG_DFL**
    (``force_sig_info_to_task``).  Blocking everything during injection thus
    wipes the program's SIGTRAP handler after one call; leaving SIGTRAP
    unblocked still turns an ignored SIGTRAP into a deadly one, and a real
    SIGTRAP arriving meanwhile is indistinguishable from ours.  Syscall stops
    raise no signal, so PTRACE_SYSCALL is the default.  ``method="singlestep"``
    (SIGTRAP left unblocked; ends in a SIGTRAP signal-delivery stop inside
    get_signal(), so step 10 is not needed) exists for measurements and for
    tasks whose SIGTRAP disposition does not matter.  Without TRACESYSGOOD
    every syscall stop costs one more PTRACE_GETSIGINFO to tell it from a
    signal (about +8 us): seize with it.

One CPU for both sides (``pin_cpu=True``, the default)
    Each stop is a wake-up across the tracer/task pair.  When the scheduler
    puts them on different vCPUs, every wake-up pays for waking an idle vCPU:
    unpinned, the same loop measured 16 *or* 50-75 us (single-step) and 22
    *or* 95-125 us (PTRACE_SYSCALL) from run to run.  Pinning our thread alone
    does not help (the woken task is sent to the idle vCPU), so the injector
    pins both the task and this thread to the task's last CPU and puts both
    masks back on exit; a child made by an injected ``clone3`` gets the task's
    original mask, not the pin.  A caller that sets the task's mask itself
    should do it after the with-block (or pass ``pin_cpu=False``); one set
    inside the block survives unless it is exactly the one-CPU pin.

Not handled (the caller's job)
    Seccomp filters see injected calls like any other (seize with
    PTRACE_O_SUSPEND_SECCOMP); syscall user dispatch would send SIGSYS; a task
    stopped inside an rseq critical section has its rseq_cs cleared when it
    runs our code, so the kernel will not abort that section later (CRIU fixes
    the ip up at dump time).  ``exit_group`` in a multi-threaded task is
    reported only after the caller reaps the other traced threads.

All requests come from the thread that seized the task; an ``Injector`` is
not thread-safe.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import time
from collections.abc import Sequence
from types import TracebackType

from vzpy.sys import ptrace
from vzpy.sys.ptrace import (
    PTRACE_EVENT_CLONE,
    PTRACE_EVENT_EXIT,
    PTRACE_EVENT_FORK,
    PTRACE_EVENT_STOP,
    PTRACE_EVENT_VFORK,
    PTRACE_SYSCALL_INFO_ENTRY,
    SIGMASK_ALL,
    TaskGone,
    UserRegs,
    describe_status,
    get_regs,
    set_regs,
    signed,
    stop_event,
    stop_sig,
    wait_stop,
)

# --- syscall numbers used here (x86_64) ------------------------------------------
SYS_close = 3
SYS_mmap = 9
SYS_mprotect = 10
SYS_munmap = 11
SYS_rt_sigaction = 13
SYS_mremap = 25
SYS_dup2 = 33
SYS_getpid = 39
SYS_exit = 60
SYS_wait4 = 61
SYS_prctl = 157
SYS_gettid = 186
SYS_exit_group = 231
SYS_openat = 257
SYS_clone3 = 435

PROT_READ = 1
PROT_WRITE = 2
PROT_EXEC = 4
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_FIXED_NOREPLACE = 0x100000
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4
AT_FDCWD = -100
WNOHANG = 1
PAGE_SIZE = 4096

SYSCALL_INSN = b"\x0f\x05"
MAX_ERRNO = 4095

METHOD_SYSCALL = "syscall"
METHOD_SINGLESTEP = "singlestep"
DEFAULT_METHOD = METHOD_SYSCALL

_SIGTRAP_BIT = 1 << (signal.SIGTRAP - 1)
_STOP_SIGNALS = (signal.SIGSTOP,)


class InjectionError(Exception):
    """The injected call did not run as planned; the task is left stopped.

    ``status`` is the wait status of the stop we did not expect, if any.
    """

    def __init__(self, tid: int, message: str, status: int | None = None) -> None:
        super().__init__(f"task {tid}: {message}")
        self.tid = tid
        self.status = status


class CloneArgs(ctypes.Structure):
    """``struct clone_args`` (include/uapi/linux/sched.h, CLONE_ARGS_SIZE_VER2), 88 bytes::

    struct clone_args {
        __aligned_u64 flags;
        __aligned_u64 pidfd;        /* where to store the pidfd (CLONE_PIDFD) */
        __aligned_u64 child_tid;    /* CLONE_CHILD_SETTID */
        __aligned_u64 parent_tid;   /* CLONE_PARENT_SETTID */
        __aligned_u64 exit_signal;
        __aligned_u64 stack;        /* lowest address of the stack */
        __aligned_u64 stack_size;
        __aligned_u64 tls;          /* CLONE_SETTLS */
        __aligned_u64 set_tid;      /* pid_t[set_tid_size], innermost ns first */
        __aligned_u64 set_tid_size;
        __aligned_u64 cgroup;       /* CLONE_INTO_CGROUP fd */
    };
    """

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags pidfd child_tid parent_tid exit_signal stack stack_size tls "
            "set_tid set_tid_size cgroup"
        ).split()
    ]


class KernelSigaction(ctypes.Structure):
    """The kernel's ``struct sigaction`` on x86_64 as rt_sigaction(2) takes it
    (arch/x86/include/uapi/asm/signal.h, ``sigsetsize`` 8), 32 bytes::

        struct sigaction {
            __sighandler_t sa_handler;
            unsigned long sa_flags;
            __sigrestore_t sa_restorer;
            sigset_t sa_mask;
        };
    """

    _fields_ = [
        ("sa_handler", ctypes.c_uint64),
        ("sa_flags", ctypes.c_uint64),
        ("sa_restorer", ctypes.c_uint64),
        ("sa_mask", ctypes.c_uint64),
    ]


# --- locating a syscall instruction --------------------------------------------------
def _maps(tid: int) -> list[tuple[int, int, str, str]]:
    """(start, end, perms, name) of each line of /proc/TID/maps."""
    out = []
    with open(f"/proc/{tid}/maps") as f:
        for line in f:
            fields = line.split(maxsplit=5)
            start, end = (int(x, 16) for x in fields[0].split("-"))
            name = fields[5].strip() if len(fields) > 5 else ""
            out.append((start, end, fields[1], name))
    return out


def find_syscall_insn(tid: int, mem_fd: int | None = None) -> int:
    """Address of a ``syscall`` instruction (``0f 05``) in the task's code.

    Looks in ``[vdso]`` first (always mapped, same bytes in every task), then in
    the other executable mappings.
    """
    own_fd = mem_fd is None
    fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC) if own_fd else mem_fd
    try:
        maps = _maps(tid)
        candidates = [m for m in maps if m[3] == "[vdso]"]
        candidates += [m for m in maps if "x" in m[2] and m[3] not in ("[vdso]", "[vsyscall]")]
        for start, end, _perms, _name in candidates:
            try:
                data = os.pread(fd, min(end - start, 1 << 20), start)
            except OSError:
                continue
            off = data.find(SYSCALL_INSN)
            if off >= 0:
                return start + off
    finally:
        if own_fd:
            os.close(fd)
    raise InjectionError(tid, "no syscall instruction found in [vdso] or executable mappings")


def vdso_range(tid: int) -> tuple[int, int] | None:
    """(start, end) of the task's [vdso], or None."""
    for start, end, _perms, name in _maps(tid):
        if name == "[vdso]":
            return start, end
    return None


# --- new children -----------------------------------------------------------------------
def wait_new_child(tid: int, timeout: float | None = None) -> int:
    """Consume the first stop of a task auto-attached by FORK/VFORK/CLONE tracing.

    That stop is a PTRACE_EVENT_STOP; returns its status.  The child starts at
    ``syscall_ip + 2`` with rax 0, the parent's other registers, and the
    parent's blocked mask at the time (all ones during an injection).
    """
    status = wait_stop(tid, timeout)
    if stop_event(status) != PTRACE_EVENT_STOP:
        raise InjectionError(
            tid, f"new child: expected its first EVENT_STOP, got {describe_status(status)}", status
        )
    return status


def _is_error(rax: int) -> bool:
    return -MAX_ERRNO <= rax < 0


def _tgid(tid: int) -> int:
    with open(f"/proc/{tid}/status") as f:
        for line in f:
            if line.startswith("Tgid:"):
                return int(line.split()[1])
    raise ProcessLookupError(tid)


# --- the injector -------------------------------------------------------------------------
class Injector:
    """Inject system calls into the seized, stopped task `tid` (see the module doc)."""

    def __init__(
        self,
        tid: int,
        *,
        syscall_ip: int | None = None,
        method: str = DEFAULT_METHOD,
        keep_scratch: bool = False,
        timeout: float | None = None,
        pin_cpu: bool = True,
    ) -> None:
        if method not in (METHOD_SYSCALL, METHOD_SINGLESTEP):
            raise ValueError(f"unknown injection method {method!r}")
        self.tid = tid
        self.syscall_ip: int | None = syscall_ip
        self.method = method
        self.keep_scratch = keep_scratch
        self.timeout = timeout
        self.pin_cpu = pin_cpu
        self.saved_regs: UserRegs | None = None
        self.saved_sigmask: int | None = None
        self.last_children: list[int] = []
        self.held_signals: list[int] = []
        self.stray_stops = 0
        self.gone: TaskGone | None = None
        self._keep_regs = False
        self._exit_stop = False  # the task sits in the syscall-exit stop of our call
        self._broken = False  # an injected call went wrong: no more injections
        self._mem_fd = -1
        self._our_affinity: set[int] | None = None
        self._task_affinity: set[int] | None = None
        self._pinned_cpu = -1
        self._scratch: dict[int, int] = {}  # caller's areas: addr -> length
        self._args: tuple[int, int] | None = None  # our own argument area
        self._regs = UserRegs()  # reused buffer for the injected registers

    # -- context --------------------------------------------------------------------------
    def __enter__(self) -> Injector:
        tid = self.tid
        self._mem_fd = os.open(f"/proc/{tid}/mem", os.O_RDWR | os.O_CLOEXEC)
        try:
            info = ptrace.get_syscall_info(tid)
            if info.op == PTRACE_SYSCALL_INFO_ENTRY:
                raise InjectionError(
                    tid, "in a syscall-entry stop: resuming would run that syscall, not ours"
                )
            self.saved_regs = get_regs(tid)
            self.saved_sigmask = ptrace.get_sigmask(tid)
            mask = SIGMASK_ALL
            if self.method == METHOD_SINGLESTEP:
                # A blocked SIGTRAP makes the kernel reset its handler when it
                # forces the single-step trap (force_sig_info_to_task).
                mask &= ~_SIGTRAP_BIT
            ptrace.set_sigmask(tid, mask)
            if self.syscall_ip is None:
                self.syscall_ip = find_syscall_insn(tid, self._mem_fd)
            if self.pin_cpu:
                self._pin_to_task_cpu()
        except BaseException:
            self._unpin()
            if self.saved_sigmask is not None:
                try:
                    ptrace.set_sigmask(tid, self.saved_sigmask)
                except OSError:
                    pass
            os.close(self._mem_fd)
            self._mem_fd = -1
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            self.finish()
        except OSError as err:
            if exc is None:
                raise
            exc.add_note(f"while cleaning up the injector of task {self.tid}: {err}")

    def keep_regs(self, keep: bool = True) -> None:
        """Leave the registers as the last injected call left them on exit:
        the caller sets them itself (restore)."""
        self._keep_regs = keep

    def finish(self) -> None:
        """What leaving the with-block does: free the scratch areas, put the task
        in a stop inside get_signal(), restore registers, sigmask and CPU
        affinity, close /proc/TID/mem."""
        try:
            if self.gone is None and self.saved_regs is not None:
                try:
                    if not self.keep_scratch and not self._broken:
                        self.free_scratch()
                        self._free_args()
                finally:
                    try:
                        self._restore()
                    except ProcessLookupError:
                        if not self._reap_if_gone():
                            raise
        finally:
            if self._mem_fd >= 0:
                os.close(self._mem_fd)
                self._mem_fd = -1
            self._unpin()

    def _pin_to_task_cpu(self) -> None:
        """Run the task and this (tracer) thread on one CPU while we inject.

        Every injected call is two or three wake-ups, of the task by us and of
        us by the task.  Across vCPUs each costs about 40 us more on the test
        VM (an idle vCPU has to be woken up), and where the scheduler puts the
        woken side is a coin toss: a call took either ~22 or ~100 us.  Pinning
        only our thread is not enough (the woken task is sent to the idle CPU).
        The task's own mask is put back in ``finish()`` (a child made by an
        injected clone3 gets it too, not the pinned one).
        """
        with open(f"/proc/{self.tid}/stat") as f:
            stat = f.read()
        cpu = int(stat[stat.rindex(")") + 2 :].split()[36])  # field 39, "processor"
        ours = os.sched_getaffinity(0)
        theirs = os.sched_getaffinity(self.tid)
        if cpu not in ours or cpu not in theirs or len(ours | theirs) == 1:
            return
        try:
            os.sched_setaffinity(self.tid, {cpu})
        except OSError:
            return  # e.g. a cpuset we may not change: just be slower
        self._task_affinity = theirs
        self._pinned_cpu = cpu
        self._our_affinity = ours
        os.sched_setaffinity(0, {cpu})

    def _unpin(self) -> None:
        if self._our_affinity is not None:
            os.sched_setaffinity(0, self._our_affinity)
            self._our_affinity = None
        if self._task_affinity is not None:
            mask, self._task_affinity = self._task_affinity, None
            # If the caller set the task's affinity meanwhile (restore of a
            # dumped mask), that one wins over the mask we saved.
            if self.gone is None and os.sched_getaffinity(self.tid) == {self._pinned_cpu}:
                os.sched_setaffinity(self.tid, mask)

    def _restore(self) -> None:
        if self._exit_stop:
            self._stop_in_get_signal()
        if not self._keep_regs:
            set_regs(self.tid, self.saved_regs)
        if self.saved_sigmask is not None:
            ptrace.set_sigmask(self.tid, self.saved_sigmask)
        for sig in self.held_signals:
            os.kill(_tgid(self.tid), sig)
        self.held_signals.clear()

    # -- the mechanism ------------------------------------------------------------------------
    def _wait(self) -> int:
        try:
            return wait_stop(self.tid, self.timeout)
        except TaskGone as gone:
            self.gone = gone
            raise
        except TimeoutError:
            # The injected call blocks.  Interrupt it so the task is in a stop
            # again (the syscall returns -EINTR/-ERESTART*) and can be restored.
            self._interrupt_blocked()
            raise

    def _interrupt_blocked(self) -> None:
        """Bring a task blocked in an injected call back into a stop.

        PTRACE_INTERRUPT makes the call return (-EINTR or -ERESTART*), but the
        kernel drops a pending interrupt at *any* ptrace stop ("any trap clears
        pending STOP trap", ptrace_stop()), so the stop we get is the one our
        method produces anyway: the syscall-exit stop (PTRACE_SYSCALL), or the
        step trap, possibly after the EVENT_STOP if the interrupt won the race.
        """
        ptrace.interrupt(self.tid)
        while True:
            status = wait_stop(self.tid, 5.0)
            ev, sig = stop_event(status), stop_sig(status)
            if self.method == METHOD_SYSCALL:
                if ev == 0 and self._is_syscall_stop(sig):
                    self._exit_stop = True  # finish() goes on into get_signal()
                    return
                if ev == PTRACE_EVENT_STOP:
                    self._exit_stop = False
                    return
            elif ev == 0 and sig == signal.SIGTRAP:
                return  # the step trap, a stop inside get_signal()
            elif ev == PTRACE_EVENT_STOP:
                ptrace.cont(self.tid)  # the forced step SIGTRAP is still queued: take it
                continue
            self._broken = True
            raise InjectionError(
                self.tid, f"unexpected {describe_status(status)} after interrupting", status
            )

    def _resume(self) -> None:
        if self.method == METHOD_SYSCALL:
            ptrace.syscall(self.tid)
        else:
            ptrace.singlestep(self.tid)

    def _is_syscall_stop(self, sig: int) -> bool:
        if sig == signal.SIGTRAP | 0x80:  # PTRACE_O_TRACESYSGOOD
            return True
        if sig != signal.SIGTRAP:
            return False
        # Without TRACESYSGOOD a syscall stop looks like a SIGTRAP delivery, and
        # GET_SYSCALL_INFO says NONE for it; its siginfo has si_code SIGTRAP
        # (ptrace_notify), which no real SIGTRAP has (SI_USER, TRAP_*, SI_KERNEL).
        _signo, _errno, code = ptrace.siginfo_header(ptrace.get_siginfo(self.tid))
        return code == signal.SIGTRAP

    def _classify_other(self, status: int) -> None:
        """A stop that is neither our trap nor a child event: step over or raise."""
        ev, sig = stop_event(status), stop_sig(status)
        if ev == PTRACE_EVENT_EXIT:
            raise InjectionError(
                self.tid,
                f"task is exiting (exit status {ptrace.get_event_msg(self.tid):#x}) "
                "during an injected call",
                status,
            )
        if ev == PTRACE_EVENT_STOP:
            self.stray_stops += 1
            return
        if ev == 0 and sig in _STOP_SIGNALS:
            self.held_signals.append(sig)
            return
        raise InjectionError(
            self.tid,
            f"unexpected {describe_status(status)} during an injected call "
            f"(rip {get_regs(self.tid).rip:#x}, syscall_ip {self.syscall_ip:#x})",
            status,
        )

    def _run(self, regs: UserRegs) -> UserRegs:
        try:
            return self._run_once(regs)
        except InjectionError:
            self._broken = True
            raise
        except TaskGone:
            raise
        except ProcessLookupError as err:
            # ESRCH from ptrace: the task is not in a stop any more, which for
            # a task we hold stopped means SIGKILL woke it up to die.
            if self._reap_if_gone():
                raise self.gone from err
            raise

    def _reap_if_gone(self) -> bool:
        """After an ESRCH: if the task is dying, reap it, note it, return True."""
        try:
            status = wait_stop(self.tid, 5.0 if self.timeout is None else self.timeout)
        except TaskGone as gone:
            self.gone = gone
            return True
        except TimeoutError:
            return False
        self._broken = True
        raise InjectionError(
            self.tid, f"task was not in a ptrace stop (then {describe_status(status)})", status
        )

    def _run_once(self, regs: UserRegs) -> UserRegs:
        tid = self.tid
        self._exit_stop = False
        set_regs(tid, regs)
        self._resume()
        entered = self.method == METHOD_SINGLESTEP
        while True:
            status = self._wait()
            ev, sig = stop_event(status), stop_sig(status)
            if ev == 0:
                if self.method == METHOD_SYSCALL and self._is_syscall_stop(sig):
                    if not entered:
                        entered = True
                        self._resume()
                        continue
                    self._exit_stop = True
                    break
                if self.method == METHOD_SINGLESTEP and sig == signal.SIGTRAP:
                    break
            elif ev in (PTRACE_EVENT_FORK, PTRACE_EVENT_VFORK, PTRACE_EVENT_CLONE):
                self.last_children.append(ptrace.get_event_msg(tid))
                self._resume()
                continue
            self._classify_other(status)
            self._resume()
        out = get_regs(tid)
        if out.rip != self.syscall_ip + 2:
            raise InjectionError(
                tid,
                f"injected call ended at rip {out.rip:#x}, expected {self.syscall_ip + 2:#x}",
                status,
            )
        return out

    def _stop_in_get_signal(self) -> None:
        """From a syscall-exit stop, go on to an EVENT_STOP inside get_signal()."""
        ptrace.interrupt(self.tid)
        ptrace.cont(self.tid)
        while True:
            try:
                status = wait_stop(self.tid, self.timeout)
            except TaskGone as gone:
                self.gone = gone
                raise
            ev, sig = stop_event(status), stop_sig(status)
            if ev == PTRACE_EVENT_STOP:
                self._exit_stop = False
                return
            if ev == 0 and sig in _STOP_SIGNALS:
                self.held_signals.append(sig)
            elif ev == 0 and sig & 0x7F == signal.SIGTRAP:
                pass  # a syscall stop left over from before: go on
            else:
                raise InjectionError(
                    self.tid, f"unexpected {describe_status(status)} while finishing", status
                )
            ptrace.cont(self.tid)

    def syscall(self, nr: int, *args: int) -> int:
        """Run syscall `nr` in the task; return the raw rax (``-errno`` on failure).

        Child tids reported by event stops during the call are in ``last_children``.
        """
        if len(args) > 6:
            raise TypeError("a syscall takes at most 6 arguments")
        if self.saved_regs is None or self._mem_fd < 0:
            raise RuntimeError("Injector used outside its with-block")
        if self.gone is not None:
            raise self.gone
        if self._broken:
            raise InjectionError(self.tid, "an earlier injected call failed; not injecting more")
        self.last_children = []
        regs = self._regs
        ctypes.memmove(ctypes.addressof(regs), ctypes.addressof(self.saved_regs), 216)
        regs.rip = self.syscall_ip
        regs.rax = nr
        regs.orig_rax = SIGMASK_ALL  # -1
        a = list(args) + [0] * (6 - len(args))
        mask = SIGMASK_ALL
        regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9 = (x & mask for x in a)
        return signed(self._run(regs).rax)

    def call(self, nr: int, *args: int) -> int:
        """Like ``syscall`` but raise ``OSError`` for an error return."""
        rax = self.syscall(nr, *args)
        if _is_error(rax):
            raise OSError(-rax, f"injected syscall {nr} in task {self.tid}: {os.strerror(-rax)}")
        return rax

    # -- memory -------------------------------------------------------------------------------
    def write(self, addr: int, data: bytes) -> None:
        """Write into the task's memory (any protection) through /proc/TID/mem."""
        view = memoryview(data)
        while view:
            n = os.pwrite(self._mem_fd, view, addr)
            if n <= 0:
                raise OSError(5, f"short write to task {self.tid} at {addr:#x}")
            view = view[n:]
            addr += n

    def read(self, addr: int, n: int) -> bytes:
        """Read `n` bytes of the task's memory through /proc/TID/mem."""
        out = bytearray()
        while len(out) < n:
            chunk = os.pread(self._mem_fd, n - len(out), addr + len(out))
            if not chunk:
                raise OSError(5, f"short read from task {self.tid} at {addr + len(out):#x}")
            out += chunk
        return bytes(out)

    def scratch(self, size: int = PAGE_SIZE, addr: int = 0) -> int:
        """Map a new anonymous RW area of `size` bytes (rounded up to pages) in the
        task and return its address.  With `addr`, map exactly there
        (MAP_FIXED_NOREPLACE).  Unmapped by ``free_scratch`` or on exit."""
        length = (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE
        flags = MAP_PRIVATE | MAP_ANONYMOUS | (MAP_FIXED_NOREPLACE if addr else 0)
        got = self.mmap(addr, length, PROT_READ | PROT_WRITE, flags)
        self._scratch[got] = length
        return got

    def free_scratch(self, addr: int | None = None) -> None:
        """Unmap one scratch area, or all of them."""
        for a in [addr] if addr is not None else list(self._scratch):
            length = self._scratch.pop(a)
            self.munmap(a, length)

    def set_arg_area(self, addr: int, length: int) -> None:
        """Use an area the caller mapped in the task (restore places it where the
        dumped layout has a hole) for the wrappers' arguments, instead of
        mapping one.  It is unmapped on exit unless ``keep_scratch``."""
        self._args = (addr, length)

    def _arg_area(self, size: int) -> int:
        """Our own area for syscall arguments (paths, structs), kept apart from the
        caller's scratch so that a wrapper never overwrites the caller's data."""
        if self._args is None or self._args[1] < size:
            self._free_args()
            length = max(PAGE_SIZE, (size + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE)
            addr = self.mmap(0, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS)
            self._args = (addr, length)
        return self._args[0]

    def _free_args(self) -> None:
        if self._args is not None:
            addr, length = self._args
            self._args = None
            self.munmap(addr, length)

    # -- wrappers -------------------------------------------------------------------------------
    def mmap(
        self, addr: int, length: int, prot: int, flags: int, fd: int = -1, off: int = 0
    ) -> int:
        return self.call(SYS_mmap, addr, length, prot, flags, fd, off)

    def munmap(self, addr: int, length: int) -> None:
        self.call(SYS_munmap, addr, length)

    def mremap(
        self, old_addr: int, old_len: int, new_len: int, flags: int = 0, new_addr: int = 0
    ) -> int:
        return self.call(SYS_mremap, old_addr, old_len, new_len, flags, new_addr)

    def mprotect(self, addr: int, length: int, prot: int) -> None:
        self.call(SYS_mprotect, addr, length, prot)

    def close(self, fd: int) -> None:
        """close(2) of the task's `fd` (this object's own cleanup is ``finish``)."""
        self.call(SYS_close, fd)

    close_fd = close  # the name the first callers used

    def dup2(self, oldfd: int, newfd: int) -> int:
        return self.call(SYS_dup2, oldfd, newfd)

    def open(self, path: str | bytes, flags: int, mode: int = 0) -> int:
        """openat(AT_FDCWD, path, flags, mode) in the task; returns the task's fd."""
        raw = os.fsencode(path) + b"\0"
        buf = self._arg_area(len(raw))
        self.write(buf, raw)
        return self.call(SYS_openat, AT_FDCWD, buf, flags, mode)

    def getpid(self) -> int:
        return self.call(SYS_getpid)

    def gettid(self) -> int:
        return self.call(SYS_gettid)

    def prctl(self, option: int, a2: int = 0, a3: int = 0, a4: int = 0, a5: int = 0) -> int:
        return self.call(SYS_prctl, option, a2, a3, a4, a5)

    def rt_sigaction_get(self, sig: int) -> tuple[int, int, int, int]:
        """(handler, flags, restorer, mask) of `sig` in the task."""
        buf = self._arg_area(ctypes.sizeof(KernelSigaction))
        self.call(SYS_rt_sigaction, sig, 0, buf, 8)
        act = KernelSigaction.from_buffer_copy(self.read(buf, ctypes.sizeof(KernelSigaction)))
        return act.sa_handler, act.sa_flags, act.sa_restorer, act.sa_mask

    def rt_sigaction_set(
        self, sig: int, handler: int, flags: int, restorer: int, mask: int
    ) -> tuple[int, int, int, int]:
        """Install a sigaction in the task; returns the previous one."""
        size = ctypes.sizeof(KernelSigaction)
        buf = self._arg_area(2 * size)
        self.write(buf, bytes(KernelSigaction(handler, flags, restorer, mask)))
        self.call(SYS_rt_sigaction, sig, buf, buf + size, 8)
        old = KernelSigaction.from_buffer_copy(self.read(buf + size, size))
        return old.sa_handler, old.sa_flags, old.sa_restorer, old.sa_mask

    def wait4(self, pid: int = -1, options: int = WNOHANG) -> tuple[int, int]:
        """wait4(pid, &status, options, NULL) in the task: (pid, status); (0, 0)
        with WNOHANG when no child is ready."""
        buf = self._arg_area(4)
        self.write(buf, b"\0\0\0\0")
        got = self.call(SYS_wait4, pid, buf, options, 0)
        return got, struct.unpack("<i", self.read(buf, 4))[0]

    def clone3(
        self,
        flags: int,
        exit_signal: int,
        set_tid: Sequence[int] = (),
        stack: int = 0,
        stack_size: int = 0,
        tls: int = 0,
        *,
        pidfd: int = 0,
        child_tid: int = 0,
        parent_tid: int = 0,
        cgroup: int = 0,
    ) -> tuple[int, int | None]:
        """clone3(2) in the task.  Returns (rax, child_tid): rax is the new pid as
        the task sees it, child_tid the one our namespace sees (from the FORK/
        CLONE event; None if the task is not traced for forks).  Consume the
        child's first stop with ``wait_new_child(child_tid)``."""
        size = ctypes.sizeof(CloneArgs)
        buf = self._arg_area(size + 4 * len(set_tid))
        tids = struct.pack(f"<{len(set_tid)}i", *set_tid)
        args = CloneArgs(
            flags=flags,
            pidfd=pidfd,
            child_tid=child_tid,
            parent_tid=parent_tid,
            exit_signal=exit_signal,
            stack=stack,
            stack_size=stack_size,
            tls=tls,
            set_tid=buf + size if set_tid else 0,
            set_tid_size=len(set_tid),
            cgroup=cgroup,
        )
        self.write(buf, bytes(args) + tids)
        rax = self.call(SYS_clone3, buf, size)
        child = self.last_children[-1] if self.last_children else None
        if child is not None and self._task_affinity is not None:
            os.sched_setaffinity(child, self._task_affinity)  # not our temporary pin
        return rax, child

    def exit_group(self, code: int) -> int:
        """Make the task call exit_group(code); return its wait status once it is
        reaped by us, its tracer.  Only then can its real parent wait4 for it
        (a traced zombie is visible to the tracer alone), and the parent gets a
        SIGCHLD.  After this the injector is finished: nothing is restored.
        """
        return self._inject_exit(SYS_exit_group, code)

    def exit_thread(self, code: int) -> int:
        """exit(code) of this one thread (a thread made by clone3(CLONE_THREAD))."""
        return self._inject_exit(SYS_exit, code)

    def _inject_exit(self, nr: int, code: int) -> int:
        try:
            self.syscall(nr, code)
        except InjectionError as err:
            if err.status is None or stop_event(err.status) != PTRACE_EVENT_EXIT:
                raise
            ptrace.cont(self.tid)  # PTRACE_O_TRACEEXIT: let it finish dying
            try:
                wait_stop(self.tid, self.timeout)
            except TaskGone as gone:
                self.gone = gone
        except TaskGone:
            pass
        if self.gone is None or self.gone.status is None:
            raise InjectionError(self.tid, f"injected syscall {nr} ({code}) did not end the task")
        return self.gone.status


def bench_injection(tid: int, method: str, n: int = 1000, pin_cpu: bool = True) -> float:
    """Mean seconds per injected getpid with `method` (the task must be stopped)."""
    with Injector(tid, method=method, pin_cpu=pin_cpu) as inj:
        inj.getpid()
        t0 = time.perf_counter()
        for _ in range(n):
            inj.syscall(SYS_getpid)
        return (time.perf_counter() - t0) / n
