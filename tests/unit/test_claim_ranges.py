"""The bounded overlap check of the O(1) join (pyflannel.subnet.claim): the key ranges read or compared
for a candidate subnet hold every lease key that overlaps it and no other key, checked against every
key name of a small universe, the slow obvious way."""

from __future__ import annotations

import ipaddress
import json
import random
from typing import List, Tuple

import pytest

from pyflannel.leases import LeaseFormatError, parse_subnet_key, subnet_key_name
from pyflannel.netconfig import parse_config
from pyflannel.subnet.claim import MAX_PREFIXES, index_dir, overlap_ranges, random_subnet

DIR = "/coreos.com/network/subnets/"


def covered(ranges: List[Tuple[str, str]], key: str) -> bool:
    return any(start <= key < end if end else key == start for start, end in ranges)


def universe(rng: random.Random) -> List[str]:
    """Key names near 10.1.2.0: every length, neighbours, dual-stack names, names that do not parse."""
    names = set()
    for length in range(1, 33):
        for base in ("10.1.2.0", "10.1.3.0", "10.1.2.64", "10.1.2.128", "10.1.0.0", "10.0.0.0", "0.0.0.0",
                     "10.1.20.0", "10.1.2.16", "10.1.2.17", "10.1.2.1", "10.1.27.0", "10.1.2.200"):
            net = ipaddress.IPv4Network("%s/%d" % (base, length), strict=False)
            names.add(subnet_key_name(net))
            names.add(subnet_key_name(net, ipaddress.IPv6Network("fc00::/64")))
    for _draw in range(2000):
        length = rng.randint(1, 32)
        net = ipaddress.IPv4Network(((10 << 24) | (1 << 16) | rng.randrange(1 << 16), length), strict=False)
        names.add(subnet_key_name(net))
    names.update(["10.1.2.0-24hi", "10.1.2.0-240", "10.1.2.0-2", "10.1.2.0", "10.1.2.0-24/x", "garbage"])
    return sorted(names)


@pytest.mark.parametrize("cidr", ["10.1.2.0/24", "10.1.0.0/16", "10.1.2.0/28", "10.1.2.16/28", "10.1.2.64/27",
                                  "10.1.2.17/32", "10.1.16.0/20", "10.1.20.0/22", "10.0.0.0/8", "10.1.2.0/29"])
def test_ranges_hold_exactly_the_overlapping_keys(cidr: str) -> None:
    subnet = ipaddress.IPv4Network(cidr)
    ranges = overlap_ranges(DIR, subnet)
    assert ranges is not None
    assert len(ranges) <= subnet.prefixlen - 1 + MAX_PREFIXES
    for name in universe(random.Random(cidr)):
        try:
            held, _held6 = parse_subnet_key(name)
        except LeaseFormatError:
            held = None
        overlaps = held is not None and held.overlaps(subnet)
        if overlaps:
            assert covered(ranges, DIR + name), "%s overlaps %s but is not read" % (name, cidr)
        elif held is not None:
            assert not covered(ranges, DIR + name), "%s does not overlap %s but is read" % (name, cidr)


def test_too_many_prefixes_means_the_full_list() -> None:
    assert overlap_ranges(DIR, ipaddress.IPv4Network("10.1.2.0/25")) is None  # 128 last-octet prefixes
    assert overlap_ranges(DIR, ipaddress.IPv4Network("10.1.0.0/17")) is None
    assert overlap_ranges(DIR, ipaddress.IPv4Network("10.1.2.0/27")) is not None  # 32 prefixes


def test_ranges_are_bounded_whatever_the_cluster_size() -> None:
    # a /24: 23 supernet names and one prefix
    assert len(overlap_ranges(DIR, ipaddress.IPv4Network("10.200.7.0/24")) or []) == 24


def test_random_subnet_stays_between_subnet_min_and_max() -> None:
    config = parse_config(json.dumps({"Network": "10.100.0.0/16", "SubnetLen": 24, "SubnetMin": "10.100.10.0",
                                      "SubnetMax": "10.100.12.0", "Backend": {"Type": "alloc"}}))
    pool = config.pool4
    assert pool is not None
    seen = {random_subnet(pool) for _draw in range(300)}
    assert seen == {ipaddress.IPv4Network("10.100.%d.0/24" % i) for i in (10, 11, 12)}


def test_index_lives_outside_the_watched_subnets() -> None:
    assert index_dir("/coreos.com/network") == "/coreos.com/network/index/publicip/"
    assert not index_dir("/coreos.com/network").startswith(DIR)
