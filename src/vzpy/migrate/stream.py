"""The source's end of the agent: images streamed over the SSH connection.

``AgentLink`` is one exec channel of the migration's paramiko connection,
running ``vzmigrate --agent CTID`` on the destination (migrate/agent.py),
speaking migrate/wire.py.  It is opened once, before the first rsync, so no
ssh session start-up lands in the frozen window.

``StreamImageWriter`` is an ImageWriter (images/image.py) whose files go
down that channel instead of into a directory: the dump driver and the
pre-copy write to it exactly as to an ImageWriter (``write``, ``pages``,
``commit``, ``abort``); the agent writes the files on the destination.
Every file travels with the zlib.crc32 of its bytes, which the agent checks
on arrival; the inventory (written last, as always) carries the format's own
checksums, which the restore checks again.  Pre-dump images are chained as
ImageWriter chains them: a ``parent`` link and the parent's inventory
checksum.

Usage::

    link = AgentLink.open(remote, ctid)
    w = StreamImageWriter(link, "pre-1", ctid, kind="predump")
    ... w.pages(pid) / w.write(...) ...
    w.commit({...})                   # returns once the agent has the image
    w2 = StreamImageWriter(link, "final", ctid, parent=w)
    link.request("undump", image="final")
    link.request("resume")
"""

from __future__ import annotations

import select
import time
import zlib
from collections.abc import Callable
from typing import Any

from vzpy.errors import MigrateError
from vzpy.images import envelope, schema
from vzpy.images.image import INVENTORY_NAME, OWN_INVENTORY_FIELDS, base_inventory, record_file_name
from vzpy.images.pages import (
    PAGE_SIZE,
    PE_PARENT,
    PE_PRESENT,
    Run,
    check_id,
    check_run,
    pack_runs,
    pages_file_name,
)

from . import wire
from .transport import Remote, TransportError

CHANNEL_WINDOW = 8 << 20  # paramiko's default 2 MiB window halves the throughput here
SEND_CHUNK = 4 << 20
POLL = 0.05


class AgentError(MigrateError):
    """The agent answered ``error`` (its message and vzctl-style code)."""

    def __init__(self, op: str, msg: str, code: int) -> None:
        super().__init__(msg, exit_code=6)
        self.op = op
        self.code = code


class AgentLink:
    """One channel to the destination's agent; not thread-safe."""

    def __init__(self, remote: Remote, chan, say: Callable[[str], None] | None = None) -> None:
        self.remote = remote
        self.chan = chan
        self.say = say
        self.stderr = bytearray()
        self.sent = 0
        self._reader = wire.FrameReader(self._recv_into)
        self.closed = False
        # Frames are sent whole: a cancel (vzmigrate's signal handler) that comes
        # while one is in paramiko's hands waits here and is raised after it.
        self.in_io = False
        self.pending_cancel: BaseException | None = None
        self.awaiting: list[str] = []  # requests whose answer has not been read yet

    @classmethod
    def open(cls, remote: Remote, ctid: int, say=None, timeout: float = 60.0) -> AgentLink:
        import paramiko

        argv = ["vzmigrate", "--agent", str(ctid)]
        from .transport import check_command

        check_command(argv, remote.rm)
        try:
            chan = remote._transport().open_session(
                window_size=CHANNEL_WINDOW,
                max_packet_size=32768,
                timeout=remote.target.connect_timeout,
            )
            chan.exec_command(" ".join(argv))
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise remote._lost(
                f"Can't start the agent on {remote.target.host_key_name}: {e}"
            ) from None
        link = cls(remote, chan, say)
        info = link.request("hello", timeout=timeout, proto=wire.PROTO, ctid=ctid)
        if info.get("proto") != wire.PROTO:
            raise MigrateError(
                f"The destination's agent speaks protocol {info.get('proto')}, not {wire.PROTO}"
            )
        link.info = info
        return link

    # -- bytes ---------------------------------------------------------------------------
    def _send(self, *parts) -> None:
        """Send one frame (its header and payload) as a unit."""
        import paramiko

        if self.closed:
            raise self.remote._lost("The agent's channel is closed")
        self.in_io = True
        try:
            for data in parts:
                self.chan.sendall(data)
                self.sent += len(data)
        except (paramiko.SSHException, EOFError, OSError) as e:
            raise self._gone(f"sending: {e}") from None
        finally:
            self.in_io = False
        self._raise_pending()

    def _raise_pending(self) -> None:
        if self.pending_cancel is not None:
            e, self.pending_cancel = self.pending_cancel, None
            raise e

    def _gone(self, what: str) -> TransportError:
        self.closed = True
        tail = self.stderr_tail()
        msg = f"Connection to the agent on {self.remote.target.host_key_name} lost ({what})"
        if tail:
            msg += f": {tail}"
        return self.remote._lost(msg)

    def _recv_into(self, mv: memoryview) -> int:
        while True:
            self._drain_stderr()
            if self.chan.recv_ready() or self.chan.eof_received or self.chan.closed:
                break
            select.select([self.chan], [], [], POLL)  # in slices: signals must get through
            if self._deadline is not None and time.monotonic() > self._deadline:
                raise TimeoutError
            if not self.remote.alive:
                raise self._gone("the SSH connection died")
        self.in_io = True
        try:
            data = self.chan.recv(len(mv))
        except (OSError, EOFError) as e:
            raise self._gone(str(e)) from None
        finally:
            self.in_io = False
        mv[: len(data)] = data
        return len(data)

    def _drain_stderr(self) -> None:
        while self.chan.recv_stderr_ready():
            data = self.chan.recv_stderr(65536)
            self.stderr += data
            if self.say is not None:
                for line in data.decode(errors="replace").splitlines():
                    self.say(f"    [agent] {line}")
        if len(self.stderr) > 1 << 20:
            del self.stderr[: len(self.stderr) - (64 << 10)]

    def stderr_tail(self, lines: int = 3) -> str:
        self._drain_stderr()
        text = self.stderr.decode(errors="replace").strip().splitlines()
        return " / ".join(text[-lines:])

    # -- frames --------------------------------------------------------------------------
    def send(self, op: str, **fields: Any) -> None:
        self._send(wire.pack(op, **fields))

    def send_data(self, data) -> None:
        view = memoryview(data).cast("B")
        for off in range(0, len(view), SEND_CHUNK):
            piece = view[off : off + SEND_CHUNK]
            self._send(wire.pack("data", len(piece)), piece)

    _deadline: float | None = None

    def _read_reply(self, timeout: float | None) -> dict[str, Any]:
        self._deadline = None if timeout is None else time.monotonic() + timeout
        try:
            try:
                header = self._reader.header()
            except wire.ProtocolError as e:
                raise self._gone(str(e)) from None
        finally:
            self._deadline = None
        if header is None:
            raise self._gone("it exited")
        if header["op"] not in wire.REPLIES:
            raise self._gone(f"unexpected {header['op']}")
        if not self.awaiting or header["for"] != self.awaiting[0]:
            raise self._gone(f"an answer to {header['for']} that was not asked for")
        self.awaiting.pop(0)
        return header

    def reply(self, op: str, timeout: float | None = None) -> dict[str, Any]:
        """Wait for the answer to op; raises AgentError for an ``error`` answer.

        Answers to earlier requests nobody waited for (a cancel came first) are
        read and dropped on the way.
        """
        while True:
            try:
                header = self._read_reply(timeout)
            except TimeoutError:
                raise MigrateError(f"The agent did not answer {op} in {timeout:.0f} s") from None
            if header["for"] == op and not self.awaiting.count(op):
                break
        if header["op"] == "error":
            raise AgentError(op, header["msg"], header["code"])
        return header["info"]

    def request(self, op: str, timeout: float | None = None, **fields: Any) -> dict[str, Any]:
        self.awaiting.append(op)  # first: a cancel may be raised right after the frame left
        self.send(op, **fields)
        return self.reply(op, timeout)

    def close(self, bye: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if bye and self.remote.alive:
                self.send("bye")
                self.reply("bye", timeout=10)
        except (MigrateError, OSError):
            pass
        try:
            self.chan.close()
        except (OSError, EOFError):
            pass


class StreamPageWriter:
    """PageWriter's API (images/pages.py), sending the page file down an AgentLink."""

    def __init__(self, writer: StreamImageWriter, id: int | str, chunk: int = SEND_CHUNK) -> None:
        self.w = writer
        self.id = check_id(id)
        self.name = pages_file_name(self.id)
        self._runs: list[Run] = []
        self._buf = bytearray(chunk)
        self._view = memoryview(self._buf)
        self._claimed = 0  # bytes of the current reservation claimed
        self._resv = 0
        self._committed = 0  # bytes sent
        self._crc = 0
        self._closed = False
        writer._start_file(self.name)

    def reserve(self, nbytes: int) -> memoryview:
        self._check_open()
        if nbytes <= 0 or nbytes % PAGE_SIZE:
            raise ValueError(f"reserve({nbytes}): not a positive multiple of the page size")
        self._flush()
        if nbytes > len(self._buf):
            self._view.release()
            self._buf = bytearray(nbytes)
            self._view = memoryview(self._buf)
        self._resv = nbytes
        return self._view[:nbytes]

    def add_run(self, vaddr: int, nbytes: int) -> None:
        self._check_open()
        self._check_run(vaddr, nbytes)
        if self._claimed + nbytes > self._resv:
            raise ValueError(
                f"add_run({vaddr:#x}, {nbytes}): only {self._resv - self._claimed} bytes reserved"
            )
        offset = self._committed + self._claimed
        last = self._runs[-1] if self._runs else None
        if (
            last is not None
            and last.flags == PE_PRESENT
            and last.end == vaddr
            and last.offset + last.nbytes == offset
        ):
            self._runs[-1] = last._replace(nr_pages=last.nr_pages + nbytes // PAGE_SIZE)
        else:
            self._runs.append(Run(vaddr, nbytes // PAGE_SIZE, offset, PE_PRESENT))
        self._claimed += nbytes

    def add_parent_run(self, vaddr: int, nbytes: int) -> None:
        self._check_open()
        self._check_run(vaddr, nbytes)
        last = self._runs[-1] if self._runs else None
        if last is not None and last.flags == PE_PARENT and last.end == vaddr:
            self._runs[-1] = last._replace(nr_pages=last.nr_pages + nbytes // PAGE_SIZE)
        else:
            self._runs.append(Run(vaddr, nbytes // PAGE_SIZE, 0, PE_PARENT))

    @property
    def size(self) -> int:
        return self._committed + self._claimed

    def _flush(self) -> None:
        if self._claimed:
            data = self._view[: self._claimed]
            self._crc = zlib.crc32(data, self._crc)
            self.w.link.send_data(data)
            data.release()
            self._committed += self._claimed
        self._claimed = 0
        self._resv = 0

    def close(self) -> dict[str, Any]:
        self._check_open()
        self._flush()
        self._closed = True
        self._view.release()
        self.w._end_file(self._committed, self._crc)
        record = {
            "id": self.id,
            "pages_file": self.name,
            "page_size": PAGE_SIZE,
            "size": self._committed,
            "crc32": self._crc,
            "runs": pack_runs(self._runs),
            "run_size": 32,
            "nr_runs": len(self._runs),
            "nr_pages": self._committed // PAGE_SIZE,
            "nr_parent_pages": sum(r.nr_pages for r in self._runs if r.flags & PE_PARENT),
        }
        self.w._pages_closed(self, record)
        return record

    def abort(self) -> None:
        # The agent drops a half-sent file with its image (abort or rollback).
        self._closed = True
        self.w._open_pages.pop(self.name, None)
        self.w._inflight = None

    def __enter__(self) -> StreamPageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._closed:
            self.abort()

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.name} is already closed")

    def _check_run(self, vaddr: int, nbytes: int) -> None:
        check_run(self._runs, vaddr, nbytes)


class StreamImageWriter:
    """ImageWriter's API (images/image.py) for an image the agent writes on the destination."""

    def __init__(
        self,
        link: AgentLink,
        image: str,
        ctid: int | str,
        *,
        kind: str = "dump",
        parent: StreamImageWriter | None = None,
    ) -> None:
        if parent is not None and parent.inventory_crc32 is None:
            raise ValueError(f"parent image {parent.image} is not committed")
        self.link = link
        self.image = image
        self.ctid = str(ctid)
        self.kind = kind
        self.parent = parent
        self.inventory_crc32: int | None = None
        self.bytes = 0
        self._files: list[dict[str, Any]] = []
        self._names: set[str] = set()
        self._open_pages: dict[str, StreamPageWriter] = {}
        self._inflight: str | None = None  # the file whose data is on its way
        self._done = False
        link.send("begin", image=image, kind=kind, parent=parent.image if parent else None)

    def write(self, type_name: str, obj: Any, name: int | str | None = None) -> str:
        self._check_open()
        if type_name == "inventory":
            raise ValueError("the inventory is written by commit()")
        rt = schema.record_type(type_name)
        data = envelope.pack(rt.id, schema.encode(type_name, obj))
        fname = record_file_name(type_name, name)
        self._claim(fname)
        self._send_file(fname, data)
        self._files.append(
            {"name": fname, "type": type_name, "type_id": rt.id, "size": len(data),
             "crc32": envelope.checksum(data)}
        )  # fmt: skip
        return fname

    def pages(self, id: int | str, **_kw: Any) -> StreamPageWriter:
        self._check_open()
        fname = pages_file_name(id)
        self._claim(fname)
        pw = StreamPageWriter(self, id)
        self._open_pages[fname] = pw
        return pw

    def _pages_closed(self, pw: StreamPageWriter, record: dict[str, Any]) -> None:
        del self._open_pages[pw.name]
        self.bytes += record["size"]
        self._files.append(
            {"name": pw.name, "type": schema.PAGES_TYPE, "type_id": schema.PAGES_TYPE_ID,
             "size": record["size"], "crc32": record["crc32"]}
        )  # fmt: skip
        self.write("pagemap", record, name=pw.id)

    def commit(
        self, inventory_fields: dict[str, Any] | None = None, timeout: float = 600
    ) -> dict[str, Any]:
        """Send the inventory; return once the agent has the whole image."""
        self._check_open()
        if self._open_pages:
            raise ValueError(f"page files still open: {', '.join(sorted(self._open_pages))}")
        parent_crc = self.parent.inventory_crc32 if self.parent is not None else None
        inv = base_inventory(self.ctid, self.kind, self._files, parent_crc)
        for k, v in (inventory_fields or {}).items():
            if k not in OWN_INVENTORY_FIELDS:
                inv[k] = v
        data = envelope.pack(schema.INVENTORY.id, schema.encode("inventory", inv))
        self._send_file(INVENTORY_NAME, data)
        self.link.request("commit", timeout=timeout, image=self.image)
        self.inventory_crc32 = envelope.checksum(data)
        self._done = True
        return inv

    def abort(self) -> None:
        """Nothing to undo here: the agent removes an image that was never committed."""
        self._done = True
        self._open_pages.clear()

    def __enter__(self) -> StreamImageWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            self.abort()

    def _check_open(self) -> None:
        if self._done:
            raise ValueError(f"image {self.image} is already committed or aborted")

    def _claim(self, fname: str) -> None:
        if fname in self._names or fname == INVENTORY_NAME:
            raise ValueError(f"image file {fname} is written twice")
        self._names.add(fname)

    def _start_file(self, fname: str) -> None:
        # One file at a time: data frames carry no file name.
        if self._inflight is not None:
            raise ValueError(f"{fname} started while {self._inflight} is still being written")
        self._inflight = fname
        self.link.send("file", image=self.image, name=fname)

    def _end_file(self, size: int, crc: int) -> None:
        self.link.send("end", size=size, crc=crc)
        self._inflight = None

    def _send_file(self, fname: str, data: bytes) -> None:
        self._start_file(fname)
        self.link.send_data(data)
        self._end_file(len(data), zlib.crc32(data))
        self.bytes += len(data)
