"""Keeping our lease: renewal on a monotonic schedule, writing it back after etcd lost it, releasing it."""

from __future__ import annotations

import logging
import time
from typing import List, Optional, Tuple

from pyflannel.etcdstore import StoreError
from pyflannel.leases import Lease, encode_lease
from pyflannel.subnet.backoff import until_stopped
from pyflannel.subnet.claim import Claimer
from pyflannel.subnet.errors import LeaseLost, Stopped, SubnetError
from pyflannel.subnet.rivals import _overlap, _rival, _subnets_of, _taken

log = logging.getLogger("pyflannel.subnet")


class Renewer(Claimer):
    """Renews our lease and writes it back (with the split-brain checks of :mod:`pyflannel.subnet.rivals`)."""

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
                    also = self._index_also(attrs, lease.key_name)
                    if current is None:
                        kv = (self.store.create(key, value, self.ttl, also=also) if also
                              else self.store.create(key, value, self.ttl))
                    else:
                        holder = self._holder(current)
                        if holder is None or holder.attrs.address != attrs.address:
                            raise _taken(why, lease, holder)
                        ttl = self.ttl if current.has_ttl else None
                        kv = (self.store.update(current, value, ttl, also=also) if also
                              else self.store.update(current, value, ttl))
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

    def release(self) -> None:
        """Delete our lease (not done on a normal stop: a restart reuses it)."""
        if self.lease is not None and not self.lease.reservation:
            self._delete_quietly(self.lease)
            if self._index_also(self.attrs, self.lease.key_name):
                self._delete_index_quietly(self._index_key(self.attrs), self.lease.key_name)  # type: ignore[arg-type]
        self.lease = None
        self._kv = None
