"""vzmigrate's pre-checks (vzctl-reference.md §4.4) and the node probe behind them.

``node_info(ctid)`` runs on the destination, as ``vzmigrate --node-info
CTID`` over ssh (so it reads *that* node's vz.conf: whatever VZ_CONFDIR the
session has, else /etc/vz).  One round trip answers: is vzpy there (the probe
itself runs, and it finds vzctl, vzlist and rsync on the session's PATH),
where this CTID would live (VE_ROOT/VE_PRIVATE/DUMPDIR from the node's own
vz.conf, raw and expanded), whether the CTID is taken, and the CPU's XCR0
and flags.

CPU compatibility.  A restored task continues with the register state and
the code paths it chose on the source: glibc and most programs pick their
memcpy/strlen... once from CPUID.  So the destination must have every xstate
component the source kernel enabled (XCR0: otherwise the saved xstate cannot
be loaded) and every user-visible instruction-set flag the source has
(otherwise the first AVX-512 memcpy is a SIGILL).  XCR0 is read with XGETBV
from a tiny machine-code stub; flags from /proc/cpuinfo.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import platform
import shutil
import socket
from dataclasses import dataclass, field

import vzpy

from ..config import ConfFile, VzConfig, ct_conf_path, expand_veid, global_conf_path

# Exit codes of vzmigrate (vzctl-reference.md §4.3).
MIG_OK = 0
MIG_USAGE = 1
MIG_CT_STOPPED = 2
MIG_CONNECT = 4
MIG_COPY = 6
MIG_DEST_START = 7
MIG_SOURCE_STOP = 8
MIG_CT_EXISTS = 9
MIG_NO_CT = 10
MIG_IP_INUSE = 12
MIG_NO_VZ = 14
MIG_CONF_APPLY = 15
MIG_CPU = 18
MIG_REMOTE_PATHS = 19
MIG_LOCKED = 20
MIG_CANCELLED = 3  # not in vzctl 4.x: interrupted by a signal (and rolled back)

XSTATE_NAMES = {
    0: "x87",
    1: "SSE",
    2: "AVX",
    3: "MPX bounds",
    4: "MPX CSR",
    5: "AVX-512 opmask",
    6: "AVX-512 ZMM_Hi256",
    7: "AVX-512 Hi16_ZMM",
    9: "PKRU",
    11: "CET user",
    12: "CET supervisor",
    17: "AMX tile config",
    18: "AMX tile data",
    19: "APX",
}

# /proc/cpuinfo flags for instructions user space may use (and pick at start-up).
USER_ISA_FLAGS = frozenset(
    """
    fpu cx8 cmov mmx fxsr sse sse2 pni ssse3 sse4_1 sse4_2 sse4a popcnt abm lzcnt movbe
    cx16 lahf_lm fma fma4 f16c avx avx2 bmi1 bmi2 adx aes pclmulqdq vaes vpclmulqdq gfni
    sha_ni rdrand rdseed rdpid rdtscp xsave xsaveopt xsavec xsaves xgetbv1 fsgsbase
    erms fsrm fzrm fsrs fsrc clflushopt clwb clzero movdiri movdir64b serialize waitpkg
    avx_vnni avx_vnni_int8 avx_ifma avx_ne_convert avx512f avx512dq avx512cd avx512bw
    avx512vl avx512ifma avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg
    avx512_vpopcntdq avx512_bf16 avx512_fp16 avx512_vp2intersect avx512er avx512pf
    amx_tile amx_bf16 amx_int8 pku ospke user_shstk cldemote 3dnowprefetch misalignsse
    prefetchw xop tbm
    """.split()
)

# xor ecx,ecx; xgetbv; shl rdx,32; or rax,rdx; ret
_XGETBV = bytes.fromhex("31c90f01d048c1e2204809d0c3")
_xcr0_cache: list[int] = []


def read_xcr0() -> int:
    """XCR0 of this CPU/kernel (0 where XGETBV is not available)."""
    if _xcr0_cache:
        return _xcr0_cache[0]
    value = 0
    if platform.machine() == "x86_64" and "xsave" in cpu_flags():
        m = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        m.write(_XGETBV)
        buf = ctypes.c_char.from_buffer(m)
        try:
            value = ctypes.CFUNCTYPE(ctypes.c_uint64)(ctypes.addressof(buf))()
        finally:
            del buf
            m.close()
    _xcr0_cache.append(value)
    return value


def cpu_flags(path: str = "/proc/cpuinfo") -> set[str]:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@dataclass
class CpuInfo:
    xcr0: int
    flags: set[str] = field(default_factory=set)

    @classmethod
    def local(cls) -> CpuInfo:
        return cls(read_xcr0(), cpu_flags())


def cpu_missing(src: CpuInfo, dst: CpuInfo) -> list[str]:
    """What the source has and the destination lacks, in words; empty if compatible."""
    out = []
    lack = src.xcr0 & ~dst.xcr0
    for bit in range(64):
        if lack >> bit & 1:
            out.append(f"xstate {XSTATE_NAMES.get(bit, f'bit {bit}')}")
    isa = sorted((src.flags & USER_ISA_FLAGS) - dst.flags)
    out += isa
    return out


def ip_conflicts(ctid: int, ips: list[str], dest_cts: list[dict]) -> list[tuple[str, int]]:
    """(ip, owner ctid) for every IP of ours that a destination container has."""
    mine = {a.split("/")[0] for a in ips}
    out = []
    for ct in dest_cts:
        owner = ct.get("ctid")
        if owner == ctid:
            continue
        for a in ct.get("ip") or []:
            ip = str(a).split("/")[0]
            if ip in mine:
                out.append((ip, int(owner)))
    return out


# --- the probe (runs on the destination) ---------------------------------------------------------


def node_info(ctid: int) -> dict:
    """Everything the source needs to know about this node, for CTID; JSON-able."""
    info: dict = {
        "vzpy": vzpy.__version__,
        "hostname": socket.gethostname(),
        "kernel": os.uname().release,
        "machine": os.uname().machine,
        "tools": {t: shutil.which(t) for t in ("vzctl", "vzlist", "rsync")},
        "xcr0": read_xcr0(),
        "cpu_flags": sorted(cpu_flags()),
    }
    gpath = global_conf_path()
    info["vz_conf"] = gpath
    try:
        glob = ConfFile.load(gpath)
    except OSError as e:
        info["error"] = f"Can't read global config file {gpath}: {e.strerror}"
        return info
    cfg = VzConfig(ctid, glob, None)  # this node's defaults, whatever CTID.conf says
    info["conf_dir"] = os.path.dirname(ct_conf_path(ctid))
    info["ct_conf"] = ct_conf_path(ctid)
    info["ct_conf_exists"] = os.path.lexists(info["ct_conf"])
    for key in ("VE_ROOT", "VE_PRIVATE"):
        raw = glob.get(key) or ""
        info[key.lower() + "_raw"] = raw
        info[key.lower()] = expand_veid(raw, ctid) if raw else ""
    info["dumpdir"] = cfg.dumpdir
    info["lockdir"] = cfg.lockdir
    info["private_exists"] = bool(info["ve_private"]) and os.path.lexists(info["ve_private"])
    info["private_nonempty"] = info["private_exists"] and bool(_listdir(info["ve_private"]))
    return info


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def node_info_json(ctid: int) -> str:
    return json.dumps(node_info(ctid), sort_keys=True)
