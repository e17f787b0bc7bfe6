"""The envelope around every metadata file of an image.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic  b"VZPYIMG\\0"
    8       2     format major version
    10      2     format minor version
    12      4     record type id (vzpy.images.schema)
    16      8     body length N
    24      N     body: one msgpack map, field tags as keys
    24+N    4     zlib.crc32 of bytes 0 .. 24+N

A reader accepts the same major version and any minor version: within one
major, formats only grow (new optional fields, new record types), and tags it
does not know are ignored.  A newer or older major is refused.  Bodies above
``MAX_BODY`` are refused before they are read.

Checksum: ``zlib.crc32``.  It is not crc32c, but it ran at 6.4 GB/s on a
256 MiB buffer on the reference machine, five times blake2b-128 (1.25 GB/s)
and faster than ``process_vm_readv`` reads memory, so checking costs less
than dumping (numbers in docs/image-format.md).  It guards against damage,
not against an attacker: whoever can write the image can fix the checksum.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import zlib
from typing import Any

import msgpack

from vzpy.errors import ImageError

MAGIC = b"VZPYIMG\0"
FORMAT_MAJOR = 1
FORMAT_MINOR = 0

HEADER = struct.Struct("<8sHHIQ")
TRAILER = struct.Struct("<I")
OVERHEAD = HEADER.size + TRAILER.size

# Metadata is small (a few MiB for thousands of VMAs); memory goes to page files.
MAX_BODY = 256 << 20


@dataclasses.dataclass(frozen=True)
class Envelope:
    major: int
    minor: int
    type_id: int
    body: Any


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"msgpack extension type {code} is not used by vzpy images")


def pack(type_id: int, body: Any, *, minor: int = FORMAT_MINOR) -> bytes:
    """The bytes of a metadata file holding ``body`` (already tag-keyed)."""
    payload = msgpack.packb(body, use_bin_type=True)
    if len(payload) > MAX_BODY:
        raise ValueError(f"record body of {len(payload)} bytes exceeds {MAX_BODY}")
    head = HEADER.pack(MAGIC, FORMAT_MAJOR, minor, type_id, len(payload))
    crc = zlib.crc32(payload, zlib.crc32(head))
    return b"".join((head, payload, TRAILER.pack(crc)))


def checksum(data: bytes | memoryview) -> int:
    """The checksum the inventory records for a metadata file: its trailer's value.

    That is zlib.crc32 of the file without its 4-byte trailer.  (The crc32 of
    the *whole* file would be useless: a message followed by its own crc32,
    little-endian, always has crc32 0x2144df1c.)
    """
    return zlib.crc32(memoryview(data)[: max(0, len(data) - TRAILER.size)])


def unpack(data: bytes | memoryview, name: str, *, max_body: int = MAX_BODY) -> Envelope:
    """Check and decode the bytes of a metadata file; ``name`` is used in messages.

    Each damage gets its own one-line ImageError.
    """
    size = len(data)
    if bytes(data[: len(MAGIC)]) != MAGIC[:size]:
        raise ImageError(f"image file {name}: bad magic, not a vzpy image file")
    if size < HEADER.size:
        raise ImageError(f"image file {name} is truncated ({size} bytes)")
    _magic, major, minor, type_id, length = HEADER.unpack_from(data)
    if major != FORMAT_MAJOR:
        newer = "newer" if major > FORMAT_MAJOR else "older"
        raise ImageError(
            f"image file {name} has format version {major}.{minor}, {newer} than this vzpy "
            f"reads ({FORMAT_MAJOR}.x)"
        )
    if length > max_body:
        raise ImageError(f"image file {name}: body of {length} bytes exceeds the {max_body} cap")
    want = OVERHEAD + length
    if size < want:
        raise ImageError(f"image file {name} is truncated ({size} of {want} bytes)")
    if size > want:
        raise ImageError(f"image file {name} has {size - want} bytes of trailing garbage")
    end = HEADER.size + length
    (stored,) = TRAILER.unpack_from(data, end)
    crc = zlib.crc32(data[:end])
    if crc != stored:
        raise ImageError(
            f"image file {name}: checksum mismatch (stored {stored:08x}, computed {crc:08x})"
        )
    try:
        body = msgpack.unpackb(
            data[HEADER.size : end],
            raw=False,
            strict_map_key=False,
            use_list=True,
            ext_hook=_no_ext,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        # Only a writer bug can get here (the checksum matched), but the
        # message must still be one line, not a traceback.
        raise ImageError(f"image file {name}: undecodable body: {err}") from err
    return Envelope(major, minor, type_id, body)


def load(path: str, *, max_body: int = MAX_BODY) -> tuple[Envelope, bytes]:
    """Read and check one metadata file; returns the envelope and the raw bytes."""
    data = read_bytes(path, max_body=max_body)
    return unpack(data, path, max_body=max_body), data


def read_bytes(path: str, *, max_body: int = MAX_BODY) -> bytes:
    """The raw bytes of a metadata file, refusing one larger than the cap."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ImageError(f"image file {path} is missing") from None
    except OSError as err:
        raise ImageError(f"cannot open image file {path}: {err.strerror}") from err
    try:
        size = os.fstat(fd).st_size
        if size > max_body + OVERHEAD:
            raise ImageError(f"image file {path}: {size} bytes exceeds the {max_body} cap")
        return _read_all(fd, size, path)
    finally:
        os.close(fd)


def _read_all(fd: int, size: int, path: str) -> bytes:
    chunks = []
    left = size
    try:
        while left > 0:
            chunk = os.read(fd, left)
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as err:
        raise ImageError(f"cannot read image file {path}: {err.strerror}") from err
    return b"".join(chunks)
