"""OS templates: tarballs in ``TEMPLATE/cache/NAME.tar.{gz,xz,zst}`` (OpenVZ's layout).

``vzctl create --ostemplate NAME`` unpacks one into the new private area.  Two kinds
are built here:

- ``tiny``: busybox-static, its applet links and a handful of /etc files, written
  straight into a tarball with :mod:`tarfile` (no staging tree, no root needed; about a
  second).  Byte-for-byte reproducible for a given busybox: every member carries the
  busybox file's mtime (or ``SOURCE_DATE_EPOCH``) and the gzip header has none.  It has
  no ``/sbin/init`` on purpose: a container without one gets vzpy's own minimal init
  (:func:`vzpy.initbin.container_init`), which thereby stays the current one instead of
  being frozen into every template built so far.  busybox's ``init`` and ``linuxrc``
  applets are left out for that reason.
- ``debian``: ``mmdebstrap --variant=minbase`` plus python3, procps, iproute2 and
  iputils-ping and whatever ``include`` adds, from the Debian mirror the host's apt
  already uses.  Daemons are not started during the build: mmdebstrap installs a
  policy-rc.d that refuses for its duration (invoke-rc.d says "policy-rc.d denied
  execution of start"; checked with redis-server) and removes it afterwards.  Package
  lists and the apt cache are removed, /etc/machine-id is empty, /etc/hostname,
  /etc/hosts and /etc/resolv.conf have fixed contents, and documentation, man pages and
  translations are not installed (a dpkg path-exclude that stays in the template, as
  in Debian's "slim" images; copyright files are kept).  minbase has no init either.
  /dev holds the few standard nodes mmdebstrap puts in every tarball.
  The build runs with SOURCE_DATE_EPOCH (from the environment, else the newest Date:
  of the suites' InRelease files), so two builds from the same mirror state give the
  same bytes (mmdebstrap(1)).

Members are named ``./path``, owned by uid/gid 0, and may contain absolute symlinks
and (debian) device nodes: unpack with tar(1) as root, not with tarfile's "data" filter.
"""

from __future__ import annotations

import collections
import email.utils
import gzip
import io
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from vzpy.errors import (
    VZ_OSTEMPLATE_NOTFOUND,
    VZ_SYSTEM_ERROR,
    BadValueError,
    VzError,
)

TEMPLATE_EXTS = (".tar.gz", ".tar.xz", ".tar.zst")
TINY_NAME = "tiny"
DEBIAN_NAME = "debian-12-x86_64-minimal"
DEBIAN_SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "procps", "iproute2", "iputils-ping")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_DIR = "/etc/apt"
BUSYBOX = "/bin/busybox"

# busybox applets that would make the template look as if it had an init of its own.
_NOT_LINKED = frozenset({"init", "linuxrc"})

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_PACKAGE_RE = re.compile(r"[a-z0-9][a-z0-9+.-]*(:[a-z0-9-]+)?([=/][A-Za-z0-9+.:~_-]+)?")

_ETC_HOSTS = "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


# --- the cache -----------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    name: str  # without the extension: what --ostemplate takes
    path: str
    size: int  # bytes


def cache_dir(template_dir: str) -> str:
    return os.path.join(template_dir, "cache")


def check_name(name: str) -> str:
    """Refuse a template name that is not a plain file name stem."""
    if not _NAME_RE.fullmatch(name) or name.endswith(TEMPLATE_EXTS):
        raise BadValueError(f"Invalid OS template name: {name!r}")
    return name


def split_name(filename: str) -> str | None:
    """``'tiny.tar.gz'`` -> ``'tiny'``; None for anything that is not a template file."""
    if filename.startswith("."):
        return None
    for ext in TEMPLATE_EXTS:
        if filename.endswith(ext) and len(filename) > len(ext):
            return filename[: -len(ext)]
    return None


def find_template(template_dir: str, name: str) -> str:
    """Path of the cached template NAME, trying .tar.gz, .tar.xz, .tar.zst in that order.

    NAME may also carry its extension.  Raises VzError with vzctl's message and exit
    code 91 when there is none.
    """
    base = split_name(name) or name
    check_name(base)
    cache = cache_dir(template_dir)
    exts = TEMPLATE_EXTS if base == name else (name[len(base) :],)
    for ext in exts:
        path = os.path.join(cache, base + ext)
        if os.path.isfile(path):
            return path
    raise VzError(
        f"Cached OS template {os.path.join(cache, base + exts[0])} not found",
        exit_code=VZ_OSTEMPLATE_NOTFOUND,
    )


def list_templates(template_dir: str) -> list[Template]:
    """Every template file in the cache, sorted by name; [] if there is no cache."""
    cache = cache_dir(template_dir)
    try:
        entries = list(os.scandir(cache))
    except FileNotFoundError:
        return []
    out = []
    for entry in entries:
        name = split_name(entry.name)
        if name is not None and entry.is_file():
            out.append(Template(name, entry.path, entry.stat().st_size))
    return sorted(out, key=lambda t: (t.name, t.path))


class _AtomicOutput:
    """A temporary file beside ``final`` that is renamed over it only on success.

    The temporary name keeps the final extension (mmdebstrap picks the compressor by
    it) and starts with a dot, so list_templates() never shows a half-written one.
    """

    def __init__(self, final: str) -> None:
        self.final = final
        directory, base = os.path.split(final)
        fd, self.tmp = tempfile.mkstemp(dir=directory, prefix=f".{base}.", suffix=".tar.gz")
        os.close(fd)

    def commit(self) -> str:
        os.chmod(self.tmp, 0o644)
        os.rename(self.tmp, self.final)
        return self.final

    def __enter__(self) -> _AtomicOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass


def _output_path(template_dir: str, name: str) -> str:
    cache = cache_dir(template_dir)
    try:
        os.makedirs(cache, mode=0o755, exist_ok=True)
    except OSError as err:
        raise VzError(f"Unable to create {cache}: {err.strerror}") from err
    return os.path.join(cache, check_name(name) + ".tar.gz")


# --- tiny: busybox ---------------------------------------------------------------------


def is_static_elf(data: bytes) -> bool:
    """True for a 64-bit little-endian ELF without a PT_INTERP program header."""
    if len(data) < 64 or data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    for i in range(phnum):
        off = phoff + i * phentsize
        if off + 4 > len(data):
            return False
        (p_type,) = struct.unpack_from("<I", data, off)
        if p_type == 3:  # PT_INTERP: needs a dynamic loader
            return False
    return True


def busybox_applets(listing: str) -> list[str]:
    """Link paths (relative to /) from ``busybox --list-full`` output.

    A build without FEATURE_INSTALLER prints bare names for --list-full: those go to
    bin/.  The busybox binary itself, ``init`` and ``linuxrc`` are left out.
    """
    out = set()
    for line in listing.splitlines():
        path = line.strip().strip("/")
        if not path:
            continue
        if "/" not in path:
            path = "bin/" + path
        parts = path.split("/")
        if ".." in parts or "." in parts or "" in parts:
            raise VzError(f"busybox lists a strange applet path: {line.strip()!r}")
        if path == "bin/busybox" or parts[-1] in _NOT_LINKED:
            continue
        out.add(path)
    return sorted(out)


def _busybox_info(busybox: str) -> tuple[bytes, list[str], str]:
    try:
        with open(busybox, "rb") as f:
            data = f.read()
    except FileNotFoundError as err:
        raise VzError(f"{busybox} not found: install busybox-static") from err
    if not is_static_elf(data):
        raise VzError(f"{busybox} is not a static x86_64 binary: install busybox-static")
    try:
        listing = subprocess.run(
            [busybox, "--list-full"], capture_output=True, text=True, check=True
        ).stdout
        banner = subprocess.run([busybox], capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as err:
        raise VzError(f"Cannot run {busybox} --list-full: {err}") from err
    m = re.search(r"BusyBox v(\S+)", banner)
    return data, busybox_applets(listing), m.group(1) if m else "unknown"


def _tiny_etc(version: str) -> dict[str, tuple[str, int]]:
    """/etc contents of the tiny template: path -> (text, mode)."""
    return {
        "etc/passwd": (
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            0o644,
        ),
        "etc/shadow": ("root:*::0:99999:7:::\nnobody:*::0:99999:7:::\n", 0o600),
        "etc/group": ("root:x:0:\nnogroup:x:65534:\n", 0o644),
        "etc/hostname": ("localhost\n", 0o644),
        "etc/hosts": (_ETC_HOSTS, 0o644),
        "etc/resolv.conf": ("", 0o644),
        "etc/profile": (f"export PATH={_PATH}\nPS1='\\h:\\w\\$ '\n", 0o644),
        "etc/os-release": (
            'NAME="vzpy tiny"\nID=vzpy-tiny\n'
            f'VERSION_ID="{version}"\nPRETTY_NAME="vzpy tiny (BusyBox {version})"\n',
            0o644,
        ),
    }


_TINY_DIRS = {
    "bin": 0o755,
    "sbin": 0o755,
    "usr": 0o755,
    "usr/bin": 0o755,
    "usr/sbin": 0o755,
    "etc": 0o755,
    "proc": 0o555,
    "sys": 0o555,
    "dev": 0o755,
    "tmp": 0o1777,
    "run": 0o755,
    "root": 0o700,
    "var": 0o755,
    "var/log": 0o755,
    "var/tmp": 0o1777,
    "home": 0o755,
    "mnt": 0o755,
}


def _tar_member(name: str, kind: bytes, mode: int, mtime: int, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo("./" + name if name != "." else ".")
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def write_tiny_tarball(
    fileobj: io.BufferedIOBase,
    busybox_data: bytes,
    applets: Iterable[str],
    version: str,
    mtime: int,
) -> None:
    """Write the tiny root file system as a gzipped tar to ``fileobj`` (deterministic)."""
    members: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}

    def add_dir(path: str, mode: int = 0o755) -> None:
        members.setdefault(path, (_tar_member(path, tarfile.DIRTYPE, mode, mtime), None))

    add_dir(".")
    for path, mode in _TINY_DIRS.items():
        add_dir(path, mode)
    members["var/run"] = (
        _tar_member("var/run", tarfile.SYMTYPE, 0o777, mtime, linkname="../run"),
        None,
    )
    members["bin/busybox"] = (
        _tar_member("bin/busybox", tarfile.REGTYPE, 0o755, mtime, size=len(busybox_data)),
        busybox_data,
    )
    for link in applets:
        parent = os.path.dirname(link)
        for i in range(1, parent.count("/") + 2):
            add_dir("/".join(parent.split("/")[:i]))
        target = os.path.relpath("bin/busybox", parent)
        members[link] = (_tar_member(link, tarfile.SYMTYPE, 0o777, mtime, linkname=target), None)
    for path, (text, mode) in _tiny_etc(version).items():
        data = text.encode()
        members[path] = (_tar_member(path, tarfile.REGTYPE, mode, mtime, size=len(data)), data)

    # gzip header mtime 0 and sorted members: the same input gives the same bytes.
    with gzip.GzipFile(filename="", fileobj=fileobj, mode="wb", compresslevel=9, mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for path in sorted(members, key=lambda p: p.split("/")):
                info, data = members[path]
                tar.addfile(info, io.BytesIO(data) if data is not None else None)


def build_tiny(template_dir: str, name: str = TINY_NAME, busybox: str = BUSYBOX) -> str:
    """Build ``TEMPLATE/cache/NAME.tar.gz`` from busybox-static; return its path."""
    final = _output_path(template_dir, name)
    data, applets, version = _busybox_info(busybox)
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH") or os.stat(busybox).st_mtime)
    with _AtomicOutput(final) as out:
        with open(out.tmp, "wb") as f:
            write_tiny_tarball(f, data, applets, version, mtime)
            f.flush()
            os.fsync(f.fileno())
        return out.commit()


# --- debian: mmdebstrap ----------------------------------------------------------------


@dataclass(frozen=True)
class AptSource:
    """One deb822 stanza or one sources.list line."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]


def parse_deb822_sources(text: str) -> list[AptSource]:
    """Parse a ``*.sources`` file (sources.list(5), "DEB822-STYLE FORMAT")."""
    out = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0] in " \t" and key is not None:
                fields[key] += " " + line.strip()
                continue
            key, sep, value = line.partition(":")
            if not sep:
                key = None
                continue
            key = key.strip().lower()
            fields[key] = value.strip()
        if not fields or fields.get("enabled", "yes").lower() == "no":
            continue
        out.append(
            AptSource(
                types=tuple(fields.get("types", "").split()),
                uris=tuple(fields.get("uris", "").split()),
                suites=tuple(fields.get("suites", "").split()),
                components=tuple(fields.get("components", "").split()),
            )
        )
    return out


def parse_sources_list(text: str) -> list[AptSource]:
    """Parse one-line-style ``sources.list`` entries (``deb [opts] URI SUITE COMP...``)."""
    out = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        line = re.sub(r"\[[^\]]*\]", " ", line)  # [arch=amd64 signed-by=...]
        words = line.split()
        if len(words) < 3 or words[0] not in ("deb", "deb-src"):
            continue
        out.append(AptSource((words[0],), (words[1],), (words[2],), tuple(words[3:])))
    return out


def host_apt_sources(apt_dir: str = APT_DIR) -> list[AptSource]:
    """What apt on this host reads: sources.list, then sources.list.d/*.list|*.sources."""
    paths = [os.path.join(apt_dir, "sources.list")]
    d = os.path.join(apt_dir, "sources.list.d")
    try:
        paths += [os.path.join(d, n) for n in sorted(os.listdir(d))]
    except FileNotFoundError:
        pass
    out: list[AptSource] = []
    for path in paths:
        if not path.endswith((".list", ".sources")):
            continue
        try:
            with open(path) as f:
                text = f.read()
        except (FileNotFoundError, IsADirectoryError):
            continue
        out += parse_deb822_sources(text) if path.endswith(".sources") else parse_sources_list(text)
    return out


def debian_source_lines(
    suite: str = DEBIAN_SUITE,
    mirror: str | None = None,
    sources: Sequence[AptSource] | None = None,
) -> list[str]:
    """The ``deb URI SUITE COMPONENTS`` lines to build ``suite`` from.

    With ``mirror``: that mirror's ``suite main`` only.  Otherwise every ``deb`` source
    of the host (``sources``, default host_apt_sources()) for ``suite`` and its
    ``-updates`` and ``-security`` suites, in the host's order, so the template gets
    the same packages, security fixes included, that the host installs; if the host has
    none for ``suite``, deb.debian.org.
    """
    if mirror:
        return [f"deb {mirror} {suite} main"]
    if sources is None:
        sources = host_apt_sources()
    wanted = (suite, f"{suite}-updates", f"{suite}-security")
    lines: list[str] = []
    for src in sources:
        if "deb" not in src.types:
            continue
        for s in src.suites:
            if s in wanted:
                comps = " ".join(src.components) or "main"
                lines += [f"deb {uri} {s} {comps}" for uri in src.uris]
    if not any(line.split()[2] == suite for line in lines):
        return [f"deb {DEFAULT_MIRROR} {suite} main"]
    return list(dict.fromkeys(lines))


def default_mirror(suite: str = DEBIAN_SUITE, sources: Sequence[AptSource] | None = None) -> str:
    """The host's mirror for ``suite`` (the first ``URIs:`` that serves it)."""
    lines = debian_source_lines(suite, sources=sources)
    return next(ln.split()[1] for ln in lines if ln.split()[2] == suite)


def parse_packages(value: str | Iterable[str]) -> list[str]:
    """``'redis-server,postgresql'`` (or a list of such) -> checked package names."""
    items = [value] if isinstance(value, str) else list(value)
    out = []
    for item in items:
        for pkg in item.replace(" ", ",").split(","):
            if not pkg:
                continue
            if not _PACKAGE_RE.fullmatch(pkg):
                raise BadValueError(f"Invalid package name: {pkg!r}")
            out.append(pkg)
    return list(dict.fromkeys(out))


# Run before any package is unpacked, with the new root as $1.  Man pages are not
# installed (_SLIM_DPKG_OPTS), but some maintainer scripts make links there
# (openjdk's update-alternatives for java.1.gz fails without /usr/share/man/man1).
_SETUP_HOOKS = ("mkdir -p " + " ".join(f'"$1/usr/share/man/man{i}"' for i in range(1, 9)),)

# Run inside mmdebstrap's customize step, with the new root as $1.
_CUSTOMIZE_HOOKS = (
    'echo localhost > "$1/etc/hostname"',
    "printf '{}' > \"$1/etc/hosts\"".format(_ETC_HOSTS.encode("unicode_escape").decode()),
    ': > "$1/etc/resolv.conf"',
    ': > "$1/etc/machine-id"',
)

_SLIM_DPKG_OPTS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/lintian/*",
)


def mmdebstrap_command(
    output: str, suite: str, packages: Sequence[str], source_lines: Sequence[str]
) -> list[str]:
    cmd = [
        "mmdebstrap",
        "--variant=minbase",
        "--include=" + ",".join(packages),
        '--aptopt=Acquire::Languages "none"',
    ]
    cmd += [f"--dpkgopt={opt}" for opt in _SLIM_DPKG_OPTS]
    cmd += [f"--setup-hook={hook}" for hook in _SETUP_HOOKS]
    cmd += [f"--customize-hook={hook}" for hook in _CUSTOMIZE_HOOKS]
    return [*cmd, suite, output, *source_lines]


def build_debian(
    template_dir: str,
    name: str = DEBIAN_NAME,
    suite: str = DEBIAN_SUITE,
    include: Iterable[str] = (),
    mirror: str | None = None,
    log: Callable[[str], None] | None = None,
) -> str:
    """Build a minimal Debian template with mmdebstrap; return its path.

    ``log`` receives mmdebstrap's progress lines as they come.  On failure the error
    carries the first error line of its output: the cause, usually apt's.
    """
    final = _output_path(template_dir, name)
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", suite):
        raise BadValueError(f"Invalid suite name: {suite!r}")
    packages = parse_packages([*DEBIAN_PACKAGES, *include])
    if shutil.which("mmdebstrap") is None:
        raise VzError("mmdebstrap not found: install mmdebstrap")
    lines = debian_source_lines(suite, mirror)
    env = dict(os.environ)
    if "SOURCE_DATE_EPOCH" not in env:
        epoch = mirror_epoch(lines)
        if epoch is not None:
            env["SOURCE_DATE_EPOCH"] = str(epoch)
    with _AtomicOutput(final) as out:
        _run_logged(mmdebstrap_command(out.tmp, suite, packages, lines), log, env)
        return out.commit()


def release_date(release: str) -> int | None:
    """The ``Date:`` of a Release/InRelease file as a Unix time, None if it has none."""
    m = re.search(r"^Date:\s*(.+?)\s*$", release, re.MULTILINE)
    if not m:
        return None
    try:
        return int(email.utils.parsedate_to_datetime(m.group(1)).timestamp())
    except (TypeError, ValueError):
        return None


def mirror_epoch(source_lines: Sequence[str], timeout: float = 20) -> int | None:
    """The newest ``Date:`` of the suites' InRelease files, to build with as
    SOURCE_DATE_EPOCH: two builds from the same mirror state are then identical
    (mmdebstrap(1)).  None if a mirror does not answer; mmdebstrap will say why."""
    dates = []
    for line in source_lines:
        _, uri, suite = line.split()[:3]
        url = f"{uri.rstrip('/')}/dists/{suite}/InRelease"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                text = r.read(1 << 16).decode(errors="replace")
        except (OSError, ValueError):
            return None
        date = release_date(text)
        if date is None:
            return None
        dates.append(date)
    return max(dates, default=None)


def _run_logged(
    cmd: list[str], log: Callable[[str], None] | None, env: dict[str, str] | None = None
) -> None:
    tail: collections.deque[str] = collections.deque(maxlen=50)
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            if log is not None:
                log(line)
    finally:
        rc = proc.wait()
    if rc != 0:
        # The first E: line is the cause (apt's); the later ones only say what failed.
        errors = [line[2:] for line in tail if line.startswith("E:")]
        why = " ".join((errors or list(tail)[-1:] or ["no output"])[0].split())
        raise VzError(f"{cmd[0]} failed (exit {rc}): {why}", exit_code=VZ_SYSTEM_ERROR)
