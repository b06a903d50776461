"""Watching the leases: snapshots, events applied to the lease book, probes of our own key."""

from __future__ import annotations

import logging
import threading
import time
from typing import Iterator, List, Optional

from pyflannel import etcdstore
from pyflannel.etcdstore import StateLost, StoreError, Unreachable, WatchExpired
from pyflannel.leases import Change, Lease, LeaseFormatError, check_value_size, lease_age, printable
from pyflannel.subnet.backoff import WATCH_BACKOFF, Backoff, _Throttle
from pyflannel.subnet.base import _decode_value, _parse_key
from pyflannel.subnet.errors import LeaseLost
from pyflannel.subnet.renew import Renewer
from pyflannel.subnet.rivals import _overlap, _rival, _subnets_of

log = logging.getLogger("pyflannel.subnet")


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


class Watcher(Renewer):
    """Follows every other node's lease; writes ours back (:class:`Renewer`) when etcd lost it."""

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
