"""Pure helpers of the lease manager (no etcd): overlap checks, back-off bounds, renew timing on injected
clocks, log escaping."""

from __future__ import annotations

import ipaddress
import threading

import pytest

from pyflannel.etcdstore import KV, Unreachable
from pyflannel.leases import Lease, LeaseAttrs, parse_subnet_key, printable
from pyflannel.subnet.manager import Backoff, LeaseManager, Stopped, _rival, _Taken, until_stopped


def net(text):
    return ipaddress.IPv4Network(text)


def test_taken_overlaps_same_and_other_lengths():
    taken = _Taken([net("10.0.1.0/24"), net("10.0.8.0/22"), net("10.0.20.128/25")])
    assert taken.overlaps(net("10.0.1.0/24"))
    assert not taken.overlaps(net("10.0.2.0/24"))
    assert taken.overlaps(net("10.0.9.0/24"))  # inside the /22
    assert taken.overlaps(net("10.0.20.0/24"))  # holds the /25
    assert not taken.overlaps(net("10.0.21.0/24"))
    assert taken.overlaps(net("10.0.0.0/16"))


def test_backoff_is_bounded():
    b = Backoff()
    delays = [b.next() for _i in range(20)]
    assert max(delays) <= 10.0
    assert min(delays) > 0
    b.reset()
    assert b.next() <= 0.5


def test_renew_margin_and_retry():
    m = LeaseManager(store=None, prefix="/p", ttl=86400, renew_margin=3600)
    assert m._margin() == 3600
    assert m.retry_interval() == 60.0
    short = LeaseManager(store=None, prefix="/p", ttl=6, renew_margin=3600)
    assert short._margin() == 3.0  # margin >= TTL: renew at half life
    assert 1.0 <= short.retry_interval() <= 3.0


class Clocks:
    """A wall clock that can be stepped (like NTP or an operator does) and a monotonic clock that only
    moves forward."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.mono = 5000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step_wall(self, seconds: float) -> None:
        self.wall += seconds


class FailingStore:
    """A store whose every write fails as if etcd were unreachable (unit test: no etcd here)."""

    api = "v3"

    def head(self, key):
        raise Unreachable("etcd is unreachable (reading %s failed)" % key)

    def update(self, kv, value, ttl=None):
        raise Unreachable("etcd is unreachable (renewing %s failed)" % kv.key)


def owned(clocks: Clocks, ttl: int = 600, margin: float = 60.0, store=None) -> LeaseManager:
    mgr = LeaseManager(store=store, prefix="/p", ttl=ttl, renew_margin=margin,
                       clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    kv = KV("/p/subnets/10.5.1.0-24", '{"PublicIP":"192.0.2.1"}', 7, has_ttl=True,
            expiration=clocks.wall + ttl, ttl=ttl, created=7)
    mgr._own(kv, LeaseAttrs("192.0.2.1"), acquired=True)
    return mgr


@pytest.mark.parametrize("step", [-7200.0, -541.0, 0.0, 541.0, 7200.0])
def test_renewal_is_scheduled_on_the_monotonic_clock(step):
    clocks = Clocks()
    mgr = owned(clocks)  # TTL 600 s, margin 60 s: renew 540 s from now
    assert mgr.renew_at == clocks.wall + 540
    clocks.step_wall(step)  # the wall clock jumps; the lease's life in etcd does not
    assert mgr.renew_at == clocks.wall + 540  # shown in the new wall time
    clocks.advance(539)
    assert not mgr.renew_due()
    clocks.advance(1)
    assert mgr.renew_due()


def test_failed_renewal_is_retried_on_the_monotonic_clock():
    clocks = Clocks()
    mgr = owned(clocks, store=FailingStore())
    clocks.advance(540)
    assert mgr.renew_due()
    with pytest.raises(Unreachable):
        mgr.renew()
    retry = mgr.retry_interval()
    assert retry == 15.0  # a quarter of the 60 s margin
    clocks.step_wall(-3600)
    assert not mgr.renew_due()
    clocks.advance(retry - 0.5)
    assert not mgr.renew_due()
    clocks.advance(0.5)
    assert mgr.renew_due()
    assert mgr.stats["renew_failures"] == 1


def test_reservation_is_never_due():
    clocks = Clocks()
    mgr = LeaseManager(store=None, prefix="/p", clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    mgr._own(KV("/p/subnets/10.5.1.0-24", '{"PublicIP":"192.0.2.1"}', 7), LeaseAttrs("192.0.2.1"), acquired=True)
    clocks.advance(10 * 86400)
    assert not mgr.renew_due() and mgr.renew_at == float("inf")


def lease(key: str, created: int, ip: str = "192.0.2.9") -> Lease:
    subnet, subnet6 = parse_subnet_key(key)
    return Lease(subnet, LeaseAttrs(ip), ipv6_subnet=subnet6, created=created)


def test_one_overlap_check_per_family_oldest_first():
    ours = parse_subnet_key("10.5.1.0-24&fd00:5:0:1::-64")
    others = [
        lease("10.5.2.0-24&fd00:5:0:1::-64", 30, "192.0.2.30"),  # the IPv6 subnet, younger
        lease("10.5.1.0-24&fd00:5:0:9::-64", 20, "192.0.2.20"),  # the IPv4 subnet, older
        lease("10.5.0.0-16", 40, "192.0.2.40"),  # IPv4 only, a bigger range, youngest
        lease("10.5.3.0-24&fd00:5:0:3::-64", 10, "192.0.2.10"),  # no overlap, oldest
        lease("10.5.1.0-24&fd00:5:0:1::-64", 5, "192.0.2.5"),  # our own key: never a rival
    ]
    name = "10.5.1.0-24&fd00:5:0:1::-64"
    assert _rival(others, ours, name).attrs.public_ip == "192.0.2.20"
    assert _rival(others, ours, name, older_than=(25, name)).attrs.public_ip == "192.0.2.20"
    assert _rival(others, ours, name, older_than=(20, name)) is None
    assert _rival(others, (ours[0], None), name, older_than=(35, name)).attrs.public_ip == "192.0.2.20"
    assert _rival(others, (None, ours[1]), name).attrs.public_ip == "192.0.2.30"
    assert _rival(others, (ipaddress.ip_network("10.6.0.0/24"), None), name) is None


@pytest.mark.parametrize("text, shown", [
    ("10.1.2.0-24\nINFO forged line", "10.1.2.0-24\\nINFO forged line"),
    ("a\rb\x1b[2Jc\x00d\x7fe\x85f\u2028g", "a\\rb\\x1b[2Jc\\x00d\\x7fe\\x85f\\u2028g"),
    ("plain 10.1.2.0-24 ünïcode", "plain 10.1.2.0-24 ünïcode"),
    (b"bytes\n", "bytes\\n"),
])
def test_printable_escapes_what_could_end_or_forge_a_log_line(text, shown):
    assert printable(text) == shown
    assert "\n" not in printable(text) and "\r" not in printable(text)


def test_printable_cuts_long_text():
    out = printable("x" * 5000 + "\n", limit=100)
    assert out == "x" * 100 + "... (4901 more characters)"


class BlockedStore:
    """A store whose reads wait until released, like a request to an etcd that drops packets."""

    api = "v3"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()

    def _block(self):
        self.entered.set()
        self.release.wait(60)  # bounded; released by the test
        raise Unreachable("etcd is unreachable (timed out)")

    def head(self, key):
        return self._block()

    def get(self, key):
        return self._block()


def stop_once_entered(store: BlockedStore, stop: threading.Event) -> threading.Thread:
    def run():
        store.entered.wait(60)
        stop.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_until_stopped_passes_results_and_errors_and_gives_up_on_stop():
    stop = threading.Event()
    assert until_stopped(stop, lambda: 42) == 42
    assert until_stopped(None, lambda: 43) == 43
    with pytest.raises(Unreachable):
        until_stopped(stop, lambda: FailingStore().head("/k"))
    store = BlockedStore()
    helper = stop_once_entered(store, stop)
    with pytest.raises(Stopped):
        until_stopped(stop, lambda: store.head("/k"))
    store.release.set()
    helper.join(10)
    with pytest.raises(Stopped):  # already stopped: not even started
        until_stopped(stop, lambda: 44)


def test_wait_config_and_renew_give_up_a_blocked_etcd_request_on_stop():
    clocks = Clocks()
    store = BlockedStore()
    stop = threading.Event()
    mgr = LeaseManager(store=store, prefix="/p", clock=lambda: clocks.wall, monotonic=lambda: clocks.mono)
    helper = stop_once_entered(store, stop)
    with pytest.raises(Stopped):
        mgr.wait_config(stop)
    helper.join(10)
    store.release.set()
    # renew() honours the stop event given to wait_config/acquire/watch: the lease as it was, at once
    store = BlockedStore()
    mgr = owned(clocks, store=store)
    mgr._stop = stop = threading.Event()
    helper = stop_once_entered(store, stop)
    lease = mgr.lease
    assert mgr.renew() is lease
    helper.join(10)
    store.release.set()
