"""vzmigrate: the sequence and its rollback chain (vzctl-reference.md §4.4, §4.5).

Offline::

    checks -> prepare the destination (config, action scripts, directories)
    -> rsync #1 (container running) -> stop (or umount) -> rsync #2
    -> start (or mount) on the destination            == POINT OF NO RETURN ==
    -> destroy the source (or rename its config to CTID.conf.migrated)

Online (``--online``)::

    checks -> prepare the destination -> rsync #1 (container running)
    -> chkpnt --suspend -> chkpnt --dump (the source withdraws its routes and
    proxy ARP) -> rsync #2 -> ship the image -> restore --undump
    --skip_arpdetect there -> restore --resume there (the destination routes,
    answers ARP and announces the IP)                 == POINT OF NO RETURN ==
    -> chkpnt --kill, umount, remove the images -> destroy (or rename) the source

The rollback chain.  Every step that changes something pushes its undo on
``Rollback`` *before* it runs (an undo of something that did not happen is a
no-op), so a failure, an exception or a signal at any moment before the point
of no return runs the undos newest first: kill what was undumped on the
destination, remove the image there and here, resume (or restart, or
remount) the source exactly as it was, then remove the destination's root,
private area (kept with ``--keep-dst``), dump, action scripts and config.
The source comes back before the destination is tidied, so its downtime is
not stretched by a slow or dead destination.

Once the destination has resumed (online) or started (offline) the chain is
committed and dropped: from then on nothing touches the destination's running
container; a failure while cleaning up the source is reported and the exit
code is still 0, because the container *was* migrated and runs there.

One case is not rolled back: if the connection is lost while the destination
is being resumed, we cannot know whether the container runs there; if the
destination cannot be reached to kill it, the source is left frozen (two
copies answering for one IP would be worse) and the admin is told what to do.

Local operations call the library in this process, the same code ``vzctl
--skiplock`` runs (vzmigrate holds the container lock itself, as 4.x did);
remote ones run ``vzctl`` over SSH (migrate.transport).
"""

from __future__ import annotations

import os
import posixpath
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import log
from ..config import ConfFile, VzConfig, ct_conf_dir, ct_conf_path, parse_ctid
from ..container.ct import Container
from ..container.lock import CtLock, read_lock_pid
from ..errors import BadValueError, ConfigError, LockedError, MigrateError, VzError
from . import checks, rsync
from .checks import (
    MIG_CANCELLED,
    MIG_CONF_APPLY,
    MIG_CONNECT,
    MIG_COPY,
    MIG_CPU,
    MIG_CT_EXISTS,
    MIG_CT_STOPPED,
    MIG_DEST_START,
    MIG_IP_INUSE,
    MIG_LOCKED,
    MIG_NO_CT,
    MIG_NO_VZ,
    MIG_REMOTE_PATHS,
    MIG_SOURCE_STOP,
)
from .stream import AgentError, AgentLink, StreamImageWriter
from .target import resolve
from .transport import NotAllowed, Remote, RemoteCommandError, TransportError
from .transport import check_path as check_remote_path

ACTION_SCRIPTS = ("start", "stop", "mount", "umount", "premount", "postumount")
TMP_DUMP = "tmp-dump.{ctid}"
ROLLBACK_CONNECT_TIMEOUT = 5.0
REMOTE_LOCK_RETRY = 60.0  # a remote vzctl still holding the CT lock (cancelled undump)
AGENT_STEP_TIMEOUT = 3600.0  # undump of a very big container
AGENT_LOCK_WAIT = 180.0  # a new agent waits this long for the old one to clean up


@dataclass
class MigrateOptions:
    dest: str
    ct: str
    online: bool = False
    remove_area: bool = True
    keep_dst: bool = False
    ssh: str | None = None
    rsync: list[str] = field(default_factory=list)
    check_only: bool = False
    nodeps: set[str] = field(default_factory=set)
    times: bool = False
    verbose: int = 0
    iterative: bool = True  # --noiter turns the memory pre-copy off (OpenVZ 7's name)
    kick: bool = True  # --nokick: no RFC 6069 nudge of TCP peers after the resume


class Cancelled(MigrateError):
    exit_code = MIG_CANCELLED
    clean = False  # raised where the SSH connection is in a known state (reusable)


class RollbackAbort(Exception):
    """Stop the rollback chain here: going on would be unsafe."""


class Rollback:
    """The undo chain: undos pushed as the work is done, run newest first."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], None]]] = []

    def push(self, name: str, fn: Callable[[], None]) -> None:
        self.steps.append((name, fn))

    def commit(self) -> None:
        self.steps.clear()

    def run(self, say: Callable[..., None], error: Callable[[str], None]) -> bool:
        ok = True
        while self.steps:
            name, fn = self.steps.pop()
            say(f"Rollback: {name}", level=1)
            try:
                try:
                    fn()
                except TransportError:
                    fn()  # once more, on a fresh connection (the step reconnects)
            except RollbackAbort as e:
                error(str(e))
                self.steps.clear()
                return False
            except Exception as e:  # noqa: BLE001 - one failed undo must not stop the others
                error(f"Rollback step {name} failed: {e}")
                ok = False
        return ok


class Migration:
    def __init__(self, opts: MigrateOptions) -> None:
        self.o = opts
        self.rollback = Rollback()
        self.stages: list[tuple[str, float]] = []
        self.frozen_s: float | None = None
        self.cancellable = True
        self.pending_signal: int | None = None
        self.remote: Remote | None = None
        self.info: dict = {}
        self.resume_uncertain = False
        self.mux_dir: str | None = None
        self.link: AgentLink | None = None
        self.prepared: rsync.Prepared | None = None  # the second rsync's remote half, started early
        self.tracker = None  # checkpoint.precopy.DirtyTracker while pre-copying
        self.precopy = None
        self.image_bytes = 0

    # --- output ----------------------------------------------------------------------------
    def say(self, msg: str, level: int = 0) -> None:
        if level <= self.o.verbose:
            print(msg, flush=True)

    @staticmethod
    def error(msg: str) -> None:
        print(f"Error: {msg}", file=sys.stderr, flush=True)

    def stage(self, name: str, seconds: float) -> None:
        self.stages.append((name, seconds))
        self.say(f"  {name}: {seconds:.3f} s", level=1)

    # --- entry point -------------------------------------------------------------------------
    def run(self) -> int:
        o = self.o
        try:
            self.ctid = parse_ctid(o.ct)
        except BadValueError:
            self.error(f"CT #{o.ct} doesn't exist")
            return MIG_NO_CT
        try:
            self.cfg = VzConfig.load(self.ctid)
        except ConfigError as e:
            self.error(f"Can't read global config file: {e}")
            return MIG_NO_CT
        logging_on = (self.cfg.get("LOGGING") or "yes") == "yes"
        log.configure(
            verbose=max(0, o.verbose - 1),
            quiet=o.verbose == 0,
            logfile=(self.cfg.get("LOGFILE") or "/var/log/vzctl.log") if logging_on else None,
            ctid=self.ctid,
        )
        self.ct = Container(self.ctid, self.cfg)
        lock = CtLock(self.cfg.lockdir, self.ctid, "migrating")
        try:
            lock.acquire()
        except LockedError:
            self.error(f"CT {self.ctid} already locked by PID {read_lock_pid(lock.path)}")
            return MIG_LOCKED
        except VzError as e:
            self.error(str(e))
            return MIG_LOCKED
        self.say(f"Locked CT {self.ctid}", level=1)
        old = self._install_signals()
        try:
            return self._run_locked()
        finally:
            self._restore_signals(old)
            if self.tracker is not None:
                self.tracker.stop()  # idempotent: normally stopped long before
            if self.link is not None:
                self.link.close(bye=False)
            if self.prepared is not None:
                self.prepared.kill()
            if self.remote is not None:
                self.remote.close()
            if self.mux_dir is not None:
                try:
                    self.target.close_master()
                except (OSError, subprocess.SubprocessError) as e:
                    self.say(f"Warning: closing the ssh master connection: {e}", level=1)
                shutil.rmtree(self.mux_dir, ignore_errors=True)
            lock.release()

    # --- signals: cancel (and roll back) until the point of no return -----------------------
    def _install_signals(self) -> dict:
        old = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            old[sig] = signal.signal(sig, self._on_signal)
        return old

    @staticmethod
    def _restore_signals(old: dict) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    def _on_signal(self, signum: int, _frame) -> None:
        if self.cancellable:
            self.cancellable = False
            e = Cancelled(f"Cancelled by signal {signal.Signals(signum).name}")
            link = self.link
            if link is not None and not link.closed:
                # Never inside paramiko in the middle of a frame: the agent's channel
                # would be out of step.  The link raises it once the frame is out.
                if link.in_io:
                    e.clean = True
                    link.pending_cancel = e
                    return
                # Elsewhere nothing is using the connection (once the agent runs,
                # no SFTP or command is in flight): the rollback may reuse it.
                e.clean = True
            raise e
        self.pending_signal = signum  # rolling back or past the point: finish first

    # --- the whole migration -----------------------------------------------------------------
    def _run_locked(self) -> int:
        o = self.o
        ct = self.ct
        if not ct.exists():
            self.error(f"CT #{self.ctid} doesn't exist")
            return MIG_NO_CT
        self.running = ct.is_running()
        self.mounted = ct.is_mounted()
        self.suspended = not self.running and ct.is_suspended()
        if o.online and not self.running:
            self.error("Can't perform live migration of a stopped container")
            return MIG_CT_STOPPED
        word = "Checking" if o.check_only else "Starting"
        kind = "live migration" if o.online else "migration"
        self.say(f"{word} {kind} of CT {self.ctid} to {o.dest}")
        t_start = time.monotonic()
        try:
            self._checks()
            if o.check_only:
                return 0
            self._prepare_remote()
            if o.online:
                self._online()
            else:
                self._offline()
        except BaseException as e:
            self.cancellable = False
            if isinstance(e, MigrateError):
                if not getattr(e, "reported", False):
                    self.error(e.message)
                if isinstance(e, RemoteCommandError):
                    for line in e.stderr.strip().splitlines()[-5:]:
                        print(f"    {line}", file=sys.stderr, flush=True)
            elif isinstance(e, KeyboardInterrupt):
                self.error("Cancelled")
            else:
                self.error(f"{type(e).__name__}: {e}")
            if not isinstance(e, MigrateError) or (isinstance(e, Cancelled) and not e.clean):
                # Interrupted in the middle of a remote operation (an SFTP write in
                # flight...): the rollback must not reuse that connection.
                if self.remote is not None:
                    self.remote.broken = True
            if self.rollback.steps:
                self.say("Rolling back", level=0)
                self.rollback.run(self.say, self.error)
            if isinstance(e, MigrateError):
                return e.exit_code
            if isinstance(e, KeyboardInterrupt):
                return MIG_CANCELLED
            raise
        self._cleanup_source()
        total = time.monotonic() - t_start
        if o.times or o.verbose:
            self._print_times(total)
        if self.pending_signal is not None:
            self.say(
                f"Note: signal {self.pending_signal} arrived after the point of no return; ignored",
                level=0,
            )
        return 0

    # --- checks (§4.4 steps 6-13) ------------------------------------------------------------
    def _checks(self) -> None:
        o = self.o
        target = resolve(o.dest, o.ssh)
        self.target = target
        self.mux_dir = tempfile.mkdtemp(prefix="vzmigrate-")
        target.control_path = os.path.join(self.mux_dir, "ssh-%C")
        self.remote = Remote(target, verbose=o.verbose)
        try:
            self.remote.connect()
        except MigrateError as e:
            self.error(e.message)
            if "public key" in e.message:
                self.error("Please put your public key to destination node")
            e.reported = True
            e.exit_code = MIG_CONNECT
            raise
        self.say(f"Connected to {target.host_key_name} as {target.user}", level=1)
        r = self.remote.run(["vzmigrate", "--node-info", str(self.ctid)], check=False, echo=False)
        if r.rc == 127 or (r.rc != 0 and "not found" in r.stderr):
            raise MigrateError(
                "vzpy is not installed on the destination node (no vzmigrate on its PATH); "
                "Can't continue migration",
                exit_code=MIG_NO_VZ,
            )
        import json

        try:
            info = json.loads(r.stdout)
        except ValueError:
            tail = (r.stderr.strip().splitlines() or [r.stdout.strip()])[-1]
            raise MigrateError(
                f"vzpy on the destination node does not answer (exit {r.rc}: {tail}); Can't continue migration",
                exit_code=MIG_NO_VZ,
            ) from None
        self.info = info
        missing = [t for t, p in (info.get("tools") or {}).items() if not p]
        if missing:
            raise MigrateError(
                f"{', '.join(missing)} not found on the destination node's PATH; Can't continue migration",
                exit_code=MIG_NO_VZ,
            )
        self.say(f"Destination runs vzpy {info.get('vzpy')} on {info.get('kernel')}", level=1)
        if info.get("ct_conf_exists"):
            raise MigrateError(
                f"CT #{self.ctid} already exists on destination node", exit_code=MIG_CT_EXISTS
            )
        if o.online or self.suspended:
            self._check_cpu(info)
        self._check_paths(info)
        self._check_ips()

    def _check_cpu(self, info: dict) -> None:
        src = checks.CpuInfo.local()
        dst = checks.CpuInfo(int(info.get("xcr0") or 0), set(info.get("cpu_flags") or []))
        missing = checks.cpu_missing(src, dst)
        self.say(f"CPU check: source XCR0 {src.xcr0:#x}, destination XCR0 {dst.xcr0:#x}", level=1)
        if not missing:
            return
        self.error("CPU capabilities check failed!")
        self.error("The destination CPU lacks: " + ", ".join(missing))
        if "cpu" in self.o.nodeps or "all" in self.o.nodeps:
            self.say("Ignoring the above error (migration can fail)...")
            return
        raise MigrateError("Can't continue migration (use -f cpu to override)", exit_code=MIG_CPU)

    def _check_paths(self, info: dict) -> None:
        if info.get("error"):
            raise MigrateError(
                f"Can't read remote vz.conf: {info['error']}", exit_code=MIG_REMOTE_PATHS
            )
        for key in ("ve_private", "ve_root", "dumpdir", "conf_dir"):
            p = info.get(key) or ""
            try:
                check_remote_path(p)
            except NotAllowed:
                raise MigrateError(
                    f"Failed to get remote {key.upper()} from {info.get('vz_conf')}: got {p!r} "
                    "(an absolute, normalised path of letters, digits and ._+:@%,=- is needed)",
                    exit_code=MIG_REMOTE_PATHS,
                ) from None
        self.r_private = info["ve_private"]
        self.r_root = info["ve_root"]
        self.r_dumpdir = info["dumpdir"]
        self.r_confdir = info["conf_dir"]
        if self.r_private != self.ct.private:
            self.say(f"Remote VE_PRIVATE path differs from local {self.ctid}.conf", level=1)
            self.say(f"Using {self.r_private} for syncing", level=1)

    def _check_ips(self) -> None:
        import json

        ips = self.ct.ips()
        if not ips:
            return
        r = self.remote.run(["vzlist", "-a", "-j", "-o", "ctid,ip,status"], check=False, echo=False)
        try:
            cts = json.loads(r.stdout or "[]")
        except ValueError:
            raise MigrateError(
                f"Can't list containers on the destination node (vzlist exit {r.rc})",
                exit_code=MIG_NO_VZ,
            ) from None
        clash = checks.ip_conflicts(self.ctid, ips, cts)
        if clash:
            detail = ", ".join(f"{ip} (CT {owner})" for ip, owner in clash)
            raise MigrateError(
                f"IP address(es) already in use on destination node: {detail}",
                exit_code=MIG_IP_INUSE,
            )

    # --- preparing the destination (§4.4 steps 15-16) ----------------------------------------
    def _prepare_remote(self) -> None:
        r = self.remote
        rb = self.rollback
        self.say("Preparing remote node")
        conf = ConfFile.load(ct_conf_path(self.ctid))
        conf.set("VE_PRIVATE", self.info.get("ve_private_raw") or self.r_private)
        conf.set("VE_ROOT", self.info.get("ve_root_raw") or self.r_root)
        r_conf = posixpath.join(self.r_confdir, f"{self.ctid}.conf")
        created_confdir = r.makedirs(self.r_confdir)
        rb.push("undo_conf", lambda: self._undo_conf(r_conf, created_confdir))
        r.write_file(r_conf, conf.render().encode(errors="surrogateescape"), 0o644)
        name = self.cfg.get("NAME")
        if name:
            self._remote_name_link(name, r_conf)
        scripts = []
        for suffix in ACTION_SCRIPTS:
            local = os.path.join(ct_conf_dir(), f"{self.ctid}.{suffix}")
            if os.path.isfile(local):
                scripts.append(posixpath.join(self.r_confdir, f"{self.ctid}.{suffix}"))
        if scripts:
            rb.push("undo_act_scripts", lambda: [self._remote().remove(p) for p in scripts])
            for rp in scripts:
                local = os.path.join(ct_conf_dir(), posixpath.basename(rp))
                with open(local, "rb") as f:
                    r.write_file(rp, f.read(), os.stat(local).st_mode & 0o7777)
        if self.suspended:
            self.r_dumpfile = posixpath.join(self.r_dumpdir, f"Dump.{self.ctid}")
            r.own(self.r_dumpfile)
            r.own(self.r_dumpfile + ".part")
            r.makedirs(self.r_dumpdir, 0o700)
            rb.push("undo_dump_file", lambda: self._remove_remote_tree(self.r_dumpfile))
            self.say("Copying dump file", level=1)
            r.put_tree(self.cfg.default_dumpfile(), self.r_dumpfile)
        # Directories: remember which ones we make, to remove exactly those.
        r.own(self.r_private)
        r.own(self.r_root)
        if self.info.get("private_nonempty"):
            self.say(
                f"Using the existing private area {self.r_private} on the destination", level=1
            )
        made_private = r.makedirs(self.r_private)
        if not self.o.keep_dst:
            rb.push(
                "undo_private", lambda: self._undo_dirs(self.r_private, made_private, tree=True)
            )
        else:
            rb.push("undo_private (--keep-dst: kept)", lambda: None)
        made_root = r.makedirs(self.r_root)
        rb.push("undo_root", lambda: self._undo_dirs(self.r_root, made_root, tree=False))

    def _remote_name_link(self, name: str, r_conf: str) -> None:
        """names/NAME -> CTID.conf on the destination, as `vzctl create --name` makes it."""
        r = self.remote
        names = posixpath.join(posixpath.dirname(self.r_confdir), "names")
        link = posixpath.join(names, name)
        try:
            target = r.sftp.readlink(link)
        except OSError:
            target = None
        if target and target != r_conf and r.exists(target):
            raise MigrateError(
                f"Conflict: name {name} already used on the destination node by "
                f"{posixpath.basename(target)}",
                exit_code=MIG_CONF_APPLY,
            )
        r.makedirs(names)
        r.remove(link)
        r.symlink(r_conf, link)

    # --- offline -------------------------------------------------------------------------------
    def _offline(self) -> None:
        ct = self.ct
        rb = self.rollback
        self._sync(first=True)
        t_down = time.monotonic()
        if self.running:
            self.say("Stopping container")
            rb.push("undo_stop", self._undo_stop)
            t0 = time.monotonic()
            try:
                ct.stop()
            except VzError as e:
                raise MigrateError(
                    f"Failed to stop container: {e}", exit_code=MIG_SOURCE_STOP
                ) from None
            self.stage("Stop", time.monotonic() - t0)
        elif self.mounted:
            self.say("Unmounting container")
            rb.push("undo_umount", self._undo_stop)
            try:
                ct.umount()
            except VzError as e:
                raise MigrateError(
                    f"Failed to umount container: {e}", exit_code=MIG_SOURCE_STOP
                ) from None
        if self.running or self.mounted:
            self._sync(first=False)
        if self.running:
            self.say("Starting container")
            self.cancellable = False  # see _online: signals wait from here on
            rb.push("undo_start (destination)", self._undo_remote_start)
            t0 = time.monotonic()
            self._remote_vzctl(
                ["start", str(self.ctid)], "Failed to start container", MIG_DEST_START
            )
            self.stage("Start on destination", time.monotonic() - t0)
            self.frozen_s = time.monotonic() - t_down
        elif self.mounted:
            self.say("Mounting container")
            self.cancellable = False
            rb.push("undo_mount (destination)", self._undo_remote_start)
            self._remote_vzctl(
                ["mount", str(self.ctid)], "Failed to mount container", MIG_DEST_START
            )
        # ============================ POINT OF NO RETURN ============================
        # The container runs (or is mounted, or is registered) on the destination.
        # From here on nothing may touch it: the chain is dropped, and a failure
        # cleaning up the source is reported but does not undo the migration.
        self._point_of_no_return()

    # --- online --------------------------------------------------------------------------------
    def _online(self) -> None:
        ct = self.ct
        rb = self.rollback
        r = self.remote
        from ..checkpoint import driver as cpt
        from ..container import net

        self.r_dump = posixpath.join(self.r_dumpdir, TMP_DUMP.format(ctid=self.ctid))
        for suffix in ("", ".part", ".pre"):
            r.own(self.r_dump + suffix)
        # The agent first: its ssh session and Python start-up are paid now, not
        # while the container is frozen.  It receives the images and restores.
        rb.push("undo_copy_dump", self._undo_images)
        t0 = time.monotonic()
        say2 = (lambda m: self.say(m, level=2)) if self.o.verbose >= 2 else None
        try:
            self.link = AgentLink.open(r, self.ctid, say=say2)
        except AgentError as e:
            raise MigrateError(
                f"The agent on the destination refused: {e.message}", exit_code=MIG_COPY
            ) from None
        self.say(f"  agent started on the destination in {time.monotonic() - t0:.3f} s", level=1)
        self._sync(first=True)
        # The second pass's ssh session now, while the container runs (see rsync.py).
        try:
            self.prepared = rsync.prepare_sync(
                self.target, self.ct.private or "", self.r_private, first_pass=False,
                extra=self.o.rsync, verbose=self.o.verbose, workdir=self.mux_dir,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as e:
            self.say(f"  (the second rsync will start its own session: {e})", level=1)

        from ..images import schema
        from ..resources import files as res_files

        res_files.load_kinds()  # imports: not while the container is frozen
        schema.load_schemas()
        parent = None
        if self.o.iterative:
            parent = self._precopy()
        self.say("Live migrating container...")
        t_freeze = time.monotonic()
        rb.push("undo_suspend", self._undo_suspend)
        try:
            cpt.chkpnt_command(ct, "suspend", None)
        except Cancelled:
            raise
        except VzError as e:
            raise MigrateError(
                f"Failed to suspend container: {e}", exit_code=MIG_SOURCE_STOP
            ) from None
        t_frozen = time.monotonic()
        self.stage("Suspend", t_frozen - t_freeze)
        # Frozen: the file system is quiet, so the second rsync runs alongside the dump.
        self.say("Syncing private")
        prepared, self.prepared = self.prepared, None
        sync = self._start_sync(first=False, prepared=prepared)
        try:
            self.say("Dumping container (streaming the image)")
            t0 = time.monotonic()
            sent0 = self.link.sent
            final = StreamImageWriter(self.link, "final", self.ctid, parent=parent)
            try:
                res = cpt.dump_container(
                    ct, self.r_dump, leave="frozen", writer=final,
                    parent_pages=self.precopy.parent_pages if parent is not None else None,
                )  # fmt: skip
            except Cancelled:
                raise
            except AgentError as e:
                raise MigrateError(
                    f"Failed to copy dump file: {e.message}", exit_code=MIG_COPY
                ) from None
            except TransportError as e:
                raise MigrateError(
                    f"Failed to copy dump file: {e.message}", exit_code=MIG_COPY
                ) from None
            except VzError as e:
                raise MigrateError(
                    f"Failed to dump container: {e}", exit_code=MIG_SOURCE_STOP
                ) from None
            except OSError as e:
                raise MigrateError(
                    f"Failed to dump container: {e}", exit_code=MIG_SOURCE_STOP
                ) from None
            net.withdraw(ct.ctid, ct.ips(), self.cfg.get("NEIGHBOUR_DEVS"))
            self.stage("Dump + Copy dump file", time.monotonic() - t0)
            self.image_bytes = self.link.sent - sent0
            self.say(
                f"  image: {self.image_bytes / 1e6:.1f} MB sent, {res.pages_bytes / 1e6:.1f} MB of "
                f"memory in it", level=1,
            )  # fmt: skip
            if self.tracker is not None:
                self.tracker.stop()  # dumped: nothing left to track
            t0 = time.monotonic()
            dt_sync = sync.wait()
        except BaseException:
            sync.kill()
            raise
        self.stage("Second rsync", dt_sync)
        self.stage("Waiting for the second rsync", time.monotonic() - t0)

        t0 = time.monotonic()
        self.say("Undumping container")
        rb.push("undo_undump", self._undo_undump)
        self._agent_step("undump", "Failed to undump container", image="final")
        self.stage("Undump", time.monotonic() - t0)
        self.say("Resuming container")
        # A signal from here on waits: once the destination may be running the
        # container, only a failure of this very step may still roll back.
        self.cancellable = False
        t0 = time.monotonic()
        try:
            info = self._agent_step("resume", "Failed to resume container", kick=self.o.kick)
        except TransportError:
            self.resume_uncertain = True
            raise
        self.stage("Resume", time.monotonic() - t0)
        self.frozen_s = time.monotonic() - t_freeze
        # ============================ POINT OF NO RETURN ============================
        # The destination has resumed the container: it runs there and owns the IP.
        # From here on nothing may touch it: the chain is dropped, and a failure
        # cleaning up the source is reported but does not undo the migration.
        self._point_of_no_return()
        if info.get("icmp"):
            self.say(
                f"  sent {info['icmp']} ICMP host-unreachable to TCP peers (RFC 6069)", level=1
            )
        self.link.close()

    def _precopy(self) -> StreamImageWriter | None:
        """Iterative pre-copy while the container runs; returns the last pre-dump (the parent)."""
        from ..checkpoint import precopy
        from ..errors import UnsupportedError

        try:
            precopy.ensure_supported()
        except UnsupportedError as e:
            self.say(f"Warning: no iterative pre-copy: {e}")
            return None
        self.say("Pre-copying memory")
        t0 = time.monotonic()
        tracker = precopy.DirtyTracker(self.ct)
        self.rollback.push("undo_tracking", tracker.stop)
        self.tracker = tracker
        try:
            info = tracker.start()
        except Cancelled:
            raise
        except UnsupportedError as e:
            self.say(f"Warning: no iterative pre-copy: {e}")
            self.tracker = None
            return None
        except VzError as e:
            raise MigrateError(
                f"Failed to start tracking memory: {e}", exit_code=MIG_SOURCE_STOP
            ) from None
        self.say(
            f"  tracking {info.tracked} process(es), {info.registered_bytes / 2**20:.0f} MiB, "
            f"frozen {info.frozen_ms:.1f} ms to set it up"
            + (f"; not tracked: {info.untracked}" if info.untracked else ""), level=1,
        )  # fmt: skip
        images: dict[str, StreamImageWriter] = {}

        def new_image(name: str, parent: str | None) -> StreamImageWriter:
            w = StreamImageWriter(
                self.link, name, self.ctid, kind="predump", parent=images.get(parent)
            )
            images[name] = w
            return w

        pc = precopy.PreCopy(tracker, new_image, say=lambda m: self.say(m, level=1))
        self.precopy = pc
        # The destination gets that much memory ready while the first copy travels.
        self.link.send("expect", bytes=pc.dirty_bytes())
        try:
            iters = pc.run()
        except AgentError as e:
            raise MigrateError(
                f"Failed to copy dump file (pre-copy): {e.message}", exit_code=MIG_COPY
            ) from None
        except TransportError as e:
            raise MigrateError(
                f"Failed to copy dump file (pre-copy): {e.message}", exit_code=MIG_COPY
            ) from None
        copied = sum(i.copied for i in iters)
        self.stage(
            f"Pre-copy ({len(iters)} iterations, {copied / 2**20:.0f} MiB)", time.monotonic() - t0
        )
        return images.get(pc.last_image) if pc.last_image else None

    def _agent_step(self, op: str, what: str, **fields) -> dict:
        try:
            return self.link.request(op, timeout=AGENT_STEP_TIMEOUT, **fields)
        except AgentError as e:
            raise MigrateError(f"{what}: {e.message}", exit_code=MIG_DEST_START) from None
        except TransportError as e:
            raise TransportError(f"{what}: {e.message}", exit_code=MIG_DEST_START) from None

    def _point_of_no_return(self) -> None:
        self.cancellable = False
        self.rollback.commit()

    # --- after the point: clean up the source --------------------------------------------------
    def _cleanup_source(self) -> None:
        o = self.o
        ct = self.ct
        self.say("Cleaning up")
        failures = []

        def attempt(what: str, fn: Callable[[], None]) -> None:
            try:
                fn()
            except Exception as e:  # noqa: BLE001 - report every failed step, go on with the rest
                failures.append(what)
                self.error(f"{what} failed: {e}")

        if o.online:
            from ..checkpoint import driver as cpt

            attempt("Killing the source container", lambda: cpt.chkpnt_command(ct, "kill", None))
            attempt("Unmounting the source container", lambda: ct.umount(require_mounted=False))
            # The remote images: the agent removed them when it said goodbye.
        if o.remove_area:
            self.say("Destroying container", level=1)
            attempt("Destroying the source container", ct.destroy)
        else:
            conf = ct_conf_path(self.ctid)
            self.say(f"Renaming {conf} to {conf}.migrated", level=1)
            attempt("Renaming the source config", lambda: os.replace(conf, conf + ".migrated"))
        if failures:
            self.error(
                f"CT {self.ctid} was migrated to {o.dest} and runs there, but the source node "
                "was not fully cleaned up (see above)"
            )

    # --- pieces ----------------------------------------------------------------------------------
    def _remote(self) -> Remote:
        """The connection, re-established if it was lost (the rollback needs one)."""
        assert self.remote is not None
        if not self.remote.alive:
            saved = self.remote.target.connect_timeout
            self.remote.target.connect_timeout = min(saved, ROLLBACK_CONNECT_TIMEOUT)
            try:
                self.remote.reconnect()
            finally:
                self.remote.target.connect_timeout = saved
        return self.remote

    def _remote_vzctl(self, args: list[str], what: str, code: int) -> None:
        try:
            self.remote.run(["vzctl", *args])
        except RemoteCommandError as e:
            raise _with_msg(e, what, code) from None
        except TransportError as e:
            raise TransportError(f"{what}: {e.message}", exit_code=code) from None

    def _start_sync(self, first: bool, prepared: rsync.Prepared | None = None) -> rsync.RsyncRun:
        return rsync.start_sync(
            self.target,
            self.ct.private or "",
            self.r_private,
            first_pass=first,
            extra=self.o.rsync,
            verbose=self.o.verbose,
            prepared=prepared,
        )

    def _sync(self, first: bool) -> None:
        self.say("Syncing private")
        run = self._start_sync(first)
        try:
            dt = run.wait()
        except BaseException:
            run.kill()
            raise
        self.stage("First rsync" if first else "Second rsync", dt)

    def _remove_remote_tree(self, path: str) -> None:
        r = self._remote()
        r.remove_tree(path)
        if r.exists(path + ".part"):
            r.remove_tree(path + ".part")

    # --- undo steps ------------------------------------------------------------------------------
    def _undo_conf(self, r_conf: str, created: list[str]) -> None:
        r = self._remote()
        name = self.cfg.get("NAME")
        if name:
            link = posixpath.join(posixpath.dirname(self.r_confdir), "names", name)
            try:
                if r.sftp.readlink(link) == r_conf:
                    r.remove(link)
            except OSError:
                pass
        r.remove(r_conf)
        for d in reversed(created):
            try:
                r.rmdir(d)
            except MigrateError:
                pass  # not empty: not only ours

    def _undo_dirs(self, path: str, created: list[str], tree: bool) -> None:
        r = self._remote()
        if tree:
            r.remove_tree(path)
        elif path in created:
            r.rmdir(path)
        for d in reversed(created):
            if d != path:
                try:
                    r.rmdir(d)
                except MigrateError:
                    pass  # not empty: someone else's files live there too

    def _undo_stop(self) -> None:
        """Bring the source back to how it was: running, or mounted."""
        ct = self.ct
        if self.running and not ct.is_running():
            self.say("Starting container", level=1)
            ct.start()
        elif self.mounted and not ct.is_mounted():
            ct.mount(quiet_if_mounted=True)

    def _undo_remote_start(self) -> None:
        r = self._remote()
        r.run(["vzctl", "stop", str(self.ctid), "--fast"], check=False)
        r.run(["vzctl", "umount", str(self.ctid)], check=False)

    def _undo_suspend(self) -> None:
        from ..checkpoint import driver as cpt

        if self.tracker is not None:
            self.tracker.stop()  # no uffd, no write-protected page left behind
        if self.ct.is_running():
            self.say("Resuming container", level=1)
            cpt.chkpnt_command(self.ct, "resume", None)

    def _agent_alive(self) -> bool:
        return (
            self.link is not None
            and not self.link.closed
            and self.remote is not None
            and self.remote.alive
        )

    def _undo_images(self) -> None:
        """Remove what the agent received.

        Over the same channel if it is still in step; otherwise a new agent over
        a fresh connection does it: it starts only once the old one (which saw
        its channel break, and cleans up after itself) has exited, so nothing
        is written there after this returns.
        """
        if self._agent_alive():
            try:
                self.link.request("drop", timeout=120)
                return
            except MigrateError:
                pass
        if self.link is not None:
            self.link.close(bye=False)
        r = self._remote()
        try:
            link = AgentLink.open(r, self.ctid, timeout=AGENT_LOCK_WAIT + 30)
            try:
                link.request("drop", timeout=120)
                return
            finally:
                link.close()
        except MigrateError as e:
            self.say(
                f"Rollback: the agent could not clean up ({e.message}); removing the images",
                level=1,
            )
        self._remove_remote_tree(self.r_dump)
        if r.exists(self.r_dump + ".pre"):
            r.remove_tree(self.r_dump + ".pre")

    def _undo_undump(self) -> None:
        if self._agent_alive():
            try:
                self.link.request("drop", timeout=REMOTE_LOCK_RETRY)
                return
            except MigrateError:
                pass  # over a fresh connection, as vzctl commands
        try:
            r = self._remote()
            deadline = time.monotonic() + REMOTE_LOCK_RETRY
            while True:
                res = r.run(["vzctl", "restore", str(self.ctid), "--kill"], check=False)
                # 9: a remote vzctl (an undump we gave up on) still holds the lock.
                if res.rc != 9 or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if res.rc not in (0, 31):  # 31: nothing runs there (the undump cleaned up)
                raise MigrateError(f"vzctl restore --kill on the destination: exit {res.rc}")
            r.run(["vzctl", "umount", str(self.ctid)], check=False)
        except MigrateError as e:
            if self.resume_uncertain:
                raise RollbackAbort(
                    f"Can't reach the destination ({e.message}) and can't tell whether CT {self.ctid} "
                    f"was resumed there. The source is left frozen so that only one copy runs. "
                    f"Check {self.o.dest}: if the container runs there, run "
                    f"'vzctl chkpnt {self.ctid} --kill' here; otherwise 'vzctl restore {self.ctid} --kill' "
                    f"there and 'vzctl chkpnt {self.ctid} --resume' here"
                ) from None
            raise

    # --- timings --------------------------------------------------------------------------------
    def _print_times(self, total: float) -> None:
        self.say("Timings:")
        width = max([len(n) for n, _ in self.stages] + [len("Total frozen time")]) + 1
        for name, s in self.stages:
            self.say(f"    {name + ':':<{width}} {s:8.3f} s")
        if self.frozen_s is not None:
            label = "Total frozen time" if self.o.online else "Total downtime"
            self.say(f"    {label + ':':<{width}} {self.frozen_s:8.3f} s")
        self.say(f"    {'Total time:':<{width}} {total:8.3f} s")


def _with_msg(e: RemoteCommandError, what: str, code: int) -> RemoteCommandError:
    err = RemoteCommandError(e.argv, e.rc, e.stdout, e.stderr)
    err.message = f"{what} (vzctl exit {e.rc})"
    err.args = (err.message,)
    err.exit_code = code
    return err


def migrate(opts: MigrateOptions) -> int:
    """Run one migration; returns vzmigrate's exit code (messages on stdout/stderr)."""
    return Migration(opts).run()
