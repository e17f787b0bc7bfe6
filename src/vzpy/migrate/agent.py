"""The destination's end of a live migration: ``vzmigrate --agent CTID``.

vzmigrate starts it once over its SSH connection, before the first rsync
(the remote command is on the transport's allow-list), and from then on
speaks migrate/wire.py to it on the channel's stdin/stdout: the pre-dump
images and the final image arrive as streams of frames and are written here
(each file checked against the crc32 it travels with), and the restore runs
*in this process* when the source says ``undump`` and ``resume``: no ssh
session and no Python start-up lands in the frozen window.

Where things go (this node's own vz.conf)::

    DUMPDIR/tmp-dump.CTID.pre/N      pre-dump N (parent: N-1)
    DUMPDIR/tmp-dump.CTID            the final image (parent: the last pre-dump)
    ... each written as NAME.part and renamed into place once complete.

Nothing else is ever written: image and file names are checked against a
pattern, and the directories are fixed by the CTID given on the command line.

Exit rules (the agent is the destination's half of the rollback chain):

- the channel closes, or the source breaks the protocol, before ``resume``
  succeeded: a container undumped here is killed and unmounted, the images
  are removed.  The source's rollback does the same over ssh; whichever comes
  first wins and the other finds nothing to do.
- after ``resume``: the container is the source's no longer; only the
  images are removed.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import struct
import sys
import time
import traceback
import zlib

from . import wire

IMAGE_RE = re.compile(r"(final|pre-[1-9][0-9]{0,2})\Z")
FILE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}\.img\Z")

# vzctl-style codes in error replies
E_PROTO = 1
E_COPY = 6
E_RESTORE = 7


class Refused(Exception):
    def __init__(self, msg: str, code: int = E_COPY) -> None:
        super().__init__(msg)
        self.code = code


class Agent:
    def __init__(self, ctid: int, out_fd: int) -> None:
        from ..config import ConfFile, VzConfig, global_conf_path

        self.ctid = ctid
        self.out_fd = out_fd
        glob = ConfFile.load(global_conf_path())
        self.dumpdir = VzConfig(ctid, glob, None).dumpdir
        self.root = os.path.join(self.dumpdir, f"tmp-dump.{ctid}")
        self.pre = self.root + ".pre"
        self.images: dict[str, str] = {}  # committed image name -> its directory
        self.part: dict[str, str] = {}  # image being written -> its .part directory
        self.fd = -1  # the file being written
        self.file = ""
        self.size = 0
        self.crc = 0
        self.failed: Refused | None = None  # a no-reply request failed: tell at the next reply
        self.undumped = False
        self.resumed = False
        self.ct = None
        self.received = 0
        self.peers: list[tuple[str, int, str, int, int]] = []
        self.warm: MemoryWarmup | None = None
        self.arrived: dict[str, tuple[int, int]] = {}  # file path -> (size, crc32) as it arrived

    # -- paths ----------------------------------------------------------------------------
    def image_dir(self, name: str) -> str:
        if not IMAGE_RE.match(name):
            raise Refused(f"bad image name {name!r}", E_PROTO)
        return self.root if name == "final" else os.path.join(self.pre, name[4:])

    def remove_images(self) -> None:
        self._close_file()
        for p in (self.root, self.root + ".part", self.pre):
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
        self.images.clear()
        self.part.clear()

    # -- requests -------------------------------------------------------------------------
    def op_hello(self, h: dict) -> dict:
        if h["ctid"] != self.ctid:
            raise Refused(f"agent for CT {self.ctid}, not {h['ctid']}", E_PROTO)
        self.remove_images()  # stale ones of an earlier, killed attempt
        # Load what the restore needs now, not while the container is frozen.
        try:
            from ..images import schema
            from ..resources import files as res_files
            from ..restore import driver  # noqa: F401

            res_files.load_kinds()
            schema.load_schemas()
        except Exception as e:  # noqa: BLE001 - a broken install: say so, do not die mute
            raise Refused(
                f"vzpy on the destination does not load: {type(e).__name__}: {e}", E_RESTORE
            ) from e
        return {"proto": wire.PROTO, "pid": os.getpid(), "dumpdir": self.dumpdir}

    def op_begin(self, h: dict) -> None:
        name = h["image"]
        path = self.image_dir(name)
        if name in self.images or name in self.part:
            raise Refused(f"image {name} sent twice", E_PROTO)
        part = path + ".part"
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        if os.path.lexists(part):
            shutil.rmtree(part)
        os.mkdir(part, 0o700)
        os.chmod(part, 0o700)
        self.part[name] = part
        parent = h["parent"]
        if parent is not None:
            if parent not in self.images:
                raise Refused(f"image {name}: parent {parent} has not arrived", E_PROTO)
            from ..images.pages import PARENT_LINK

            # relative to the link's own directory, which is renamed in place: still right after
            os.symlink(os.path.relpath(self.images[parent], part), os.path.join(part, PARENT_LINK))

    def op_file(self, h: dict) -> None:
        name = h["name"]
        if h["image"] not in self.part:
            raise Refused(f"file {name} of image {h['image']}, which was not begun", E_PROTO)
        if not FILE_RE.match(name) or ".." in name:
            raise Refused(f"bad image file name {name!r}", E_PROTO)
        if self.fd >= 0:
            raise Refused(f"{name} started before {self.file} ended", E_PROTO)
        path = os.path.join(self.part[h["image"]], name)
        self.fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        self.file = path
        self.size = 0
        self.crc = 0

    def data(self, piece: memoryview) -> None:
        if self.fd < 0:
            raise Refused("data outside a file", E_PROTO)
        self.crc = zlib.crc32(piece, self.crc)
        self.size += len(piece)
        while piece:
            piece = piece[os.write(self.fd, piece) :]

    def op_end(self, h: dict) -> None:
        if self.fd < 0:
            raise Refused("end outside a file", E_PROTO)
        path = self.file
        self._close_file()
        if h["size"] != self.size or h["crc"] != self.crc:
            raise Refused(
                f"image file {path} arrived damaged: {self.size} bytes with crc32 {self.crc:08x}, "
                f"sent {h['size']} bytes with crc32 {h['crc']:08x} (checksum mismatch)"
            )
        self.received += self.size
        self.arrived[path] = (self.size, self.crc)

    def op_commit(self, h: dict) -> dict:
        from ..images import INVENTORY_NAME

        name = h["image"]
        part = self.part.pop(name, None)
        if part is None:
            raise Refused(f"commit of image {name}, which was not begun", E_PROTO)
        if not os.path.exists(os.path.join(part, INVENTORY_NAME)):
            raise Refused(f"image {name} has no inventory", E_PROTO)
        self.verify(name, part)
        path = self.image_dir(name)
        os.rename(part, path)
        self.images[name] = path
        return {"image": name, "bytes": self.received}

    def op_expect(self, h: dict) -> None:
        """The source says how much memory the restore will fill: get it ready (MemoryWarmup)."""
        if self.warm is None and h["bytes"]:
            self.warm = MemoryWarmup(h["bytes"])

    def verify(self, name: str, part: str) -> None:
        """Check a complete image against its inventory, as ``ImageReader.verify`` would.

        Page files are not read again: the crc32 computed as they arrived is
        compared with the inventory's.  Metadata files (small) are checked by
        the reader.  The undump then verifies only the final image, not its
        parents again (``restore_container(verify_parents=False)``).
        """
        from ..errors import ImageError
        from ..images import ImageReader, schema

        try:
            img = ImageReader(part, expect_ctid=self.ctid, verify=False)
            for fname, entry in img.files.items():
                if entry["type_id"] == schema.PAGES_TYPE_ID:
                    got = self.arrived.get(os.path.join(part, fname))
                    if got != (entry["size"], entry["crc32"]):
                        raise ImageError(
                            f"image file {os.path.join(part, fname)}: checksum mismatch "
                            f"(inventory says {entry['crc32']:08x}, it arrived as {got})"
                        )
                else:
                    img.read_file(fname)
            _ = img.parent  # the parent is there and is the image this one was dumped against
        except ImageError as e:
            raise Refused(f"image {name} is damaged: {e}") from None

    def _container(self):
        from ..config import VzConfig
        from ..container.ct import Container

        if self.ct is None:
            self.ct = Container(self.ctid, VzConfig.load(self.ctid))
        return self.ct

    def _locked(self, what: str, fn) -> None:
        from ..container.lock import CtLock
        from ..errors import VzError

        ct = self._container()
        try:
            with CtLock(ct.cfg.lockdir, self.ctid, what):
                fn(ct)
        except VzError as e:
            raise Refused(str(e), E_RESTORE) from None
        except OSError as e:
            raise Refused(f"{type(e).__name__}: {e}", E_RESTORE) from None

    def op_undump(self, h: dict) -> dict:
        from ..restore import driver

        name = h["image"]
        if name != "final" or name not in self.images:
            raise Refused(f"undump of image {name}, which is not here", E_PROTO)
        t0 = time.monotonic()
        if self.warm is not None:
            self.warm.release()  # just before the restore needs the memory

        def undump(ct) -> None:
            from ..errors import RunningError

            if ct.is_running():
                raise RunningError("Unable to perform restore: container already running")
            self.undumped = True  # from here on a failure or EOF kills what is there
            # Its parents were verified as they arrived (verify above).
            driver.restore_container(
                ct, self.images[name], mode="undump", skip_arpdetect=True, verify_parents=False
            )

        self._locked("restoring", undump)
        ms = (time.monotonic() - t0) * 1000
        self.peers = tcp_peers(self.images[name])  # now, not after the resume
        return {"ms": ms}

    def op_resume(self, h: dict) -> dict:
        from ..restore import driver

        if not self.undumped:
            raise Refused("resume before undump", E_PROTO)
        t0 = time.monotonic()
        self._locked("resuming", lambda ct: driver.restore_command(ct, "resume", None))
        self.resumed = True
        ms = (time.monotonic() - t0) * 1000
        return {"ms": ms, "icmp": kick_peers(self.peers) if h["kick"] else 0}

    def op_drop(self, h: dict) -> dict:
        self.drop()
        return {}

    def op_bye(self, h: dict) -> dict:
        return {}

    def drop(self) -> None:
        """Undo what this agent did: kill an undumped (not resumed) container, remove images."""
        if self.warm is not None:
            self.warm.release()
        if self.undumped and not self.resumed:
            from ..restore import driver

            def kill(ct) -> None:
                if ct.is_running():
                    driver.restore_command(ct, "kill", None)
                ct.cleanup_runtime(keep_mount=False)

            try:
                self._locked("killing", kill)
            except Refused as e:
                print(f"vzmigrate agent: killing the undumped CT {self.ctid}: {e}", file=sys.stderr)
            self.undumped = False
        self.remove_images()

    def _close_file(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- the loop -------------------------------------------------------------------------
    def reply(self, op: str, info: dict | None = None, error: Refused | None = None) -> None:
        if error is not None:
            frame = wire.pack("error", **{"for": op, "msg": str(error)[:4000], "code": error.code})
        else:
            frame = wire.pack("ok", **{"for": op, "info": info or {}})
        view = memoryview(frame)
        while view:
            view = view[os.write(self.out_fd, view) :]

    def _receive(self, reader: wire.FrameReader, n: int) -> Refused | None:
        """Write a data payload to the open file; the whole payload is consumed even on error."""
        err: Refused | None = None

        def sink(piece: memoryview) -> None:
            nonlocal err
            if err is None:
                try:
                    self.data(piece)
                except Refused as e:
                    err = e
                except OSError as e:
                    err = Refused(f"writing {self.file}: {e.strerror}", E_COPY)

        reader.payload(n, sink)
        if err is not None:
            self._close_file()
        return err

    def serve(self, reader: wire.FrameReader) -> None:
        while True:
            h = reader.header()
            if h is None:
                return  # the source hung up
            op = h["op"]
            if op in wire.REPLIES:
                raise wire.ProtocolError(f"a request was expected, not {op}")
            replies = op not in wire.NO_REPLY
            if self.failed is not None:
                if op == "data":
                    reader.payload(h["n"], lambda _piece: None)
                if replies:
                    err, self.failed = self.failed, None
                    self.reply(op, error=err)
                    if err.code == E_PROTO:
                        raise wire.ProtocolError(str(err))
                continue
            if op == "data":
                self.failed = self._receive(reader, h["n"])
                continue
            try:
                info = getattr(self, f"op_{op}")(h)
            except Refused as e:
                self._close_file()
                if replies:
                    self.reply(op, error=e)
                    if e.code == E_PROTO:
                        raise wire.ProtocolError(str(e)) from None
                else:
                    self.failed = e
                continue
            except OSError as e:
                self._close_file()
                err = Refused(f"{op}: {e}", E_COPY)
                if replies:
                    self.reply(op, error=err)
                else:
                    self.failed = err
                continue
            if replies:
                self.reply(op, info)
            if op == "bye":
                return


class MemoryWarmup:
    """Touch as much memory as the restore will need, while the container still runs.

    On the test VMs (Firecracker) a guest page touched for the first time, or
    handed back to the host as free (free page reporting), costs a host fault:
    the restore of a 1 GiB container spent 2.6 s of its 3.5 s zeroing fresh
    pages (perf: clear_page_erms under the restore's page faults), at about
    330 MB/s instead of 1.3 GB/s.  Touched here during the pre-copy and freed
    right before the undump, those pages are what the restore's allocations
    get back.  Bounded by half of MemAvailable; on a machine whose memory is
    always backed it costs a memset outside the frozen window.
    """

    STEP = 16 << 20

    def __init__(self, nbytes: int) -> None:
        import mmap
        import threading

        avail = _mem_available()
        self.size = max(0, min(nbytes, avail // 2)) // mmap.PAGESIZE * mmap.PAGESIZE
        self.stop = threading.Event()
        self.touched = 0
        # Private anonymous memory, like the restored tasks' (not shmem).
        flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
        self.map = mmap.mmap(-1, self.size, flags=flags) if self.size else None
        self.thread = None
        if self.map is not None:
            self.thread = threading.Thread(target=self._touch, name="warmup", daemon=True)
            self.thread.start()

    def _touch(self) -> None:
        import ctypes

        m = self.map
        holder = (ctypes.c_char * len(m)).from_buffer(m)
        base = ctypes.addressof(holder)
        try:
            for off in range(0, len(m), self.STEP):
                if self.stop.is_set():
                    break
                # ctypes drops the GIL: the agent goes on receiving meanwhile.
                ctypes.memset(base + off, 1, min(self.STEP, len(m) - off))
                self.touched = off + self.STEP
        finally:
            del holder

    def release(self) -> None:
        """Free it now; an unfinished warm-up stops after its current step, it is not waited for."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.map is not None:
            self.map.close()
            self.map = None


def _mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tcp_peers(image_dir: str) -> list[tuple[str, int, str, int, int]]:
    """(ct addr, ct port, peer addr, peer port, seq) of the image's IPv4 connections."""
    from ..images import ImageReader

    try:
        img = ImageReader(image_dir, verify=False)
        entries = img.read("files")["entries"] if img.has("files") else []
    except Exception as e:  # noqa: BLE001 - a nudge, never a failure of the migration
        print(f"vzmigrate agent: kick: {e}", file=sys.stderr)
        return []
    conns = []
    for e in entries:
        d = e.get("detail") or {}
        tcp = d.get("tcp") if d.get("_type") == "inet_sk" else None
        if not tcp or tcp.get("family") != socket.AF_INET or tcp.get("state") != 1:
            continue
        # The peer's oldest unacknowledged byte: what we last acknowledged
        # (rcv_wup, "rcv_nxt at the last window update sent"), or rcv_nxt when
        # the ACK for the last bytes received had gone out.
        seqs = {tcp["inq_seq"]}
        wup = (tcp.get("window") or {}).get("rcv_wup")
        if wup is not None:
            seqs.add(wup)
        for seq in sorted(seqs):
            conns.append((tcp["src_addr"], tcp["src_port"], tcp["dst_addr"], tcp["dst_port"], seq))
    return conns


def kick_peers(conns: list[tuple[str, int, str, int, int]]) -> int:
    """Tell the peers of the container's TCP connections to retransmit now.

    While the container was frozen its peers' segments were dropped and their
    TCP backed off (RTO doubling): after the restore nothing happens until
    the next retransmission, which can be seconds away (kernel-notes, "what a
    TCP client actually sees").  This node now routes the container's
    addresses; it sends each IPv4 peer an ICMP host-unreachable quoting the
    peer's own segment at its oldest unacknowledged byte (the restored socket's
    ``rcv_wup``, and ``rcv_nxt`` if it differs).
    RFC 6069 (TCP-LD, Linux ``tcp_ld_RTO_revert``): each such message that
    matches the peer's oldest unacknowledged byte undoes one RTO backoff
    step, and when the reverted RTO has already expired the peer retransmits
    at once.  A peer that is not backed off, or whose oldest unacknowledged
    byte is elsewhere, ignores it (a soft error, never a reset).  Returns the
    number of messages sent.
    """
    if not conns:
        return 0
    sent = 0
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        for _round in range(KICK_ROUNDS):
            for ct_addr, ct_port, peer_addr, peer_port, rcv_nxt in conns:
                msg = icmp_host_unreachable(peer_addr, peer_port, ct_addr, ct_port, rcv_nxt)
                for _ in range(KICK_BURST):
                    try:
                        s.sendto(msg, (peer_addr, 0))
                        sent += 1
                    except OSError as e:
                        print(f"vzmigrate agent: kick {peer_addr}: {e.strerror}", file=sys.stderr)
                        break
    finally:
        s.close()
    return sent


KICK_BURST = 10  # backoff steps undone per round: an RTO of 200 ms << 10 is far beyond any outage
KICK_ROUNDS = 1


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def icmp_host_unreachable(src: str, sport: int, dst: str, dport: int, seq: int) -> bytes:
    """ICMP type 3 code 1 quoting a TCP segment src:sport -> dst:dport at seq (RFC 792)."""
    tcp8 = struct.pack("!HHI", sport, dport, seq & 0xFFFFFFFF)
    iph = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + 20, 0, 0x4000, 64, socket.IPPROTO_TCP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    iph = iph[:10] + struct.pack("!H", _csum(iph)) + iph[12:]
    body = struct.pack("!BBHI", 3, 1, 0, 0) + iph + tcp8
    return body[:2] + struct.pack("!H", _csum(body)) + body[4:]


AGENT_LOCK_WAIT = 120.0


def agent_lock(dumpdir: str, ctid: int, wait: float = AGENT_LOCK_WAIT) -> socket.socket:
    """One agent per container and node at a time: an abstract unix socket name.

    A source whose connection broke (a cancel, a dropped link) rolls back by
    starting a new agent over a new connection and asking it to ``drop``;
    the new one waits here until the old one (which noticed the broken
    channel) has cleaned up and exited.  The name goes with the process: no
    file is left behind.
    """
    name = f"\0vzmigrate-agent:{dumpdir}:{ctid}".encode()[:107]
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    deadline = time.monotonic() + wait
    while True:
        try:
            s.bind(name)
            return s
        except OSError:
            if time.monotonic() > deadline:
                s.close()
                raise
            time.sleep(0.05)


def main(ctid: int) -> int:
    """Serve one migration on stdin/stdout; returns the exit code."""
    from .. import log
    from ..config import ConfFile, global_conf_path

    # The protocol owns the channel's stdout; anything printed goes to stderr.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    try:
        glob = ConfFile.load(global_conf_path())
        logging_on = (glob.get("LOGGING") or "yes") == "yes"
        log.configure(
            verbose=0, quiet=False,
            logfile=(glob.get("LOGFILE") or "/var/log/vzctl.log") if logging_on else None, ctid=ctid,
        )  # fmt: skip
        agent = Agent(ctid, out_fd)
        lock = agent_lock(agent.dumpdir, ctid)  # noqa: F841 - held until we exit
    except Exception as e:  # noqa: BLE001 - the source reads this on stderr
        print(f"vzmigrate agent: can't start: {e}", file=sys.stderr)
        return 1
    reader = wire.FrameReader(lambda mv: os.readv(0, [mv]))
    rc = 0
    try:
        agent.serve(reader)
    except wire.ProtocolError as e:
        print(f"vzmigrate agent: {e}", file=sys.stderr)
        rc = 1
    except BaseException:
        traceback.print_exc()
        rc = 1
    finally:
        if agent.resumed:
            agent.remove_images()
        else:
            agent.drop()
    return rc


__all__ = ["Agent", "icmp_host_unreachable", "kick_peers", "main"]
