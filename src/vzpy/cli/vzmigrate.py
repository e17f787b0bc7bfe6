"""vzmigrate: `vzmigrate [options] <destination_address> <CTID|name>` (vzctl-reference.md §4).

This module only parses arguments (getopt-style, like the 4.x script's
``vr:csf::th`` plus its long options) and prints usage; the migration lives
in ``vzpy.migrate``.  Usage errors exit 1; no arguments, ``-h``, ``--help`` or
``--usage`` print the usage and exit 0.

``--node-info CTID`` is not for people: it is the probe a source node runs
here over ssh during its pre-checks (prints this node's facts as JSON).
"""

from __future__ import annotations

import re
import shlex
import sys

from .. import __version__
from ..errors import MigrateError
from .common import require_root, run_mapped

USAGE = """\
Usage: vzmigrate [-r yes|no] [--ssh=<options>] [--rsync=<options>] [--keep-dst]
                 [--online|--live] [--check-only|--dry-run] [-f|--nodeps[=cpu,all]]
                 [--noiter] [--nokick] [-t|--times] [-v] <destination_address> <CTID|name>
Options:
  -r, --remove-area yes|no
        Whether to remove the container on the source node after a successful
        migration (default yes; with no, its config is renamed to CTID.conf.migrated).
  --ssh=<ssh options>
        Additional options for ssh (used for control, the image and rsync),
        e.g. --ssh="-i KEY -p 2222 -o UserKnownHostsFile=FILE". Do not pass the host.
  --rsync=<rsync options>
        Additional options for rsync.
  --keep-dst
        On failure, do not remove the already synced private area on the
        destination (a retry then copies only what changed).
  --online, --live
        Live migration: checkpoint, move and restore the running container.
  --check-only, --dry-run
        Only run the preliminary checks.
  --noiter
        Online: no iterative memory pre-copy (the whole memory is copied while
        the container is frozen).
  --nokick
        Online: after the resume, do not send the peers of the container's TCP
        connections an ICMP host-unreachable (RFC 6069) that makes them
        retransmit at once instead of after their backed-off timeout.
  -f, --nodeps[=cpu,all]
        Go on even if the CPU check fails (all checks if no argument).
  -t, --times
        Print the time of each stage and the total frozen time.
  -v    Verbose; repeat for more (implies -t).
  <destination_address>
        host, user@host, host:port, [IPv6]:port, or a Host from the ssh config.
"""

_NODEPS = re.compile(r"(cpu|ipv6|all)(,(cpu|ipv6|all))*")


class _Usage(Exception):
    pass


def parse_args(argv: list[str]):
    """Return MigrateOptions, or an int exit code for usage/help."""
    from ..migrate.phases import MigrateOptions

    if not argv:
        print(USAGE, end="")
        return 0
    o = {
        "online": False, "remove_area": True, "keep_dst": False, "ssh": None, "rsync": [],
        "check_only": False, "nodeps": set(), "times": False, "verbose": 0,
        "iterative": True, "kick": True,
    }  # fmt: skip
    pos: list[str] = []
    i = 0

    def value(opt: str, inline: str | None) -> str:
        nonlocal i
        if inline is not None:
            return inline
        if i >= len(argv):
            raise _Usage(f"option {opt} requires an argument")
        i += 1
        return argv[i - 1]

    def remove_area(v: str) -> None:
        if v not in ("yes", "no"):
            raise _Usage(f"-r/--remove-area takes yes or no, not {v!r}")
        o["remove_area"] = v == "yes"

    def nodeps(v: str | None) -> None:
        if v is None:
            o["nodeps"].add("all")
            return
        if not _NODEPS.fullmatch(v):
            raise _Usage(f"-f/--nodeps takes cpu, ipv6 or all, not {v!r}")
        o["nodeps"].update(v.split(","))

    while i < len(argv):
        a = argv[i]
        i += 1
        if a == "--":
            pos += argv[i:]
            break
        if a.startswith("--"):
            name, eq, inline = a[2:].partition("=")
            inl = inline if eq else None
            if name in ("help", "usage"):
                print(USAGE, end="")
                return 0
            if name == "version":
                print(f"vzmigrate version {__version__} (vzpy)")
                return 0
            if name in ("online", "live"):
                o["online"] = True
            elif name == "remove-area":
                remove_area(value(a, inl))
            elif name == "keep-dst":
                o["keep_dst"] = True
            elif name == "ssh":
                o["ssh"] = value(a, inl)
            elif name == "rsync":
                try:
                    o["rsync"] += shlex.split(value(a, inl))
                except ValueError as e:
                    raise _Usage(f"--rsync: {e}") from None
            elif name in ("check-only", "dry-run"):
                o["check_only"] = True
            elif name == "nodeps":
                nodeps(inl)
            elif name == "times":
                o["times"] = True
            elif name == "noiter":
                o["iterative"] = False
            elif name == "nokick":
                o["kick"] = False
            elif name == "ssh-mux":
                pass  # one paramiko connection carries everything anyway
            elif name in ("compact", "snapshot"):
                print(
                    f"Warning: --{name} applies to ploop containers only; ignored", file=sys.stderr
                )
            else:
                raise _Usage(f"unknown option {a}")
            continue
        if a.startswith("-") and len(a) > 1:
            j = 1
            while j < len(a):
                c = a[j]
                j += 1
                rest = a[j:] or None
                if c == "v":
                    o["verbose"] += 1
                elif c == "t":
                    o["times"] = True
                elif c in ("c", "s"):
                    print(
                        f"Warning: -{c} applies to ploop containers only; ignored", file=sys.stderr
                    )
                elif c == "h":
                    print(USAGE, end="")
                    return 0
                elif c == "r":
                    remove_area(value("-r", rest))
                    break
                elif c == "f":
                    # getopt's f:: takes only an attached value; "-f cpu" is accepted too.
                    if rest is None and i < len(argv) and _NODEPS.fullmatch(argv[i]):
                        rest = argv[i]
                        i += 1
                    nodeps(rest)
                    break
                else:
                    raise _Usage(f"invalid option -- '{c}'")
            continue
        pos.append(a)
    if len(pos) < 2:
        raise _Usage("not enough parameters")
    if len(pos) > 2:
        raise _Usage(f"too many parameters: {' '.join(pos[2:])}")
    if o["verbose"]:
        o["times"] = True
    return MigrateOptions(dest=pos[0], ct=pos[1], **o)


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--node-info"]:
        if len(argv) != 2 or not argv[1].isdigit():
            print("Usage: vzmigrate --node-info CTID", file=sys.stderr)
            return 1
        from ..migrate.checks import node_info_json

        print(node_info_json(int(argv[1])))
        return 0
    if argv[:1] == ["--agent"]:
        # The destination's end of a live migration (migrate/agent.py), run by
        # the source over ssh; it speaks a binary protocol on stdin/stdout.
        if len(argv) != 2 or not argv[1].isdigit():
            print("Usage: vzmigrate --agent CTID", file=sys.stderr)
            return 1
        require_root("vzmigrate")
        from ..migrate.agent import main as agent_main

        return agent_main(int(argv[1]))
    try:
        opts = parse_args(argv)
    except _Usage as e:
        print(f"Invalid usage: {e}", file=sys.stderr)
        print(USAGE, file=sys.stderr, end="")
        return 1
    if isinstance(opts, int):
        return opts
    from ..migrate.target import parse_dest, parse_ssh_opts

    try:
        parse_dest(opts.dest)
        parse_ssh_opts(opts.ssh)
    except MigrateError as e:
        print(f"Invalid usage: {e.message}", file=sys.stderr)
        return 1
    require_root("vzmigrate")
    from ..migrate.phases import migrate

    def body() -> int:
        try:
            return migrate(opts)
        except MigrateError as e:
            print(f"Error: {e.message}", file=sys.stderr, flush=True)
            return e.exit_code

    return run_mapped(body, prefix="Error: ")


def main(argv: list[str] | None = None) -> None:
    sys.exit(_main(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
