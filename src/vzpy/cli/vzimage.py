"""vzimage: show and verify vzpy checkpoint images (our counterpart of CRIU's crit)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

import click

from vzpy.errors import VzError
from vzpy.images import inspect


def _run(fn: Callable[[], None]) -> None:
    # Errors the tool expects (a damaged, foreign or missing image) are one
    # line on stderr and the error's vzctl exit code (ImageError: 17).
    try:
        fn()
    except VzError as err:
        click.echo(f"vzimage: {err}", err=True)
        sys.exit(err.exit_code)
    except BrokenPipeError:
        # `vzimage show DIR | head`: the reader left; not an error.
        sys.stderr.close()
        sys.exit(0)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Show and verify vzpy checkpoint images: the directories `vzctl chkpnt` writes.",
)
def main() -> None:
    pass


@main.command(
    "show",
    short_help="Print what a checkpoint holds, as JSON.",
    help=(
        "Print, as JSON, what the checkpoint directory DIR holds: its inventory, then every "
        "record decoded by field name, grouped as processes, threads, memory, fds, files, "
        "sockets, namespaces, mounts and other. Addresses and masks are hex strings; byte "
        "strings show their length, and their hex when at most 256 bytes long. Each metadata "
        "file is checked against its inventory checksum as it is read; use `vzimage verify` "
        "for a full check. Exits 17 if DIR is not a readable checkpoint."
    ),
)
@click.argument("directory", metavar="DIR")
@click.option(
    "--pages",
    is_flag=True,
    help="Also list each pagemap's runs: address, page count, and whether the pages are "
    "in this image (with their offset in the page file) or in the parent image.",
)
@click.option("--ctid", metavar="CTID", help="Refuse the image unless it belongs to CT CTID.")
def show_cmd(directory: str, pages: bool, ctid: str | None) -> None:
    def body() -> None:
        data = inspect.show(directory, pages=pages, expect_ctid=ctid)
        click.echo(json.dumps(data, indent=2))

    _run(body)


@main.command(
    "verify",
    short_help="Check a checkpoint's integrity completely.",
    help=(
        "Check the checkpoint directory DIR completely: the inventory exists, every file it "
        "lists is present with its size and crc32, every metadata file has the right magic, "
        "a format version this vzpy reads and a valid checksum, every record fits its schema, "
        "page runs are consistent and the pages kept in parent images can be found, and "
        "neither the files nor the directory grant any access to group or others (they "
        "are written 0600 and 0700); parent images are verified the same way. "
        "Prints 'Image DIR verified: N files, M bytes' (N and M count DIR itself, inventory "
        "included), or one line on stderr and exits 17 on the first fault."
    ),
)
@click.argument("directory", metavar="DIR")
@click.option("--ctid", metavar="CTID", help="Refuse the image unless it belongs to CT CTID.")
def verify_cmd(directory: str, ctid: str | None) -> None:
    def body() -> None:
        s = inspect.verify(directory, expect_ctid=ctid)
        click.echo(f"Image {directory} verified: {s['files']} files, {s['bytes']} bytes")

    _run(body)


if __name__ == "__main__":
    main()
