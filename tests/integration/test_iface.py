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
        out.append({"name": e.name, "address": e.address, "public_ip": e.public_ip, "mtu": e.mtu})
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
        ):
            sh("ip", "netns", "exec", name, *cmd.split())
        yield name, dict(zip([json.dumps(c, sort_keys=True) for c in CASES], select_all(name, CASES)))
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
    assert select_in(netns) == {"name": "br0", "address": "10.77.0.2", "public_ip": "10.77.0.2", "mtu": 1400}


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
