"""zdtm-style tests: each static C program sets up one kind of state, goes
through `vzctl chkpnt` + `vzctl restore` inside a container, then checks that
state and prints PASS or FAIL."""

from __future__ import annotations

import glob
import os

import pytest

import zdtm

pytestmark = pytest.mark.root

TESTS = sorted(
    os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(zdtm.ZDTM_DIR, "*.c"))
)


@pytest.mark.parametrize("name", TESTS)
def test_zdtm_one_cycle(node, name):
    out = zdtm.run(node, 150, name, cycles=1)
    assert out.strip().splitlines()[-1] == "PASS", out


@pytest.mark.parametrize("name", TESTS)
def test_zdtm_two_cycles(node, name):
    out = zdtm.run(node, 151, name, cycles=2)
    assert out.strip().splitlines()[-1] == "PASS", out
