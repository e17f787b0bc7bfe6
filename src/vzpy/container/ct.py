"""Container lifecycle: create, mount, start, stop, destroy, status.

Messages and exit codes are vzctl 4.x's (vzctl-reference.md §1.2, §1.3).
Every operation that leaves runtime state behind (mount, cgroups, veth,
routes, proxy ARP) has an idempotent undo in ``cleanup_runtime``, which
``stop`` and ``destroy`` run even when a previous ``start`` was killed
half-way.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
import signal
import subprocess
import time

from .. import log
from ..config import ConfFile, VzConfig, ct_conf_dir, ct_conf_path, names_dir
from ..errors import (
    VZ_CP_CONFIG,
    VZ_FS_BAD_TMPL,
    VZ_FS_MOUNT_ERROR,
    VZ_FS_MOUNTED,
    VZ_FS_NEW_VE_PRVT,
    VZ_FS_NOPRVT,
    VZ_FS_NOT_MOUNTED,
    VZ_FS_PRVT_AREA_EXIST,
    VZ_FS_UMOUNT_ERROR,
    VZ_NO_CONFFILE,
    VZ_OSTEMPLATE_NOTFOUND,
    VZ_START_DISABLED,
    VZ_STOP_ERROR,
    VZ_VE_OSTEMPLATE_NOTSET,
    VZ_VE_PRIVATE_NOTSET,
    VZ_VE_ROOT_NOTSET,
    VZ_VE_TMPL_NOTSET,
    VZ_WAIT_FAILED,
    NotRunningError,
    RunningError,
    VzError,
)
from ..sys import libc
from . import net
from .cgroup import CtCgroup

TEMPLATE_EXTS = (".tar.gz", ".tar.xz", ".tar.zst", ".tar.bz2", ".tgz", ".tar")
STOP_TIMEOUT_DEFAULT = 120


def find_template(template_dir: str, name: str) -> str | None:
    for ext in TEMPLATE_EXTS:
        path = os.path.join(template_dir, "cache", name + ext)
        if os.path.isfile(path):
            return path
    return None


def mountpoints() -> set[str]:
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mp = line.split()[4]
            if "\\" in mp:
                mp = mp.encode().decode("unicode_escape")
            out.add(mp)
    return out


def read_nspid(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return [int(x) for x in line.split()[1:]]
    except OSError:
        pass
    return []


class Container:
    def __init__(self, ctid: int, cfg: VzConfig | None = None) -> None:
        self.ctid = ctid
        self.cfg = cfg or VzConfig.load(ctid)

    # --- identity and state -------------------------------------------------
    @property
    def private(self) -> str | None:
        return self.cfg.ve_private

    @property
    def root(self) -> str | None:
        return self.cfg.ve_root

    @property
    def cgroup(self) -> CtCgroup:
        return CtCgroup(self.cfg.cgroup_prefix, self.ctid, self.cfg.get("FREEZER") or "auto")

    @property
    def conf_exists(self) -> bool:
        return os.path.exists(ct_conf_path(self.ctid))

    def exists(self) -> bool:
        p = self.private
        return self.conf_exists and bool(p) and os.path.isdir(p)

    def is_mounted(self) -> bool:
        r = self.root
        return bool(r) and os.path.realpath(r) in mountpoints()

    def procs(self) -> list[int]:
        return self.cgroup.procs()

    def is_running(self) -> bool:
        return bool(self.procs())

    def init_pid(self) -> int | None:
        """Host pid of the container's pid 1, or None when not running."""
        for pid in self.procs():
            ns = read_nspid(pid)
            if len(ns) >= 2 and ns[-1] == 1:
                return pid
        return None

    def is_suspended(self) -> bool:
        return os.path.exists(self.cfg.default_dumpfile())

    def status_words(self) -> list[str]:
        running = self.is_running()
        words = [
            "exist" if self.exists() else "deleted",
            "mounted" if self.is_mounted() else "unmounted",
            "running" if running else "down",
        ]
        if not running and self.is_suspended():
            words.append("suspended")
        return words

    def status_line(self) -> str:
        return f"CTID {self.ctid} " + " ".join(self.status_words())

    def vzlist_status(self) -> str:
        if self.is_running():
            return "running"
        if self.is_mounted():
            return "mounted"
        if self.is_suspended():
            return "suspended"
        return "stopped"

    def ips(self) -> list[str]:
        return self.cfg.ip_addresses

    # --- mount ---------------------------------------------------------------
    def require_paths(self) -> tuple[str, str]:
        if not self.root:
            raise VzError("VE_ROOT is not set", exit_code=VZ_VE_ROOT_NOTSET)
        if not self.private:
            raise VzError("VE_PRIVATE is not set", exit_code=VZ_VE_PRIVATE_NOTSET)
        return self.root, self.private

    def mount(self, quiet_if_mounted: bool = False) -> None:
        root, private = self.require_paths()
        if self.is_mounted():
            if not quiet_if_mounted:
                log.info("Container is already mounted")
            return
        if not os.path.isdir(private):
            raise VzError(
                f"Container private area {private} does not exist", exit_code=VZ_FS_NOPRVT
            )
        self.run_action_script("premount")
        os.makedirs(root, mode=0o755, exist_ok=True)
        try:
            libc.mount(private, root, None, libc.MS_BIND)
        except OSError as e:
            raise VzError(
                f"Can't mount {private} on {root}: {e.strerror}", exit_code=VZ_FS_MOUNT_ERROR
            ) from e
        self.run_action_script("mount")
        log.info("Container is mounted")

    def umount(self, require_mounted: bool = True) -> None:
        root, _ = self.require_paths()
        if self.is_running():
            raise RunningError("Container is running -- stop it first")
        if not self.is_mounted():
            if require_mounted:
                raise VzError("CT is not mounted", exit_code=VZ_FS_NOT_MOUNTED)
            return
        self.run_action_script("umount")
        try:
            libc.umount2(root, 0)
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise VzError(
                    f"Can't umount {root}: {e.strerror}", exit_code=VZ_FS_UMOUNT_ERROR
                ) from e
            libc.umount2(root, libc.MNT_DETACH)
        self.run_action_script("postumount")
        log.info("Container is unmounted")

    def run_action_script(self, kind: str) -> None:
        """Host-side action scripts: vps.<kind> then <CTID>.<kind> (§2.3)."""
        env = dict(os.environ, VEID=str(self.ctid), VE_CONFFILE=ct_conf_path(self.ctid))
        for name in (f"vps.{kind}", f"{self.ctid}.{kind}"):
            path = os.path.join(ct_conf_dir(), name)
            if os.access(path, os.X_OK):
                rc = subprocess.call([path], env=env)
                if rc != 0:
                    raise VzError(f"Error executing {kind} script {path}", exit_code=79)

    # --- create / destroy ---------------------------------------------------------
    def create(
        self,
        ostemplate: str | None = None,
        sample: str | None = None,
        private: str | None = None,
        root: str | None = None,
        ipadd: list[str] | None = None,
        hostname: str | None = None,
        name: str | None = None,
    ) -> None:
        conf_path = ct_conf_path(self.ctid)
        created_conf = False
        if os.path.exists(conf_path):
            if sample:
                raise VzError(
                    f"Container config file {conf_path} already exists, can't apply --config {sample}",
                    exit_code=VZ_CP_CONFIG,
                )
            ct = ConfFile.load(conf_path)
            if self.private and os.path.exists(self.private):
                raise VzError(
                    f"Private area already exists in {self.private}",
                    exit_code=VZ_FS_PRVT_AREA_EXIST,
                )
        else:
            sample = sample or self.cfg.glob.get("CONFIGFILE")
            ct = ConfFile(path=conf_path)
            if sample:
                spath = os.path.join(ct_conf_dir(), f"ve-{sample}.conf-sample")
                try:
                    ct = ConfFile.load(spath)
                    ct.path = conf_path
                    ct.changed = dict(ct.values)
                    ct.lines = []
                except OSError:
                    raise VzError(
                        f"Sample config {spath} not found", exit_code=VZ_CP_CONFIG
                    ) from None
                ct.set("ORIGIN_SAMPLE", sample)
        self.cfg.ct = ct
        # Saved literally, $VEID unexpanded, like vzctl does.
        ct.set("VE_PRIVATE", private or self.cfg.raw("VE_PRIVATE"))
        ct.set("VE_ROOT", root or self.cfg.raw("VE_ROOT"))
        tmpl_dir = self.cfg.get("TEMPLATE")
        if not tmpl_dir:
            raise VzError("TEMPLATE is not set", exit_code=VZ_VE_TMPL_NOTSET)
        root_path, priv_path = self.require_paths()
        if os.path.exists(priv_path) and os.listdir(priv_path):
            raise VzError(
                f"Private area already exists in {priv_path}", exit_code=VZ_FS_PRVT_AREA_EXIST
            )
        ostemplate = ostemplate or self.cfg.get("OSTEMPLATE") or self.cfg.get("DEF_OSTEMPLATE")
        if not ostemplate:
            raise VzError("OS template is not specified", exit_code=VZ_VE_OSTEMPLATE_NOTSET)
        tarball = find_template(tmpl_dir, ostemplate)
        if tarball is None:
            raise VzError(
                f"Cached OS template {os.path.join(tmpl_dir, 'cache', ostemplate)}.tar.gz not found",
                exit_code=VZ_OSTEMPLATE_NOTFOUND,
            )
        from .params import apply_create_params  # validates IPs/hostname before we unpack

        apply_create_params(self, ct, ipadd or [], hostname, name)
        log.info(f"Creating container private area ({ostemplate})")
        tmp = priv_path + ".tmp"
        try:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
            os.makedirs(tmp, mode=0o755)
            r = subprocess.run(
                ["tar", "--numeric-owner", "-xpf", tarball, "-C", tmp],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                raise VzError(
                    f"Failed to unpack OS template {tarball}: {r.stderr.strip().splitlines()[-1:] or ''}",
                    exit_code=VZ_FS_BAD_TMPL,
                )
            if os.path.exists(priv_path):
                os.rmdir(priv_path)
            os.makedirs(os.path.dirname(priv_path), exist_ok=True)
            os.rename(tmp, priv_path)
            log.info("Performing postcreate actions")
            ct.set("OSTEMPLATE", os.path.basename(ostemplate))
            os.makedirs(ct_conf_dir(), exist_ok=True)
            created_conf = not os.path.exists(conf_path)
            ct.save(conf_path)
            if name:
                set_name_link(self.ctid, name)
            os.makedirs(root_path, mode=0o755, exist_ok=True)
        except BaseException as e:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(priv_path, ignore_errors=True)
            if created_conf:
                try:
                    os.unlink(conf_path)
                except OSError:
                    pass
            log.error("Creation of container private area failed")
            if isinstance(e, VzError):
                raise
            if isinstance(e, OSError):
                raise VzError(
                    f"Unable to create private area: {e}", exit_code=VZ_FS_NEW_VE_PRVT
                ) from e
            raise
        log.info("Container private area was created")

    def destroy(self) -> None:
        if not self.conf_exists:
            raise VzError("Container config file does not exist", exit_code=VZ_NO_CONFFILE)
        if self.is_running():
            raise RunningError("Container is currently running. Stop it first.")
        if self.is_mounted():
            raise VzError("Container is currently mounted (umount first)", exit_code=VZ_FS_MOUNTED)
        self.cleanup_runtime()
        root, private = self.require_paths()
        log.info(f"Destroying container private area: {private}")
        if os.path.lexists(private):
            if os.path.islink(private):
                target = os.path.realpath(private)
                shutil.rmtree(target, ignore_errors=True)
                os.unlink(private)
            else:
                shutil.rmtree(private)
        shutil.rmtree(private + ".tmp", ignore_errors=True)
        dump = self.cfg.default_dumpfile()
        if os.path.lexists(dump):
            if os.path.isdir(dump) and not os.path.islink(dump):
                shutil.rmtree(dump, ignore_errors=True)
            else:
                os.unlink(dump)
        name = self.cfg.get("NAME")
        conf = ct_conf_path(self.ctid)
        for suffix in (".conf", ".mount", ".umount", ".premount", ".postumount", ".start", ".stop"):
            p = os.path.join(ct_conf_dir(), f"{self.ctid}{suffix}")
            if os.path.exists(p):
                os.replace(p, p + ".destroyed")
        try:
            os.rmdir(root)
        except OSError:
            pass
        if name:
            link = os.path.join(names_dir(), name)
            if os.path.islink(link) and os.path.basename(os.readlink(link)) == os.path.basename(
                conf
            ):
                os.unlink(link)
        log.info("Container private area was destroyed")

    # --- start / stop -------------------------------------------------------------
    def init_argv(self) -> list[str]:
        """The template's /sbin/init, or vzpy's own minimal init installed into the tree."""
        from ..initbin import container_init

        return [container_init(self.root or "")]

    def prepare_files(self) -> None:
        """Hostname and resolver files inside the container, like vzctl's set scripts."""
        root = self.root or ""
        hostname = self.cfg.hostname
        etc = os.path.join(root, "etc")
        if not os.path.isdir(etc):
            return
        if hostname:
            _write_file(os.path.join(etc, "hostname"), hostname + "\n")
            _update_hosts(os.path.join(etc, "hosts"), hostname, self.ips())
        ns = self.cfg.get_list("NAMESERVER")
        if ns == ["inherit"]:
            ns = _host_nameservers()
        search = self.cfg.get_list("SEARCHDOMAIN")
        if ns or search:
            lines = []
            if search:
                lines.append("search " + " ".join(search))
            lines += [f"nameserver {n}" for n in ns]
            _write_file(os.path.join(etc, "resolv.conf"), "\n".join(lines) + "\n")

    def start(self, wait: bool = False, force: bool = False) -> None:
        from .spawn import SpawnSpec, spawn

        if self.cfg.get_bool("DISABLED") and not force:
            raise VzError("Container start disabled", exit_code=VZ_START_DISABLED)
        root, private = self.require_paths()
        if not os.path.isdir(private):
            raise VzError(
                f"Container private area {private} does not exist", exit_code=VZ_FS_NOPRVT
            )
        if self.is_running():
            raise RunningError("Container is already running")
        dump = self.cfg.default_dumpfile()
        if os.path.exists(dump):
            log.info(f"Dump file {dump} exists, trying to restore from it")
            from ..restore.driver import restore_command

            try:
                restore_command(self, None, dump)
                return
            except VzError as e:
                log.error(f"Restore from {dump} failed: {e}; starting normally")
        log.info("Starting container...")
        was_mounted = self.is_mounted()
        self.cleanup_runtime(keep_mount=True)
        self.mount(quiet_if_mounted=True)
        cg = self.cgroup
        try:
            cg.create()
            from .params import apply_cgroup_limits

            apply_cgroup_limits(self, cg, verbose=True)
            self.prepare_files()
            argv = self.init_argv()
            ips = self.ips()

            def network(pid: int) -> None:
                if ips:
                    log.info("Adding IP address(es): " + " ".join(ips))
                net.setup_host_side(self.ctid, pid, ips, self.cfg.get("NEIGHBOUR_DEVS"))
                net.setup_ct_side(pid, self.ctid, ips)

            spec = SpawnSpec(
                ctid=self.ctid,
                root=root,
                hostname=self.cfg.hostname,
                init_argv=argv,
                capability=self.cfg.get("CAPABILITY"),
                join_cgroup=cg.join,
            )
            spawn(spec, network)
        except BaseException as e:
            self.cleanup_runtime(keep_mount=was_mounted)
            log.error('Container start failed (try to check kernel messages, e.g. "dmesg | tail")')
            if isinstance(e, VzError):
                raise
            if isinstance(e, OSError):
                raise VzError(f"Unable to start container: {e}") from e
            raise
        if os.path.exists(dump):
            remove_path(dump)
        if wait:
            log.info("Container start in progress, waiting ...")
            if not self._wait_started(timeout=self.cfg.get_int("START_TIMEOUT", 60)):
                raise VzError("Container start failed: timed out waiting", exit_code=VZ_WAIT_FAILED)
            log.info("Container started successfully")
        else:
            log.info("Container start in progress...")

    def _wait_started(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.init_pid()
            if pid is None:
                return False
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] in "SR":
                        return True
            except OSError:
                return False
            time.sleep(0.05)
        return False

    def stop(self, fast: bool = False, skip_umount: bool = False) -> None:
        if not self.is_running():
            self.cleanup_runtime(keep_mount=True)
            log.info("Unable to stop: container is not running")
            return
        cg = self.cgroup
        if cg.is_frozen():
            # A frozen container cannot run its shutdown; it gets killed.
            fast = True
        log.info("Stopping container ...")
        if not fast:
            self._graceful_stop()
            timeout = self.cfg.get_int("STOP_TIMEOUT", STOP_TIMEOUT_DEFAULT)
            deadline = time.monotonic() + timeout
            while self.is_running() and time.monotonic() < deadline:
                time.sleep(0.05)
        if self.is_running():
            log.info("Killing container ...")
            try:
                cg.kill_all()
            except TimeoutError as e:
                raise VzError(f"Unable to stop container: {e}", exit_code=VZ_STOP_ERROR) from e
        log.info("Container was stopped")
        self.cleanup_runtime(keep_mount=True)
        if not skip_umount and self.is_mounted():
            self.umount()

    def _graceful_stop(self) -> None:
        pid = self.init_pid()
        if pid is None:
            return
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            exe = ""
        if exe.endswith("vzpy-init"):
            sig = signal.SIGTERM
        else:
            # sysvinit/systemd/busybox all treat SIGPWR/SIGRTMIN+4 as power-off
            # only in some setups; running halt inside is what vzctl does.
            from .enter import exec_in

            try:
                exec_in(self, ["/bin/sh", "-c", "exec halt || exec poweroff"], wait=False)
                return
            except VzError:
                sig = signal.SIGTERM
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def cleanup_runtime(self, keep_mount: bool = True) -> None:
        """Remove what a (possibly killed) start left behind; safe to repeat."""
        cg = self.cgroup
        if cg.exists():
            if cg.procs():
                cg.kill_all()
            cg.destroy()
        net.teardown_host_side(self.ctid, self.ips(), self.cfg.get("NEIGHBOUR_DEVS"))
        if not keep_mount and self.is_mounted():
            try:
                self.umount(require_mounted=False)
            except VzError:
                pass


def set_name_link(ctid: int, name: str) -> None:
    os.makedirs(names_dir(), exist_ok=True)
    link = os.path.join(names_dir(), name)
    if os.path.lexists(link):
        os.unlink(link)
    os.symlink(ct_conf_path(ctid), link)


def remove_name_link(ctid: int) -> None:
    """Drop every names/ link that points at this container's config."""
    d = names_dir()
    if not os.path.isdir(d):
        return
    for name in os.listdir(d):
        link = os.path.join(d, name)
        if os.path.islink(link) and os.path.basename(os.readlink(link)) == f"{ctid}.conf":
            os.unlink(link)


def name_owner(name: str) -> int | None:
    link = os.path.join(names_dir(), name)
    if not os.path.islink(link):
        return None
    base = os.path.basename(os.readlink(link))
    if base.endswith(".conf") and base[:-5].isdigit() and os.path.exists(link):
        return int(base[:-5])
    return None


def _write_file(path: str, text: str) -> None:
    try:
        if os.path.islink(path):
            os.unlink(path)
        with open(path, "w") as f:
            f.write(text)
    except OSError as e:
        log.warning(f"Warning: unable to write {path}: {e.strerror}")


def _update_hosts(path: str, hostname: str, ips: list[str]) -> None:
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines() if "# vzpy" not in ln]
    except OSError:
        lines = ["127.0.0.1 localhost"]
    short = hostname.split(".")[0]
    names = hostname if short == hostname else f"{hostname} {short}"
    addr = ips[0].split("/")[0] if ips else "127.0.1.1"
    lines.append(f"{addr} {names} # vzpy")
    _write_file(path, "\n".join(lines) + "\n")


def _host_nameservers() -> list[str]:
    out = []
    try:
        with open("/etc/resolv.conf") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    out.append(parts[1])
    except OSError:
        pass
    return out


def remove_path(path: str) -> None:
    """Remove a file or a directory tree (a dump image is either)."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.unlink(path)
        except OSError:
            pass


def all_ctids() -> list[int]:
    out = []
    for path in glob.glob(os.path.join(ct_conf_dir(), "*.conf")):
        base = os.path.basename(path)[:-5]
        if base.isdigit():
            out.append(int(base))
    return sorted(out)


def require_running(ct: Container, msg: str = "Container is not running") -> int:
    pid = ct.init_pid()
    if pid is None:
        raise NotRunningError(msg)
    return pid
