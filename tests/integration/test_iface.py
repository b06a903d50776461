"""External interface selection against real netlink, inside a throw-away network namespace."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys

import pytest

PROBE = """
import json, sys
from pyflannel.iface import IfaceError, select
out = []
for kwargs in json.loads(sys.argv[1]):
    try:
        e = select(**kwargs)
        out.append({"name": e.name, "address": e.address, "public_ip": e.public_ip, "mtu": e.mtu,
                    "address6": e.address6, "public_ipv6": e.public_ipv6})
    except IfaceError as err:
        out.append({"error": str(err)})
print(json.dumps(out))
"""

CASES = [
    {},
    {"ifaces": ["br1"]},
    {"ifaces": ["10.78.5.2"]},
    {"ifaces": ["nosuch0", "br1", "br0"]},
    {"regexes": [r"^10\.78\.5\."]},
    {"regexes": ["^br1$"]},
    {"regexes": ["nomatch", "^br0"]},
    {"can_reach": "10.78.0.99"},
    {"can_reach": "192.0.2.55", "public_ip": "203.0.113.7"},
    {"ifaces": ["nosuch0"]},
    {"ifaces": ["br2"]},
    {"regexes": ["zzz"]},
    {"regexes": ["("]},
    {"public_ip": "banana"},
    {"can_reach": "300.1.1.1"},
]

# IPv6 (Go v0.20): br0 and br1 also have global IPv6 addresses, br2 only IPv6, br3 (down) only a tentative
# one, br4 only IPv4 and its link-local; the IPv6 default route leaves through br1
V6 = dict(want_ipv6=True)
V6ONLY = dict(want_ipv4=False, want_ipv6=True)
CASES6 = [
    V6,
    V6ONLY,
    dict(ifaces=["br1"], **V6),
    dict(ifaces=["fd00:78::2"], **V6),
    dict(ifaces=["FD00:78:0::2"], **V6),
    dict(ifaces=["fd00:79::2"], **V6ONLY),
    dict(ifaces=["br2"], **V6ONLY),
    dict(ifaces=["10.78.5.2"], **V6),
    dict(regexes=["^fd00:79:"], **V6ONLY),
    dict(regexes=["^br2$"], **V6ONLY),
    dict(can_reach="fd00:78::99", **V6),
    dict(can_reach="fd00:77::99", **V6ONLY),
    dict(can_reach="2001:db8::1", **V6ONLY),
    dict(can_reach="10.78.0.99", **V6),
    dict(ifaces=["br4"], public_ipv6="FD00:0:0:99::1", **V6),
    dict(ifaces=["br0"], public_ip="203.0.113.7", public_ipv6="fd00:99::2", **V6),
    # errors
    dict(ifaces=["br4"], **V6),
    dict(ifaces=["br3"], **V6),
    dict(ifaces=["fd00:80::2"], **V6),
    dict(ifaces=["fd00:79::2"], **V6),
    dict(ifaces=["fd00:dead::1"], **V6),
    dict(public_ipv6="banana", **V6),
    dict(public_ipv6="10.0.0.1", **V6),
    dict(ifaces=["br0"], public_ipv6="fd00::1"),
    dict(ifaces=["br0"], public_ip="10.0.0.1", **V6ONLY),
    dict(can_reach="fd00::zz", **V6),
]


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def netns():
    name = "pfl-if-" + secrets.token_hex(3)
    sh("ip", "netns", "add", name)
    try:
        for cmd in (
            "ip link set lo up",
            "ip link add br0 mtu 1400 type bridge", "ip addr add 10.77.0.2/24 dev br0", "ip link set br0 up",
            "ip link add br1 type bridge", "ip addr add 10.78.0.2/24 dev br1", "ip addr add 10.78.5.2/24 dev br1",
            "ip link set br1 up",
            "ip link add br2 type bridge", "ip link set br2 up",  # no IPv4 address
            "ip route add default via 10.77.0.1 dev br0 onlink",
            # IPv6
            "ip addr add fd00:77::2/64 dev br0 nodad",
            "ip addr add fd00:78::2/64 dev br1 nodad", "ip addr add fd00:78:5::2/64 dev br1 nodad",
            "ip addr add fd00:79::2/64 dev br2 nodad",
            "ip link add br3 type bridge", "ip addr add 10.80.0.2/24 dev br3",
            "ip addr add fd00:80::2/64 dev br3",  # br3 stays down: its address stays tentative
            "ip link add br4 type bridge", "ip addr add 10.81.0.2/24 dev br4", "ip link set br4 up",
            "ip -6 route add default via fd00:78::1 dev br1",
        ):
            sh("ip", "netns", "exec", name, *cmd.split())
        cases = CASES + CASES6
        yield name, dict(zip([json.dumps(c, sort_keys=True) for c in cases], select_all(name, cases)))
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


def select_all(ns: str, cases):
    """Every selection in one process inside the namespace (starting Python is the slow part)."""
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", PROBE, json.dumps(cases)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def select_in(netns, **kwargs):
    _name, results = netns
    return results[json.dumps(kwargs, sort_keys=True)]


def test_default_route_interface(netns):
    assert select_in(netns) == {"name": "br0", "address": "10.77.0.2", "public_ip": "10.77.0.2", "mtu": 1400,
                                "address6": None, "public_ipv6": None}  # IPv6 not wanted: left empty


def test_iface_by_name_and_by_address(netns):
    assert select_in(netns, ifaces=["br1"])["address"] == "10.78.0.2"
    got = select_in(netns, ifaces=["10.78.5.2"])
    assert (got["name"], got["address"]) == ("br1", "10.78.5.2")


def test_first_matching_iface_wins(netns):
    assert select_in(netns, ifaces=["nosuch0", "br1", "br0"])["name"] == "br1"


def test_iface_regex_addresses_then_names(netns):
    assert select_in(netns, regexes=[r"^10\.78\.5\."])["address"] == "10.78.5.2"
    assert select_in(netns, regexes=["^br1$"])["name"] == "br1"
    assert select_in(netns, regexes=["nomatch", "^br0"])["name"] == "br0"


def test_can_reach_and_public_ip(netns):
    got = select_in(netns, can_reach="10.78.0.99")
    assert (got["name"], got["address"]) == ("br1", "10.78.0.2")
    got = select_in(netns, can_reach="192.0.2.55", public_ip="203.0.113.7")  # via the default route
    assert (got["name"], got["address"], got["public_ip"]) == ("br0", "10.77.0.2", "203.0.113.7")


@pytest.mark.parametrize("kwargs,words", [
    ({"ifaces": ["nosuch0"]}, "no interface matches --iface nosuch0"),
    ({"ifaces": ["br2"]}, "has no IPv4 address"),
    ({"regexes": ["zzz"]}, "no interface matches --iface-regex zzz"),
    ({"regexes": ["("]}, "not a valid regular expression"),
    ({"public_ip": "banana"}, "--public-ip"),
    ({"can_reach": "300.1.1.1"}, "--iface-can-reach"),
])
def test_errors_are_one_line(netns, kwargs, words):
    err = select_in(netns, **kwargs)["error"]
    assert words in err and "\n" not in err


def test_no_default_route_says_what_to_do():
    name = "pfl-if0-" + secrets.token_hex(3)
    sh("ip", "netns", "add", name)
    try:
        err = select_all(name, [{}])[0]["error"]
        assert "no default route" in err and "--iface" in err
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)


# -- IPv6 (Go v0.20) --------------------------------------------------------------------------------


def first_global6(ns: str, dev: str) -> str:
    """The interface's first global IPv6 address as iproute2 lists it (the kernel's order)."""
    out = subprocess.run(["ip", "-n", ns, "-j", "-6", "addr", "show", "dev", dev, "scope", "global"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return json.loads(out)[0]["addr_info"][0]["local"]


def pick(got, *keys):
    assert "error" not in got, got
    return tuple(got[k] for k in keys)


def test_v6_dual_stack_default_route(netns):
    got = select_in(netns, **V6)  # dual stack: the IPv4 default route's interface, and its IPv6 address
    assert got == {"name": "br0", "address": "10.77.0.2", "public_ip": "10.77.0.2", "mtu": 1400,
                   "address6": "fd00:77::2", "public_ipv6": "fd00:77::2"}


def test_v6_only_uses_the_ipv6_default_route(netns):
    name, _results = netns
    got = select_in(netns, **V6ONLY)
    # IPv6-only: no IPv4 wanted, so none reported (br1 has one, but the network does not use it)
    assert got == {"name": "br1", "address": None, "public_ip": None, "mtu": 1500,
                   "address6": first_global6(name, "br1"), "public_ipv6": first_global6(name, "br1")}


def test_v6_iface_by_name_and_by_address(netns):
    name, _results = netns
    assert pick(select_in(netns, ifaces=["br1"], **V6), "name", "address", "address6") == \
        ("br1", "10.78.0.2", first_global6(name, "br1"))
    # an IPv6 address selects that very address (written in any form; reported canonical)
    for spec in ("fd00:78::2", "FD00:78:0::2"):
        assert pick(select_in(netns, ifaces=[spec], **V6), "name", "address", "address6") == \
            ("br1", "10.78.0.2", "fd00:78::2")
    # an IPv4 address selects the interface; its IPv6 address comes with it
    assert pick(select_in(netns, ifaces=["10.78.5.2"], **V6), "name", "address", "address6") == \
        ("br1", "10.78.5.2", first_global6(name, "br1"))


def test_v6_only_interface_without_ipv4(netns):
    for kwargs in (dict(ifaces=["fd00:79::2"]), dict(ifaces=["br2"]), dict(regexes=["^fd00:79:"]),
                   dict(regexes=["^br2$"])):
        got = select_in(netns, **kwargs, **V6ONLY)
        assert pick(got, "name", "address", "public_ip", "address6", "public_ipv6") == \
            ("br2", None, None, "fd00:79::2", "fd00:79::2"), kwargs


def test_v6_can_reach(netns):
    name, _results = netns
    assert pick(select_in(netns, can_reach="fd00:78::99", **V6), "name", "address", "address6") == \
        ("br1", "10.78.0.2", "fd00:78::2")  # the route's source address
    assert pick(select_in(netns, can_reach="fd00:77::99", **V6ONLY), "name", "address6") == ("br0", "fd00:77::2")
    # through the IPv6 default route (route lookup only: nothing is sent)
    assert pick(select_in(netns, can_reach="2001:db8::1", **V6ONLY), "name", "address6") == \
        ("br1", first_global6(name, "br1"))
    assert pick(select_in(netns, can_reach="10.78.0.99", **V6), "name", "address", "address6") == \
        ("br1", "10.78.0.2", first_global6(name, "br1"))


def test_v6_public_ipv6(netns):
    # --public-ipv6 stands in for a missing global IPv6 address (br4 has only its link-local one)
    got = select_in(netns, ifaces=["br4"], public_ipv6="FD00:0:0:99::1", **V6)
    assert pick(got, "name", "address", "address6", "public_ipv6") == ("br4", "10.81.0.2", None, "fd00:0:0:99::1")
    got = select_in(netns, ifaces=["br0"], public_ip="203.0.113.7", public_ipv6="fd00:99::2", **V6)
    assert pick(got, "address", "public_ip", "address6", "public_ipv6") == \
        ("10.77.0.2", "203.0.113.7", "fd00:77::2", "fd00:99::2")

    # one set of flags serves every network: the family the network does not use is ignored
    got = select_in(netns, ifaces=["br0"], public_ipv6="fd00::1")
    assert pick(got, "address", "public_ip", "address6", "public_ipv6") == ("10.77.0.2", "10.77.0.2", None, None)
    got = select_in(netns, ifaces=["br0"], public_ip="10.0.0.1", **V6ONLY)
    assert pick(got, "public_ip", "public_ipv6") == (None, "fd00:77::2")


@pytest.mark.parametrize("kwargs,words", [
    (dict(ifaces=["br4"], **V6), ["br4", "no global IPv6 address", "--iface", "--public-ipv6"]),
    (dict(ifaces=["br3"], **V6), ["br3", "no global IPv6 address", "fd00:80::2 is tentative", "--public-ipv6"]),
    (dict(ifaces=["fd00:80::2"], **V6), ["fd00:80::2", "tentative", "nodad"]),
    (dict(ifaces=["fd00:79::2"], **V6), ["br2", "has no IPv4 address"]),
    (dict(ifaces=["fd00:dead::1"], **V6), ["no interface matches --iface fd00:dead::1", "ip addr"]),
    (dict(public_ipv6="banana", **V6), ["--public-ipv6", "not an IPv6 address"]),
    (dict(public_ipv6="10.0.0.1", **V6), ["--public-ipv6", "not an IPv6 address"]),
    (dict(can_reach="fd00::zz", **V6), ["--iface-can-reach", "not an IP address"]),
])
def test_v6_errors_are_one_line(netns, kwargs, words):
    err = select_in(netns, **kwargs).get("error")
    assert err is not None and "\n" not in err, err
    for word in words:
        assert word in err, (word, err)


def test_v6_only_without_ipv6_default_route_says_what_to_do():
    name = "pfl-if6-" + secrets.token_hex(3)
    sh("ip", "netns", "add", name)
    try:
        for cmd in ("ip link set lo up", "ip link add br0 type bridge", "ip addr add 10.9.0.2/24 dev br0",
                    "ip addr add fd00:9::2/64 dev br0 nodad", "ip link set br0 up",
                    "ip route add default via 10.9.0.1 dev br0"):  # an IPv4 default route only
            sh("ip", "netns", "exec", name, *cmd.split())
        dual, v6only = select_all(name, [V6, V6ONLY])
        assert (dual["name"], dual["address6"]) == ("br0", "fd00:9::2")
        err = v6only["error"]
        assert "no IPv6 default route" in err and "--iface" in err and "\n" not in err
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30, check=False)
