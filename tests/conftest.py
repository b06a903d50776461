"""Fixtures shared by every test directory."""

from __future__ import annotations

import shutil

import pytest

from testbed.etcdserver import EtcdServer


@pytest.fixture(scope="session")
def etcd_server():
    """One real etcd (v2 API enabled) on loopback for the whole session."""
    if not shutil.which("etcd"):
        pytest.fail("etcd is not installed: run `make deps` (Debian package etcd-server)")
    server = EtcdServer().start()
    yield server
    server.destroy()


@pytest.fixture(params=["v2", "v3"])
def etcd_api(request):
    """Parametrizes a test over both etcd APIs."""
    return request.param


_counter = [0]


@pytest.fixture
def etcd_prefix():
    """A fresh key prefix per test so tests sharing one etcd never see each other's keys."""
    _counter[0] += 1
    return "/test%d/coreos.com/network" % _counter[0]
