"""What every console script shares: error mapping and exit codes in one place."""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable

import click

from ..errors import VZ_SYSTEM_ERROR, VzError


def fail(msg: str, code: int) -> None:
    print(msg, file=sys.stderr, flush=True)
    sys.exit(code)


def run_mapped(fn: Callable[[], int | None], prefix: str = "") -> int:
    """Run fn; turn every error into one stderr line and an exit code, never a traceback."""
    try:
        rc = fn()
        return int(rc or 0)
    except VzError as e:
        print(f"{prefix}{e.message}", file=sys.stderr, flush=True)
        return e.exit_code
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        print(f"{prefix}{e.format_message()}", file=sys.stderr, flush=True)
        return 20
    except (KeyboardInterrupt, click.exceptions.Abort):
        print("Cancelled", file=sys.stderr, flush=True)
        return VZ_SYSTEM_ERROR
    except PermissionError as e:
        print(f"{prefix}Permission denied: {e.filename or e}", file=sys.stderr, flush=True)
        return 12
    except OSError as e:
        if e.errno == errno.EPIPE:
            return 0
        where = f": {e.filename}" if getattr(e, "filename", None) else ""
        print(f"{prefix}System error: {e.strerror or e}{where}", file=sys.stderr, flush=True)
        return VZ_SYSTEM_ERROR
    except Exception as e:  # last resort: the admin still gets one line, not a traceback
        if os.environ.get("VZPY_DEBUG"):
            raise
        print(f"{prefix}Internal error: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return VZ_SYSTEM_ERROR


def require_root(prog: str) -> None:
    if os.geteuid() != 0:
        fail("This program can only be run under root.", 12 if prog == "vzctl" else 1)
