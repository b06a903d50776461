"""IPv6 in the shared schema and lease layout (Go flanneld v0.20 rules)."""

from __future__ import annotations

import ipaddress
import json

import pytest

from pyflannel.leases import (
    Lease,
    LeaseAttrs,
    LeaseBook,
    LeaseFormatError,
    decode_lease,
    encode_lease,
    lease_problem,
    parse_subnet_key,
    subnet_key_name,
)
from pyflannel.netconfig import ConfigError, parse_config

N4 = ipaddress.ip_network
DUAL = {"Network": "10.5.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00::/48", "Backend": {"Type": "vxlan"}}


def cfg(**extra: object) -> dict:
    out = dict(DUAL)
    out.update(extra)
    return out


@pytest.mark.parametrize("network, length, first, last", [
    ("fc00::/48", 64, "fc00:0:0:1::", "fc00:0:0:ffff::"),
    ("fc00::/120", 122, "fc00::40", "fc00::c0"),
    ("fc00::/62", 64, "fc00:0:0:1::", "fc00:0:0:3::"),
    ("fc00::/63", 65, "fc00::8000:0:0:0", "fc00:0:0:1:8000::"),
    ("fc00::/124", 126, "fc00::4", "fc00::c"),
])
def test_ipv6_defaults(network: str, length: int, first: str, last: str) -> None:
    pool = parse_config(cfg(IPv6Network=network)).pool6
    assert (pool.subnet_len, str(pool.subnet_min), str(pool.subnet_max)) == (length, first, last)
    assert pool.contains(ipaddress.IPv6Network("%s/%d" % (first, length)))


@pytest.mark.parametrize("extra, words", [
    ({"IPv6Network": None}, "IPv6Network is missing"),
    ({"IPv6Network": "fc00::/125"}, "/124 or shorter"),
    ({"IPv6Network": "10.0.0.0/8"}, "not an IPv6 CIDR"),
    ({"IPv6Network": "fc00::"}, "needs a prefix length"),
    ({"IPv6SubnetLen": 127}, "126 or less"),
    ({"IPv6SubnetLen": 49}, "at least the IPv6Network prefix + 2"),
    ({"IPv6SubnetLen": "64"}, "whole number"),
    ({"IPv6SubnetMin": "fc00:0:0:1::1"}, "boundary"),
    ({"IPv6SubnetMax": "fc01::"}, "outside IPv6Network"),
    ({"IPv6SubnetMin": "10.5.1.0"}, "not an IPv6 address"),
    ({"IPv6SubnetMin": "fc00:0:0:9::", "IPv6SubnetMax": "fc00:0:0:2::"}, "above IPv6SubnetMax"),
    ({"EnableIPv6": "yes"}, "true or false"),
    ({"EnableIPv4": False, "EnableIPv6": False}, "needs IPv4 or IPv6"),
    ({"Backend": {"Type": "udp"}}, "udp backend carries IPv4 only"),
    ({"EnableIPv4": False, "Backend": {"Type": "udp"}}, "udp backend carries IPv4 only"),
])
def test_ipv6_errors_are_one_line(extra: dict, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(cfg(**extra))
    assert words in str(err.value) and "\n" not in str(err.value)


def test_ipv6_only_needs_no_network_and_ipv4_config_is_unchanged() -> None:
    only = parse_config({"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fc00::/48",
                         "Backend": {"Type": "host-gw"}})
    assert only.network is None and only.pool4 is None and only.capacity() == 0
    assert only.to_dict()["EnableIPv4"] is False and "Network" not in only.to_dict()
    assert parse_config(only.to_json()) == only
    plain = parse_config({"Network": "10.5.0.0/16"})
    assert plain.pool6 is None and "EnableIPv6" not in plain.to_dict()
    assert "IPv6Network" not in plain.to_dict()
    # IPv6 keys are ignored while EnableIPv6 is off, as Go does
    assert parse_config({"Network": "10.5.0.0/16", "IPv6Network": "nonsense"}).pool6 is None
    dual = parse_config(cfg())
    assert parse_config(dual.to_json()) == dual and dual.ipv6_network == ipaddress.IPv6Network("fc00::/48")


def test_key_layout_dual_stack_and_ipv6_only() -> None:
    v4, v6 = N4("10.5.3.0/24"), N4("fc00:0:0:3::/64")
    assert subnet_key_name(v4, v6) == "10.5.3.0-24&fc00:0:0:3::-64"
    assert subnet_key_name(None, v6) == "0.0.0.0-0&fc00:0:0:3::-64"
    assert parse_subnet_key("10.5.3.0-24&fc00:0:0:3::-64") == (v4, v6)
    assert parse_subnet_key("/coreos.com/network/subnets/0.0.0.0-0&fc00:0:0:3::-64") == (None, v6)
    for bad in ("0.0.0.0-0", "10.0.0.0-0&fc00::-64", "10.5.3.0-24&fc00::1-64", "10.5.3.0-24&fc00::-0",
                "10.5.3.0-24&fc00::-129", "10.5.3.0-24&zz::-64"):
        with pytest.raises(LeaseFormatError):
            parse_subnet_key(bad)


def test_value_layout_round_trips() -> None:
    attrs = LeaseAttrs("192.0.2.1", "vxlan", {"VNI": 1, "VtepMAC": "7a:fd:a9:52:84:87"}, "fd00::10",
                       {"VNI": 1, "VtepMAC": "7a:fd:a9:52:84:88"})
    v3 = encode_lease(attrs, "v3")
    assert list(json.loads(v3)) == ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data"]
    assert decode_lease(v3) == attrs
    v2 = json.loads(encode_lease(attrs, "v2"))
    assert v2["PublicIPv6"] == "fd00::10" and v2["BackendV6Data"] == {"VtepMAC": "7a:fd:a9:52:84:88"}
    # an IPv4 lease keeps the v0.11 shape on v2 and Go's null on v3
    plain = LeaseAttrs("192.0.2.1", "host-gw")
    assert encode_lease(plain, "v2") == '{"PublicIP":"192.0.2.1","BackendType":"host-gw"}'
    assert encode_lease(plain, "v3") == '{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"host-gw"}'
    only = LeaseAttrs(None, "host-gw", public_ipv6="FD00:0::10")
    assert json.loads(encode_lease(only, "v3"))["PublicIP"] == "0.0.0.0"
    assert decode_lease(encode_lease(only, "v3")) == only and only.public_ipv6 == "fd00::10"
    for bad in ('{"PublicIP":"192.0.2.1","PublicIPv6":"10.0.0.1"}', '{"PublicIP":"192.0.2.1","PublicIPv6":7}',
                '{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VtepMAC":"7a:fd:a9:52:84:87"},'
                '"BackendV6Data":{"VtepMAC":"zz"}}', '{"PublicIP":"192.0.2.1","BackendV6Data":[1]}'):
        with pytest.raises(LeaseFormatError):
            decode_lease(bad)


def lease(v4: str | None, v6: str | None, ip: str | None = "192.0.2.1", ip6: str | None = "fd00::1",
          mac6: str | None = None, created: int = 1) -> Lease:
    data6 = {"VtepMAC": mac6} if mac6 else None
    attrs = LeaseAttrs(ip, "vxlan", {"VtepMAC": "7a:00:00:00:00:%02x" % created}, ip6, data6)
    return Lease(N4(v4) if v4 else None, attrs, ipv6_subnet=N4(v6) if v6 else None, created=created)


NET4, NET6 = N4("10.5.0.0/16"), N4("fc00::/48")


@pytest.mark.parametrize("item, net4, net6, words", [
    (lease("10.5.3.0/24", "fc01:0:0:3::/64"), NET4, NET6, "outside the IPv6 network"),
    (lease("10.5.3.0/24", "fc00::/56"), NET4, NET6, "not a /64"),
    (lease("10.5.3.0/24", "fc00:0:0:3::/64", ip6=None), NET4, NET6, "no PublicIPv6"),
    (lease("10.5.3.0/24", "fc00:0:0:3::/64", ip6="fe80::1"), NET4, NET6, "link-local"),
    (lease("10.5.3.0/24", "fc00:0:0:3::/64", ip6="ff02::1"), NET4, NET6, "multicast"),
    (lease("10.5.3.0/24", "fc00:0:0:3::/64", ip6="::ffff:10.0.0.1"), NET4, NET6, "IPv4-mapped"),
    (lease("10.5.3.0/24", "fc00:0:0:3::/64", mac6="01:00:5e:00:00:01"), NET4, NET6, "multicast MAC"),
    (lease(None, "fc00:0:0:3::/64"), NET4, None, "no IPv6"),
    (lease("10.5.3.0/24", None), None, NET6, "IPv6-only"),
])
def test_ipv6_lease_problems(item: Lease, net4: object, net6: object, words: str) -> None:
    why = lease_problem(item, net4, 24 if net4 else None, net6, 64 if net6 else None)
    assert why is not None and words in why


def test_ipv6_parts_are_ignored_where_the_network_has_no_ipv6() -> None:
    assert lease_problem(lease("10.5.3.0/24", "fc01::/64", ip6="fe80::1"), NET4, 24) is None
    assert lease_problem(lease(None, "fc00:0:0:3::/64", ip=None), None, None, NET6, 64) is None
    assert lease_problem(lease("10.5.3.0/24", None), NET4, 24, NET6, 64) is None  # a Go node without IPv6


def test_book_refuses_ipv6_overlap_and_shared_ipv6_mac_older_wins() -> None:
    own = lease("10.5.1.0/24", "fc00:0:0:1::/64", created=1)
    book = LeaseBook(NET4, 24, own=own, network6=NET6, subnet_len6=64)
    change = book.put(lease("10.5.9.0/24", "fc00:0:0:1::/64", created=2))
    assert not change.added and "overlaps this node's own lease fc00:0:0:1::/64" in change.rejected[0][1]
    first = lease("10.5.2.0/24", "fc00:0:0:2::/64", mac6="7a:00:00:00:01:01", created=3)
    assert book.put(first).added == [first]
    young = lease("10.5.4.0/24", "fc00:0:0:2::/64", created=4)
    assert "overlaps the older lease 10.5.2.0/24 fc00:0:0:2::/64" in book.put(young).rejected[0][1]
    twin = lease("10.5.5.0/24", "fc00:0:0:5::/64", mac6="7a:00:00:00:01:01", created=5)
    assert "shares its VtepMAC" in book.put(twin).rejected[0][1]
    change = book.remove(first.key_name)  # the winner goes: the outvoted come back, oldest first
    assert [item.key_name for item in change.added] == [young.key_name, twin.key_name]
    only = LeaseBook(None, None, network6=NET6, subnet_len6=64)
    v6only = lease(None, "fc00:0:0:7::/64", ip=None, created=6)
    assert only.put(v6only).added == [v6only] and v6only.label == "fc00:0:0:7::/64"
