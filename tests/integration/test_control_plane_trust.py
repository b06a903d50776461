"""etcd is input: keys that would wedge, outlast or fool the control plane, against real ``flanneld``
processes (alloc backend, root namespace, loopback) and a real etcd, v2 and v3.

* a /33 key in a /32 IPv6 network: a joining node gets a lease in seconds (the picker skips the taken
  range whole) and SIGTERM still ends it within 2 s;
* SIGTERM ends the agent within 2 s while it waits for a config or for a free subnet;
* a key name with a newline is one escaped log line, never a forged second line.
"""

from __future__ import annotations

import ipaddress
import json
import signal
import time
import urllib.parse
import urllib.request
from typing import Any, Tuple

import pytest

from pyflannel import etcdstore
from tests.integration.test_agent_ipv6 import subnets

HOSTILE = {"Network": "10.130.0.0/16", "EnableIPv6": True, "IPv6Network": "fd13::/32", "Backend": {"Type": "alloc"}}
HOSTILE_KEY = "10.130.250.0-24&fd13::-33"  # a /33: half of the /32 network, 2^31 /64 subnets
ONE_SUBNET = {"Network": "10.140.0.0/16", "SubnetLen": 24, "SubnetMin": "10.140.1.0", "SubnetMax": "10.140.1.0",
              "Backend": {"Type": "alloc"}}
STOP_WITHIN = 2.0  # seconds: the requirement (an integration test of a real process, so measured)


@pytest.fixture
def store(etcd_server: Any, etcd_api: str) -> Any:
    s = etcdstore.connect(etcd_server.url, api=etcd_api)
    yield s
    s.close()


def put_raw(etcd_server: Any, etcd_api: str, store: Any, key: str, value: str) -> None:
    """Any key, control characters included (v2: percent-encoded in the URL path)."""
    if etcd_api == "v3":
        store.put(key, value)
        return
    data = urllib.parse.urlencode({"value": value}).encode()
    request = urllib.request.Request("%s/v2/keys%s" % (etcd_server.url, urllib.parse.quote(key)), data=data,
                                     method="PUT", headers={"Content-Type": "application/x-www-form-urlencoded"})
    with urllib.request.urlopen(request, timeout=5) as resp:
        assert resp.status in (200, 201)


def sigterm(agent: Any) -> Tuple[int, float]:
    """SIGTERM the agent; its exit code and how long it took to exit."""
    began = time.monotonic()
    agent.proc.send_signal(signal.SIGTERM)
    code = agent.wait_exit(10)
    return code, time.monotonic() - began


def test_a_33_key_in_a_32_network_neither_wedges_joining_nor_outlasts_sigterm(
        agents: Any, store: Any, etcd_server: Any, etcd_api: str, etcd_prefix: str) -> None:
    store.put(etcd_prefix + "/config", json.dumps(HOSTILE))
    store.put(etcd_prefix + "/subnets/" + HOSTILE_KEY, json.dumps({"PublicIP": "127.0.0.250",
                                                                  "PublicIPv6": "fd00:130::250"}))
    node = agents("joiner", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.141",
                  extra=["--public-ipv6", "fd00:130::141"])
    v4, v6 = subnets(node, 15.0)  # the old picker walked 2^31 subnets here, for hours
    assert v4 != ipaddress.ip_network("10.130.250.0/24") and v4.subnet_of(ipaddress.ip_network("10.130.0.0/16"))
    assert v6.prefixlen == 64 and v6.subnet_of(ipaddress.ip_network("fd13::/32"))
    assert not v6.overlaps(ipaddress.ip_network("fd13::/33"))  # taken, though no datapath would use it
    node.wait_log("ignoring the lease %s/subnets/%s in etcd: its subnet fd13::/33 is not a /64"
                  % (etcd_prefix, HOSTILE_KEY))
    code, took = sigterm(node)
    assert code == 0 and took < STOP_WITHIN, (code, took, node.log()[-2000:])


@pytest.mark.parametrize("phase", ["waiting for the config", "out of subnets"])
def test_sigterm_ends_a_starting_agent_within_2_s(phase: str, agents: Any, store: Any, etcd_server: Any,
                                                  etcd_api: str, etcd_prefix: str) -> None:
    if phase == "out of subnets":
        store.put(etcd_prefix + "/config", json.dumps(ONE_SUBNET))
        store.put(etcd_prefix + "/subnets/10.140.1.0-24", json.dumps({"PublicIP": "127.0.0.240"}))
    node = agents("starting", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.142")
    node.wait_log("no network config at" if phase == "waiting for the config" else "out of subnets")
    time.sleep(1.5)  # well into the retry loop
    code, took = sigterm(node)
    assert code == 0 and took < STOP_WITHIN, (code, took, node.log()[-2000:])
    assert "stopped before the agent was ready" in node.log()


def test_key_with_a_newline_is_one_escaped_log_line(agents: Any, store: Any, etcd_server: Any, etcd_api: str,
                                                    etcd_prefix: str) -> None:
    store.put(etcd_prefix + "/config", '{"Network":"10.100.0.0/16","Backend":{"Type":"alloc"}}')
    running = agents("running", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.143")
    running.wait_subnet()
    forged = "10.100.9.0-24\nE0101 00:00:00.000000 1 agent.py:1] FORGED the lease 10.100.9.0-24 was accepted"
    put_raw(etcd_server, etcd_api, store, etcd_prefix + "/subnets/" + forged, json.dumps({"PublicIP": "127.0.0.9"}))
    running.wait_log("FORGED")  # seen through the watch
    late = agents("late", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.144")
    late.wait_subnet()
    late.wait_log("FORGED")  # seen in the first list
    for node in (running, late):
        lines = [line for line in node.log().splitlines() if "FORGED" in line]
        assert len(lines) == 1, lines
        assert lines[0].startswith("W") and "ignoring the lease %s/subnets/10.100.9.0-24\\nE0101" % etcd_prefix \
            in lines[0], lines
    for node in (running, late):
        assert node.stop() == 0
