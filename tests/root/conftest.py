"""Fixtures for tests that run real containers (root, namespaces, cgroups)."""

from __future__ import annotations

import os
import shutil
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


@pytest.fixture
def keys():
    """An ssh key pair and known_hosts for migration tests (tests/lib/sshnode.py)."""
    from sshnode import SshKeys

    d = tempfile.mkdtemp(prefix="vzt-keys-", dir="/var/tmp")
    try:
        yield SshKeys(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sa(node, keys):
    """A real sshd on node A (the `node` fixture)."""
    from sshnode import SshNode

    s = SshNode(node, keys)
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def sb(node_b, keys):
    """A real sshd on node B."""
    from sshnode import SshNode

    s = SshNode(node_b, keys)
    try:
        yield s
    finally:
        s.cleanup()
