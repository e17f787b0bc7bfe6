"""vzctl: `vzctl [flags] <command> <CTID|name> [options]` (vzctl-reference.md §1).

This module only parses arguments and prints; behaviour lives in the library.
Global flags come before the command; usage errors exit 20, bad values 21.
"""

from __future__ import annotations

import signal
import sys

import click

from .. import __version__, log
from ..config import VzConfig, parse_ctid
from ..container.ct import Container
from ..container.lock import CtLock
from ..errors import (
    VZ_EXEC_ERROR,
    VZ_INVALID_PARAMETER_SYNTAX,
    VZ_INVALID_PARAMETER_VALUE,
    VZ_NO_CONFFILE,
    BadValueError,
    UsageError,
    VzError,
)
from .common import require_root, run_mapped

USAGE = """\
Usage: vzctl [options] <command> <ctid> [parameters]
vzctl create <ctid> [--ostemplate <name>] [--config <name>] [--private <path>]
   [--root <path>] [--ipadd <addr>] [--hostname <name>] [--name <name>]
vzctl start <ctid> [--wait] [--force]
vzctl stop <ctid> [--fast] [--skip-umount]
vzctl restart <ctid> [--wait] [--force] [--fast] [--skip-umount]
vzctl destroy | mount | umount | status <ctid>
vzctl exec | exec2 <ctid> <command> [arg ...]
vzctl enter <ctid> [--exec <command> [arg ...]]
vzctl chkpnt <ctid> [--dumpfile <dir>] [--suspend | --dump | --kill | --resume]
vzctl restore <ctid> [--dumpfile <dir>] [--undump | --kill | --resume]
vzctl set <ctid> [--save] [--ipadd <addr>] [--ipdel <addr>|all]
   [--hostname <name>] [--nameserver <addr>] [--searchdomain <name>]
   [--onboot yes|no] [--name <name>] [--description <text>] [--disabled yes|no]
   [--ram <bytes>] [--swap <bytes>] [--numproc <n[:n]>] [--cpulimit <n[%]>]
   [--cpus <n>] [--cpuunits <n>] [--capability <name>:on|off] [--stop-timeout <s>]
   [--root <path>] [--private <path>]

Options (before the command):
  --quiet        no console output except errors
  --verbose      more output (repeatable)
  --skiplock     do not take the container lock
  --version      print the version and exit
  --help         print this help and exit
Run `vzctl <command> --help` for a command's options.
"""

NEEDS_CONFIG = {
    "start", "stop", "restart", "destroy", "delete", "mount", "umount", "exec", "exec2",
    "enter", "chkpnt", "suspend", "restore", "resume",
}  # fmt: skip
NO_LOCK = {"exec", "exec2", "enter", "status"}


class Ctx:
    def __init__(self, ctid: int, cmd: str, skiplock: bool) -> None:
        self.ctid = ctid
        self.cmd = cmd
        self.skiplock = skiplock
        self.cfg = VzConfig.load(ctid)
        self.ct = Container(ctid, self.cfg)

    def lock(self) -> CtLock:
        return CtLock(
            self.cfg.lockdir, self.ctid, self.cmd, skip=self.skiplock or self.cmd in NO_LOCK
        )


def _cmd(name: str, **kw):
    return click.command(name=name, context_settings={"help_option_names": ["--help"]}, **kw)


# --- commands -----------------------------------------------------------------------


@_cmd("create", help="Create a container's private area from an OS template.")
@click.option("--ostemplate", help="OS template name (TEMPLATE/cache/NAME.tar.*)")
@click.option("--config", "sample", help="apply conf/ve-NAME.conf-sample")
@click.option("--layout", type=click.Choice(["simfs"]), help="private area layout (only simfs)")
@click.option("--private", help="VE_PRIVATE (may contain $VEID)")
@click.option("--root", help="VE_ROOT (may contain $VEID)")
@click.option("--ipadd", multiple=True, help="IP address (repeatable)")
@click.option("--hostname", help="host name")
@click.option("--name", help="container name")
@click.pass_obj
def create_cmd(c: Ctx, ostemplate, sample, layout, private, root, ipadd, hostname, name):
    with c.lock():
        c.ct.create(ostemplate, sample, private, root, list(ipadd), hostname, name)


@_cmd("start", help="Start a container (restores it if Dump.CTID exists).")
@click.option("--wait", is_flag=True, help="wait until the container has started")
@click.option("--force", is_flag=True, help="start even if DISABLED=yes")
@click.option("--skip-fsck", is_flag=True, help="accepted for compatibility")
@click.option("--skip-remount", is_flag=True, help="accepted for compatibility")
@click.pass_obj
def start_cmd(c: Ctx, wait, force, skip_fsck, skip_remount):
    with c.lock():
        c.ct.start(wait=wait, force=force)


@_cmd("stop", help="Stop a container: graceful halt, then kill after STOP_TIMEOUT.")
@click.option("--fast", is_flag=True, help="kill at once, no clean halt")
@click.option("--skip-umount", is_flag=True, help="leave the container mounted")
@click.pass_obj
def stop_cmd(c: Ctx, fast, skip_umount):
    with c.lock():
        c.ct.stop(fast=fast, skip_umount=skip_umount)


@_cmd("restart", help="Stop the container if running, then start it.")
@click.option("--wait", is_flag=True)
@click.option("--force", is_flag=True)
@click.option("--fast", is_flag=True)
@click.option("--skip-umount", is_flag=True)
@click.option("--skip-fsck", is_flag=True)
@click.option("--skip-remount", is_flag=True)
@click.pass_obj
def restart_cmd(c: Ctx, wait, force, fast, skip_umount, skip_fsck, skip_remount):
    with c.lock():
        log.info("Restarting container")
        if c.ct.is_running():
            c.ct.stop(fast=fast, skip_umount=skip_umount)
        c.ct.start(wait=wait, force=force)


@_cmd("status", help="Print: CTID <id> exist|deleted mounted|unmounted running|down [suspended]")
@click.pass_obj
def status_cmd(c: Ctx):
    print(c.ct.status_line())


@_cmd("mount", help="Mount the container's private area on VE_ROOT.")
@click.pass_obj
def mount_cmd(c: Ctx):
    with c.lock():
        c.ct.mount()


@_cmd("umount", help="Unmount a stopped container's VE_ROOT.")
@click.pass_obj
def umount_cmd(c: Ctx):
    with c.lock():
        c.ct.umount()


@_cmd("destroy", help="Delete a stopped container's private area and config.")
@click.pass_obj
def destroy_cmd(c: Ctx):
    with c.lock():
        c.ct.destroy()


def _exec_common(c: Ctx, args: tuple[str, ...], own_rc: bool) -> int:
    from ..container.enter import _shell_argv, exec_in

    if not args:
        raise UsageError("No command specified")
    if not c.ct.is_running():
        raise VzError("Container is not running", exit_code=31)
    if list(args) == ["-"]:
        data = sys.stdin.buffer.read()
        argv = _shell_argv(c.ct, ["sh"])[:1] + ["-s"]
        rc = exec_in(c.ct, argv, stdin_data=data)
    else:
        rc = exec_in(c.ct, _shell_argv(c.ct, list(args)))
    if own_rc:
        return rc
    return VZ_EXEC_ERROR if rc != 0 else 0


_PASS = {"ignore_unknown_options": True, "allow_interspersed_args": False, "help_option_names": []}


@click.command(
    "exec",
    context_settings=_PASS,
    help="Run a command (joined by spaces) with sh -c inside the container.",
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def exec_cmd(c: Ctx, args):
    return _exec_common(c, args, own_rc=False)


@click.command(
    "exec2", context_settings=_PASS, help="Like exec, but exit with the command's own exit code."
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def exec2_cmd(c: Ctx, args):
    return _exec_common(c, args, own_rc=True)


@click.command("enter", context_settings=_PASS, help="Open a root shell inside the container.")
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def enter_cmd(c: Ctx, args):
    from ..container.enter import enter

    exec_args = None
    if args:
        if args[0] != "--exec":
            raise UsageError(f"Invalid option: {args[0]}")
        exec_args = list(args[1:])
    if not c.ct.is_running():
        raise VzError("Container is not running", exit_code=31)
    return enter(c.ct, exec_args)


@_cmd("set", help="Change container parameters; --save writes them to CTID.conf.")
@click.option("--save", is_flag=True, help="save to the container config file")
@click.option("--force", is_flag=True, help="accepted for compatibility")
@click.option(
    "--setmode", type=click.Choice(["restart", "ignore"]), help="for restart-only parameters"
)
@click.option("--ipadd", multiple=True)
@click.option("--ipdel", multiple=True)
@click.option("--hostname")
@click.option("--nameserver", multiple=True)
@click.option("--searchdomain", multiple=True)
@click.option("--onboot")
@click.option("--name")
@click.option("--description")
@click.option("--disabled")
@click.option("--root")
@click.option("--private")
@click.option("--stop-timeout")
@click.option("--ram")
@click.option("--swap")
@click.option("--numproc")
@click.option("--cpulimit")
@click.option("--cpus")
@click.option("--cpuunits")
@click.option("--capability", multiple=True)
@click.pass_obj
def set_cmd(c: Ctx, save, force, setmode, **kw):
    from ..container.params import SetRequest, set_params

    for k in ("ipadd", "ipdel", "nameserver", "searchdomain", "capability"):
        kw[k] = list(kw[k])
    req = SetRequest(**kw)
    if not any(v for v in kw.values() if v not in (None, [], ())):
        raise UsageError("Nothing to set")
    if c.ctid == 0:
        raise BadValueError("Only set actions are allowed for CT0, and none is supported yet")
    if (req.name or req.stop_timeout) and not save:
        raise UsageError("--name and --stop-timeout need --save")
    with c.lock():
        set_params(c.ct, req, save)


def _one_subcommand(flags: dict[str, bool]) -> str | None:
    chosen = [k for k, v in flags.items() if v]
    if len(chosen) > 1:
        raise UsageError("Invalid syntax: only one sub command may be used")
    return chosen[0] if chosen else None


@_cmd("chkpnt", help="Checkpoint a running container (suspend, dump, kill).")
@click.option("--dumpfile", help="image directory (default DUMPDIR/Dump.CTID)")
@click.option("--suspend", is_flag=True, help="only freeze the container")
@click.option("--dump", is_flag=True, help="dump a frozen container (needs --dumpfile)")
@click.option("--kill", is_flag=True, help="kill a frozen container")
@click.option("--resume", is_flag=True, help="thaw a frozen container")
@click.option("--flags", help="accepted for compatibility")
@click.option("--context", help="accepted for compatibility")
@click.option("--skip_arpdetect", is_flag=True, help="accepted for compatibility")
@click.option("--keep-running", is_flag=True, help="dump and let the container run on (no kill)")
@click.pass_obj
def chkpnt_cmd(
    c: Ctx, dumpfile, suspend, dump, kill, resume, flags, context, skip_arpdetect, keep_running
):
    from ..checkpoint import driver

    sub = _one_subcommand({"suspend": suspend, "dump": dump, "kill": kill, "resume": resume})
    if sub == "dump" and not dumpfile:
        raise UsageError("Error: dumpfile is not specified")
    with c.lock():
        driver.chkpnt_command(c.ct, sub, dumpfile, keep_running=keep_running)


@_cmd("restore", help="Restore a container from a checkpoint (undump, resume).")
@click.option("--dumpfile", help="image directory (default DUMPDIR/Dump.CTID)")
@click.option("--undump", is_flag=True, help="rebuild the container and leave it frozen")
@click.option("--kill", is_flag=True, help="kill an undumped (frozen) container")
@click.option("--resume", is_flag=True, help="thaw an undumped container")
@click.option("--flags", help="accepted for compatibility")
@click.option("--context", help="accepted for compatibility")
@click.option("--skip_arpdetect", is_flag=True, help="do not announce the IPs yet")
@click.option("--skip-remount", is_flag=True, help="accepted for compatibility")
@click.option("--skip-fsck", is_flag=True, help="accepted for compatibility")
@click.pass_obj
def restore_cmd(
    c: Ctx, dumpfile, undump, kill, resume, flags, context, skip_arpdetect, skip_remount, skip_fsck
):
    from ..restore import driver

    sub = _one_subcommand({"undump": undump, "kill": kill, "resume": resume})
    with c.lock():
        driver.restore_command(c.ct, sub, dumpfile, skip_arpdetect=skip_arpdetect)


COMMANDS = {
    "create": create_cmd,
    "start": start_cmd,
    "stop": stop_cmd,
    "restart": restart_cmd,
    "status": status_cmd,
    "mount": mount_cmd,
    "umount": umount_cmd,
    "destroy": destroy_cmd,
    "delete": destroy_cmd,
    "exec": exec_cmd,
    "exec2": exec2_cmd,
    "enter": enter_cmd,
    "set": set_cmd,
    "chkpnt": chkpnt_cmd,
    "suspend": chkpnt_cmd,
    "restore": restore_cmd,
    "resume": restore_cmd,
}


def _usage_exit(code: int) -> int:
    print(USAGE, file=sys.stderr if code else sys.stdout, end="")
    return code


def _main(argv: list[str]) -> int:
    verbose = 0
    quiet = False
    skiplock = False
    while argv and argv[0].startswith("-"):
        flag = argv.pop(0)
        if flag == "--quiet":
            quiet = True
        elif flag == "--verbose":
            verbose += 1
        elif flag == "--skiplock":
            skiplock = True
        elif flag == "--version":
            print(f"vzctl version {__version__} (vzpy)")
            return 0
        elif flag in ("--help", "-h"):
            return _usage_exit(0)
        else:
            print(f"Invalid option: {flag}", file=sys.stderr)
            return _usage_exit(VZ_INVALID_PARAMETER_SYNTAX)
    if not argv:
        return _usage_exit(VZ_INVALID_PARAMETER_SYNTAX)
    cmd = argv.pop(0)
    command = COMMANDS.get(cmd)
    if command is None:
        print(f"Bad command: {cmd}", file=sys.stderr)
        return VZ_INVALID_PARAMETER_SYNTAX
    if argv and argv[0] == "--help":
        with click.Context(command, info_name=f"vzctl {cmd} CTID") as ctx:
            print(command.get_help(ctx))
        return 0
    if not argv or argv[0].startswith("-"):
        print("CT ID missing", file=sys.stderr)
        return VZ_INVALID_PARAMETER_VALUE
    require_root("vzctl")
    try:
        ctid = parse_ctid(argv.pop(0))
    except BadValueError as e:
        print(str(e), file=sys.stderr)
        return VZ_INVALID_PARAMETER_VALUE
    if ctid == 0 and cmd != "set":
        print("Only set actions are allowed for CT0", file=sys.stderr)
        return VZ_INVALID_PARAMETER_VALUE

    def body() -> int:
        c = Ctx(ctid, cmd, skiplock)
        cfg = c.cfg
        logging_on = (cfg.get("LOGGING") or "yes") == "yes"
        log.configure(
            verbose=max(verbose, cfg.get_int("VERBOSE", 0)),
            quiet=quiet or cmd == "status",
            logfile=(cfg.get("LOGFILE") or "/var/log/vzctl.log") if logging_on else None,
            ctid=ctid,
        )
        if cmd in NEEDS_CONFIG and not cfg.exists:
            raise VzError("Container config file does not exist", exit_code=VZ_NO_CONFFILE)
        if cmd in CANCELLABLE:
            _cancel_on_signals()
        try:
            rv = command.main(args=argv, prog_name=f"vzctl {cmd}", obj=c, standalone_mode=False)
        except click.UsageError as e:
            raise UsageError(f"Invalid syntax: {e.format_message()}") from None
        return int(rv or 0) if isinstance(rv, int) else 0

    return run_mapped(body)


# A checkpoint or restore killed outright would leave the container frozen or
# half-built and the image half-written: SIGTERM/SIGHUP (cron's timeout, a closed
# terminal) cancel it as Ctrl-C does, through the same clean-up.
CANCELLABLE = frozenset({"chkpnt", "suspend", "restore", "resume"})


def _cancel_on_signals() -> None:
    def cancel(signum: int, _frame) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)  # one cancel; the clean-up runs undisturbed
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, cancel)


def main(argv: list[str] | None = None) -> None:
    sys.exit(_main(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
