"""Fixtures for the namespace test bed (testbed/netns.py).  Keep additions additive: other
helpers add their own fixtures here too."""

from __future__ import annotations

import os
import shutil
from typing import Any, List

import pytest

from testbed.etcdserver import EtcdServer
from testbed.netns import TestBed


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the namespace tests need root (network namespaces, netlink): run make test as root")
    for tool in ("ip", "ping", "etcd", "etcdctl", "iptables-restore"):
        if not shutil.which(tool):
            pytest.fail("%s is missing: run `make deps`" % tool)


@pytest.fixture
def testbed() -> Any:
    """A factory: ``bed = testbed(["A", "A", "B"], second=[...])``; every bed (and every process it
    started) is destroyed at the end of the test, failed or not."""
    _need_root()
    beds: List[TestBed] = []

    def make(segments: List[str], second: Any = None, **kwargs: Any) -> TestBed:
        bed = TestBed(segments, second, **kwargs)
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.destroy()


@pytest.fixture
def bed_etcd() -> Any:
    """A factory: ``server = bed_etcd(bed)`` runs a real etcd (v2 enabled) in the bed's etcd namespace,
    reachable from every host; destroyed at the end of the test."""
    servers: List[EtcdServer] = []

    def make(bed: TestBed) -> EtcdServer:
        server = EtcdServer(host=bed.etcd_address, port=2379, netns=bed.etcd_ns)
        server.peer_port = 2380
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.destroy()


@pytest.fixture
def agents(tmp_path: Any) -> Any:
    """A factory of root-namespace flanneld processes (tests/integration/test_agent.py's Flanneld);
    every one started is killed at the end of the test."""
    from tests.integration.test_agent import Flanneld

    started: List[Any] = []

    def start(*args: Any, **kwargs: Any) -> Any:
        agent = Flanneld(tmp_path, *args, **kwargs)
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()
