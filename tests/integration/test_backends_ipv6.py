"""vxlan and host-gw carrying IPv6 (Go flanneld v0.20): dual-stack and IPv6-only networks, with real packets
between namespaces (TestBed(ipv6=True): every host has fd00:30:N::1M beside 172.30.N.1M) and the backends
driven directly by testbed/backend_driver.py (no etcd)."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import pytest

from testbed.netns import BackendDriver, Host, TestBed, ping_pairs
from tests.integration.conftest import _need_root

pytestmark = [pytest.mark.integration]

NET4 = "10.100.0.0/16"
NET6 = "fd10::/48"
DUAL = {"EnableIPv6": True, "IPv6Network": NET6, "IPv6SubnetLen": 64}
V6ONLY = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": NET6, "IPv6SubnetLen": 64}
PROTO = {"vxlan": 109, "host-gw": 108}


def s4(n: int) -> str:
    return "10.100.%d.0/24" % n


def s6(n: int) -> str:
    return "fd10:0:0:%x::/64" % n


def gw4(n: int) -> str:
    return "10.100.%d.1" % n


def gw6(n: int) -> str:
    return "fd10:0:0:%x::1" % n


@pytest.fixture
def bed6() -> Any:
    """``bed = bed6(["A", "A", "B"])``: a dual-stack test bed, destroyed at the end of the test."""
    _need_root()
    beds: List[TestBed] = []

    def make(segments: List[str], second: Any = None) -> TestBed:
        bed = TestBed(segments, second, ipv6=True)
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.destroy()


def item(n: int, driver: BackendDriver, dual: bool = True) -> Dict[str, Any]:
    """The lease of host ``n`` as the driver's JSON ops take it."""
    return {"subnet": s4(n) if dual else None, "subnet6": s6(n), "value": driver.lease_value}


def up(host: Host, backend: Dict[str, Any], dual: bool = True, others: Optional[List[Dict[str, Any]]] = None,
       **kwargs: Any) -> BackendDriver:
    return BackendDriver.up(host, NET4 if dual else None, backend, s4(host.n) if dual else None, others or [],
                            subnet6=s6(host.n), config=DUAL if dual else V6ONLY, **kwargs)


def mesh(hosts: List[Host], backend: Dict[str, Any], dual: bool = True) -> List[BackendDriver]:
    """A driver per host, each synced with every other host's lease."""
    drivers = [up(h, backend, dual) for h in hosts]
    for h, d in zip(hosts, drivers):
        others = [item(o.n, od, dual) for o, od in zip(hosts, drivers) if o is not h]
        reply = d.call("sync", leases=others)
        assert reply["ok"], reply
    return drivers


def mesh_pairs(hosts: List[Host], dual: bool = True) -> List[Tuple[Host, str, str]]:
    pairs = []
    for a in hosts:
        for b in hosts:
            if a is not b:
                pairs.append((a, gw6(a.n), gw6(b.n)))
                if dual:
                    pairs.append((a, gw4(a.n), gw4(b.n)))
    return pairs


def routes(host: Host, version: int, proto: int) -> Dict[str, Dict[str, Any]]:
    return {r["dst"]: r for r in host.ip_json("-%d" % version, "route", "show", "proto", str(proto))}


def v6_neigh(host: Host, dev: str) -> Dict[str, str]:
    return {n["dst"]: n.get("lladdr") for n in host.ip_json("-6", "neigh", "show", "dev", dev)
            if "PERMANENT" in n.get("state", [])}


def fdb(host: Host, dev: str) -> Dict[str, str]:
    entries = json.loads(host.run("bridge", "-j", "fdb", "show", "dev", dev).stdout or "[]")
    return {f["mac"]: f["dst"] for f in entries if f.get("dst")}


def logtext(driver: BackendDriver) -> str:
    with open(driver.log, errors="replace") as f:
        return f.read()


# -- dual-stack and IPv6-only meshes ----------------------------------------------------------------------


@pytest.mark.parametrize("backend,segments", [("vxlan", ["A", "A", "B"]), ("host-gw", ["A", "A", "A"])])
def test_dual_stack_mesh(bed6: Any, backend: str, segments: List[str]) -> None:
    """Three hosts, IPv4 and IPv6 overlay: every host reaches every other host's bridge in both families
    (vxlan: the third host is behind the router, so both underlays are routed)."""
    bed = bed6(segments)
    hosts = bed.hosts
    drivers = mesh(hosts, {"Type": backend})
    failed = ping_pairs(mesh_pairs(hosts))
    assert not failed, "\n".join("%s:\n%s" % kv for kv in failed.items())
    h1 = hosts[0]
    r6 = routes(h1, 6, PROTO[backend])
    r4 = routes(h1, 4, PROTO[backend])
    assert set(r6) == {s6(2), s6(3)} and set(r4) == {s4(2), s4(3)}
    lease = json.loads(drivers[1].lease_value)
    assert lease["PublicIP"] == hosts[1].address and lease["PublicIPv6"] == hosts[1].address6
    if backend == "host-gw":
        assert r6[s6(2)]["gateway"] == hosts[1].address6 and r6[s6(2)]["dev"] == "eth0"
        assert "BackendV6Data" not in lease
        return
    # vxlan: a second device over the IPv6 underlay, its own VtepMAC in BackendV6Data
    v6 = hosts[1].link("flannel-v6.1")
    v4 = hosts[1].link("flannel.1")
    assert v6 is not None and v4 is not None
    info = v6["linkinfo"]["info_data"]
    assert info["id"] == 1 and info["port"] == 8472 and info["local6"] == hosts[1].address6
    assert v6["mtu"] == 1500 - 70 and v4["mtu"] == 1500 - 50
    assert lease["BackendV6Data"] == {"VNI": 1, "VtepMAC": v6["address"]}
    assert lease["BackendData"]["VtepMAC"] == v4["address"] != v6["address"]
    addrs = [(a["local"], a["prefixlen"]) for i in hosts[1].ip_json("-6", "addr", "show", "dev", "flannel-v6.1")
             for a in i["addr_info"] if a.get("scope") == "global"]
    assert addrs == [("fd10:0:0:2::", 128)]
    assert r6[s6(2)]["gateway"] == "fd10:0:0:2::" and r6[s6(2)]["dev"] == "flannel-v6.1"
    assert "onlink" in r6[s6(2)]["flags"]
    assert v6_neigh(h1, "flannel-v6.1") == {"fd10:0:0:2::": v6["address"],
                                            "fd10:0:0:3::": hosts[2].link("flannel-v6.1")["address"]}
    wanted = {v6["address"]: hosts[1].address6, hosts[2].link("flannel-v6.1")["address"]: hosts[2].address6}
    assert fdb(h1, "flannel-v6.1") == wanted


@pytest.mark.parametrize("backend,segments", [("vxlan", ["A", "A", "B"]), ("host-gw", ["A", "A", "A"])])
def test_ipv6_only_mesh(bed6: Any, backend: str, segments: List[str]) -> None:
    """EnableIPv4 false: IPv6 routes only; vxlan has flannel-v6.<VNI> and no flannel.<VNI>."""
    bed = bed6(segments)
    hosts = bed.hosts
    drivers = mesh(hosts, {"Type": backend}, dual=False)
    failed = ping_pairs(mesh_pairs(hosts, dual=False))
    assert not failed, "\n".join("%s:\n%s" % kv for kv in failed.items())
    for h in hosts:
        assert set(routes(h, 6, PROTO[backend])) == {s6(o.n) for o in hosts if o is not h}
        assert not routes(h, 4, PROTO[backend])
        assert h.link("flannel.1") is None
        assert (h.link("flannel-v6.1") is not None) == (backend == "vxlan")
    lease = json.loads(drivers[0].lease_value)
    assert lease["PublicIP"] == "0.0.0.0" and lease["PublicIPv6"] == hosts[0].address6
    assert ("BackendData" in lease) is False
    # an IPv4 device an earlier dual-stack run left goes
    if backend == "vxlan":
        drivers[0].close()
        d = up(hosts[0], {"Type": "vxlan"}, dual=True)
        assert hosts[0].link("flannel.1") is not None
        d.close()
        d = up(hosts[0], {"Type": "vxlan"}, dual=False)
        assert hosts[0].link("flannel.1") is None and hosts[0].link("flannel-v6.1") is not None


def test_vxlan_ipv6_direct_routing(bed6: Any) -> None:
    """DirectRouting: a peer on our L2 segment gets a plain IPv6 route via its PublicIPv6, one behind the
    router the vxlan route."""
    bed = bed6(["A", "A", "B"])
    hosts = bed.hosts
    mesh(hosts, {"Type": "vxlan", "DirectRouting": True})
    r6 = routes(hosts[0], 6, 109)
    assert r6[s6(2)]["gateway"] == hosts[1].address6 and r6[s6(2)]["dev"] == "eth0"
    assert r6[s6(3)]["gateway"] == "fd10:0:0:3::" and r6[s6(3)]["dev"] == "flannel-v6.1"
    assert set(v6_neigh(hosts[0], "flannel-v6.1")) == {"fd10:0:0:3::"}
    failed = ping_pairs(mesh_pairs(hosts))
    assert not failed, "\n".join("%s:\n%s" % kv for kv in failed.items())


# -- repairs ------------------------------------------------------------------------------------------------


def test_vxlan_ipv6_repairs(bed6: Any) -> None:
    bed = bed6(["A", "B"])
    h1, h2 = bed.hosts
    d1, d2 = mesh([h1, h2], {"Type": "vxlan"})
    assert not ping_pairs([(h1, gw6(1), gw6(2))])
    mac = h2.link("flannel-v6.1")["address"]
    # somebody removes our IPv6 route, neighbour and fdb entry: tick() puts them back
    h1.run("ip", "-6", "route", "del", s6(2))
    h1.run("ip", "-6", "neigh", "del", "fd10:0:0:2::", "dev", "flannel-v6.1")
    h1.run("bridge", "fdb", "del", mac, "dev", "flannel-v6.1", "dst", h2.address6)
    assert h1.ping6(gw6(2), gw6(1), count=1, deadline=2).returncode != 0
    before = d1.call("status")["metrics"]["datapath_repairs_total"]
    assert d1.call("tick")["ok"]
    assert d1.call("status")["metrics"]["datapath_repairs_total"] == before + 1  # one lease put right
    assert not ping_pairs([(h1, gw6(1), gw6(2)), (h1, gw4(1), gw4(2))])
    # one entry at a time: each is found and put back
    h1.run("ip", "-6", "neigh", "replace", "fd10:0:0:2::", "lladdr", "02:00:00:00:00:01", "dev", "flannel-v6.1",
           "nud", "permanent")
    assert d1.call("tick")["ok"]
    assert v6_neigh(h1, "flannel-v6.1") == {"fd10:0:0:2::": mac}
    h1.run("bridge", "fdb", "replace", mac, "dev", "flannel-v6.1", "dst", "fd00:30:1::99", "self", "permanent")
    assert d1.call("tick")["ok"]
    assert fdb(h1, "flannel-v6.1") == {mac: h2.address6}
    # a stale IPv6 route of ours nobody asked for goes with the next sync
    h1.run("ip", "-6", "route", "add", "fd10:0:0:7::/64", "via", "fd10:0:0:7::", "dev", "flannel-v6.1", "onlink",
           "proto", "109")
    assert d1.call("sync", leases=[item(2, d2)])["ok"]
    assert "fd10:0:0:7::/64" not in routes(h1, 6, 109)
    # the IPv6 device deleted behind our back comes back with the lease's V6 VtepMAC
    own = h1.link("flannel-v6.1")["address"]
    h1.run("ip", "link", "del", "flannel-v6.1")
    assert d1.call("tick")["ok"]
    assert h1.link("flannel-v6.1")["address"] == own
    assert not ping_pairs([(h1, gw6(1), gw6(2)), (h2, gw6(2), gw6(1)), (h1, gw4(1), gw4(2))])
    # its MAC changed behind our back: restored
    h1.run("ip", "link", "set", "flannel-v6.1", "address", "02:11:22:33:44:55")
    assert d1.call("tick")["ok"]
    assert h1.link("flannel-v6.1")["address"] == own
    assert not ping_pairs([(h2, gw6(2), gw6(1))])
    # the lease goes: IPv6 route, neighbour and fdb entry go with it (and the IPv4 ones)
    assert d1.call("remove", **item(2, d2))["ok"]
    assert not routes(h1, 6, 109) and not routes(h1, 4, 109)
    assert not v6_neigh(h1, "flannel-v6.1") and not fdb(h1, "flannel-v6.1")


def test_hostgw_ipv6_repairs_and_offlink(bed6: Any) -> None:
    bed = bed6(["A", "A"])
    h1, h2 = bed.hosts
    d1, _d2 = mesh([h1, h2], {"Type": "host-gw"})
    assert not ping_pairs([(h1, gw6(1), gw6(2))])
    h1.run("ip", "-6", "route", "del", s6(2))
    assert d1.call("tick")["ok"]
    route = routes(h1, 6, 108)[s6(2)]
    assert route["gateway"] == h2.address6 and route["dev"] == "eth0"
    assert d1.call("status")["metrics"]["datapath_repairs_total"] == 1
    assert not ping_pairs([(h1, gw6(1), gw6(2)), (h1, gw4(1), gw4(2))])
    # a next hop not on a connected IPv6 network: no route, one log line, retried when the subnets change
    far = {"subnet": s4(9), "subnet6": s6(9),
           "value": json.dumps({"PublicIP": h2.address, "PublicIPv6": "fd00:99::5", "BackendType": "host-gw"})}
    assert d1.call("add", **far)["ok"]
    for _round in range(3):
        assert d1.call("tick")["ok"]
    assert s6(9) not in routes(h1, 6, 108) and s4(9) in routes(h1, 4, 108)
    status = d1.call("status")["status"]
    assert status["unreachable_leases"] == [s6(9)]
    assert logtext(d1).count("fd00:99::5, which is not on-link") == 1
    h1.run("ip", "addr", "add", "fd00:99::1/64", "dev", "eth0", "nodad")
    assert d1.call("tick")["ok"]
    assert routes(h1, 6, 108)[s6(9)]["gateway"] == "fd00:99::5"
    assert d1.call("status")["status"]["unreachable_leases"] == []
    # the lease goes: both its routes go
    assert d1.call("remove", **far)["ok"]
    assert s6(9) not in routes(h1, 6, 108) and s4(9) not in routes(h1, 4, 108)


def test_hostgw_ipv6_nat_is_refused(bed6: Any) -> None:
    bed = bed6(["A"])
    (h1,) = bed.hosts
    d = BackendDriver(h1)
    cfg = {"Network": NET4, "Backend": {"Type": "host-gw"}, **DUAL}
    reply = d.call("create", config=cfg, iface="eth0", ipv6=True, public_ipv6="fd00:30:9::1")
    assert not reply["ok"] and "public IPv6 fd00:30:9::1" in reply["error"], reply
    reply = d.call("create", config=cfg, iface="eth0", ipv6=True)
    assert reply["ok"], reply
    d.close()


# -- device settings, VNI change, cleanup, backend switch ----------------------------------------------------


def test_vxlan_ipv6_device_follows_the_config(bed6: Any) -> None:
    bed = bed6(["A"])
    (h1,) = bed.hosts
    d = up(h1, {"Type": "vxlan"})
    first = h1.link("flannel-v6.1")
    d.close()
    d = up(h1, {"Type": "vxlan"})  # same config: kept
    assert h1.link("flannel-v6.1")["ifindex"] == first["ifindex"]
    d.close()
    d = up(h1, {"Type": "vxlan", "Port": 4789, "Learning": True, "GBP": True})
    link = h1.link("flannel-v6.1")
    info = link["linkinfo"]["info_data"]
    assert link["ifindex"] != first["ifindex"]
    assert info["port"] == 4789 and info.get("learning") and info.get("gbp") and info["local6"] == h1.address6
    assert json.loads(d.lease_value)["BackendV6Data"]["VtepMAC"] == link["address"]
    d.close()
    # the interface's IPv6 address changed: the device is recreated with the new local address
    h1.run("ip", "addr", "add", "fd00:30:1::99/64", "dev", "eth0", "nodad")
    h1.run("ip", "addr", "del", h1.address6 + "/64", "dev", "eth0")
    d = up(h1, {"Type": "vxlan", "Port": 4789, "Learning": True, "GBP": True})
    assert h1.link("flannel-v6.1")["linkinfo"]["info_data"]["local6"] == "fd00:30:1::99"
    d.close()


def test_vxlan_ipv6_cleanup_vni_change_and_switch(bed6: Any) -> None:
    bed = bed6(["A", "A"])
    h1, h2 = bed.hosts

    def v6_state() -> Tuple[List[str], Dict[str, Any]]:
        return [n for n in h1.links() if n.startswith("flannel")], routes(h1, 6, 109)

    d1, d2 = mesh([h1, h2], {"Type": "vxlan"})
    assert set(routes(h1, 6, 109)) == {s6(2)}
    # cleanup(): no device, no route of either family left
    assert d1.call("cleanup")["ok"]
    assert v6_state() == ([], {}) and not routes(h1, 4, 109)
    d1.close()
    # a VNI change: the VNI 1 devices go, the VNI 2 ones come
    d1 = up(h1, {"Type": "vxlan"}, others=[item(2, d2)])
    assert set(v6_state()[0]) == {"flannel.1", "flannel-v6.1"}
    d1.close()
    d1 = up(h1, {"Type": "vxlan", "VNI": 2})
    assert set(v6_state()[0]) == {"flannel.2", "flannel-v6.2"} and not routes(h1, 6, 109)
    d1.close()
    # the network drops IPv6: flannel-v6 goes
    d1 = BackendDriver.up(h1, NET4, {"Type": "vxlan", "VNI": 2}, s4(1), [])
    assert set(v6_state()[0]) == {"flannel.2"}
    d1.close()
    # a backend switch (close keeps everything, as a restart does; the next backend removes it)
    d1 = up(h1, {"Type": "vxlan"}, others=[item(2, d2)])
    assert set(routes(h1, 6, 109)) == {s6(2)}
    d1.close()
    assert h1.link("flannel-v6.1") is not None and routes(h1, 6, 109)
    d1 = up(h1, {"Type": "host-gw"}, others=[])
    assert v6_state() == ([], {}) and not routes(h1, 4, 109)
    # and back: host-gw's IPv6 routes go too
    assert d1.call("sync", leases=[{"subnet": s4(2), "subnet6": s6(2),
                                    "value": json.dumps({"PublicIP": h2.address, "PublicIPv6": h2.address6,
                                                         "BackendType": "host-gw"})}])["ok"]
    assert set(routes(h1, 6, 108)) == {s6(2)}
    d1.close()
    d1 = up(h1, {"Type": "vxlan"})
    assert not routes(h1, 6, 108) and not routes(h1, 4, 108)
    d1.close()


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_hostile_public_ipv6_gets_no_datapath(bed6: Any, backend: str) -> None:
    """The lease validator refuses such leases upstream; handed to the backend anyway (the driver does not
    validate), a link-local, multicast or unspecified PublicIPv6 gets no IPv6 route, neighbour or fdb
    entry (the lease's IPv4 part is still served)."""
    bed = bed6(["A"])
    (h1,) = bed.hosts
    d = up(h1, {"Type": backend})
    leases = []
    for n, bad in ((5, "fe80::1"), (6, "ff02::1"), (7, "::"), (8, "::ffff:172.30.1.12")):
        value = {"PublicIP": "172.30.1.%d" % (20 + n), "PublicIPv6": bad, "BackendType": backend}
        if backend == "vxlan":
            value["BackendData"] = {"VNI": 1, "VtepMAC": "02:00:00:00:00:%02x" % n}
            value["BackendV6Data"] = {"VNI": 1, "VtepMAC": "02:00:00:00:01:%02x" % n}
        leases.append({"subnet": s4(n), "subnet6": s6(n), "value": json.dumps(value)})
    assert d.call("sync", leases=leases)["ok"]
    assert d.call("tick")["ok"]
    assert not routes(h1, 6, PROTO[backend])
    assert set(routes(h1, 4, PROTO[backend])) == {s4(n) for n in (5, 6, 7, 8)}
    if backend == "vxlan":
        assert not v6_neigh(h1, "flannel-v6.1") and not fdb(h1, "flannel-v6.1")
