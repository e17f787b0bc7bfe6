"""Test nodes: a throw-away vzpy node per test, optionally on a LAN of namespaces.

A Node is a directory tree (vz.conf, conf/, private/, root/, dump/, lock/,
template/) plus its own cgroup prefix and, when on a Lan, its own network
namespace.  Commands run as a real admin would run them: the installed
`vzctl`/`vzlist`/`vzmigrate` console scripts, with VZ_CONFDIR pointing at the
node's config and `nsenter --net` putting them in the node's netns (nsenter,
unlike `ip netns exec`, keeps the host mount namespace, so the node's mounts
persist between commands).

A Lan is a bridge living in its own namespace; nodes and clients hang off it
with veth pairs.  Nothing touches the host's own network namespace.

Cleanup kills what the test started (by cgroup and PID), unmounts, removes
cgroups, veths and namespaces — also when the test failed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time

from vzpy.node import init_node

TINY_CACHE = os.environ.get("VZPY_TEST_TEMPLATES", "/var/tmp/vzpy-test-templates")


def sh(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def tiny_template() -> str:
    """Build (once per machine, cached) the tiny busybox template; return its path."""
    from vzpy.template import build_tiny

    path = os.path.join(TINY_CACHE, "cache", "tiny.tar.gz")
    if not os.path.exists(path):
        os.makedirs(TINY_CACHE, exist_ok=True)
        build_tiny(TINY_CACHE)
    return path


def debian_template() -> str | None:
    """The Debian template the setup command built for this machine, if any."""
    d = "/vz/template/cache"
    names = sorted(os.listdir(d)) if os.path.isdir(d) else []
    if "debian-12-x86_64-minimal.tar.gz" in names:  # setup.sh's default template
        return os.path.join(d, "debian-12-x86_64-minimal.tar.gz")
    for name in names:
        if name.startswith("debian-12") and name.endswith(".tar.gz"):
            return os.path.join(d, name)
    return None


def require_template(name: str = "debian-12-x86_64-minimal") -> str:
    """name, if the setup command built that template on this machine; else skip the test."""
    if not os.path.exists(os.path.join("/vz/template/cache", name + ".tar.gz")):
        import pytest

        pytest.skip(f"template {name} not built (the setup command builds it)")
    return name


def ns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


class Lan:
    """A bridge in its own namespace; `attach()` adds a namespace with an IP on it."""

    def __init__(self, prefix: str = "10.88") -> None:
        self.tag = secrets.token_hex(3)
        self.ns = f"vzt-lan-{self.tag}"
        self.subnet = f"{prefix}.{int(self.tag[:2], 16) % 250 + 1}"
        self.members: list[str] = []
        self.next_host = 1
        sh("ip", "netns", "add", self.ns)
        sh("ip", "-n", self.ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.ns, "link", "set", "br0", "up")
        sh("ip", "-n", self.ns, "link", "set", "lo", "up")

    def alloc_ip(self) -> str:
        self.next_host += 1
        return f"{self.subnet}.{self.next_host}"

    def attach(self, ns: str, ip: str | None = None) -> str:
        """Create namespace `ns` (if needed) with eth0 on the bridge; return its IP."""
        if not ns_exists(ns):
            sh("ip", "netns", "add", ns)
        ip = ip or self.alloc_ip()
        idx = len(self.members)
        port = f"p{self.tag}{idx}"
        sh("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", port, "netns", self.ns)
        sh("ip", "-n", self.ns, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        self.members.append(ns)
        return ip

    def client(self, name: str | None = None) -> Client:
        ns = name or f"vzt-cl-{secrets.token_hex(3)}"
        ip = self.attach(ns)
        return Client(ns, ip, self)

    def cleanup(self) -> None:
        for ns in self.members + [self.ns]:
            if ns_exists(ns):
                sh("ip", "netns", "del", ns, check=False)
        self.members.clear()


class Client:
    """A namespace on the LAN that plays a client machine."""

    def __init__(self, ns: str, ip: str, lan: Lan) -> None:
        self.ns = ns
        self.ip = ip
        self.lan = lan

    def run(
        self, *args: str, check: bool = True, timeout: float = 60, **kw
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.ns}", *args],
            check=check, capture_output=True, text=True, timeout=timeout, **kw,
        )  # fmt: skip

    def in_ns(self, fn, *args, **kw):
        from vzpy.sys.libc import run_in_netns

        return run_in_netns(f"/run/netns/{self.ns}", fn, *args, **kw)


class Node:
    """A vzpy node rooted in a temp directory, optionally in its own netns on a Lan."""

    def __init__(self, base: str, lan: Lan | None = None, name: str = "n") -> None:
        self.tag = secrets.token_hex(3)
        self.name = name
        self.base = base
        self.confdir = os.path.join(base, "etc")
        self.vzdir = os.path.join(base, "vz")
        self.cgroup_prefix = f"vzpy-test-{name}-{self.tag}"
        self.lan = lan
        self.ns: str | None = None
        self.ip: str | None = None
        init_node(self.confdir, self.vzdir, {"VZ_CGROUP": self.cgroup_prefix, "STOP_TIMEOUT": "10"})
        os.makedirs(os.path.join(self.vzdir, "template", "cache"), exist_ok=True)
        dst = os.path.join(self.vzdir, "template", "cache", "tiny.tar.gz")
        if not os.path.exists(dst):
            os.symlink(tiny_template(), dst)
        deb = debian_template()
        if deb:
            # every Debian template the setup command built (minimal, redis...)
            for tname in os.listdir(os.path.dirname(deb)):
                if tname.startswith("debian-12") and tname.endswith(".tar.gz"):
                    ddst = os.path.join(self.vzdir, "template", "cache", tname)
                    if not os.path.exists(ddst):
                        os.symlink(os.path.join(os.path.dirname(deb), tname), ddst)
        if lan is not None:
            self.ns = f"vzt-{name}-{self.tag}"
            self.ip = lan.attach(self.ns)
        self.env = dict(os.environ, VZ_CONFDIR=self.confdir)

    # --- running the tools ------------------------------------------------------
    def prefix(self) -> list[str]:
        return ["nsenter", f"--net=/run/netns/{self.ns}"] if self.ns else []

    def run(
        self, *args: str, check: bool = False, timeout: float = 300, input: str | None = None
    ) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*self.prefix(), *args],
            capture_output=True, text=True, env=self.env, timeout=timeout, check=check, input=input,
        )  # fmt: skip

    def vzctl(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("vzctl", *args, **kw)

    def vzlist(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run("vzlist", *args, **kw)

    def ok(self, *args: str, **kw) -> str:
        """Run vzctl and insist on success; return stdout."""
        r = self.vzctl(*args, **kw)
        assert r.returncode == 0, (
            f"vzctl {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
        )
        return r.stdout

    def in_ns(self, fn, *args, **kw):
        """Run a Python callable in this node's netns (library-level calls)."""
        from vzpy.sys.libc import run_in_netns

        if self.ns is None:
            return fn(*args, **kw)
        return run_in_netns(f"/run/netns/{self.ns}", fn, *args, **kw)

    def create(
        self, ctid: int, ip: str | None = None, hostname: str | None = None, template: str = "tiny"
    ) -> str | None:
        args = ["create", str(ctid), "--ostemplate", template]
        if ip is None and self.lan is not None:
            ip = self.lan.alloc_ip()
        if ip:
            args += ["--ipadd", ip]
        if hostname:
            args += ["--hostname", hostname]
        self.ok(*args)
        return ip

    # --- introspection for assertions -------------------------------------------
    def cgroup_dirs(self) -> list[str]:
        out = []
        for ctrl in os.listdir("/sys/fs/cgroup"):
            p = os.path.join("/sys/fs/cgroup", ctrl, self.cgroup_prefix)
            if os.path.isdir(p):
                out.append(p)
        return out

    def mounts(self) -> list[str]:
        with open("/proc/self/mountinfo") as f:
            return [ln.split()[4] for ln in f if self.base in ln.split()[4]]

    def ct_procs(self, ctid: int) -> list[int]:
        p = f"/sys/fs/cgroup/freezer/{self.cgroup_prefix}/{ctid}/cgroup.procs"
        try:
            with open(p) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    # --- cleanup -----------------------------------------------------------------
    def cleanup(self) -> None:
        # Kill every process of this node's containers (by cgroup), then unmount.
        for d in self.cgroup_dirs():
            for sub, _dirs, _files in sorted(os.walk(d), key=lambda t: -len(t[0])):
                for fz in ("freezer.state",):
                    if os.path.exists(os.path.join(sub, fz)):
                        try:
                            with open(os.path.join(sub, fz), "w") as f:
                                f.write("THAWED")
                        except OSError:
                            pass
                if os.path.exists(os.path.join(sub, "cgroup.freeze")):
                    try:
                        with open(os.path.join(sub, "cgroup.freeze"), "w") as f:
                            f.write("0")
                    except OSError:
                        pass
                try:
                    with open(os.path.join(sub, "cgroup.procs")) as f:
                        for pid in f.read().split():
                            try:
                                os.kill(int(pid), signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                except OSError:
                    pass
        deadline = time.monotonic() + 10
        for d in self.cgroup_dirs():
            for sub, _dirs, _files in sorted(os.walk(d), key=lambda t: -len(t[0])):
                while time.monotonic() < deadline:
                    try:
                        os.rmdir(sub)
                        break
                    except FileNotFoundError:
                        break
                    except OSError:
                        time.sleep(0.05)
        for mp in sorted(self.mounts(), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], capture_output=True)
        if self.ns and ns_exists(self.ns):
            sh("ip", "netns", "del", self.ns, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
