"""The lease validator (plugins/module_utils/leases.py): verdicts, older-wins conflicts, incremental updates."""

from __future__ import annotations

import ipaddress

import pytest

from pyflannel.leases import (
    MAX_VALUE_BYTES,
    Lease,
    LeaseAttrs,
    LeaseBook,
    LeaseFormatError,
    decode_lease,
    judge_leases,
    lease_problem,
)

NET = ipaddress.IPv4Network("10.100.0.0/16")


def lease(subnet: str, ip: str, mac: str = "", created: int = 1) -> Lease:
    data = {"VtepMAC": mac} if mac else None
    attrs = LeaseAttrs(ip, "vxlan" if mac else "host-gw", data)
    return Lease(ipaddress.IPv4Network(subnet), attrs, created=created)


@pytest.mark.parametrize("subnet,ip,mac,why", [
    ("10.200.1.0/24", "192.0.2.1", "", "outside the network"),
    ("10.100.1.0/25", "192.0.2.1", "", "is not a /24"),
    ("10.100.1.0/24", "0.0.0.0", "", "unspecified"),
    ("10.100.1.0/24", "224.0.0.5", "", "multicast address"),
    ("10.100.1.0/24", "255.255.255.255", "", "broadcast"),
    ("10.100.1.0/24", "192.0.2.1", "01:00:5e:00:00:01", "multicast MAC"),
    ("10.100.1.0/24", "192.0.2.1", "00:00:00:00:00:00", "all zeros"),
])
def test_single_lease_problems(subnet: str, ip: str, mac: str, why: str) -> None:
    problem = lease_problem(lease(subnet, ip, mac), NET, 24)
    assert problem is not None and why in problem


def test_good_lease_passes() -> None:
    assert lease_problem(lease("10.100.1.0/24", "192.0.2.1", "0e:00:00:00:00:01"), NET, 24) is None


def test_oversized_value_is_refused_before_parsing() -> None:
    value = '{"PublicIP":"192.0.2.1","Pad":"%s"}' % ("x" * MAX_VALUE_BYTES)
    with pytest.raises(LeaseFormatError, match="more than"):
        decode_lease(value)


def test_older_lease_wins_overlap_and_shared_mac_in_any_order() -> None:
    old = lease("10.100.1.0/24", "192.0.2.1", "0e:00:00:00:00:01", created=5)
    same_mac = lease("10.100.2.0/24", "192.0.2.2", "0e:00:00:00:00:01", created=9)
    for order in ([old, same_mac], [same_mac, old]):
        accepted, refused = judge_leases(order, NET, 24)
        assert [x.key_name for x in accepted] == [old.key_name]
        assert "shares its VtepMAC" in refused[same_mac.key_name]


def test_incremental_book_promotes_the_outvoted_when_the_winner_goes() -> None:
    book = LeaseBook(NET, 24)
    old = lease("10.100.1.0/24", "192.0.2.1", "0e:00:00:00:00:01", created=5)
    young = lease("10.100.2.0/24", "192.0.2.2", "0e:00:00:00:00:01", created=9)
    assert [x.key_name for x in book.put(old).added] == [old.key_name]
    change = book.put(young)
    assert change.added == [] and [name for name, _why in change.rejected] == [young.key_name]
    change = book.remove(old.key_name)
    assert [x.key_name for x in change.removed] == [old.key_name]
    assert [x.key_name for x in change.added] == [young.key_name]
    assert young.key_name not in book.rejected


def test_an_older_newcomer_displaces_a_younger_holder() -> None:
    book = LeaseBook(NET, 24)
    young = lease("10.100.2.0/24", "192.0.2.2", "0e:00:00:00:00:01", created=9)
    old = lease("10.100.1.0/24", "192.0.2.1", "0e:00:00:00:00:01", created=5)
    book.put(young)
    change = book.put(old)
    assert [x.key_name for x in change.removed] == [young.key_name]
    assert [x.key_name for x in change.added] == [old.key_name]


def test_own_lease_conflicts_and_changed_values() -> None:
    own = lease("10.100.1.0/24", "192.0.2.1", "0e:00:00:00:00:01", created=1)
    book = LeaseBook(NET, 24, own=own)
    change = book.put(lease("10.100.3.0/24", "192.0.2.3", "0e:00:00:00:00:01", created=7))
    assert "this node's own" in change.rejected[0][1]
    # a lease that changes its value but stays valid is replaced in place (added, not removed)
    first = lease("10.100.4.0/24", "192.0.2.4", "0e:00:00:00:00:04", created=8)
    book.put(first)
    change = book.put(lease("10.100.4.0/24", "192.0.2.4", "0e:00:00:00:00:05", created=8))
    assert change.removed == [] and len(change.added) == 1


def test_refusals_are_reported_once_across_snapshots() -> None:
    book = LeaseBook(NET, 24)
    bad = lease("10.200.1.0/24", "192.0.2.1", created=3)
    assert len(book.replace_all([bad]).rejected) == 1
    assert book.replace_all([bad]).rejected == []
    assert len(book.reject_unparsed("10.1.2.300-24", "not a lease key").rejected) == 1
    assert book.reject_unparsed("10.1.2.300-24", "not a lease key").rejected == []
