"""Fixtures for tests that run real containers (root, namespaces, cgroups)."""

from __future__ import annotations

import os
import tempfile

import pytest
from vznode import Lan, Node, tiny_template


@pytest.fixture(scope="session")
def tiny():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    return tiny_template()


@pytest.fixture
def lan():
    net = Lan()
    try:
        yield net
    finally:
        net.cleanup()


@pytest.fixture
def node(tiny, lan, tmp_path_factory):
    """One node in its own netns on a LAN bridge, with a client namespace available."""
    base = tempfile.mkdtemp(prefix="vzt-node-", dir="/var/tmp")
    n = Node(base, lan, name="a")
    try:
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def node_b(tiny, lan):
    base = tempfile.mkdtemp(prefix="vzt-node-", dir="/var/tmp")
    n = Node(base, lan, name="b")
    try:
        yield n
    finally:
        n.cleanup()


@pytest.fixture
def client(lan):
    return lan.client()
