"""Set up a node's configuration directory: vz.conf, samples, directories.

``python -m vzpy.node init`` writes ``/etc/vz/vz.conf`` (or ``$VZ_CONFDIR``) if
there is none, copies the sample configs, and creates the directories vz.conf
names.  ``--vzdir DIR`` moves every path under DIR (``DIR/private/$VEID``...),
which is how tests and a second node on one machine get their own tree.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from importlib import resources

from .config import ConfFile

DATA = resources.files("vzpy") / "data"
SAMPLES = ("ve-basic.conf-sample", "ve-vswap-256m.conf-sample")


def init_node(
    confdir: str,
    vzdir: str | None = None,
    overrides: dict[str, str] | None = None,
    force: bool = False,
) -> str:
    """Create confdir with vz.conf and samples; return the vz.conf path."""
    os.makedirs(os.path.join(confdir, "conf"), exist_ok=True)
    os.makedirs(os.path.join(confdir, "names"), exist_ok=True)
    path = os.path.join(confdir, "vz.conf")
    if not os.path.exists(path) or force:
        conf = ConfFile.parse((DATA / "vz.conf").read_text(), path)
        conf.lines = (DATA / "vz.conf").read_text().splitlines()
        if vzdir:
            for key, sub in (
                ("LOCKDIR", "lock"),
                ("DUMPDIR", "dump"),
                ("TEMPLATE", "template"),
                ("VE_ROOT", "root/$VEID"),
                ("VE_PRIVATE", "private/$VEID"),
            ):
                conf.set(key, os.path.join(vzdir, sub))
            conf.set("LOGFILE", os.path.join(vzdir, "vzctl.log"))
        for k, v in (overrides or {}).items():
            conf.set(k, v)
        conf.save(path)
    for name in SAMPLES:
        dst = os.path.join(confdir, "conf", name)
        if not os.path.exists(dst):
            with (DATA / name).open("rb") as src, open(dst, "wb") as out:
                shutil.copyfileobj(src, out)
    conf = ConfFile.load(path)
    for key in ("LOCKDIR", "DUMPDIR", "TEMPLATE"):
        d = conf.get(key)
        if d:
            os.makedirs(d, exist_ok=True)
    tmpl = conf.get("TEMPLATE")
    if tmpl:
        os.makedirs(os.path.join(tmpl, "cache"), exist_ok=True)
    for key in ("VE_ROOT", "VE_PRIVATE"):
        d = conf.get(key)
        if d:
            os.makedirs(os.path.dirname(d.replace("$VEID", "x")), exist_ok=True)
    dd = conf.get("DUMPDIR")
    if dd:
        os.chmod(dd, 0o700)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vzpy.node", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("init", help="write vz.conf and samples if missing")
    p.add_argument("--confdir", default=os.environ.get("VZ_CONFDIR", "/etc/vz"))
    p.add_argument("--vzdir", help="put every node path under this directory")
    p.add_argument("--force", action="store_true", help="overwrite an existing vz.conf")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    overrides = dict(s.split("=", 1) for s in args.set)
    path = init_node(args.confdir, args.vzdir, overrides, args.force)
    print(f"Node configuration: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
