"""The subnet picker against hostile keys: whatever etcd holds (a /33 in a /32 IPv6 network, ranges far
bigger than a subnet, mixed lengths, keys outside the network), picking costs O(held ranges + 100) steps
and never hands out a subnet that any key overlaps.  Steps are counted, not timed."""

from __future__ import annotations

import ipaddress
import json
import random
from typing import List, Optional

import pytest

from pyflannel.netconfig import Pool, parse_config
from pyflannel.subnet.manager import MAX_CANDIDATES, _Taken, pick_subnet


def pool_of(config: dict, version: int) -> Pool:
    cfg = parse_config(json.dumps(dict(config, Backend={"Type": "alloc"})))
    pool = cfg.pool4 if version == 4 else cfg.pool6
    assert pool is not None
    return pool


def nets(*texts: str) -> List[ipaddress._BaseNetwork]:
    return [ipaddress.ip_network(text) for text in texts]


def brute_free(pool: Pool, held: List[ipaddress._BaseNetwork], limit: int = MAX_CANDIDATES) -> List[int]:
    """The first ``limit`` free subnets, the slow obvious way (small pools only)."""
    out = []
    for subnet in pool.subnets():
        if not any(subnet.overlaps(h) for h in held):
            out.append(int(subnet.network_address))
            if len(out) == limit:
                break
    return out


def bound(held: List[ipaddress._BaseNetwork]) -> int:
    """At most one step per held range plus one per candidate (and the last look)."""
    return len(held) + MAX_CANDIDATES + 1


def free_of(pool: Pool, taken: _Taken) -> List[int]:
    return taken.free(int(pool.subnet_min), int(pool.subnet_max), pool.subnet_size, MAX_CANDIDATES)


HOSTILE6 = {"Network": "10.130.0.0/16", "EnableIPv6": True, "IPv6Network": "fd13::/32"}


def test_a_33_in_a_32_network_is_skipped_whole() -> None:
    pool = pool_of(HOSTILE6, 6)  # /64 subnets: 2^32 of them, 2^31 under the /33
    held = nets("fd13::/33")
    taken = _Taken(held, 128)
    for _round in range(20):
        got = pick_subnet(pool, taken)
        assert got is not None and got.prefixlen == 64
        assert not got.overlaps(held[0]) and got.subnet_of(ipaddress.ip_network("fd13::/32"))
        assert taken.steps <= bound(held)
    candidates = free_of(pool, taken)
    first = int(ipaddress.ip_address("fd13:0:8000::"))
    assert candidates == [first + i * (1 << 64) for i in range(MAX_CANDIDATES)]
    assert taken.steps == MAX_CANDIDATES + 1  # one jump over the /33, then 100 free subnets


def test_previous_subnet_is_kept_only_when_nothing_overlaps_it() -> None:
    pool = pool_of(HOSTILE6, 6)
    previous = ipaddress.ip_network("fd13:0:0:5::/64")
    assert pick_subnet(pool, _Taken([], 128), previous) == previous
    assert pick_subnet(pool, _Taken(nets("fd13::/33"), 128), previous) != previous
    # another length overlapping it from inside
    assert pick_subnet(pool, _Taken(nets("fd13:0:0:5:8000::/65"), 128), previous) != previous
    # not one this pool hands out (wrong length): a new one is picked
    assert pick_subnet(pool, _Taken([], 128), ipaddress.ip_network("fd13:0:0:5::/96")).prefixlen == 64


@pytest.mark.parametrize("held", [
    ["fd13::/32"],  # the whole network in one key
    ["fd12::/15"],  # a key far outside and around the network
    ["fd13::/33", "fd13:0:8000::/33"],  # two halves
    ["fd13::/34", "fd13:0:4000::/34", "fd13:0:8000::/33"],  # mixed lengths, adjacent
])
def test_everything_taken_is_out_of_subnets_in_a_few_steps(held: List[str]) -> None:
    pool = pool_of(HOSTILE6, 6)
    taken = _Taken(nets(*held), 128)
    assert pick_subnet(pool, taken) is None
    assert taken.steps <= len(held) + 1


def test_many_single_subnets_cost_one_step_each_at_most() -> None:
    pool = pool_of({"Network": "10.0.0.0/8", "SubnetLen": 24}, 4)
    held = [ipaddress.ip_network("10.%d.%d.0/24" % (i // 256, i % 256)) for i in range(1, 20001)]
    taken = _Taken(held, 32)
    got = pick_subnet(pool, taken)  # 10.0.1.0 ... 10.78.32.0 are taken: one merged range
    assert got is not None and int(got.network_address) >= int(ipaddress.ip_address("10.78.33.0"))
    assert taken.steps <= bound(held)
    # every other subnet taken: no ranges merge, so at most one step per range plus the candidates
    sparse = held[::2]
    taken = _Taken(sparse, 32)
    assert free_of(pool, taken)[:3] == [int(ipaddress.ip_address(a)) for a in ("10.0.2.0", "10.0.4.0", "10.0.6.0")]
    assert taken.steps <= bound(sparse)


@pytest.mark.parametrize("seed", range(40))
def test_mixed_lengths_match_the_obvious_walk(seed: int) -> None:
    rng = random.Random(seed)
    pool = pool_of({"Network": "10.20.0.0/16", "SubnetLen": 24}, 4)
    held: List[ipaddress._BaseNetwork] = []
    for _i in range(rng.randint(0, 40)):
        plen = rng.choice([12, 17, 20, 22, 24, 24, 24, 25, 28, 30, 32])
        base = int(ipaddress.ip_address("10.20.0.0")) + rng.randrange(0, 1 << 16)
        if plen < 16 and rng.random() < 0.7:
            continue  # keep most runs from being fully taken
        held.append(ipaddress.ip_network((base, plen), strict=False))
    taken = _Taken(held, 32)
    for limit in (1, 7, MAX_CANDIDATES):
        got = taken.free(int(pool.subnet_min), int(pool.subnet_max), pool.subnet_size, limit)
        assert got == brute_free(pool, held, limit)
        assert taken.steps <= len(held) + limit + 1
    for subnet in pool.subnets():
        assert taken.overlaps(subnet) == any(subnet.overlaps(h) for h in held), subnet
    picked: Optional[ipaddress._BaseNetwork] = pick_subnet(pool, taken)
    if picked is None:
        assert brute_free(pool, held) == []
    else:
        assert not any(picked.overlaps(h) for h in held)


def test_lost_races_marked_later_are_taken_too() -> None:
    pool = pool_of({"Network": "10.20.0.0/16", "SubnetLen": 24, "SubnetMin": "10.20.1.0",
                    "SubnetMax": "10.20.3.0"}, 4)
    taken = _Taken(nets("10.20.1.0/24"), 32)
    assert pick_subnet(pool, taken) in nets("10.20.2.0/24", "10.20.3.0/24")
    taken.add(ipaddress.ip_network("10.20.2.0/24"))
    assert pick_subnet(pool, taken) == ipaddress.ip_network("10.20.3.0/24")
    taken.add(ipaddress.ip_network("10.20.3.128/25"))
    assert pick_subnet(pool, taken) is None
