"""The lease manager: network config, acquire, renew and watch subnet leases in etcd (the facade).

One implementation over the etcd facade (:mod:`pyflannel.etcdstore`); the facade's ``V2Store`` and
``V3Store`` are the two registries.  No netlink here: the manager is usable as a library (the
control-plane benchmark drives a thousand of them without any datapath).

Typical use::

    store = etcdstore.connect(endpoints, api="auto")
    mgr = LeaseManager(store, prefix="/coreos.com/network", subnet_file="/run/flannel/subnet.env")
    config = mgr.wait_config(stop)                 # retries every second while the key is missing
    lease = mgr.acquire(attrs, stop)               # re-reads the config on every attempt
    for event in mgr.watch(stop):                  # snapshot / added / removed; LeaseLost for ours
        ...
    mgr.renew()                                    # when ``mgr.renew_due()``

The work is split by job, one module each: :mod:`~pyflannel.subnet.base` (state, config, listing),
:mod:`~pyflannel.subnet.allocate` (picking and creating a lease, with :mod:`~pyflannel.subnet.picker`),
:mod:`~pyflannel.subnet.renew` (renewal, restore, release), :mod:`~pyflannel.subnet.watch` (snapshots,
events, probes), :mod:`~pyflannel.subnet.rivals` (the split-brain overlap checks) and
:mod:`~pyflannel.subnet.backoff` (waiting for etcd).  Every name stays importable from here.
"""

from __future__ import annotations

from pyflannel.subnet.allocate import RACE_TRIES, Allocator, _label, _networks, fits
from pyflannel.subnet.backoff import MAX_BACKOFF, STOP_POLL, WATCH_BACKOFF, Backoff, _Throttle, _wait, until_stopped
from pyflannel.subnet.base import (
    DEFAULT_RENEW_MARGIN,
    _decode_value,
    _parse_key,
    lease_from_kv,
    read_subnet_file,
)
from pyflannel.subnet.errors import LeaseLost, NoConfig, OutOfSubnets, Stopped, SubnetError
from pyflannel.subnet.picker import MAX_CANDIDATES, _mark, _Taken, pick_subnet
from pyflannel.subnet.rivals import _overlap, _overlapping, _rival, _subnets_of, _taken, _Wanted
from pyflannel.subnet.watch import LeaseEvent, Watcher

__all__ = [
    "DEFAULT_RENEW_MARGIN", "MAX_BACKOFF", "MAX_CANDIDATES", "RACE_TRIES", "STOP_POLL", "WATCH_BACKOFF",
    "Backoff", "LeaseEvent", "LeaseLost", "LeaseManager", "NoConfig", "OutOfSubnets", "Stopped", "SubnetError",
    "_Taken", "_Throttle", "_Wanted", "_decode_value", "_label", "_mark", "_networks", "_overlap", "_overlapping",
    "_parse_key", "_rival", "_subnets_of", "_taken", "_wait", "fits", "lease_from_kv", "pick_subnet",
    "read_subnet_file", "until_stopped",
]


class LeaseManager(Allocator, Watcher):
    """Acquires, renews and watches this node's subnet lease.

    ``ttl``: the lease TTL (Go: 24 h; ``--subnet-lease-ttl`` overrides it for tests).
    ``renew_margin``: seconds before expiry at which the lease is renewed; when it is not smaller
    than the TTL, the lease is renewed at half its life.
    ``clock`` (Unix time, for expirations shown to people) and ``monotonic`` (for scheduling the
    renewal, so a stepped wall clock cannot make the lease expire) are injectable for tests.

    No two live nodes route one subnet: whenever our lease is written back (renewal finding it gone,
    etcd wiped or restored, the key deleted behind our back), every other lease is looked at first
    and after; one overlapping either of our subnets that got into etcd first keeps it, and this node
    gives way (LeaseLost).
    """
