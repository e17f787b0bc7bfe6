"""The checkpoint image format: envelope, schema, writer/reader, pages, vzimage."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys
import zlib

import msgpack
import pytest
from click.testing import CliRunner

from vzpy.cli import vzimage
from vzpy.errors import VZ_RESTORE_ERROR, CheckpointError, ImageError
from vzpy.images import envelope, inspect, schema
from vzpy.images.image import INVENTORY_NAME, ImageReader, ImageWriter
from vzpy.images.pages import (
    PAGE_SIZE,
    PE_PARENT,
    PE_PRESENT,
    PageReader,
    PageWriter,
    Run,
)
from vzpy.images.schema import Field, SchemaError, register_record

P = PAGE_SIZE


# --- helpers --------------------------------------------------------------------


def _sample_value(t: str, tag: int, depth: int = 0):
    if t.startswith("list["):
        inner = t[5:-1]
        return [_sample_value(inner, tag, depth), _sample_value(inner, tag + 1, depth)]
    return {
        "uint": (1 << 63) + tag,
        "int": -(1 << 40) - tag,
        "bool": True,
        "str": f"s{tag}\u00e9",
        "bytes": bytes([tag % 256]) * 5,
        "float": tag + 0.25,
        "any": {"k": [tag, b"\x00\xff", "v"]},
        "record": {"_type": "reg_file", "path": f"/f{tag}", "deleted": True},
    }.get(t) or _sample(schema.record_type(t), depth + 1)


def _sample(rt: schema.RecordType, depth: int = 0) -> dict:
    """A record of type ``rt`` with every field set."""
    assert depth < 5, f"record types nest too deep at {rt.name}"
    return {f.name: _sample_value(f.type, f.tag, depth) for f in rt.fields}


def _pages_dump(w: ImageWriter, pid: int, runs: list[tuple[int, bytes]]) -> None:
    with w.pages(pid) as pw:
        for vaddr, data in runs:
            pw.write(vaddr, data)
        pw.close()


def _small_image(path, ctid=101, **kw) -> dict:
    """A committed image with a tree, a task, a thread and one pagemap; returns the data."""
    data = os.urandom(3 * P)
    with ImageWriter(str(path), ctid, **kw) as w:
        w.write("pstree", {"tasks": [{"pid": 1, "ppid": 0, "pgid": 1, "sid": 1, "threads": [1]}]})
        w.write("task", {"pid": 1, "comm": "init"}, name=1)
        w.write("thread", {"tid": 1, "regs": _sample(schema.X86_REGS)}, name=1)
        _pages_dump(w, 1, [(0x400000, data)])
        w.commit({"root_pid": 4242})
    return {"pages": data}


def _load_inventory(img) -> dict:
    path = os.path.join(img, INVENTORY_NAME)
    env, _ = envelope.load(path)
    return schema.decode("inventory", env.body, where=path)


def _write_inventory(img, inv: dict, *, major: int = envelope.FORMAT_MAJOR) -> None:
    body = schema.encode("inventory", inv)
    _write_raw(os.path.join(img, INVENTORY_NAME), _envelope(schema.INVENTORY.id, body, major=major))


def _write_raw(path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "wb") as f:
        f.write(data)


def _envelope(type_id: int, body, *, major: int = envelope.FORMAT_MAJOR, minor: int = 0) -> bytes:
    payload = msgpack.packb(body, use_bin_type=True)
    head = envelope.HEADER.pack(envelope.MAGIC, major, minor, type_id, len(payload))
    return head + payload + envelope.TRAILER.pack(zlib.crc32(head + payload))


def _replace_file(img, fname: str, data: bytes) -> None:
    """Put ``data`` in ``fname`` and fix the inventory, so only the file's own checks see it."""
    _write_raw(os.path.join(img, fname), data)
    inv = _load_inventory(img)
    for f in inv["files"]:
        if f["name"] == fname:
            f["size"] = len(data)
            f["crc32"] = (
                zlib.crc32(data) if f["type"] == schema.PAGES_TYPE else envelope.checksum(data)
            )
    _write_inventory(img, inv)


def _flip(path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


# --- schema -----------------------------------------------------------------------

CORE_TYPES = sorted(
    (rt for rt in schema.RECORDS.values() if rt.id < schema.FIRST_MODULE_ID), key=lambda r: r.id
)


def test_core_types_cover_the_checkpoint():
    names = {rt.name for rt in CORE_TYPES}
    for need in (
        "inventory pstree task thread x86_regs creds mm vma pagemap files file_entry "
        "reg_file fdinfo fs sigaction siginfo itimer posix_timer rlimit namespaces "
        "namespace uts_ns time_ns mounts mount"
    ).split():
        assert need in names


@pytest.mark.parametrize("rt", CORE_TYPES, ids=lambda rt: rt.name)
def test_every_core_record_round_trips(tmp_path, rt):
    obj = _sample(rt)
    if rt.name == "inventory":
        # commit() writes the inventory; round-trip it through the envelope instead.
        data = envelope.pack(rt.id, schema.encode(rt.name, obj))
        env = envelope.unpack(data, "x")
        assert schema.decode(rt, env.body, where="x") == obj
        return
    img = tmp_path / "img"
    with ImageWriter(str(img), 101) as w:
        w.write(rt.name, obj, name=7)
        w.commit()
    back = ImageReader(str(img)).read(rt.name, 7)
    # Polymorphic fields come back tagged with their type and all defaults filled.
    assert back == _with_defaults(rt, obj)


def _with_defaults(rt, obj):
    out = {}
    for f in rt.fields:
        out[f.name] = _defaults_value(f.type, obj[f.name])
    return out


def _defaults_value(t, v):
    if t.startswith("list["):
        return [_defaults_value(t[5:-1], x) for x in v]
    if t == "record":
        rt = schema.record_type(v["_type"])
        return {**_with_defaults(rt, {f.name: v.get(f.name) for f in rt.fields}), "_type": rt.name}
    if t in schema.RECORDS:
        return _with_defaults(schema.RECORDS[t], v)
    if t == "float":
        return float(v)
    return v


def test_absent_optional_fields_read_as_defaults(tmp_path):
    img = tmp_path / "img"
    with ImageWriter(str(img), 101) as w:
        w.write("task", {"pid": 5}, name=5)
        w.commit()
    t = ImageReader(str(img)).read("task", 5)
    assert t["pid"] == 5 and t["comm"] is None and t["sigactions"] == [] and t["ids"] is None


def test_unknown_tag_is_ignored():
    tagged = schema.encode("sigaction", {"signo": 10, "handler": 1})
    tagged[999] = {"a field": "from a newer vzpy"}
    data = _envelope(schema.SIGACTION.id, tagged, minor=envelope.FORMAT_MINOR + 3)
    env = envelope.unpack(data, "x")
    rec = schema.decode("sigaction", env.body, where="x")
    assert rec["signo"] == 10 and rec["handler"] == 1 and "a field" not in rec
    assert env.minor == envelope.FORMAT_MINOR + 3  # a newer minor is read


def test_unknown_tag_in_a_file_is_ignored(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    tagged = schema.encode("task", {"pid": 1, "comm": "init"})
    tagged[77] = [1, 2, 3]
    _replace_file(img, "task-1.img", _envelope(schema.TASK.id, tagged))
    assert ImageReader(str(img)).read("task", 1)["comm"] == "init"


def test_encode_refuses_what_does_not_fit():
    with pytest.raises(SchemaError, match="no field 'nope'"):
        schema.encode("task", {"pid": 1, "nope": 2})
    with pytest.raises(SchemaError, match="required field pid"):
        schema.encode("task", {"comm": "x"})
    with pytest.raises(SchemaError, match="not a valid uint"):
        schema.encode("task", {"pid": -1})
    with pytest.raises(SchemaError, match="not a valid uint"):
        schema.encode("task", {"pid": True})
    with pytest.raises(SchemaError, match="not a valid str"):
        schema.encode("task", {"pid": 1, "comm": b"x"})
    with pytest.raises(SchemaError, match="expected a list"):
        schema.encode("task", {"pid": 1, "cmdline": "sh"})
    with pytest.raises(SchemaError, match="'_type'"):
        schema.encode("file_entry", {"id": 1, "detail": {"path": "/x"}})


def test_decode_refuses_wrong_types_with_image_error():
    tagged = schema.encode("task", {"pid": 1})
    tagged[1] = "one"
    with pytest.raises(ImageError, match=r"task\.pid: expected uint, found str"):
        schema.decode("task", tagged, where="task-1.img")
    with pytest.raises(ImageError, match="required field pid is missing"):
        schema.decode("task", {}, where="task-1.img")
    with pytest.raises(ImageError, match="expected a task record"):
        schema.decode("task", [1], where="task-1.img")
    nested = schema.encode("file_entry", {"id": 1, "detail": {"_type": "reg_file", "path": "/"}})
    nested[5][0] = 4242
    with pytest.raises(ImageError, match="record type id 4242 is unknown"):
        schema.decode("file_entry", nested, where="files.img")
    rec = schema.decode("file_entry", nested, where="files.img", allow_unknown=True)
    assert rec["detail"]["_type_id"] == 4242


def test_module_registers_its_own_record_type(tmp_path):
    # What a resource module does at import time: one call, no edit elsewhere.
    fields = [
        Field("ino", 1, "uint", optional=False),
        Field("state", 2, "uint"),
        Field("send_queue", 3, "bytes"),
    ]
    rt = register_record("unit_test_sock", id=1901, fields=fields, category="socket")
    assert register_record("unit_test_sock", id=1901, fields=fields, category="socket") is rt
    assert schema.RECORDS["unit_test_sock"] is rt
    img = tmp_path / "img"
    with ImageWriter(str(img), 101) as w:
        w.write("unit_test_sock", {"ino": 12, "send_queue": b"abc"}, name=12)
        w.write(
            "files",
            {"entries": [{"id": 3, "detail": {"_type": "unit_test_sock", "ino": 12}}]},
        )
        w.commit()
    r = ImageReader(str(img))
    assert r.read("unit_test_sock", 12)["send_queue"] == b"abc"
    assert r.read("files")["entries"][0]["detail"]["_type"] == "unit_test_sock"
    shown = inspect.show(str(img))
    assert shown["sockets"]["unit_test_sock-12.img"]["send_queue"] == {"len": 3, "hex": "616263"}


def test_register_record_refuses_clashes():
    with pytest.raises(SchemaError, match="reserved for vzpy.images.schema|are for"):
        register_record("unit_low", id=5, fields=[])
    with pytest.raises(SchemaError, match="clashes"):
        register_record("task", id=1902, fields=[])
    with pytest.raises(SchemaError, match="clashes"):
        register_record("unit_other", id=schema.TASK.id, fields=[], _core=True)
    with pytest.raises(SchemaError, match="tag 1 used twice"):
        register_record("unit_dup", id=1903, fields=[Field("a", 1, "uint"), Field("b", 1, "uint")])
    with pytest.raises(SchemaError, match="tag 2 used twice or reserved"):
        register_record("unit_res", id=1904, fields=[Field("a", 2, "uint")], reserved=[2])
    with pytest.raises(SchemaError, match="bad field type"):
        register_record("unit_bad", id=1905, fields=[Field("a", 1, "list[Nope]")])
    with pytest.raises(SchemaError, match="bad record type name"):
        register_record("pages", id=1906, fields=[])
    assert "unit_dup" not in schema.RECORDS


# --- envelope ---------------------------------------------------------------------


def _good() -> bytes:
    return envelope.pack(schema.SIGACTION.id, schema.encode("sigaction", {"signo": 2}))


def test_envelope_round_trip_and_layout():
    data = _good()
    assert data[:8] == b"VZPYIMG\0"
    magic, major, minor, tid, n = envelope.HEADER.unpack_from(data)
    assert (major, minor, tid) == (envelope.FORMAT_MAJOR, envelope.FORMAT_MINOR, 70)
    assert len(data) == 24 + n + 4
    env = envelope.unpack(data, "x")
    assert env.type_id == 70 and env.body == {1: 2}


def test_envelope_bad_magic():
    data = bytearray(_good())
    data[0] ^= 1
    with pytest.raises(ImageError, match="x: bad magic"):
        envelope.unpack(bytes(data), "x")
    with pytest.raises(ImageError, match="bad magic"):
        envelope.unpack(b"\x7fELF\x02\x01\x01\x00" + bytes(40), "x")


@pytest.mark.parametrize("where", ["body", "trailer", "header"])
def test_envelope_bad_checksum(where):
    data = bytearray(_good())
    pos = {"body": 24, "trailer": len(data) - 2, "header": 12}[where]
    data[pos] ^= 0x10
    with pytest.raises(ImageError, match="checksum mismatch"):
        envelope.unpack(bytes(data), "x")


@pytest.mark.parametrize("cut", [1, 4, 10, 5000])
def test_envelope_truncated(cut):
    data = _good()
    with pytest.raises(ImageError, match="truncated"):
        envelope.unpack(data[: max(1, len(data) - cut)], "x")


def test_envelope_trailing_garbage():
    with pytest.raises(ImageError, match="trailing garbage"):
        envelope.unpack(_good() + b"\0", "x")


def test_envelope_versions():
    body = schema.encode("sigaction", {"signo": 2})
    with pytest.raises(
        ImageError, match=r"format version 2\.0, newer than this vzpy reads \(1\.x\)"
    ):
        envelope.unpack(_envelope(70, body, major=envelope.FORMAT_MAJOR + 1), "x")
    with pytest.raises(ImageError, match="older"):
        envelope.unpack(_envelope(70, body, major=0), "x")
    # Same major, newer or older minor: read.
    assert envelope.unpack(_envelope(70, body, minor=9), "x").body == {1: 2}


def test_envelope_size_cap(tmp_path):
    head = envelope.HEADER.pack(envelope.MAGIC, 1, 0, 70, envelope.MAX_BODY + 1)
    with pytest.raises(ImageError, match="exceeds the .* cap"):
        envelope.unpack(head + b"\0" * 8, "x")
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate(envelope.MAX_BODY + 100)  # sparse: refused before it is read
    with pytest.raises(ImageError, match="exceeds the .* cap"):
        envelope.load(str(big))
    data = _envelope(70, {1: 2, 2: "x" * 100})
    with pytest.raises(ImageError, match="cap"):
        envelope.unpack(data, "x", max_body=50)


def test_envelope_refuses_undecodable_bodies():
    # A body that passes the checksum but is not msgpack we write (a writer bug).
    for payload in (b"\xc1", b"\x92\x01", b"\xd4\x01\x00", b"\xa2\xff\xfe", b"\x01\x02"):
        head = envelope.HEADER.pack(envelope.MAGIC, 1, 0, 70, len(payload))
        data = head + payload + envelope.TRAILER.pack(zlib.crc32(head + payload))
        with pytest.raises(ImageError, match="undecodable body"):
            envelope.unpack(data, "x")


def test_random_bodies_never_escape_as_other_errors():
    rng = random.Random(1234)

    def value(depth):
        kind = rng.randrange(8 if depth < 3 else 5)
        return [
            lambda: rng.randrange(-(2**63), 2**64),
            lambda: rng.random() < 0.5,
            lambda: "x" * rng.randrange(4),
            lambda: bytes(rng.randrange(4)),
            lambda: None,
            lambda: [value(depth + 1) for _ in range(rng.randrange(3))],
            lambda: {rng.randrange(1, 25): value(depth + 1) for _ in range(rng.randrange(4))},
            lambda: [rng.choice([1, 14, 54, 70, 4242]), value(depth + 1)],
        ][kind]()

    for i in range(3000):
        rt = CORE_TYPES[i % len(CORE_TYPES)]
        body = {rng.randrange(1, 25): value(0) for _ in range(rng.randrange(6))}
        env = envelope.unpack(_envelope(rt.id, body), "x")
        try:
            schema.decode(rt, env.body, where="x")
        except ImageError:
            pass


# --- writer and reader ----------------------------------------------------------


def test_image_round_trip_and_inventory(tmp_path):
    img = tmp_path / "img"
    d = _small_image(img)
    r = ImageReader(str(img), expect_ctid=101)
    assert r.ctid == "101"
    inv = r.inventory
    assert (inv["format_major"], inv["format_minor"]) == (1, 0)
    assert inv["kernel"] == os.uname().release and inv["vzpy_version"]
    assert inv["root_pid"] == 4242 and inv["page_size"] == P and inv["created"] > 0
    names = [f["name"] for f in inv["files"]]
    assert names == ["pstree.img", "task-1.img", "thread-1.img", "pages-1.img", "pagemap-1.img"]
    for f in inv["files"]:
        data = (img / f["name"]).read_bytes()
        assert f["size"] == len(data)
        want = zlib.crc32(data) if f["type"] == "pages" else zlib.crc32(data[:-4])
        assert f["crc32"] == want
    assert r.read("pstree")["tasks"][0]["threads"] == [1]
    assert r.read("thread", 1)["regs"]["gs"] == _sample(schema.X86_REGS)["gs"]
    assert r.list("task") == ["1"] and r.list("pstree") == [None]
    assert r.read("mm", 1, missing_ok=True) is None
    with pytest.raises(ImageError, match="has no mm-1.img"):
        r.read("mm", 1)
    with r.pages(1) as pr:
        assert pr.read(0x400000, 3 * P) == d["pages"]


def test_metadata_checksums_differ_per_file(tmp_path):
    # crc32 of a file ending in its own crc32 is a constant: the inventory must not use it.
    img = tmp_path / "img"
    _small_image(img)
    crcs = [f["crc32"] for f in _load_inventory(img)["files"] if f["type"] != "pages"]
    assert len(set(crcs)) == len(crcs)


def test_modes(tmp_path):
    old = os.umask(0)
    try:
        img = tmp_path / "img"
        _small_image(img)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(img).st_mode) == 0o700
    for name in os.listdir(img):
        assert stat.S_IMODE(os.stat(img / name).st_mode) == 0o600, name
    os.chmod(img / "pages-1.img", 0o644)
    with pytest.raises(ImageError, match="pages-1.img is mode 0644.*must be 0600"):
        inspect.verify(str(img))
    os.chmod(img / "pages-1.img", 0o600)
    os.chmod(img, 0o755)
    with pytest.raises(ImageError, match="mode 0755.*must be 0700"):
        inspect.verify(str(img))


def test_no_inventory_is_not_a_checkpoint(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    os.unlink(img / INVENTORY_NAME)
    with pytest.raises(ImageError, match="is not a checkpoint: it has no inventory.img"):
        ImageReader(str(img))
    with pytest.raises(ImageError, match="does not exist"):
        ImageReader(str(tmp_path / "nothing"))
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(ImageError, match="not a directory"):
        ImageReader(str(tmp_path / "plain"))


def test_unfinished_dump_leaves_nothing(tmp_path):
    img = tmp_path / "img"
    with pytest.raises(RuntimeError):
        with ImageWriter(str(img), 101) as w:
            w.write("task", {"pid": 1}, name=1)
            pw = w.pages(1)
            pw.write(0, bytes(P))
            raise RuntimeError("dump failed")
    assert not img.exists()
    with ImageWriter(str(img), 101) as w:
        w.write("task", {"pid": 1}, name=1)
    assert not img.exists()  # left without commit()


def test_writer_refuses_misuse(tmp_path):
    img = tmp_path / "img"
    img.mkdir()
    (img / "x").write_bytes(b"")
    with pytest.raises(CheckpointError, match="already exists and is not an empty directory"):
        ImageWriter(str(img), 101)
    img2 = tmp_path / "img2"
    with ImageWriter(str(img2), 101) as w:
        w.write("task", {"pid": 1}, name=1)
        with pytest.raises(ValueError, match="written twice"):
            w.write("task", {"pid": 1}, name=1)
        with pytest.raises(ValueError, match="written by commit"):
            w.write("inventory", {})
        with pytest.raises(ValueError, match="set by commit"):
            w.commit({"ctid": "7"})
        pw = w.pages(1)
        with pytest.raises(ValueError, match="written twice"):
            w.pages(1)
        with pytest.raises(ValueError, match="still open"):
            w.commit()
        pw.close()
        w.commit()
        with pytest.raises(ValueError, match="already committed"):
            w.write("task", {"pid": 2}, name=2)
    assert ImageReader(str(img2)).list("pagemap") == ["1"]  # abort() after commit is a no-op


def test_an_empty_existing_directory_is_used(tmp_path):
    img = tmp_path / "img"
    img.mkdir(mode=0o755)
    _small_image(img)
    assert stat.S_IMODE(os.stat(img).st_mode) == 0o700
    ImageReader(str(img)).verify()


def test_image_of_another_ct(tmp_path):
    img = tmp_path / "img"
    _small_image(img, ctid=102)
    with pytest.raises(ImageError, match=r"image .*img belongs to CT 102, not 101"):
        ImageReader(str(img), expect_ctid=101)
    assert ImageReader(str(img), expect_ctid="102").ctid == "102"


def test_missing_file_listed_in_inventory(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    os.unlink(img / "thread-1.img")
    with pytest.raises(ImageError, match="thread-1.img, listed in the inventory, is missing"):
        ImageReader(str(img), verify=False)


def test_damaged_files_are_refused_on_open(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    _flip(img / "task-1.img", 26)  # a body byte
    with pytest.raises(ImageError, match="task-1.img: checksum mismatch"):
        ImageReader(str(img))
    r = ImageReader(str(img), verify=False)  # lazily: found when read
    with pytest.raises(ImageError, match="task-1.img: checksum mismatch"):
        r.read("task", 1)


def test_damaged_page_file(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    _flip(img / "pages-1.img", P + 17)
    with pytest.raises(ImageError, match="pages-1.img: checksum mismatch"):
        ImageReader(str(img))
    r = ImageReader(str(img), verify=False)
    with pytest.raises(ImageError, match="pages-1.img: checksum mismatch"):
        r.verify()
    with r.pages(1) as pr, pytest.raises(ImageError, match="checksum mismatch"):
        pr.verify()


def test_truncated_file(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    data = (img / "task-1.img").read_bytes()
    (img / "task-1.img").write_bytes(data[:-3])
    with pytest.raises(ImageError, match=r"task-1.img is \d+ bytes, the inventory says \d+"):
        ImageReader(str(img), verify=False)
    # Truncated, and the inventory made to agree: the envelope still sees it.
    _replace_file(img, "task-1.img", data[:-3])
    with pytest.raises(ImageError, match="task-1.img is truncated"):
        ImageReader(str(img)).read("task", 1)


def test_envelope_faults_behind_a_matching_inventory(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    good = (img / "task-1.img").read_bytes()
    bad_magic = b"XX" + good[2:]
    _replace_file(img, "task-1.img", bad_magic)
    with pytest.raises(ImageError, match="task-1.img: bad magic"):
        ImageReader(str(img)).verify()
    bad_trailer = good[:-1] + bytes([good[-1] ^ 1])
    _replace_file(img, "task-1.img", bad_trailer)
    with pytest.raises(ImageError, match=r"task-1.img: checksum mismatch \(stored"):
        ImageReader(str(img)).read("task", 1)
    newer = _envelope(schema.TASK.id, {1: 1}, major=2)
    _replace_file(img, "task-1.img", newer)
    with pytest.raises(ImageError, match="task-1.img has format version 2.0, newer"):
        ImageReader(str(img)).read("task", 1)
    wrong_type = _envelope(schema.THREAD.id, {1: 1})
    _replace_file(img, "task-1.img", wrong_type)
    with pytest.raises(ImageError, match="holds record type 23, the inventory says 14"):
        ImageReader(str(img)).read("task", 1)
    bad_field = _envelope(schema.TASK.id, {1: "one"})
    _replace_file(img, "task-1.img", bad_field)
    with pytest.raises(ImageError, match=r"task\.pid: expected uint"):
        ImageReader(str(img)).verify()


def test_newer_major_inventory(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    _write_inventory(img, _load_inventory(img), major=envelope.FORMAT_MAJOR + 1)
    with pytest.raises(ImageError, match="inventory.img has format version 2.0, newer"):
        ImageReader(str(img))


def test_inventory_damaged(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    _flip(img / INVENTORY_NAME, 30)
    with pytest.raises(ImageError, match="inventory.img: checksum mismatch"):
        ImageReader(str(img))


def test_unknown_record_type_is_refused_unless_allowed(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    data = _envelope(4242, {1: 1})
    _write_raw(img / "future_thing.img", data)
    inv = _load_inventory(img)
    inv["files"].append(
        {
            "name": "future_thing.img",
            "type": "future_thing",
            "type_id": 4242,
            "size": len(data),
            "crc32": envelope.checksum(data),
        }
    )
    inv["vzpy_version"] = "9.0"
    _write_inventory(img, inv)
    with pytest.raises(ImageError, match=r"needs record type future_thing \(4242\).*vzpy 9.0"):
        ImageReader(str(img))
    shown = inspect.show(str(img))
    assert shown["unknown"]["future_thing.img"]["type_id"] == 4242


def test_bad_names_in_inventory(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    for bad in ("../etc.img", "task-1", ".hidden.img", "thread-1.img"):
        inv = _load_inventory(img)
        inv["files"][1]["name"] = bad  # task-1.img's entry
        _write_inventory(img, inv)
        with pytest.raises(ImageError, match="bad file name|does not match|listed twice"):
            ImageReader(str(img), verify=False)


def test_list_sorts_pids_as_numbers(tmp_path):
    img = tmp_path / "img"
    with ImageWriter(str(img), 101) as w:
        for pid in (10, 2, 1, 33):
            w.write("task", {"pid": pid}, name=pid)
        w.commit()
    r = ImageReader(str(img))
    assert r.list("task") == ["1", "2", "10", "33"]
    assert [t["pid"] for _, t in r.items("task")] == [1, 2, 10, 33]


# --- pages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode,threaded", [("buffer", False), ("mmap", True), ("mmap", False)], ids=str
)
def test_page_writer_reader_round_trip(tmp_path, mode, threaded, monkeypatch):
    monkeypatch.setattr("vzpy.images.pages.CRC_BATCH", 2 * P)  # exercise batching
    rng = random.Random(7)
    blob = rng.randbytes(64 * P)
    expect: dict[int, bytes] = {}
    # chunk of 4 pages: reservations outgrow the buffer / cross mmap windows.
    with PageWriter(str(tmp_path), 9, mode=mode, chunk=4 * P, threaded=threaded) as pw:
        pos = 0
        vaddr = 0x7F0000000000
        # one reservation, three scattered runs in it (a scattered process_vm_readv)
        buf = pw.reserve(6 * P)
        buf[:] = blob[: 6 * P]
        for n in (1, 2, 3):
            pw.add_run(vaddr, n * P)
            expect[vaddr] = blob[pos : pos + n * P]
            pos += n * P
            vaddr += (n + 5) * P
        # a short read: reserve 10 pages, only 7 filled
        buf = pw.reserve(10 * P)
        buf[: 7 * P] = blob[pos : pos + 7 * P]
        pw.add_run(vaddr, 7 * P)
        expect[vaddr] = blob[pos : pos + 7 * P]
        pos += 7 * P
        vaddr += 7 * P  # adjacent: merged with the previous run
        pw.write(vaddr, blob[pos : pos + 20 * P])
        expect[vaddr] = blob[pos : pos + 20 * P]
        pos += 20 * P
        with pytest.raises(ValueError, match="address order"):
            pw.write(0x1000, bytes(P))
        with pytest.raises(ValueError, match="only 0 bytes are reserved"):
            pw.add_run(vaddr + 64 * P, P)
        with pytest.raises(ValueError, match="page"):
            pw.reserve(100)
        rec = pw.close()
    raw = (tmp_path / "pages-9.img").read_bytes()
    assert raw == blob[:pos]
    assert stat.S_IMODE(os.stat(tmp_path / "pages-9.img").st_mode) == 0o600
    assert rec["size"] == pos and rec["crc32"] == zlib.crc32(raw)
    assert rec["nr_runs"] == 4 and rec["nr_pages"] == pos // P
    (tmp_path / "pagemap-9.img").write_bytes(
        envelope.pack(schema.PAGEMAP.id, schema.encode("pagemap", rec))
    )
    with PageReader(str(tmp_path), 9) as pr:
        pr.verify()
        assert [r.flags for r in pr.runs] == [PE_PRESENT] * 4
        got = {}
        for va, view in pr.segments():
            got[va] = bytes(view)
        # runs 4 and 5 were merged: split expectations the same way
        merged = {}
        for va in sorted(expect):
            last = max(merged, default=None)
            if last is not None and last + len(merged[last]) == va:
                merged[last] += expect[va]
            else:
                merged[va] = expect[va]
        assert got == merged
        va4 = sorted(expect)[3]
        assert pr.read(va4 + P, 10 * P) == (expect[va4] + expect[va4 + 7 * P])[P : 11 * P]
        with pytest.raises(ImageError, match="is not in the image"):
            pr.read(0x7F0000000000 + P, P)


@pytest.mark.parametrize("mode", ["buffer", "mmap"])
def test_page_writer_abort_removes_file(tmp_path, mode):
    with PageWriter(str(tmp_path), 3, mode=mode) as pw:
        pw.write(0, bytes(4 * P))
    assert not (tmp_path / "pages-3.img").exists()


@pytest.mark.parametrize("mode", ["buffer", "mmap"])
def test_page_writer_full_disk_is_a_checkpoint_error(tmp_path, monkeypatch, mode):
    def no_space(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    monkeypatch.setattr(os, "write", no_space)
    with PageWriter(str(tmp_path), 3, mode=mode) as pw:
        with pytest.raises(CheckpointError, match="No space"):
            pw.write(0, bytes(P))
            pw.close()
    assert not (tmp_path / "pages-3.img").exists()


def test_empty_page_file(tmp_path):
    img = tmp_path / "img"
    with ImageWriter(str(img), 101) as w:
        w.pages(1).close()
        w.commit()
    with ImageReader(str(img)).pages(1) as pr:
        assert pr.runs == [] and list(pr.segments()) == []
        pr.verify()


def _predump_chain(tmp_path):
    """parent: pages A B C at 0x10000..; child: B changed, A and C in the parent."""
    rng = random.Random(3)
    a, b, c, b2, d = (rng.randbytes(2 * P) for _ in range(5))
    parent = tmp_path / "pre1"
    with ImageWriter(str(parent), 101, kind="predump") as w:
        _pages_dump(w, 1, [(0x10000, a), (0x10000 + 2 * P, b), (0x40000, c)])
        w.commit()
    child = tmp_path / "dump"
    with ImageWriter(str(child), 101, parent=str(parent)) as w:
        with w.pages(1) as pw:
            pw.add_parent_run(0x10000, 2 * P)
            pw.write(0x10000 + 2 * P, b2)
            pw.add_parent_run(0x40000, 2 * P)
            pw.write(0x80000, d)
            pw.close()
        w.commit()
    return parent, child, {"a": a, "b": b, "c": c, "b2": b2, "d": d}


def test_parent_linked_pagemap(tmp_path):
    parent, child, p = _predump_chain(tmp_path)
    assert os.readlink(child / "parent") == "../pre1"
    r = ImageReader(str(child), expect_ctid=101)
    assert r.inventory["parent"] == "parent"
    with r.pages(1) as pr:
        assert [(run.vaddr, run.flags) for run in pr.runs] == [
            (0x10000, PE_PARENT),
            (0x10000 + 2 * P, PE_PRESENT),
            (0x40000, PE_PARENT),
            (0x80000, PE_PRESENT),
        ]
        assert pr.record["nr_parent_pages"] == 4 and pr.record["nr_pages"] == 4
        assert pr.read(0x10000, 4 * P) == p["a"] + p["b2"]
        assert pr.read(0x10000 + P, 2 * P) == p["a"][P:] + p["b2"][:P]
        whole = b"".join(bytes(v) for _, v in pr.segments())
        assert whole == p["a"] + p["b2"] + p["c"] + p["d"]
        pr.verify()
    # The standalone reader follows the symlink the same way.
    with PageReader(str(child), 1) as pr:
        assert pr.read(0x40000, 2 * P) == p["c"]
    summary = inspect.verify(str(child))
    assert summary["parent"]["path"] == str(parent)


def test_parent_run_missing_from_parent(tmp_path):
    parent, child, _ = _predump_chain(tmp_path)
    rec = ImageReader(str(child)).read("pagemap", 1)
    runs = bytearray(rec["runs"])
    Run_ = Run(0x90000, 1, 0, PE_PARENT)  # the parent has nothing at 0x90000
    rec["runs"] = bytes(runs) + b"".join(
        v.to_bytes(8, "little") for v in (Run_.vaddr, Run_.nr_pages, Run_.offset, Run_.flags)
    )
    rec["nr_runs"] += 1
    _replace_file(child, "pagemap-1.img", envelope.pack(40, schema.encode("pagemap", rec)))
    with pytest.raises(ImageError, match="page 0x90000 of 1 is not in the image"):
        inspect.verify(str(child))


def test_parent_replaced_or_of_another_ct(tmp_path):
    parent, child, _ = _predump_chain(tmp_path)
    other = tmp_path / "other"
    _small_image(other, ctid=101)
    os.unlink(child / "parent")
    os.symlink("../other", child / "parent")
    with pytest.raises(ImageError, match="not the image it was dumped against"):
        ImageReader(str(child)).verify()
    with pytest.raises(CheckpointError, match="as parent image: .*belongs to CT 101, not 55"):
        ImageWriter(str(tmp_path / "x"), 55, parent=str(parent))
    assert not (tmp_path / "x").exists()
    os.unlink(child / "parent")
    with pytest.raises(ImageError, match="does not exist"):
        ImageReader(str(child)).verify()


def test_bad_runs_are_refused(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    rec = ImageReader(str(img)).read("pagemap", 1)
    for runs, msg in (
        (Run(0x400001, 1, 0, PE_PRESENT), "misaligned"),
        (Run(0x400000, 9, 0, PE_PRESENT), "beyond the end"),
        (Run(0x400000, 1, 0, 3), "flags"),
    ):
        bad = dict(rec, runs=b"".join(v.to_bytes(8, "little") for v in runs))
        _replace_file(img, "pagemap-1.img", envelope.pack(40, schema.encode("pagemap", bad)))
        with pytest.raises(ImageError, match=msg):
            ImageReader(str(img)).pages(1)


# --- inspector and CLI ------------------------------------------------------------


def test_show(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    (img / "dump.log").write_text("a log someone left\n")
    s = inspect.show(str(img), pages=True)
    json.dumps(s)  # JSON-able
    assert s["format"] == "1.0" and s["inventory"]["ctid"] == "101"
    assert s["processes"]["task-1.img"]["comm"] == "init"
    assert s["threads"]["thread-1.img"]["regs"]["ip"] == hex(_sample(schema.X86_REGS)["ip"])
    pm = s["memory"]["pagemap-1.img"]
    assert pm["runs"] == [{"vaddr": "0x400000", "nr_pages": 3, "in": "image", "offset": 0}]
    assert "runs" not in inspect.show(str(img))["memory"]["pagemap-1.img"]
    assert s["unlisted"] == ["dump.log"]


def _cli(*args):
    return CliRunner().invoke(vzimage.main, list(args))


def test_cli_show_prints_json(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    res = _cli("show", str(img), "--pages")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["processes"]["pstree.img"]["tasks"][0]["pid"] == 1
    assert data["memory"]["pagemap-1.img"]["runs"][0]["nr_pages"] == 3


def test_cli_verify_good(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    res = _cli("verify", str(img))
    size = sum(os.path.getsize(img / n) for n in os.listdir(img))
    assert res.exit_code == 0
    assert res.stdout == f"Image {img} verified: 6 files, {size} bytes\n"


def _break_magic(img):
    _replace_file(img, "task-1.img", b"NOTVZPY!" + (img / "task-1.img").read_bytes()[8:])


def _newer_major(img):
    _write_inventory(img, _load_inventory(img), major=2)


BREAKERS = {
    "no inventory": lambda img: os.unlink(img / INVENTORY_NAME),
    "missing file": lambda img: os.unlink(img / "thread-1.img"),
    "body byte": lambda img: _flip(img / "task-1.img", 25),
    "trailer byte": lambda img: _flip(img / "task-1.img", os.path.getsize(img / "task-1.img") - 1),
    "page byte": lambda img: _flip(img / "pages-1.img", 5),
    "truncated": lambda img: os.truncate(img / "pagemap-1.img", 20),
    "bad magic": _break_magic,
    "newer major": _newer_major,
    "mode": lambda img: os.chmod(img / "task-1.img", 0o644),
    "not there": lambda img: os.rename(img, str(img) + ".gone"),
}


@pytest.mark.parametrize("kind", sorted(BREAKERS))
def test_cli_verify_bad(tmp_path, kind):
    img = tmp_path / "img"
    _small_image(img)
    BREAKERS[kind](img)
    res = _cli("verify", str(img))
    assert res.exit_code == VZ_RESTORE_ERROR == 17
    assert res.stdout == ""
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("vzimage: "), res.stderr
    assert "Traceback" not in res.output


def test_cli_other_ct(tmp_path):
    img = tmp_path / "img"
    _small_image(img, ctid=102)
    res = _cli("verify", "--ctid", "101", str(img))
    assert res.exit_code == 17
    assert res.stderr == f"vzimage: image {img} belongs to CT 102, not 101\n"
    res = _cli("show", "--ctid", "101", str(img))
    assert res.exit_code == 17 and res.stdout == ""


def test_cli_subprocess_no_traceback(tmp_path):
    img = tmp_path / "img"
    _small_image(img)
    _flip(img / "pstree.img", 26)
    cmd = [sys.executable, "-m", "vzpy.cli.vzimage"]
    res = subprocess.run([*cmd, "verify", str(img)], capture_output=True, text=True)
    assert res.returncode == 17
    assert res.stderr.startswith(f"vzimage: image file {img}/pstree.img: checksum mismatch")
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr
    res = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "show" in res.stdout and "verify" in res.stdout


def test_format_doc_tables_match_the_schema():
    doc = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "image-format.md")
    with open(doc) as f:
        text = f.read()
    seen = set()
    rt = None
    for line in text.splitlines():
        if line.startswith("#### `"):
            name, rest = line[6:].split("`", 1)
            rt = schema.RECORDS[name]
            assert f"(id {rt.id}, {rt.category})" in rest, line
            seen.add(name)
        elif rt is not None and line.startswith("| ") and line[2].isdigit():
            tag, name, type_, req = (c.strip() for c in line.strip("|").split("|")[:4])
            f = rt.by_tag[int(tag)]
            assert (f.name, f.type, not f.optional) == (name, type_, req == "yes"), line
    assert seen == {r.name for r in CORE_TYPES}
