"""The lease manager: network config, acquire, renew and watch subnet leases in etcd.

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
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import logging
import random
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple, TypeVar

from pyflannel import etcdstore, subnetenv
from pyflannel.etcdstore import KV, EtcdStore, StateLost, StoreError, Unreachable, WatchExpired
from pyflannel.leases import (
    LEASE_TTL,
    Change,
    Lease,
    LeaseAttrs,
    LeaseBook,
    LeaseFormatError,
    check_value_size,
    config_key,
    decode_lease,
    encode_lease,
    lease_age,
    normalize_prefix,
    parse_subnet_key,
    printable,
    subnet_key,
    subnet_key_name,
    subnets_dir,
)
from pyflannel.netconfig import ConfigError, NetworkConfig, Pool, parse_config

log = logging.getLogger("pyflannel.subnet")
_T = TypeVar("_T")

MAX_CANDIDATES = 100  # Go flanneld picks at random among the first 100 free subnets
RACE_TRIES = 10  # create attempts per acquire round before backing off
DEFAULT_RENEW_MARGIN = 3600.0  # seconds (--subnet-lease-renew-margin 60 minutes)
MAX_BACKOFF = 10.0  # seconds, upper bound of the back-off while etcd is unreachable
WATCH_BACKOFF = 4.0  # seconds, the watch's bound: a restored etcd is noticed within seconds


class SubnetError(Exception):
    """A lease problem; ``str()`` is one line for a person."""


class NoConfig(SubnetError):
    """``<prefix>/config`` does not exist."""


class OutOfSubnets(SubnetError):
    """Every subnet between SubnetMin and SubnetMax is taken."""


class LeaseLost(SubnetError):
    """Our own lease was deleted, expired or taken over by another node."""


class Stopped(Exception):
    """The stop event was set while waiting."""


class LeaseEvent:
    """What :meth:`LeaseManager.watch` yields.

    ``kind``: ``"snapshot"`` (a full list: ``leases`` holds every other node's lease, ``added`` and
    ``removed`` the difference to what was known before), ``"added"`` (new lease, or one whose value
    changed) or ``"removed"`` (deleted or expired); ``lease`` is set for the last two.
    ``revision`` is the etcd revision/index of the change.
    """

    __slots__ = ("kind", "lease", "leases", "added", "removed", "revision", "received")

    def __init__(self, kind: str, lease: Optional[Lease] = None, leases: Optional[List[Lease]] = None,
                 added: Optional[List[Lease]] = None, removed: Optional[List[Lease]] = None,
                 revision: int = 0) -> None:
        self.kind = kind
        self.lease = lease
        self.leases = leases or []
        self.added = added or []
        self.removed = removed or []
        self.revision = revision
        self.received = time.time()

    def __repr__(self) -> str:
        if self.kind == "snapshot":
            return "LeaseEvent(snapshot %d leases, +%d -%d)" % (len(self.leases), len(self.added), len(self.removed))
        return "LeaseEvent(%s %s)" % (self.kind, self.lease)


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


def fits(config: NetworkConfig, lease: Lease) -> bool:
    """Whether ``lease`` is one ``config`` would hand out: a subnet in each enabled family's pool and
    none in a disabled one (a dual-stack lease does not fit once IPv6 is switched off)."""
    for pool, subnet in ((config.pool4, lease.subnet), (config.pool6, lease.ipv6_subnet)):
        if (pool is None) != (subnet is None) or (pool is not None and not pool.contains(subnet)):
            return False
    return True


class Backoff:
    """Bounded exponential back-off: 0.5 s, 1 s, 2 s, ... up to ``high`` seconds."""

    def __init__(self, low: float = 0.5, high: float = MAX_BACKOFF) -> None:
        self.low = low
        self.high = high
        self.current = low

    def next(self) -> float:
        delay = self.current
        self.current = min(self.high, self.current * 2)
        return delay * random.uniform(0.8, 1.0)

    def reset(self) -> None:
        self.current = self.low


class _Throttle:
    """Logs a repeated message only when it changes or every ``every`` seconds."""

    def __init__(self, every: float = 30.0) -> None:
        self.every = every
        self.last = None
        self.when = 0.0

    def __call__(self, level: int, msg: str) -> None:
        now = time.monotonic()
        if msg != self.last or now - self.when >= self.every:
            log.log(level, msg)
            self.last = msg
            self.when = now


def _wait(stop: Optional[threading.Event], seconds: float) -> None:
    if stop is None:
        time.sleep(seconds)
    elif stop.wait(seconds):
        raise Stopped()


STOP_POLL = 0.1  # seconds: how often a call waiting for etcd looks at the stop event


def until_stopped(stop: Optional[threading.Event], call: Callable[[], _T]) -> _T:
    """``call()``, given up (Stopped) as soon as ``stop`` is set.

    An etcd request to an address that drops packets blocks for the store's whole timeout (5 s, per
    endpoint); run in a helper thread, it no longer holds up a stop.  A call given up finishes (or
    times out) in the background; the caller is stopping and does not look at its result."""
    if stop is None:
        return call()
    if stop.is_set():
        raise Stopped()
    box: Dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # handed to the caller below, whatever it is
            box["error"] = err
        finally:
            done.set()

    threading.Thread(target=run, name="etcd-call", daemon=True).start()
    while not done.wait(STOP_POLL):
        if stop.is_set():
            raise Stopped()
    if "error" in box:
        raise box["error"]
    return box["value"]


class LeaseManager:
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
                      "etcd_state_losses": 0}

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

    # -- acquire ----------------------------------------------------------------------------------
    def try_acquire(self, config: NetworkConfig, attrs: LeaseAttrs, stop: Optional[threading.Event] = None) -> Lease:
        """One acquire round, exactly as Go flanneld: reuse by PublicIP (PublicIPv6 on an IPv6-only
        network), then the subnet file's subnets, then a random free subnet among the first 100 of
        each family; create atomically, retrying lost races up to 10 times.  Raises OutOfSubnets,
        StoreError, Stopped (``stop`` set between attempts), or SubnetError after 10 lost races.

        A lease of ours that overlaps an older lease is not reused (the older one keeps the subnet)."""
        value_ttl = self.ttl
        value = encode_lease(attrs, self.store.api)
        taken: Optional[List[_Taken]] = None
        node = attrs.address
        for _attempt in range(RACE_TRIES):
            if stop is not None and stop.is_set():
                raise Stopped()
            self.stats["acquire_attempts"] += 1
            if taken is not None:
                # A lost race: the list is still good apart from what others created since; the
                # subnets we lost are marked taken and the next candidates are tried without a new
                # list (the create stays atomic, so a stale list can only cost another lost race).
                wanted = self._pick(config, taken, (None, None))
                kv = self._create(wanted, value, value_ttl, taken)
                if kv is not None and config.pool4 is not None and config.pool6 is not None:
                    kv = self._keep_if_first(kv, wanted, taken)
                if kv is not None:
                    log.info("acquired lease %s for %s", _label(wanted), node)
                    return self._own(kv, attrs, acquired=True)
                continue
            leases, list_revision = self.list_leases()
            # v3 replays the events since that list in one stream; v2 would need one request per
            # event, so there the watch lists afresh instead.
            self._primed = (leases, list_revision) if self.store.api == "v3" else None

            # 1. a lease with our PublicIP
            mine = [lease for lease in leases if lease.attrs.address == node]
            mine.sort(key=lambda lease: (not lease.reservation, lease.key_name))
            chosen = None
            dropped = set()  # our own leases deleted just now: their subnets are free for us again
            for lease in mine:
                rival = _rival(leases, _subnets_of(lease), lease.key_name, older_than=lease_age(lease))
                if chosen is None and fits(config, lease) and rival is None:
                    chosen = lease
                    continue
                if not fits(config, lease):
                    why = "does not fit the network config %s" % _networks(config)
                elif rival is not None:
                    why = "overlaps the older lease %s of %s, which keeps %s" % (
                        rival.label, rival.attrs.address, _overlap(_subnets_of(lease), rival))
                else:
                    why = "is a duplicate"
                if lease.reservation:
                    log.warning("reservation %s for %s %s; leaving it alone", lease.label, node, why)
                    continue
                log.info("deleting lease %s of %s: it %s", lease.label, node, why)
                self._delete_quietly(lease)
                dropped.add(lease.key_name)
            if chosen is not None:
                kv = chosen._kv  # type: ignore[attr-defined]
                try:
                    new = self.store.update(kv, value, None if chosen.reservation else value_ttl)
                except StoreError as err:
                    self._error(err)
                    raise
                if new is None:
                    continue  # expired or deleted just now: list again
                verb = "reservation" if chosen.reservation else "lease"
                log.info("found %s %s for %s, reusing it", verb, chosen.label, node)
                return self._own(new, attrs, acquired=True)

            # 2. the subnets of the previous run (subnet file), 3. random among the first 100 free ones.
            # Every key that parses counts as taken, whatever the validator says of it (outside the
            # network, another SubnetLen, a value that does not parse): a subnet is never handed out
            # twice, even to leases no datapath here would use.
            held = [_subnets_of(lease) for lease in leases if lease.key_name not in dropped]
            held.extend(self._opaque.values())
            taken = [_Taken((pair[0] for pair in held if pair[0] is not None), 32),
                     _Taken((pair[1] for pair in held if pair[1] is not None), 128)]
            previous = subnetenv.previous_subnets(self.subnet_file)
            wanted = self._pick(config, taken, previous)
            kv = self._create(wanted, value, value_ttl, taken)
            if kv is not None and config.pool4 is not None and config.pool6 is not None:
                kv = self._keep_if_first(kv, wanted, taken)
            if kv is not None:
                reused = [net for net in wanted if net is not None and net in previous]
                log.info("acquired lease %s for %s%s", _label(wanted), node,
                         " (previous subnet from %s)" % self.subnet_file if reused else "")
                return self._own(kv, attrs, acquired=True)
        raise SubnetError("lost the race for a free subnet %d times in a row; backing off" % RACE_TRIES)

    def _pick(self, config: NetworkConfig, taken: List[_Taken],
              previous: Tuple[Optional[ipaddress.IPv4Network], Optional[ipaddress.IPv6Network]]) -> _Wanted:
        """A free subnet of each enabled family (None for a disabled one)."""
        out: List[Optional[ipaddress._BaseNetwork]] = []
        for pool, held, before in zip((config.pool4, config.pool6), taken, previous):
            out.append(None if pool is None else self._pick_in(pool, held, before))
        return out[0], out[1]  # type: ignore[return-value]

    def _pick_in(self, pool: Pool, taken: _Taken, previous: Optional[ipaddress._BaseNetwork]) -> ipaddress._BaseNetwork:
        subnet = pick_subnet(pool, taken, previous)
        if subnet is None:
            lead = "" if pool.version == 4 else "IPv6"
            raise OutOfSubnets(
                "failed to acquire lease: out of subnets in %s (all %d subnets from %s to %s are taken); "
                "free a lease or raise %sSubnetMax in %s — retrying"
                % (pool.network, pool.capacity(), pool.subnet_min, pool.subnet_max, lead, self.config_key))
        return subnet

    def _create(self, wanted: _Wanted, value: str, ttl: int, taken: List[_Taken]) -> Optional[KV]:
        """Atomic create; None (and the subnets marked taken) when another node was first."""
        try:
            kv = self.store.create(self.key_of(*wanted), value, ttl)
        except StoreError as err:
            self._error(err)
            raise
        if kv is None:
            self.stats["lost_races"] += 1
            _mark(taken, wanted)
            log.debug("lost the race for %s, trying again", _label(wanted))
        return kv

    def _keep_if_first(self, kv: KV, wanted: _Wanted, taken: List[_Taken]) -> Optional[KV]:
        """Dual stack: the atomic create guards the key, which names both subnets, so another node may
        have taken one of our two subnets with a different partner at the same time.  The older
        lease keeps it; ours, if younger, is deleted (None: pick again)."""
        try:
            rival, _leases, _revision = self._older_rival(kv, wanted)
        except StoreError:
            return kv  # cannot tell now: the validator of every node still judges older-wins
        if rival is None:
            return kv
        self.stats["lost_races"] += 1
        log.info("lease %s overlaps the older lease %s of %s; choosing again", _label(wanted),
                 rival.label, rival.attrs.address)
        self._delete_key_quietly(kv.key, _label(wanted))
        _mark(taken, _subnets_of(rival))
        return None

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

    def acquire(self, attrs: LeaseAttrs, stop: Optional[threading.Event] = None) -> Lease:
        """Acquire until it works.  The config is read again before every round, so raising SubnetMax
        (or fixing the config) takes effect without a restart.  Every wait checks ``stop`` (Stopped)."""
        throttle = _Throttle()
        backoff = Backoff()
        self._stop = stop or self._stop
        while True:
            try:
                config = self.wait_config(stop)
                return until_stopped(stop, functools.partial(self.try_acquire, config, attrs, stop))
            except OutOfSubnets as err:
                throttle(logging.ERROR, str(err))
                backoff.reset()
                _wait(stop, 1.0)
            except StoreError as err:
                delay = backoff.next()
                throttle(logging.DEBUG if isinstance(err, Unreachable) else logging.ERROR,
                         "failed to acquire lease: %s" % printable(err, 500))
                _wait(stop, delay)
            except SubnetError as err:
                log.warning("%s", err)
                _wait(stop, random.uniform(0.05, 0.5))

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

    # -- renew ------------------------------------------------------------------------------------
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

    @property
    def renew_at(self) -> float:
        """Unix time of the next renewal (inf for a reservation), for display: derived from the
        monotonic schedule and the current wall clock."""
        if self._renew_due == float("inf"):
            return self._renew_due
        return self._clock() + (self._renew_due - self._monotonic())

    def renew_due(self, now: Optional[float] = None) -> bool:
        """Whether the lease should be renewed now; ``now`` is a reading of the monotonic clock
        (default: the manager's ``monotonic()``), never a wall-clock time."""
        return self.lease is not None and (self._monotonic() if now is None else now) >= self._renew_due

    def retry_interval(self) -> float:
        """How long to wait after a failed renewal: a minute, or less for short TTLs."""
        return max(1.0, min(60.0, self._margin() / 4.0))

    def renew(self) -> Lease:
        """Renew our lease (fresh TTL; a reservation stays TTL-less and is left untouched).

        Raises LeaseLost when the key is gone and another node holds one of its subnets by now (else
        the lease is written back, see :meth:`restore`), StoreError when etcd failed (the caller
        retries after :meth:`retry_interval`; the schedule is moved accordingly).

        When the stop event given to :meth:`acquire` (or :meth:`watch`) is set while etcd has not
        answered yet, returns the lease as it was at once: the caller is stopping."""
        stop = self._stop
        try:
            return until_stopped(stop, self._renew)
        except Stopped:
            if self.lease is None:
                raise
            return self.lease

    def _renew(self) -> Lease:
        with self._own_lock:
            if self.lease is None or self._kv is None or self.attrs is None:
                raise SubnetError("no lease to renew")
            if self.lease.reservation:
                self._renew_due = float("inf")
                return self.lease
            value = encode_lease(self.attrs, self.store.api)
            why = None
            try:
                # The store's update rewrites whatever the key holds; after a partition or a restore
                # the key may be another node's by now (it expired and was created again): look first.
                current, _revision = self.store.head(self._kv.key)
                if current is None:
                    why = "was gone from etcd"
                elif self._kv.created and current.created and current.created != self._kv.created:
                    why = "had been created again in etcd"
                else:
                    # the key as just read: the store's update is conditional on it (no write if it changes)
                    kv = self.store.update(current, value, self.ttl)
                    if kv is None:
                        why = "was gone from etcd"
            except StoreError as err:
                self._error(err)
                self._renew_failed()
                raise
            if why is not None:
                try:
                    return self.restore("our lease %s %s when we renewed it" % (self.lease.label, why))
                except StoreError:
                    self._renew_failed()
                    raise
            self.stats["renewals"] += 1
            lease = self._own(kv, self.attrs)
            log.info("renewed lease %s, expires %s", lease.label,
                     time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.expiration or 0)))
            return lease

    def _renew_failed(self) -> None:
        self.stats["renew_failures"] += 1
        self._renew_due = self._monotonic() + self.retry_interval()

    def restore(self, why: str) -> Lease:
        """Write our lease back with the same subnets after etcd lost it (wiped, restored, expired
        while we were cut off, deleted behind our back).  ``why`` says what happened, for the log.

        Before writing, every lease is listed: one that overlaps either of our subnets got into etcd
        first and keeps it (LeaseLost, naming its node).  After writing, the leases are listed again:
        one written at the same time and older than ours keeps the subnet, ours is deleted
        (LeaseLost).  StoreError when etcd fails (the caller retries)."""
        return self._restore(why)[0]

    def _restore(self, why: str, leases: Optional[List[Lease]] = None) -> Tuple[Lease, List[Lease], int]:
        """:meth:`restore`; ``leases``: a linearizable list made just now (saves a list).  Returns the
        lease and the list made after writing it, with its revision."""
        with self._own_lock:
            if self.lease is None or self.attrs is None:
                raise SubnetError("no lease to restore")
            lease, attrs = self.lease, self.attrs
            own = _subnets_of(lease)
            key = self.subnets_dir + lease.key_name
            value = encode_lease(attrs, self.store.api)
            for _attempt in range(3):
                try:
                    if leases is None:
                        leases, _revision = self.list_leases(serializable=False)
                    rival = _rival(leases, own, lease.key_name)
                    if rival is not None:
                        raise _taken(why, lease, rival)
                    current, _revision = self.store.head(key)
                    if current is None:
                        kv = self.store.create(key, value, self.ttl)
                    else:
                        holder = self._holder(current)
                        if holder is None or holder.attrs.address != attrs.address:
                            raise _taken(why, lease, holder)
                        kv = self.store.update(current, value, self.ttl if current.has_ttl else None)
                    if kv is None:
                        leases = None  # changed under our hands: look again
                        continue
                    rival, after, revision = self._older_rival(kv, own)
                except StoreError as err:
                    self._error(err)
                    raise
                if rival is not None:
                    self._delete_key_quietly(key, lease.label)
                    raise LeaseLost("%s, and %s wrote the older lease %s as we wrote ours back: it keeps %s, "
                                    "ours is deleted, this node gives way"
                                    % (why, rival.attrs.address, rival.label, _overlap(own, rival)))
                self.stats["lease_restores"] += 1
                log.warning("%s; wrote it back to etcd with the same subnet", why)
                return self._own(kv, attrs), after, revision
        raise StoreError("our lease %s kept changing while it was being written back" % lease.label)

    def _holder(self, kv: KV) -> Optional[Lease]:
        """The lease held under ``kv`` (None: its value does not parse)."""
        try:
            return lease_from_kv(kv)
        except LeaseFormatError:
            return None

    def release(self) -> None:
        """Delete our lease (not done on a normal stop: a restart reuses it)."""
        if self.lease is not None and not self.lease.reservation:
            self._delete_quietly(self.lease)
        self.lease = None
        self._kv = None

    # -- watch ------------------------------------------------------------------------------------
    def _own_key(self) -> Optional[str]:
        return self.lease.key_name if self.lease is not None else None

    def snapshot(self) -> LeaseEvent:
        """List every lease, judge them all again, and describe the difference to the datapath.

        Our own lease missing from the list (etcd wiped or restored, or the key deleted behind our
        back) is written back with the same subnet (:meth:`restore`); held by another node, or
        overlapped by an older lease of another key, it is lost (LeaseLost: the older keeps it).
        On etcd v3, right after :meth:`acquire` the list made for acquiring serves as the first
        snapshot (the watch then replays everything after its revision, our own create included), so
        a node that starts lists once, not twice — this halves etcd's load when a cluster starts."""
        primed, self._primed = self._primed, None
        if primed is not None:
            leases, revision = primed
        else:
            leases, revision = self.list_leases()
        own = self._own_key()
        if own is not None and self.lease is not None and primed is None:
            mine = [lease for lease in leases if lease.key_name == own]
            if not mine:
                _lease, leases, revision = self._restore("our lease %s was missing from etcd" % self.lease.label)
            elif mine[0].attrs.address != self.lease.attrs.address:
                raise LeaseLost("our lease %s now belongs to %s" % (self.lease.label, mine[0].attrs.address))
            else:
                self._give_way_to_older(mine[0], leases)
                self._kv = mine[0]._kv  # type: ignore[attr-defined]  # as etcd has it now (restored: created anew)
        others = [lease for lease in leases if lease.key_name != own]
        change = self.book.replace_all(others, self._unparsed)
        self._log_rejected(change)
        return LeaseEvent("snapshot", leases=self.book.usable(), added=change.added, removed=change.removed,
                          revision=revision)

    def _give_way_to_older(self, mine: Lease, leases: List[Lease]) -> None:
        """Our lease is in etcd, but so is an older lease of another key overlapping one of its
        subnets (both written back after a partition or a restore, or a dual-stack race): the older
        keeps the subnet; ours is deleted (LeaseLost).  Confirmed by a linearizable list first."""
        own = _subnets_of(mine)
        if _rival(leases, own, mine.key_name, older_than=lease_age(mine)) is None:
            return
        kv = mine._kv  # type: ignore[attr-defined]
        try:
            rival, _leases, _revision = self._older_rival(kv, own)
        except StoreError as err:
            self._error(err)
            raise
        if rival is None:
            return
        self._delete_key_quietly(kv.key, mine.label)
        raise LeaseLost("our lease %s overlaps the older lease %s of %s in etcd: it keeps %s, ours is deleted, "
                        "this node gives way" % (mine.label, rival.label, rival.attrs.address, _overlap(own, rival)))

    def _log_rejected(self, change: Change) -> None:
        for name, why in change.rejected:
            self.stats["leases_rejected"] += 1
            # key names and reasons quote etcd's text: escaped, so a key cannot forge a log line
            log.warning("ignoring the lease %s%s in etcd: %s", self.subnets_dir, printable(name), printable(why))

    def _events(self, change: Change, revision: int) -> List[LeaseEvent]:
        self._log_rejected(change)
        out = [LeaseEvent("removed", lease=lease, revision=revision) for lease in change.removed]
        out.extend(LeaseEvent("added", lease=lease, revision=revision) for lease in change.added)
        return out

    def _probe(self, revision: int) -> bool:
        """One cheap read of our own key: False (list again) when etcd lost it or went back in time."""
        if self.lease is None:
            return True
        try:
            kv, current = self.store.head(self.subnets_dir + self.lease.key_name)
        except StoreError as err:
            self._error(err)
            raise
        if 0 < current < revision:
            self.stats["etcd_state_losses"] += 1
            log.warning("etcd is at revision %d, behind revision %d already seen: its data was wiped or "
                        "restored; listing the leases again", current, revision)
            return False
        if kv is None:
            self.stats["etcd_state_losses"] += 1
            log.warning("our lease %s is missing from etcd; listing the leases again", self.lease.label)
            return False
        # Present is not enough: after a wipe or a restore etcd's revision may have caught up, and the
        # key may have been created again, by another node (it took our subnet while we were cut off).
        holder = self._holder(kv)
        ours = self._kv.created if self._kv is not None else 0
        if holder is None or holder.attrs.address != self.lease.attrs.address or (
                ours and kv.created and kv.created != ours):
            self.stats["etcd_state_losses"] += 1
            log.warning("our lease %s was written again in etcd (created at revision %d, ours at %d) by %s; "
                        "listing the leases again", self.lease.label, kv.created, ours,
                        holder.attrs.address if holder is not None else "an unreadable value")
            return False
        return True

    def watch(self, stop: Optional[threading.Event] = None) -> Iterator[LeaseEvent]:
        """Yield a snapshot, then added/removed events for every other node's usable lease, forever.

        Lists, then watches from the list's revision; when etcd's history no longer holds that
        revision (v2 index cleared, v3 compaction) lists again and yields a new snapshot.  A watch
        that stays idle, and the first request after an outage, read our own key: when etcd lost
        it or went back in time (data wiped or restored), the lease is written back and the leases
        listed again.  Raises LeaseLost when another node took our subnet, and returns when
        ``stop`` is set.  etcd outages are waited out with a bounded back-off."""
        backoff = Backoff(high=WATCH_BACKOFF)
        throttle = _Throttle()
        self._stop = stop or self._stop
        revision = None
        probe_at = 0.0  # monotonic time of the next probe of our own key; 0: now
        while stop is None or not stop.is_set():
            try:
                if revision is not None and time.monotonic() >= probe_at:
                    probe_at = time.monotonic() + self.watch_idle
                    if not self._probe(revision):
                        revision = None
                if revision is None:
                    event = self.snapshot()
                    revision = event.revision
                    probe_at = time.monotonic() + self.watch_idle
                    yield event
                    backoff.reset()
                for batch in self.store.watch(self.subnets_dir, revision, idle=self.watch_idle):
                    if stop is not None and stop.is_set():
                        return
                    if not batch and time.monotonic() >= probe_at:
                        break  # idle: probe our own key, then watch on
                    for ev in batch:
                        revision = max(revision, ev.revision)
                        yield from self._apply(ev)
                    backoff.reset()
            except StateLost as err:
                self.stats["etcd_state_losses"] += 1
                log.warning("%s; listing the leases again", printable(err, 500))
                revision = None
            except WatchExpired as err:
                self.stats["watch_relists"] += 1
                log.info("%s; listing the leases again", printable(err, 500))
                revision = None
            except (Unreachable, StoreError) as err:
                self._error(err)
                delay = backoff.next()
                probe_at = 0.0
                throttle(logging.DEBUG if isinstance(err, Unreachable) else logging.ERROR,
                         "watching leases failed: %s (retrying in up to %.0f s)" % (printable(err, 500), backoff.high))
                if stop is not None:
                    if stop.wait(delay):
                        return
                else:
                    time.sleep(delay)

    def _apply(self, ev: etcdstore.Event) -> List[LeaseEvent]:
        name = ev.key.rsplit("/", 1)[-1]
        if len(ev.key) != len(self.subnets_dir) + len(name) or not ev.key.startswith(self.subnets_dir):
            return []
        own = self._own_key()
        if name == own and self.lease is not None:
            if ev.kind == "delete":
                self.restore("our lease %s was deleted or expired in etcd" % self.lease.label)
                return []
            try:
                check_value_size(ev.value)
                attrs = _decode_value(ev.value)
            except LeaseFormatError:
                attrs = None
            if attrs is None or attrs.address != self.lease.attrs.address:
                raise LeaseLost("our lease %s was overwritten by %s" % (
                    self.lease.label, attrs.address if attrs is not None else "an unreadable value"))
            if self._kv is not None:
                self._kv.revision = ev.revision
            return []
        if ev.kind == "delete":
            self._unparsed.pop(name, None)
            self._opaque.pop(name, None)
            return self._events(self.book.remove(name), ev.revision)
        try:
            subnet, subnet6 = _parse_key(name)
            check_value_size(ev.value)
            attrs = _decode_value(ev.value)
        except LeaseFormatError as err:
            self._unparsed[name] = str(err)
            return self._events(self.book.reject_unparsed(name, str(err)), ev.revision)
        old = self.book.leases.get(name)
        if old is not None and (old.raw == ev.value or old.attrs == attrs):
            old.reservation = not ev.has_ttl
            return []  # a renewal: nothing changed for the datapath
        lease = Lease(subnet, attrs, reservation=not ev.has_ttl, revision=ev.revision, ipv6_subnet=subnet6,
                      raw=ev.value, created=ev.created or (old.created if old is not None else ev.revision))
        return self._events(self.book.put(lease), ev.revision)


_Wanted = Tuple[Optional[ipaddress.IPv4Network], Optional[ipaddress.IPv6Network]]


def _label(wanted: _Wanted) -> str:
    return " ".join(str(net) for net in wanted if net is not None)


def _networks(config: NetworkConfig) -> str:
    return " ".join(str(pool.network) for pool in config.pools())


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
