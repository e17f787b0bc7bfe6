"""What a checkpoint holds, as JSON-able data, and a full integrity check.

The library side of ``vzimage``: ``show()`` decodes every record of an image
by field name and groups the files by what they describe; ``verify()``
checks everything ``ImageReader.verify`` checks, parents included.
"""

from __future__ import annotations

import os
from typing import Any

from vzpy.images import schema
from vzpy.images.image import INVENTORY_NAME, ImageReader
from vzpy.images.pages import PARENT_LINK, unpack_runs

# Byte strings up to this long are shown in hex; longer ones by length only.
MAX_HEX = 256

# show() output section for each record category.
SECTIONS = {
    "process": "processes",
    "thread": "threads",
    "memory": "memory",
    "fd": "fds",
    "file": "files",
    "socket": "sockets",
    "namespace": "namespaces",
    "mount": "mounts",
    "image": "other",
    "other": "other",
}


def show(path: str, pages: bool = False, *, expect_ctid: int | str | None = None) -> dict:
    """Every record of the image at ``path``, decoded, as JSON-able data.

    Keys: ``image``, ``format``, ``inventory``, then one section per kind of
    record (``processes``, ``threads``, ``memory``, ``fds``, ``files``,
    ``sockets``, ``namespaces``, ``mounts``, ``other``) mapping file name to
    record, ``unknown`` for files of record types this vzpy does not know and
    ``unlisted`` for files in the directory the inventory does not list.
    Integers flagged as addresses or masks are shown as hex strings, byte
    strings as ``{"len": N, "hex": ...}`` (hex only up to 256 bytes).  With
    ``pages``, each pagemap also lists its runs.
    """
    schema.load_schemas()
    r = ImageReader(path, expect_ctid=expect_ctid, verify=False, allow_unknown=True)
    out: dict[str, Any] = {
        "image": r.path,
        "format": f"{r.format[0]}.{r.format[1]}",
        "inventory": _record_json(schema.INVENTORY, r.inventory),
    }
    for section in dict.fromkeys(SECTIONS.values()):
        out[section] = {}
    out["unknown"] = {}
    for fname, entry in r.files.items():
        if entry["type_id"] == schema.PAGES_TYPE_ID:
            out["memory"][fname] = {"size": entry["size"], "crc32": f"{entry['crc32']:08x}"}
            continue
        rt = schema.RECORDS_BY_ID.get(entry["type_id"])
        if rt is None:
            out["unknown"][fname] = {
                "type": entry["type"],
                "type_id": entry["type_id"],
                "size": entry["size"],
            }
            continue
        rec = r.read_file(fname)
        if rt is schema.PAGEMAP:
            out["memory"][fname] = _pagemap_json(rec, os.path.join(r.path, fname), pages)
        else:
            out[SECTIONS[rt.category]][fname] = _record_json(rt, rec)
    listed = set(r.files) | {INVENTORY_NAME, PARENT_LINK}
    out["unlisted"] = sorted(set(os.listdir(r.path)) - listed)
    return out


def verify(path: str, *, expect_ctid: int | str | None = None) -> dict[str, Any]:
    """Check the image at ``path`` completely; raises ImageError on the first fault.

    Returns ``ImageReader.verify``'s summary (files, bytes, parent...).
    """
    schema.load_schemas()
    return ImageReader(path, expect_ctid=expect_ctid, verify=False).verify()


def _pagemap_json(rec: dict[str, Any], where: str, pages: bool) -> dict[str, Any]:
    out = _record_json(schema.PAGEMAP, rec)
    del out["runs"]
    if pages:
        out["runs"] = [
            {
                "vaddr": f"{run.vaddr:#x}",
                "nr_pages": run.nr_pages,
                "in": "parent" if run.in_parent else "image",
                **({} if run.in_parent else {"offset": run.offset}),
            }
            for run in unpack_runs(rec, where)
        ]
    return out


def _record_json(rt: schema.RecordType, rec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "_type" in rec:
        out["_type"] = rec["_type"]
    for f in rt.fields:
        v = rec.get(f.name)
        if v is None or v == []:
            continue
        out[f.name] = _value_json(f, f.type, v)
    return out


def _value_json(f: schema.Field, t: str, v: Any) -> Any:
    if t.startswith("list["):
        return [_value_json(f, t[5:-1], x) for x in v]
    if t == "record":
        if v.get("_type") is None:  # a nested record of a type this vzpy does not know
            return {"_type_id": v["_type_id"], "_raw": _any_json(v["_raw"])}
        return _record_json(schema.record_type(v["_type"]), v)
    if t in schema.RECORDS:
        return _record_json(schema.RECORDS[t], v)
    if t == "uint" and f.hex:
        return f"{v:#x}"
    if t in ("bytes", "any"):
        return _any_json(v)
    return v


def _any_json(v: Any) -> Any:
    if isinstance(v, bytes):
        out: dict[str, Any] = {"len": len(v)}
        if len(v) <= MAX_HEX:
            out["hex"] = v.hex()
        return out
    if isinstance(v, dict):
        return {str(k): _any_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_any_json(x) for x in v]
    return v
