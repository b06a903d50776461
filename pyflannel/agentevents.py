"""The agent's lease events between the watch thread and the main loop: :class:`EventQueue` coalesces
them as they arrive, :class:`EventSummary` sums them up in one INFO line a minute, :func:`_log_some`
names the first few leases of a snapshot."""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Dict, List, Optional, Union

from pyflannel.leases import Lease
from pyflannel.subnet import LeaseEvent

log = logging.getLogger("pyflannel.agent")

SUMMARY_INTERVAL = 60.0  # seconds: at most one INFO line about lease events per interval
SNAPSHOT_LOG_LINES = 10  # leases named one by one in a snapshot's log; the rest are counted


def _log_some(leases: List[Lease], what: str) -> None:
    """One line per lease for the first few, then one line with the count (thousands of peers)."""
    for lease in leases[:SNAPSHOT_LOG_LINES]:
        log.info("lease %s of %s %s", lease.label, lease.attrs.address, what)
    if len(leases) > SNAPSHOT_LOG_LINES:
        log.info("... and %d more leases %s", len(leases) - SNAPSHOT_LOG_LINES, what)


class Batch:
    """What :meth:`EventQueue.get` hands the main loop: ``events`` in order (a snapshot first if one
    came), ``error`` the watch's exception if it raised, ``received`` how many added/removed events the
    watch delivered for them (before coalescing)."""

    __slots__ = ("events", "error", "received")

    def __init__(self, events: List[LeaseEvent], error: Optional[BaseException], received: int) -> None:
        self.events = events
        self.error = error
        self.received = received


class EventQueue:
    """The watch thread's lease events for the main loop, coalesced as they arrive.

    Per lease key only the last event is kept (a lease added and removed ten times while the datapath
    was busy costs one change), and a snapshot replaces everything queued before it (it holds the whole
    truth).  What waits is bounded by the number of leases, not by the rate of churn, so the agent is
    caught up one pass after churn ends."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._snapshot: Optional[LeaseEvent] = None
        self._events: Dict[str, LeaseEvent] = {}  # key name -> last event, in order of arrival
        self._error: Optional[BaseException] = None
        self._received = 0

    def put(self, item: Union[LeaseEvent, BaseException]) -> None:
        with self._cond:
            if isinstance(item, LeaseEvent):
                if item.kind == "snapshot":
                    self._snapshot = item
                    self._events.clear()
                elif item.lease is not None:
                    self._received += 1
                    key = item.lease.key_name
                    self._events.pop(key, None)  # re-inserted: the order is that of the last events
                    self._events[key] = item
            elif self._error is None:
                self._error = item
            self._cond.notify()

    def pending(self) -> int:
        with self._cond:
            return len(self._events) + (self._snapshot is not None) + (self._error is not None)

    def get(self, timeout: Optional[float] = None) -> Batch:
        """Everything queued, at once; waits up to ``timeout`` seconds for something (an empty batch then)."""
        with self._cond:
            if not (self._snapshot or self._events or self._error):
                self._cond.wait(timeout)
            events = ([self._snapshot] if self._snapshot is not None else []) + list(self._events.values())
            batch = Batch(events, self._error, self._received)
            self._snapshot, self._events, self._error, self._received = None, {}, None, 0
            return batch


class EventSummary:
    """Lease events summed up in one INFO line at most every :data:`SUMMARY_INTERVAL` seconds, e.g.
    ``lease events in the last 60 s: 312 added, 298 removed (from 1840 watch events); 41 remote leases
    now``; the first change after a quiet interval is logged at once, and a few changes are named."""

    NAMED = 3  # changes named in a line; more are only counted

    def __init__(self, interval: float = SUMMARY_INTERVAL, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.added = 0
        self.removed = 0
        self.received = 0  # events the watch delivered (before coalescing)
        self.named: List[str] = []
        self.since = clock()  # the start of the window the next line covers
        self.last: Optional[float] = None  # when the last line was logged (None: the first change is logged at once)

    def count(self, event: LeaseEvent) -> None:
        if event.lease is None:
            return
        if event.kind == "added":
            self.added += 1
        elif event.kind == "removed":
            self.removed += 1
        else:
            return
        if len(self.named) < self.NAMED:
            self.named.append("%s %s of %s" % (event.kind, event.lease.label, event.lease.attrs.address))

    def line(self, remote: int) -> Optional[str]:
        """The summary once the interval has passed since the last one and something changed, else None."""
        now = self.clock()
        if not (self.added or self.removed) or (self.last is not None and now - self.last < self.interval):
            return None
        changes = self.added + self.removed
        text = "lease events in the last %.0f s: %d added, %d removed" % (
            max(1.0, now - self.since), self.added, self.removed)
        if self.received > changes:
            text += " (from %d watch events)" % self.received
        if changes <= self.NAMED:
            text += " (%s)" % ", ".join(self.named)
        text += "; %d remote lease%s now" % (remote, "" if remote == 1 else "s")
        self.added = self.removed = self.received = 0
        self.named = []
        self.last = self.since = now
        return text
