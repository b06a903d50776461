"""The datapaths end to end: real flanneld agents in network namespaces, a real etcd, real packets.

Each test builds its own hosts (tests/integration/netns.py) and tears them down, failed or not."""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Dict, List

import pytest

from tests.integration.netns import Agent, TestBed, etcdctl, ping_all, put_config, wait_for

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
NETWORK = "10.100.0.0/16"
MTU = {"vxlan": 1450, "host-gw": 1500, "udp": 1472}


def start_agents(bed: TestBed, server: Any, args: Any = None, hosts: Any = None) -> List[Agent]:
    agents = []
    for host in hosts or bed.hosts:
        agent = Agent(host, server.url, PREFIX, list(args or []))
        agent.start(wait=False)
        agents.append(agent)
    for agent in agents:
        agent.wait_ready()
    return agents


def assert_pings(agents: List[Agent]) -> None:
    failed = ping_all(agents)
    assert not failed, "pings failed:\n" + "\n".join("%s:\n%s\n%s" % (k, v, a.logtext()[-3000:])
                                                      for k, v in failed.items() for a in agents[:1])


def routes_by_dst(agent: Agent) -> Dict[str, Dict[str, Any]]:
    return {r["dst"]: r for r in agent.host.routes()}


@pytest.mark.parametrize("btype", ["vxlan", "host-gw", "udp"])
def test_three_hosts(btype: str, testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A", "A"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": NETWORK, "SubnetLen": 24, "Backend": {"Type": btype}})
    agents = start_agents(bed, server, ["--ip-masq"])
    subnets = [a.subnet for a in agents]
    assert len(set(subnets)) == 3
    assert_pings(agents)

    for agent in agents:
        env = agent.subnet_env
        assert env["FLANNEL_NETWORK"] == NETWORK
        assert env["FLANNEL_MTU"] == str(MTU[btype])
        assert env["FLANNEL_IPMASQ"] == "true"
        subnet = ipaddress.IPv4Network(agent.subnet)
        assert env["FLANNEL_SUBNET"] == "%s/24" % (subnet.network_address + 1)
        routes = routes_by_dst(agent)
        others = [a for a in agents if a is not agent]
        if btype == "vxlan":
            link = agent.host.link("flannel.1")
            assert link is not None and link["mtu"] == 1450
            info = link["linkinfo"]["info_data"]
            assert info["id"] == 1 and info["port"] == 8472 and info["local"] == agent.host.address
            assert not info.get("learning")
            neigh = {n["dst"]: n for n in agent.host.ip_json("neigh", "show", "dev", "flannel.1")}
            fdb = {f["mac"]: f for f in json.loads(agent.host.run("bridge", "-j", "fdb", "show", "dev",
                                                                       "flannel.1").stdout) if f.get("dst")}
            for other in others:
                osub = ipaddress.IPv4Network(other.subnet)
                r = routes[str(osub)]
                assert r["dev"] == "flannel.1" and r["gateway"] == str(osub.network_address)
                assert "onlink" in r["flags"]
                mac = other.host.link("flannel.1")["address"]
                assert neigh[str(osub.network_address)]["lladdr"] == mac
                assert "PERMANENT" in neigh[str(osub.network_address)]["state"]
                assert fdb[mac]["dst"] == other.host.address
            addrs = agent.host.ip_json("-4", "addr", "show", "dev", "flannel.1")[0]["addr_info"]
            assert [(a["local"], a["prefixlen"]) for a in addrs] == [(str(subnet.network_address), 32)]
        elif btype == "host-gw":
            for other in others:
                r = routes[other.subnet]
                assert r["dev"] == "eth0" and r["gateway"] == other.host.address
            assert not [n for n in agent.host.links() if n.startswith("flannel")]
        else:
            link = agent.host.link("flannel0")
            assert link is not None and link["mtu"] == 1472
            assert link["linkinfo"]["info_kind"] == "tun"
            assert routes[NETWORK]["dev"] == "flannel0"
            addrs = agent.host.ip_json("-4", "addr", "show", "dev", "flannel0")[0]["addr_info"]
            assert [(a["local"], a["prefixlen"]) for a in addrs] == [(str(subnet.network_address), 32)]
            sockets = agent.host.run("ss", "-uln").stdout
            assert "%s:8285" % agent.host.address in sockets
        # ip-masq rules are in the namespace's nat table
        nat = agent.host.run("iptables-save", "-t", "nat").stdout
        assert "-A FLANNEL-POSTRTG -s %s -d %s -m comment --comment \"flanneld masq\" -j RETURN" % (
            agent.subnet, NETWORK) in nat
        health = json.loads(agent.host.run("curl", "-sf", "http://127.0.0.1:%d/healthz" % agent.healthz_port).stdout)
        assert health["backend"]["backend"] == btype

    # a lease that goes away takes its routes (and neighbour/fdb entries) with it
    gone = agents[2]
    gone.stop()
    etcdctl(bed, server, "del", PREFIX + "/subnets/" + gone.subnet.replace("/", "-"))
    if btype != "udp":
        wait_for(lambda: gone.subnet not in routes_by_dst(agents[0]), 15, what="route of the removed lease gone")
    if btype == "vxlan":
        gw = str(ipaddress.IPv4Network(gone.subnet).network_address)
        wait_for(lambda: gw not in {n["dst"] for n in agents[0].host.ip_json("neigh", "show", "dev", "flannel.1")},
                 15, what="neighbour of the removed lease gone")
    if btype == "udp":
        # unknown destination now: ICMP net unreachable from flannel0's address
        wait_for(lambda: agents[0].metrics().get("flannel_datapath_remote_leases") == 1.0, 15,
                 what="udp routing table updated")
        out = agents[0].host.ping(gone.bridge_ip, source=agents[0].bridge_ip, count=1, deadline=3).stdout
        assert "Unreachable" in out, out
    assert_pings(agents[:2])
