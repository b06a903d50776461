"""The lease manager's state and its reads of etcd: the network config, the list of leases, our own lease.

:class:`ManagerBase` is what the allocator (:mod:`pyflannel.subnet.allocate`), the renewal
(:mod:`pyflannel.subnet.renew`) and the watch (:mod:`pyflannel.subnet.watch`) share;
:class:`~pyflannel.subnet.manager.LeaseManager` combines them.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

from pyflannel import subnetenv
from pyflannel.etcdstore import KV, EtcdStore, StoreError, Unreachable
from pyflannel.leases import (
    LEASE_TTL,
    Lease,
    LeaseAttrs,
    LeaseBook,
    LeaseFormatError,
    check_value_size,
    config_key,
    decode_lease,
    normalize_prefix,
    parse_subnet_key,
    printable,
    subnet_key,
    subnet_key_name,
    subnets_dir,
)
from pyflannel.netconfig import ConfigError, NetworkConfig, parse_config
from pyflannel.subnet.backoff import Backoff, _Throttle, _wait, until_stopped
from pyflannel.subnet.errors import NoConfig, Stopped
from pyflannel.subnet.rivals import _rival, _Wanted

log = logging.getLogger("pyflannel.subnet")

DEFAULT_RENEW_MARGIN = 3600.0  # seconds (--subnet-lease-renew-margin 60 minutes)

# Parsing is pure, and every node sees the same keys and values again and again (each acquire lists
# every lease; a thousand managers in one process see every event a thousand times): cache it.
# The LeaseAttrs returned are shared: treat them as read-only.
_parse_key = functools.lru_cache(maxsize=65536)(parse_subnet_key)
_decode_value = functools.lru_cache(maxsize=65536)(decode_lease)


def lease_from_kv(kv: KV) -> Lease:
    """Turn a stored key into a :class:`Lease`; raises LeaseFormatError for foreign keys/values."""
    subnet, subnet6 = _parse_key(kv.key.rsplit("/", 1)[-1])
    check_value_size(kv.value)  # before the cache: an oversized value is never parsed or kept
    attrs = _decode_value(kv.value)
    return Lease(subnet, attrs, expiration=kv.expiration, reservation=not kv.has_ttl, revision=kv.revision,
                 lease_id=kv.lease_id, ipv6_subnet=subnet6, raw=kv.value, created=kv.created)


def read_subnet_file(path: Optional[str]) -> Optional[ipaddress.IPv4Network]:
    """The subnet of ``FLANNEL_SUBNET`` in an existing subnet.env, or None."""
    return subnetenv.previous_subnets(path)[0]


class ManagerBase:
    """The state of one node's lease manager and the etcd reads every part of it uses (see
    :class:`~pyflannel.subnet.manager.LeaseManager` for the arguments)."""

    def __init__(self, store: EtcdStore, prefix: Optional[str] = None, subnet_file: Optional[str] = None,
                 ttl: int = LEASE_TTL, renew_margin: float = DEFAULT_RENEW_MARGIN, watch_idle: float = 10.0,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._clock = clock
        self._monotonic = monotonic
        self.prefix = normalize_prefix(prefix)
        self.subnet_file = subnet_file
        self.ttl = int(ttl)
        self.renew_margin = float(renew_margin)
        self.watch_idle = watch_idle
        self.config: Optional[NetworkConfig] = None
        self.attrs: Optional[LeaseAttrs] = None
        self.lease: Optional[Lease] = None
        self._kv: Optional[KV] = None
        self._renew_due = 0.0  # monotonic time of the next renewal (inf: a reservation, never)
        # renew() runs in the agent's main loop, the watch's restores in its thread: one at a time
        self._own_lock = threading.RLock()
        # the stop event last given to wait_config/acquire/watch: renew() gives up waiting on etcd when set
        self._stop: Optional[threading.Event] = None
        # Every other node's lease as last seen, and the validator's verdict on each (book.accepted
        # is what the datapath gets; book.rejected says why the others are not used).
        self.book = LeaseBook()
        self._unparsed: Dict[str, str] = {}  # key name -> why it does not parse (from the last list)
        # key name -> subnets of the keys that parse but whose value does not (from the last list):
        # no datapath uses them, yet the picker counts their subnets as taken
        self._opaque: Dict[str, _Wanted] = {}
        self._primed: Optional[Tuple[List[Lease], int]] = None  # the acquire's list, for the first snapshot
        self.stats = {"renewals": 0, "renew_failures": 0, "etcd_errors": 0, "acquire_attempts": 0,
                      "lost_races": 0, "watch_relists": 0, "leases_rejected": 0, "lease_restores": 0,
                      "etcd_state_losses": 0, "claims_missed": 0}
        self._acquiring: Optional[LeaseAttrs] = None  # the attributes of the acquire under way

    @property
    def known(self) -> Dict[str, Lease]:
        """key name -> lease of every other node, as last seen (valid or not)."""
        return self.book.leases

    # -- paths ------------------------------------------------------------------------------------
    @property
    def config_key(self) -> str:
        return config_key(self.prefix)

    @property
    def subnets_dir(self) -> str:
        return subnets_dir(self.prefix)

    def key_of(self, subnet: Optional[ipaddress.IPv4Network],
               ipv6_subnet: Optional[ipaddress.IPv6Network] = None) -> str:
        return subnet_key(self.prefix, subnet, ipv6_subnet)

    def _error(self, err: Exception) -> None:
        self.stats["etcd_errors"] += 1
        del err

    # -- network config ---------------------------------------------------------------------------
    def get_config(self) -> NetworkConfig:
        """Read and parse ``<prefix>/config`` and make it the manager's config.  Raises NoConfig,
        ConfigError or StoreError."""
        self.config = self.read_config()
        return self.config

    def read_config(self) -> NetworkConfig:
        """Read and parse ``<prefix>/config`` without adopting it (the agent compares it with the
        config it runs on).  Raises NoConfig, ConfigError or StoreError (also when the stop event given
        to :meth:`wait_config`, :meth:`acquire` or :meth:`watch` is set before etcd answers)."""
        try:
            kv = until_stopped(self._stop, functools.partial(self.store.get, self.config_key))
        except Stopped:
            raise StoreError("stopped before etcd answered (reading %s)" % self.config_key) from None
        except StoreError as err:
            self._error(err)
            raise
        if kv is None:
            raise NoConfig("no network config at %s — create it with the flannel_network module or etcdctl"
                           % self.config_key)
        return parse_config(kv.value)

    def wait_config(self, stop: Optional[threading.Event] = None) -> NetworkConfig:
        """:meth:`get_config` until it succeeds: missing or invalid config is retried every second,
        an unreachable etcd with a bounded exponential back-off."""
        throttle = _Throttle()
        backoff = Backoff()
        self._stop = stop or self._stop
        while True:
            try:
                return self.get_config()
            except NoConfig as err:
                throttle(logging.WARNING, "%s (retrying every second)" % err)
                backoff.reset()
                _wait(stop, 1.0)
            except ConfigError as err:
                throttle(logging.ERROR, "%s (in %s; retrying every second)" % (printable(err, 500), self.config_key))
                backoff.reset()
                _wait(stop, 1.0)
            except StoreError as err:
                if stop is not None and stop.is_set():
                    raise Stopped() from None
                delay = backoff.next()
                throttle(logging.DEBUG if isinstance(err, Unreachable) else logging.ERROR,
                         "%s (retrying in up to %.0f s)" % (printable(err, 500), backoff.high))
                _wait(stop, delay)

    # -- listing ----------------------------------------------------------------------------------
    def list_leases(self, serializable: bool = True) -> Tuple[List[Lease], int]:
        """Every lease under ``<prefix>/subnets/`` (foreign keys skipped) and the list revision.

        Serializable by default: no quorum round per list.  Safe for acquiring and watching: creates
        are atomic (a stale list costs at most a lost race) and the watch resumes from the list's own
        revision.  The checks that decide who keeps a subnet read linearizably (``False``)."""
        try:
            kvs, revision = self.store.list(self.subnets_dir, serializable=serializable)
        except StoreError as err:
            self._error(err)
            raise
        leases = []
        unparsed: Dict[str, str] = {}
        opaque: Dict[str, _Wanted] = {}
        for kv in kvs:
            lease = self._parse(kv, unparsed, opaque)
            if lease is not None:
                leases.append(lease)
        self._unparsed = unparsed
        self._opaque = opaque
        return leases, revision

    def _parse(self, kv: KV, unparsed: Optional[Dict[str, str]] = None,
               opaque: Optional[Dict[str, _Wanted]] = None) -> Optional[Lease]:
        try:
            lease = lease_from_kv(kv)
        except LeaseFormatError as err:
            name = kv.key[len(self.subnets_dir):] if kv.key.startswith(self.subnets_dir) else kv.key
            if unparsed is not None and "/" not in name:
                unparsed[name] = str(err)
            if opaque is not None and "/" not in name:
                try:
                    opaque[name] = _parse_key(name)
                except LeaseFormatError:
                    pass
            return None
        lease._kv = kv  # type: ignore[attr-defined]  # kept for update/delete
        return lease

    def _older_rival(self, kv: KV, wanted: _Wanted) -> Tuple[Optional[Lease], List[Lease], int]:
        """After writing ``kv`` (our lease with the subnets ``wanted``): list linearizably and return
        the oldest lease older than ours that overlaps one of our subnets (or None), with the list."""
        leases, revision = self.list_leases(serializable=False)
        name = subnet_key_name(*wanted)
        created = kv.created
        if not created:  # the write's answer did not say: the list does
            created = next((lease.created for lease in leases if lease.key_name == name), 0)
        if not created:
            return None, leases, revision  # not listed (gone again): nothing to compare with
        return _rival(leases, wanted, name, older_than=(created, name)), leases, revision

    # -- our own lease ---------------------------------------------------------------------------
    def _own(self, kv: KV, attrs: LeaseAttrs, acquired: bool = False) -> Lease:
        lease = lease_from_kv(kv)
        if lease.expiration is None and not lease.reservation:
            lease.expiration = self._clock() + self.ttl
        self.attrs = attrs
        previous = self.lease
        self.lease = lease
        self._kv = kv
        self._schedule(lease)
        if acquired or previous is None or previous.key_name != lease.key_name:
            config = self.config
            self.book = LeaseBook(config.network if config is not None else None,
                                  config.subnet_len if config is not None else None, own=lease,
                                  network6=config.ipv6_network if config is not None else None,
                                  subnet_len6=config.ipv6_subnet_len if config is not None else None)
        return lease

    def _delete_quietly(self, lease: Lease) -> None:
        self._delete_key_quietly(self.subnets_dir + lease.key_name, lease.label)

    def _delete_key_quietly(self, key: str, label: str) -> None:
        try:
            self.store.delete(key)
        except StoreError as err:
            self._error(err)
            log.warning("could not delete lease %s: %s", label, printable(err, 500))

    def _margin(self) -> float:
        return self.renew_margin if self.renew_margin < self.ttl else self.ttl / 2.0

    def _schedule(self, lease: Lease) -> None:
        """Renew ``margin`` seconds before the lease expires, on the monotonic clock: the lease's
        remaining life is measured once, now, so a wall clock stepped later changes nothing."""
        if lease.reservation or lease.expiration is None:
            self._renew_due = float("inf")
        else:
            remaining = lease.expiration - self._clock()
            self._renew_due = self._monotonic() + remaining - self._margin()

    def _holder(self, kv: KV) -> Optional[Lease]:
        """The lease held under ``kv`` (None: its value does not parse)."""
        try:
            return lease_from_kv(kv)
        except LeaseFormatError:
            return None

    def _own_key(self) -> Optional[str]:
        return self.lease.key_name if self.lease is not None else None
