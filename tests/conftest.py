"""Shared pytest setup.

Skips: a test may skip when this machine lacks a kernel feature or a tool, but
CI sets VZPY_STRICT=1 and then every skip is turned into a failure, so nothing
silently stops being tested.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))

STRICT = os.environ.get("VZPY_STRICT") == "1"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("root") and os.geteuid() != 0:
            item.add_marker(pytest.mark.skip(reason="needs root (namespaces, ptrace, cgroups)"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if STRICT and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = f"skip turned into failure by VZPY_STRICT=1: {reason}"
