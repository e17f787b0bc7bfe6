"""Test nodes that can be reached over SSH, for vzmigrate tests.

An SshNode is a vznode.Node (its own vz.conf tree, cgroup prefix and network
namespace on a Lan) plus its own sshd, started with ``nsenter --net`` so it
listens on the node's LAN address only and shares the host's mount namespace
(the mounts a remote ``vzctl`` makes are the node's mounts, as on a real host).
The one thing that makes a session belong to this node is ``SetEnv
VZ_CONFDIR=...`` in its sshd_config: the tools themselves have no test mode.

SshKeys holds what a test's "admin" has: a key pair (ed25519, made by
ssh-keygen), the authorized_keys every node trusts, and a known_hosts file
that gets each node's host key as the node starts.

Fault injection happens on the node, the way an admin could break a real one:
stop its sshd, kill its sessions (``drop_sessions``: the client's connection
drops), or give it a ForceCommand wrapper that meddles before running the
requested command.  ``node.ssh_opts()`` is
the ``--ssh=`` string vzmigrate needs to reach that node.

Cleanup stops the sshd and every session it still has (by PID, walking the
process tree from the sshd we started), also when the test failed.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import time

from vznode import Node, sh

SSHD = "/usr/sbin/sshd"


class SshKeys:
    """The test admin's ssh identity and known_hosts, in one directory."""

    def __init__(self, base: str) -> None:
        self.dir = os.path.join(base, "ssh-admin")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.key = os.path.join(self.dir, "id_ed25519")
        self.known_hosts = os.path.join(self.dir, "known_hosts")
        self.authorized_keys = os.path.join(self.dir, "authorized_keys")
        if not os.path.exists(self.key):
            sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "vzpy-test", "-f", self.key)
        with open(self.key + ".pub") as f, open(self.authorized_keys, "w") as out:
            out.write(f.read())
        open(self.known_hosts, "a").close()

    def add_known_host(self, ip: str, port: int, pubkey_line: str) -> None:
        kind, blob = pubkey_line.split()[:2]
        name = ip if port == 22 else f"[{ip}]:{port}"
        with open(self.known_hosts, "a") as f:
            f.write(f"{name} {kind} {blob}\n")

    def forget_host(self, ip: str, port: int) -> None:
        name = ip if port == 22 else f"[{ip}]:{port}"
        with open(self.known_hosts) as f:
            lines = [ln for ln in f if not ln.startswith(name + " ")]
        with open(self.known_hosts, "w") as f:
            f.writelines(lines)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


def _descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        out += kids
        todo += kids
    return out


class SshNode:
    """A vznode.Node with its own sshd on the node's LAN address."""

    def __init__(
        self,
        node: Node,
        keys: SshKeys,
        port: int = 2222,
        env: dict[str, str] | None = None,
        force_command: str | None = None,
    ) -> None:
        assert node.ns and node.ip, "an SshNode needs a Node on a Lan"
        self.node = node
        self.keys = keys
        self.port = port
        self.dir = os.path.join(node.base, f"sshd-{port}")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self.host_key = os.path.join(self.dir, "ssh_host_ed25519_key")
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", self.host_key)
        self.config = os.path.join(self.dir, "sshd_config")
        self.log = os.path.join(self.dir, "sshd.log")
        setenv = {"VZ_CONFDIR": node.confdir, **(env or {})}
        with open(self.config, "w") as f:
            f.write(
                f"Port {port}\n"
                f"ListenAddress {node.ip}\n"
                f"HostKey {self.host_key}\n"
                f"PidFile {os.path.join(self.dir, 'sshd.pid')}\n"
                f"AuthorizedKeysFile {keys.authorized_keys}\n"
                "PermitRootLogin prohibit-password\n"
                "PubkeyAuthentication yes\n"
                "PasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\n"
                "UsePAM no\n"
                "StrictModes no\n"
                "UseDNS no\n"
                "PrintMotd no\n"
                "LogLevel VERBOSE\n"
                "MaxSessions 30\n"
                "Subsystem sftp internal-sftp\n"
                "SetEnv " + " ".join(f'{k}="{v}"' for k, v in setenv.items()) + "\n"
            )
            if force_command:
                # sshd runs this instead of what the client asked for (which it
                # finds in $SSH_ORIGINAL_COMMAND): a hook on the node, not in the tool.
                f.write(f"ForceCommand {force_command}\n")
        self.proc: subprocess.Popen | None = None
        self.start()
        with open(self.host_key + ".pub") as f:
            keys.add_known_host(node.ip, port, f.read())

    @property
    def ip(self) -> str:
        return self.node.ip  # type: ignore[return-value]

    def ssh_opts(self) -> str:
        """The --ssh= option string for reaching this node."""
        return f"-i {self.keys.key} -o UserKnownHostsFile={self.keys.known_hosts} -p {self.port}"

    def start(self) -> None:
        # sshd refuses to start without its privilege separation directory.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = open(self.log, "ab")
        try:
            self.proc = subprocess.Popen(
                ["nsenter", f"--net=/run/netns/{self.node.ns}", SSHD, "-D", "-e", "-f", self.config],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + 10
        while not self.listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {self.log_text()}")
            time.sleep(0.02)

    def listening(self) -> bool:
        def probe() -> bool:
            try:
                with socket.create_connection((self.ip, self.port), timeout=1):
                    return True
            except OSError:
                return False

        return self.node.in_ns(probe)

    def log_text(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def session_pids(self) -> list[int]:
        """PIDs of this sshd's live sessions (everything below the listener)."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        return _descendants(self.proc.pid)

    def drop_sessions(self) -> list[int]:
        """Kill every session process: the clients see their connection drop."""
        pids = self.session_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def stop(self) -> None:
        """Stop the listener and its sessions (a node whose sshd went away)."""
        if self.proc is None:
            return
        pids = self.session_pids()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc = None

    def ssh(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a command on this node through the real ssh client (from the host's netns)."""
        argv = ["nsenter", f"--net=/run/netns/{self.node.ns}", "ssh", "-o", "BatchMode=yes",
                *shlex.split(self.ssh_opts()), f"root@{self.ip}", shlex.join(cmd)]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def cleanup(self) -> None:
        self.stop()
