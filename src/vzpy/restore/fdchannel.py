"""Hand file descriptors from the restorer to a seized task (SCM_RIGHTS).

The restorer builds open files, pipes, sockets... in its own process (sockets
in the container's network namespace), then passes them into the task:

  1. inject ``socket(AF_UNIX, SOCK_DGRAM|SOCK_CLOEXEC)`` and ``bind`` it to a
     random abstract name; abstract names live in a network namespace, so the
     restorer's sending socket is created in the container's netns (a thread
     that joined it);
  2. ``sendmsg`` with SCM_RIGHTS (at most 250 fds a message);
  3. inject ``recvmsg(..., MSG_CMSG_CLOEXEC)`` and read the new fd numbers
     from the control message the kernel wrote into the task's scratch page;
  4. the caller ``dup3``s them to their dumped numbers; ``close()`` closes the
     task's socket.

The task ends up holding the very same open file descriptions the restorer
made, so offsets and flags shared between several tasks stay shared.
"""

from __future__ import annotations

import array
import os
import secrets
import socket
import struct

from ..sys.libc import run_in_netns

AF_UNIX = 1
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000
MSG_CMSG_CLOEXEC = 0x40000000
SOL_SOCKET = 1
SCM_RIGHTS = 1
SYS_socket, SYS_bind, SYS_recvmsg, SYS_dup3, SYS_close = 41, 49, 47, 292, 3
MAX_FDS = 250
O_CLOEXEC = 0o2000000


class FdChannel:
    def __init__(
        self, inj, scratch: int, netns_pid: int, sender: socket.socket | None = None
    ) -> None:
        """`scratch`: an RW area of at least 2 pages in the task (not touched by anyone else)."""
        self.inj = inj
        self.scratch = scratch
        self.name = b"\0vzpy-rst-" + secrets.token_hex(8).encode()
        addr = struct.pack("H", AF_UNIX) + self.name
        self.tfd = inj.call(SYS_socket, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)
        inj.write(scratch, addr)
        inj.call(SYS_bind, self.tfd, scratch, len(addr))
        self.sender = sender or run_in_netns(
            netns_pid, socket.socket, socket.AF_UNIX, socket.SOCK_DGRAM
        )
        self.own_sender = sender is None

    def send(self, fds: list[int]) -> list[int]:
        """Pass fds (ours) into the task; return the task's new fd numbers, in order."""
        out: list[int] = []
        for i in range(0, len(fds), MAX_FDS):
            out += self._send_batch(fds[i : i + MAX_FDS])
        return out

    def _send_batch(self, fds: list[int]) -> list[int]:
        self.sender.sendmsg(
            [b"f"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))], 0, self.name
        )
        # struct msghdr { name, namelen, iov, iovlen, control, controllen, flags }
        s = self.scratch
        iov = s + 64
        data = s + 96
        control = s + 128
        clen = 16 + 4 * len(fds) + 8
        msghdr = struct.pack("QQQQQQi4x", 0, 0, iov, 1, control, clen, 0)
        self.inj.write(s, msghdr)  # 56 bytes
        self.inj.write(iov, struct.pack("QQ", data, 1))
        got = self.inj.syscall(SYS_recvmsg, self.tfd, s, MSG_CMSG_CLOEXEC)
        if got < 0:
            raise OSError(-got, f"recvmsg in task: {os.strerror(-got)}")
        raw = self.inj.read(control, clen)
        cmsg_len, level, typ = struct.unpack_from("QII", raw, 0)
        if level != SOL_SOCKET or typ != SCM_RIGHTS:
            raise OSError(5, "no SCM_RIGHTS in the message received by the task")
        n = (cmsg_len - 16) // 4
        if n != len(fds):
            raise OSError(24, f"task received {n} of {len(fds)} fds (RLIMIT_NOFILE?)")
        return list(struct.unpack_from(f"{n}i", raw, 16))

    def place(self, fd_map: dict[int, tuple[int, bool]]) -> None:
        """Send our fds into the task at exact numbers: {target_fd: (our_fd, cloexec)}.

        Received fds land on the lowest free numbers, which may be a target of
        another fd; they are first moved above every target, then dup3'd down.
        """
        if not fd_map:
            return
        targets = sorted(fd_map)
        ours = [fd_map[t][0] for t in targets]
        got = self.send(ours)
        high = max(max(targets), self.tfd, max(got)) + 1
        parked = []
        for i, fd in enumerate(got):
            park = high + i
            self.inj.call(SYS_dup3, fd, park, O_CLOEXEC)
            self.inj.call(SYS_close, fd)
            parked.append(park)
        for t, park in zip(targets, parked, strict=True):
            if t == self.tfd:
                self._move_self(high + len(parked))
            self.inj.call(SYS_dup3, park, t, O_CLOEXEC if fd_map[t][1] else 0)
            self.inj.call(SYS_close, park)

    def _move_self(self, to: int) -> None:
        self.inj.call(SYS_dup3, self.tfd, to, O_CLOEXEC)
        self.inj.call(SYS_close, self.tfd)
        self.tfd = to

    def close(self) -> None:
        try:
            self.inj.syscall(SYS_close, self.tfd)
        finally:
            if self.own_sender:
                self.sender.close()
