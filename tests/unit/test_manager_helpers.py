"""Pure helpers of the lease manager (no etcd): overlap checks, back-off bounds, renew timing."""

from __future__ import annotations

import ipaddress

from pyflannel.subnet.manager import Backoff, LeaseManager, _Taken


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
