"""Acquiring a lease: reuse one of ours, else the subnet file's subnets, else a free subnet; atomic creates."""

from __future__ import annotations

import functools
import ipaddress
import logging
import random
import threading
from typing import List, Optional, Tuple

from pyflannel import subnetenv
from pyflannel.etcdstore import KV, StoreError, Unreachable
from pyflannel.leases import Lease, LeaseAttrs, encode_lease, lease_age, printable, subnet_key_name
from pyflannel.netconfig import NetworkConfig, Pool
from pyflannel.subnet.backoff import Backoff, _Throttle, _wait, until_stopped
from pyflannel.subnet.claim import Claimer
from pyflannel.subnet.errors import OutOfSubnets, Stopped, SubnetError
from pyflannel.subnet.picker import _mark, _Taken, pick_subnet
from pyflannel.subnet.rivals import _overlap, _rival, _subnets_of, _Wanted

log = logging.getLogger("pyflannel.subnet")

RACE_TRIES = 10  # create attempts per acquire round before backing off


def fits(config: NetworkConfig, lease: Lease) -> bool:
    """Whether ``lease`` is one ``config`` would hand out: a subnet in each enabled family's pool and
    none in a disabled one (a dual-stack lease does not fit once IPv6 is switched off)."""
    for pool, subnet in ((config.pool4, lease.subnet), (config.pool6, lease.ipv6_subnet)):
        if (pool is None) != (subnet is None) or (pool is not None and not pool.contains(subnet)):
            return False
    return True


def _label(wanted: _Wanted) -> str:
    return " ".join(str(net) for net in wanted if net is not None)


def _networks(config: NetworkConfig) -> str:
    return " ".join(str(pool.network) for pool in config.pools())


class Allocator(Claimer):
    """Picking and creating this node's lease, exactly as Go flanneld does."""

    def try_acquire(self, config: NetworkConfig, attrs: LeaseAttrs, stop: Optional[threading.Event] = None) -> Lease:
        """One acquire round, exactly as Go flanneld: reuse by PublicIP (PublicIPv6 on an IPv6-only
        network), then the subnet file's subnets, then a random free subnet among the first 100 of
        each family; create atomically, retrying lost races up to 10 times.  Raises OutOfSubnets,
        StoreError, Stopped (``stop`` set between attempts), or SubnetError after 10 lost races.

        A lease of ours that overlaps an older lease is not reused (the older one keeps the subnet)."""
        value_ttl = self.ttl
        value = encode_lease(attrs, self.store.api)
        self._acquiring = attrs
        taken: Optional[List[_Taken]] = None
        node = attrs.address
        if self._fast_path(config):
            # etcd v3, IPv4: restart, index lookup or random claim, without listing (pyflannel.subnet.claim)
            if stop is not None and stop.is_set():
                raise Stopped()
            self._primed = None
            lease = self._claim_or_reuse(config, attrs, value)
            if lease is not None:
                return lease
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
                    also = self._index_also(attrs, chosen.key_name)
                    new = (self.store.update(kv, value, None if chosen.reservation else value_ttl, also=also)
                           if also else self.store.update(kv, value, None if chosen.reservation else value_ttl))
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
            also = self._index_also(self._acquiring, subnet_key_name(*wanted))
            kv = (self.store.create(self.key_of(*wanted), value, ttl, also=also) if also
                  else self.store.create(self.key_of(*wanted), value, ttl))
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
