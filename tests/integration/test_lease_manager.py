"""The lease manager against a real etcd, for both the v2 and the v3 API (no datapath, no mocks)."""

from __future__ import annotations

import ipaddress
import logging
import subprocess
import threading
import time

import pytest

from pyflannel import etcdstore
from pyflannel.leases import LeaseAttrs, encode_lease
from pyflannel.subnet import LeaseLost, LeaseManager, Stopped
from testbed.etcdserver import free_port

SEED_000 = ('{"Network":"10.100.0.0/16","SubnetLen":25,"SubnetMin":"10.100.0.0","SubnetMax":"10.100.1.0",'
            '"Backend":{"Type":"alloc"}}')
SEED_000_RAISED = SEED_000.replace('"SubnetMax":"10.100.1.0"', '"SubnetMax":"10.100.1.128"')
BIG = '{"Network":"10.100.0.0/16","Backend":{"Type":"alloc"}}'


@pytest.fixture
def store(etcd_server, etcd_api):
    s = etcdstore.connect(etcd_server.url, api=etcd_api)
    assert s.api == etcd_api
    yield s
    s.close()


def new_manager(etcd_server, etcd_api, prefix, **kwargs):
    return LeaseManager(etcdstore.connect(etcd_server.url, api=etcd_api), prefix, **kwargs)


def attrs(ip):
    return LeaseAttrs(ip, "")


def key_ttl(store, key):
    """Remaining TTL of ``key`` (None: no TTL), asked from etcd directly."""
    kv = store.get(key)
    assert kv is not None, key
    return store.remaining_ttl(kv)


class Collector:
    """Runs manager.watch() in a thread and keeps every event."""

    def __init__(self, manager):
        self.manager = manager
        self.events = []
        self.error = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            for event in self.manager.watch(self.stop):
                self.events.append(event)
        except Exception as err:
            self.error = err

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in list(self.events):
                if predicate(event):
                    return event
            time.sleep(0.05)
        raise AssertionError("no matching event within %.0f s; got %r (error %r)" % (timeout, self.events, self.error))

    def close(self):
        self.stop.set()


def test_first_acquire_writes_go_lease(store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    mgr = new_manager(etcd_server, etcd_api, etcd_prefix)
    lease = mgr.acquire(attrs("127.0.0.11"))
    assert mgr.config.contains(lease.subnet)
    kv = store.get(etcd_prefix + "/subnets/%s-24" % lease.subnet.network_address)
    assert kv.value == encode_lease(attrs("127.0.0.11"), etcd_api)
    assert kv.value == ('{"PublicIP":"127.0.0.11"}' if etcd_api == "v2"
                        else '{"PublicIP":"127.0.0.11","PublicIPv6":null}')
    assert 86000 < key_ttl(store, kv.key) <= 86400


def test_reuse_by_public_ip_after_restart(store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    first = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=60).acquire(attrs("127.0.0.12"))
    time.sleep(1.1)
    # a "restarted" node: new manager, new connection, no subnet file; new attributes are written
    again = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=60)
    lease = again.acquire(LeaseAttrs("127.0.0.12", "host-gw"))
    assert lease.subnet == first.subnet
    kv = store.get(again.key_of(lease.subnet))
    assert '"BackendType":"host-gw"' in kv.value
    assert key_ttl(store, kv.key) > 58  # fresh TTL
    leases, _revision = again.list_leases()
    assert [x.subnet for x in leases if x.attrs.public_ip == "127.0.0.12"] == [first.subnet]


def test_lease_that_no_longer_fits_is_deleted(store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    old = etcd_prefix + "/subnets/10.200.5.0-24"
    store.create(old, encode_lease(attrs("127.0.0.13"), etcd_api), ttl=60)
    lease = new_manager(etcd_server, etcd_api, etcd_prefix).acquire(attrs("127.0.0.13"))
    assert lease.subnet.subnet_of(ipaddress.IPv4Network("10.100.0.0/16"))
    assert store.get(old) is None


def test_reuse_from_subnet_file(store, etcd_server, etcd_api, etcd_prefix, tmp_path):
    store.put(etcd_prefix + "/config", BIG)
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_NETWORK=10.100.0.0/16\nFLANNEL_SUBNET=10.100.77.1/24\nFLANNEL_MTU=1500\n"
                   "FLANNEL_IPMASQ=false\n")
    lease = new_manager(etcd_server, etcd_api, etcd_prefix, subnet_file=str(env)).acquire(attrs("127.0.0.14"))
    assert lease.subnet == ipaddress.IPv4Network("10.100.77.0/24")
    # taken by someone else: the file's subnet is not stolen
    env2 = tmp_path / "other.env"
    env2.write_text("FLANNEL_SUBNET=10.100.77.1/24\n")
    other = new_manager(etcd_server, etcd_api, etcd_prefix, subnet_file=str(env2)).acquire(attrs("127.0.0.15"))
    assert other.subnet != lease.subnet


def test_reservation_kept_and_ttl_less_after_renew(store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    key = etcd_prefix + "/subnets/10.100.9.0-24"
    store.put(key, encode_lease(attrs("127.0.0.16"), etcd_api))  # a reservation: no TTL
    mgr = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=2)
    lease = mgr.acquire(LeaseAttrs("127.0.0.16", "host-gw"))
    assert lease.subnet == ipaddress.IPv4Network("10.100.9.0/24")
    assert lease.reservation
    assert key_ttl(store, key) is None
    assert '"BackendType":"host-gw"' in store.get(key).value  # attributes rewritten
    assert mgr.renew_at == float("inf")
    mgr.renew()
    time.sleep(3)  # longer than the TTL override: a reservation must not expire
    assert key_ttl(store, key) is None
    # and a restarted node takes the same reservation again, still without TTL
    again = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=2).acquire(LeaseAttrs("127.0.0.16", "host-gw"))
    assert again.subnet == lease.subnet and again.reservation
    assert key_ttl(store, key) is None


def test_renewal_extends_ttl(store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    mgr = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=5)
    lease = mgr.acquire(attrs("127.0.0.17"))
    key = mgr.key_of(lease.subnet)
    assert mgr.renew_at - time.time() <= 2.6  # margin >= TTL: renew at half life
    time.sleep(3)
    before = key_ttl(store, key)
    assert before is not None and before <= 3
    renewed = mgr.renew()
    after = key_ttl(store, key)
    assert after >= 4 and after > before
    assert renewed.expiration > lease.expiration
    time.sleep(3)  # past the first expiry: still there thanks to the renewal
    assert store.get(key) is not None
    if etcd_api == "v3":  # keep-alive of the key's own etcd lease: no new etcd lease, nothing leaked
        assert lease.lease_id != 0
        assert store.get(key).lease_id == lease.lease_id == renewed.lease_id


def test_watch_reports_others_never_our_own(store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    mgr = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=30)
    own = mgr.acquire(attrs("127.0.0.18"))
    watch = Collector(mgr)
    try:
        watch.wait_for(lambda e: e.kind == "snapshot")
        other = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=3)
        theirs = other.acquire(attrs("127.0.0.19"))
        added = watch.wait_for(lambda e: e.kind == "added")
        assert added.lease.subnet == theirs.subnet and added.lease.attrs.public_ip == "127.0.0.19"
        mgr.renew()  # our own changes never show up
        other.release()  # deleted -> removed
        removed = watch.wait_for(lambda e: e.kind == "removed")
        assert removed.lease.subnet == theirs.subnet
        # expiry is a removal too
        third = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=2).acquire(attrs("127.0.0.20"))
        watch.wait_for(lambda e: e.kind == "added" and e.lease.subnet == third.subnet)
        watch.wait_for(lambda e: e.kind == "removed" and e.lease.subnet == third.subnet, timeout=15)
        # a changed value is "added" again with the new attributes
        fourth_mgr = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=30)
        fourth = fourth_mgr.acquire(attrs("127.0.0.21"))
        watch.wait_for(lambda e: e.kind == "added" and e.lease.subnet == fourth.subnet)
        fourth_mgr.attrs = LeaseAttrs("127.0.0.21", "host-gw")
        fourth_mgr.renew()
        changed = watch.wait_for(lambda e: e.kind == "added" and e.lease.attrs.backend_type == "host-gw")
        assert changed.lease.subnet == fourth.subnet
        time.sleep(0.5)
        for event in watch.events:
            assert event.lease is None or event.lease.subnet != own.subnet
            assert all(x.subnet != own.subnet for x in event.leases)
        assert watch.error is None
    finally:
        watch.close()


def watching_node(store, etcd_server, etcd_api, etcd_prefix, ip):
    """A manager holding a lease for ``ip`` and watching (its first snapshot seen)."""
    store.put(etcd_prefix + "/config", BIG)
    mgr = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=30)
    own = mgr.acquire(attrs(ip))
    watch = Collector(mgr)
    watch.wait_for(lambda e: e.kind == "snapshot")
    return mgr, own, watch


def test_own_lease_deleted_behind_our_back_is_written_back(store, etcd_server, etcd_api, etcd_prefix):
    mgr, own, watch = watching_node(store, etcd_server, etcd_api, etcd_prefix, "127.0.0.22")
    key = mgr.key_of(own.subnet)
    try:
        store.delete(key)
        deadline = time.monotonic() + 10
        while store.get(key) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        back = store.get(key)
        assert back is not None, "the lease was not written back"
        assert '"PublicIP":"127.0.0.22"' in back.value
        assert back.has_ttl
        assert watch.error is None
        assert mgr.stats["lease_restores"] == 1
        # renewing a lease that vanished writes it back too (same subnet, fresh TTL)
        store.delete(key)
        assert mgr.renew().subnet == own.subnet
        assert store.get(key) is not None
    finally:
        watch.close()


def test_own_subnet_taken_by_another_node_raises_lease_lost(store, etcd_server, etcd_api, etcd_prefix):
    mgr, own, watch = watching_node(store, etcd_server, etcd_api, etcd_prefix, "127.0.0.23")
    try:
        store.put(mgr.key_of(own.subnet), encode_lease(attrs("127.0.0.99"), etcd_api))
        deadline = time.monotonic() + 10
        while watch.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert isinstance(watch.error, LeaseLost)
        assert "127.0.0.99" in str(watch.error)
        with pytest.raises(LeaseLost):
            mgr.restore("test")
    finally:
        watch.close()


def _relist_trigger(store, etcd_api, etcd_server, prefix):
    """Make etcd forget the history the watch would resume from."""
    if etcd_api == "v3":
        _kvs, revision = store.list(prefix + "/nothing/")
        subprocess.run(["etcdctl", "--endpoints", etcd_server.url, "compact", str(revision)], check=True,
                       capture_output=True, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    else:
        for i in range(1010):  # v2 keeps the last 1000 events
            store.put(prefix + "/noise", str(i))


def test_watch_relists_when_history_is_gone(store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    mgr = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=60)
    mgr.acquire(attrs("127.0.0.23"))
    gen = mgr.watch(threading.Event())
    first = next(gen)
    assert first.kind == "snapshot" and first.leases == []
    others = [new_manager(etcd_server, etcd_api, etcd_prefix, ttl=60).acquire(attrs("127.0.0.%d" % i))
              for i in (24, 25)]
    store.delete(mgr.key_of(others[1].subnet))
    _relist_trigger(store, etcd_api, etcd_server, etcd_prefix)
    event = next(gen)
    assert event.kind == "snapshot"
    assert [x.subnet for x in event.leases] == [others[0].subnet]
    assert [x.subnet for x in event.added] == [others[0].subnet]
    assert mgr.stats["watch_relists"] == 1


def _blocked_fourth(etcd_server, etcd_api, etcd_prefix, public_ip, caplog):
    """Start a fourth node's acquire in a thread and wait (bounded) until it logs "out of subnets"."""
    fourth = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=60)
    result = {}
    stop = threading.Event()

    def run():
        try:
            result["lease"] = fourth.acquire(attrs(public_ip), stop)
        except Stopped:
            pass

    caplog.set_level(logging.INFO, logger="pyflannel.subnet")
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while "out of subnets" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.1)
    return result, stop, thread


def test_out_of_subnets_then_success_when_freed(store, etcd_server, etcd_api, etcd_prefix, caplog):
    store.put(etcd_prefix + "/config", SEED_000)
    holders = [new_manager(etcd_server, etcd_api, etcd_prefix, ttl=60) for _i in range(3)]
    got = sorted(str(m.acquire(attrs("127.0.0.%d" % (31 + i))).subnet) for i, m in enumerate(holders))
    assert got == ["10.100.0.0/25", "10.100.0.128/25", "10.100.1.0/25"]
    result, stop, thread = _blocked_fourth(etcd_server, etcd_api, etcd_prefix, "127.0.0.34", caplog)
    try:
        assert "failed to acquire lease: out of subnets" in caplog.text
        assert "lease" not in result
        holders[1].release()
        thread.join(10)
        freed = {"10.100.0.0/25", "10.100.0.128/25", "10.100.1.0/25"} - {
            str(h.lease.subnet) for h in holders if h.lease is not None}
        assert {str(result["lease"].subnet)} == freed
    finally:
        stop.set()
        thread.join(5)


def test_out_of_subnets_rereads_config(store, etcd_server, etcd_api, etcd_prefix, caplog):
    """Seed 000: the fourth node waits, and SubnetMax raised to 10.100.1.128 lets it in without a restart."""
    store.put(etcd_prefix + "/config", SEED_000)
    for i in range(3):
        new_manager(etcd_server, etcd_api, etcd_prefix, ttl=60).acquire(attrs("127.0.0.%d" % (41 + i)))
    result, stop, thread = _blocked_fourth(etcd_server, etcd_api, etcd_prefix, "127.0.0.44", caplog)
    try:
        assert "out of subnets" in caplog.text
        store.put(etcd_prefix + "/config", SEED_000_RAISED)
        raised = time.monotonic()
        thread.join(10)
        assert str(result["lease"].subnet) == "10.100.1.128/25"
        assert time.monotonic() - raised < 5
    finally:
        stop.set()


@pytest.mark.slow
def test_200_concurrent_acquirers_get_distinct_subnets(store, etcd_server, etcd_api, etcd_prefix):
    # 255 subnets for 200 nodes: heavy contention on the same random candidates
    store.put(etcd_prefix + "/config", BIG)
    results = [None] * 200
    errors = []
    start = threading.Barrier(200)

    def node(i):
        try:
            mgr = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=300)
            start.wait(30)
            results[i] = mgr.acquire(attrs("10.1.%d.%d" % (i // 250, i % 250 + 1)))
        except Exception as err:  # collected, reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=node, args=(i,), daemon=True) for i in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:3]
    subnets = [str(r.subnet) for r in results]
    assert len(set(subnets)) == 200
    kvs, _revision = store.list(etcd_prefix + "/subnets/")
    assert len(kvs) == 200
    owners = {}
    for kv in kvs:
        owners.setdefault(kv.key, []).append(kv.value)
    assert all(len(v) == 1 for v in owners.values())


def test_endpoint_failover_with_dead_first_endpoint(etcd_server, etcd_api, etcd_prefix):
    dead = "http://127.0.0.1:%d" % free_port()
    s = etcdstore.connect("%s,%s" % (dead, etcd_server.url), api=etcd_api)
    s.put(etcd_prefix + "/config", BIG)
    mgr = LeaseManager(s, etcd_prefix, ttl=30)
    lease = mgr.acquire(attrs("127.0.0.51"))
    assert mgr.renew().subnet == lease.subnet
    assert s.endpoint.url == etcd_server.url
    if etcd_api == "v3":  # auto picks v3 through the failover too
        assert etcdstore.connect([dead, etcd_server.url], api="auto").api == "v3"


def test_unreachable_etcd_is_a_clear_error(etcd_api):
    dead = "http://127.0.0.1:%d" % free_port()
    s = etcdstore.connect(dead, api=etcd_api)
    mgr = LeaseManager(s, "/x/coreos.com/network")
    with pytest.raises(etcdstore.Unreachable) as err:
        mgr.get_config()
    assert "etcd is unreachable" in str(err.value) and "\n" not in str(err.value)


def test_missing_config_message_then_success(store, etcd_server, etcd_api, etcd_prefix, caplog):
    mgr = new_manager(etcd_server, etcd_api, etcd_prefix)
    result = {}
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="pyflannel.subnet")

    def run():
        try:
            result["config"] = mgr.wait_config(stop)
        except Stopped:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        time.sleep(1.5)
        expected = ("no network config at %s/config — create it with the flannel_network module or etcdctl"
                    % etcd_prefix)
        assert expected in caplog.text
        store.put(etcd_prefix + "/config", SEED_000)
        thread.join(5)
        assert str(result["config"].network) == "10.100.0.0/16"
    finally:
        stop.set()


def test_reuse_with_longer_ttl_gets_it(store, etcd_server, etcd_api, etcd_prefix):
    """A lease written with a short TTL (an earlier run's override) gets the new, longer TTL on reuse;
    on v3 the key moves to a new etcd lease and the old one is revoked, not leaked."""
    store.put(etcd_prefix + "/config", BIG)
    short = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=3).acquire(attrs("127.0.0.61"))
    mgr = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=120)
    lease = mgr.acquire(attrs("127.0.0.61"))
    assert lease.subnet == short.subnet
    time.sleep(4)  # past the short TTL
    assert key_ttl(store, mgr.key_of(lease.subnet)) > 100
    if etcd_api == "v3":
        assert store.get(mgr.key_of(lease.subnet)).lease_id != short.lease_id
        resp = store._post("/kv/lease/timetolive", {"ID": short.lease_id}, "test")
        assert int(resp.get("TTL", -1)) == -1  # revoked


DUAL = '{"Network":"10.100.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:100::/48","Backend":{"Type":"alloc"}}'


def attrs6(ip):
    return LeaseAttrs(ip, "", public_ipv6="fd00:100::%s" % ip.rsplit(".", 1)[1])


def rival_key(prefix, lease, n):
    """A key with our IPv4 subnet and another IPv6 subnet (fc00:100:0:<n>::/64): another node's lease."""
    return "%s/subnets/%s-24&fc00:100:0:%x::-64" % (prefix, lease.subnet.network_address, n)


def interleaved(etcd_server, etcd_api):
    """A real store of the API under test that runs its ``hook()`` once, when set, just before its next
    create: another node writing between our checks and our write (no mock: both writes reach etcd)."""
    store = etcdstore.connect(etcd_server.url, api=etcd_api)

    class Store(type(store)):
        def create(self, key, value, ttl=None, **kwargs):
            hook, self.hook = getattr(self, "hook", None), None
            if hook is not None:
                hook()
            return super().create(key, value, ttl, **kwargs)  # kwargs: v3's PublicIP index entry

    store.__class__ = Store
    store.hook = None
    return store


def test_write_back_gives_way_to_a_lease_written_at_the_same_time(store, etcd_server, etcd_api, etcd_prefix):
    """Dual stack: our key is gone; while we write it back, another node creates our IPv4 subnet with
    another IPv6 subnet (another key), just before us: it is older, so ours is deleted again."""
    store.put(etcd_prefix + "/config", DUAL)
    theirs = {}

    def other_node():
        theirs["key"] = rival_key(etcd_prefix, mgr.lease, 0x99)
        assert store.create(theirs["key"], encode_lease(attrs6("127.0.0.98"), etcd_api), ttl=60) is not None

    mgr = LeaseManager(interleaved(etcd_server, etcd_api), etcd_prefix, ttl=60)
    own = mgr.acquire(attrs6("127.0.0.71"))
    key = mgr.key_of(own.subnet, own.ipv6_subnet)
    store.delete(key)
    mgr.store.hook = other_node
    with pytest.raises(LeaseLost) as err:
        mgr.restore("our lease %s was missing from etcd" % own.label)
    text = str(err.value)
    assert "127.0.0.98 wrote the older lease %s fc00:100:0:99::/64" % own.subnet in text and "ours is deleted" in text
    assert "\n" not in text
    assert store.get(key) is None and store.get(theirs["key"]) is not None


def test_write_back_gives_way_to_a_lease_that_took_a_subnet_meanwhile(store, etcd_server, etcd_api, etcd_prefix):
    store.put(etcd_prefix + "/config", DUAL)
    mgr = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=60)
    own = mgr.acquire(attrs6("127.0.0.72"))
    key = mgr.key_of(own.subnet, own.ipv6_subnet)
    store.delete(key)  # expired while we were cut off
    taken = rival_key(etcd_prefix, own, 0x98)
    store.create(taken, encode_lease(attrs6("127.0.0.97"), etcd_api), ttl=60)
    with pytest.raises(LeaseLost) as err:
        mgr.renew()
    assert str(err.value) == (
        "our lease %s was gone from etcd when we renewed it, and 127.0.0.97 took %s meanwhile (its lease %s "
        "fc00:100:0:98::/64): the holder keeps it, this node gives way"
        % (own.label, own.subnet, own.subnet))
    assert store.get(key) is None  # never written back beside theirs
    # a single-stack key over our IPv6 subnet counts as well (any family, any key)
    store.delete(taken)
    other6 = "%s/subnets/0.0.0.0-0&%s-64" % (etcd_prefix, own.ipv6_subnet.network_address)
    store.create(other6, encode_lease(LeaseAttrs(None, "", public_ipv6="fd00:100::96"), etcd_api), ttl=60)
    with pytest.raises(LeaseLost) as err:
        mgr.restore("our lease %s was deleted or expired in etcd" % own.label)
    assert "fd00:100::96 took %s meanwhile" % own.ipv6_subnet in str(err.value)
    assert store.get(key) is None


def test_snapshot_and_restart_give_way_to_an_older_overlapping_lease(store, etcd_server, etcd_api, etcd_prefix):
    """Both leases in etcd (written back at once, or restored from a backup): on its next snapshot the
    younger node deletes its lease and gives way; restarted, it does not reuse it either."""
    store.put(etcd_prefix + "/config", DUAL)
    mgr = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=60)
    own = mgr.acquire(attrs6("127.0.0.73"))
    key = mgr.key_of(own.subnet, own.ipv6_subnet)
    gen = mgr.watch(threading.Event())
    assert next(gen).kind == "snapshot"
    store.delete(key)
    older = rival_key(etcd_prefix, own, 0x97)
    store.create(older, encode_lease(attrs6("127.0.0.96"), etcd_api), ttl=60)
    ours = store.create(key, encode_lease(attrs6("127.0.0.73"), etcd_api), ttl=60)  # younger, by another path
    assert ours is not None
    with pytest.raises(LeaseLost) as err:
        mgr.snapshot()
    assert str(err.value) == ("our lease %s overlaps the older lease %s fc00:100:0:97::/64 of 127.0.0.96 in etcd: "
                              "it keeps %s, ours is deleted, this node gives way" % (own.label, own.subnet, own.subnet))
    assert store.get(key) is None and store.get(older) is not None
    # the same node restarted while its younger lease is still there: not reused, a free subnet instead
    store.create(key, encode_lease(attrs6("127.0.0.73"), etcd_api), ttl=60)
    again = new_manager(etcd_server, etcd_api, etcd_prefix, ttl=60).acquire(attrs6("127.0.0.73"))
    assert again.subnet != own.subnet and again.ipv6_subnet != ipaddress.IPv6Network("fc00:100:0:97::/64")
    assert store.get(key) is None


def test_update_rewrites_only_the_key_as_it_was_read(store, etcd_api, etcd_prefix):
    """The facade's update is conditional: a key deleted and created anew by another writer after we read it
    (v3: another create revision), or written by another writer meanwhile (v2: another modified index), is
    left alone (None), never overwritten; the key as read is rewritten."""
    key = etcd_prefix + "/subnets/10.77.1.0-24"
    first = store.create(key, '{"PublicIP":"192.0.2.1"}', 60)
    assert first is not None
    store.delete(key)
    again = store.create(key, '{"PublicIP":"192.0.2.2"}', 60)
    assert again is not None
    assert store.update(first, '{"PublicIP":"192.0.2.1"}', 60) is None
    assert store.get(key).value == '{"PublicIP":"192.0.2.2"}'
    fresh = store.get(key)
    renewed = store.update(fresh, '{"PublicIP":"192.0.2.2"}', 60)
    assert renewed is not None and store.get(key).value == '{"PublicIP":"192.0.2.2"}'
