"""Regenerate Appendix A of docs/image-format.md from src/vzpy/images/schema.py.

python3 tools/gen_image_doc.py      # rewrites the appendix in place
"""

from __future__ import annotations

import os
import sys

from vzpy.images import schema

DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "image-format.md")
MARK = "## Appendix A."


def appendix() -> str:
    out = [
        "## Appendix A. Core record types of format 1.0",
        "",
        "Generated from `src/vzpy/images/schema.py` (`python3 tools/gen_image_doc.py`), which is",
        "authoritative; the unit tests check that every row below still matches it.",
        '"req" marks required fields; "(hex)" marks values the inspector shows in hexadecimal.',
        "",
    ]
    core = sorted(
        (r for r in schema.RECORDS.values() if r.id < schema.FIRST_MODULE_ID), key=lambda r: r.id
    )
    for rt in core:
        out.append(f"#### `{rt.name}` (id {rt.id}, {rt.category})")
        out.append("")
        if rt.doc:
            doc = rt.doc[0].upper() + rt.doc[1:]
            out.append(doc if doc.endswith(".") else doc + ".")
            out.append("")
        out.append("| tag | field | type | req | notes |")
        out.append("|---|---|---|---|---|")
        for f in sorted(rt.fields, key=lambda f: f.tag):
            notes = f.doc + (" (hex)" if f.hex else "")
            out.append(
                f"| {f.tag} | {f.name} | {f.type} | {'' if f.optional else 'yes'} | {notes.strip()} |"
            )
        out.append("")
    return "\n".join(out)


def main() -> int:
    with open(DOC) as f:
        text = f.read()
    head = text.split(MARK)[0]
    with open(DOC, "w") as f:
        f.write(head + appendix())
    return 0


if __name__ == "__main__":
    sys.exit(main())
