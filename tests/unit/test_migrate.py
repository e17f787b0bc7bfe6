"""vzmigrate's pure parts: argument parsing, destination/ssh resolution, the remote
command allow-list, the CPU comparison and the rollback chain's order."""

from __future__ import annotations

import pytest

from vzpy.cli.vzmigrate import _Usage, parse_args
from vzpy.errors import MigrateError
from vzpy.migrate import checks
from vzpy.migrate.phases import Rollback, RollbackAbort
from vzpy.migrate.rsync import rsync_argv
from vzpy.migrate.target import parse_dest, parse_ssh_opts, resolve
from vzpy.migrate.transport import NotAllowed, TransportError, _RmCheck, check_command

# --- command line -------------------------------------------------------------------------------


def test_parse_args_options():
    o = parse_args(["--live", "-r", "no", "--keep-dst", "--ssh=-p 2222", "--rsync=-z --bwlimit=1000",
                    "-f", "cpu", "-t", "host", "101"])  # fmt: skip
    assert (o.dest, o.ct, o.online, o.remove_area, o.keep_dst) == ("host", "101", True, False, True)
    assert o.ssh == "-p 2222" and o.rsync == ["-z", "--bwlimit=1000"]
    assert o.nodeps == {"cpu"} and o.times and not o.check_only
    o = parse_args(["-vv", "--dry-run", "--nodeps", "-rno", "h", "web"])
    assert o.verbose == 2 and o.times and o.check_only and o.nodeps == {"all"} and not o.remove_area
    o = parse_args(["-fcpu,ipv6", "--remove-area=yes", "--online", "h", "1"])
    assert o.nodeps == {"cpu", "ipv6"} and o.remove_area and o.online
    assert parse_args(["-f", "h", "1"]).nodeps == {"all"}  # "h" is not a nodeps value


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["h"], "not enough parameters"),
        (["a", "b", "c"], "too many parameters: c"),
        (["-r", "maybe", "h", "1"], "yes or no"),
        (["-r"], "requires an argument"),
        (["--nodeps=gpu", "h", "1"], "cpu, ipv6 or all"),
        (["-x", "h", "1"], "invalid option"),
        (["--frobnicate", "h", "1"], "unknown option"),
    ],
)
def test_parse_args_usage_errors(argv, msg):
    with pytest.raises(_Usage, match=msg):
        parse_args(argv)


def test_parse_args_help(capsys):
    assert parse_args([]) == 0
    assert parse_args(["--help"]) == 0
    assert parse_args(["-h"]) == 0
    assert "Usage: vzmigrate" in capsys.readouterr().out


# --- destination and ssh options ------------------------------------------------------------------


def test_parse_dest_forms():
    assert parse_dest("h") == parse_dest("h")
    d = parse_dest("bob@node2:2200")
    assert (d.user, d.host, d.port) == ("bob", "node2", 2200)
    d = parse_dest("[fd00::2]:22")
    assert (d.host, d.port, d.is_ipv6) == ("fd00::2", 22, True)
    d = parse_dest("fd00::2")
    assert (d.host, d.port) == ("fd00::2", None)
    for bad in ("", "h:0", "h:x", "@h", "-oProxyCommand=x", "a b", "h;rm"):
        with pytest.raises(MigrateError):
            parse_dest(bad)


def test_parse_ssh_opts():
    o = parse_ssh_opts(
        "-i /k -p2222 -o UserKnownHostsFile=/kh -o 'StrictHostKeyChecking no' -C -l admin -F /cfg"
    )
    assert (
        o.identity_files == ["/k"]
        and o.port == 2222
        and o.user == "admin"
        and o.config_file == "/cfg"
    )
    assert o.options["userknownhostsfile"] == "/kh" and o.options["stricthostkeychecking"] == "no"
    # first value wins, as in ssh(1)
    assert parse_ssh_opts("-o Port=1 -o Port=2").options["port"] == "1"
    for bad in ("host", "-o ProxyCommand=nc %h %p", "-J jump", "-p", "-Z"):
        with pytest.raises(MigrateError):
            parse_ssh_opts(bad)


def test_resolve_with_ssh_config(tmp_path):
    cfg = tmp_path / "config"
    cfg.write_text(
        "Host b2\n  HostName 10.0.0.2\n  Port 2200\n  User ops\n  IdentityFile /keys/b2\n"
        "  UserKnownHostsFile /kh/b2\n  StrictHostKeyChecking accept-new\n"
    )
    t = resolve("b2", f"-F {cfg}")
    assert (t.hostname, t.port, t.user) == ("10.0.0.2", 2200, "ops")
    assert (
        t.identity_files == ["/keys/b2"]
        and t.known_hosts == ["/kh/b2"]
        and t.strict == "accept-new"
    )
    assert t.host_key_name == "[10.0.0.2]:2200"
    # command line beats the config; DEST's port beats -p
    t = resolve("root@b2:2300", f"-F {cfg} -p 2201 -o StrictHostKeyChecking=no")
    assert (t.port, t.user, t.strict) == (2300, "root", "no")
    assert t.ssh_command()[:5] == ["ssh", "-o", "BatchMode=yes", "-p", "2300"]
    cfg.write_text("Host j\n  ProxyJump bastion\n")
    with pytest.raises(MigrateError, match="proxies are not supported"):
        resolve("j", f"-F {cfg}")
    t = resolve("plain", "-F /dev/null")
    assert (t.hostname, t.port, t.user, t.strict) == ("plain", 22, "root", "yes")


def test_rsync_argv():
    t = resolve("[fd00::2]:2222", "-F /dev/null -i /k")
    t.control_path = "/tmp/x/ssh-%C"
    a = rsync_argv(t, "/vz/private/101", "/vz2/private/101/", first_pass=True, extra=["-z"])
    assert a[:5] == ["rsync", "-aHAX", "--numeric-ids", "--delete", "--sparse"]
    assert a[-2:] == ["/vz/private/101/", "root@[fd00::2]:/vz2/private/101/"]
    e = a[a.index("-e") + 1]
    assert e.startswith("ssh -o BatchMode=yes -p 2222 -o ControlMaster=auto") and e.endswith(
        "-F /dev/null -i /k"
    )
    assert "-z" in a
    assert "--sparse" not in rsync_argv(t, "/a", "/b", first_pass=False, extra=[])


# --- the allow-list ----------------------------------------------------------------------------------


def test_allowed_commands():
    rm = _RmCheck()
    rm.owned.add("/vz/private/101")
    for argv in (
        ["vzctl", "--quiet", "status", "101"],
        [
            "vzctl",
            "restore",
            "101",
            "--undump",
            "--dumpfile",
            "/vz/dump/tmp-dump.101",
            "--skip_arpdetect",
        ],
        ["vzctl", "restore", "101", "--resume"],
        ["vzctl", "start", "101"],
        ["vzctl", "stop", "101", "--fast"],
        ["vzlist", "-a", "-j", "-o", "ctid,ip,status"],
        ["vzmigrate", "--node-info", "101"],
        ["rm", "-rf", "--one-file-system", "--", "/vz/private/101"],
    ):
        check_command(argv, rm)


@pytest.mark.parametrize(
    "argv",
    [
        ["sh", "-c", "id"],
        ["vzctl", "exec", "101", "id"],
        ["vzctl", "destroy", "101"],
        ["vzctl", "start", "101;id"],
        ["vzctl", "restore", "101", "--dumpfile", "../etc"],
        ["vzctl", "restore", "101", "--dumpfile", "/vz/dump/x y"],
        ["vzctl", "restore", "101", "--dumpfile"],
        ["vzctl", "set", "101", "--name", "x", "--save"],
        ["vzlist", "-a"],
        ["vzmigrate", "--node-info", "1$(id)"],
        ["rm", "-rf", "--one-file-system", "--", "/vz/private/102"],
        ["rm", "-rf", "--", "/vz/private/101"],
        ["rm", "-rf", "--one-file-system", "--", "/"],
        [],
    ],
)
def test_refused_commands(argv):
    rm = _RmCheck()
    rm.owned.add("/vz/private/101")
    with pytest.raises(NotAllowed):
        check_command(argv, rm)


# --- CPU and IP checks -------------------------------------------------------------------------------


def test_cpu_missing():
    src = checks.CpuInfo(0xE7, {"sse2", "avx", "avx2", "avx512f", "hypervisor", "aes"})
    assert checks.cpu_missing(src, checks.CpuInfo(0xE7, src.flags | {"amx_tile"})) == []
    # an older CPU: no AVX-512 state, no avx512f; a kernel-only flag does not count
    missing = checks.cpu_missing(src, checks.CpuInfo(0x7, {"sse2", "avx", "avx2", "aes"}))
    assert missing == [
        "xstate AVX-512 opmask",
        "xstate AVX-512 ZMM_Hi256",
        "xstate AVX-512 Hi16_ZMM",
        "avx512f",
    ]


def test_read_xcr0_has_x87_and_sse():
    x = checks.read_xcr0()
    if x:
        assert x & 0x3 == 0x3


def test_ip_conflicts():
    dest = [
        {"ctid": 101, "ip": ["10.0.0.5"]},
        {"ctid": 102, "ip": ["10.0.0.6", "10.0.0.7/24"]},
        {"ctid": 103, "ip": []},
    ]
    assert checks.ip_conflicts(101, ["10.0.0.5", "10.0.0.7"], dest) == [("10.0.0.7", 102)]
    assert checks.ip_conflicts(104, ["10.0.0.9"], dest) == []


# --- the rollback chain ------------------------------------------------------------------------------


def test_rollback_runs_newest_first_and_survives_failures():
    done = []
    rb = Rollback()
    rb.push("conf", lambda: done.append("conf"))
    rb.push("suspend", lambda: done.append("suspend"))

    def broken():
        raise OSError("boom")

    rb.push("copy", broken)
    rb.push("undump", lambda: done.append("undump"))
    errors = []
    assert rb.run(lambda *a, **k: None, errors.append) is False
    assert done == ["undump", "suspend", "conf"]
    assert errors == ["Rollback step copy failed: boom"]


def test_rollback_retries_a_lost_connection_once_and_aborts_when_unsafe():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise TransportError("lost")

    rb = Rollback()
    rb.push("resume source", lambda: calls.append("resumed"))
    rb.push("flaky", flaky)
    assert rb.run(lambda *a, **k: None, lambda m: None) is True
    assert calls == [1, 1, "resumed"]

    rb = Rollback()
    rb.push("resume source", lambda: calls.append("must not run"))

    def unsafe():
        raise RollbackAbort("can't tell")

    rb.push("undump", unsafe)
    errors = []
    assert rb.run(lambda *a, **k: None, errors.append) is False
    assert "must not run" not in calls and errors == ["can't tell"] and rb.steps == []


def test_rollback_commit_drops_everything():
    rb = Rollback()
    rb.push("x", lambda: pytest.fail("ran after commit"))
    rb.commit()
    assert rb.run(lambda *a, **k: None, lambda m: None) is True
