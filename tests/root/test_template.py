"""Building real templates: tiny from busybox-static, debian with mmdebstrap (network)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import urllib.request

import pytest

from vzpy import template

pytestmark = pytest.mark.root

CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"


@pytest.fixture
def workdir():
    """A scratch directory under /var/tmp, removed even when the test fails."""
    d = tempfile.mkdtemp(prefix="vzt-template-", dir="/var/tmp")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _unpack(tarball: str, dest: str) -> None:
    """Unpack as vzctl create does: tar(1) as root, owners and modes kept."""
    os.makedirs(dest)
    subprocess.run(["tar", "-xpf", tarball, "-C", dest, "--numeric-owner"], check=True)


def test_build_tiny(workdir):
    started = time.monotonic()
    path = template.build_tiny(workdir)
    elapsed = time.monotonic() - started
    assert elapsed < 5, f"tiny took {elapsed:.1f} s"
    assert path == os.path.join(workdir, "cache", "tiny.tar.gz")
    assert template.find_template(workdir, "tiny") == path
    assert [t.name for t in template.list_templates(workdir)] == ["tiny"]
    assert os.stat(path).st_mode & 0o777 == 0o644

    with tarfile.open(path) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["./bin/busybox"].size == os.path.getsize(template.BUSYBOX)
        assert members["./bin/sh"].linkname == "busybox"
        for applet in ("ls", "ps", "cat", "echo", "sleep", "hostname", "ip", "ifconfig"):
            assert any(n.endswith("/" + applet) and m.issym() for n, m in members.items()), applet
        for applet in ("mount", "nc", "httpd", "wget", "kill", "halt", "poweroff", "reboot"):
            assert any(n.endswith("/" + applet) for n in members), applet
        assert "./sbin/init" not in members and "./linuxrc" not in members
        assert b"root:x:0:0:" in tar.extractfile("./etc/passwd").read()
        assert b"root:x:0:" in tar.extractfile("./etc/group").read()

    # Reproducible: a second build is byte-identical.
    with open(path, "rb") as f:
        first = f.read()
    template.build_tiny(workdir)
    with open(path, "rb") as f:
        assert f.read() == first
    assert sorted(os.listdir(os.path.join(workdir, "cache"))) == ["tiny.tar.gz"]


def test_tiny_runs_in_chroot(workdir):
    root = os.path.join(workdir, "root")
    _unpack(template.build_tiny(workdir, name="t2"), root)
    out = subprocess.run(
        [CHROOT, root, "/bin/sh", "-c", "echo hi; ls /; cat /etc/hostname; id -u"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/bin:/sbin:/usr/bin:/usr/sbin"},
    ).stdout.split()
    assert out[0] == "hi"
    assert {"bin", "etc", "proc", "sys", "dev", "tmp", "run", "root", "var"} <= set(out)
    assert out[-2:] == ["localhost", "0"]
    assert not os.path.lexists(os.path.join(root, "sbin", "init"))


def test_cli_build_tiny_and_list(workdir):
    r = subprocess.run(
        ["vzpy-template", "build", "tiny", "--name", "mini", "--template-dir", workdir],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Template built: {workdir}/cache/mini.tar.gz (")
    r = subprocess.run(
        ["vzpy-template", "list", "--template-dir", workdir], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "SIZE", "FILE"]
    assert lines[1].split()[0] == "mini" and lines[1].endswith("/cache/mini.tar.gz")


def _mirror_reachable(mirror: str, suite: str) -> bool:
    try:
        with urllib.request.urlopen(f"{mirror}/dists/{suite}/InRelease", timeout=15) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.mark.slow
def test_build_debian_with_redis(workdir):
    """The default Debian template plus redis-server, whose postinst must not start it."""
    suite = template.DEBIAN_SUITE
    mirror = template.default_mirror(suite)
    if not _mirror_reachable(mirror, suite):
        pytest.skip(f"Debian mirror {mirror} unreachable")
    if shutil.which("mmdebstrap") is None:
        pytest.skip("mmdebstrap not installed")

    def redis_pids() -> set[str]:
        r = subprocess.run(["pgrep", "-x", "redis-server"], capture_output=True, text=True)
        return set(r.stdout.split())

    before = redis_pids()
    path = template.build_debian(workdir, include=["redis-server"])
    assert redis_pids() == before, "the package's postinst started redis-server"
    assert path == os.path.join(workdir, "cache", template.DEBIAN_NAME + ".tar.gz")
    size = os.path.getsize(path)
    assert 20 << 20 < size < 150 << 20, size
    assert sorted(os.listdir(os.path.join(workdir, "cache"))) == [os.path.basename(path)]

    with tarfile.open(path) as tar:
        names = set(tar.getnames())
        for want in ("./usr/bin/python3", "./usr/bin/redis-server", "./bin/ps", "./bin/ip"):
            assert want in names or want.replace("./bin/", "./usr/bin/") in names, want
        assert "./usr/sbin/policy-rc.d" not in names
        assert not [
            n for n in names if n.startswith("./var/cache/apt/archives/") and n.endswith(".deb")
        ]
        assert not [n for n in names if n.startswith("./var/lib/apt/lists/") and "_Packages" in n]
        # no man pages; the directories stay (with update-alternatives' links), as some
        # maintainer scripts need them (openjdk's)
        assert not [
            m.name for m in tar.getmembers() if m.name.startswith("./usr/share/man/") and m.isfile()
        ]
        assert "./usr/share/man/man1" in names
        assert tar.extractfile("./etc/hostname").read() == b"localhost\n"
        assert tar.extractfile("./etc/resolv.conf").read() == b""
        assert tar.extractfile("./etc/machine-id").read() == b""
        slim = tar.extractfile("./etc/dpkg/dpkg.cfg.d/99mmdebstrap").read()
        assert b"path-exclude=/usr/share/doc/*" in slim  # later apt installs stay slim

    root = os.path.join(workdir, "root")
    _unpack(path, root)
    assert not os.path.lexists(os.path.join(root, "sbin", "init"))  # vzpy-init will be used
    r = subprocess.run(
        [CHROOT, root, "python3", "-c", "import sys; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0 and r.stdout.strip() == "(3, 11)", r.stderr
    r = subprocess.run(
        [CHROOT, root, "redis-server", "--version"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0 and "Redis server" in r.stdout, r.stderr
