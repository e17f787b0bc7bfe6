"""vz.conf and CTID.conf: reader and in-place writer (vzctl-reference.md §2).

Syntax, as vzctl 4.x parses it:
- ``NAME="value"`` lines; leading whitespace skipped; blank and ``#`` lines
  ignored; trailing whitespace stripped.
- A quoted value ends at the *last* ``"`` on the line; an unquoted value is the
  raw rest of the line.
- A line without ``=`` is skipped with a warning; the first of duplicate keys
  wins, later ones are ignored with a warning.
- ``$VEID``/``${VEID}`` is expanded in VE_ROOT and VE_PRIVATE only, and saved
  back unexpanded.

Saving replaces ``KEY=`` lines in place, appends new keys, keeps comments and
unknown lines, and writes ``FILE.tmp`` then renames it.

Where the files live: ``$VZ_CONFDIR`` (default ``/etc/vz``) holds ``vz.conf``,
``conf/CTID.conf`` and ``names/NAME``.  A test node (or a second node on one
machine) differs only by this directory.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field

from .errors import (
    VZ_CONFIG_SAVE_ERROR,
    VZ_NO_CONFFILE,
    VZ_NOCONFIG,
    BadValueError,
    ConfigError,
)

DEFAULT_CONFDIR = "/etc/vz"
CTID_MAX = 2147483644


def confdir() -> str:
    return os.environ.get("VZ_CONFDIR", DEFAULT_CONFDIR)


def global_conf_path() -> str:
    return os.path.join(confdir(), "vz.conf")


def ct_conf_dir() -> str:
    return os.path.join(confdir(), "conf")


def ct_conf_path(ctid: int) -> str:
    return os.path.join(ct_conf_dir(), f"{ctid}.conf")


def names_dir() -> str:
    return os.path.join(confdir(), "names")


def warn(msg: str) -> None:
    print(msg, file=sys.stderr)


_LINE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


@dataclass
class ConfFile:
    """One shell-style config file, kept line by line for in-place saving."""

    path: str
    values: dict[str, str] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    changed: dict[str, str | None] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str, path: str = "<string>", quiet: bool = True) -> ConfFile:
        cf = cls(path=path)
        cf.lines = text.splitlines()
        for lineno, raw in enumerate(cf.lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                if not quiet:
                    warn(f"Warning: can't parse {path}:{lineno} ('=' not found), skipping")
                continue
            key, value = parse_line(line)
            if key is None:
                continue
            if key in cf.values:
                if not quiet:
                    warn(f"Warning at {path}:{lineno}: duplicate for {key}, ignored")
                continue
            cf.values[key] = value
        return cf

    @classmethod
    def load(cls, path: str, quiet: bool = True) -> ConfFile:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return cls.parse(f.read(), path, quiet)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    def set(self, key: str, value: str | None) -> None:
        """Set (or with None, delete) a key; remembered for save()."""
        old = self.values.get(key)
        if value is None:
            if key in self.values:
                del self.values[key]
                self.changed[key] = None
            return
        if old != value:
            self.values[key] = value
            self.changed[key] = value

    def render(self) -> str:
        out: list[str] = []
        seen: set[str] = set()
        for raw in self.lines:
            line = raw.strip()
            m = _LINE_RE.match(line) if line and not line.startswith("#") else None
            if m and m.group(1) in self.changed:
                key = m.group(1)
                if key in seen:  # a later duplicate of a changed key: drop it
                    continue
                seen.add(key)
                val = self.changed[key]
                if val is not None:
                    out.append(f'{key}="{val}"')
                continue
            out.append(raw)
        for key, val in self.changed.items():
            if key not in seen and val is not None:
                out.append(f'{key}="{val}"')
        return "\n".join(out) + "\n"

    def save(self, path: str | None = None) -> None:
        path = path or self.path
        tmp = path + ".tmp"
        try:
            text = self.render()
            with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        except OSError as e:
            raise ConfigError(
                f"Unable to save config file {path}: {e.strerror}", exit_code=VZ_CONFIG_SAVE_ERROR
            ) from e
        self.lines = text.splitlines()
        self.changed = {}
        self.path = path


def parse_line(line: str) -> tuple[str | None, str]:
    key, _, rest = line.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        return None, ""
    rest = rest.rstrip()
    if rest.startswith('"'):
        end = rest.rfind('"')
        value = rest[1:end] if end > 0 else rest[1:]
    else:
        value = rest
    return key, value


def expand_veid(value: str, ctid: int) -> str:
    """Replace the first $VEID / ${VEID} by the CTID and strip a trailing '/'."""
    for token in ("${VEID}", "$VEID"):
        if token in value:
            value = value.replace(token, str(ctid), 1)
            break
    if len(value) > 1:
        value = value.rstrip("/")
    return value


def parse_ctid(text: str) -> int:
    """A CTID argument: numeric 0..2147483644, else a name from names/."""
    if text.isdigit():
        ctid = int(text)
        if ctid > CTID_MAX:
            raise BadValueError(f"Bad CT ID {text}")
        return ctid
    link = os.path.join(names_dir(), text)
    if text and "/" not in text and os.path.islink(link):
        target = os.path.basename(os.readlink(link))
        m = re.fullmatch(r"(\d+)\.conf", target)
        if m:
            return int(m.group(1))
    raise BadValueError(f"Bad CT ID {text}")


class VzConfig:
    """Global vz.conf merged with a container's CTID.conf (per-CT values win)."""

    def __init__(self, ctid: int | None, glob: ConfFile, ct: ConfFile | None) -> None:
        self.ctid = ctid
        self.glob = glob
        self.ct = ct

    @classmethod
    def load(cls, ctid: int | None = None, quiet: bool = True) -> VzConfig:
        gpath = global_conf_path()
        try:
            glob = ConfFile.load(gpath, quiet)
        except OSError as e:
            raise ConfigError(
                f"Global configuration file {gpath} not found", exit_code=VZ_NOCONFIG
            ) from e
        ct = None
        if ctid is not None:
            path = ct_conf_path(ctid)
            if os.path.exists(path):
                try:
                    ct = ConfFile.load(path, quiet)
                except OSError as e:
                    raise ConfigError(
                        f"Unable to read {path}: {e.strerror}", exit_code=VZ_NO_CONFFILE
                    ) from e
        return cls(ctid, glob, ct)

    @property
    def exists(self) -> bool:
        return self.ct is not None

    def raw(self, key: str, default: str | None = None) -> str | None:
        if self.ct is not None and key in self.ct.values:
            return self.ct.values[key]
        return self.glob.values.get(key, default)

    def get(self, key: str, default: str | None = None) -> str | None:
        value = self.raw(key, default)
        if value is not None and key in ("VE_ROOT", "VE_PRIVATE") and self.ctid is not None:
            value = expand_veid(value, self.ctid)
        return value

    def get_int(self, key: str, default: int) -> int:
        value = self.get(key)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            return default

    def get_bool(self, key: str, default: bool = False) -> bool:
        value = self.get(key)
        if value is None:
            return default
        return value.lower() in ("yes", "1", "true", "on")

    def get_list(self, key: str) -> list[str]:
        value = self.get(key) or ""
        return value.split()

    # Convenience properties for the keys used everywhere.
    @property
    def ve_root(self) -> str | None:
        return self.get("VE_ROOT")

    @property
    def ve_private(self) -> str | None:
        return self.get("VE_PRIVATE")

    @property
    def lockdir(self) -> str:
        return self.get("LOCKDIR") or "/vz/lock"

    @property
    def dumpdir(self) -> str:
        return self.get("DUMPDIR") or "/vz/dump"

    @property
    def template_dir(self) -> str:
        return self.get("TEMPLATE") or "/vz/template"

    @property
    def ip_addresses(self) -> list[str]:
        return self.get_list("IP_ADDRESS")

    @property
    def hostname(self) -> str | None:
        return self.get("HOSTNAME") or None

    @property
    def cgroup_prefix(self) -> str:
        """Where this node's containers live in each cgroup hierarchy."""
        return (self.get("VZ_CGROUP") or "vzpy").strip("/")

    def default_dumpfile(self) -> str:
        assert self.ctid is not None
        return os.path.join(self.dumpdir, f"Dump.{self.ctid}")

    def ct_file(self) -> ConfFile:
        """The CT's own config file object (created empty if missing)."""
        if self.ct is None:
            assert self.ctid is not None
            self.ct = ConfFile(path=ct_conf_path(self.ctid))
        return self.ct
