"""Backends driven directly (testbed/backend_driver.py: the agent's life cycle without
etcd) inside namespaces: device recreation, options, repairs, foreign leases."""

from __future__ import annotations

import json
from typing import Any, Dict, List

import pytest

from testbed.netns import BackendDriver, Host

pytestmark = [pytest.mark.integration]

NETWORK = "10.100.0.0/16"


def up(host: Host, backend: Dict[str, Any], subnet: str, others: List[Dict[str, str]]) -> BackendDriver:
    return BackendDriver.up(host, NETWORK, backend, subnet, others)


def vxlan_info(host: Host, dev: str = "flannel.1") -> Dict[str, Any]:
    link = host.link(dev)
    assert link is not None, "%s missing" % dev
    return dict(link["linkinfo"]["info_data"], ifindex=link["ifindex"], mtu=link["mtu"])


def test_vxlan_device_follows_the_config(testbed: Any) -> None:
    bed = testbed(["A"])
    (h1,) = bed.hosts
    d = up(h1, {"Type": "vxlan"}, "10.100.1.0/24", [])
    first = vxlan_info(h1)
    assert first["port"] == 8472 and not first.get("learning") and first["mtu"] == 1450
    d.close()
    # same config: the device is kept (no flap)
    d = up(h1, {"Type": "vxlan"}, "10.100.1.0/24", [])
    assert vxlan_info(h1)["ifindex"] == first["ifindex"]
    d.close()
    # another port, learning, GBP and an MTU override: recreated to match
    d = up(h1, {"Type": "vxlan", "Port": 4789, "Learning": True, "GBP": True, "MTU": 1400}, "10.100.1.0/24", [])
    info = vxlan_info(h1)
    assert info["ifindex"] != first["ifindex"]
    assert info["port"] == 4789 and info.get("learning") and info.get("gbp") and info["mtu"] == 1400
    assert json.loads(d.lease_value)["BackendData"]["VtepMAC"] == h1.link("flannel.1")["address"]
    d.close()


def test_vxlan_ignores_foreign_leases_and_repairs(testbed: Any) -> None:
    bed = testbed(["A", "A"])
    h1, h2 = bed.hosts
    d2 = up(h2, {"Type": "vxlan"}, "10.100.2.0/24", [])
    hostgw = {"subnet": "10.100.9.0/24", "value": json.dumps({"PublicIP": "172.30.1.99", "BackendType": "host-gw"})}
    udp = {"subnet": "10.100.8.0/24", "value": json.dumps({"PublicIP": "172.30.1.98"})}
    peer = {"subnet": "10.100.2.0/24", "value": d2.lease_value}
    d1 = up(h1, {"Type": "vxlan"}, "10.100.1.0/24", [hostgw, udp, peer])
    assert d2.call("sync", leases=[{"subnet": "10.100.1.0/24", "value": d1.lease_value}])["ok"]
    routes = {r["dst"]: r for r in h1.routes()}
    assert "10.100.9.0/24" not in routes and "10.100.8.0/24" not in routes
    assert routes["10.100.2.0/24"]["dev"] == "flannel.1"
    assert h1.ping("10.100.2.1", "10.100.1.1", count=2).returncode == 0
    # somebody removes our neighbour, fdb entry and route: tick() puts them back
    mac = h2.link("flannel.1")["address"]
    h1.run("ip", "route", "del", "10.100.2.0/24")
    h1.run("ip", "neigh", "del", "10.100.2.0", "dev", "flannel.1")
    h1.run("bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", h2.address)
    assert h1.ping("10.100.2.1", "10.100.1.1", count=1, deadline=2).returncode != 0
    assert d1.call("tick")["ok"]
    assert h1.ping("10.100.2.1", "10.100.1.1", count=2).returncode == 0
    assert d1.call("status")["metrics"]["datapath_repairs_total"] == 1  # one lease put right
    # a stale entry nobody asked for is removed by the next sync
    h1.run("ip", "route", "add", "10.100.7.0/24", "via", "10.100.7.0", "dev", "flannel.1", "onlink", "proto", "109")
    assert d1.call("sync", leases=[peer])["ok"]
    assert "10.100.7.0/24" not in {r["dst"] for r in h1.routes()}
    # the lease goes: route, neighbour and fdb entry go with it
    assert d1.call("remove", **peer)["ok"]
    assert "10.100.2.0/24" not in {r["dst"] for r in h1.routes()}
    assert not h1.ip_json("neigh", "show", "dev", "flannel.1")
    assert not [f for f in json.loads(h1.run("bridge", "-j", "fdb", "show", "dev", "flannel.1").stdout)
                if f.get("dst")]


def test_vxlan_mac_is_ours_and_stays(testbed: Any) -> None:
    """udev on systemd hosts gives a device created with a kernel-random MAC a new one a moment later
    (MACAddressPolicy=persistent), after the VtepMAC went into the lease. The device is created with
    an address of ours (assign type "set", which udev leaves alone), and tick() restores it if changed."""
    bed = testbed(["A", "A"])
    h1, h2 = bed.hosts
    d2 = up(h2, {"Type": "vxlan"}, "10.100.2.0/24", [])
    d1 = up(h1, {"Type": "vxlan"}, "10.100.1.0/24", [{"subnet": "10.100.2.0/24", "value": d2.lease_value}])
    assert d2.call("sync", leases=[{"subnet": "10.100.1.0/24", "value": d1.lease_value}])["ok"]
    mac = json.loads(d2.lease_value)["BackendData"]["VtepMAC"]
    assert h2.link("flannel.1")["address"] == mac
    # NET_ADDR_SET (3), not NET_ADDR_RANDOM (1): what udev's MACAddressPolicy=persistent skips
    assert h2.run("cat", "/sys/class/net/flannel.1/addr_assign_type").stdout.strip() == "3"
    assert h1.ping("10.100.2.1", "10.100.1.1", count=2).returncode == 0
    h2.run("ip", "link", "set", "flannel.1", "address", "02:11:22:33:44:55")
    assert h1.ping("10.100.2.1", "10.100.1.1", count=1, deadline=2).returncode != 0  # what udev did in VMs
    assert d2.call("tick")["ok"]
    assert h2.link("flannel.1")["address"] == mac
    # the MAC, plus whatever the kernel flushed with the address change (the device's neighbours)
    assert d2.call("status")["metrics"]["datapath_repairs_total"] >= 1
    assert {n["dst"] for n in h2.ip_json("neigh", "show", "dev", "flannel.1")} == {"10.100.1.0"}
    assert h1.ping("10.100.2.1", "10.100.1.1", count=2).returncode == 0
    # a device deleted behind our back comes back with the lease's VtepMAC, not a new one
    h2.run("ip", "link", "del", "flannel.1")
    assert d2.call("tick")["ok"]
    assert h2.link("flannel.1")["address"] == mac
    assert h1.ping("10.100.2.1", "10.100.1.1", count=2).returncode == 0
    # a MacPrefix is kept in front of the random part
    d1.close()
    d1 = up(h1, {"Type": "vxlan", "MacPrefix": "0E-2A", "VNI": 7}, "10.100.1.0/24", [])
    assert h1.link("flannel.7")["address"].startswith("0e:2a:")


def test_hostgw_repairs_missing_routes(testbed: Any) -> None:
    bed = testbed(["A", "A"])
    h1, h2 = bed.hosts
    d2 = up(h2, {"Type": "host-gw"}, "10.100.2.0/24", [])
    d1 = up(h1, {"Type": "host-gw"}, "10.100.1.0/24", [{"subnet": "10.100.2.0/24", "value": d2.lease_value}])
    assert d2.call("sync", leases=[{"subnet": "10.100.1.0/24", "value": d1.lease_value}])["ok"]
    assert h1.ping("10.100.2.1", "10.100.1.1", count=2).returncode == 0
    h1.run("ip", "route", "del", "10.100.2.0/24")
    assert d1.call("tick")["ok"]
    route = {r["dst"]: r for r in h1.routes()}["10.100.2.0/24"]
    assert route["gateway"] == h2.address and route["dev"] == "eth0"
    assert d1.call("status")["metrics"]["datapath_repairs_total"] == 1
    assert h1.ping("10.100.2.1", "10.100.1.1", count=2).returncode == 0


def test_udp_with_an_mtu_beyond_the_link(testbed: Any) -> None:
    """MTU 1500 on a 1500 link: the outer datagrams need IP fragmentation, and still arrive."""
    bed = testbed(["A", "A"])
    h1, h2 = bed.hosts
    d2 = up(h2, {"Type": "udp", "MTU": 1500}, "10.100.2.0/24", [])
    d1 = up(h1, {"Type": "udp", "MTU": 1500}, "10.100.1.0/24", [{"subnet": "10.100.2.0/24", "value": d2.lease_value}])
    assert d2.call("sync", leases=[{"subnet": "10.100.1.0/24", "value": d1.lease_value}])["ok"]
    assert h1.link("flannel0")["mtu"] == 1500
    proc = h1.run("ping", "-n", "-c", "5", "-i", "0.05", "-w", "10", "-s", "1460", "-M", "do", "-I", "10.100.1.1",
                  "10.100.2.1", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = d1.call("status")["metrics"]
    assert metrics["udp_errors_total"] == 0
