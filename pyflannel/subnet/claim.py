"""The O(1) join on etcd v3 (IPv4 networks): reuse a known lease or claim a random subnet, never listing.

A join used to list every lease (O(n) per join, O(n²) for a cluster coming up).  On etcd v3, for a
network without IPv6, :meth:`Claimer._claim_or_reuse` does a bounded amount of work instead:

1. **restart**: the subnet file names our previous subnet.  Its key and every key that could overlap it
   (the supernet keys by exact name, the keys inside it by key prefix: :func:`overlap_ranges`) are read in
   one request; ours (our PublicIP), fitting the config and not overlapped by an older lease, it is
   renewed (the etcd lease kept alive, the value rewritten).
2. **the PublicIP index**: ``<prefix>/index/publicip/<PublicIP>`` names the subnet key of the node's
   lease.  It is written in the same transaction as the lease and lives on the same etcd lease, so it
   expires with it and costs nothing to renew.  The index entry is read, and in the same request (only
   on a miss) the number of leases and of index entries: a hit is checked and renewed as in 1; a miss
   while both numbers are equal means this node holds no lease (every lease is indexed).  When they
   differ (leases written by Go flanneld, an older pyflannel, etcdctl, the flannel_network module), or
   the entry is stale, the full list decides, exactly as before.
3. **new node**: a subnet at random between SubnetMin and SubnetMax (the subnet file's one first) is
   claimed with one transaction that creates its key only if no key overlapping it exists
   (:meth:`V3Store.claim`: range compares over the same bounded ranges).  A claim that finds its subnet
   taken tries another one; after :data:`CLAIM_TRIES` misses in a row (a nearly full pool) the full list
   decides, so out-of-subnets is still detected exactly.

Anything unusual (an older overlapping lease, a lease that no longer fits, SubnetLen whose keys cannot be
covered by a few key prefixes) returns None: the caller runs the full-list path, whose behaviour and
split-brain checks are unchanged.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from typing import List, Optional, Tuple

from pyflannel import subnetenv
from pyflannel.etcdstore import KV, StoreError
from pyflannel.etcdstore import _prefix_end as prefix_end
from pyflannel.leases import Lease, LeaseAttrs, lease_age, normalize_prefix, subnet_key_name
from pyflannel.netconfig import NetworkConfig, Pool
from pyflannel.subnet.base import ManagerBase
from pyflannel.subnet.rivals import _rival, _subnets_of

log = logging.getLogger("pyflannel.subnet")

CLAIM_TRIES = 8  # random claims per acquire before the full list decides (a nearly full pool)
MAX_PREFIXES = 32  # key prefixes one claim may compare (SubnetLen 17, 18, 25, 26 ... need more: full list)

_Range = Tuple[str, Optional[str]]


def index_dir(prefix: Optional[str]) -> str:
    """Where the PublicIP index lives: ``<prefix>/index/publicip/`` (outside ``subnets/``, so watchers
    and Go flanneld never see it)."""
    return normalize_prefix(prefix) + "/index/publicip/"


def overlap_ranges(subnets_dir: str, subnet: ipaddress.IPv4Network,
                   max_prefixes: int = MAX_PREFIXES) -> Optional[List[_Range]]:
    """The key ranges that hold every lease key whose IPv4 subnet overlaps ``subnet``, and nothing else
    but such keys: one range per supernet (``a.b.c.d-L`` and ``a.b.c.d-L&<ipv6>``, not ``a.b.c.d-L0``:
    the range ends before the digits) and the key prefixes of the addresses inside ``subnet`` (a /24:
    ``a.b.c.``; a /28: ``a.b.c.16-`` ... ``a.b.c.31-``).  Exact because a key that parses writes its
    address canonically (no leading zeros, no host bits).  None when more than ``max_prefixes`` prefixes
    would be needed (the caller lists instead)."""
    out: List[_Range] = []
    for length in range(1, subnet.prefixlen):
        name = "%s-%d" % (subnet.supernet(new_prefix=length).network_address, length)
        out.append((subnets_dir + name, subnets_dir + name + "'"))  # "'" sorts after "&", before digits
    whole, rest = divmod(subnet.prefixlen, 8)
    octets = str(subnet.network_address).split(".")
    if rest == 0:
        prefixes = [".".join(octets[:whole]) + ("-" if whole == 4 else ".")]
    else:
        count = 2 ** (8 - rest)
        if count > max_prefixes:
            return None
        first = int(octets[whole])
        sep = "-" if whole == 3 else "."
        prefixes = [".".join([*octets[:whole], str(value)]) + sep for value in range(first, first + count)]
    out.extend((subnets_dir + p, prefix_end(subnets_dir + p)) for p in prefixes)
    return out


def random_subnet(pool: Pool) -> ipaddress.IPv4Network:
    """A subnet of ``pool`` at random, uniformly between SubnetMin and SubnetMax."""
    size = pool.subnet_size
    count = (int(pool.subnet_max) - int(pool.subnet_min)) // size + 1
    return ipaddress.IPv4Network((int(pool.subnet_min) + random.randrange(count) * size, pool.subnet_len))


_FULL = object()  # the full list must decide


class Claimer(ManagerBase):
    """The bounded join (see the module)."""

    def _fast_path(self, config: NetworkConfig) -> bool:
        return (self.store.api == "v3" and config.pool4 is not None and config.pool6 is None
                and hasattr(self.store, "claim"))

    def _index_key(self, attrs: LeaseAttrs) -> str:
        return index_dir(self.prefix) + attrs.address

    def _claim_or_reuse(self, config: NetworkConfig, attrs: LeaseAttrs, value: str) -> Optional[Lease]:
        """Our lease by a bounded amount of etcd work, or None: the full list decides (see the module).
        Raises StoreError."""
        pool = config.pool4
        assert pool is not None
        node = attrs.address
        previous = subnetenv.previous_subnets(self.subnet_file)[0]
        if previous is not None and not pool.contains(previous):
            previous = None
        tried = None
        if previous is not None:  # 1. restart
            tried = subnet_key_name(previous)
            got = self._reuse(config, attrs, value, tried)
            if got is _FULL:
                return None
            if got is not None:
                log.info("found lease %s for %s (subnet file %s), reusing it", got.label, node, self.subnet_file)
                return got  # type: ignore[return-value]
        # 2. the PublicIP index
        index_key = self._index_key(attrs)
        try:
            hit, counted, _revision = self.store.lookup(index_key, counts=[self.subnets_dir, index_dir(self.prefix)])
        except StoreError as err:
            self._error(err)
            raise
        if hit is not None:
            name = hit.value
            got = None if name == tried else self._reuse(config, attrs, value, name)
            if got is not None and got is not _FULL:
                log.info("found lease %s for %s, reusing it", got.label, node)  # type: ignore[union-attr]
                return got  # type: ignore[return-value]
            if got is None and name != tried:
                self._delete_index_quietly(index_key, name)  # names a key that is gone or not ours
            return None
        leases, indexed = counted or (0, -1)
        if leases != indexed:
            log.debug("%d leases, %d indexed by PublicIP: listing them to look for ours", leases, indexed)
            return None
        # 3. a new node: claim a subnet at random (the subnet file's first)
        for attempt in range(CLAIM_TRIES):
            subnet = previous if attempt == 0 and previous is not None else random_subnet(pool)
            ranges = overlap_ranges(self.subnets_dir, subnet)
            if ranges is None:
                return None
            name = subnet_key_name(subnet)
            self.stats["acquire_attempts"] += 1
            try:
                kv = self.store.claim(self.subnets_dir + name, value, self.ttl, ranges, also={index_key: name})
            except StoreError as err:
                self._error(err)
                raise
            if kv is not None:
                log.info("acquired lease %s for %s", subnet, node)
                return self._own(kv, attrs, acquired=True)
            self.stats["claims_missed"] += 1
            log.debug("%s or a subnet overlapping it is taken, trying another one", subnet)
        return None

    def _reuse(self, config: NetworkConfig, attrs: LeaseAttrs, value: str, name: str) -> object:
        """Renew the lease ``name`` if it is ours, fits and no older lease overlaps it: the Lease; None when
        it is absent or another node's (or not a lease key); _FULL when the full list must decide."""
        from pyflannel.subnet.allocate import fits  # the allocator imports this module

        try:
            subnet, subnet6 = self._parse_name(name)
        except ValueError:
            return None
        if subnet is None or subnet6 is not None:
            return _FULL
        key = self.subnets_dir + name
        ranges = overlap_ranges(self.subnets_dir, subnet)
        if ranges is None:
            return _FULL
        try:
            found, _counts, _revision = self.store.read_ranges(ranges)
        except StoreError as err:
            self._error(err)
            raise
        kvs = {kv.key: kv for group in found for kv in group}
        mine_kv: Optional[KV] = kvs.pop(key, None)
        if mine_kv is None:
            return None
        mine = self._parse(mine_kv)
        if mine is None or mine.attrs.address != attrs.address:
            return None
        if not fits(config, mine):
            return _FULL  # the full list deletes it (and any other lease of ours)
        others = [lease for lease in (self._parse(kv) for kv in kvs.values()) if lease is not None]
        if _rival(others, _subnets_of(mine), mine.key_name, older_than=lease_age(mine)) is not None:
            return _FULL
        try:
            new = self.store.update(mine_kv, value, None if mine.reservation else self.ttl,
                                    also={self._index_key(attrs): name})
        except StoreError as err:
            self._error(err)
            raise
        if new is None:
            return _FULL  # expired or rewritten just now
        return self._own(new, attrs, acquired=True)

    @staticmethod
    def _parse_name(name: str) -> Tuple[Optional[ipaddress.IPv4Network], Optional[ipaddress.IPv6Network]]:
        from pyflannel.subnet.base import _parse_key

        if "/" in name:
            raise ValueError(name)
        return _parse_key(name)

    def _delete_index_quietly(self, key: str, name: str) -> None:
        try:
            self.store.delete_if(key, name)
        except StoreError as err:
            self._error(err)

    def _index_also(self, attrs: Optional[LeaseAttrs], name: str) -> Optional[dict]:
        """The index entry to write with a lease of ours (v3 only), for the full-list path and write-backs."""
        if attrs is None or self.store.api != "v3" or not hasattr(self.store, "claim"):
            return None
        return {self._index_key(attrs): name}
