# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""What both etcd stores offer (:class:`EtcdStore`), and failover between the endpoints, with one log line
when etcd stops answering and one when it is back."""

import logging
import threading
import time

from .common import Unreachable, _ConnectionProblem
from .endpoints import parse_endpoints

_log = logging.getLogger("pyflannel.etcdstore")


class EtcdStore:
    """What both stores offer.  Thread-safe for concurrent calls."""

    api = None

    def __init__(self, endpoints, ca_cert=None, client_cert=None, client_key=None, username=None,
                 password=None, timeout=5.0):
        self.endpoints = parse_endpoints(endpoints)
        self.ca_cert = ca_cert
        self.client_cert = client_cert
        self.client_key = client_key
        self.username = username
        self.password = password
        self.timeout = float(timeout)
        self._current = 0
        self._lock = threading.Lock()
        # outage tracking: one error line when etcd stops answering, one info line when it is back
        self.report_outages = True
        self.outage_since = None  # time.monotonic() of the first failure of the current outage

    # -- failover --------------------------------------------------------------------------------
    def _attempt(self, op, what):
        """Run ``op(endpoint_index)`` on the current endpoint, failing over on connection errors."""
        errors = []
        count = len(self.endpoints)
        start = self._current
        for step in range(count):
            index = (start + step) % count
            try:
                result = op(index)
            except _ConnectionProblem as err:
                errors.append("%s: %s" % (self.endpoints[index].url, err))
                continue
            if index != self._current:
                self._current = index
            if self.outage_since is not None:
                self._outage_ended(index)
            return result
        err = Unreachable("etcd is unreachable (%s failed on %s); check that etcd runs and that "
                          "--etcd-endpoints is right" % (what, "; ".join(errors)))
        self._outage_began(err)
        raise err

    def _outage_began(self, err):
        with self._lock:
            if self.outage_since is not None:
                return
            self.outage_since = time.monotonic()
        if self.report_outages:
            _log.error("etcd outage began: etcd is unreachable, no endpoint answers (%s); retrying in the "
                       "background, check that etcd runs and that --etcd-endpoints is right",
                       ", ".join(e.url for e in self.endpoints))
            _log.debug("%s", err)

    def _outage_ended(self, index):
        with self._lock:
            since = self.outage_since
            self.outage_since = None
        if since is not None and self.report_outages:
            _log.info("etcd outage ended: etcd is reachable again at %s; the outage lasted %.0f s",
                      self.endpoints[index].url, time.monotonic() - since)

    @property
    def endpoint(self):
        return self.endpoints[self._current]

    # -- the operations (implemented per API) -----------------------------------------------------
    def get(self, key):
        raise NotImplementedError

    def head(self, key):
        """``key`` (a KV, or None when absent) and etcd's current revision/index, in one request."""
        raise NotImplementedError

    def list(self, prefix, serializable=False):
        """All keys under ``prefix`` -> (list of KV, revision of the read).

        ``serializable=True`` lets the member answer from its own state without a quorum round
        (much cheaper under load; may lag a follower's view by a moment).  v2 reads are always so."""
        raise NotImplementedError

    def put(self, key, value):
        raise NotImplementedError

    def create(self, key, value, ttl=None):
        """Create ``key`` only if absent; returns the KV, or None if the key exists."""
        raise NotImplementedError

    def update(self, kv, value, ttl=None):
        """Rewrite an existing key with a fresh TTL (``ttl=None``: no TTL, a reservation).

        Only the key ``kv`` was read from is rewritten: returns None when it no longer exists (expired or
        deleted), and also when it was changed or created anew since (v2: its modifiedIndex moved; v3: its
        create revision differs), so a key another node made after ours expired is never overwritten."""
        raise NotImplementedError

    def delete(self, key):
        """Returns True if the key existed."""
        raise NotImplementedError

    # v3 only (the lease manager's O(1) join, pyflannel.subnet.claim; v2 lists instead):
    # ``read_ranges(ranges, counts=(), serializable=True)``: several key ranges and key counts read from one
    # revision in one request; ``lookup(key, counts)``: a key, and the counts only when it
    # is absent; ``claim(key, value, ttl, empty, also)``: create ``key`` only while no key
    # exists in any of the ``empty`` ranges, in one transaction; ``delete_if(key, value)``; and the ``also``
    # argument of ``create``/``update``: more keys written in the same transaction, on the same etcd lease.

    def remaining_ttl(self, kv):
        """Seconds until ``kv`` expires, or None if it has no TTL (costs one request on v3)."""
        raise NotImplementedError

    def watch(self, prefix, after_revision, idle=10.0):
        """Yield lists of :class:`Event` newer than ``after_revision``; an empty list after ``idle``
        seconds without events (so callers can check a stop flag).  Raises WatchExpired/Unreachable."""
        raise NotImplementedError

    def check(self):
        """One cheap request that proves the store answers; raises Unreachable otherwise."""
        self.list("/coreos.com/network/__probe__/")

    def close(self):
        pass
