"""OS template library and vzpy-template CLI, without root, network or busybox."""

from __future__ import annotations

import ctypes
import io
import os
import struct
import sys
import tarfile

import pytest

from vzpy import initbin, template
from vzpy.cli import template as cli
from vzpy.errors import VzError

HOST_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.debian.org/archive/debian-security/20250520T000000Z
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

NODESOURCE = """\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
Architectures: amd64
Signed-By: /usr/share/keyrings/nodesource.gpg
"""


# --- names and the cache -----------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "debian-12-x86_64-minimal", "centos-6-x86", "a+b_c.d"])
def test_check_name_accepts(name):
    assert template.check_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "../x", "a/b", "a b", "tiny.tar.gz", "-x"])
def test_check_name_refuses(name):
    with pytest.raises(VzError) as exc:
        template.check_name(name)
    assert exc.value.exit_code == 21


def test_split_name():
    assert template.split_name("tiny.tar.gz") == "tiny"
    assert template.split_name("debian-12.tar.zst") == "debian-12"
    assert template.split_name("x.tar") is None
    assert template.split_name(".tiny.tar.gz.abc.tar.gz") is None  # a build in progress
    assert template.split_name(".tar.gz") is None


def _touch(path, size=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"x" * size)


def test_find_template_order_and_extension(tmp_path):
    cache = tmp_path / "cache"
    _touch(str(cache / "a.tar.xz"))
    _touch(str(cache / "a.tar.zst"))
    assert template.find_template(str(tmp_path), "a") == str(cache / "a.tar.xz")
    _touch(str(cache / "a.tar.gz"))
    assert template.find_template(str(tmp_path), "a") == str(cache / "a.tar.gz")
    assert template.find_template(str(tmp_path), "a.tar.zst") == str(cache / "a.tar.zst")


def test_find_template_missing(tmp_path):
    with pytest.raises(VzError) as exc:
        template.find_template(str(tmp_path), "centos-6-x86")
    assert exc.value.exit_code == 91
    assert str(exc.value) == (f"Cached OS template {tmp_path}/cache/centos-6-x86.tar.gz not found")
    with pytest.raises(VzError) as exc:
        template.find_template(str(tmp_path), "x.tar.xz")
    assert str(exc.value).endswith("/cache/x.tar.xz not found")


def test_list_templates(tmp_path):
    assert template.list_templates(str(tmp_path)) == []
    cache = tmp_path / "cache"
    _touch(str(cache / "tiny.tar.gz"), 10)
    _touch(str(cache / "b.tar.xz"), 3)
    _touch(str(cache / ".tiny.tar.gz.x1.tar.gz"), 1)  # in progress: hidden
    _touch(str(cache / "README"), 1)
    os.mkdir(cache / "dir.tar.gz")
    got = template.list_templates(str(tmp_path))
    assert [(t.name, os.path.basename(t.path), t.size) for t in got] == [
        ("b", "b.tar.xz", 3),
        ("tiny", "tiny.tar.gz", 10),
    ]


# --- busybox ---------------------------------------------------------------------------


def test_busybox_applets_full_listing():
    listing = (
        "usr/bin/[\nbin/busybox\nsbin/init\nlinuxrc\nbin/sh\nsbin/ip\nusr/bin/wget\nbin/sh\n\n"
    )
    assert template.busybox_applets(listing) == ["bin/sh", "sbin/ip", "usr/bin/[", "usr/bin/wget"]


def test_busybox_applets_bare_names():
    # --list-full without FEATURE_INSTALLER prints bare names, like --list.
    assert template.busybox_applets("sh\ninit\nls\n") == ["bin/ls", "bin/sh"]


def test_busybox_applets_refuses_escapes():
    with pytest.raises(VzError):
        template.busybox_applets("../../etc/passwd\n")


def _elf(phdr_types):
    """A minimal ELF64 LE header followed by program headers of the given p_types."""
    phoff, phentsize = 64, 56
    hdr = bytearray(64)
    hdr[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", hdr, 0x20, phoff)
    struct.pack_into("<HH", hdr, 0x36, phentsize, len(phdr_types))
    body = b"".join(struct.pack("<I", t) + bytes(phentsize - 4) for t in phdr_types)
    return bytes(hdr) + body


def test_is_static_elf():
    assert template.is_static_elf(_elf([1, 1, 4]))  # PT_LOAD, PT_LOAD, PT_NOTE
    assert not template.is_static_elf(_elf([6, 3, 1]))  # PT_PHDR, PT_INTERP, ...
    assert not template.is_static_elf(b"#!/bin/sh\n" + bytes(100))
    with open(sys.executable, "rb") as f:  # the Python running this is dynamic
        assert not template.is_static_elf(f.read())


def _tiny_bytes(mtime=1700000000):
    buf = io.BytesIO()
    applets = template.busybox_applets("bin/sh\nbin/ls\nsbin/ip\nusr/bin/wget\nsbin/init\n")
    template.write_tiny_tarball(buf, b"\x7fELF fake busybox", applets, "1.35.0", mtime)
    return buf.getvalue()


def test_tiny_tarball_contents():
    with tarfile.open(fileobj=io.BytesIO(_tiny_bytes()), mode="r:gz") as tar:
        members = {m.name: m for m in tar.getmembers()}
        names = list(members)
        assert names[0] == "."
        assert all(n == "." or n.startswith("./") for n in names)
        bb = members["./bin/busybox"]
        assert bb.isfile() and bb.mode == 0o755 and bb.uid == 0 and bb.gid == 0
        assert tar.extractfile(bb).read() == b"\x7fELF fake busybox"
        assert members["./bin/sh"].issym() and members["./bin/sh"].linkname == "busybox"
        assert members["./sbin/ip"].linkname == "../bin/busybox"
        assert members["./usr/bin/wget"].linkname == "../../bin/busybox"
        assert "./sbin/init" not in members
        for d in ("proc", "sys", "dev", "tmp", "run", "root", "var", "etc", "home"):
            assert members[f"./{d}"].isdir(), d
        assert members["./tmp"].mode == 0o1777
        assert members["./root"].mode == 0o700
        assert members["./etc/shadow"].mode == 0o600
        passwd = tar.extractfile("./etc/passwd").read().decode()
        assert passwd.startswith("root:x:0:0:root:/root:/bin/sh\n")
        assert tar.extractfile("./etc/resolv.conf").read() == b""
        assert tar.extractfile("./etc/hostname").read() == b"localhost\n"
        assert b"localhost" in tar.extractfile("./etc/hosts").read()
        assert {m.mtime for m in members.values()} == {1700000000}
        # Parents come before their children.
        seen = set()
        for n in names:
            assert n == "." or os.path.dirname(n) in seen | {"."}, n
            seen.add(n)


def test_tiny_tarball_is_reproducible():
    assert _tiny_bytes() == _tiny_bytes()
    assert _tiny_bytes(1) != _tiny_bytes(2)


def test_build_tiny_refuses_dynamic_busybox(tmp_path):
    with pytest.raises(VzError, match="not a static"):
        template.build_tiny(str(tmp_path), busybox=sys.executable)
    with pytest.raises(VzError, match="install busybox-static"):
        template.build_tiny(str(tmp_path), busybox=str(tmp_path / "nope"))
    assert os.listdir(tmp_path / "cache") == []  # nothing half-written left behind


# --- apt sources and the debian build ----------------------------------------------------


def test_parse_deb822_sources():
    text = HOST_SOURCES + "\nTypes: deb deb-src\nURIs: http://a/\n http://b/\nSuites: sid\n"
    text += "Components: main\n  contrib\nEnabled: no\n\nTypes: deb\nURIs: http://c/\nSuites: x\n"
    got = template.parse_deb822_sources(text)
    assert got[0] == template.AptSource(
        ("deb",), ("http://deb.debian.org/debian",), ("bookworm", "bookworm-updates"), ("main",)
    )
    assert got[1].uris == ("http://deb.debian.org/debian-security",)
    assert got[2] == template.AptSource(("deb",), ("http://c/",), ("x",), ())
    assert len(got) == 3  # the Enabled: no stanza is skipped


def test_parse_deb822_continuation_lines():
    got = template.parse_deb822_sources("Types: deb\nURIs: http://a/\n http://b/\nSuites: s\n")
    assert got[0].uris == ("http://a/", "http://b/")


def test_parse_sources_list():
    text = (
        "# comment\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://mirror/debian bookworm main contrib\n"
        "deb-src http://mirror/debian bookworm main\n"
        "deb http://security.debian.org/debian-security bookworm-security main # tail\n"
        "garbage\n"
    )
    got = template.parse_sources_list(text)
    assert got[0] == template.AptSource(
        ("deb",), ("http://mirror/debian",), ("bookworm",), ("main", "contrib")
    )
    assert got[1].types == ("deb-src",)
    assert got[2].suites == ("bookworm-security",) and got[2].components == ("main",)
    assert len(got) == 3


def test_host_apt_sources_reads_only_apt_files(tmp_path):
    d = tmp_path / "sources.list.d"
    d.mkdir()
    (tmp_path / "sources.list").write_text("deb http://old/debian bookworm main\n")
    (d / "debian.sources").write_text(HOST_SOURCES)
    (d / "nodesource.sources.disabled-by-farm").write_text(NODESOURCE)
    (d / "google.list.disabled").write_text("deb https://x/apt cloud main\n")
    got = template.host_apt_sources(str(tmp_path))
    assert [s.uris[0] for s in got] == [
        "http://old/debian",
        "http://deb.debian.org/debian",
        "http://deb.debian.org/debian-security",
    ]


def test_debian_source_lines_from_host():
    sources = template.parse_deb822_sources(NODESOURCE + "\n" + HOST_SOURCES)
    assert template.debian_source_lines("bookworm", sources=sources) == [
        "deb http://deb.debian.org/debian bookworm main",
        "deb http://deb.debian.org/debian bookworm-updates main",
        "deb http://deb.debian.org/debian-security bookworm-security main",
    ]
    assert template.default_mirror("bookworm", sources=sources) == "http://deb.debian.org/debian"


def test_debian_source_lines_fallback_and_override():
    sources = template.parse_deb822_sources(HOST_SOURCES)
    assert template.debian_source_lines("trixie", sources=sources) == [
        "deb http://deb.debian.org/debian trixie main"
    ]
    assert template.debian_source_lines("bookworm", mirror="http://m/d", sources=sources) == [
        "deb http://m/d bookworm main"
    ]
    # The mirror is the one serving the suite itself, whatever the order.
    reordered = list(reversed(sources))
    assert template.default_mirror("bookworm", sources=reordered) == "http://deb.debian.org/debian"
    # Only a security source for the suite is not enough to build from.
    security_only = template.parse_deb822_sources(HOST_SOURCES.split("\n\n")[1])
    assert template.default_mirror("bookworm", sources=security_only) == template.DEFAULT_MIRROR


def test_parse_packages():
    assert template.parse_packages(["redis-server,postgresql", "python3", "libc6:amd64"]) == [
        "redis-server",
        "postgresql",
        "python3",
        "libc6:amd64",
    ]
    assert template.parse_packages("a, b,,a") == ["a", "b"]
    for bad in ("Foo", "-rf", "a;b", "$(x)"):
        with pytest.raises(VzError) as exc:
            template.parse_packages(bad)
        assert exc.value.exit_code == 21


def test_release_date():
    text = "Origin: Debian\nLabel: Debian\nDate: Sat, 10 May 2025 09:18:34 UTC\nValid-Until: x\n"
    assert template.release_date(text) == 1746868714
    assert template.release_date("Origin: Debian\n") is None
    assert template.release_date("Date: not a date\n") is None


def test_mirror_epoch_takes_the_newest(tmp_path):
    for suite, date in (
        ("s", "Sat, 10 May 2025 09:18:34 UTC"),
        ("s-updates", "Sun, 11 May 2025 00:00:00 UTC"),
    ):
        d = tmp_path / "dists" / suite
        d.mkdir(parents=True)
        (d / "InRelease").write_text(f"-----BEGIN PGP SIGNED MESSAGE-----\nDate: {date}\n")
    lines = [f"deb file://{tmp_path} s main", f"deb file://{tmp_path} s-updates main"]
    assert template.mirror_epoch(lines) == 1746921600
    assert template.mirror_epoch([f"deb file://{tmp_path} missing main"]) is None


def test_mmdebstrap_command():
    cmd = template.mmdebstrap_command(
        "/t/out.tar.gz", "bookworm", ["python3", "redis-server"], ["deb http://m/d bookworm main"]
    )
    assert cmd[0] == "mmdebstrap"
    assert "--variant=minbase" in cmd
    assert "--include=python3,redis-server" in cmd
    assert cmd[-3:] == ["bookworm", "/t/out.tar.gz", "deb http://m/d bookworm main"]
    hooks = [c for c in cmd if c.startswith("--customize-hook=")]
    assert any("/etc/machine-id" in h for h in hooks)
    assert any("/etc/resolv.conf" in h for h in hooks)
    # maintainer scripts that link man pages (openjdk) need the directories
    setup = [c for c in cmd if c.startswith("--setup-hook=")]
    assert any("/usr/share/man/man1" in h for h in setup)


def test_run_logged_reports_the_first_error():
    script = (
        'echo "I: step"; echo "E: Unable to locate  package x"; echo "E: setup failed"; exit 25'
    )
    seen = []
    with pytest.raises(VzError) as exc:
        template._run_logged(["sh", "-c", script], seen.append)
    assert str(exc.value) == "sh failed (exit 25): Unable to locate package x"
    assert seen[0] == "I: step" and len(seen) == 3
    with pytest.raises(VzError, match=r"^sh failed \(exit 1\): last words$"):
        template._run_logged(["sh", "-c", "echo first; echo last words; exit 1"], None)
    template._run_logged(["true"], None)


# --- the CLI --------------------------------------------------------------------------


def test_conf_value(tmp_path):
    conf = tmp_path / "vz.conf"
    conf.write_text(
        '# TEMPLATE=/no\n  VE_ROOT=/vz/root/$VEID\nTEMPLATE="/srv/tmpl" # x\nTEMPLATE=/second\n'
        "LOCKDIR=/vz/lock\n"
    )
    assert cli.conf_value(str(conf), "TEMPLATE") == "/srv/tmpl"
    assert cli.conf_value(str(conf), "LOCKDIR") == "/vz/lock"
    assert cli.conf_value(str(conf), "DUMPDIR") is None
    assert cli.conf_value(str(tmp_path / "missing"), "TEMPLATE") is None


def test_resolve_template_dir(tmp_path):
    conf = tmp_path / "vz.conf"
    conf.write_text("TEMPLATE=/vz/template\n")
    assert cli.resolve_template_dir(None, str(conf)) == "/vz/template"
    assert cli.resolve_template_dir("/x", str(conf)) == "/x"
    with pytest.raises(VzError) as exc:
        cli.resolve_template_dir(None, str(tmp_path / "missing"))
    assert exc.value.exit_code == 24


def test_human_size():
    assert cli.human_size(512) == "512B"
    assert cli.human_size(1536) == "1.5K"
    assert cli.human_size(54 * 1024 * 1024 + 300 * 1024) == "54.3M"


def test_cli_list(tmp_path, capsys):
    _touch(str(tmp_path / "cache" / "tiny.tar.gz"), 2048)
    assert cli.main(["list", "--template-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["NAME", "SIZE", "FILE"]
    assert out[1].split() == ["tiny", "2.0K", str(tmp_path / "cache" / "tiny.tar.gz")]
    # The group-level option works too.
    assert cli.main(["--template-dir", str(tmp_path), "list"]) == 0


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["build", "tiny", "--name", "../x", "--template-dir", str(tmp_path)]) == 21
    assert capsys.readouterr().err == "Invalid OS template name: '../x'\n"
    assert cli.main(["build", "nosuch"]) == 20
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nosuch" in err
    rc = cli.main(["build", "debian", "--include", "Bad!", "--template-dir", str(tmp_path)])
    assert rc == 21
    assert capsys.readouterr().err == "Invalid package name: 'Bad!'\n"
    rc = cli.main(["build", "tiny", "--busybox", "/nonexistent", "--template-dir", str(tmp_path)])
    assert rc == 3
    assert "install busybox-static" in capsys.readouterr().err


# --- initbin pieces that need neither root nor gcc ------------------------------------------


def test_open_how_size():
    assert ctypes.sizeof(initbin.OpenHow) == 24  # OPEN_HOW_SIZE_VER0


def test_init_source_is_packaged():
    src = initbin.init_source()
    assert b"sigwaitinfo" in src and b"int main" in src
