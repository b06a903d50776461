"""The agent's control plane on dual-stack and IPv6-only networks: real etcd (both APIs), real
flanneld processes on loopback with the ``alloc`` backend (leases, subnet file, no datapath; the
datapaths have their own IPv6 tests)."""

from __future__ import annotations

import ipaddress
import json
import time
from typing import Any, Tuple

from pyflannel import etcdstore
from pyflannel.leases import parse_subnet_key
from pyflannel.subnetenv import parse, previous_subnets

DUAL = {"Network": "10.100.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00:100::/48", "Backend": {"Type": "alloc"}}
ONLY6 = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fc00:100::/120", "Backend": {"Type": "alloc"}}


def node(agents: Any, n: int, etcd_server: Any, etcd_api: str, prefix: str, v4: bool = True) -> Any:
    extra = ["--public-ipv6", "fd00:100::%d" % (10 + n)]
    if not v4:
        return agents("n%d" % n, etcd_server.url, etcd_api, prefix, "", extra=extra)
    return agents("n%d" % n, etcd_server.url, etcd_api, prefix, "127.0.0.%d" % (110 + n), extra=extra)


def subnets(agent: Any, timeout: float = 20.0) -> Tuple[Any, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = previous_subnets(str(agent.subnet_file))
        if found != (None, None):
            return found
        if agent.proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError("no subnet file within %.0f s; log:\n%s" % (timeout, agent.log()[-3000:]))


def leases(etcd_server: Any, etcd_api: str, prefix: str) -> dict:
    store = etcdstore.connect(etcd_server.url, api=etcd_api)
    try:
        kvs, _rev = store.list(prefix + "/subnets/")
        return {kv.key.rsplit("/", 1)[-1]: json.loads(kv.value) for kv in kvs}
    finally:
        store.close()


def put_config(etcd_server: Any, etcd_api: str, prefix: str, config: dict) -> None:
    store = etcdstore.connect(etcd_server.url, api=etcd_api)
    try:
        store.put(prefix + "/config", json.dumps(config))
    finally:
        store.close()


def test_dual_stack_three_nodes_and_restart_keeps_both_subnets(agents: Any, etcd_server: Any, etcd_api: str,
                                                               etcd_prefix: str) -> None:
    put_config(etcd_server, etcd_api, etcd_prefix, DUAL)
    nodes = [node(agents, n, etcd_server, etcd_api, etcd_prefix) for n in range(3)]
    got = [subnets(agent) for agent in nodes]
    assert len(set(pair[0] for pair in got)) == 3 and len(set(pair[1] for pair in got)) == 3
    for v4, v6 in got:
        assert v4.subnet_of(ipaddress.ip_network("10.100.0.0/16")) and v4.prefixlen == 24
        assert v6.subnet_of(ipaddress.ip_network("fc00:100::/48")) and v6.prefixlen == 64
    env = parse(nodes[0].subnet_file.read_text())
    assert list(env) == ["FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_IPV6_NETWORK", "FLANNEL_IPV6_SUBNET",
                         "FLANNEL_MTU", "FLANNEL_IPMASQ"]
    assert env["FLANNEL_IPV6_NETWORK"] == "fc00:100::/48"
    assert env["FLANNEL_IPV6_SUBNET"] == "%s/64" % (got[0][1].network_address + 1)
    stored = leases(etcd_server, etcd_api, etcd_prefix)
    assert sorted(stored) == sorted("%s-%d&%s-%d" % (v4.network_address, 24, v6.network_address, 64) for v4, v6 in got)
    for name, value in stored.items():
        assert value["PublicIPv6"].startswith("fd00:100::1") and parse_subnet_key(name)[1] is not None
    # a restart reuses the lease; with the lease gone from etcd, the subnet file's two subnets
    nodes[1].stop()
    first = node(agents, 1, etcd_server, etcd_api, etcd_prefix)
    assert subnets(first) == got[1]
    first.wait_log("reusing it")
    first.stop()
    store = etcdstore.connect(etcd_server.url, api=etcd_api)
    try:
        store.delete("%s/subnets/%s-24&%s-64" % (etcd_prefix, got[1][0].network_address, got[1][1].network_address))
    finally:
        store.close()
    again = node(agents, 1, etcd_server, etcd_api, etcd_prefix)
    again.wait_log("previous subnet from")
    assert subnets(again) == got[1]


def test_ipv6_only_network(agents: Any, etcd_server: Any, etcd_api: str, etcd_prefix: str) -> None:
    put_config(etcd_server, etcd_api, etcd_prefix, ONLY6)
    nodes = [node(agents, n, etcd_server, etcd_api, etcd_prefix, v4=False) for n in range(3)]
    got = [subnets(agent) for agent in nodes]
    assert all(pair[0] is None for pair in got)
    # fc00:100::/120 with /122 subnets: exactly three (::40, ::80, ::c0)
    assert sorted(str(pair[1]) for pair in got) == ["fc00:100::40/122", "fc00:100::80/122", "fc00:100::c0/122"]
    env = parse(nodes[0].subnet_file.read_text())
    assert "FLANNEL_SUBNET" not in env and "FLANNEL_NETWORK" not in env
    stored = leases(etcd_server, etcd_api, etcd_prefix)
    assert all(name.startswith("0.0.0.0-0&fc00:100::") for name in stored)
    assert all(value["PublicIP"] == "0.0.0.0" for value in stored.values())
    fourth = node(agents, 3, etcd_server, etcd_api, etcd_prefix, v4=False)
    fourth.wait_log("raise IPv6SubnetMax")


def test_enabling_ipv6_keeps_the_ipv4_subnet(agents: Any, etcd_server: Any, etcd_api: str, etcd_prefix: str) -> None:
    plain = dict(DUAL)
    plain.pop("EnableIPv6")
    plain.pop("IPv6Network")
    put_config(etcd_server, etcd_api, etcd_prefix, plain)
    agent = node(agents, 0, etcd_server, etcd_api, etcd_prefix)
    v4, v6 = subnets(agent)
    assert v6 is None
    agent.stop()
    put_config(etcd_server, etcd_api, etcd_prefix, DUAL)
    again = node(agents, 0, etcd_server, etcd_api, etcd_prefix)
    deadline = time.monotonic() + 20
    while previous_subnets(str(again.subnet_file))[1] is None and time.monotonic() < deadline:
        time.sleep(0.1)
    new4, new6 = previous_subnets(str(again.subnet_file))
    assert new4 == v4 and new6 is not None, again.log()[-3000:]
    wanted = "%s-24&%s-64" % (v4.network_address, new6.network_address)
    assert list(leases(etcd_server, etcd_api, etcd_prefix)) == [wanted]


def test_ipv6_asked_of_udp_is_one_clear_line(agents: Any, etcd_server: Any, etcd_api: str, etcd_prefix: str) -> None:
    config = dict(DUAL, Backend={"Type": "udp"})
    put_config(etcd_server, etcd_api, etcd_prefix, config)
    agent = node(agents, 0, etcd_server, etcd_api, etcd_prefix)
    agent.wait_log("the udp backend carries IPv4 only; use one of vxlan, host-gw, wireguard")
    assert not agent.subnet_file.exists()


def test_ipv6_lease_lost_from_etcd_is_written_back_and_hostile_ipv6_leases_are_refused(
        agents: Any, etcd_server: Any, etcd_api: str, etcd_prefix: str) -> None:
    put_config(etcd_server, etcd_api, etcd_prefix, DUAL)
    store = etcdstore.connect(etcd_server.url, api=etcd_api)
    try:
        hostile = {
            "10.100.7.0-24&fc00:100:0:7::-64": {"PublicIP": "127.0.0.7", "PublicIPv6": "fe80::7"},
            "10.100.8.0-24&fc00:100:0:8::-64": {"PublicIP": "127.0.0.8", "PublicIPv6": "ff02::8"},
            "10.100.9.0-24&fc00:200:0:9::-64": {"PublicIP": "127.0.0.9", "PublicIPv6": "fd00::9"},
            "10.100.10.0-24&fc00:100:0:a::1-64": {"PublicIP": "127.0.0.10"},
        }
        for name, value in hostile.items():
            store.put(etcd_prefix + "/subnets/" + name, json.dumps(value))
        agent = agents("n0", etcd_server.url, etcd_api, etcd_prefix, "127.0.0.110",
                       extra=["--public-ipv6", "fd00:100::10"], iface="lo")
        v4, v6 = subnets(agent)
        for words in ("fe80::7 is a link-local address", "ff02::8 is a multicast address",
                      "outside the IPv6 network fc00:100::/48", "10.100.10.0-24&fc00:100:0:a::1-64"):
            agent.wait_log(words)
        own = "%s/subnets/%s-24&%s-64" % (etcd_prefix, v4.network_address, v6.network_address)
        store.delete(own)  # etcd lost it (wiped, restored, deleted behind our back)
        agent.wait_log("wrote it back to etcd with the same subnet")
        assert store.get(own) is not None and subnets(agent) == (v4, v6)
    finally:
        store.close()
