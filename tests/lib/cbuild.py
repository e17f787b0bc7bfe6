"""Compile small static C test programs, cached by source hash."""

from __future__ import annotations

import hashlib
import os
import subprocess

CACHE = os.environ.get("VZPY_CBUILD_CACHE", "/var/tmp/vzpy-cbuild")


def build_c(source: str, name: str = "prog", extra: list[str] | None = None) -> str:
    """Compile C `source` (text or a path ending in .c) statically; return the binary path."""
    if source.endswith(".c") and os.path.exists(source):
        with open(source) as f:
            text = f.read()
        name = os.path.splitext(os.path.basename(source))[0]
    else:
        text = source
    flags = ["-O1", "-g", "-static", "-pthread", "-Wall"] + (extra or [])
    digest = hashlib.sha256((text + repr(flags)).encode()).hexdigest()[:16]
    os.makedirs(CACHE, exist_ok=True)
    out = os.path.join(CACHE, f"{name}-{digest}")
    if os.path.exists(out):
        return out
    src = out + ".c"
    with open(src, "w") as f:
        f.write(text)
    tmp = out + f".tmp{os.getpid()}"
    subprocess.run(["gcc", *flags, "-o", tmp, src, "-lrt"], check=True)
    os.rename(tmp, out)
    return out
