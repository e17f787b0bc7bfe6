"""Where vzmigrate goes: DEST plus the ``--ssh`` options, resolved once.

The same resolution serves both transports, so they reach the same host the
same way: paramiko (control commands and the checkpoint image) gets host,
port, user, identity files, known_hosts files and the host-key policy;
the real ``ssh`` that rsync runs gets the user's options verbatim plus
``-o BatchMode=yes`` (never prompt: vzmigrate runs from scripts and cron).

DEST forms: ``host``, ``user@host``, ``host:port``, ``user@host:port``,
``[v6addr]:port``, or a ``Host`` name from the ssh config (``~/.ssh/config``,
or the file given with ``-F`` in ``--ssh``).  Precedence follows OpenSSH's
"first value wins": the ``--ssh`` options, then DEST, then the ssh config,
then the defaults (port 22, user root: vzctl 4.x always logged in as root);
a port written in DEST wins over ``-p`` (it is the more specific of the two).

Host keys are checked against ``UserKnownHostsFile`` (default
``~/.ssh/known_hosts`` and ``~/.ssh/known_hosts2``) and
``GlobalKnownHostsFile`` (default ``/etc/ssh/ssh_known_hosts``).  An unknown
key is refused unless StrictHostKeyChecking is ``no`` or ``accept-new``
(vzmigrate never asks: "ask", the default, means refuse); a changed key is
always refused.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
from dataclasses import dataclass, field

from ..errors import MigrateError

MIG_USAGE = 1
MIG_CONNECT = 4

# ssh(1) options that take an argument ("-p 22" or "-p22").
_SSH_ARG_OPTS = set("BbcDEeFIiJLlmOopQRSWw")
# ssh(1) flags without argument.
_SSH_FLAGS = set("46AaCfGgKkMNnqsTtVvXxYy")
# -o keys whose values we use; every other -o is only given to ssh (rsync).
_UNSUPPORTED = {"proxycommand", "proxyjump"}

DEFAULT_CONNECT_TIMEOUT = 15.0


@dataclass
class Dest:
    """DEST as the user wrote it."""

    host: str
    user: str | None = None
    port: int | None = None

    @property
    def is_ipv6(self) -> bool:
        try:
            return ipaddress.ip_address(self.host).version == 6
        except ValueError:
            return False


def parse_dest(text: str) -> Dest:
    """``[user@]host[:port]`` or ``[user@][v6]:port``; raises MigrateError (usage)."""
    if not text or any(c.isspace() for c in text):
        raise MigrateError(f"Invalid destination address: {text!r}", exit_code=MIG_USAGE)
    user = None
    rest = text
    if "@" in rest:
        user, _, rest = rest.rpartition("@")
        if not user:
            raise MigrateError(f"Invalid destination address: {text!r}", exit_code=MIG_USAGE)
    port = None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](?::(\d+))?", rest)
    if m:
        host, port_s = m.group(1), m.group(2)
    elif rest.count(":") == 1:
        host, port_s = rest.split(":")
    else:
        host, port_s = rest, None  # a bare IPv6 address has several colons
    if port_s is not None:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise MigrateError(
                f"Invalid port in destination address: {text!r}", exit_code=MIG_USAGE
            )
        port = int(port_s)
    if not host or host.startswith("-") or not re.fullmatch(r"[A-Za-z0-9_.:%-]+", host):
        raise MigrateError(f"Invalid destination address: {text!r}", exit_code=MIG_USAGE)
    return Dest(host=host, user=user, port=port)


@dataclass
class SshOptions:
    """What ``--ssh=OPTS`` says, parsed the way ssh(1) parses its command line."""

    argv: list[str] = field(default_factory=list)  # verbatim, for the real ssh
    port: int | None = None
    user: str | None = None
    identity_files: list[str] = field(default_factory=list)
    config_file: str | None = None
    options: dict[str, str] = field(default_factory=dict)  # -o, lower-case keys, first wins


def parse_ssh_opts(text: str | None) -> SshOptions:
    opts = SshOptions()
    if not text:
        return opts
    try:
        argv = shlex.split(text)
    except ValueError as e:
        raise MigrateError(f"Invalid --ssh options: {e}", exit_code=MIG_USAGE) from None
    opts.argv = list(argv)
    i = 0
    while i < len(argv):
        a = argv[i]
        i += 1
        if not a.startswith("-") or a == "-":
            raise MigrateError(
                f"Invalid --ssh option: {a} (only options may be given)", exit_code=MIG_USAGE
            )
        j = 1
        while j < len(a):
            c = a[j]
            j += 1
            if c in _SSH_FLAGS:
                continue
            if c not in _SSH_ARG_OPTS:
                raise MigrateError(f"Invalid --ssh option: -{c}", exit_code=MIG_USAGE)
            if j < len(a):
                val = a[j:]
            elif i < len(argv):
                val = argv[i]
                i += 1
            else:
                raise MigrateError(f"--ssh option -{c} needs an argument", exit_code=MIG_USAGE)
            _take_ssh_arg(opts, c, val)
            break
    return opts


def _take_ssh_arg(opts: SshOptions, c: str, val: str) -> None:
    if c == "p":
        opts.port = _port(val)
        opts.options.setdefault("port", val)
    elif c == "l":
        opts.user = opts.user or val
    elif c == "i":
        opts.identity_files.append(os.path.expanduser(val))
    elif c == "F":
        opts.config_file = os.path.expanduser(val)
    elif c == "o":
        key, sep, value = val.partition("=")
        if not sep:
            key, _, value = val.strip().partition(" ")
        key = key.strip().lower()
        value = value.strip()
        if key == "identityfile":
            opts.identity_files.append(os.path.expanduser(value))
        elif key and key not in opts.options:
            opts.options[key] = value
        if key in _UNSUPPORTED:
            raise MigrateError(
                f"--ssh option -o {key}: proxies are not supported by vzmigrate's SSH transport",
                exit_code=MIG_USAGE,
            )
    elif c == "J":
        raise MigrateError("--ssh option -J: jump hosts are not supported", exit_code=MIG_USAGE)


def _port(val: str) -> int:
    if not val.isdigit() or not 0 < int(val) < 65536:
        raise MigrateError(f"Invalid ssh port: {val}", exit_code=MIG_USAGE)
    return int(val)


@dataclass
class SshTarget:
    """A destination resolved for both paramiko and the real ssh."""

    dest: Dest
    ssh: SshOptions
    hostname: str  # what we connect to
    port: int
    user: str
    identity_files: list[str]
    identities_only: bool
    known_hosts: list[str]  # user files; the first one receives accept-new keys
    global_known_hosts: list[str]
    strict: str  # "yes" | "no" | "accept-new"
    connect_timeout: float
    keepalive: int
    control_path: str | None = None  # ssh ControlPath shared by the rsync passes

    @property
    def display(self) -> str:
        return self.dest.host

    @property
    def host_key_name(self) -> str:
        """How known_hosts names this host (OpenSSH's form)."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def ssh_command(self, verbose: int = 0) -> list[str]:
        """argv of the real ssh for rsync -e: BatchMode plus the user's options.

        ssh keeps the first value it sees for an option, so a port from DEST
        goes before the user's options (DEST wins, as it does for paramiko)."""
        argv = ["ssh", "-o", "BatchMode=yes"]
        if self.dest.port is not None:
            argv += ["-p", str(self.dest.port)]
        if self.control_path:
            # One master connection for both rsync passes: the second one runs
            # while the container is frozen and should not pay for a handshake.
            argv += ["-o", "ControlMaster=auto", "-o", f"ControlPath={self.control_path}",
                     "-o", "ControlPersist=120"]  # fmt: skip
        argv += self.ssh.argv
        if verbose >= 3:
            argv.append("-v")
        return argv

    def close_master(self) -> None:
        """Stop the ssh master connection of the rsync passes, if one was started."""
        import subprocess

        if not self.control_path:
            return
        subprocess.run(
            [*self.ssh_command(), "-O", "exit", self.rsync_host()],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=30,
        )  # fmt: skip

    def rsync_host(self) -> str:
        """The host part of an rsync remote path: user@host (IPv6 in brackets)."""
        host = f"[{self.dest.host}]" if self.dest.is_ipv6 else self.dest.host
        return f"{self.user}@{host}"


def _load_ssh_config(path: str | None):
    import paramiko

    if path is None:
        path = os.path.expanduser("~/.ssh/config")
        if not os.path.exists(path):
            return None
    try:
        return paramiko.SSHConfig.from_path(path)
    except OSError as e:
        raise MigrateError(
            f"Can't read ssh config {path}: {e.strerror}", exit_code=MIG_USAGE
        ) from e


def resolve(dest_text: str, ssh_text: str | None) -> SshTarget:
    dest = parse_dest(dest_text)
    ssh = parse_ssh_opts(ssh_text)
    conf = _load_ssh_config(ssh.config_file)
    cfg: dict = conf.lookup(dest.host) if conf is not None else {}
    for key in _UNSUPPORTED:
        if cfg.get(key) and cfg[key].lower() != "none":
            raise MigrateError(
                f"The ssh config gives {dest.host} a {key}: proxies are not supported by "
                "vzmigrate's SSH transport",
                exit_code=MIG_USAGE,
            )
    o = ssh.options

    def pick(key: str, default: str | None = None) -> str | None:
        if key in o:
            return o[key]
        v = cfg.get(key)
        return v if v is not None else default

    hostname = o.get("hostname") or cfg.get("hostname") or dest.host
    if dest.port is not None:
        port = dest.port
    elif ssh.port is not None:
        port = ssh.port
    else:
        port = _port(str(pick("port", "22")))
    # ssh(1): -l and -o User win over user@host, which wins over the config.
    user = ssh.user or o.get("user") or dest.user or cfg.get("user") or "root"
    identities = list(ssh.identity_files)
    for f in cfg.get("identityfile") or []:
        if f not in identities:
            identities.append(os.path.expanduser(f))
    known = (pick("userknownhostsfile") or "~/.ssh/known_hosts ~/.ssh/known_hosts2").split()
    gknown = (
        pick("globalknownhostsfile") or "/etc/ssh/ssh_known_hosts /etc/ssh/ssh_known_hosts2"
    ).split()
    strict = (pick("stricthostkeychecking") or "ask").lower()
    if strict in ("no", "off", "false"):
        strict = "no"
    elif strict != "accept-new":
        strict = "yes"  # "ask" cannot ask: vzmigrate runs in batch mode
    try:
        timeout = float(pick("connecttimeout") or DEFAULT_CONNECT_TIMEOUT)
    except ValueError:
        raise MigrateError("Invalid ssh ConnectTimeout", exit_code=MIG_USAGE) from None
    try:
        keepalive = int(pick("serveraliveinterval") or 10)
    except ValueError:
        keepalive = 10
    return SshTarget(
        dest=dest,
        ssh=ssh,
        hostname=hostname,
        port=port,
        user=user,
        identity_files=identities,
        identities_only=(pick("identitiesonly") or "no").lower() == "yes",
        known_hosts=[os.path.expanduser(p) for p in known if p.lower() != "none"],
        global_known_hosts=[os.path.expanduser(p) for p in gknown if p.lower() != "none"],
        strict=strict,
        connect_timeout=timeout,
        keepalive=keepalive,
    )
