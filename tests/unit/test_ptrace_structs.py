"""Struct layouts and constants of the ptrace / injection layer (no root needed).

Sizes and offsets are the kernel's (x86_64); a wrong one corrupts a tracee
silently, so each is pinned here.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct

import pytest

from vzpy.sys import inject, ptrace
from vzpy.sys.inject import CloneArgs, KernelSigaction
from vzpy.sys.ptrace import (
    Iovec,
    PeekSiginfoArgs,
    PtraceSyscallInfo,
    RseqConfiguration,
    UserRegs,
)


@pytest.mark.parametrize(
    "struct_type, size",
    [
        (UserRegs, 216),
        (PtraceSyscallInfo, 88),
        (RseqConfiguration, 24),
        (PeekSiginfoArgs, 16),
        (Iovec, 16),
        (CloneArgs, 88),
        (KernelSigaction, 32),
    ],
)
def test_struct_size(struct_type, size):
    assert ctypes.sizeof(struct_type) == size


def test_struct_docstrings_quote_c():
    for t in (UserRegs, PtraceSyscallInfo, RseqConfiguration, PeekSiginfoArgs, Iovec, CloneArgs):
        assert "struct " in t.__doc__ and "{" in t.__doc__, t


def test_user_regs_layout():
    names = [n for n, _ in UserRegs._fields_]
    assert (
        names
        == (
            "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax "
            "rip cs eflags rsp ss fs_base gs_base ds es fs gs"
        ).split()
    )
    # offsets that PTRACE_PEEKUSER users and the kernel agree on
    assert UserRegs.rax.offset == 80
    assert UserRegs.orig_rax.offset == 120
    assert UserRegs.rip.offset == 128
    assert UserRegs.eflags.offset == 144
    assert UserRegs.rsp.offset == 152
    assert UserRegs.fs_base.offset == 168
    assert UserRegs.gs.offset == 208


def test_user_regs_bytes_roundtrip_and_negative_values():
    r = UserRegs()
    r.orig_rax = (1 << 64) - 1
    r.rax = (-516) & ((1 << 64) - 1)
    r.rip = 0x401000
    data = r.to_bytes()
    assert len(data) == 216
    assert struct.unpack_from("<q", data, 120)[0] == -1
    back = UserRegs.from_bytes(data)
    assert ptrace.signed(back.orig_rax) == -1
    assert ptrace.signed(back.rax) == -516
    assert back.rip == 0x401000
    c = back.copy()
    c.rip = 1
    assert back.rip == 0x401000
    assert back.as_dict()["rip"] == 0x401000


def test_syscall_info_layout():
    assert PtraceSyscallInfo.op.offset == 0
    assert PtraceSyscallInfo.flags.offset == 2
    assert PtraceSyscallInfo.arch.offset == 4
    assert PtraceSyscallInfo.instruction_pointer.offset == 8
    assert PtraceSyscallInfo.stack_pointer.offset == 16
    raw = bytearray(88)
    raw[0] = ptrace.PTRACE_SYSCALL_INFO_EXIT
    struct.pack_into("<I", raw, 4, ptrace.AUDIT_ARCH_X86_64)
    struct.pack_into("<qB", raw, 24, -9, 1)
    info = PtraceSyscallInfo.from_buffer_copy(bytes(raw))
    assert info.exit.rval == -9 and info.exit.is_error == 1
    struct.pack_into("<7Q", raw, 24, 39, 1, 2, 3, 4, 5, 6)
    struct.pack_into("<I", raw, 80, 0xABCD)
    info = PtraceSyscallInfo.from_buffer_copy(bytes(raw))
    assert info.entry.nr == 39 and list(info.entry.args) == [1, 2, 3, 4, 5, 6]
    assert info.seccomp.ret_data == 0xABCD


def test_small_struct_layouts():
    assert RseqConfiguration.signature.offset == 12
    assert RseqConfiguration.flags.offset == 16
    assert PeekSiginfoArgs.flags.offset == 8
    assert PeekSiginfoArgs.nr.offset == 12
    assert Iovec.iov_len.offset == 8
    assert CloneArgs.exit_signal.offset == 32
    assert CloneArgs.set_tid.offset == 64
    assert CloneArgs.set_tid_size.offset == 72
    assert CloneArgs.cgroup.offset == 80
    assert KernelSigaction.sa_mask.offset == 24


def test_request_constants():
    expected = {
        "PTRACE_PEEKDATA": 2,
        "PTRACE_POKEDATA": 5,
        "PTRACE_CONT": 7,
        "PTRACE_KILL": 8,
        "PTRACE_SINGLESTEP": 9,
        "PTRACE_GETREGS": 12,
        "PTRACE_SETREGS": 13,
        "PTRACE_GETFPREGS": 14,
        "PTRACE_ATTACH": 16,
        "PTRACE_DETACH": 17,
        "PTRACE_SYSCALL": 24,
        "PTRACE_SETOPTIONS": 0x4200,
        "PTRACE_GETEVENTMSG": 0x4201,
        "PTRACE_GETSIGINFO": 0x4202,
        "PTRACE_SETSIGINFO": 0x4203,
        "PTRACE_GETREGSET": 0x4204,
        "PTRACE_SETREGSET": 0x4205,
        "PTRACE_SEIZE": 0x4206,
        "PTRACE_INTERRUPT": 0x4207,
        "PTRACE_LISTEN": 0x4208,
        "PTRACE_PEEKSIGINFO": 0x4209,
        "PTRACE_GETSIGMASK": 0x420A,
        "PTRACE_SETSIGMASK": 0x420B,
        "PTRACE_GET_SYSCALL_INFO": 0x420E,
        "PTRACE_GET_RSEQ_CONFIGURATION": 0x420F,
        "PTRACE_SET_SYSCALL_INFO": 0x4212,
    }
    for name, value in expected.items():
        assert getattr(ptrace, name) == value, name


def test_option_event_and_misc_constants():
    assert ptrace.PTRACE_O_TRACESYSGOOD == 1
    assert ptrace.PTRACE_O_TRACEFORK == 2
    assert ptrace.PTRACE_O_TRACEVFORK == 4
    assert ptrace.PTRACE_O_TRACECLONE == 8
    assert ptrace.PTRACE_O_TRACEEXEC == 0x10
    assert ptrace.PTRACE_O_TRACEEXIT == 0x40
    assert ptrace.PTRACE_O_EXITKILL == 0x100000
    assert ptrace.PTRACE_O_SUSPEND_SECCOMP == 0x200000
    assert ptrace.PTRACE_EVENT_FORK == 1
    assert ptrace.PTRACE_EVENT_VFORK == 2
    assert ptrace.PTRACE_EVENT_CLONE == 3
    assert ptrace.PTRACE_EVENT_EXEC == 4
    assert ptrace.PTRACE_EVENT_EXIT == 6
    assert ptrace.PTRACE_EVENT_STOP == 128
    assert ptrace.NT_PRSTATUS == 1
    assert ptrace.NT_PRFPREG == 2
    assert ptrace.NT_X86_XSTATE == 0x202
    assert ptrace.__WALL == 0x40000000
    assert ptrace.SIGSET_SIZE == 8
    # every option fits the kernel's PTRACE_O_MASK
    for name in dir(ptrace):
        if name.startswith("PTRACE_O_") and name != "PTRACE_O_MASK":
            assert getattr(ptrace, name) & ~ptrace.PTRACE_O_MASK == 0, name


def test_request_names_do_not_mix_options_in():
    # PTRACE_O_TRACESYSGOOD == PTRACE_PEEKTEXT == 1: error messages must say the request
    assert ptrace._REQUEST_NAMES[1] == "PTRACE_PEEKTEXT"
    assert ptrace._REQUEST_NAMES[0x4207] == "PTRACE_INTERRUPT"


def test_inject_syscall_numbers():
    assert inject.SYS_mmap == 9
    assert inject.SYS_munmap == 11
    assert inject.SYS_mremap == 25
    assert inject.SYS_rt_sigaction == 13
    assert inject.SYS_getpid == 39
    assert inject.SYS_exit == 60
    assert inject.SYS_wait4 == 61
    assert inject.SYS_exit_group == 231
    assert inject.SYS_clone3 == 435


def _stopped(sig: int, event: int = 0) -> int:
    return (event << 16) | (sig << 8) | 0x7F


def test_status_helpers():
    st = _stopped(signal.SIGTRAP, ptrace.PTRACE_EVENT_STOP)
    assert os.WIFSTOPPED(st)
    assert ptrace.stop_event(st) == ptrace.PTRACE_EVENT_STOP
    assert ptrace.stop_sig(st) == signal.SIGTRAP
    assert not ptrace.is_group_stop(st)
    assert ptrace.is_group_stop(_stopped(signal.SIGSTOP, ptrace.PTRACE_EVENT_STOP))
    assert not ptrace.is_group_stop(_stopped(signal.SIGSTOP))  # signal-delivery stop
    sysgood = _stopped(signal.SIGTRAP | 0x80)
    assert ptrace.stop_event(sysgood) == 0 and ptrace.stop_sig(sysgood) == 0x85
    assert "PTRACE_EVENT_CLONE" in ptrace.describe_status(
        _stopped(signal.SIGTRAP, ptrace.PTRACE_EVENT_CLONE)
    )
    assert "SIGTRAP|0x80" in ptrace.describe_status(sysgood)
    assert ptrace.describe_status(7 << 8) == "exited(7)"
    assert ptrace.describe_status(signal.SIGKILL) == "killed(SIGKILL)"


def test_signed():
    assert ptrace.signed(0) == 0
    assert ptrace.signed((1 << 64) - 9) == -9
    assert ptrace.signed((1 << 63) - 1) == (1 << 63) - 1


def test_siginfo_header():
    info = struct.pack("<iii", signal.SIGUSR1, 0, -6) + bytes(116)
    assert ptrace.siginfo_header(info) == (signal.SIGUSR1, 0, -6)


def test_task_gone():
    gone = ptrace.TaskGone(42, 7 << 8)
    assert isinstance(gone, ProcessLookupError)
    assert gone.exit_code == 7 and "exited with status 7" in str(gone)
    killed = ptrace.TaskGone(42, signal.SIGKILL)
    assert killed.exit_code == -signal.SIGKILL and "signal 9" in str(killed)
    assert ptrace.TaskGone(42, None).exit_code is None


def test_set_siginfo_checks_size():
    with pytest.raises(ValueError):
        ptrace.set_siginfo(1, b"short")


def test_injector_rejects_unknown_method_and_use_outside_with():
    with pytest.raises(ValueError):
        inject.Injector(1, method="int3")
    inj = inject.Injector(1)
    with pytest.raises(RuntimeError):
        inj.syscall(inject.SYS_getpid)
    with pytest.raises(TypeError):
        inj.syscall(inject.SYS_getpid, 1, 2, 3, 4, 5, 6, 7)


def test_ptrace_error_is_oserror_with_errno():
    # pid 0 is never a tracee of ours: ESRCH, raised like the os module does
    with pytest.raises(ProcessLookupError) as ei:
        ptrace.get_regs(0)
    assert "PTRACE_GETREGS" in str(ei.value)
