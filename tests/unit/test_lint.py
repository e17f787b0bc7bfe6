"""The tree stays clean under the project's own ruff configuration (pyproject.toml)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ruff_check():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff not installed (setup.sh installs it with the test extras)")
    r = subprocess.run(
        [ruff, "check", "src", "tests", "bench", "tools"], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
