"""Console and file messages, vzctl style.

Level 0 messages (the normal vzctl output) go to stdout unless --quiet; errors
go to stderr always; ``--verbose`` (repeatable) shows levels 1 and up.  When
vz.conf says ``LOGGING=yes``, every message is also appended to LOGFILE with a
timestamp and the vzctl pid, like vzctl's own log.
"""

from __future__ import annotations

import os
import sys
import time

_state = {"verbose": 0, "quiet": False, "logfile": None, "ctid": None}


def configure(
    verbose: int = 0, quiet: bool = False, logfile: str | None = None, ctid: int | None = None
) -> None:
    _state.update(verbose=verbose, quiet=quiet, logfile=logfile, ctid=ctid)


def _to_file(msg: str) -> None:
    path = _state["logfile"]
    if not path:
        return
    try:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        who = f"vzctl[{os.getpid()}]"
        ct = f" : CT {_state['ctid']}" if _state["ctid"] is not None else ""
        with open(path, "a") as f:
            f.write(f"{stamp} {who}{ct} : {msg}\n")
    except OSError:
        pass


def info(msg: str, level: int = 0) -> None:
    """A normal message (level 0), or a verbose one (level >= 1)."""
    _to_file(msg)
    if _state["quiet"] or level > _state["verbose"]:
        return
    print(msg, flush=True)


def debug(msg: str) -> None:
    info(msg, level=2)


def warning(msg: str) -> None:
    _to_file(msg)
    if not _state["quiet"]:
        print(msg, file=sys.stderr, flush=True)


def error(msg: str) -> None:
    _to_file(msg)
    print(msg, file=sys.stderr, flush=True)
