"""Dual-stack and IPv6-only datapaths end to end: real flanneld agents in namespaces with an IPv6
underlay (testbed/netns.py ``TestBed(ipv6=True)``), a real etcd on both APIs, real packets in
both families between the hosts' docker0 stand-ins."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
from typing import Any, Dict, List, Tuple

import pytest

from testbed.netns import Agent, etcdctl, ping_all, put_config, wait_peers
from tests.integration.test_datapath import start_agents

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
DUAL = {"Network": "10.100.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00:100::/48"}
ONLY6 = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fc00:100::/48"}


def put(bed: Any, server: Any, api: str, config: Dict[str, Any]) -> None:
    """The network config through the API the agents use (etcd keeps v2 and v3 keys apart)."""
    if api == "v3":
        put_config(bed, server, PREFIX, config)
        return
    subprocess.run(["ip", "netns", "exec", bed.etcd_ns, "curl", "-sf", "-m", "10", "-XPUT",
                    "%s/v2/keys%s/config" % (server.url, PREFIX), "--data-urlencode", "value=" + json.dumps(config)],
                   check=True, capture_output=True, timeout=20)


def delete_lease(bed: Any, server: Any, api: str, name: str) -> None:
    if api == "v3":
        etcdctl(bed, server, "del", PREFIX + "/subnets/" + name)
        return
    subprocess.run(["ip", "netns", "exec", bed.etcd_ns, "curl", "-sf", "-m", "10", "-XDELETE",
                    "%s/v2/keys%s/subnets/%s" % (server.url, PREFIX, urllib.parse.quote(name, safe=""))],
                   check=True, capture_output=True, timeout=20)


def start(bed: Any, server: Any, api: str) -> List[Agent]:
    return start_agents(bed, server, ["--etcd-api", api, "--ip-masq"])


def assert_mesh(agents: List[Agent], versions: Tuple[int, ...]) -> None:
    failed = ping_all(agents, versions=versions)
    lines = "\n".join("%s: %s" % kv for kv in failed.items())
    assert not failed, "pings failed:\n%s\n%s" % (lines, agents[0].logtext()[-3000:])


def v6_state(agent: Agent) -> List[str]:
    """flannel devices and flannel-installed IPv6 routes (protocols 108-111) on the agent's host."""
    links = [name for name in agent.host.links() if name.startswith("flannel")]
    routes = [r["dst"] for r in agent.host.routes6() if r.get("protocol") in ("108", "109", "110", "111")]
    return links + routes


@pytest.mark.parametrize("api", ["v2", "v3"])
@pytest.mark.parametrize("btype", ["vxlan", "host-gw"])
def test_dual_stack_mesh(btype: str, api: str, testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A", "A"], ipv6=True)
    server = bed_etcd(bed)
    put(bed, server, api, dict(DUAL, Backend={"Type": btype}))
    agents = start(bed, server, api)
    assert len({a.subnet_of(6) for a in agents}) == 3 and len({a.subnet_of(4) for a in agents}) == 3
    assert_mesh(agents, (4, 6))
    for agent in agents:
        env = agent.subnet_env
        assert env["FLANNEL_IPV6_NETWORK"] == "fc00:100::/48"
        # vxlan: the IPv6 device's 1500 - 70, so full-size packets fit both devices
        assert env["FLANNEL_MTU"] == ("1430" if btype == "vxlan" else "1500")
        nat6 = agent.host.run("ip6tables-save", "-t", "nat").stdout
        assert "-A FLANNEL-POSTRTG -s %s -d fc00:100::/48" % agent.subnet_of(6) in nat6
        if btype == "vxlan":
            link = agent.host.link("flannel-v6.1")
            info = link["linkinfo"]["info_data"] if link else {}
            assert agent.host.address6 in (info.get("local6"), info.get("local")), link
    # restart: both subnets kept, even with the lease gone from etcd (the subnet file's two lines)
    first = agents[0]
    before = (first.subnet_of(4), first.subnet_of(6))
    first.stop()
    delete_lease(bed, server, api, "%s&%s" % tuple(net.replace("/", "-") for net in before))
    first.start()
    assert (first.subnet_of(4), first.subnet_of(6)) == before
    assert_mesh(agents, (4, 6))


@pytest.mark.parametrize("btype", ["vxlan", "host-gw"])
def test_ipv6_only_mesh(btype: str, testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A", "A"], ipv6=True)
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, dict(ONLY6, Backend={"Type": btype}))
    agents = start(bed, server, "v3")
    env = agents[0].subnet_env
    assert "FLANNEL_SUBNET" not in env and env["FLANNEL_IPV6_SUBNET"].startswith("fc00:100:")
    keys = etcdctl(bed, server, "get", "--prefix", "--keys-only", PREFIX + "/subnets/").split()
    assert len(keys) == 3 and all("/subnets/0.0.0.0-0&fc00:100:" in key for key in keys)
    assert_mesh(agents, (6,))
    if btype == "vxlan":
        assert agents[0].host.link("flannel.1") is None and agents[0].host.link("flannel-v6.1") is not None


def test_backend_switch_leaves_no_ipv6_device_or_route(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A"], ipv6=True)
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, dict(DUAL, Backend={"Type": "vxlan"}))
    agents = start(bed, server, "v3")
    assert_mesh(agents, (4, 6))
    assert "flannel-v6.1" in v6_state(agents[0])
    for agent in agents:
        agent.stop()
    put_config(bed, server, PREFIX, dict(DUAL, Backend={"Type": "host-gw"}))
    for agent in agents:
        agent.start(wait=False)
    for agent in agents:
        agent.wait_ready()
    wait_peers(agents)
    assert_mesh(agents, (4, 6))
    state = v6_state(agents[0])
    assert not [item for item in state if item.startswith("flannel")], state
    # the only flannel IPv6 route left is host-gw's to the other host's subnet
    assert state == [agents[1].subnet_of(6)], state
    for agent in agents:
        agent.stop()
    put_config(bed, server, PREFIX, {"Network": "10.100.0.0/16", "Backend": {"Type": "vxlan"}})
    agents[0].start()
    assert v6_state(agents[0]) == ["flannel.1"]
