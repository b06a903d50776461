"""The agent's one teardown entry point (``python -m pyflannel.node teardown``, what playbooks/tasks/teardown.yml
runs) against what real agents installed in network namespaces (testbed/netns.py) with a real etcd:
vxlan devices and routes of both families with iptables and ip6tables chains, then host-gw routes with
EnableNFTables tables. Everything goes, the JSON says what, and a second run removes nothing."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import pytest

from testbed.netns import REPO, Agent, Host, put_config, wait_peers

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
NETWORK, NETWORK6 = "10.100.0.0/16", "fc00:100::/48"
PYTHON = os.path.join(REPO, ".venv", "bin", "python")


def teardown(host: Host, *args: str) -> Dict[str, List[str]]:
    proc = host.run(PYTHON, "-m", "pyflannel.node", "teardown", "--json", *args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


def flannel_leftovers(host: Host) -> List[str]:
    """What the kernel still holds of flannel in the host's namespace, read with the tools, not with pyflannel."""
    out = [name for name in host.links() if name.startswith("flannel")]
    for version in ("-4", "-6"):
        out += ["%s route %s proto %s" % (version, r["dst"], r.get("protocol")) for r in host.ip_json(version, "route")
                if str(r.get("protocol")) in ("108", "109", "110", "111", "host-gw", "vxlan")]
    for tool in ("iptables-save", "ip6tables-save"):
        out += [line for line in host.run(tool).stdout.splitlines() if "FLANNEL" in line]
    out += [line for line in host.run("nft", "list", "tables").stdout.splitlines() if "flannel" in line]
    return out


def run_agents(bed: Any, server: Any, config: Dict[str, Any]) -> List[Agent]:
    put_config(bed, server, PREFIX, config)
    agents = [Agent(host, server.url, PREFIX, ["--ip-masq"]) for host in bed.hosts]
    for agent in agents:
        agent.start(wait=False)
    for agent in agents:
        agent.wait_ready()
    # the routes to the peer's subnets, which the teardown must remove, come through the watch after ready
    wait_peers(agents)
    return agents


def test_teardown_removes_what_real_agents_installed(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A"], ipv6=True)
    server = bed_etcd(bed)

    # vxlan, dual stack, iptables mode: devices, routes of both families, iptables and ip6tables chains
    agents = run_agents(bed, server, {"Network": NETWORK, "EnableIPv6": True, "IPv6Network": NETWORK6,
                                      "Backend": {"Type": "vxlan"}})
    peer = agents[1]
    for agent in agents:
        assert agent.stop() == 0  # a clean stop keeps the datapath (a restart must not flap traffic)
    host = agents[0].host
    assert flannel_leftovers(host)
    check = teardown(host, "--check")
    assert flannel_leftovers(host), "--check removed something"
    result = teardown(host)
    assert result["errors"] == [] and result["left"] == []
    assert sorted(result["removed"]) == sorted(check["removed"])
    removed = set(result["removed"])
    assert {"device flannel.1", "device flannel-v6.1"} <= removed, removed
    assert "IPv4 route %s proto 109 (vxlan)" % peer.subnet_of(4) in removed, removed
    assert "IPv6 route %s proto 109 (vxlan)" % peer.subnet_of(6) in removed, removed
    for tool in ("iptables", "ip6tables"):
        assert {"%s chain nat/FLANNEL-POSTRTG" % tool, "%s chain filter/FLANNEL-FWD" % tool,
                "%s jump nat/POSTROUTING -> FLANNEL-POSTRTG" % tool,
                "%s jump filter/FORWARD -> FLANNEL-FWD" % tool} <= removed, removed
    assert flannel_leftovers(host) == []
    assert teardown(host) == {"removed": [], "left": [], "errors": []}
    assert teardown(host, "--check")["removed"] == []

    # host-gw with EnableNFTables on the other host: its vxlan leftovers, the host-gw routes and the nft tables
    agents = run_agents(bed, server, {"Network": NETWORK, "EnableIPv6": True, "IPv6Network": NETWORK6,
                                      "EnableNFTables": True, "Backend": {"Type": "host-gw"}})
    for agent in agents:
        assert agent.stop() == 0
    host = agents[1].host
    result = teardown(host)
    removed = set(result["removed"])
    assert result["errors"] == [] and result["left"] == []
    assert {"nftables table ip flannel-ipv4", "nftables table ip6 flannel-ipv6"} <= removed, removed
    assert "IPv4 route %s proto 108 (host-gw)" % agents[0].subnet_of(4) in removed, removed
    assert "IPv6 route %s proto 108 (host-gw)" % agents[0].subnet_of(6) in removed, removed
    assert flannel_leftovers(host) == []
    assert teardown(host) == {"removed": [], "left": [], "errors": []}

    # a device with a flannel name that is not the agent's kind stays and is reported as left alone
    host.run("ip", "link", "add", "flannel0", "type", "bridge")
    result = teardown(host)
    assert result == {"removed": [], "left": ["device flannel0"], "errors": []}
