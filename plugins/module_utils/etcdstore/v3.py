# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""etcd v3 through etcd3gw and its session (the JSON gateway: no protobuf).  The client libraries are imported
when a store is opened, so that importing this never fails."""

import json
import logging
import time

from .common import KV, StoreError, _ConnectionProblem, _short
from .store import EtcdStore
from .v3watch import V3Watch, _b64, _going_away, _prefix_end, _unb64

_log = logging.getLogger("pyflannel.etcdstore")


class V3Store(V3Watch, EtcdStore):
    api = "v3"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._cluster_id = None  # from the watch's first answer: a change means another cluster
        try:
            import etcd3gw
            import etcd3gw.exceptions
            import requests
        except ImportError:
            raise StoreError("etcd3gw is not installed; install it (pip install etcd3gw, or the "
                             "python3-etcd3gw package) to talk to etcd v3")
        self._gw = etcd3gw
        self._requests = requests
        self._clients = [None] * len(self.endpoints)

    def _client(self, index):
        client = self._clients[index]
        if client is None:
            ep = self.endpoints[index]
            session = self._requests.Session()
            # etcd is reached directly, never through an HTTP proxy from the environment (which would
            # also cost an environment scan on every request)
            session.trust_env = False
            adapter = self._requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=16)
            session.mount("http://", adapter)
            session.mount("https://", adapter)
            if self.ca_cert:
                # Also passed as verify= on every request: requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE
                # from the environment override session.verify, and the etcd CA given here must win.
                session.verify = self.ca_cert
            if self.client_cert:
                session.cert = (self.client_cert, self.client_key)
            client = self._gw.client(host=ep.host, port=ep.port, protocol=ep.scheme, session=session,
                                     timeout=self.timeout, api_path="/v3/")
            self._clients[index] = client
            if self.username:
                self._authenticate(index, client)
        return client

    def _authenticate(self, index, client):
        try:
            resp = client.session.post(client.get_url("/auth/authenticate"),
                                       json={"name": self.username, "password": self.password or ""},
                                       timeout=self.timeout, verify=self.ca_cert or None)
        except self._requests.exceptions.RequestException as err:
            raise _ConnectionProblem(_short(err))
        if resp.status_code != 200:
            if "authentication is not enabled" in resp.text:
                # etcd without auth takes every request without a token (Go's clientv3 goes on the same way);
                # a login set up before auth is switched on in etcd must not stop the agent
                _log.debug("etcd at %s has authentication off: going on without a token", client.get_url(""))
                return
            raise StoreError("etcd refused the login of user %r: %s; check --etcd-username/--etcd-password"
                             % (self.username, resp.text.strip()[:200]))
        token = resp.json().get("token")
        client.session.headers["Authorization"] = token

    def _post(self, path, payload, what):
        """POST to the gateway with failover; returns the decoded JSON answer."""
        requests = self._requests

        def op(index):
            client = self._client(index)
            for attempt in (1, 2):
                try:
                    resp = client.session.post(client.get_url(path), data=json.dumps(payload),
                                               timeout=self.timeout, verify=self.ca_cert or None)
                except requests.exceptions.RequestException as err:
                    raise _ConnectionProblem(_short(err))
                if resp.status_code == 200:
                    return resp.json()
                text = resp.text.strip()
                if resp.status_code in (401, 403) or "invalid auth token" in text or "token" in text.lower():
                    if self.username and attempt == 1:
                        self._authenticate(index, client)
                        continue
                    raise StoreError("etcd refused %s: %s; check --etcd-username/--etcd-password" % (what, text[:200]))
                if resp.status_code == 404:
                    raise StoreError("etcd at %s does not serve the v3 gateway (%s); use etcd 3.4 or newer or "
                                     "the v2 API" % (self.endpoints[index].url, text[:100]))
                if (resp.status_code >= 500 and "leader" in text.lower()) or _going_away(resp.status_code, text):
                    raise _ConnectionProblem(text[:200])
                raise StoreError("etcd failed %s: HTTP %d %s" % (what, resp.status_code, text[:200]))
            return None

        return self._attempt(op, what)

    @staticmethod
    def _kv_from(item):
        lease = int(item.get("lease", 0) or 0)
        return KV(_unb64(item.get("key")), _unb64(item.get("value")), int(item.get("mod_revision", 0) or 0),
                  has_ttl=lease != 0, lease_id=lease, created=int(item.get("create_revision", 0) or 0))

    def get(self, key):
        return self.head(key)[0]

    def head(self, key):
        resp = self._post("/kv/range", {"key": _b64(key)}, "reading %s" % key)
        kvs = resp.get("kvs") or []
        revision = int(resp.get("header", {}).get("revision", 0) or 0)
        return (self._kv_from(kvs[0]) if kvs else None), revision

    def list(self, prefix, serializable=False):
        request = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}
        if serializable:
            request["serializable"] = True
        resp = self._post("/kv/range", request, "listing %s" % prefix)
        revision = int(resp.get("header", {}).get("revision", 0) or 0)
        return [self._kv_from(item) for item in resp.get("kvs") or []], revision

    def put(self, key, value):
        resp = self._post("/kv/put", {"key": _b64(key), "value": _b64(value)}, "writing %s" % key)
        revision = int(resp.get("header", {}).get("revision", 0) or 0)
        return KV(key, value, revision)

    def _grant(self, ttl, what):
        resp = self._post("/lease/grant", {"TTL": int(ttl), "ID": 0}, what)
        return int(resp["ID"])

    def _revoke(self, lease_id):
        try:
            self._post("/kv/lease/revoke", {"ID": lease_id}, "revoking lease %x" % lease_id)
        except StoreError as err:
            if "not found" not in str(err):
                raise

    def _txn_put(self, key, value, lease_id, compare, also=None):
        """Write ``key`` (and every key of ``also``, on the same etcd lease) if every compare holds;
        ``compare``: one compare or a list of them."""
        puts = []
        for name, text in [(key, value)] + sorted((also or {}).items()):
            put = {"key": _b64(name), "value": _b64(text)}
            if lease_id:
                put["lease"] = lease_id
            puts.append({"request_put": put})
        compares = compare if isinstance(compare, list) else [compare]
        txn = {"compare": compares, "success": puts, "failure": []}
        resp = self._post("/kv/txn", txn, "writing %s" % key)
        revision = int(resp.get("header", {}).get("revision", 0) or 0)
        return bool(resp.get("succeeded")), revision

    # -- bounded reads and claims (the lease manager's O(1) join) -----------------------------------
    def read_ranges(self, ranges, counts=(), serializable=True):
        """Several reads from one revision in one request (a read-only transaction).

        ``ranges``: ``(key, range_end)`` pairs (``range_end`` None: the one key); ``counts``: prefixes whose
        number of keys is wanted (etcd counts them, nothing is sent back).  Returns (a list of KV per range,
        a count per prefix, the revision)."""
        ops = []
        for key, end in ranges:
            req = {"key": _b64(key)}
            if end:
                req["range_end"] = _b64(end)
            if serializable:
                req["serializable"] = True
            ops.append({"request_range": req})
        for prefix in counts:
            req = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)), "count_only": True}
            if serializable:
                req["serializable"] = True
            ops.append({"request_range": req})
        resp = self._post("/kv/txn", {"compare": [], "success": ops, "failure": []},
                          "reading %d ranges" % len(ops))
        answers = [item.get("response_range") or {} for item in resp.get("responses") or []]
        answers += [{}] * (len(ops) - len(answers))
        kvs = [[self._kv_from(item) for item in answer.get("kvs") or []] for answer in answers[:len(ranges)]]
        numbers = [int(answer.get("count", 0) or 0) for answer in answers[len(ranges):]]
        return kvs, numbers, int(resp.get("header", {}).get("revision", 0) or 0)

    def lookup(self, key, counts=(), serializable=True):
        """``key`` (a KV or None) and, only when it is absent, the number of keys under each of ``counts``
        (None when present), with the revision: one read-only transaction, etcd counts nothing for a hit."""
        def ranges(with_counts):
            ops = [{"request_range": dict({"key": _b64(key)}, **({"serializable": True} if serializable else {}))}]
            for prefix in counts if with_counts else ():
                req = {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)), "count_only": True}
                if serializable:
                    req["serializable"] = True
                ops.append({"request_range": req})
            return ops

        txn = {"compare": [{"key": _b64(key), "target": "VERSION", "result": "GREATER", "version": 0}],
               "success": ranges(False), "failure": ranges(True)}
        resp = self._post("/kv/txn", txn, "reading %s" % key)
        answers = [item.get("response_range") or {} for item in resp.get("responses") or []]
        revision = int(resp.get("header", {}).get("revision", 0) or 0)
        kvs = (answers[0].get("kvs") or []) if answers else []
        if resp.get("succeeded") and kvs:
            return self._kv_from(kvs[0]), None, revision
        answers += [{}] * (1 + len(counts) - len(answers))
        return None, [int(answer.get("count", 0) or 0) for answer in answers[1:1 + len(counts)]], revision

    def claim(self, key, value, ttl=None, empty=(), also=None):
        """Create ``key`` only if no key exists in any of the ``empty`` ranges (``(key, range_end)`` pairs,
        ``range_end`` None: that one key) nor at ``key`` itself: one transaction, so nothing can slip in
        between the check and the write.  ``also``: more keys written with it, on the same etcd lease.
        Returns the KV, or None when a key was in the way."""
        compares = [{"key": _b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}]
        for start, end in empty:
            cmp = {"key": _b64(start), "target": "CREATE", "result": "EQUAL", "create_revision": 0}
            if end:
                cmp["range_end"] = _b64(end)
            compares.append(cmp)
        return self._create(key, value, ttl, compares, also)

    def delete_if(self, key, value):
        """Delete ``key`` only while it still holds ``value``; True if it was deleted."""
        txn = {"compare": [{"key": _b64(key), "target": "VALUE", "result": "EQUAL", "value": _b64(value)}],
               "success": [{"request_delete_range": {"key": _b64(key)}}], "failure": []}
        resp = self._post("/kv/txn", txn, "deleting %s" % key)
        return bool(resp.get("succeeded"))

    def create(self, key, value, ttl=None, also=None):
        return self._create(key, value, ttl, {"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                                              "create_revision": 0}, also)

    def _create(self, key, value, ttl, compare, also):
        lease_id = self._grant(ttl, "granting a lease for %s" % key) if ttl else 0
        try:
            ok, revision = self._txn_put(key, value, lease_id, compare, also)
        except StoreError:
            if lease_id:
                self._revoke_quietly(lease_id)
            raise
        if not ok:
            if lease_id:
                self._revoke_quietly(lease_id)
            return None
        exp = time.time() + ttl if ttl else None
        return KV(key, value, revision, has_ttl=bool(ttl), expiration=exp, lease_id=lease_id, ttl=ttl,
                  created=revision)

    def _revoke_quietly(self, lease_id):
        try:
            self._revoke(lease_id)
        except StoreError:
            pass  # the lease expires on its own; nothing is attached to it

    def _keepalive(self, lease_id):
        resp = self._post("/lease/keepalive", {"ID": lease_id}, "renewing lease %x" % lease_id)
        result = resp.get("result", resp)
        return int(result.get("TTL", 0) or 0)

    def update(self, kv, value, ttl=None, also=None):
        # the very key we read (same create revision), not one created anew since with the same name
        exists = ({"key": _b64(kv.key), "target": "CREATE", "result": "EQUAL", "create_revision": kv.created}
                  if kv.created else {"key": _b64(kv.key), "target": "VERSION", "result": "GREATER", "version": 0})
        old_lease = kv.lease_id
        if ttl and old_lease:
            # Keep the key's own etcd lease alive: no new lease, nothing leaked.
            granted = self._keepalive(old_lease)
            if granted <= 0:
                return None
            if granted >= ttl:
                if kv.created and kv.value == value and self._unchanged(kv, value, old_lease, also):
                    # Nothing to write: no put, so no watch event for every node of the network (renewals
                    # every 23 h and restarts with the same attributes cost etcd no fan-out).
                    return KV(kv.key, value, kv.revision, has_ttl=True, expiration=time.time() + ttl,
                              lease_id=old_lease, ttl=ttl, created=kv.created)
                ok, revision = self._txn_put(kv.key, value, old_lease, exists, also)
                if not ok:
                    return None
                return KV(kv.key, value, revision, has_ttl=True, expiration=time.time() + ttl,
                          lease_id=old_lease, ttl=ttl, created=kv.created)
            # The key's etcd lease was granted a shorter TTL (an earlier run with another TTL):
            # move the key to a new lease below, which revokes the old one.
        new_lease = self._grant(ttl, "granting a lease for %s" % kv.key) if ttl else 0
        try:
            ok, revision = self._txn_put(kv.key, value, new_lease, exists, also)
        except StoreError:
            if new_lease:
                self._revoke_quietly(new_lease)
            raise
        if not ok:
            if new_lease:
                self._revoke_quietly(new_lease)
            return None
        if old_lease:
            self._revoke_quietly(old_lease)  # the key moved off it (became a reservation)
        exp = time.time() + ttl if ttl else None
        return KV(kv.key, value, revision, has_ttl=bool(ttl), expiration=exp, lease_id=new_lease, ttl=ttl,
                  created=kv.created)

    def _unchanged(self, kv, value, lease_id, also):
        """Whether ``kv`` (and every key of ``also``) holds ``value`` on etcd lease ``lease_id``, created at
        ``kv.created``: one read-only transaction (no write, no event)."""
        compares = [{"key": _b64(kv.key), "target": "CREATE", "result": "EQUAL", "create_revision": kv.created}]
        for name, text in [(kv.key, value)] + sorted((also or {}).items()):
            compares.append({"key": _b64(name), "target": "VALUE", "result": "EQUAL", "value": _b64(text)})
            compares.append({"key": _b64(name), "target": "LEASE", "result": "EQUAL", "lease": lease_id})
        resp = self._post("/kv/txn", {"compare": compares, "success": [], "failure": []}, "reading %s" % kv.key)
        return bool(resp.get("succeeded"))

    def delete(self, key):
        resp = self._post("/kv/deleterange", {"key": _b64(key)}, "deleting %s" % key)
        return int(resp.get("deleted", 0) or 0) > 0

    def remaining_ttl(self, kv):
        if not kv.lease_id:
            return None
        resp = self._post("/kv/lease/timetolive", {"ID": kv.lease_id}, "reading lease %x" % kv.lease_id)
        ttl = int(resp.get("TTL", -1) or -1)
        return float(max(ttl, 0))
