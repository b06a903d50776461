"""Picking a free subnet: the held address ranges of one family and the walk of their free gaps."""

from __future__ import annotations

import bisect
import ipaddress
import random
from typing import Iterable, List, Optional, Tuple

from pyflannel.netconfig import Pool

MAX_CANDIDATES = 100  # Go flanneld picks at random among the first 100 free subnets


def _mark(taken: List[_Taken], subnets: Tuple[Optional[ipaddress._BaseNetwork], ...]) -> None:
    for held, subnet in zip(taken, subnets):
        if subnet is not None:
            held.add(subnet)


def pick_subnet(pool: Pool, taken: _Taken,
                previous: Optional[ipaddress._BaseNetwork] = None) -> Optional[ipaddress._BaseNetwork]:
    """A free subnet of ``pool`` (None: out of subnets): ``previous`` if the pool would hand it out and
    nothing overlaps it, else one at random among the first :data:`MAX_CANDIDATES` free ones from
    SubnetMin on.  The work is O(held ranges + MAX_CANDIDATES) whatever the keys in etcd say: taken
    ranges are skipped whole, never walked subnet by subnet (a /33 key in a /32 IPv6 network would
    be 2^31 steps)."""
    if previous is not None and pool.contains(previous) and not taken.overlaps(previous):
        return previous
    candidates = taken.free(int(pool.subnet_min), int(pool.subnet_max), pool.subnet_size, MAX_CANDIDATES)
    if not candidates:
        return None
    make = ipaddress.IPv4Network if pool.version == 4 else ipaddress.IPv6Network
    return make((random.choice(candidates), pool.subnet_len))


class _Taken:
    """The address ranges of one family held by leases (any length, any alignment), sorted and
    merged on demand, for O(log n) overlap checks and a walk of the free gaps."""

    def __init__(self, subnets: Iterable[ipaddress._BaseNetwork] = (), bits: int = 32) -> None:
        self.bits = bits
        self._ranges: List[Tuple[int, int]] = []  # (first, last) address, as added
        self._merged: Optional[List[Tuple[int, int]]] = None
        self._lasts: List[int] = []
        self.steps = 0  # loop steps of the last free(): bounded by ranges + limit (see the unit tests)
        for subnet in subnets:
            self.add(subnet)

    def add(self, subnet: ipaddress._BaseNetwork) -> None:
        first = int(subnet.network_address)
        self._ranges.append((first, first + subnet.num_addresses - 1))
        self._merged = None

    def _sorted(self) -> List[Tuple[int, int]]:
        if self._merged is None:
            merged: List[Tuple[int, int]] = []
            for first, last in sorted(self._ranges):
                if merged and first <= merged[-1][1] + 1:
                    if last > merged[-1][1]:
                        merged[-1] = (merged[-1][0], last)
                else:
                    merged.append((first, last))
            self._merged = merged
            self._lasts = [last for _first, last in merged]
        return self._merged

    def overlaps(self, subnet: ipaddress._BaseNetwork) -> bool:
        ranges = self._sorted()
        first = int(subnet.network_address)
        i = bisect.bisect_left(self._lasts, first)  # the first range not ending before `subnet`
        return i < len(ranges) and ranges[i][0] <= first + subnet.num_addresses - 1

    def free(self, first: int, last: int, size: int, limit: int) -> List[int]:
        """Up to ``limit`` start addresses ``first + k * size`` (not beyond ``last``) of blocks that no
        held range overlaps, lowest first.  Each step either yields a block or jumps past a whole
        held range, so it takes at most ``ranges + limit + 1`` steps."""
        ranges = self._sorted()
        i = bisect.bisect_left(self._lasts, first)
        out: List[int] = []
        addr = first
        steps = 0
        while addr <= last and len(out) < limit:
            steps += 1
            while i < len(ranges) and ranges[i][1] < addr:
                i += 1
            if i < len(ranges) and ranges[i][0] < addr + size:
                addr += ((ranges[i][1] - addr) // size + 1) * size  # the first block after the range
                continue
            out.append(addr)
            addr += size
        self.steps = steps
        return out
