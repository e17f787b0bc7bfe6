"""Every record type of the checkpoint image, declared in one place.

A record is a dict of named fields.  On disk it is a msgpack map whose keys
are the fields' integer *tags*, not their names: a field may be renamed, but
its tag is never changed or given to another field, so an image written by one
vzpy reads the same in every later one with the same format major version.

Rules for changing a record type (docs/image-format.md §4):

- add a field as one new line ``Field("name", NEXT_TAG, "type")``; new fields
  are always optional (an older image lacks them, and the reader fills in the
  default);
- never reuse or renumber a tag; retire a field by moving its tag into the
  type's ``reserved`` tuple;
- a reader ignores tags it does not know, so a new field must be one an older
  vzpy may safely ignore.  State an older restore must not silently drop goes
  into a new record type: an older reader refuses record types it does not
  know (``allow_unknown=False``).

Core types (process tree, task, thread, memory, pagemap, files, fs, signals,
credentials, namespaces, mounts) are declared below with ids below
``FIRST_MODULE_ID``.  A resource module declares its own record types next to
its dump/restore code, at import time, with ids from ``FIRST_MODULE_ID`` up::

    # vzpy/resources/tcp.py
    from vzpy.images.schema import Field, register_record

    TCP_SOCKET = register_record("tcp_socket", id=1100, category="socket", fields=[
        Field("ino", 1, "uint", optional=False),
        Field("src_addr", 2, "str"),
        ...
    ])

``load_schemas()`` imports every module of ``vzpy.resources`` so that a
reader (the restore driver, ``vzimage``) knows every registered type.

Field types: ``uint`` (0..2**64-1), ``int`` (signed 64-bit), ``bool``,
``str``, ``bytes``, ``float``, ``any`` (a msgpack value passed through
unchecked), the name of a record type (a nested record), ``record`` (a nested
record of any registered type, carried with its type: the dict has a
``"_type"`` key naming it), and ``list[T]`` of any of these.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
from collections.abc import Iterable, Mapping
from typing import Any

from vzpy.errors import ImageError

# Ids below this are core types declared in this file; module types use the rest.
FIRST_MODULE_ID = 1000
# Pseudo type of the raw page files in the inventory: not a msgpack record.
PAGES_TYPE = "pages"
PAGES_TYPE_ID = 0

CATEGORIES = (
    "image",
    "process",
    "thread",
    "memory",
    "fd",
    "file",
    "socket",
    "namespace",
    "mount",
    "other",
)

_SCALARS = frozenset({"uint", "int", "bool", "str", "bytes", "float", "any", "record"})
_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")
_U64 = 1 << 64
_I64 = 1 << 63


class SchemaError(ValueError):
    """A record type is declared wrongly, or an object does not fit its type.

    Both are bugs in vzpy itself, never a property of an image on disk (a bad
    image raises ImageError), so this is a plain ValueError.
    """


@dataclasses.dataclass(frozen=True)
class Field:
    """One field of a record type.

    ``tag`` is the integer written to disk; ``hex`` asks the inspector to show
    the value as hexadecimal (addresses, masks).  ``default`` is what a reader
    sees when the field is absent; list fields default to an empty list.
    """

    name: str
    tag: int
    type: str
    optional: bool = True
    default: Any = None
    hex: bool = False
    doc: str = ""


@dataclasses.dataclass(frozen=True)
class RecordType:
    name: str
    id: int
    fields: tuple[Field, ...]
    reserved: tuple[int, ...] = ()
    category: str = "other"
    doc: str = ""
    by_name: Mapping[str, Field] = dataclasses.field(repr=False, compare=False, default=None)
    by_tag: Mapping[int, Field] = dataclasses.field(repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_name", {f.name: f for f in self.fields})
        object.__setattr__(self, "by_tag", {f.tag: f for f in self.fields})


RECORDS: dict[str, RecordType] = {}
RECORDS_BY_ID: dict[int, RecordType] = {}


def _check_type_expr(expr: str) -> None:
    inner = expr[5:-1] if expr.startswith("list[") and expr.endswith("]") else expr
    if inner in _SCALARS or _NAME_RE.match(inner):
        return
    raise SchemaError(f"bad field type {expr!r}")


def register_record(
    name: str,
    *,
    id: int,
    fields: Iterable[Field],
    reserved: Iterable[int] = (),
    category: str = "other",
    doc: str = "",
    _core: bool = False,
) -> RecordType:
    """Declare a record type; call it at import time of the module that owns it.

    Registering the same definition twice (a module imported again) returns
    the existing type; a different type under a taken name or id is an error.
    """
    fields = tuple(fields)
    reserved = tuple(reserved)
    if not _NAME_RE.match(name) or name == PAGES_TYPE:
        raise SchemaError(f"bad record type name {name!r}")
    if not isinstance(id, int) or id <= 0:
        raise SchemaError(f"record type {name}: id must be a positive integer")
    if not _core and id < FIRST_MODULE_ID:
        raise SchemaError(
            f"record type {name}: ids below {FIRST_MODULE_ID} are for vzpy.images.schema"
        )
    if category not in CATEGORIES:
        raise SchemaError(f"record type {name}: unknown category {category!r}")
    seen_names: set[str] = set()
    seen_tags: set[int] = set(reserved)
    for f in fields:
        if not _NAME_RE.match(f.name):
            raise SchemaError(f"record type {name}: bad field name {f.name!r}")
        if not isinstance(f.tag, int) or isinstance(f.tag, bool) or f.tag <= 0:
            raise SchemaError(f"record type {name}: field {f.name} needs a positive int tag")
        if f.name in seen_names:
            raise SchemaError(f"record type {name}: field name {f.name} used twice")
        if f.tag in seen_tags:
            raise SchemaError(f"record type {name}: tag {f.tag} used twice or reserved")
        _check_type_expr(f.type)
        seen_names.add(f.name)
        seen_tags.add(f.tag)
    rt = RecordType(name, id, fields, reserved, category, doc)
    old = RECORDS.get(name) or RECORDS_BY_ID.get(id)
    if old is not None:
        if old == rt:
            return old
        raise SchemaError(
            f"record type {name} (id {id}) clashes with registered {old.name} (id {old.id})"
        )
    RECORDS[name] = rt
    RECORDS_BY_ID[id] = rt
    return rt


def record_type(name: str) -> RecordType:
    try:
        return RECORDS[name]
    except KeyError:
        raise SchemaError(f"no record type named {name!r}") from None


_loaded = False


def load_schemas(packages: Iterable[str] = ("vzpy.resources",)) -> None:
    """Import every module of ``packages`` so their record types are registered.

    Readers call this before decoding an image: a record type lives in the
    resource module that dumps and restores it, and is known only once that
    module has been imported.
    """
    global _loaded
    if _loaded:
        return
    for pkg_name in packages:
        pkg = importlib.import_module(pkg_name)
        for mod in pkgutil.iter_modules(pkg.__path__, pkg_name + "."):
            importlib.import_module(mod.name)
    _loaded = True


# --- encoding -----------------------------------------------------------------


def encode(type_name: str, obj: Any) -> dict[int, Any]:
    """Turn a record (a mapping or dataclass of field names) into a tag-keyed map."""
    return _encode_record(record_type(type_name), obj, type_name)


def _encode_record(rt: RecordType, obj: Any, where: str) -> dict[int, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if not isinstance(obj, Mapping):
        raise SchemaError(
            f"{where}: a {rt.name} record must be a mapping, not {type(obj).__name__}"
        )
    out: dict[int, Any] = {}
    for key, value in obj.items():
        if key == "_type":
            continue
        f = rt.by_name.get(key)
        if f is None:
            raise SchemaError(f"{where}: record type {rt.name} has no field {key!r}")
        if value is None:
            continue
        out[f.tag] = _encode_value(f.type, value, f"{where}.{key}")
    for f in rt.fields:
        if not f.optional and f.tag not in out:
            raise SchemaError(f"{where}: required field {f.name} of {rt.name} is missing")
    return out


def _encode_value(t: str, v: Any, where: str) -> Any:
    if t.startswith("list["):
        if not isinstance(v, list | tuple):
            raise SchemaError(f"{where}: expected a list, got {type(v).__name__}")
        inner = t[5:-1]
        return [_encode_value(inner, x, f"{where}[{i}]") for i, x in enumerate(v)]
    if t == "uint":
        if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < _U64:
            return v
    elif t == "int":
        if isinstance(v, int) and not isinstance(v, bool) and -_I64 <= v < _I64:
            return v
    elif t == "bool":
        if isinstance(v, bool):
            return v
    elif t == "str":
        if isinstance(v, str):
            return v
    elif t == "bytes":
        if isinstance(v, bytes | bytearray | memoryview):
            return bytes(v)
    elif t == "float":
        if isinstance(v, int | float) and not isinstance(v, bool):
            return float(v)
    elif t == "any":
        return v
    elif t == "record":
        if isinstance(v, Mapping) and isinstance(v.get("_type"), str):
            rt = record_type(v["_type"])
            return [rt.id, _encode_record(rt, v, where)]
        raise SchemaError(f"{where}: a 'record' field needs a mapping with a '_type' key")
    else:
        return _encode_record(record_type(t), v, where)
    raise SchemaError(f"{where}: {v!r} is not a valid {t}")


# --- decoding -----------------------------------------------------------------


def decode(
    type_name: str | RecordType,
    tagged: Any,
    *,
    where: str,
    allow_unknown: bool = False,
) -> dict[str, Any]:
    """Turn a tag-keyed map read from disk back into a dict of field names.

    Unknown tags are ignored.  Absent optional fields get their default.  A
    value of the wrong type, a missing required field, or (unless
    ``allow_unknown``) a nested record of a type this vzpy does not know raise
    ImageError naming ``where`` (the file).
    """
    rt = type_name if isinstance(type_name, RecordType) else record_type(type_name)
    return _decode_record(rt, tagged, where, rt.name, allow_unknown)


def _bad(where: str, path: str, msg: str) -> ImageError:
    return ImageError(f"image file {where}: {path}: {msg}")


def _decode_record(
    rt: RecordType, m: Any, where: str, path: str, allow_unknown: bool
) -> dict[str, Any]:
    if not isinstance(m, dict):
        raise _bad(where, path, f"expected a {rt.name} record, found {type(m).__name__}")
    out: dict[str, Any] = {}
    for f in rt.fields:
        if f.tag in m and m[f.tag] is not None:
            out[f.name] = _decode_value(f.type, m[f.tag], where, f"{path}.{f.name}", allow_unknown)
        elif not f.optional:
            raise _bad(where, path, f"required field {f.name} is missing")
        elif f.default is None and f.type.startswith("list["):
            out[f.name] = []
        else:
            out[f.name] = f.default
    return out


def _decode_value(t: str, v: Any, where: str, path: str, allow_unknown: bool) -> Any:
    if t.startswith("list["):
        if not isinstance(v, list):
            raise _bad(where, path, f"expected a list, found {type(v).__name__}")
        inner = t[5:-1]
        return [
            _decode_value(inner, x, where, f"{path}[{i}]", allow_unknown) for i, x in enumerate(v)
        ]
    ok: bool
    if t == "uint":
        ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
    elif t == "int":
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif t == "bool":
        ok = isinstance(v, bool)
    elif t == "str":
        ok = isinstance(v, str)
    elif t == "bytes":
        ok = isinstance(v, bytes)
    elif t == "float":
        ok = isinstance(v, float | int) and not isinstance(v, bool)
        if ok:
            v = float(v)
    elif t == "any":
        ok = True
    elif t == "record":
        if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], int)):
            raise _bad(where, path, "expected a [type id, record] pair")
        rt = RECORDS_BY_ID.get(v[0])
        if rt is None:
            if allow_unknown:
                return {"_type": None, "_type_id": v[0], "_raw": v[1]}
            raise _bad(where, path, f"record type id {v[0]} is unknown to this vzpy")
        rec = _decode_record(rt, v[1], where, path, allow_unknown)
        rec["_type"] = rt.name
        return rec
    else:
        return _decode_record(record_type(t), v, where, path, allow_unknown)
    if not ok:
        raise _bad(where, path, f"expected {t}, found {type(v).__name__}")
    return v


# --- core record types ----------------------------------------------------------
#
# Ids: 1-9 image, 10-19 process tree and tasks, 20-29 threads and registers,
# 30-39 memory, 40-49 pages, 50-59 files, 60-69 fs, 70-79 signals and timers,
# 80-89 namespaces, 90-99 mounts.  Ids below FIRST_MODULE_ID not used here are
# kept for future core types.

F = Field


def _core(name: str, id: int, category: str, fields: list[Field], doc: str = "") -> RecordType:
    return register_record(name, id=id, fields=fields, category=category, doc=doc, _core=True)


INVENTORY_FILE = _core(
    "inventory_file",
    2,
    "image",
    [
        F("name", 1, "str", optional=False, doc="file name inside the image directory"),
        F("type", 2, "str", optional=False, doc="record type name, or 'pages'"),
        F("type_id", 3, "uint", optional=False),
        F("size", 4, "uint", optional=False, doc="bytes"),
        F(
            "crc32",
            5,
            "uint",
            optional=False,
            hex=True,
            doc="page file: zlib.crc32 of it all; metadata file: of all but its trailer",
        ),
    ],
)

TASK_IDS = _core(
    "task_ids",
    12,
    "process",
    [
        # Ids of shared kernel objects: tasks with the same id share the object.
        F("mm_id", 1, "uint"),
        F("files_id", 2, "uint"),
        F("fs_id", 3, "uint"),
        F("sighand_id", 4, "uint"),
        F("pid_ns", 5, "uint"),
        F("net_ns", 6, "uint"),
        F("ipc_ns", 7, "uint"),
        F("uts_ns", 8, "uint"),
        F("mnt_ns", 9, "uint"),
        F("user_ns", 10, "uint"),
        F("cgroup_ns", 11, "uint"),
        F("time_ns", 12, "uint"),
    ],
    "which shared objects (mm, fd table, fs, namespaces) a task uses, by id",
)

INVENTORY = _core(
    "inventory",
    1,
    "image",
    [
        F("format_major", 1, "uint", optional=False),
        F("format_minor", 2, "uint", optional=False),
        F("ctid", 3, "str", optional=False),
        F("vzpy_version", 4, "str"),
        F("kernel", 5, "str", doc="uname release of the dumping node"),
        F("machine", 6, "str", doc="uname machine, e.g. x86_64"),
        F("created", 7, "float", doc="unix time the dump was committed"),
        F("files", 8, "list[inventory_file]"),
        F("parent", 9, "str", doc="name of the symlink to the parent image, if any"),
        F("parent_inventory_crc32", 10, "uint", hex=True, doc="checksum of parent's inventory"),
        F("kind", 11, "str", doc="'dump' or 'predump'"),
        F("root_pid", 12, "uint", doc="host pid of the container's init at dump time"),
        F("hostname", 13, "str", doc="node that wrote the image"),
        F("page_size", 14, "uint"),
        F("cpu_model", 15, "str"),
        F("cpu_flags", 16, "list[str]"),
        F("lsm", 17, "str", doc="'apparmor', 'selinux' or absent"),
        F("root_ids", 18, "task_ids"),
        F("dump_uptime_ns", 19, "uint", doc="CLOCK_BOOTTIME of the node at dump"),
    ],
    "written last; lists every file of the image with its size and checksum",
)

PSTREE_ENTRY = _core(
    "pstree_entry",
    11,
    "process",
    [
        # pids are as the container sees them (its pid namespace): restore gives them back.
        F("pid", 1, "uint", optional=False),
        F("ppid", 2, "uint", optional=False),
        F("pgid", 3, "uint", optional=False),
        F("sid", 4, "uint", optional=False),
        F("threads", 5, "list[uint]", doc="tids, the leader first"),
        F("host_pid", 6, "uint", doc="pid on the dumping node, for diagnostics"),
        F("ns_pids", 7, "list[uint]", doc="pid in each nested pid namespace, outermost first"),
    ],
)

PSTREE = _core(
    "pstree",
    10,
    "process",
    [F("tasks", 1, "list[pstree_entry]", doc="parents before children")],
    "the process tree: pstree.img",
)

RLIMIT = _core(
    "rlimit",
    13,
    "process",
    [
        F("resource", 1, "uint", optional=False, doc="RLIMIT_* number"),
        F("cur", 2, "uint", optional=False),
        F("max", 3, "uint", optional=False),
    ],
)

SIGACTION = _core(
    "sigaction",
    70,
    "process",
    [
        F("signo", 1, "uint", optional=False),
        F("handler", 2, "uint", hex=True, doc="SIG_DFL 0, SIG_IGN 1, else an address"),
        F("flags", 3, "uint", hex=True, doc="SA_*"),
        F("restorer", 4, "uint", hex=True),
        F("mask", 5, "uint", hex=True),
    ],
)

SIGINFO = _core(
    "siginfo",
    71,
    "process",
    [
        F("signo", 1, "uint", optional=False),
        F("raw", 2, "bytes", optional=False, doc="the 128-byte siginfo_t as the kernel gave it"),
    ],
    "a pending signal",
)

ITIMER = _core(
    "itimer",
    72,
    "process",
    [
        F("which", 1, "uint", optional=False, doc="ITIMER_REAL 0, VIRTUAL 1, PROF 2"),
        F("interval_sec", 2, "uint"),
        F("interval_usec", 3, "uint"),
        F("value_sec", 4, "uint"),
        F("value_usec", 5, "uint"),
    ],
)

POSIX_TIMER = _core(
    "posix_timer",
    73,
    "process",
    [
        F("timer_id", 1, "uint", optional=False),
        F("clock_id", 2, "uint", optional=False),
        F("sigev_notify", 3, "uint"),
        F("sigev_signo", 4, "uint"),
        F("sigev_value", 5, "uint", hex=True),
        F("notify_tid", 6, "uint"),
        F("overrun", 7, "uint"),
        F("interval_sec", 8, "uint"),
        F("interval_nsec", 9, "uint"),
        F("value_sec", 10, "uint"),
        F("value_nsec", 11, "uint"),
    ],
)

TASK = _core(
    "task",
    14,
    "process",
    [
        F("pid", 1, "uint", optional=False),
        F("state", 2, "str", doc="'alive', 'stopped' or 'zombie'"),
        F("exit_code", 3, "int"),
        F("comm", 4, "str"),
        F("personality", 5, "uint", hex=True),
        F("flags", 6, "uint", hex=True, doc="PF_* from /proc/PID/stat"),
        F("ids", 7, "task_ids"),
        F("exe", 8, "str", doc="path of /proc/PID/exe, for diagnostics"),
        F("cmdline", 9, "list[str]", doc="for diagnostics; memory holds the real one"),
        F("rlimits", 10, "list[rlimit]"),
        F("sigactions", 11, "list[sigaction]"),
        F("shared_signals", 12, "list[siginfo]", doc="pending for the whole process"),
        F("itimers", 13, "list[itimer]"),
        F("posix_timers", 14, "list[posix_timer]"),
        F("oom_score_adj", 15, "int"),
        F("loginuid", 16, "uint"),
        F("child_subreaper", 17, "bool"),
        F("cgroup", 18, "str", doc="cgroup path relative to the container's cgroup"),
        F("start_time", 19, "uint", doc="clock ticks after boot, /proc/PID/stat field 22"),
        F("exit_signal", 20, "uint", doc="signal sent to the parent on exit (stat field 38)"),
        F("umask", 21, "uint"),
    ],
    "per process: task-PID.img",
)

X86_REGS = _core(
    "x86_regs",
    20,
    "thread",
    # struct user_regs_struct (arch/x86/include/asm/user_64.h), in its order.
    [
        F(name, i + 1, "uint", optional=False, hex=True)
        for i, name in enumerate(
            "r15 r14 r13 r12 bp bx r11 r10 r9 r8 ax cx dx si di orig_ax ip cs flags sp ss "
            "fs_base gs_base ds es fs gs".split()
        )
    ],
)

SIGALTSTACK = _core(
    "sigaltstack",
    21,
    "thread",
    [
        F("sp", 1, "uint", hex=True),
        F("size", 2, "uint"),
        F("flags", 3, "uint", hex=True),
    ],
)

CREDS = _core(
    "creds",
    22,
    "thread",
    [
        F("uid", 1, "uint", optional=False),
        F("gid", 2, "uint", optional=False),
        F("euid", 3, "uint"),
        F("egid", 4, "uint"),
        F("suid", 5, "uint"),
        F("sgid", 6, "uint"),
        F("fsuid", 7, "uint"),
        F("fsgid", 8, "uint"),
        F("groups", 9, "list[uint]"),
        F("cap_inh", 10, "uint", hex=True),
        F("cap_prm", 11, "uint", hex=True),
        F("cap_eff", 12, "uint", hex=True),
        F("cap_bnd", 13, "uint", hex=True),
        F("cap_amb", 14, "uint", hex=True),
        F("secbits", 15, "uint", hex=True),
        F("no_new_privs", 16, "bool"),
        F("lsm_profile", 17, "str"),
    ],
    "credentials; per thread since threads may differ",
)

THREAD = _core(
    "thread",
    23,
    "thread",
    [
        F("tid", 1, "uint", optional=False),
        F("arch", 2, "str", doc="'x86_64'"),
        F("regs", 3, "x86_regs"),
        F("xstate", 4, "bytes", doc="NT_X86_XSTATE regset as read by PTRACE_GETREGSET"),
        F("blocked", 5, "uint", hex=True, doc="blocked signal mask"),
        F("signals", 6, "list[siginfo]", doc="pending for this thread"),
        F("sigaltstack", 7, "sigaltstack"),
        F("clear_tid_addr", 8, "uint", hex=True),
        F("robust_list", 9, "uint", hex=True),
        F("robust_list_len", 10, "uint"),
        F("rseq_addr", 11, "uint", hex=True),
        F("rseq_len", 12, "uint"),
        F("rseq_sig", 13, "uint", hex=True),
        F("pdeath_sig", 14, "uint"),
        F("sched_policy", 15, "uint"),
        F("sched_prio", 16, "uint"),
        F("sched_nice", 17, "int"),
        F("creds", 18, "creds"),
        F("seccomp_mode", 19, "uint"),
        F("comm", 20, "str"),
        F("in_syscall", 21, "int", doc="syscall number the thread was stopped in, if any"),
    ],
    "per thread: thread-TID.img",
)

VMA = _core(
    "vma",
    31,
    "memory",
    [
        F("start", 1, "uint", optional=False, hex=True),
        F("end", 2, "uint", optional=False, hex=True),
        F("prot", 3, "uint", optional=False, doc="PROT_*"),
        F("flags", 4, "uint", hex=True, doc="MAP_*"),
        F("pgoff", 5, "uint", doc="offset in the file, in pages"),
        F("kind", 6, "str", doc="anon, file, shmem, sysv_shm, heap, stack, vdso, vvar, vsyscall"),
        F("path", 7, "str", doc="backing file as /proc/PID/maps shows it"),
        F("file_id", 8, "uint", doc="id of the backing file in files.img"),
        F("dev", 9, "str", doc="major:minor of the backing file"),
        F("ino", 10, "uint"),
        F("shmid", 11, "uint", doc="SysV shm id or shared-anon object id (pages-shmem-ID.img)"),
        F("madv", 12, "uint", hex=True, doc="bit n set: madvise(n) was applied"),
        F("name", 13, "str", doc="anonymous VMA name (PR_SET_VMA_ANON_NAME)"),
        F("locked", 14, "bool"),
        F("deleted", 15, "bool", doc="file unlinked while mapped: contents in ghost_file-INO"),
    ],
)

MM = _core(
    "mm",
    30,
    "memory",
    [
        F("mm_id", 1, "uint"),
        F("start_code", 2, "uint", hex=True),
        F("end_code", 3, "uint", hex=True),
        F("start_data", 4, "uint", hex=True),
        F("end_data", 5, "uint", hex=True),
        F("start_stack", 6, "uint", hex=True),
        F("start_brk", 7, "uint", hex=True),
        F("brk", 8, "uint", hex=True),
        F("arg_start", 9, "uint", hex=True),
        F("arg_end", 10, "uint", hex=True),
        F("env_start", 11, "uint", hex=True),
        F("env_end", 12, "uint", hex=True),
        F("auxv", 13, "list[uint]"),
        F("exe_file_id", 14, "uint"),
        F("exe", 15, "str"),
        F("vmas", 16, "list[vma]", doc="sorted by start"),
        F("dumpable", 17, "int"),
        F("thp_disabled", 18, "bool"),
    ],
    "an address space: mm-PID.img (PID of the first task using it)",
)

SHMEM_OBJECT = _core(
    "shmem_object",
    33,
    "memory",
    [
        F("ino", 1, "uint", optional=False, doc="inode at dump; contents in pages-shmem-INO.img"),
        F("size", 2, "uint", doc="object size in bytes"),
        F("kind", 3, "str", doc="shmem (shared anonymous), memfd or sysv_shm"),
        F("path", 4, "str", doc="as /proc/PID/maps showed it"),
    ],
)

SHMEM_OBJECTS = _core(
    "shmem_objects",
    32,
    "memory",
    [F("objects", 1, "list[shmem_object]")],
    "shared memory objects (MAP_SHARED anonymous, memfd, SysV): shmem_objects.img",
)

PAGEMAP = _core(
    "pagemap",
    40,
    "memory",
    [
        F("id", 1, "str", optional=False, doc="PID, or shmem-ID for a shared memory object"),
        F("pages_file", 2, "str", optional=False),
        F("page_size", 3, "uint", optional=False),
        F("size", 4, "uint", optional=False, doc="bytes in pages_file"),
        F("crc32", 5, "uint", optional=False, hex=True, doc="zlib.crc32 of pages_file"),
        F("runs", 6, "bytes", optional=False, doc="packed runs, see docs/image-format.md"),
        F("run_size", 7, "uint", optional=False, doc="bytes per packed run; 32 now"),
        F("nr_runs", 8, "uint"),
        F("nr_pages", 9, "uint", doc="pages held in pages_file"),
        F("nr_parent_pages", 10, "uint", doc="pages to be found in the parent image"),
    ],
    "where each dumped page of one address space lies: pagemap-ID.img",
)

FOWN = _core(
    "fown",
    56,
    "file",
    [
        F("uid", 1, "uint"),
        F("euid", 2, "uint"),
        F("signum", 3, "uint"),
        F("pid_type", 4, "uint"),
        F("pid", 5, "uint"),
    ],
    "F_SETOWN/F_SETSIG owner of a file",
)

REG_FILE = _core(
    "reg_file",
    54,
    "file",
    [
        F("path", 1, "str", optional=False, doc="path inside the container's root"),
        F("mnt_id", 2, "int"),
        F("size", 3, "uint", doc="size at dump, checked at restore"),
        F("mode", 4, "uint"),
        F("dev", 5, "str"),
        F("ino", 6, "uint"),
        F("deleted", 7, "bool", doc="unlinked while open; contents saved by its module"),
        F("external", 8, "bool", doc="outside the container: supplied at restore"),
        F("ghost_id", 9, "uint", doc="deleted file: its contents are ghost_file-ID.img"),
    ],
    "a regular file or directory",
)

FILE_ENTRY = _core(
    "file_entry",
    53,
    "file",
    [
        F("id", 1, "uint", optional=False, doc="open file description id, unique in the image"),
        F("flags", 2, "uint", hex=True, doc="O_* status flags"),
        F("pos", 3, "uint"),
        F("fown", 4, "fown"),
        F("detail", 5, "record", doc="kind-specific record: reg_file, or a module's type"),
    ],
    "an open file description (struct file)",
)

FILES = _core(
    "files",
    52,
    "file",
    [F("entries", 1, "list[file_entry]")],
    "every open file description of the container: files.img",
)

FD_ENTRY = _core(
    "fd_entry",
    51,
    "fd",
    [
        F("fd", 1, "uint", optional=False),
        F("file_id", 2, "uint", optional=False),
        F("cloexec", 3, "bool"),
    ],
)

FDINFO = _core(
    "fdinfo",
    50,
    "fd",
    [
        F("files_id", 1, "uint"),
        F("fds", 2, "list[fd_entry]"),
    ],
    "a descriptor table: fdinfo-PID.img (PID of the first task using it)",
)

FS = _core(
    "fs",
    60,
    "process",
    [
        F("fs_id", 1, "uint"),
        F("cwd", 2, "str"),
        F("root", 3, "str"),
        F("cwd_id", 4, "uint", doc="file id of cwd in files.img"),
        F("root_id", 5, "uint"),
        F("umask", 6, "uint"),
    ],
    "cwd, root and umask: fs-PID.img",
)

IDMAP = _core(
    "idmap",
    82,
    "namespace",
    [
        F("first", 1, "uint", optional=False),
        F("lower_first", 2, "uint", optional=False),
        F("count", 3, "uint", optional=False),
    ],
)

NAMESPACE = _core(
    "namespace",
    81,
    "namespace",
    [
        F("id", 1, "uint", optional=False, doc="image-local id, as used in task_ids"),
        F("kind", 2, "str", optional=False, doc="pid net mnt uts ipc user cgroup time"),
        F("ino", 3, "uint", doc="nsfs inode at dump, for diagnostics"),
        F("parent_id", 4, "uint"),
        F("user_ns_id", 5, "uint", doc="owning user namespace"),
        F("uid_map", 6, "list[idmap]"),
        F("gid_map", 7, "list[idmap]"),
        F("external", 8, "bool", doc="the node's own namespace, not restored"),
    ],
)

NAMESPACES = _core(
    "namespaces",
    80,
    "namespace",
    [F("entries", 1, "list[namespace]")],
    "every namespace of the container: namespaces.img",
)

UTS_NS = _core(
    "uts_ns",
    83,
    "namespace",
    [
        F("ns_id", 1, "uint"),
        F("nodename", 2, "str"),
        F("domainname", 3, "str"),
    ],
)

TIME_NS = _core(
    "time_ns",
    84,
    "namespace",
    [
        F("ns_id", 1, "uint"),
        F("monotonic_sec", 2, "int"),
        F("monotonic_nsec", 3, "uint"),
        F("boottime_sec", 4, "int"),
        F("boottime_nsec", 5, "uint"),
        F("monotonic_clock_ns", 6, "int", doc="the container's CLOCK_MONOTONIC when frozen"),
        F("boottime_clock_ns", 7, "int", doc="the container's CLOCK_BOOTTIME when frozen"),
    ],
    "clock offsets of a time namespace",
)

MOUNT = _core(
    "mount",
    91,
    "mount",
    [
        F("mnt_id", 1, "uint", optional=False),
        F("parent_mnt_id", 2, "uint", optional=False),
        F("dev", 3, "str", doc="major:minor of the superblock"),
        F("root", 4, "str", doc="root of the mount within its file system"),
        F("mountpoint", 5, "str", optional=False, doc="relative to the container's root"),
        F("fstype", 6, "str"),
        F("source", 7, "str"),
        F("options", 8, "str", doc="per-mount options"),
        F("super_options", 9, "str"),
        F("flags", 10, "uint", hex=True, doc="MS_* per-mount flags"),
        F("sb_flags", 11, "uint", hex=True),
        F("shared_id", 12, "uint"),
        F("master_id", 13, "uint"),
        F("external", 14, "str", doc="key of a bind mount supplied by the node at restore"),
        F("deleted", 15, "bool"),
    ],
)

MOUNTS = _core(
    "mounts",
    90,
    "mount",
    [
        F("ns_id", 1, "uint"),
        F("entries", 2, "list[mount]", doc="parents before children"),
    ],
    "a mount namespace's table: mounts-NSID.img",
)

del F
