"""Wrong usage gets vzctl's one-line message and exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.root


def check(r, code, text):
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert text in r.stderr + r.stdout, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr


def test_usage_errors(node):
    check(node.vzctl(), 20, "Usage: vzctl")
    check(node.vzctl("frobnicate", "101"), 20, "Bad command: frobnicate")
    check(node.vzctl("start"), 21, "CT ID missing")
    check(node.vzctl("start", "abc"), 21, "Bad CT ID abc")
    check(node.vzctl("start", "2147483645"), 21, "Bad CT ID")
    check(node.vzctl("start", "0"), 21, "Only set actions are allowed for CT0")
    check(node.vzctl("start", "101"), 14, "Container config file does not exist")
    check(node.vzctl("--bogus", "start", "101"), 20, "Invalid option")
    r = node.vzctl("status", "101")
    assert r.returncode == 0 and r.stdout.strip() == "CTID 101 deleted unmounted down"


def test_missing_global_config(node):
    env = dict(node.env, VZ_CONFDIR=os.path.join(node.base, "nowhere"))
    r = subprocess.run(
        [*node.prefix(), "vzctl", "status", "101"], env=env, capture_output=True, text=True
    )
    check(r, 10, "Global configuration file")


def test_create_errors(node):
    check(node.vzctl("create", "101", "--ostemplate", "no-such-os"), 91, "Cached OS template")
    check(
        node.vzctl("create", "101", "--ostemplate", "tiny", "--ipadd", "300.1.1.1"),
        71,
        "Bad IP address",
    )
    check(
        node.vzctl("create", "101", "--ostemplate", "tiny", "--hostname", "bad_host!"),
        70,
        "Bad hostname",
    )
    check(node.vzctl("create", "101", "--config", "nosuch"), 82, "Sample config")
    ip = node.create(101)
    check(
        node.vzctl("create", "102", "--ostemplate", "tiny", "--ipadd", ip),
        78,
        "already used by CT 101",
    )
    os.unlink(os.path.join(node.confdir, "conf", "101.conf"))
    # config gone, private area still there
    r = node.vzctl("create", "101", "--ostemplate", "tiny")
    check(r, 44, "Private area already exists")


def test_state_errors(node):
    node.create(101)
    check(node.vzctl("exec", "101", "true"), 31, "Container is not running")
    check(node.vzctl("enter", "101"), 31, "Container is not running")
    check(node.vzctl("chkpnt", "101"), 31, "container is not running")
    r = node.vzctl("stop", "101")
    assert r.returncode == 0 and "Unable to stop: container is not running" in r.stdout
    check(node.vzctl("umount", "101"), 40, "CT is not mounted")
    node.ok("start", "101")
    check(node.vzctl("start", "101"), 32, "Container is already running")
    check(node.vzctl("destroy", "101"), 32, "Container is currently running")
    check(node.vzctl("umount", "101"), 32, "stop it first")
    check(node.vzctl("restore", "101"), 32, "container already running")
    check(
        node.vzctl("set", "101", "--root", "/x"),
        32,
        "Unable to change VE_ROOT on a running container",
    )
    check(node.vzctl("chkpnt", "101", "--suspend", "--kill"), 20, "only one sub command")
    check(node.vzctl("chkpnt", "101", "--dump"), 20, "dumpfile is not specified")
    r = node.vzctl("exec", "101", "exit 3")
    assert r.returncode == 8
    r = node.vzctl("exec2", "101", "exit 3")
    assert r.returncode == 3
    node.ok("stop", "101")
    node.ok("mount", "101")
    check(node.vzctl("destroy", "101"), 41, "Container is currently mounted")
    node.ok("umount", "101")


def test_set_values(node):
    node.create(101)
    check(node.vzctl("set", "101", "--cpuunits", "3", "--save"), 21, "Invalid value")
    check(node.vzctl("set", "101", "--ram", "lots", "--save"), 21, "Invalid value")
    check(node.vzctl("set", "101", "--onboot", "maybe", "--save"), 21, "Invalid value")
    check(node.vzctl("set", "101", "--nameserver", "x.y", "--save"), 72, "Bad DNS server")
    out = node.ok("set", "101", "--hostname", "h1", "--ram", "128M", "--numproc", "50", "--save")
    assert "CT configuration saved to" in out
    conf = open(os.path.join(node.confdir, "conf", "101.conf")).read()
    assert 'HOSTNAME="h1"' in conf and 'PHYSPAGES="0:32768"' in conf and 'NUMPROC="50:50"' in conf
    assert "No changes in CT configuration" in node.ok("set", "101", "--hostname", "h1", "--save")
    out = node.ok("set", "101", "--hostname", "h2")
    assert "Settings were not saved" in out


def test_vzlist_errors(node):
    r = node.vzlist("-a")
    assert r.returncode == 1 and "Container(s) not found" in r.stderr
    r = node.vzlist("-j")
    assert r.returncode == 1 and r.stdout.strip() == "[]"
    node.create(101)
    r = node.vzlist("-a", "-o", "ctid,bogus")
    assert r.returncode == 1 and "Unknown field: bogus" in r.stderr
    r = node.vzlist("-a", "-s", "nofield")
    assert r.returncode == 1 and "Invalid sort field name" in r.stderr
    r = node.vzlist("-a", "-H", "-o", "ctid,status")
    assert r.returncode == 0 and r.stdout.split() == ["101", "stopped"]
    assert node.vzlist("-1", "-a").stdout.strip() == "101"
