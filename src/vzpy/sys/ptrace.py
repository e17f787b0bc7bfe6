"""ptrace(2) through ctypes: PTRACE_SEIZE-based tracing for checkpoint/restore.

Only what a transparent checkpointer needs, with the kernel's names.  x86_64.

Rules that every caller must keep (kernel-notes §1):

* **Attach with SEIZE, never ATTACH.**  ``seize()`` does not stop the task and
  sends no SIGSTOP; ``interrupt()`` then asks for a ``PTRACE_EVENT_STOP``
  (status ``SIGTRAP | PTRACE_EVENT_STOP << 8``).
* **The tracer is a thread, not a process.**  Every request for a tracee must
  come from the thread that seized it (the kernel checks ``task->parent``).
  ``os.waitpid`` on it may come from any thread of our process.
* **Reap traced tasks only with ``os.waitpid(tid, __WALL)``.**  Never let
  ``subprocess.Popen.wait()/poll()`` look at a traced child: it consumes the
  ptrace stop statuses and takes a stop for an exit.  A traced non-leader
  thread must be reaped by us too, or ``waitpid(leader)`` never returns.
* **Most requests need a ptrace stop.**  The kernel answers ``ESRCH`` when the
  tracee is running (or gone); this includes ``PTRACE_DETACH``.  Only SEIZE,
  INTERRUPT and KILL work on a running tracee.
* **Signal-delivery stops eat the signal** unless it is passed back with
  ``cont(tid, sig)``/``detach(tid, sig)``.
* Resources are released by ``with seized(...)``, never in ``__del__``.

Each function raises ``OSError`` with the kernel's errno, like the ``os``
module does (``ProcessLookupError`` for ESRCH).
"""

from __future__ import annotations

import ctypes
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

# --- requests (include/uapi/linux/ptrace.h) ---------------------------------------
PTRACE_TRACEME = 0
PTRACE_PEEKTEXT = 1
PTRACE_PEEKDATA = 2
PTRACE_PEEKUSER = 3
PTRACE_POKETEXT = 4
PTRACE_POKEDATA = 5
PTRACE_POKEUSER = 6
PTRACE_CONT = 7
PTRACE_KILL = 8
PTRACE_SINGLESTEP = 9
PTRACE_GETREGS = 12
PTRACE_SETREGS = 13
PTRACE_GETFPREGS = 14
PTRACE_SETFPREGS = 15
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PTRACE_SYSCALL = 24
PTRACE_SETOPTIONS = 0x4200
PTRACE_GETEVENTMSG = 0x4201
PTRACE_GETSIGINFO = 0x4202
PTRACE_SETSIGINFO = 0x4203
PTRACE_GETREGSET = 0x4204
PTRACE_SETREGSET = 0x4205
PTRACE_SEIZE = 0x4206
PTRACE_INTERRUPT = 0x4207
PTRACE_LISTEN = 0x4208
PTRACE_PEEKSIGINFO = 0x4209
PTRACE_GETSIGMASK = 0x420A
PTRACE_SETSIGMASK = 0x420B
PTRACE_SECCOMP_GET_FILTER = 0x420C
PTRACE_SECCOMP_GET_METADATA = 0x420D
PTRACE_GET_SYSCALL_INFO = 0x420E
PTRACE_GET_RSEQ_CONFIGURATION = 0x420F
PTRACE_SET_SYSCALL_USER_DISPATCH_CONFIG = 0x4210
PTRACE_GET_SYSCALL_USER_DISPATCH_CONFIG = 0x4211
PTRACE_SET_SYSCALL_INFO = 0x4212

# --- options (PTRACE_SETOPTIONS / SEIZE data) -------------------------------------
PTRACE_O_TRACESYSGOOD = 0x1
PTRACE_O_TRACEFORK = 0x2
PTRACE_O_TRACEVFORK = 0x4
PTRACE_O_TRACECLONE = 0x8
PTRACE_O_TRACEEXEC = 0x10
PTRACE_O_TRACEVFORKDONE = 0x20
PTRACE_O_TRACEEXIT = 0x40
PTRACE_O_TRACESECCOMP = 0x80
PTRACE_O_EXITKILL = 0x100000
PTRACE_O_SUSPEND_SECCOMP = 0x200000
PTRACE_O_MASK = 0x3000FF

# --- events (wait status >> 16) ---------------------------------------------------
PTRACE_EVENT_FORK = 1
PTRACE_EVENT_VFORK = 2
PTRACE_EVENT_CLONE = 3
PTRACE_EVENT_EXEC = 4
PTRACE_EVENT_VFORK_DONE = 5
PTRACE_EVENT_EXIT = 6
PTRACE_EVENT_SECCOMP = 7
PTRACE_EVENT_STOP = 128

PTRACE_EVENT_NAMES = {
    PTRACE_EVENT_FORK: "FORK",
    PTRACE_EVENT_VFORK: "VFORK",
    PTRACE_EVENT_CLONE: "CLONE",
    PTRACE_EVENT_EXEC: "EXEC",
    PTRACE_EVENT_VFORK_DONE: "VFORK_DONE",
    PTRACE_EVENT_EXIT: "EXIT",
    PTRACE_EVENT_SECCOMP: "SECCOMP",
    PTRACE_EVENT_STOP: "STOP",
}

# PTRACE_PEEKSIGINFO flags
PTRACE_PEEKSIGINFO_SHARED = 1

# PTRACE_GET_SYSCALL_INFO op values
PTRACE_SYSCALL_INFO_NONE = 0
PTRACE_SYSCALL_INFO_ENTRY = 1
PTRACE_SYSCALL_INFO_EXIT = 2
PTRACE_SYSCALL_INFO_SECCOMP = 3

AUDIT_ARCH_X86_64 = 0xC000003E

# --- ELF note types for GETREGSET/SETREGSET (include/uapi/linux/elf.h) -----------
NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_X86_XSTATE = 0x202

# --- wait flags -------------------------------------------------------------------
__WALL = 0x40000000
WALL = __WALL  # inside a class body, "__WALL" would be name-mangled
__WNOTHREAD = 0x20000000
__WCLONE = 0x80000000

SIGINFO_SIZE = 128  # sizeof(siginfo_t)
SIGSET_SIZE = 8  # sizeof(kernel sigset_t) on x86_64: what GET/SETSIGMASK want in addr
FPREGS_SIZE = 512  # struct user_fpregs_struct (FXSAVE area)
XSTATE_BUFSIZE = 1 << 16  # larger than any XSAVE area; the kernel shrinks iov_len
SIGMASK_ALL = (1 << 64) - 1

_u64 = ctypes.c_uint64
_u32 = ctypes.c_uint32
_s32 = ctypes.c_int32


# --- structs ------------------------------------------------------------------------
class UserRegs(ctypes.Structure):
    """``struct user_regs_struct`` (arch/x86/include/asm/user_64.h), 216 bytes::

        struct user_regs_struct {
            unsigned long r15, r14, r13, r12, bp, bx, r11, r10;
            unsigned long r9, r8, ax, cx, dx, si, di, orig_ax;
            unsigned long ip, cs, flags, sp, ss, fs_base, gs_base;
            unsigned long ds, es, fs, gs;
        };

    Field names are the ones of the userspace header ``<sys/user.h>`` (``rax``,
    ``rip``, ``eflags``...), which has the same layout.  Values are unsigned;
    use ``signed()`` to read ``rax``/``orig_rax`` as the kernel means them.
    """

    _fields_ = [
        (name, _u64)
        for name in (
            "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax "
            "rip cs eflags rsp ss fs_base gs_base ds es fs gs"
        ).split()
    ]

    def copy(self) -> UserRegs:
        return UserRegs.from_buffer_copy(self)

    def to_bytes(self) -> bytes:
        return bytes(self)

    @classmethod
    def from_bytes(cls, data: bytes) -> UserRegs:
        return cls.from_buffer_copy(data)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name, _ in self._fields_}

    def __repr__(self) -> str:
        return (
            f"UserRegs(rip={self.rip:#x}, rsp={self.rsp:#x}, rax={signed(self.rax)}, "
            f"orig_rax={signed(self.orig_rax)}, eflags={self.eflags:#x})"
        )


class _SyscallEntry(ctypes.Structure):
    _fields_ = [("nr", _u64), ("args", _u64 * 6)]


class _SyscallExit(ctypes.Structure):
    _fields_ = [("rval", ctypes.c_int64), ("is_error", ctypes.c_uint8)]


class _SyscallSeccomp(ctypes.Structure):
    _fields_ = [
        ("nr", _u64),
        ("args", _u64 * 6),
        ("ret_data", _u32),
        ("reserved2", _u32),
    ]


class _SyscallInfoUnion(ctypes.Union):
    _fields_ = [("entry", _SyscallEntry), ("exit", _SyscallExit), ("seccomp", _SyscallSeccomp)]


class PtraceSyscallInfo(ctypes.Structure):
    """``struct ptrace_syscall_info`` (include/uapi/linux/ptrace.h, 6.16+), 88 bytes::

    struct ptrace_syscall_info {
        __u8 op;        /* PTRACE_SYSCALL_INFO_* */
        __u8 reserved;
        __u16 flags;
        __u32 arch;
        __u64 instruction_pointer;
        __u64 stack_pointer;
        union {
            struct { __u64 nr; __u64 args[6]; } entry;
            struct { __s64 rval; __u8 is_error; } exit;
            struct { __u64 nr; __u64 args[6];
                     __u32 ret_data; __u32 reserved2; } seccomp;
        };
    };
    """

    _anonymous_ = ("u",)
    _fields_ = [
        ("op", ctypes.c_uint8),
        ("reserved", ctypes.c_uint8),
        ("flags", ctypes.c_uint16),
        ("arch", _u32),
        ("instruction_pointer", _u64),
        ("stack_pointer", _u64),
        ("u", _SyscallInfoUnion),
    ]


class RseqConfiguration(ctypes.Structure):
    """``struct ptrace_rseq_configuration`` (include/uapi/linux/ptrace.h), 24 bytes::

    struct ptrace_rseq_configuration {
        __u64 rseq_abi_pointer;
        __u32 rseq_abi_size;
        __u32 signature;
        __u32 flags;
        __u32 pad;
    };
    """

    _fields_ = [
        ("rseq_abi_pointer", _u64),
        ("rseq_abi_size", _u32),
        ("signature", _u32),
        ("flags", _u32),
        ("pad", _u32),
    ]


class PeekSiginfoArgs(ctypes.Structure):
    """``struct ptrace_peeksiginfo_args`` (include/uapi/linux/ptrace.h), 16 bytes::

    struct ptrace_peeksiginfo_args {
        __u64 off;    /* from which siginfo to start */
        __u32 flags;  /* PTRACE_PEEKSIGINFO_SHARED: the process-wide queue */
        __s32 nr;     /* how many siginfos to take */
    };
    """

    _fields_ = [("off", _u64), ("flags", _u32), ("nr", _s32)]


class Iovec(ctypes.Structure):
    """``struct iovec`` (include/uapi/linux/uio.h), 16 bytes::

    struct iovec {
        void __user *iov_base;
        __kernel_size_t iov_len;
    };
    """

    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


# --- the call ------------------------------------------------------------------------
_libc = ctypes.CDLL(None, use_errno=True)
_ptrace = _libc.ptrace
_ptrace.restype = ctypes.c_long
_ptrace.argtypes = (ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p)

_REQUEST_NAMES = {
    v: k
    for k, v in globals().items()
    if k.startswith("PTRACE_")
    and isinstance(v, int)
    and not k.startswith(
        ("PTRACE_O_", "PTRACE_EVENT_", "PTRACE_SYSCALL_INFO_", "PTRACE_PEEKSIGINFO_")
    )
}


def _call(request: int, tid: int, addr: int | None = 0, data: int | None = 0) -> int:
    """Raw ptrace(2); raises OSError(errno).  Not for PEEK* requests (glibc rewrites them)."""
    ret = _ptrace(request, tid, addr, data)
    if ret == -1:
        err = ctypes.get_errno()
        name = _REQUEST_NAMES.get(request, str(request))
        raise OSError(err, f"ptrace({name}, {tid}): {os.strerror(err)}")
    return ret


def signed(value: int) -> int:
    """A u64 register value read as the kernel's signed long (rax = -errno...)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _addr(obj: ctypes._CData) -> int:
    return ctypes.addressof(obj)


# --- attach / resume -------------------------------------------------------------------
def seize(tid: int, options: int = 0) -> None:
    """PTRACE_SEIZE: become the tracer of `tid` without stopping it."""
    _call(PTRACE_SEIZE, tid, 0, options)


def interrupt(tid: int) -> None:
    """PTRACE_INTERRUPT: ask a seized task for a PTRACE_EVENT_STOP (see ``wait_stop``)."""
    _call(PTRACE_INTERRUPT, tid)


def cont(tid: int, sig: int = 0) -> None:
    """PTRACE_CONT, injecting `sig` if the task is in a signal-delivery stop."""
    _call(PTRACE_CONT, tid, 0, sig)


def detach(tid: int, sig: int = 0) -> None:
    """PTRACE_DETACH (needs a ptrace stop; ESRCH if the task is running)."""
    _call(PTRACE_DETACH, tid, 0, sig)


def singlestep(tid: int, sig: int = 0) -> None:
    _call(PTRACE_SINGLESTEP, tid, 0, sig)


def syscall(tid: int, sig: int = 0) -> None:
    """PTRACE_SYSCALL: resume until the next syscall-entry or -exit stop."""
    _call(PTRACE_SYSCALL, tid, 0, sig)


def listen(tid: int) -> None:
    """PTRACE_LISTEN: leave a group-stopped task stopped but let it report events."""
    _call(PTRACE_LISTEN, tid)


def kill(tid: int) -> None:
    """PTRACE_KILL (deprecated by the kernel; prefer os.kill(tid, SIGKILL))."""
    _call(PTRACE_KILL, tid)


def set_options(tid: int, opts: int) -> None:
    _call(PTRACE_SETOPTIONS, tid, 0, opts)


def get_event_msg(tid: int) -> int:
    """PTRACE_GETEVENTMSG: the new tid at FORK/VFORK/CLONE, exit status at EXIT..."""
    msg = ctypes.c_ulong()
    _call(PTRACE_GETEVENTMSG, tid, 0, _addr(msg))
    return msg.value


# --- registers ---------------------------------------------------------------------------
def get_regs(tid: int) -> UserRegs:
    regs = UserRegs()
    _call(PTRACE_GETREGS, tid, 0, _addr(regs))
    return regs


def set_regs(tid: int, regs: UserRegs) -> None:
    _call(PTRACE_SETREGS, tid, 0, _addr(regs))


def get_regset(tid: int, nt: int, bufsize: int) -> bytes:
    """PTRACE_GETREGSET: up to `bufsize` bytes (a multiple of the regset's unit);
    the kernel shrinks ``iov_len`` to what it wrote."""
    buf = ctypes.create_string_buffer(bufsize)
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), bufsize)
    _call(PTRACE_GETREGSET, tid, nt, _addr(iov))
    return buf.raw[: iov.iov_len]


def set_regset(tid: int, nt: int, data: bytes) -> None:
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    iov = Iovec(ctypes.cast(buf, ctypes.c_void_p), len(data))
    _call(PTRACE_SETREGSET, tid, nt, _addr(iov))


def get_xstate(tid: int) -> bytes:
    """The XSAVE area (NT_X86_XSTATE): 2432 bytes on the AVX-512 test machines.

    XCR0 is the u64 at offset 464 (``sw_reserved``), ``xstate_bv`` at 512.
    """
    return get_regset(tid, NT_X86_XSTATE, XSTATE_BUFSIZE)


def set_xstate(tid: int, data: bytes) -> None:
    """Write a whole XSAVE area back; the kernel wants exactly its own size."""
    set_regset(tid, NT_X86_XSTATE, data)


def get_fpregs(tid: int) -> bytes:
    """The 512-byte FXSAVE area (NT_PRFPREG, same as PTRACE_GETFPREGS)."""
    return get_regset(tid, NT_PRFPREG, FPREGS_SIZE)


def set_fpregs(tid: int, data: bytes) -> None:
    set_regset(tid, NT_PRFPREG, data)


# --- signals ---------------------------------------------------------------------------
def get_sigmask(tid: int) -> int:
    """The blocked mask as an int, bit (sig-1) set for a blocked signal."""
    mask = ctypes.c_uint64()
    _call(PTRACE_GETSIGMASK, tid, SIGSET_SIZE, _addr(mask))
    return mask.value


def set_sigmask(tid: int, mask: int) -> None:
    """Set the blocked mask; the kernel silently drops SIGKILL and SIGSTOP from it."""
    m = ctypes.c_uint64(mask & SIGMASK_ALL)
    _call(PTRACE_SETSIGMASK, tid, SIGSET_SIZE, _addr(m))


def peek_siginfo(tid: int, shared: bool) -> list[bytes]:
    """Pending siginfos (128 bytes each), per-thread queue or, with `shared`, the
    process-wide one (where a ``kill()``-sent signal waits).  Does not dequeue."""
    out: list[bytes] = []
    batch = 32
    buf = ctypes.create_string_buffer(SIGINFO_SIZE * batch)
    args = PeekSiginfoArgs(0, PTRACE_PEEKSIGINFO_SHARED if shared else 0, batch)
    while True:
        n = _call(PTRACE_PEEKSIGINFO, tid, _addr(args), _addr(buf))
        if n <= 0:
            return out
        raw = buf.raw
        out.extend(raw[i * SIGINFO_SIZE : (i + 1) * SIGINFO_SIZE] for i in range(n))
        args.off += n


def siginfo_header(info: bytes) -> tuple[int, int, int]:
    """(si_signo, si_errno, si_code) of a 128-byte siginfo."""
    return (
        int.from_bytes(info[0:4], "little", signed=True),
        int.from_bytes(info[4:8], "little", signed=True),
        int.from_bytes(info[8:12], "little", signed=True),
    )


def get_siginfo(tid: int) -> bytes:
    """PTRACE_GETSIGINFO: the siginfo of the current stop (EINVAL in a group-stop)."""
    buf = ctypes.create_string_buffer(SIGINFO_SIZE)
    _call(PTRACE_GETSIGINFO, tid, 0, _addr(buf))
    return buf.raw


def set_siginfo(tid: int, data: bytes) -> None:
    if len(data) != SIGINFO_SIZE:
        raise ValueError(f"siginfo must be {SIGINFO_SIZE} bytes, got {len(data)}")
    buf = ctypes.create_string_buffer(bytes(data), SIGINFO_SIZE)
    _call(PTRACE_SETSIGINFO, tid, 0, _addr(buf))


# --- misc state -------------------------------------------------------------------------
def get_rseq_config(tid: int) -> RseqConfiguration:
    conf = RseqConfiguration()
    _call(PTRACE_GET_RSEQ_CONFIGURATION, tid, ctypes.sizeof(conf), _addr(conf))
    return conf


def get_syscall_info(tid: int) -> PtraceSyscallInfo:
    """PTRACE_GET_SYSCALL_INFO: ``op`` says whether the stop is a syscall entry,
    exit, seccomp stop or none of those."""
    info = PtraceSyscallInfo()
    _call(PTRACE_GET_SYSCALL_INFO, tid, ctypes.sizeof(info), _addr(info))
    return info


# --- waiting -------------------------------------------------------------------------------
class TaskGone(ProcessLookupError):
    """The traced task exited or was killed while we waited for a stop.

    ``status`` is the raw wait status (``os.waitstatus_to_exitcode`` decodes
    it), or None when there was nothing left to wait for (ECHILD).
    """

    def __init__(self, tid: int, status: int | None, message: str | None = None) -> None:
        if message is None:
            if status is None:
                message = f"task {tid} is gone (nothing to wait for)"
            elif os.WIFSIGNALED(status):
                message = f"task {tid} was killed by signal {os.WTERMSIG(status)}"
            else:
                message = f"task {tid} exited with status {os.WEXITSTATUS(status)}"
        super().__init__(3, message)  # ESRCH
        self.tid = tid
        self.status = status

    @property
    def exit_code(self) -> int | None:
        """Like Popen.returncode: exit status, or -signal."""
        return None if self.status is None else os.waitstatus_to_exitcode(self.status)


def stop_event(status: int) -> int:
    """The PTRACE_EVENT_* of a stop (0 for a signal-delivery or syscall stop)."""
    return (status >> 16) & 0xFFFF


def stop_sig(status: int) -> int:
    """WSTOPSIG: the signal of the stop (SIGTRAP|0x80 for a TRACESYSGOOD syscall stop)."""
    return (status >> 8) & 0xFF


def describe_status(status: int) -> str:
    """A human-readable wait status, for error messages."""
    if os.WIFEXITED(status):
        return f"exited({os.WEXITSTATUS(status)})"
    if os.WIFSIGNALED(status):
        return f"killed({signal.Signals(os.WTERMSIG(status)).name})"
    if os.WIFSTOPPED(status):
        sig = stop_sig(status)
        ev = stop_event(status)
        try:
            sname = signal.Signals(sig & 0x7F).name + ("|0x80" if sig & 0x80 else "")
        except ValueError:
            sname = str(sig)
        if ev:
            return f"stopped({sname}, PTRACE_EVENT_{PTRACE_EVENT_NAMES.get(ev, ev)})"
        return f"stopped({sname})"
    return f"status({status:#x})"


def wait_stop(tid: int, timeout: float | None = None) -> int:
    """Wait for the next ptrace stop of `tid` and return its raw status.

    Raises ``TaskGone`` if the task exited or was killed (its status is then
    reaped), and ``TimeoutError`` if `timeout` seconds passed without a stop
    (polled with WNOHANG; the task is left as it was).
    """
    if timeout is None:
        while True:
            try:
                pid, status = os.waitpid(tid, __WALL)
            except ChildProcessError as err:
                raise TaskGone(tid, None) from err
            if pid == tid:
                break
    else:
        deadline = time.monotonic() + timeout
        delay = 20e-6
        while True:
            try:
                pid, status = os.waitpid(tid, __WALL | os.WNOHANG)
            except ChildProcessError as err:
                raise TaskGone(tid, None) from err
            if pid == tid:
                break
            now = time.monotonic()
            if now >= deadline:
                raise TimeoutError(f"task {tid}: no ptrace stop within {timeout:.3f}s")
            time.sleep(min(delay, deadline - now))
            delay = min(delay * 2, 0.005)
    if os.WIFSTOPPED(status):
        return status
    raise TaskGone(tid, status)


def is_group_stop(status: int) -> bool:
    """A SEIZEd task's group-stop: EVENT_STOP with a stopping signal (not SIGTRAP)."""
    return stop_event(status) == PTRACE_EVENT_STOP and stop_sig(status) in (
        signal.SIGSTOP,
        signal.SIGTSTP,
        signal.SIGTTIN,
        signal.SIGTTOU,
    )


def interrupt_and_wait(tid: int, timeout: float | None = None) -> int:
    """PTRACE_INTERRUPT then wait for the stop; returns its status.

    The first stop reported is not always the EVENT_STOP: a signal-delivery
    stop or another event may come first; the caller decides what to do with it.
    """
    interrupt(tid)
    return wait_stop(tid, timeout)


def release(tid: int, sig: int = 0, timeout: float = 5.0) -> None:
    """Detach from `tid` whatever its state: stopped, running or gone.

    A running tracee is interrupted first (DETACH needs a stop).  A signal
    found in a signal-delivery stop on the way is passed on, except SIGTRAP,
    which at that point is ours (single-step, syscall stop).
    """
    try:
        detach(tid, sig)
        return
    except ProcessLookupError:
        pass  # running (no stop to detach from), or gone
    try:
        interrupt(tid)
    except ProcessLookupError:
        return  # not traced by us any more, or gone
    try:
        status = wait_stop(tid, timeout)
    except TaskGone:
        return
    ev, ssig = stop_event(status), stop_sig(status)
    if ev == 0 and ssig & 0x7F != signal.SIGTRAP:
        sig = sig or ssig
    try:
        detach(tid, sig)
    except ProcessLookupError:
        pass


class Tracee:
    """A seized task, with the ptrace functions bound to its tid."""

    def __init__(self, tid: int, options: int = 0) -> None:
        self.tid = tid
        self.options = options

    def interrupt(self, timeout: float | None = None) -> int:
        """Stop the task; returns the status of the first stop reported."""
        return interrupt_and_wait(self.tid, timeout)

    def wait(self, timeout: float | None = None) -> int:
        return wait_stop(self.tid, timeout)

    def cont(self, sig: int = 0) -> None:
        cont(self.tid, sig)

    def set_options(self, opts: int) -> None:
        set_options(self.tid, opts)
        self.options = opts

    def get_regs(self) -> UserRegs:
        return get_regs(self.tid)

    def set_regs(self, regs: UserRegs) -> None:
        set_regs(self.tid, regs)

    def get_sigmask(self) -> int:
        return get_sigmask(self.tid)

    def set_sigmask(self, mask: int) -> None:
        set_sigmask(self.tid, mask)

    def release(self, sig: int = 0) -> None:
        release(self.tid, sig)

    def __repr__(self) -> str:
        return f"Tracee({self.tid}, options={self.options:#x})"


@contextmanager
def seized(tid: int, options: int = 0) -> Iterator[Tracee]:
    """``with seized(tid, opts) as t:`` seize `tid`; on exit detach (via ``release``)."""
    seize(tid, options)
    t = Tracee(tid, options)
    try:
        yield t
    finally:
        release(tid)
