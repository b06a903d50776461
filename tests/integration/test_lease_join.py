"""The O(1) join on etcd v3 (pyflannel.subnet.claim) against a real etcd: a join and a restart never list
the leases, the claim's one transaction refuses every subnet a key overlaps (hostile keys included), a
nearly full pool still ends in an exact out-of-subnets, and leases without a PublicIP index entry are still
found by PublicIP (the full list decides)."""

from __future__ import annotations

import ipaddress
import threading

import pytest

from pyflannel import etcdstore
from pyflannel.leases import LeaseAttrs, encode_lease
from pyflannel.subnet import LeaseManager, OutOfSubnets
from pyflannel.subnet.claim import index_dir, overlap_ranges

BIG = '{"Network":"10.100.0.0/16","Backend":{"Type":"alloc"}}'
SMALL = ('{"Network":"10.100.0.0/16","SubnetMin":"10.100.10.0","SubnetMax":"10.100.13.0",'
         '"Backend":{"Type":"alloc"}}')


@pytest.fixture
def store(etcd_server):
    return etcdstore.connect(etcd_server.url, api="v3")


class Counting:
    """Counts the store's full lists (wraps ``list``)."""

    def __init__(self, store):
        self.lists = 0
        inner = store.list

        def counted(*args, **kwargs):
            self.lists += 1
            return inner(*args, **kwargs)

        store.list = counted


def manager(etcd_server, prefix, **kwargs):
    return LeaseManager(etcdstore.connect(etcd_server.url, api="v3"), prefix, **kwargs)


def test_join_and_restarts_never_list(store, etcd_server, etcd_prefix, tmp_path):
    store.put(etcd_prefix + "/config", BIG)
    first = manager(etcd_server, etcd_prefix, ttl=60)
    counter = Counting(first.store)
    lease = first.acquire(LeaseAttrs("127.0.1.1", ""))
    assert counter.lists == 0
    assert store.get(index_dir(etcd_prefix) + "127.0.1.1").value == lease.key_name
    # restart with the subnet file
    env = tmp_path / "subnet.env"
    env.write_text("FLANNEL_SUBNET=%s\n" % lease.subnet)
    again = manager(etcd_server, etcd_prefix, ttl=60, subnet_file=str(env))
    counter = Counting(again.store)
    assert again.acquire(LeaseAttrs("127.0.1.1", "host-gw")).subnet == lease.subnet
    assert counter.lists == 0
    assert '"BackendType":"host-gw"' in store.get(again.key_of(lease.subnet)).value
    # restart without it: the PublicIP index
    third = manager(etcd_server, etcd_prefix, ttl=60)
    counter = Counting(third.store)
    assert third.acquire(LeaseAttrs("127.0.1.1", "")).subnet == lease.subnet
    assert counter.lists == 0
    kvs, _revision = store.list(etcd_prefix + "/subnets/")
    assert len(kvs) == 1
    # released: the index entry goes with the lease
    third.release()
    assert store.get(index_dir(etcd_prefix) + "127.0.1.1") is None


def test_index_entry_expires_with_the_lease(store, etcd_server, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    lease = manager(etcd_server, etcd_prefix, ttl=60).acquire(LeaseAttrs("127.0.1.2", ""))
    kv = store.get(etcd_prefix + "/subnets/" + lease.key_name)
    index = store.get(index_dir(etcd_prefix) + "127.0.1.2")
    assert kv.lease_id and index.lease_id == kv.lease_id


def test_lease_without_index_entry_is_found_by_public_ip(store, etcd_server, etcd_prefix):
    """Written by Go flanneld, an older pyflannel or etcdctl: the numbers differ, the full list finds it."""
    store.put(etcd_prefix + "/config", BIG)
    key = etcd_prefix + "/subnets/10.100.42.0-24"
    store.create(key, encode_lease(LeaseAttrs("127.0.1.3", ""), "v3"), ttl=60)
    mgr = manager(etcd_server, etcd_prefix, ttl=60)
    assert mgr.acquire(LeaseAttrs("127.0.1.3", "")).subnet == ipaddress.IPv4Network("10.100.42.0/24")
    # and it is indexed from now on
    assert store.get(index_dir(etcd_prefix) + "127.0.1.3").value == "10.100.42.0-24"


def test_stale_index_entry_is_not_trusted(store, etcd_server, etcd_prefix):
    store.put(etcd_prefix + "/config", BIG)
    lease = manager(etcd_server, etcd_prefix, ttl=60).acquire(LeaseAttrs("127.0.1.4", ""))
    # another node's lease now sits under the name our index entry gives
    store.delete(etcd_prefix + "/subnets/" + lease.key_name)
    store.create(etcd_prefix + "/subnets/" + lease.key_name, encode_lease(LeaseAttrs("127.0.1.5", ""), "v3"), ttl=60)
    mine = manager(etcd_server, etcd_prefix, ttl=60).acquire(LeaseAttrs("127.0.1.4", ""))
    assert mine.subnet != lease.subnet
    assert store.get(index_dir(etcd_prefix) + "127.0.1.4").value == mine.key_name


def test_claim_refuses_every_overlapping_key(store, etcd_prefix):
    subnets = etcd_prefix + "/subnets/"
    hostile = ["10.100.0.0-20", "10.100.64.128-25", "10.100.128.0-17&fc00::-64", "10.100.200.7-32"]
    for name in hostile:
        store.put(subnets + name, "not a lease")
    for cidr in ["10.100.1.0/24", "10.100.15.0/24", "10.100.64.0/24", "10.100.130.0/24", "10.100.200.0/24",
                 "10.100.0.0/16", "10.0.0.0/8"]:
        subnet = ipaddress.IPv4Network(cidr)
        ranges = overlap_ranges(subnets, subnet)
        name = "%s-%d" % (subnet.network_address, subnet.prefixlen)
        assert store.claim(subnets + name, "x", 60, ranges) is None, cidr
    for cidr in ["10.100.16.0/24", "10.100.65.0/24", "10.100.127.0/24", "10.100.100.0/24"]:
        subnet = ipaddress.IPv4Network(cidr)
        name = "%s-%d" % (subnet.network_address, subnet.prefixlen)
        kv = store.claim(subnets + name, "x", 60, overlap_ranges(subnets, subnet), also={subnets + "../idx": name})
        assert kv is not None and kv.has_ttl, cidr
        assert store.claim(subnets + name, "x", 60, overlap_ranges(subnets, subnet)) is None  # taken now


def test_nearly_full_pool_is_out_of_subnets_exactly(store, etcd_server, etcd_prefix):
    """Four subnets, four nodes by random claims (falling back to the list when claims keep missing), then
    the fifth is told out of subnets; concurrent joins never share a subnet."""
    store.put(etcd_prefix + "/config", SMALL)
    got = []
    errors = []

    def join(i):
        try:
            got.append(manager(etcd_server, etcd_prefix, ttl=60).acquire(LeaseAttrs("127.0.2.%d" % i, "")).subnet)
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=join, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(str(s) for s in got) == ["10.100.%d.0/24" % i for i in (10, 11, 12, 13)]
    fifth = manager(etcd_server, etcd_prefix, ttl=60)
    config = fifth.wait_config()
    with pytest.raises(OutOfSubnets):
        fifth.try_acquire(config, LeaseAttrs("127.0.2.9", ""))


def test_unchanged_renewal_writes_nothing(store, etcd_server, etcd_prefix):
    """A renewal (or a restart) with the same attributes keeps the etcd lease alive and writes nothing: no
    watch event goes out to every node of the network; changed attributes are written."""
    store.put(etcd_prefix + "/config", BIG)
    mgr = manager(etcd_server, etcd_prefix, ttl=60)
    lease = mgr.acquire(LeaseAttrs("127.0.1.6", ""))
    key = etcd_prefix + "/subnets/" + lease.key_name
    _kv, before = store.head(key)
    mgr.renew()
    kv, after = store.head(key)
    assert after == before and mgr.stats["renewals"] == 1
    assert store.remaining_ttl(kv) > 58
    again = manager(etcd_server, etcd_prefix, ttl=60)
    assert again.acquire(LeaseAttrs("127.0.1.6", "vxlan")).subnet == lease.subnet
    kv, later = store.head(key)
    assert later > after and '"BackendType":"vxlan"' in kv.value
