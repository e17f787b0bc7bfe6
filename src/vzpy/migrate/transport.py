"""The SSH transport: one paramiko connection for control and for the image.

Call sequence::

    r = Remote(target)              # target: migrate.target.SshTarget
    r.connect()                     # TCP + host key check + public-key auth (exit 4 on failure)
    res = r.run(["vzctl", "--quiet", "status", "101"])   # allow-listed argv only
    r.write_file(path, data, 0o644) # SFTP: file operations need no shell at all
    r.put_tree(local_dir, remote_dir)   # the checkpoint image, inventory last, then rename
    r.close()

Remote commands.  OpenSSH hands an exec request to the user's login shell, so
a command is a string no matter what.  Ours are built only here, from an argv
that ``check_command`` accepts: the program must be one of ``ALLOWED`` and
every argument must pass that program's validator (sub-commands and options
from a fixed list, CTIDs as digits, paths absolute and normalised, and for
``rm`` only paths this migration created and registered with ``own()``).
Each argument is then quoted with ``shlex.quote``.  Nothing the user or the
destination typed is ever pasted into a shell line unchecked.

Files (config, action scripts, directories, the image) go over SFTP, which
runs no shell.  Only removing a whole private area uses ``rm -rf
--one-file-system`` (an SFTP walk of a root file system takes a round trip
per file).

The socket has TCP keepalive and TCP_USER_TIMEOUT so a peer that vanished
(not just closed) is noticed in about half a minute instead of the kernel's
default of many minutes; paramiko's own keepalive keeps traffic flowing.
A lost connection raises ``TransportError``; ``reconnect()`` opens a new one
(the rollback needs one after a dropped transfer).
"""

from __future__ import annotations

import os
import posixpath
import re
import select
import shlex
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import MigrateError
from .target import MIG_CONNECT, SshTarget

TCP_USER_TIMEOUT_MS = 30_000
EXIT_GRACE = 2.0  # seconds to wait for output after the exit status
CHUNK = 1 << 20


class TransportError(MigrateError):
    """The SSH connection failed or was lost."""

    exit_code = 6


class RemoteCommandError(MigrateError):
    """A remote command ran and failed; carries its exit code and stderr."""

    def __init__(self, argv: list[str], rc: int, stdout: str, stderr: str) -> None:
        last = stderr.strip().splitlines()[-1:] or stdout.strip().splitlines()[-1:] or [""]
        super().__init__(
            f"{argv[0]} {' '.join(argv[1:3])} failed (exit {rc}): {last[0]}", exit_code=6
        )
        self.argv = argv
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


@dataclass
class Result:
    argv: list[str]
    rc: int
    stdout: str
    stderr: str
    seconds: float


# --- the allow-list ----------------------------------------------------------------------------

_SAFE = re.compile(r"[A-Za-z0-9_./:=,@+%-]*")


class NotAllowed(ValueError):
    pass


def _ctid(a: str) -> None:
    if not a.isdigit():
        raise NotAllowed(f"not a CTID: {a!r}")


def check_path(a: str) -> None:
    if not a.startswith("/") or posixpath.normpath(a) != a or a == "/" or not _SAFE.fullmatch(a):
        raise NotAllowed(f"not an absolute normalised path: {a!r}")


def _token(a: str) -> None:
    if not _SAFE.fullmatch(a):
        raise NotAllowed(f"unsafe argument: {a!r}")


# vzctl sub-commands and, for each, the options it may get (None: takes a value).
_VZCTL: dict[str, dict[str, Callable[[str], None] | None]] = {
    "status": {},
    "start": {"--wait": None},
    "stop": {"--fast": None},
    "mount": {},
    "umount": {},
    "restore": {
        "--undump": None,
        "--resume": None,
        "--kill": None,
        "--skip_arpdetect": None,
        "--dumpfile": check_path,
    },
}
_VZCTL_GLOBAL = {"--quiet", "--skiplock", "--verbose"}


def _check_vzctl(args: list[str]) -> None:
    i = 0
    while i < len(args) and args[i] in _VZCTL_GLOBAL:
        i += 1
    if i + 1 >= len(args) or args[i] not in _VZCTL:
        raise NotAllowed(f"vzctl {' '.join(args[i : i + 1])}")
    allowed = _VZCTL[args[i]]
    _ctid(args[i + 1])
    rest = args[i + 2 :]
    j = 0
    while j < len(rest):
        opt = rest[j]
        if opt not in allowed:
            raise NotAllowed(f"vzctl {args[i]} {opt}")
        check = allowed[opt]
        if check is not None:
            if j + 1 >= len(rest):
                raise NotAllowed(f"vzctl {args[i]} {opt} needs a value")
            check(rest[j + 1])
            j += 1
        j += 1


def _check_vzlist(args: list[str]) -> None:
    if args not in (["-a", "-j", "-o", "ctid,ip,status"],):
        raise NotAllowed(f"vzlist {' '.join(args)}")


def _check_vzmigrate(args: list[str]) -> None:
    if len(args) != 2 or args[0] not in ("--node-info", "--agent"):
        raise NotAllowed(f"vzmigrate {' '.join(args)}")
    _ctid(args[1])


class _RmCheck:
    """rm -rf --one-file-system -- PATH, for paths registered with own()."""

    def __init__(self) -> None:
        self.owned: set[str] = set()

    def __call__(self, args: list[str]) -> None:
        if len(args) != 4 or args[:3] != ["-rf", "--one-file-system", "--"]:
            raise NotAllowed(f"rm {' '.join(args)}")
        check_path(args[3])
        if args[3] not in self.owned:
            raise NotAllowed(f"rm of a path this migration did not create: {args[3]}")


def check_command(argv: list[str], rm: _RmCheck) -> None:
    """Raise NotAllowed unless argv is one of the commands vzmigrate may run remotely."""
    if not argv:
        raise NotAllowed("empty command")
    for a in argv:
        _token(a)
    prog, args = argv[0], argv[1:]
    if prog == "vzctl":
        _check_vzctl(args)
    elif prog == "vzlist":
        _check_vzlist(args)
    elif prog == "vzmigrate":
        _check_vzmigrate(args)
    elif prog == "rm":
        rm(args)
    else:
        raise NotAllowed(f"program {prog!r}")


# --- host keys ---------------------------------------------------------------------------------


def _host_key_policy(target: SshTarget):
    import paramiko

    class Policy(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client, hostname, key) -> None:
            fp = key.fingerprint if hasattr(key, "fingerprint") else key.get_base64()[:32]
            if target.strict == "yes":
                files = ", ".join(target.known_hosts + target.global_known_hosts) or "none"
                raise MigrateError(
                    f"Host key verification failed: {hostname} ({key.get_name()} {fp}) is not in "
                    f"the known hosts files ({files}). Connect once with ssh to check and add it, "
                    "or pass --ssh='-o StrictHostKeyChecking=no' to skip the check",
                    exit_code=MIG_CONNECT,
                )
            if target.strict == "accept-new" and target.known_hosts:
                path = target.known_hosts[0]
                try:
                    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
                    with open(path, "a") as f:
                        f.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")
                except OSError as e:
                    raise MigrateError(
                        f"Can't add the host key of {hostname} to {path}: {e.strerror}",
                        exit_code=MIG_CONNECT,
                    ) from e
            print(
                f"Warning: accepted unknown host key of {hostname} ({key.get_name()} {fp})",
                file=sys.stderr,
            )

    return Policy()


# --- the connection ----------------------------------------------------------------------------

_TRANSPORT: list = []


def _transport_class():
    """paramiko's Transport, preferring AES-GCM: one pass instead of AES-CTR + HMAC.

    The image goes through this connection; on the 2-vCPU test VM a channel
    moved 240 MB/s with aes128-ctr/hmac-sha2-256 and 290-350 MB/s with
    aes128-gcm (about what the OpenSSH client does).  The others stay as
    fallbacks for servers without GCM.
    """
    if not _TRANSPORT:
        import paramiko

        base = paramiko.Transport._preferred_ciphers
        gcm = tuple(c for c in base if "gcm" in c)

        class Transport(paramiko.Transport):
            _preferred_ciphers = gcm + tuple(c for c in base if c not in gcm)

        _TRANSPORT.append(Transport)
    return _TRANSPORT[0]


class Remote:
    def __init__(self, target: SshTarget, verbose: int = 0) -> None:
        self.target = target
        self.verbose = verbose
        self.client = None
        self._sftp = None
        self.rm = _RmCheck()
        self.broken = False  # a TransportError was raised: never reuse this connection

    # connection
    def connect(self) -> None:
        import logging

        import paramiko

        # Errors reach the admin as our messages; without a handler, Python's
        # last-resort handler would print paramiko's own tracebacks too.
        logging.getLogger("paramiko").addHandler(logging.NullHandler())
        t = self.target
        sock = self._socket()
        client = paramiko.SSHClient()
        for path in t.global_known_hosts + t.known_hosts:
            if os.path.exists(path):
                try:
                    client.load_system_host_keys(path)
                except (OSError, paramiko.SSHException) as e:
                    sock.close()
                    raise MigrateError(
                        f"Can't read known hosts file {path}: {e}", exit_code=MIG_CONNECT
                    ) from e
        client.set_missing_host_key_policy(_host_key_policy(t))
        keys = [k for k in t.identity_files if os.path.exists(k)]
        try:
            client.connect(
                t.hostname,
                port=t.port,
                username=t.user,
                key_filename=keys or None,
                look_for_keys=not t.identities_only,
                allow_agent=not t.identities_only,
                timeout=t.connect_timeout,
                banner_timeout=t.connect_timeout,
                auth_timeout=t.connect_timeout,
                sock=sock,
                transport_factory=_transport_class(),
            )
        except paramiko.BadHostKeyException as e:
            sock.close()
            raise MigrateError(
                f"Host key verification failed: the host key of {t.host_key_name} has CHANGED "
                f"(got {e.key.get_name()}, the known hosts file has another key). "
                "Someone could be intercepting the connection; refusing to continue",
                exit_code=MIG_CONNECT,
            ) from None
        except paramiko.AuthenticationException as e:
            sock.close()
            raise MigrateError(
                f"Can't connect to destination address using public key ({e})",
                exit_code=MIG_CONNECT,
            ) from None
        except MigrateError:
            sock.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as e:
            sock.close()
            raise MigrateError(
                f"Can't connect to {t.host_key_name}: {e}", exit_code=MIG_CONNECT
            ) from None
        tr = client.get_transport()
        if tr is not None and t.keepalive > 0:
            tr.set_keepalive(t.keepalive)
        self.client = client

    def _socket(self) -> socket.socket:
        t = self.target
        try:
            infos = socket.getaddrinfo(t.hostname, t.port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise MigrateError(
                f"Can't resolve {t.hostname}: {e.strerror}", exit_code=MIG_CONNECT
            ) from None
        last: OSError | None = None
        for family, stype, proto, _canon, addr in infos:
            s = socket.socket(family, stype, proto)
            s.settimeout(t.connect_timeout)
            try:
                s.connect(addr)
            except OSError as e:
                s.close()
                last = e
                continue
            s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 4)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        why = last.strerror if last is not None and last.strerror else str(last)
        raise MigrateError(f"Can't connect to {t.host_key_name}: {why}", exit_code=MIG_CONNECT)

    @property
    def alive(self) -> bool:
        # paramiko's transport thread may not have noticed a dead peer yet when
        # an operation already failed on it: `broken` remembers that failure.
        tr = self.client.get_transport() if self.client is not None else None
        return not self.broken and tr is not None and tr.is_active()

    def _lost(self, msg: str) -> TransportError:
        self.broken = True
        return TransportError(msg)

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except (OSError, EOFError):
                pass
            self._sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None
        self.broken = False

    def reconnect(self) -> None:
        self.close()
        self.connect()

    def ensure(self) -> None:
        """Connected, reconnecting if the connection was lost (used by the rollback)."""
        if not self.alive:
            self.reconnect()

    def _transport(self):
        tr = self.client.get_transport() if self.client is not None else None
        if tr is None or not tr.is_active() or self.broken:
            raise self._lost(f"Connection to {self.target.host_key_name} lost")
        return tr

    # commands
    def own(self, path: str) -> None:
        """Allow `rm -rf` of path: it is something this migration created."""
        check_path(path)
        self.rm.owned.add(path)

    def run(self, argv: list[str], *, check: bool = True, echo: bool | None = None) -> Result:
        """Run an allow-listed command; raise RemoteCommandError on a non-zero exit if check."""
        import paramiko

        check_command(argv, self.rm)
        cmd = shlex.join(argv)
        echo = self.verbose >= 2 if echo is None else echo
        if self.verbose >= 2:
            print(f"    [{self.target.display}] $ {cmd}", flush=True)
        t0 = time.monotonic()
        try:
            chan = self._transport().open_session(timeout=self.target.connect_timeout)
            chan.exec_command(cmd)
            rc, out, err = self._collect(chan, echo)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise self._lost(f"Connection to {self.target.host_key_name} lost: {e}") from None
        res = Result(argv, rc, out, err, time.monotonic() - t0)
        if self.verbose >= 2:
            print(f"    [{self.target.display}] exit {rc} after {res.seconds:.3f} s", flush=True)
        if check and rc != 0:
            raise RemoteCommandError(argv, rc, out, err)
        return res

    def _collect(self, chan, echo: bool) -> tuple[int, str, str]:
        out, err = bytearray(), bytearray()
        exit_seen = None
        while True:
            got = False
            while chan.recv_ready():
                data = chan.recv(65536)
                out += data
                got = True
                if echo:
                    _echo(self.target.display, data)
            while chan.recv_stderr_ready():
                data = chan.recv_stderr(65536)
                err += data
                got = True
                if echo:
                    _echo(self.target.display, data)
            if chan.exit_status_ready():
                if exit_seen is None:
                    exit_seen = time.monotonic()
                # The exit status may overtake the last output: drain until EOF,
                # but not for ever (a daemon may keep the pipes open).
                if chan.eof_received or time.monotonic() - exit_seen > EXIT_GRACE:
                    if not chan.recv_ready() and not chan.recv_stderr_ready():
                        break
            elif chan.closed or not self.alive:
                raise self._lost(f"Connection to {self.target.host_key_name} lost")
            if not got:
                select.select([chan], [], [], 0.02)
        rc = chan.recv_exit_status()
        chan.close()
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    # SFTP
    @property
    def sftp(self):
        import paramiko

        if self._sftp is None:
            try:
                self._sftp = self._transport().open_sftp_client()
            except (paramiko.SSHException, EOFError, OSError) as e:
                raise self._lost(f"Can't open SFTP to {self.target.host_key_name}: {e}") from None
        return self._sftp

    def _sftp_call(self, what: str, fn, *args):
        import paramiko

        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except OSError as e:
            if not self.alive:
                raise self._lost(
                    f"Connection to {self.target.host_key_name} lost during {what}: {e}"
                ) from None
            raise MigrateError(f"Remote {what} failed: {e}", exit_code=6) from None
        except (paramiko.SSHException, EOFError) as e:
            raise self._lost(
                f"Connection to {self.target.host_key_name} lost during {what}: {e}"
            ) from None

    def exists(self, path: str) -> bool:
        try:
            self._sftp_call(f"stat {path}", self.sftp.lstat, path)
            return True
        except FileNotFoundError:
            return False

    def is_dir(self, path: str) -> bool:
        try:
            st = self._sftp_call(f"stat {path}", self.sftp.stat, path)
        except FileNotFoundError:
            return False
        return stat.S_ISDIR(st.st_mode or 0)

    def read_file(self, path: str) -> bytes:
        def body() -> bytes:
            with self.sftp.open(path, "rb") as f:
                return f.read()

        return self._sftp_call(f"read of {path}", body)

    def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write path atomically (a temporary name, then rename over it)."""
        tmp = f"{path}.vzmigrate-{os.getpid()}"

        def body() -> None:
            with self.sftp.open(tmp, "wb") as f:
                self.sftp.chmod(tmp, mode)
                f.write(data)
            self.sftp.posix_rename(tmp, path)

        try:
            self._sftp_call(f"write of {path}", body)
        except BaseException:
            self._quiet_remove(tmp)
            raise

    def makedirs(self, path: str, mode: int = 0o755) -> list[str]:
        """mkdir -p; return the directories created (outermost first)."""
        check_path(path)
        missing = []
        p = path
        while p != "/" and not self.exists(p):
            missing.append(p)
            p = posixpath.dirname(p)
        for d in reversed(missing):
            self._sftp_call(f"mkdir {d}", self.sftp.mkdir, d, mode)
            self._sftp_call(f"chmod {d}", self.sftp.chmod, d, mode)
        return list(reversed(missing))

    def remove(self, path: str) -> None:
        try:
            self._sftp_call(f"removal of {path}", self.sftp.remove, path)
        except FileNotFoundError:
            pass

    def rmdir(self, path: str) -> None:
        try:
            self._sftp_call(f"removal of {path}", self.sftp.rmdir, path)
        except FileNotFoundError:
            pass

    def symlink(self, target: str, link: str) -> None:
        """link -> target (paramiko's argument order works with OpenSSH's sftp-server)."""
        self._sftp_call(f"symlink {link}", self.sftp.symlink, target, link)

    def rename(self, src: str, dst: str) -> None:
        self._sftp_call(f"rename of {src}", self.sftp.posix_rename, src, dst)

    def remove_tree(self, path: str) -> None:
        """rm -rf an owned path (one file system: never into a mount below it)."""
        self.run(["rm", "-rf", "--one-file-system", "--", path])

    def _quiet_remove(self, path: str) -> None:
        try:
            if self.alive:
                self.sftp.remove(path)
        except (OSError, EOFError):
            pass

    def put_tree(
        self, local_dir: str, remote_dir: str, progress: Callable[[int], None] | None = None
    ) -> int:
        """Copy a flat directory (a checkpoint image) to remote_dir; return bytes sent.

        Files land in ``remote_dir.part`` (mode 0700, files 0600: they hold
        process memory), the inventory last, and the directory is renamed into
        place at the end, so the destination never sees a half image under
        the real name.  remote_dir and its .part must have been own()ed.
        """
        part = remote_dir + ".part"
        names = sorted(os.listdir(local_dir))
        for n in names:
            st = os.lstat(os.path.join(local_dir, n))
            if not stat.S_ISREG(st.st_mode):
                raise MigrateError(
                    f"Can't ship {local_dir}: {n} is not a regular file", exit_code=6
                )
        # The inventory last: a directory without it is not a checkpoint.
        names.sort(key=lambda n: n == "inventory.img")
        if self.exists(part):
            self.remove_tree(part)
        self._sftp_call(f"mkdir {part}", self.sftp.mkdir, part, 0o700)
        self._sftp_call(f"chmod {part}", self.sftp.chmod, part, 0o700)
        sent = 0
        for n in names:
            sent += self._put_file(os.path.join(local_dir, n), f"{part}/{n}", progress)
        self.rename(part, remote_dir)
        return sent

    def _put_file(self, local: str, remote: str, progress: Callable[[int], None] | None) -> int:
        def body() -> int:
            n = 0
            with open(local, "rb") as src, self.sftp.open(remote, "wb") as dst:
                self.sftp.chmod(remote, 0o600)
                dst.set_pipelined(True)
                while chunk := src.read(CHUNK):
                    dst.write(chunk)
                    n += len(chunk)
                    if progress is not None:
                        progress(len(chunk))
            # close() waited for every write to be acknowledged; check the size too.
            st = self.sftp.stat(remote)
            if st.st_size != n:
                raise MigrateError(f"Remote {remote} has {st.st_size} bytes, sent {n}", exit_code=6)
            return n

        return self._sftp_call(f"copy of {os.path.basename(local)}", body)


def _echo(host: str, data: bytes) -> None:
    for line in data.decode(errors="replace").splitlines():
        print(f"    [{host}] {line}", flush=True)
