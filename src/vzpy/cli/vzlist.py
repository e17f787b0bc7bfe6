"""vzlist: list containers (vzctl-reference.md §3)."""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import time
from dataclasses import dataclass

from ..config import VzConfig, parse_ctid
from ..container.ct import Container, all_ctids
from ..container.params import LONG_MAX, PAGE, parse_barrier_limit
from ..errors import VzError
from .common import require_root, run_mapped

USAGE = """\
Usage: vzlist [-a | -S] [-n] [-H] [-t] [-j] [-o field[,field...] | -1]
              [-s [-]field] [-h pattern] [-N pattern] [-d pattern] [CTID ...]
       vzlist -L | --list
  -a, --all            list all containers (default: running only)
  -S, --stopped        list only containers that are not running
  -o, --output FIELDS  comma-separated fields (see -L)
  -H, --no-header      do not print the header
  -t, --no-trim        do not trim long values
  -1                   same as -H -o ctid
  -s, --sort [-]FIELD  sort by field; a leading - reverses
  -n, --name           show names instead of CTIDs in the first column
  -j, --json           JSON output
  -h, --hostname PAT   only hostnames matching the glob
  -N, --name_filter PAT only names matching the glob
  -d, --description PAT only descriptions matching the glob
  -L, --list           list the known fields
      --help           this help
"""


@dataclass(frozen=True)
class Field:
    name: str
    header: str
    width: int
    kind: str  # str | int | list | ubc | bool
    left: bool = True


UBC = {
    "numproc": ("NPROC", "NUMPROC"),
    "physpages": ("PHYSP", "PHYSPAGES"),
    "swappages": ("SWAPP", "SWAPPAGES"),
    "kmemsize": ("KMEMSIZE", "KMEMSIZE"),
    "lockedpages": ("LOCKEDP", "LOCKEDPAGES"),
    "privvmpages": ("PRIVVMP", "PRIVVMPAGES"),
    "shmpages": ("SHMP", "SHMPAGES"),
    "numfile": ("NFILE", "NUMFILE"),
    "numtcpsock": ("NTCPSOCK", "NUMTCPSOCK"),
    "numothersock": ("NOSOCK", "NUMOTHERSOCK"),
    "numpty": ("NPTY", "NUMPTY"),
    "numflock": ("NFLOCK", "NUMFLOCK"),
    "numsiginfo": ("NSIGINFO", "NUMSIGINFO"),
}

FIELDS: dict[str, Field] = {
    "ctid": Field("ctid", "CTID", 10, "int", left=False),
    "private": Field("private", "PRIVATE", 32, "str"),
    "root": Field("root", "ROOT", 32, "str"),
    "mount_opts": Field("mount_opts", "MOUNT_OPTS", 16, "str"),
    "origin_sample": Field("origin_sample", "ORIGIN_SAMPLE", 16, "str"),
    "hostname": Field("hostname", "HOSTNAME", 32, "str"),
    "name": Field("name", "NAME", 32, "str"),
    "smart_name": Field("smart_name", "SMARTNAME", 10, "str", left=False),
    "description": Field("description", "DESCRIPTION", 32, "str"),
    "ostemplate": Field("ostemplate", "OSTEMPLATE", 32, "str"),
    "ip": Field("ip", "IP_ADDR", 15, "list"),
    "nameserver": Field("nameserver", "NAMESERVER", 15, "list"),
    "searchdomain": Field("searchdomain", "SEARCHDOMAIN", 15, "list"),
    "status": Field("status", "STATUS", 9, "str"),
    "onboot": Field("onboot", "ONBOOT", 6, "bool"),
    "bootorder": Field("bootorder", "BOOTORDER", 10, "int", left=False),
    "layout": Field("layout", "LAYOUT", 6, "str"),
    "cpulimit": Field("cpulimit", "CPULIM", 7, "int", left=False),
    "cpuunits": Field("cpuunits", "CPUUNI", 7, "int", left=False),
    "cpus": Field("cpus", "CPUS", 5, "int", left=False),
    "disabled": Field("disabled", "DISABL", 6, "bool"),
    "uptime": Field("uptime", "UPTIME", 10, "int", left=False),
    "vswap": Field("vswap", "VSWAP", 5, "bool"),
}
for _n, (_h, _k) in UBC.items():
    FIELDS[_n] = Field(_n, _h, 10, "ubc", left=False)
ALIASES = {"veid": "ctid", "vpsid": "ctid"}
DEFAULT = ["ctid", "numproc", "status", "ip", "hostname"]


class Row:
    """Lazily computed values of one container."""

    def __init__(self, ct: Container) -> None:
        self.ct = ct
        self.cfg = ct.cfg
        self._running: bool | None = None

    @property
    def running(self) -> bool:
        if self._running is None:
            self._running = self.ct.is_running()
        return self._running

    def ubc(self, name: str) -> dict:
        key = UBC[name][1]
        raw = self.cfg.get(key)
        barrier = limit = LONG_MAX
        if raw:
            try:
                barrier, limit = parse_barrier_limit(raw, PAGE if key.endswith("PAGES") else 1)
            except VzError:
                pass
            if key.endswith("PAGES"):
                barrier = barrier // PAGE if barrier < LONG_MAX else barrier
                limit = limit // PAGE if limit < LONG_MAX else limit
        held = 0
        if self.running:
            held = self._held(name)
        return {"held": held, "maxheld": held, "barrier": barrier, "limit": limit, "failcnt": 0}

    def _held(self, name: str) -> int:
        cg = self.ct.cgroup
        if name == "numproc":
            return len(cg.threads())
        if name == "physpages":
            v = cg.get_value("memory", "memory.usage_in_bytes")
            return int(v) // PAGE if v and v.isdigit() else 0
        return 0

    def value(self, field: str):
        c = self.cfg
        if field == "ctid":
            return self.ct.ctid
        if field in UBC:
            return self.ubc(field)
        if field == "status":
            return self.ct.vzlist_status()
        if field == "ip":
            return [a.split("/")[0] for a in c.ip_addresses]
        if field in ("nameserver", "searchdomain"):
            return c.get_list(field.upper())
        if field == "smart_name":
            return c.get("NAME") or str(self.ct.ctid)
        if field in ("onboot", "disabled"):
            v = c.get(field.upper())
            return None if v is None else v == "yes"
        if field == "vswap":
            return True
        if field in ("cpulimit", "cpuunits", "cpus", "bootorder"):
            v = c.get(field.upper())
            return int(v) if v and v.isdigit() else None
        if field == "layout":
            return c.get("VE_LAYOUT") or "simfs"
        if field == "uptime":
            pid = self.ct.init_pid() if self.running else None
            if pid is None:
                return None
            return int(time.time() - os.stat(f"/proc/{pid}").st_mtime)
        key = {"private": "VE_PRIVATE", "root": "VE_ROOT"}.get(field, field.upper())
        return c.get(key)


def _fmt(field: str, suffix: str, value, last: bool, trim: bool) -> str:
    f = FIELDS[field]
    if f.kind == "ubc":
        v = value[
            {"": "held", "m": "maxheld", "b": "barrier", "l": "limit", "f": "failcnt"}[suffix]
        ]
        s = "unlimited" if v >= LONG_MAX else str(v)
    elif value is None or value == []:
        s = "-"
    elif f.kind == "list":
        s = " ".join(value) if last else value[0]
    elif f.kind == "bool":
        s = "yes" if value else "no"
    else:
        s = str(value)
    if last:
        return s
    if f.left:
        if trim and len(s) > f.width:
            s = s[: f.width]
        return s.ljust(f.width)
    return s.rjust(f.width)


def _split_field(spec: str) -> tuple[str, str]:
    name, _, suffix = spec.partition(".")
    name = ALIASES.get(name, name)
    if name not in FIELDS or (
        suffix and (FIELDS[name].kind != "ubc" or suffix not in "mblf" or len(suffix) != 1)
    ):
        raise VzError(f"Unknown field: {spec}", exit_code=1)
    return name, suffix


def _header(name: str, suffix: str) -> str:
    h = FIELDS[name].header
    return f"{h}.{suffix.upper()}" if suffix else h


def parse_args(argv: list[str]) -> dict:
    opts = {"mode": "running", "header": True, "trim": True, "json": False, "fields": None,
            "sort": None, "names": False, "hostname": None, "name_filter": None,
            "description": None, "ids": [], "list": False, "help": False}  # fmt: skip
    it = iter(argv)

    def val(opt: str) -> str:
        try:
            return next(it)
        except StopIteration:
            raise VzError(f"Option {opt} requires an argument", exit_code=1) from None

    for a in it:
        if a in ("-a", "--all"):
            opts["mode"] = "all"
        elif a in ("-S", "--stopped"):
            opts["mode"] = "stopped"
        elif a in ("-H", "--no-header"):
            opts["header"] = False
        elif a in ("-t", "--no-trim"):
            opts["trim"] = False
        elif a in ("-j", "--json"):
            opts["json"] = True
        elif a in ("-o", "--output"):
            opts["fields"] = val(a).split(",")
        elif a.startswith("--output="):
            opts["fields"] = a.split("=", 1)[1].split(",")
        elif a == "-1":
            opts["header"] = False
            opts["fields"] = ["ctid"]
        elif a in ("-s", "--sort"):
            opts["sort"] = val(a)
        elif a in ("-n", "--name"):
            opts["names"] = True
        elif a in ("-h", "--hostname"):
            opts["hostname"] = val(a)
        elif a in ("-N", "--name_filter"):
            opts["name_filter"] = val(a)
        elif a in ("-d", "--description"):
            opts["description"] = val(a)
        elif a in ("-L", "--list"):
            opts["list"] = True
        elif a == "--help":
            opts["help"] = True
        elif a.startswith("-") and a != "-":
            raise VzError(f"Invalid option: {a}", exit_code=1)
        else:
            try:
                opts["ids"].append(parse_ctid(a))
            except VzError:
                raise VzError(f"CT ID {a} is invalid.", exit_code=1) from None
    return opts


def run(argv: list[str]) -> int:
    opts = parse_args(argv)
    if opts["help"]:
        print(USAGE, end="")
        return 0
    if opts["list"]:
        for name, f in FIELDS.items():
            print(f"{name:<16} {f.header}")
        return 0
    require_root("vzlist")
    VzConfig.load(None)  # vz.conf must exist
    if opts["fields"]:
        fields = [_split_field(s) for s in opts["fields"]]
    else:
        fields = [(("smart_name" if opts["names"] else "ctid"), "")] + [
            (f, "") for f in DEFAULT[1:]
        ]
    if opts["json"] and any(s for _, s in fields):
        raise VzError("Field suffixes are not allowed with -j", exit_code=1)
    ids = opts["ids"] or all_ctids()
    rows = []
    for ctid in ids:
        ct = Container(ctid)
        if not ct.exists():
            continue
        row = Row(ct)
        if opts["mode"] == "running" and not opts["ids"] and not row.running:
            continue
        if opts["mode"] == "stopped" and row.running:
            continue
        if opts["hostname"] and not fnmatch.fnmatch(
            row.cfg.get("HOSTNAME") or "", opts["hostname"]
        ):
            continue
        if opts["name_filter"] and not fnmatch.fnmatch(
            row.cfg.get("NAME") or "", opts["name_filter"]
        ):
            continue
        if opts["description"] and not fnmatch.fnmatch(
            row.cfg.get("DESCRIPTION") or "", opts["description"]
        ):
            continue
        rows.append(row)
    if opts["sort"]:
        spec = opts["sort"]
        rev = spec.startswith("-")
        try:
            name, suffix = _split_field(spec.lstrip("-"))
        except VzError:
            raise VzError(f"Invalid sort field name: {spec.lstrip('-')}", exit_code=1) from None

        def key(r: Row):
            v = r.value(name)
            if FIELDS[name].kind == "ubc":
                v = v[
                    {"": "held", "m": "maxheld", "b": "barrier", "l": "limit", "f": "failcnt"}[
                        suffix
                    ]
                ]
            if isinstance(v, list):
                v = v[0] if v else ""
            return (v is None, v if v is not None else 0)

        rows.sort(key=key, reverse=rev)
    if opts["json"]:
        names = [n for n, _ in fields] if opts["fields"] else list(FIELDS)
        out = [{n: r.value(n) for n in names} for r in rows]
        print(json.dumps(out, indent=2))
        if not rows:
            return 1
        return 0
    if not rows:
        print("Container(s) not found", file=sys.stderr)
        return 1
    lines = []
    if opts["header"]:
        cells = []
        for i, (n, s) in enumerate(fields):
            h = _header(n, s)
            last = i == len(fields) - 1
            f = FIELDS[n]
            cells.append(h if last else (h.ljust(f.width) if f.left else h.rjust(f.width)))
        lines.append(" ".join(cells).rstrip())
    for r in rows:
        cells = []
        for i, (n, s) in enumerate(fields):
            cells.append(_fmt(n, s, r.value(n), i == len(fields) - 1, opts["trim"]))
        lines.append(" ".join(cells).rstrip())
    print("\n".join(lines))
    return 0


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        try:
            return run(args)
        except VzError as e:
            e.exit_code = 1
            raise

    sys.exit(run_mapped(body))
