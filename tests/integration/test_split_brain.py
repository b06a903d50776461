"""No two live nodes route one subnet: real vxlan agents in namespaces, a real etcd (v2 and v3), single
and dual stack.  A node cut off from etcd (iptables in its namespace) loses its lease in etcd, either
because it expires (a short TTL) or because etcd's data is wiped; a new node joins first and gets its
IPv4 subnet (dual stack: with another IPv6 subnet, so the key differs).  When the old node reaches
etcd again it must give way — exit 1 with one line naming the new node — and never write its lease
back beside the new one; the other nodes reach the new node's subnet."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import time
import urllib.parse
from typing import Any, Dict, List

import pytest

from pyflannel.leases import parse_subnet_key, subnet_key_name
from testbed.netns import Agent, Host, TestBed, etcdctl, ping_all, sh, wait_for, wait_peers

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
SUBNETS = PREFIX + "/subnets/"
# two IPv4 subnets: once two nodes hold them, a third gets in only where a lease has gone
CONFIG = {"Network": "10.50.0.0/16", "SubnetLen": 24, "SubnetMin": "10.50.1.0", "SubnetMax": "10.50.2.0",
          "Backend": {"Type": "vxlan"}}
DUAL = {"EnableIPv6": True, "IPv6Network": "fd50::/48"}
# the new node's IPv6 subnet (from its subnet file): never one of the first 100 the others pick from
NEW6 = "fd50:0:0:77::1/64"
TTL = 20  # seconds: the partition outlives the lease


class Etcd:
    """Reads and writes through the API the agents use (etcd keeps v2 and v3 keys apart), from inside
    the etcd namespace."""

    def __init__(self, bed: TestBed, server: Any, api: str) -> None:
        self.bed, self.server, self.api = bed, server, api

    def _curl(self, *args: str, check: bool = True) -> str:
        return sh("ip", "netns", "exec", self.bed.etcd_ns, "curl", "-s", "-m", "5", *args, check=check).stdout

    def put(self, key: str, value: str) -> None:
        if self.api == "v3":
            etcdctl(self.bed, self.server, "put", key, value)
        else:
            self._curl("-f", "-XPUT", "%s/v2/keys%s" % (self.server.url, urllib.parse.quote(key)),
                       "--data-urlencode", "value=" + value)

    def leases(self) -> Dict[str, str]:
        """Lease key name -> PublicIP of every lease."""
        if self.api == "v3":
            lines = etcdctl(self.bed, self.server, "get", "--prefix", SUBNETS).splitlines()
            pairs = zip(lines[0::2], lines[1::2])
        else:
            out = self._curl("%s/v2/keys%s" % (self.server.url, SUBNETS.rstrip("/")), check=False)
            try:
                nodes = json.loads(out).get("node", {}).get("nodes", [])
            except ValueError:
                return {}
            pairs = ((node["key"], node["value"]) for node in nodes)
        return {key[len(SUBNETS):]: json.loads(value)["PublicIP"] for key, value in pairs}


def cut_off(bed: TestBed, host: Host, cut: bool = True) -> None:
    """The host's packets to etcd's client port are dropped (a partition), or again let through."""
    host.run("iptables", "-I" if cut else "-D", "OUTPUT", "-d", bed.etcd_address, "-p", "tcp", "--dport", "2379",
             "-j", "DROP")


def lease_name(agent: Agent, dual: bool) -> str:
    v6 = ipaddress.ip_network(agent.subnet_of(6)) if dual else None
    return subnet_key_name(ipaddress.ip_network(agent.subnet_of(4)), v6)


def no_overlaps(names: List[str]) -> bool:
    parsed = [parse_subnet_key(name) for name in names]
    return not any(a is not None and b is not None and a.overlaps(b)
                   for i, x in enumerate(parsed) for y in parsed[i + 1:] for a, b in zip(x, y))


@pytest.mark.parametrize("api", ["v2", "v3"])
@pytest.mark.parametrize("stack", ["single", "dual"])
@pytest.mark.parametrize("lost", ["expired", "etcd-wiped"])
def test_node_back_from_a_partition_gives_way_to_the_node_holding_its_subnet(
        lost: str, stack: str, api: str, testbed: Any, bed_etcd: Any) -> None:
    dual = stack == "dual"
    bed = testbed(["A", "A", "A"], ipv6=dual)
    server = bed_etcd(bed)
    etcd = Etcd(bed, server, api)
    config = json.dumps(dict(CONFIG, **(DUAL if dual else {})))
    etcd.put(PREFIX + "/config", config)
    args = ["--etcd-api", api, "--subnet-lease-ttl", str(TTL if lost == "expired" else 300)]
    old, peer, new = (Agent(host, server.url, PREFIX, list(args)) for host in bed.hosts)
    old.start()
    peer.start()
    wait_peers([old, peer])
    old_name = lease_name(old, dual)

    cut_off(bed, old.host)
    if lost == "expired":
        wait_for(lambda: old_name not in etcd.leases(), TTL + 15, interval=0.5,
                 what="the cut-off node's lease expiring")
    else:
        server.stop()
        shutil.rmtree(os.path.join(server.data_dir, "data"))
        server.start()
        etcd.put(PREFIX + "/config", config)
        wait_for(lambda: list(etcd.leases()) == [lease_name(peer, dual)], 15, interval=0.5,
                 what="the reachable node writing its lease back")
    if dual:
        with open(new.subnet_file, "w") as f:
            f.write("FLANNEL_IPV6_SUBNET=%s\n" % NEW6)
        os.utime(new.subnet_file, (0, 0))  # an old file: readiness is the agent's fresh write
    new.start()
    assert new.subnet == old.subnet  # the only free IPv4 subnet was the cut-off node's
    new_name = lease_name(new, dual)
    assert (new_name != old_name) == dual  # dual stack: another IPv6 subnet, another key

    cut_off(bed, old.host, cut=False)
    assert old.proc is not None
    code = old.proc.wait(60)
    log = old.logtext()
    assert code == 1, log[-3000:]
    lines = [line for line in log.splitlines() if "exiting with status 1" in line]
    assert len(lines) == 1 and new.host.address in lines[0], log[-3000:]
    assert "more characters)" not in lines[0]  # not cut: the whole story on one line
    if dual:  # the line names the lease that keeps the subnet
        assert "its lease %s %s" % (new.subnet_of(4), new.subnet_of(6)) in lines[0], lines[0]
    assert "wrote it back" not in log.split("==== start 0", 1)[1]

    leases = etcd.leases()
    assert leases == {lease_name(peer, dual): peer.host.address, new_name: new.host.address}, leases
    assert no_overlaps(list(leases))
    wait_peers([peer, new])
    failed = ping_all([peer, new], versions=(4, 6) if dual else (4,))
    assert not failed, failed
    assert peer.proc is not None and peer.proc.poll() is None
    assert new.proc is not None and new.proc.poll() is None


@pytest.mark.parametrize("phase,api", [("start-up", "v2"), ("start-up", "v3"), ("running", "v2"), ("running", "v3"),
                                       ("connect", "auto")])
def test_sigterm_within_2_s_while_cut_off_from_etcd(phase: str, api: str, testbed: Any, bed_etcd: Any) -> None:
    """A request to an etcd that drops packets waits for the store's 5 s timeout: SIGTERM does not.
    ``connect``: --etcd-api auto probes which API the endpoint speaks, the first thing the agent asks etcd."""
    bed = testbed(["A"])
    server = bed_etcd(bed)
    Etcd(bed, server, "v3" if api == "auto" else api).put(PREFIX + "/config", json.dumps(CONFIG))
    # a 4 s TTL renews every 2 s: a renewal is under way while the node is cut off
    agent = Agent(bed.hosts[0], server.url, PREFIX, ["--etcd-api", api, "--subnet-lease-ttl", "4"])
    if phase == "connect":
        cut_off(bed, agent.host)
        agent.start(wait=False)
        wait_for(lambda: "starting" in agent.logtext(), 15, what="the agent starting")
    elif phase == "start-up":
        cut_off(bed, agent.host)
        agent.start(wait=False)
        wait_for(lambda: "using etcd %s API" % api in agent.logtext(), 15, what="the agent asking etcd for its config")
    else:
        agent.start()
        cut_off(bed, agent.host)
    time.sleep(3)  # a request to etcd is under way (it times out after 5 s on v3, 20 s on v2)
    assert agent.proc is not None
    proc = agent.proc
    began = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(15)
    took = time.monotonic() - began
    log = agent.logtext()
    assert code == 0 and took < 2.0, (code, took, log[-2000:])
    assert ("is kept for the next start" if phase == "running" else "stopped before the agent was ready") in log
