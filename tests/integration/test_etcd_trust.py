"""etcd is input, not truth: real agents in namespaces against a real etcd that holds hostile or broken
leases, and an etcd whose data is wiped while the agents run (v2 and v3)."""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any, Dict, List

import pytest

from testbed.netns import Agent, TestBed, etcdctl, ping_all, put_config, sh, wait_for, wait_peers

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
NETWORK = "10.100.0.0/16"
SUBNETS = PREFIX + "/subnets/"


def start_agents(bed: TestBed, server: Any, hosts: List[Any], args: List[str]) -> List[Agent]:
    agents = [Agent(host, server.url, PREFIX, list(args)).start(wait=False) for host in hosts]
    for agent in agents:
        agent.wait_ready()
    return agents


def lease_value(public_ip: str, mac: str, pad: int = 0) -> str:
    value: Dict[str, Any] = {"PublicIP": public_ip, "BackendType": "vxlan", "BackendData": {"VtepMAC": mac}}
    if pad:
        value["Padding"] = "x" * pad
    return json.dumps(value, separators=(",", ":"))


def fdb_dst(agent: Agent, mac: str) -> List[str]:
    out = agent.host.run("bridge", "fdb", "show", "dev", "flannel.1").stdout
    return [line.split(" dst ")[1].split()[0] for line in out.splitlines() if line.startswith(mac) and " dst " in line]


def test_hostile_leases_are_refused_once_and_traffic_flows(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A", "A"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": NETWORK, "SubnetLen": 24, "Backend": {"Type": "vxlan"}})
    agents = start_agents(bed, server, bed.hosts, ["--etcd-api", "v3"])
    wait_peers(agents)
    a, b, c = agents
    b_mac = json.loads(etcdctl(bed, server, "get", "--print-value-only",
                               SUBNETS + b.subnet.replace("/", "-")))["BackendData"]["VtepMAC"]
    b_net = b.subnet.split("/")[0]
    # five /24s no agent holds (each agent picked its subnet at random: a hostile value written over an agent's
    # own key would rightly make that agent give up its lease)
    held = {x.subnet for x in agents}
    spare = ["10.100.%d.0" % n for n in range(250, 200, -1) if "10.100.%d.0/24" % n not in held][:5]
    impostor, big, mcast_ip, mcast_mac, garbled = spare
    hostile = {
        # outside Network
        "10.200.5.0-24": lease_value(c.host.address, "0e:00:00:00:00:01"),
        # a /25 inside b's /24, claimed by c: it would steal half of b's traffic
        b_net + "-25": lease_value(c.host.address, "0e:00:00:00:00:02"),
        # b's VtepMAC on another address: the fdb entry would flip between two hosts
        impostor + "-24": lease_value("10.9.9.9", b_mac),
        # far bigger than any lease
        big + "-24": lease_value("10.9.9.8", "0e:00:00:00:00:03", pad=100 * 1024),
        # not unicast
        mcast_ip + "-24": lease_value("224.0.0.5", "0e:00:00:00:00:04"),
        mcast_mac + "-24": lease_value("10.9.9.7", "01:00:5e:00:00:01"),
        # not JSON / not a key
        garbled + "-24": "{not json",
        "10.100.300.0-24": lease_value("10.9.9.6", "0e:00:00:00:00:05"),
    }
    for name, value in hostile.items():
        path = os.path.join(bed.dir, "value")
        with open(path, "w") as f:
            f.write(value)
        sh("sh", "-c", "ip netns exec %s env ETCDCTL_API=3 etcdctl --endpoints %s put %s < %s"
           % (bed.etcd_ns, server.url, SUBNETS + name, path))

    def refused(agent: Agent) -> bool:
        return agent.metrics().get("flannel_leases_rejected", 0) == len(hostile)

    wait_for(lambda: all(refused(x) for x in agents), 20, what="every agent refusing the hostile leases")
    time.sleep(12)  # more than two backend ticks and one watch probe: refusals must not be logged again
    for agent in agents:
        routes = {r["dst"] for r in agent.host.routes()}
        assert "10.200.5.0/24" not in routes and b_net + "/25" not in routes, routes
        assert not routes & {net + "/24" for net in spare[:4]}, routes  # the refused ones
        text = agent.logtext()
        for name in hostile:
            assert text.count("ignoring the lease %s%s in etcd" % (SUBNETS, name)) == 1, (name, text[-3000:])
        assert "Traceback" not in text and "internal error" not in text
    for agent in (a, c):
        assert fdb_dst(agent, b_mac) == [b.host.address]
    failed = ping_all(agents)
    assert not failed, failed

    # the older lease keeps a shared VtepMAC: when b's lease goes, the impostor is no longer outvoted
    etcdctl(bed, server, "del", SUBNETS + impostor + "-24")
    wait_for(lambda: all(x.metrics().get("flannel_leases_rejected", 0) == len(hostile) - 1 for x in agents), 20,
             what="the deleted hostile lease forgotten")


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_etcd_restored_empty_is_repaired(api: str, testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A", "A"])
    server = bed_etcd(bed)
    config = {"Network": NETWORK, "SubnetLen": 24, "SubnetMin": "10.100.1.0", "SubnetMax": "10.100.3.0",
              "Backend": {"Type": "host-gw"}}
    put_v2 = api == "v2"

    def put(key: str, value: str) -> None:
        if put_v2:
            sh("ip", "netns", "exec", bed.etcd_ns, "curl", "-sf", "-m", "5", "-XPUT",
               "%s/v2/keys%s" % (server.url, key), "--data-urlencode", "value=" + value)
        else:
            etcdctl(bed, server, "put", key, value)

    def leases() -> List[str]:
        if put_v2:
            out = sh("ip", "netns", "exec", bed.etcd_ns, "curl", "-s", "-m", "5",
                     "%s/v2/keys%s" % (server.url, SUBNETS.rstrip("/")), check=False).stdout
            try:
                nodes = json.loads(out).get("node", {}).get("nodes", [])
            except ValueError:
                return []
            return sorted(n["key"] for n in nodes)
        return sorted(etcdctl(bed, server, "get", "--prefix", "--keys-only", SUBNETS).split())

    put(PREFIX + "/config", json.dumps(config))
    # three subnets in all: after the wipe a new node can only get the one nobody routes
    agents = start_agents(bed, server, bed.hosts[:2], ["--etcd-api", api, "--subnet-lease-ttl", "300"])
    wait_peers(agents)
    before = sorted(SUBNETS + x.subnet.replace("/", "-") for x in agents)
    assert leases() == before

    server.stop()
    shutil.rmtree(os.path.join(server.data_dir, "data"))
    server.start()
    put(PREFIX + "/config", json.dumps(config))
    restored = time.monotonic()
    wait_for(lambda: leases() == before, 10, interval=0.2, what="both leases written back within 10 s")
    took = time.monotonic() - restored
    for agent in agents:
        assert agent.proc is not None and agent.proc.poll() is None, agent.logtext()
        # the key is visible in etcd a moment before the agent counts it (it lists the leases once
        # more after writing, to see whether an older rival was written at the same time)
        wait_for(lambda a=agent: a.metrics().get("flannel_lease_restores_total", 0) >= 1, 5, interval=0.2,
                 what="the agent counted its restore")

    late = start_agents(bed, server, bed.hosts[2:], ["--etcd-api", api, "--subnet-lease-ttl", "300"])[0]
    everyone = [*agents, late]
    assert late.subnet not in {x.subnet for x in agents}, (late.subnet, took)
    wait_peers(everyone)
    failed = ping_all(everyone)
    assert not failed, failed
