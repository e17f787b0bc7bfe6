"""Pre-copy and streaming pieces that need no root: run-list arithmetic, the agent
protocol (schema, framing), the streamed image as the agent writes and checks it,
and the struct layouts of the userfaultfd layer."""

from __future__ import annotations

import ctypes
import io
import os
import random
import socket
import struct
import zlib

import pytest

from vzpy.checkpoint import precopy
from vzpy.images import ImageReader, ImageWriter
from vzpy.images.pages import PE_PARENT, PE_PRESENT
from vzpy.migrate import agent, wire
from vzpy.migrate.stream import StreamImageWriter
from vzpy.sys import uffd

PAGE = 4096


# --- run lists -------------------------------------------------------------------------------------


def _pages(runs) -> set[int]:
    return {p for s, e in runs for p in range(s // PAGE, e // PAGE)}


def _random_runs(rng: random.Random, n: int = 12) -> list[tuple[int, int]]:
    out = []
    for _ in range(n):
        s = rng.randrange(0, 200) * PAGE
        out.append((s, s + rng.randrange(1, 20) * PAGE))
    return precopy.normalize(out)


def test_run_lists_match_page_sets():
    rng = random.Random(7)
    for _ in range(300):
        a, b = _random_runs(rng), _random_runs(rng)
        for runs in (a, b):
            assert all(s < e for s, e in runs)
            assert all(x[1] < y[0] for x, y in zip(runs, runs[1:], strict=False))  # coalesced
        assert _pages(precopy.union(a, b)) == _pages(a) | _pages(b)
        assert _pages(precopy.subtract(a, b)) == _pages(a) - _pages(b)
        assert _pages(precopy.intersect(a, b)) == _pages(a) & _pages(b)
        assert precopy.total(a) == len(_pages(a)) * PAGE


def test_normalize_merges_touching_runs():
    assert precopy.normalize([(8192, 12288), (0, 4096), (4096, 8192), (20480, 20480)]) == [
        (0, 12288)
    ]


# --- the wire --------------------------------------------------------------------------------------


def _frames(*headers: bytes, payloads: dict[int, bytes] | None = None) -> bytes:
    out = b""
    for i, h in enumerate(headers):
        out += h + (payloads or {}).get(i, b"")
    return out


def _reader(data: bytes, chunk: int) -> wire.FrameReader:
    src = io.BytesIO(data)

    def recv_into(mv: memoryview) -> int:
        piece = src.read(min(len(mv), chunk))
        mv[: len(piece)] = piece
        return len(piece)

    return wire.FrameReader(recv_into)


@pytest.mark.parametrize("chunk", [1, 3, 7, 4096, 1 << 20])
def test_frames_survive_any_split(chunk):
    payload = bytes(range(256)) * 40
    data = _frames(
        wire.pack("hello", proto=1, ctid=101),
        wire.pack("data", len(payload)),
        wire.pack("end", size=len(payload), crc=zlib.crc32(payload)),
        payloads={1: payload},
    )
    r = _reader(data, chunk)
    assert r.header() == {"op": "hello", "proto": 1, "ctid": 101}
    h = r.header()
    assert h == {"op": "data", "n": len(payload)}
    got = bytearray()
    r.payload(h["n"], lambda mv: got.extend(mv))
    assert bytes(got) == payload
    assert r.header()["op"] == "end"
    assert r.header() is None  # a clean EOF between frames


def test_eof_in_the_middle_of_a_frame():
    data = wire.pack("data", 100) + b"x" * 10
    r = _reader(data, 64)
    h = r.header()
    with pytest.raises(wire.ProtocolError, match="middle of a frame"):
        r.payload(h["n"], lambda mv: None)
    with pytest.raises(wire.ProtocolError, match="middle of a frame"):
        _reader(wire.pack("bye")[:-1], 64).header()


@pytest.mark.parametrize(
    "header, msg",
    [
        ({"op": "eval", "code": "os.system('x')"}, "unknown op"),
        ({"op": "hello", "proto": 1, "ctid": 1, "extra": 1}, "unexpected field"),
        ({"op": "hello", "proto": "1", "ctid": 1}, "where"),
        ({"op": "hello", "proto": True, "ctid": 1}, "where"),
        ({"op": "hello", "proto": -1, "ctid": 1}, "out of range"),
        ({"op": "hello", "proto": 1}, "missing ctid"),
        ({"op": "data", "n": wire.MAX_PAYLOAD + 1}, "cap"),
        ({"op": "file", "image": "x" * (wire.MAX_STR + 1), "name": "a.img"}, "too long"),
        ({"op": "ok", "for": "hello", "info": {"x": [1, 2]}}, "not a scalar"),
        (["op", "hello"], "must be a map"),
    ],
)
def test_schema_refuses(header, msg):
    import msgpack

    body = msgpack.packb(header)
    with pytest.raises(wire.ProtocolError, match=msg):
        _reader(wire.HEADER_LEN.pack(len(body)) + body, 4096).header()


def test_oversized_header_is_refused_before_reading_it():
    with pytest.raises(wire.ProtocolError, match="cap"):
        _reader(wire.HEADER_LEN.pack(wire.MAX_HEADER + 1), 4096).header()


# --- a streamed image, as the agent receives and checks it --------------------------------------------


class Loop:
    """An AgentLink stand-in: frames go straight into an in-process Agent."""

    def __init__(self, ag: agent.Agent) -> None:
        self.agent = ag
        self.buf = bytearray()
        self.sent = 0
        self.replies: list[dict] = []

    def _pump(self) -> None:
        out = io.BytesIO()
        r, w = os.pipe()
        self.agent.out_fd = w
        data = bytes(self.buf)
        self.buf.clear()
        src = io.BytesIO(data)

        def recv_into(mv: memoryview) -> int:
            piece = src.read(len(mv))
            mv[: len(piece)] = piece
            return len(piece)

        try:
            self.agent.serve(wire.FrameReader(recv_into))
        finally:
            os.close(w)
            while chunk := os.read(r, 65536):
                out.write(chunk)
            os.close(r)
        rr = _reader(out.getvalue(), 1 << 20)
        while (h := rr.header()) is not None:
            self.replies.append(h)

    def send(self, op: str, **fields) -> None:
        self.buf += wire.pack(op, **fields)

    def send_data(self, data) -> None:
        view = memoryview(data).cast("B")
        self.buf += wire.pack("data", len(view))
        self.buf += view

    def request(self, op: str, timeout=None, **fields) -> dict:
        self.send(op, **fields)
        self._pump()
        h = self.replies.pop(0)
        assert h["for"] == op
        if h["op"] == "error":
            from vzpy.migrate.stream import AgentError

            raise AgentError(op, h["msg"], h["code"])
        return h["info"]


@pytest.fixture
def an_agent(tmp_path, monkeypatch):
    from vzpy.node import init_node

    confdir, vzdir = str(tmp_path / "etc"), str(tmp_path / "vz")
    init_node(confdir, vzdir, {})
    monkeypatch.setenv("VZ_CONFDIR", confdir)
    ag = agent.Agent(301, -1)
    link = Loop(ag)
    assert link.request("hello", proto=wire.PROTO, ctid=301)["proto"] == wire.PROTO
    return ag, link


def _memory(seed: int, pages: int) -> bytes:
    rng = random.Random(seed)
    return bytes(rng.getrandbits(8) for _ in range(pages * PAGE))


def test_streamed_chain_is_what_an_image_writer_writes(an_agent, tmp_path):
    ag, link = an_agent
    mem1 = _memory(1, 8)
    pre = StreamImageWriter(link, "pre-1", 301, kind="predump")
    with pre.pages(42) as pw:
        pw.reserve(len(mem1))[:] = mem1
        pw.add_run(0x10000, len(mem1))
        pw.close()
    pre.commit({"page_size": PAGE})
    # The final image: pages 2-3 changed, the rest is in the parent.
    new = _memory(2, 2)
    final = StreamImageWriter(link, "final", 301, parent=pre)
    with final.pages(42) as pw:
        pw.add_parent_run(0x10000, 2 * PAGE)
        pw.reserve(len(new))[:] = new
        pw.add_run(0x12000, len(new))
        pw.add_parent_run(0x14000, 4 * PAGE)
        pw.close()
    final.write("pstree", {"tasks": []})
    final.commit({"root_pid": 1})
    img = ImageReader(ag.images["final"], expect_ctid=301)
    summary = img.verify()  # every checksum of the chain, the parent link and its inventory crc
    assert summary["parent"]["path"] == os.path.realpath(ag.images["pre-1"])
    with img.pages(42) as pr:
        assert [r.flags for r in pr.runs] == [PE_PARENT, PE_PRESENT, PE_PARENT]
        want = mem1[: 2 * PAGE] + new + mem1[4 * PAGE :]
        assert pr.read(0x10000, 8 * PAGE) == want
    # The same image written to disk by ImageWriter reads the same.
    local = ImageWriter(str(tmp_path / "local"), 301)
    local.write("pstree", {"tasks": []})
    local.commit({"root_pid": 1})
    assert ImageReader(str(tmp_path / "local")).read("pstree") == img.read("pstree")
    assert oct(os.stat(ag.images["final"]).st_mode & 0o777) == "0o700"
    ag.drop()
    assert not os.path.exists(ag.root) and not os.path.exists(ag.pre)


def test_agent_refuses_a_damaged_file(an_agent):
    ag, link = an_agent
    link.send("begin", image="pre-1", kind="predump", parent=None)
    link.send("file", image="pre-1", name="pages-7.img")
    link.send_data(b"\0" * PAGE)
    link.send("end", size=PAGE, crc=zlib.crc32(b"\1" * PAGE))  # what was *sent* differs
    with pytest.raises(Exception, match="arrived damaged.*checksum mismatch"):
        link.request("commit", image="pre-1")
    # The agent is back in step and usable.
    assert link.request("drop") == {}


@pytest.mark.parametrize(
    "frames, msg",
    [
        ([("begin", {"image": "../etc", "kind": "dump", "parent": None})], "bad image name"),
        ([("begin", {"image": "final", "kind": "dump", "parent": "pre-9"})], "has not arrived"),
        (
            [
                ("begin", {"image": "final", "kind": "dump", "parent": None}),
                ("file", {"image": "final", "name": "../../x.img"}),
            ],
            "bad image file name",
        ),  # fmt: skip
        ([("file", {"image": "final", "name": "a.img"})], "not begun"),
        ([("undump", {"image": "final"})], "not here"),
    ],
)
def test_agent_refuses_what_is_outside_the_protocol(an_agent, frames, msg):
    ag, link = an_agent
    for op, fields in frames:
        link.send(op, **fields)
    with pytest.raises(wire.ProtocolError, match=msg):
        link.request("commit", image="final")
    for p in (ag.root, ag.root + ".part", ag.pre):
        assert not os.path.exists(os.path.join(os.path.dirname(p), "etc"))


# --- ICMP built for the peer kick ----------------------------------------------------------------


def test_icmp_host_unreachable_layout():
    msg = agent.icmp_host_unreachable("10.0.0.4", 40000, "10.0.0.5", 7000, 0xDEADBEEF)
    assert msg[0] == 3 and msg[1] == 1  # destination unreachable, host
    assert agent._csum(msg) == 0  # checksum verifies
    iph = msg[8:28]
    assert iph[0] == 0x45 and iph[9] == socket.IPPROTO_TCP and agent._csum(iph) == 0
    assert socket.inet_ntoa(iph[12:16]) == "10.0.0.4" and socket.inet_ntoa(iph[16:20]) == "10.0.0.5"
    assert struct.unpack("!HHI", msg[28:36]) == (40000, 7000, 0xDEADBEEF)


# --- userfaultfd structs ------------------------------------------------------------------------------


def test_uffd_structs():
    assert ctypes.sizeof(uffd.UffdioApi) == 24
    assert ctypes.sizeof(uffd.UffdioRegister) == 32
    assert ctypes.sizeof(uffd.UffdioRange) == 16
    assert ctypes.sizeof(uffd.UffdioWriteprotect) == 24
    assert uffd.UFFDIO_API == 0xC018AA3F and uffd.UFFDIO_WRITEPROTECT == 0xC018AA06
