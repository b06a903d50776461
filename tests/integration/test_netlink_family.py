"""pyflannel.netlink with IPv6 (and IPv4 beside it) against real netlink, in a throw-away namespace.

Each test runs a snippet of pyflannel.netlink calls inside the namespace (the module keeps one
netlink socket per process) and checks the kernel's state with iproute2, an independent tool.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from typing import Any

import pytest

MAC1, MAC2 = "0a:00:00:00:00:01", "0a:00:00:00:00:02"

PRELUDE = """
import ipaddress, json, socket, sys
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network
from pyflannel import netlink
from socket import AF_INET, AF_INET6
br = netlink.link_by_name("br0")["index"]
out = {}
"""


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture
def ns():
    name = "pfl-nl-" + secrets.token_hex(3)
    sh("ip", "netns", "add", name)
    try:
        for cmd in (
            "ip link set lo up",
            "ip link add br0 type bridge", "ip link set br0 up",
            "ip addr add 10.61.0.1/24 dev br0", "ip addr add fd00:61::1/64 dev br0 nodad",
        ):
            sh("ip", "netns", "exec", name, *cmd.split())
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


def run(ns: str, code: str) -> Any:
    """Run ``code`` (after PRELUDE) inside the namespace; returns its ``out`` (JSON, str() for the rest)."""
    script = PRELUDE + code + "\nprint(json.dumps(out, default=str))\n"
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ip_json(ns: str, *args: str) -> Any:
    out = sh("ip", "-n", ns, "-j", *args).strip()
    return json.loads(out) if out else []


def kernel_routes(ns: str, family: str, proto: int) -> Any:
    return sorted((r["dst"], r.get("gateway"), "onlink" in r.get("flags", []))
                  for r in ip_json(ns, family, "route", "show", "proto", str(proto)))


def test_ipv6_routes_with_a_protocol_added_replaced_dumped_deleted(ns):
    out = run(ns, """
netlink.replace_route(IPv6Network("fd00:70::/64"), br, 108, gateway="fd00:61::5")
netlink.replace_route(IPv6Network("fd00:70::/64"), br, 108, gateway="fd00:61::6")   # replaced, not added
netlink.replace_route(IPv6Network("fd00:71::/64"), br, 108)                          # dev route
netlink.replace_route(IPv6Network("fd00:72::/64"), br, 108, gateway="fd00:99::1", onlink=True)
netlink.replace_route(IPv4Network("10.70.0.0/24"), br, 108, gateway="10.61.0.5")     # IPv4 as before
out["v6"] = sorted((str(r["dst"]), type(r["dst"]).__name__, r["gateway"], r["oif"] == br, r["onlink"])
                   for r in netlink.routes(108, AF_INET6))
out["v4"] = [(str(r["dst"]), type(r["dst"]).__name__, r["gateway"]) for r in netlink.routes(108)]
out["other"] = netlink.routes(109, AF_INET6)
out["del"] = netlink.delete_route(IPv6Network("fd00:71::/64"), proto=108)
out["again"] = netlink.delete_route(IPv6Network("fd00:71::/64"), proto=108)
out["wrong_proto"] = netlink.delete_route(IPv6Network("fd00:70::/64"), proto=109)
""")
    assert out["v6"] == [["fd00:70::/64", "IPv6Network", "fd00:61::6", True, False],
                         ["fd00:71::/64", "IPv6Network", None, True, False],
                         ["fd00:72::/64", "IPv6Network", "fd00:99::1", True, True]]
    assert out["v4"] == [["10.70.0.0/24", "IPv4Network", "10.61.0.5"]]  # the default family is still IPv4
    assert out["other"] == []
    assert (out["del"], out["again"], out["wrong_proto"]) == (True, False, False)
    assert kernel_routes(ns, "-6", 108) == [("fd00:70::/64", "fd00:61::6", False),
                                            ("fd00:72::/64", "fd00:99::1", True)]
    assert kernel_routes(ns, "-4", 108) == [("10.70.0.0/24", "10.61.0.5", False)]


def test_delete_routes_by_protocol_removes_both_families(ns):
    out = run(ns, """
netlink.replace_route(IPv4Network("10.70.0.0/24"), br, 109, gateway="10.61.0.5")
netlink.replace_route(IPv6Network("fd00:70::/64"), br, 109, gateway="fd00:61::5")
netlink.replace_route(IPv6Network("fd00:71::/64"), br, 109)
netlink.replace_route(IPv4Network("10.71.0.0/24"), br, 108, gateway="10.61.0.5")   # another backend's
netlink.replace_route(IPv6Network("fd00:73::/64"), br, 108, gateway="fd00:61::5")
out["v6_only"] = netlink.delete_routes(109, AF_INET6)
netlink.replace_route(IPv6Network("fd00:70::/64"), br, 109, gateway="fd00:61::5")
out["both"] = netlink.delete_routes(109)
out["nothing_left"] = netlink.delete_routes(109)
""")
    assert (out["v6_only"], out["both"], out["nothing_left"]) == (2, 2, 0)
    assert kernel_routes(ns, "-4", 109) == [] and kernel_routes(ns, "-6", 109) == []
    assert kernel_routes(ns, "-4", 108) == [("10.71.0.0/24", "10.61.0.5", False)]
    assert kernel_routes(ns, "-6", 108) == [("fd00:73::/64", "fd00:61::5", False)]


def test_ipv6_neighbours(ns):
    out = run(ns, """
netlink.replace_neighbour(br, "fd00:61::7", "%s")
netlink.replace_neighbour(br, "FD00:61:0::8", "%s")         # any spelling; read back canonical
netlink.replace_neighbour(br, "10.61.0.7", "%s")
out["v4"] = netlink.neighbours(br)
out["v6"] = netlink.neighbours(br, AF_INET6)
netlink.delete_neighbour(br, "fd00:61::7")
netlink.delete_neighbour(br, "fd00:61::7")                   # already gone: fine
out["v6_after"] = netlink.neighbours(br, AF_INET6)
out["v4_after"] = netlink.neighbours(br)
""" % (MAC1, MAC2, MAC1))
    assert out["v4"] == {"10.61.0.7": MAC1}
    assert out["v6"] == {"fd00:61::7": MAC1, "fd00:61::8": MAC2}
    assert out["v6_after"] == {"fd00:61::8": MAC2} and out["v4_after"] == {"10.61.0.7": MAC1}
    kernel = {n["dst"]: n["lladdr"] for n in ip_json(ns, "-6", "neigh", "show", "dev", "br0", "nud", "permanent")}
    assert kernel == {"fd00:61::8": MAC2}


def test_fdb_with_an_ipv6_underlay(ns):
    sh("ip", "-n", ns, "link", "add", "vx6", "type", "vxlan", "id", "6", "local", "fd00:61::1", "dev", "br0",
       "dstport", "8472", "nolearning")
    sh("ip", "-n", ns, "link", "set", "vx6", "up")
    out = run(ns, """
vx = netlink.link_by_name("vx6")["index"]
netlink.replace_fdb(vx, "%s", "fd00:61::2")
netlink.replace_fdb(vx, "%s", "FD00:61:0:0::3")
netlink.replace_fdb(vx, "%s", "fd00:61::2")                  # again: unchanged
out["fdb"] = netlink.fdb_entries(vx)
# what a reconcile does: compare with the wanted (canonical) underlay addresses
want = {"%s": "fd00:61::2", "%s": "fd00:61::3"}
out["stale"] = [mac for mac, dst in out["fdb"].items() if want.get(mac) != dst]
netlink.delete_fdb(vx, "%s", "fd00:61:0::3")
out["after"] = netlink.fdb_entries(vx)
""" % (MAC1, MAC2.upper(), MAC1, MAC1, MAC2, MAC2))
    assert out["fdb"] == {MAC1: "fd00:61::2", MAC2: "fd00:61::3"}
    assert out["stale"] == []
    assert out["after"] == {MAC1: "fd00:61::2"}
    kernel = [(e["mac"], e.get("dst")) for e in json.loads(sh("bridge", "-n", ns, "-j", "fdb", "show", "dev", "vx6"))
              if e["mac"] != "00:00:00:00:00:00" and e.get("dst")]
    assert kernel == [(MAC1, "fd00:61::2")]


def addr_info(ns: str, dev: str) -> Any:
    return ip_json(ns, "addr", "show", "dev", dev)[0]["addr_info"]


def test_set_only_address_ipv6_keeps_link_local_and_ipv4(ns):
    sh("ip", "-n", ns, "addr", "add", "fd00:62::1/64", "dev", "br0", "nodad")
    linklocal = [a["local"] for a in addr_info(ns, "br0") if a["family"] == "inet6" and a["scope"] == "link"]
    assert len(linklocal) == 1  # the kernel's own fe80:: address
    out = run(ns, """
new = IPv6Interface("fd00:63::1/64")
out["first"] = netlink.set_only_address(br, new)
out["second"] = netlink.set_only_address(br, new)
out["v6"] = [str(a) for a in netlink.addresses(br, AF_INET6)]
out["v6_global"] = [str(a) for a in netlink.global_addresses(br, AF_INET6)]
out["v4"] = [str(a) for a in netlink.addresses(br, AF_INET)]
out["ipv4_addresses"] = [str(a) for a in netlink.ipv4_addresses(br)]
out["types"] = sorted({type(a).__name__ for a in netlink.addresses(br, AF_INET6)})
# an IPv4 set_only_address leaves the IPv6 addresses alone
out["v4_change"] = netlink.set_only_address(br, IPv4Interface("10.62.0.1/24"))
out["v6_after_v4"] = [str(a) for a in netlink.global_addresses(br, AF_INET6)]
out["v4_after_v4"] = [str(a) for a in netlink.ipv4_addresses(br)]
""")
    assert (out["first"], out["second"]) == (True, False)
    assert out["v6_global"] == ["fd00:63::1/64"]
    assert sorted(out["v6"]) == sorted(["fd00:63::1/64", linklocal[0] + "/64"])
    assert out["v4"] == out["ipv4_addresses"] == ["10.61.0.1/24"]
    assert out["types"] == ["IPv6Interface"]
    assert out["v4_change"] is True
    assert out["v6_after_v4"] == ["fd00:63::1/64"] and out["v4_after_v4"] == ["10.62.0.1/24"]
    info = {(a["local"], a["prefixlen"]): a for a in addr_info(ns, "br0")}
    assert set(info) == {("fd00:63::1", 64), (linklocal[0], 64), ("10.62.0.1", 24)}
    new = info[("fd00:63::1", 64)]
    assert new.get("nodad") is True and not new.get("tentative")  # usable at once, no DAD delay


def test_addresses_report_tentative_ipv6_as_not_usable(ns):
    sh("ip", "-n", ns, "link", "add", "br9", "type", "bridge")  # down: its IPv6 address stays tentative
    sh("ip", "-n", ns, "addr", "add", "fd00:69::1/64", "dev", "br9")
    out = run(ns, """
br9 = netlink.link_by_name("br9")["index"]
out["all"] = [str(a) for a in netlink.global_addresses(br9, AF_INET6, usable=False)]
out["usable"] = [str(a) for a in netlink.global_addresses(br9, AF_INET6)]
""")
    assert out == {"all": ["fd00:69::1/64"], "usable": []}


def test_on_link_and_connected_networks_per_family(ns):
    out = run(ns, """
out["v4_nets"] = [str(n) for n in netlink.connected_networks(br)]
out["v6_nets"] = sorted(str(n) for n in netlink.connected_networks(br, AF_INET6))
out["checks"] = [netlink.on_link(br, ip) for ip in ("10.61.0.9", "10.62.0.9", "fd00:61::9", "fd00:62::9",
                                                     "fe80::1")]
nets = netlink.connected_networks(br) + netlink.connected_networks(br, AF_INET6)
out["mixed"] = [netlink.on_link_in(nets, ip) for ip in ("10.61.0.9", "fd00:61::9", "::ffff:10.61.0.9")]
out["families"] = [netlink.family_of(x) == f for x, f in (
    ("10.0.0.1", AF_INET), ("fd00::1", AF_INET6), (IPv6Network("fd00::/64"), AF_INET6),
    (IPv4Network("10.0.0.0/8"), AF_INET), ("fd00::1/64", AF_INET6))]
""")
    assert out["v4_nets"] == ["10.61.0.0/24"]
    assert out["v6_nets"] == ["fd00:61::/64", "fe80::/64"]
    assert out["checks"] == [True, False, True, False, True]
    assert out["mixed"] == [True, True, False]
    assert all(out["families"])
