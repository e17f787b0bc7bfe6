"""vz.conf / CTID.conf parsing and in-place saving (vzctl-reference.md §2)."""

from __future__ import annotations

import os

import pytest

from vzpy.config import ConfFile, VzConfig, expand_veid, parse_ctid, parse_line
from vzpy.errors import BadValueError, ConfigError


def test_parse_quoting_and_comments():
    cf = ConfFile.parse(
        '# comment\n\n  VE_ROOT="/vz/root/$VEID"\nNAME=plain value  \nQ="a "b" c"  \nnoequals\n'
    )
    assert cf.values["VE_ROOT"] == "/vz/root/$VEID"
    assert cf.values["NAME"] == "plain value"
    assert cf.values["Q"] == 'a "b" c'  # ends at the last quote
    assert "noequals" not in cf.values


def test_first_duplicate_wins(capsys):
    cf = ConfFile.parse('A="1"\nA="2"\n', "x.conf", quiet=False)
    assert cf.values["A"] == "1"
    assert "duplicate for A" in capsys.readouterr().err


def test_parse_line_edge_cases():
    assert parse_line('K=""') == ("K", "")
    assert parse_line("K=") == ("K", "")
    assert parse_line('1BAD="x"')[0] is None


def test_expand_veid():
    assert expand_veid("/vz/root/$VEID", 101) == "/vz/root/101"
    assert expand_veid("/vz/root/${VEID}/", 7) == "/vz/root/7"
    assert expand_veid("/a/$VEID/$VEID", 5) == "/a/5/$VEID"  # first occurrence only


def test_save_in_place(tmp_path):
    p = tmp_path / "101.conf"
    p.write_text('# keep me\nHOSTNAME="a"\nUNKNOWN_KEY="x"\nIP_ADDRESS="1.2.3.4"\n')
    cf = ConfFile.load(str(p))
    cf.set("HOSTNAME", "b")
    cf.set("NEWKEY", "n")
    cf.set("IP_ADDRESS", None)
    cf.save()
    text = p.read_text()
    assert text == '# keep me\nHOSTNAME="b"\nUNKNOWN_KEY="x"\nNEWKEY="n"\n'
    assert not os.path.exists(str(p) + ".tmp")


def test_merged_config(tmp_path, monkeypatch):
    monkeypatch.setenv("VZ_CONFDIR", str(tmp_path))
    (tmp_path / "conf").mkdir()
    (tmp_path / "vz.conf").write_text('VE_ROOT="/vz/root/$VEID"\nLOCKDIR=/l\nHOSTNAME=glob\n')
    (tmp_path / "conf" / "101.conf").write_text('HOSTNAME="ct"\nVE_PRIVATE="/p/${VEID}"\n')
    cfg = VzConfig.load(101)
    assert cfg.ve_root == "/vz/root/101"
    assert cfg.ve_private == "/p/101"
    assert cfg.hostname == "ct"  # per-CT wins
    assert cfg.lockdir == "/l"
    assert cfg.raw("VE_ROOT") == "/vz/root/$VEID"
    assert VzConfig.load(102).hostname == "glob"


def test_missing_global_config(tmp_path, monkeypatch):
    monkeypatch.setenv("VZ_CONFDIR", str(tmp_path / "nope"))
    with pytest.raises(ConfigError) as e:
        VzConfig.load(101)
    assert e.value.exit_code == 10


def test_parse_ctid(tmp_path, monkeypatch):
    monkeypatch.setenv("VZ_CONFDIR", str(tmp_path))
    assert parse_ctid("101") == 101
    with pytest.raises(BadValueError):
        parse_ctid("2147483645")
    with pytest.raises(BadValueError):
        parse_ctid("no-such-name")
    (tmp_path / "names").mkdir()
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "105.conf").write_text("")
    os.symlink(str(tmp_path / "conf" / "105.conf"), str(tmp_path / "names" / "web"))
    assert parse_ctid("web") == 105
