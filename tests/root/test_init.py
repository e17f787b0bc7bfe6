"""vzpy-init as pid 1 of a fresh pid namespace, and its installation into a tree.

Each init runs as ``unshare --pid --fork --mount sh -c 'mount ...; exec chroot ROOT
/sbin/vzpy-init'`` on an unpacked tiny template: the shell is pid 1 of the new
namespace and execs into the init, which keeps pid 1.  /dev is a bind of the host's
and /proc a fresh procfs, both in the private mount namespace, so nothing is left
mounted on the host.  Killing the init with SIGKILL from here tears the whole
namespace down; the fixture does that whatever the test's outcome.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time

import psutil
import pytest

from vzpy import initbin, template
from vzpy.errors import VzError

root_only = pytest.mark.root


# --- helpers -------------------------------------------------------------------------


def wait_for(cond, timeout=5.0, step=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def ns_pid(proc: psutil.Process) -> int:
    """The pid of a host process as seen in its own (innermost) pid namespace."""
    with open(f"/proc/{proc.pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return int(line.split()[-1])
    raise AssertionError("no NSpid")


class Init:
    """One running vzpy-init in its own pid namespace."""

    def __init__(self, root: str, args: list[str], env: dict[str, str] | None = None):
        self.root = root
        self.proc: psutil.Process | None = None
        q = shlex.quote(root)
        script = (
            f"mount --bind /dev {q}/dev && mount -t proc proc {q}/proc && "
            f'exec chroot {q} /sbin/vzpy-init "$@"'
        )
        full_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})}
        self.unshare = subprocess.Popen(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                *args,
            ],
            env=full_env,
            stderr=subprocess.PIPE,
            text=True,
        )

    def wait_started(self) -> None:
        self.proc = wait_for(self._find_init)
        assert self.proc, f"init did not start: {self._stderr()}"

    def _find_init(self) -> psutil.Process | None:
        try:
            for child in psutil.Process(self.unshare.pid).children():
                if child.exe().endswith("/sbin/vzpy-init"):
                    return child
        except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError):
            pass
        return None

    def _stderr(self) -> str:
        if self.unshare.poll() is None:
            return ""
        return self.unshare.stderr.read()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def procs(self) -> dict[int, psutil.Process]:
        """Every process of the namespace but init, keyed by its pid in there."""
        out = {}
        for p in self.proc.children(recursive=True):
            try:
                out[ns_pid(p)] = p
            except (FileNotFoundError, ProcessLookupError):
                pass
        return out

    def read_pid(self, name: str) -> int:
        path = os.path.join(self.root, "run", name)
        assert wait_for(lambda: os.path.exists(path) and open(path).read().strip()), name
        with open(path) as f:
            return int(f.read())

    def signal(self, sig: int) -> float:
        os.kill(self.pid, sig)
        return time.monotonic()

    def wait(self, timeout: float) -> int:
        return self.unshare.wait(timeout=timeout)

    def cleanup(self) -> None:
        if self.proc is not None:
            try:
                self.proc.kill()  # SIGKILL to a namespace's init empties the namespace
            except psutil.NoSuchProcess:
                pass
        if self.unshare.poll() is None:
            self.unshare.kill()
        self.unshare.wait(timeout=10)
        self.unshare.stderr.close()


@pytest.fixture(scope="module")
def tiny_tarball():
    d = tempfile.mkdtemp(prefix="vzt-init-tmpl-", dir="/var/tmp")
    try:
        yield template.build_tiny(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ct_root(tiny_tarball):
    """An unpacked tiny template with vzpy-init installed as vzctl start would."""
    d = tempfile.mkdtemp(prefix="vzt-init-", dir="/var/tmp")
    root = os.path.join(d, "root")
    os.mkdir(root)
    try:
        subprocess.run(["tar", "-xpf", tiny_tarball, "-C", root], check=True)
        assert initbin.container_init(root) == "/sbin/vzpy-init"
        yield root
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def start_init(ct_root):
    started: list[Init] = []

    def start(rc: str | None, args=("-t", "5"), env=None, rc_path="etc/vzpy/rc.local") -> Init:
        if rc is not None:
            path = os.path.join(ct_root, rc_path)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(rc)
            os.chmod(path, 0o755)
        init = Init(ct_root, list(args), env)
        started.append(init)
        init.wait_started()
        return init

    try:
        yield start
    finally:
        for init in started:
            init.cleanup()


KEEPERS = "#!/bin/sh\nsleep 1000 &\necho $! > /run/a.pid\nsleep 1000 &\necho $! > /run/b.pid\n"


# --- running as pid 1 -------------------------------------------------------------------


@root_only
def test_identity_and_rc_local(start_init):
    init = start_init(KEEPERS)
    assert init.proc.name() == "init"  # PR_SET_NAME: `ps -o comm` shows init
    a, b = init.read_pid("a.pid"), init.read_pid("b.pid")
    procs = wait_for(lambda: (p := init.procs()) and set(p) == {a, b} and p)
    assert procs, init.procs()
    # rc.local has exited and was reaped; its children were adopted by init.
    for p in procs.values():
        assert p.ppid() == init.pid and p.status() != psutil.STATUS_ZOMBIE


@root_only
def test_reaps_adopted_zombie(start_init):
    # `sleep 0.5` becomes a zombie under `sleep 8`, which never waits for it; when that
    # exits, the zombie is reparented to init, which must reap it.  (The child must
    # outlive the `exec`: ash reaps jobs that already ended before it execs.)
    rc = (
        "#!/bin/sh\n"
        "sh -c 'sleep 0.5 & echo $! > /run/zombie.pid; exec sleep 8' &\n"
        "echo $! > /run/parent.pid\n"
        "sleep 1000 &\necho $! > /run/a.pid\n"
    )
    init = start_init(rc)
    zombie, parent, keeper = (init.read_pid(n) for n in ("zombie.pid", "parent.pid", "a.pid"))
    z = wait_for(lambda: init.procs().get(zombie))
    assert z and wait_for(lambda: z.status() == psutil.STATUS_ZOMBIE)
    assert ns_pid(psutil.Process(z.ppid())) == parent
    assert wait_for(lambda: set(init.procs()) == {keeper}, timeout=15), init.procs()


@root_only
@pytest.mark.parametrize("rc_path", ["etc/vzpy/rc.local", "etc/rc.local"])
def test_rc_local_without_shebang(start_init, rc_path):
    init = start_init("sleep 1000 &\necho $! > /run/a.pid\n", rc_path=rc_path)
    assert init.read_pid("a.pid") in wait_for(init.procs)


@root_only
def test_sigterm_stops_children_and_exits_0(start_init):
    init = start_init(KEEPERS)
    init.read_pid("b.pid")
    children = list(wait_for(lambda: len(p := init.procs()) == 2 and p).values())
    t0 = init.signal(signal.SIGTERM)
    assert init.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 2, "children that obey SIGTERM must not wait for the grace"
    for p in children:
        assert not p.is_running()


@root_only
def test_stopped_child_is_continued_and_terminated(start_init):
    init = start_init(KEEPERS)
    a = init.read_pid("a.pid")
    child = wait_for(lambda: init.procs().get(a))
    child.suspend()
    assert wait_for(lambda: child.status() == psutil.STATUS_STOPPED)
    t0 = init.signal(signal.SIGTERM)
    assert init.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 2
    assert not child.is_running()


@root_only
@pytest.mark.parametrize(
    "args,env",
    [(["-t", "1"], None), ([], {"VZPY_INIT_TIMEOUT": "1"})],
    ids=["argument", "environment"],
)
def test_term_ignoring_child_is_killed_after_grace(start_init, args, env):
    rc = "#!/bin/sh\nsh -c \"trap '' TERM; exec sleep 1000\" &\necho $! > /run/a.pid\n"
    init = start_init(rc, args=args, env=env)
    a = init.read_pid("a.pid")
    child = wait_for(lambda: init.procs().get(a))
    assert child and wait_for(lambda: child.cmdline()[:1] == ["sleep"])
    t0 = init.signal(signal.SIGTERM)
    assert init.wait(timeout=10) == 0
    elapsed = time.monotonic() - t0
    assert 0.9 < elapsed < 3, elapsed
    assert not child.is_running()


@root_only
@pytest.mark.parametrize(
    "sig",
    [
        signal.SIGINT,
        signal.SIGPWR,
        signal.SIGUSR1,
        signal.SIGUSR2,
        signal.SIGRTMIN + 3,
        signal.SIGRTMIN + 4,
    ],
    ids=["INT", "PWR", "USR1", "USR2", "RTMIN+3", "RTMIN+4"],
)
def test_shutdown_signals(start_init, sig):
    init = start_init(KEEPERS)
    init.read_pid("b.pid")
    init.signal(sig)
    assert init.wait(timeout=10) == 0


@root_only
@pytest.mark.parametrize("cmd", ["halt", "poweroff", "reboot"])
def test_busybox_shutdown_commands(start_init, cmd):
    """busybox halt/poweroff/reboot run inside the container signal pid 1."""
    init = start_init(KEEPERS)
    init.read_pid("b.pid")
    subprocess.run(
        ["nsenter", "-t", str(init.pid), "--pid", "--mount", "--root", "--wd", "/bin/busybox", cmd],
        env={"PATH": "/bin:/sbin:/usr/bin:/usr/sbin"},
        timeout=10,
        capture_output=True,
    )
    assert init.wait(timeout=10) == 0


@root_only
def test_other_signals_are_ignored(start_init):
    init = start_init(KEEPERS)
    init.read_pid("b.pid")
    for sig in (signal.SIGHUP, signal.SIGQUIT, signal.SIGWINCH, signal.SIGALRM):
        init.signal(sig)
    time.sleep(0.3)
    assert init.unshare.poll() is None and len(init.procs()) == 2
    init.signal(signal.SIGTERM)
    assert init.wait(timeout=10) == 0


@root_only
def test_empty_container(start_init):
    init = start_init(None, args=["-t", "0"])  # no rc.local at all
    assert init.procs() == {}
    init.signal(signal.SIGTERM)
    assert init.wait(timeout=10) == 0


# --- outside a pid namespace, building, installing ------------------------------------------


def test_refuses_to_run_outside_pid_1_or_with_bad_arguments():
    binary = initbin.init_binary()
    r = subprocess.run([binary], capture_output=True, text=True, timeout=10)
    assert r.returncode == 2
    assert r.stderr == "vzpy-init: must run as pid 1 of a pid namespace\n"
    r = subprocess.run([binary, "-t", "soon"], capture_output=True, text=True, timeout=10)
    assert (r.returncode, r.stderr) == (2, "vzpy-init: bad grace time: soon\n")
    r = subprocess.run([binary, "-x"], capture_output=True, text=True, timeout=10)
    assert (r.returncode, r.stderr) == (2, "vzpy-init: usage: vzpy-init [-t GRACE_SECONDS]\n")


def test_init_binary_build_and_cache(tmp_path):
    lib = str(tmp_path / "lib")
    path = initbin.init_binary(lib)
    assert os.path.basename(path).startswith("vzpy-init-")
    st = os.stat(path)
    assert st.st_mode & 0o777 == 0o755
    with open(path, "rb") as f:
        assert template.is_static_elf(f.read())
    assert st.st_size < 1 << 20
    assert initbin.init_binary(lib) == path
    assert os.stat(path).st_mtime_ns == st.st_mtime_ns  # not rebuilt
    assert os.listdir(lib) == [os.path.basename(path)]  # no temporary left


def test_init_binary_without_gcc(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(VzError, match="gcc not found"):
        initbin.init_binary(str(tmp_path / "lib"))


@pytest.fixture
def fake_init(tmp_path):
    path = tmp_path / "vzpy-init-test"
    path.write_bytes(b"\x7fELF not really\n")
    return str(path)


def test_install_init(tmp_path, fake_init):
    root = tmp_path / "ct"
    (root / "sbin").mkdir(parents=True)
    assert initbin.install_init(str(root), fake_init) == "/sbin/vzpy-init"
    dst = root / "sbin" / "vzpy-init"
    assert dst.read_bytes() == b"\x7fELF not really\n"
    st = dst.stat()
    assert st.st_mode & 0o7777 == 0o755
    # Identical: left alone.
    initbin.install_init(str(root), fake_init)
    assert dst.stat().st_ino == st.st_ino
    # Different, or with another mode: replaced by a new inode.
    os.chmod(dst, 0o700)
    initbin.install_init(str(root), fake_init)
    assert dst.stat().st_ino != st.st_ino and dst.stat().st_mode & 0o777 == 0o755
    with open(fake_init, "ab") as f:
        f.write(b"v2")
    ino = dst.stat().st_ino
    initbin.install_init(str(root), fake_init)
    assert dst.read_bytes().endswith(b"v2") and dst.stat().st_ino != ino
    assert sorted(os.listdir(root / "sbin")) == ["vzpy-init"]


def test_install_init_stays_inside_the_root(tmp_path, fake_init):
    """Container-owned symlinks resolve inside the container, never on the host."""
    outside = tmp_path / "host"
    outside.mkdir()
    root = tmp_path / "ct"
    (root / "usr" / "sbin").mkdir(parents=True)
    # /sbin -> /usr/sbin (absolute, as a container may have it): must mean ROOT/usr/sbin.
    os.symlink("/usr/sbin", root / "sbin")
    # A planted /sbin/vzpy-init -> host file must be replaced, not written through.
    victim = outside / "victim"
    victim.write_text("host data")
    os.symlink(str(victim), root / "usr" / "sbin" / "vzpy-init")
    assert initbin.install_init(str(root), fake_init) == "/sbin/vzpy-init"
    assert victim.read_text() == "host data"
    dst = root / "usr" / "sbin" / "vzpy-init"
    assert not dst.is_symlink() and dst.read_bytes().startswith(b"\x7fELF")
    # ../ cannot climb out either.
    root2 = tmp_path / "ct2"
    root2.mkdir()
    os.symlink("../../host", root2 / "sbin")  # dangling inside the root: refused
    with pytest.raises(VzError, match="Cannot install /sbin/vzpy-init"):
        initbin.install_init(str(root2), fake_init)
    assert os.listdir(outside) == ["victim"]


def test_install_init_creates_sbin(tmp_path, fake_init):
    root = tmp_path / "ct"
    root.mkdir()
    initbin.install_init(str(root), fake_init)
    assert (root / "sbin" / "vzpy-init").is_file()


def test_container_init_prefers_the_templates_own(tmp_path, fake_init, monkeypatch):
    root = tmp_path / "ct"
    (root / "bin").mkdir(parents=True)
    (root / "sbin").mkdir()
    (root / "bin" / "busybox").write_bytes(b"x")
    os.chmod(root / "bin" / "busybox", 0o755)
    os.symlink("/bin/busybox", root / "sbin" / "init")  # absolute: resolved in the root
    assert initbin.has_own_init(str(root))
    assert initbin.container_init(str(root)) == "/sbin/init"
    assert not (root / "sbin" / "vzpy-init").exists()
    os.chmod(root / "bin" / "busybox", 0o644)  # not executable: not an init
    assert not initbin.has_own_init(str(root))
    monkeypatch.setattr(initbin, "init_binary", lambda lib_dir=initbin.LIB_DIR: fake_init)
    assert initbin.container_init(str(root)) == "/sbin/vzpy-init"
    os.unlink(root / "sbin" / "init")
    os.symlink("/nonexistent", root / "sbin" / "init")
    assert not initbin.has_own_init(str(root))
