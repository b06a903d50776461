"""The agent's lease-event plumbing: coalescing between the watch thread and the main loop, and the
one-line-a-minute summary (an injected clock: no timing in these tests)."""

from __future__ import annotations

import ipaddress
from typing import List

from pyflannel.agent import EventQueue, EventSummary
from pyflannel.leases import Lease, LeaseAttrs
from pyflannel.subnet import LeaseEvent, LeaseLost


def lease(i: int, ip: str = "192.0.2.1") -> Lease:
    return Lease(ipaddress.IPv4Network("10.1.%d.0/24" % i), LeaseAttrs(ip, "host-gw"))


def added(i: int, ip: str = "192.0.2.1") -> LeaseEvent:
    return LeaseEvent("added", lease=lease(i, ip))


def removed(i: int) -> LeaseEvent:
    return LeaseEvent("removed", lease=lease(i))


def kinds(events: List[LeaseEvent]) -> List[str]:
    return ["%s %s" % (e.kind, e.lease.label if e.lease is not None else len(e.leases)) for e in events]


def test_last_event_per_lease_wins_in_order_of_the_last_events():
    q = EventQueue()
    for _round in range(50):  # churn: two leases added and removed again and again
        q.put(added(1))
        q.put(added(2))
        q.put(removed(1))
        q.put(removed(2))
    q.put(added(3))
    q.put(added(1, "192.0.2.9"))
    assert q.pending() == 3
    batch = q.get(0)
    assert kinds(batch.events) == ["removed 10.1.2.0/24", "added 10.1.3.0/24", "added 10.1.1.0/24"]
    assert batch.events[-1].lease.attrs.public_ip == "192.0.2.9"
    assert batch.received == 202 and batch.error is None
    assert q.pending() == 0 and q.get(0).events == []


def test_snapshot_replaces_what_came_before_it():
    q = EventQueue()
    q.put(added(1))
    q.put(removed(2))
    snap = LeaseEvent("snapshot", leases=[lease(5), lease(6)])
    q.put(snap)
    q.put(removed(5))
    batch = q.get(0)
    assert batch.events[0] is snap
    assert kinds(batch.events) == ["snapshot 2", "removed 10.1.5.0/24"]


def test_error_is_handed_over_with_the_events():
    q = EventQueue()
    q.put(added(1))
    q.put(LeaseLost("our lease was overwritten"))
    q.put(RuntimeError("second"))  # the first error counts
    batch = q.get(0)
    assert isinstance(batch.error, LeaseLost) and kinds(batch.events) == ["added 10.1.1.0/24"]
    assert q.get(0).error is None


def test_queue_size_is_bounded_by_the_leases_not_the_churn():
    q = EventQueue()
    for i in range(20000):
        q.put(added(i % 100) if i % 3 else removed(i % 100))
    assert q.pending() == 100


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_summary_first_change_at_once_then_at_most_one_line_per_interval():
    clock = Clock()
    summary = EventSummary(interval=60, clock=clock)
    assert summary.line(0) is None  # nothing happened
    clock.now += 5
    summary.count(added(1))
    first = summary.line(1)
    assert first == "lease events in the last 5 s: 1 added, 0 removed (added 10.1.1.0/24 of 192.0.2.1); " \
                    "1 remote lease now"
    lines = []
    for _second in range(120):  # two minutes of churn, a pass every second
        clock.now += 1
        for i in range(5):
            summary.count(added(i))
            summary.count(removed(i))
        summary.received += 30
        line = summary.line(7)
        if line:
            lines.append(line)
    assert len(lines) == 2
    assert lines[0] == "lease events in the last 60 s: 300 added, 300 removed (from 1800 watch events); " \
                       "7 remote leases now"
    clock.now += 600
    assert summary.line(7) is None  # quiet: nothing more


def test_summary_names_only_a_few_changes():
    clock = Clock()
    summary = EventSummary(interval=60, clock=clock)
    for i in range(4):
        summary.count(removed(i))
    line = summary.line(0)
    assert line is not None and "4 removed" in line and "10.1.0.0/24" not in line
    assert line.endswith("; 0 remote leases now")


class _Backend:
    """A stand-in datapath that fails with text quoting etcd (a key with a newline in it)."""

    name = "stub"

    def lease_added(self, _lease):
        from pyflannel.backend import BackendError

        raise BackendError("cannot use lease /coreos.com/network/subnets/10.1.1.0-24\nE1206 fake line")

    def lease_removed(self, _lease):
        raise RuntimeError("odd\r\nvalue")


def test_backend_errors_quoting_etcd_stay_one_line(caplog):
    from types import SimpleNamespace

    from pyflannel.agent import Agent

    agent = Agent(SimpleNamespace())
    agent.backend = _Backend()
    caplog.set_level("DEBUG", logger="pyflannel.agent")
    agent._handle(added(1))
    agent._handle(removed(1))
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 2 and all("\n" not in e and "\r" not in e for e in errors), errors
    assert "\\nE1206 fake line" in errors[0]
    assert [r.levelname for r in caplog.records if "lease added" in r.getMessage()] == ["DEBUG"]
