"""The vzmigrate agent protocol: length-prefixed msgpack frames with a schema.

One frame::

    u32 big-endian  length of the header
    header          a msgpack map: {"op": NAME, field: value, ...}
    payload         header["n"] raw bytes, for the ops that carry data

Every header is checked against ``SCHEMA`` before anything acts on it: the
op must be known, every field must be declared for that op with its type, and
no declared field may be missing; strings are bounded, integers are
non-negative.  Nothing is ever evaluated (p.haul's repr/eval protocol is the
trap to avoid).  Payloads are capped (``MAX_PAYLOAD``), headers too.

Source -> agent (requests)::

    hello   {proto, ctid}                      -> ok {proto, pid, dumpdir}
    begin   {image, kind, parent}              start an image directory
    file    {image, name}                      start a file of it
    data    {n} + n bytes                      append to that file
    end     {size, crc}                        finish it (zlib.crc32 of the whole file)
    commit  {image}                            -> ok {image, bytes}: the image is complete
    expect  {bytes}                            the memory the restore will fill (agent.MemoryWarmup)
    undump  {image}                            -> ok {ms}: restored, frozen, network locked
    resume  {kick}                             -> ok {ms, icmp}: running, routed, announced;
                                                  with kick, the peers of its TCP connections
                                                  are nudged to retransmit now (agent.kick_peers)
    drop    {}                                 -> ok {}: kill an undumped container, remove images
    bye     {}                                 -> ok {}: the agent exits

Agent -> source (replies): ``ok {for, info}`` (``for`` names the request it
answers, ``info`` is a flat map of the results above) or ``error {for, msg,
code}``.  Requests that have no
reply (``NO_REPLY``: begin, file, data, end, expect) report a failure at the
next request that has one: the agent then answers ``error`` and ignores
everything up to that request.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

PROTO = 1
HEADER_LEN = struct.Struct(">I")
MAX_HEADER = 64 << 10
MAX_PAYLOAD = 16 << 20
MAX_STR = 4096

# op -> {field: type}; type is int, str, bool, or a tuple of accepted types (None: nil allowed).
SCHEMA: dict[str, dict[str, Any]] = {
    # requests
    "hello": {"proto": int, "ctid": int},
    "begin": {"image": str, "kind": str, "parent": (str, None)},
    "file": {"image": str, "name": str},
    "data": {"n": int},
    "end": {"size": int, "crc": int},
    "commit": {"image": str},
    "expect": {"bytes": int},
    "undump": {"image": str},
    "resume": {"kick": bool},
    "drop": {},
    "bye": {},
    # replies
    "ok": {"for": str, "info": dict},
    "error": {"for": str, "msg": str, "code": int},
}
REPLIES = frozenset({"ok", "error"})
REQUESTS = frozenset(SCHEMA) - REPLIES
WITH_PAYLOAD = frozenset({"data"})
NO_REPLY = frozenset({"begin", "file", "data", "end", "expect"})


class ProtocolError(Exception):
    """The peer sent something outside the protocol (or went away mid-frame)."""


def _check_value(op: str, key: str, value: Any, want: Any) -> None:
    types = want if isinstance(want, tuple) else (want,)
    for t in types:
        if t is None and value is None:
            return
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            if value < 0 or value >= 1 << 64:
                raise ProtocolError(f"{op}.{key}: {value} out of range")
            return
        if t is str and isinstance(value, str):
            if len(value) > MAX_STR:
                raise ProtocolError(f"{op}.{key}: string too long")
            return
        if t is bool and isinstance(value, bool):
            return
        if t is dict and isinstance(value, dict):
            _check_info(op, value)
            return
    raise ProtocolError(f"{op}.{key}: {type(value).__name__} where {want} is expected")


def _check_info(op: str, info: dict) -> None:
    """Reply details: a flat map of short names to scalars."""
    for k, v in info.items():
        if not isinstance(k, str) or len(k) > 64:
            raise ProtocolError(f"{op}: bad info key {k!r}")
        if v is not None and not isinstance(v, (int, float, str, bool)):
            raise ProtocolError(f"{op}.info.{k}: {type(v).__name__} is not a scalar")
        if isinstance(v, str) and len(v) > MAX_STR:
            raise ProtocolError(f"{op}.info.{k}: string too long")


def check(header: Any) -> dict[str, Any]:
    """Validate a decoded header against SCHEMA; returns it."""
    if not isinstance(header, dict):
        raise ProtocolError(f"a frame header must be a map, not {type(header).__name__}")
    op = header.get("op")
    if not isinstance(op, str) or op not in SCHEMA:
        raise ProtocolError(f"unknown op {op!r}")
    fields = SCHEMA[op]
    for key, value in header.items():
        if key == "op":
            continue
        if key not in fields:
            raise ProtocolError(f"{op}: unexpected field {key!r}")
        _check_value(op, key, value, fields[key])
    missing = [k for k in fields if k not in header]
    if missing:
        raise ProtocolError(f"{op}: missing {', '.join(missing)}")
    if op == "data" and header["n"] > MAX_PAYLOAD:
        raise ProtocolError(f"data: {header['n']} bytes exceeds the {MAX_PAYLOAD} cap")
    return header


def pack(op: str, payload_len: int = 0, **fields: Any) -> bytes:
    """The header part of a frame (the caller sends the payload after it)."""
    header = {"op": op, **fields}
    if op in WITH_PAYLOAD:
        header["n"] = payload_len
    check(header)
    body = msgpack.packb(header, use_bin_type=True)
    if len(body) > MAX_HEADER:
        raise ProtocolError(f"{op}: header of {len(body)} bytes")
    return HEADER_LEN.pack(len(body)) + body


def unpack_header(body: bytes) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise ProtocolError(f"undecodable frame header: {e}") from None
    return check(header)


class FrameReader:
    """Reads frames from a byte source ``recv_into(memoryview) -> int`` (0 at EOF)."""

    def __init__(self, recv_into) -> None:
        self._recv_into = recv_into
        self._buf = bytearray(1 << 20)
        self._start = 0
        self._end = 0

    def _fill(self, n: int) -> bool:
        """At least n bytes buffered; False on a clean EOF before any of them."""
        while self._end - self._start < n:
            if self._start == self._end:
                self._start = self._end = 0
            elif len(self._buf) - self._start < n:
                left = self._end - self._start
                self._buf[:left] = self._buf[self._start : self._end]
                self._start, self._end = 0, left
            if len(self._buf) < n:  # never with the caps above, but stay correct
                self._buf.extend(bytes(n - len(self._buf)))
            got = self._recv_into(memoryview(self._buf)[self._end :])
            if not got:
                if self._end == self._start:
                    return False
                raise ProtocolError("connection closed in the middle of a frame")
            self._end += got
        return True

    def _take(self, n: int) -> memoryview:
        v = memoryview(self._buf)[self._start : self._start + n]
        self._start += n
        return v

    def header(self) -> dict[str, Any] | None:
        """The next header, or None at EOF between frames."""
        if not self._fill(HEADER_LEN.size):
            return None
        (n,) = HEADER_LEN.unpack(self._take(HEADER_LEN.size))
        if n > MAX_HEADER:
            raise ProtocolError(f"frame header of {n} bytes exceeds the {MAX_HEADER} cap")
        if not self._fill(n):
            raise ProtocolError("connection closed in the middle of a frame")
        return unpack_header(bytes(self._take(n)))

    def payload(self, n: int, sink) -> None:
        """Pass the next n bytes to sink(memoryview), in pieces, without copying them all."""
        while n:
            if self._end == self._start:
                self._start = self._end = 0
                got = self._recv_into(memoryview(self._buf)[: min(n, len(self._buf))])
                if not got:
                    raise ProtocolError("connection closed in the middle of a frame")
                self._end = got
            take = min(n, self._end - self._start)
            sink(self._take(take))
            n -= take
