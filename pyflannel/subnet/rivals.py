"""The split-brain checks: which other lease overlaps one of ours, and which of two is older.

No two live nodes route one subnet: whenever a lease of ours is reused, created dual-stack or written back,
and on every snapshot of a lease we hold, :func:`_rival` names the oldest other lease overlapping one of our
subnets; the older keeps the subnet.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, List, Optional, Tuple

from pyflannel.leases import Lease, lease_age
from pyflannel.subnet.errors import LeaseLost

_Wanted = Tuple[Optional[ipaddress.IPv4Network], Optional[ipaddress.IPv6Network]]


def _subnets_of(lease: Lease) -> _Wanted:
    return lease.subnet, lease.ipv6_subnet


def _overlapping(ours: _Wanted, other: Lease) -> List[ipaddress._BaseNetwork]:
    """Those of our subnets that ``other`` overlaps (per family)."""
    return [mine for mine, theirs in zip(ours, _subnets_of(other))
            if mine is not None and theirs is not None and mine.overlaps(theirs)]


def _overlap(ours: _Wanted, other: Lease) -> str:
    return " ".join(str(net) for net in _overlapping(ours, other))


def _rival(leases: Iterable[Lease], ours: _Wanted, name: str,
           older_than: Optional[Tuple[int, str]] = None) -> Optional[Lease]:
    """The one overlap check of the manager: the oldest lease of another key than ``name`` whose
    subnet overlaps one of ``ours`` in its family (only leases older than ``older_than``, a
    :func:`lease_age`, when given), or None.  Used when acquiring (a dual-stack create, a lease of ours
    to reuse), before and after writing our lease back, and on every snapshot of a lease we hold."""
    found = None
    for other in leases:
        if other.key_name == name or (older_than is not None and lease_age(other) >= older_than):
            continue
        if _overlapping(ours, other) and (found is None or lease_age(other) < lease_age(found)):
            found = other
    return found


def _taken(why: str, ours: Lease, rival: Optional[Lease]) -> LeaseLost:
    """LeaseLost for a lease that another node took while ours was gone from etcd."""
    if rival is None:
        return LeaseLost("%s, and its key holds a value that does not parse by now: this node gives way" % why)
    return LeaseLost("%s, and %s took %s meanwhile (its lease %s): the holder keeps it, this node gives way"
                     % (why, rival.attrs.address, _overlap(_subnets_of(ours), rival), rival.label))
