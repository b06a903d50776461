# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""The one etcd facade of netfabric.flannel, for etcd v2 (python-etcd) and v3 (etcd3gw).

Shared verbatim by the Ansible modules (module_utils) and the pyflannel agent
(``pyflannel/etcdstore.py`` is a symlink to it).  Python 3.8 syntax; the etcd client libraries are
imported lazily so that importing this file never fails.

Both stores offer the same small set of operations, with TTLs expressed the way flannel uses them:

* ``get``/``list``: keys with their value, revision and whether they carry a TTL;
* ``put``: plain write without TTL (the network config);
* ``create``: atomic create-if-absent, optionally with a TTL (v2 ``prevExist=false``; v3 a granted
  lease and a transaction on ``create_revision == 0``);
* ``update``: rewrite a key that must still exist, refreshing its TTL (v2 ``prevExist=true``;
  v3 keep-alive of the key's own etcd lease, so no etcd lease is ever leaked), or turning it into a
  TTL-less key (a reservation);
* ``delete``, ``remaining_ttl``;
* ``watch``: batches of put/delete events after a revision; raises :class:`WatchExpired` when the
  history was compacted (v3) or cleared (v2) so the caller re-lists.

Endpoints are tried in order; a connection failure moves on to the next one (failover).
"""

import base64
import binascii
import json
import logging
import socket
import threading
import time
from typing import Dict, Optional, Sequence, Tuple, Type, Union
from urllib.parse import urlsplit

DEFAULT_ENDPOINTS = ("http://127.0.0.1:4001", "http://127.0.0.1:2379")

_log = logging.getLogger("pyflannel.etcdstore")


class StoreError(Exception):
    """Anything that went wrong talking to etcd; ``str()`` is one line for a person."""


class Unreachable(StoreError):
    """No endpoint answered."""


class WatchExpired(StoreError):
    """The revision to watch from is no longer in etcd's history: list again."""


class StateLost(WatchExpired):
    """etcd's revision is behind one already seen: its data was wiped or restored from a backup."""


class KV:
    """One key as read from etcd.

    ``has_ttl``: the key expires (v2 TTL, v3 attached lease).  ``expiration``: Unix time when known
    (v2 always; v3 only after :meth:`EtcdStore.remaining_ttl`).  ``lease_id``: the v3 lease, 0 if none.
    ``revision``: the key's last modification; ``created``: its creation (v2 createdIndex, v3
    create_revision; 0 when the answer did not say).
    """

    __slots__ = ("key", "value", "revision", "has_ttl", "expiration", "lease_id", "ttl", "created")

    def __init__(self, key, value, revision, has_ttl=False, expiration=None, lease_id=0, ttl=None, created=0):
        self.key = key
        self.value = value
        self.revision = revision
        self.created = created or 0
        self.has_ttl = has_ttl
        self.expiration = expiration
        self.lease_id = lease_id
        self.ttl = ttl  # the TTL the key was written with, when known

    def __repr__(self):
        return "KV(%r, rev=%s, ttl=%s)" % (self.key, self.revision, self.has_ttl)


class Event:
    """A change under a watched prefix: ``kind`` is "put" or "delete"; ``value`` is None on delete."""

    __slots__ = ("kind", "key", "value", "revision", "has_ttl", "created")

    def __init__(self, kind, key, value, revision, has_ttl=False, created=0):
        self.kind = kind
        self.key = key
        self.value = value
        self.revision = revision
        self.has_ttl = has_ttl
        self.created = created or 0

    def __repr__(self):
        return "Event(%s %r @%s)" % (self.kind, self.key, self.revision)


class BadEndpoint(StoreError, ValueError):
    """An etcd endpoint that is not a URL like http://10.0.0.1:2379; ``str()`` is one line."""


class Endpoint:
    """One etcd endpoint: ``scheme`` (http/https), ``host`` (IPv6 without brackets), ``port``, ``url``.

    Raises :class:`BadEndpoint` for anything else: no scheme, another scheme, no host, a bad or
    out-of-range port, a path, an unclosed ``[``."""

    def __init__(self, url):
        raw = url.strip()
        hint = "; use a URL like http://10.0.0.1:2379 or https://[fd00::1]:2379 (fix --etcd-endpoints)"
        if "://" not in raw:
            raise BadEndpoint("etcd endpoint %r is not a URL: it lacks http:// or https://%s" % (url, hint))
        try:
            parts = urlsplit(raw)
            host = parts.hostname
        except ValueError as err:
            raise BadEndpoint("etcd endpoint %r is not a URL (%s)%s" % (url, err, hint))
        if parts.scheme not in ("http", "https"):
            raise BadEndpoint("etcd endpoint %r has scheme %r, not http or https%s" % (url, parts.scheme, hint))
        netloc = parts.netloc.rpartition("@")[2]
        if not host or netloc.startswith("[") != ("]" in netloc):
            raise BadEndpoint("etcd endpoint %r has no valid host%s" % (url, hint))
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise BadEndpoint("etcd endpoint %r has a path; give only scheme, host and port%s" % (url, hint))
        port_text = netloc.rpartition("]")[2] if netloc.startswith("[") else netloc
        port_text = port_text.rpartition(":")[2] if ":" in port_text else ""
        if port_text or netloc.endswith(":"):
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise BadEndpoint("etcd endpoint %r has a bad port %r (must be 1..65535)%s" % (url, port_text, hint))
            port = int(port_text)
        else:
            port = 2379
        if ":" in host and not netloc.startswith("["):
            raise BadEndpoint("etcd endpoint %r: an IPv6 host must be in brackets%s" % (url, hint))
        self.scheme = parts.scheme
        self.host = host
        self.port = port
        self.url = "%s://%s:%d" % (self.scheme, self.host if ":" not in self.host else "[%s]" % self.host, self.port)

    def __repr__(self):
        return self.url


def parse_endpoints(endpoints):
    """A comma-separated string or a list of URLs -> list of :class:`Endpoint` (BadEndpoint if one is bad)."""
    if endpoints is None:
        endpoints = DEFAULT_ENDPOINTS
    if isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    out = [Endpoint(e) for e in endpoints if e and e.strip()]
    if not out:
        raise BadEndpoint("no etcd endpoint given; pass --etcd-endpoints http://HOST:2379")
    return out


def _prefix_end(prefix):
    """The etcd v3 range end that covers every key starting with ``prefix``."""
    raw = bytearray(prefix.encode("utf-8"))
    for i in range(len(raw) - 1, -1, -1):
        if raw[i] < 0xFF:
            raw[i] += 1
            return bytes(raw[: i + 1]).decode("utf-8", "surrogateescape")
    return "\0"


def _b64(text):
    if isinstance(text, str):
        text = text.encode("utf-8")
    return base64.b64encode(text).decode("ascii")


def _unb64(text):
    # binascii directly: a list of a thousand leases decodes two thousand of these
    return binascii.a2b_base64(text).decode("utf-8", "replace") if text else ""


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


class _ConnectionProblem(Exception):
    pass


# ================================================================================================
# etcd v2 through python-etcd
# ================================================================================================
class V2Store(EtcdStore):
    api = "v2"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        try:
            import etcd  # python-etcd
        except ImportError:
            raise StoreError("python-etcd is not installed; install it (pip install python-etcd, or the "
                             "python3-etcd package) to talk to etcd v2")
        self._etcd = etcd
        self._clients = [None] * len(self.endpoints)

    def _client(self, index):
        client = self._clients[index]
        if client is None:
            ep = self.endpoints[index]
            cert = (self.client_cert, self.client_key) if self.client_cert else None
            kwargs = dict(host=ep.host, port=ep.port, protocol=ep.scheme, read_timeout=self.timeout,
                          allow_redirect=False, cert=cert, ca_cert=self.ca_cert, per_host_pool_size=4)
            if self.username:
                kwargs.update(username=self.username, password=self.password)
            client = self._etcd.Client(**kwargs)
            self._clients[index] = client
        return client

    def _call(self, what, fn):
        etcd = self._etcd

        def op(index):
            try:
                return fn(self._client(index))
            except etcd.EtcdWatchTimedOut:
                raise
            except etcd.EtcdConnectionFailed as err:
                raise _ConnectionProblem(_short(err))
            except etcd.EtcdInsufficientPermissions as err:
                raise StoreError("etcd refused %s: %s; check --etcd-username/--etcd-password" % (what, _short(err)))
            except etcd.EtcdEventIndexCleared:
                raise
            except etcd.EtcdKeyError:
                raise
            except etcd.EtcdCompareFailed:
                raise
            except etcd.EtcdException as err:
                text = _short(err)
                if "404" in text and "page not found" in text.lower():
                    raise StoreError("etcd at %s does not serve the v2 API; start etcd with --enable-v2=true "
                                     "or use the v3 API" % self.endpoints[index].url)
                raise _ConnectionProblem(text)
        return self._attempt(op, what)

    def _kv(self, node_key, value, modified, ttl, expiration, created=0):
        exp = None
        if ttl:
            exp = time.time() + int(ttl)
        return KV(node_key, value, modified or 0, has_ttl=bool(ttl), expiration=exp, ttl=ttl, created=created)

    def get(self, key):
        return self.head(key)[0]

    def head(self, key):
        etcd = self._etcd
        try:
            res = self._call("reading %s" % key, lambda c: c.read(key))
        except etcd.EtcdKeyNotFound as err:
            index = (getattr(err, "payload", None) or {}).get("index", 0)
            return None, int(index or 0)
        kv = self._kv(res.key, res.value, res.modifiedIndex, res.ttl, res.expiration, res.createdIndex)
        return kv, int(res.etcd_index or 0)

    def list(self, prefix, serializable=False):
        etcd = self._etcd
        try:
            res = self._call("listing %s" % prefix, lambda c: c.read(prefix.rstrip("/") or "/", recursive=True))
        except etcd.EtcdKeyNotFound as err:
            index = (getattr(err, "payload", None) or {}).get("index", 0)
            return [], int(index or 0)
        out = []
        for node in res.leaves:
            if node.dir or node.key is None or node.value is None:
                continue
            out.append(self._kv(node.key, node.value, node.modifiedIndex, node.ttl, node.expiration,
                                node.createdIndex))
        return out, int(res.etcd_index or 0)

    def put(self, key, value):
        res = self._call("writing %s" % key, lambda c: c.write(key, value))
        return self._kv(res.key, res.value, res.modifiedIndex, None, None)

    def create(self, key, value, ttl=None):
        etcd = self._etcd
        try:
            res = self._call("creating %s" % key, lambda c: c.write(key, value, ttl=ttl, prevExist=False))
        except etcd.EtcdAlreadyExist:
            return None
        return self._kv(res.key, res.value, res.modifiedIndex, ttl, None, res.createdIndex)

    def update(self, kv, value, ttl=None):
        etcd = self._etcd
        # compare-and-swap on the index we read: another writer in between makes it fail, not overwrite
        cond = {"prevIndex": kv.revision} if kv.revision else {"prevExist": True}
        try:
            res = self._call("renewing %s" % kv.key,
                             lambda c: c.write(kv.key, value, ttl=ttl, **cond))
        except (etcd.EtcdKeyNotFound, etcd.EtcdCompareFailed):
            return None
        return self._kv(res.key, res.value, res.modifiedIndex, ttl, None, res.createdIndex)

    def delete(self, key):
        etcd = self._etcd
        try:
            self._call("deleting %s" % key, lambda c: c.delete(key))
        except etcd.EtcdKeyNotFound:
            return False
        return True

    def remaining_ttl(self, kv):
        fresh = self.get(kv.key)
        if fresh is None or not fresh.has_ttl:
            return None
        return max(0.0, fresh.expiration - time.time())

    def watch(self, prefix, after_revision, idle=10.0):
        etcd = self._etcd
        wait_index = int(after_revision) + 1
        path = prefix.rstrip("/") or "/"
        while True:
            try:
                res = self._call("watching %s" % prefix, lambda c, index=wait_index: c.read(
                    path, recursive=True, wait=True, waitIndex=index, timeout=idle))
            except etcd.EtcdWatchTimedOut:
                yield []
                continue
            except etcd.EtcdEventIndexCleared:
                raise WatchExpired("etcd v2 event history no longer holds index %d" % wait_index)
            except etcd.EtcdKeyNotFound:
                yield []
                continue
            wait_index = int(res.modifiedIndex) + 1
            if res.dir:
                yield []
                continue
            if res.action in ("delete", "expire", "compareAndDelete"):
                yield [Event("delete", res.key, None, int(res.modifiedIndex))]
            else:
                yield [Event("put", res.key, res.value, int(res.modifiedIndex), has_ttl=bool(res.ttl),
                             created=int(res.createdIndex or 0))]


# ================================================================================================
# etcd v3 through etcd3gw (the JSON gateway)
# ================================================================================================
class V3Store(EtcdStore):
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
        self._tokens = [None] * len(self.endpoints)

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
        self._tokens[index] = token

    def _post(self, path, payload, what):
        """POST to the gateway with failover; returns the decoded JSON answer."""
        exc = self._gw.exceptions
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

        del exc
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

    def _txn_put(self, key, value, lease_id, compare):
        put = {"key": _b64(key), "value": _b64(value)}
        if lease_id:
            put["lease"] = lease_id
        txn = {"compare": [compare], "success": [{"request_put": put}], "failure": []}
        resp = self._post("/kv/txn", txn, "writing %s" % key)
        revision = int(resp.get("header", {}).get("revision", 0) or 0)
        return bool(resp.get("succeeded")), revision

    def create(self, key, value, ttl=None):
        lease_id = self._grant(ttl, "granting a lease for %s" % key) if ttl else 0
        try:
            ok, revision = self._txn_put(key, value, lease_id,
                                         {"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                                          "create_revision": 0})
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

    def update(self, kv, value, ttl=None):
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
                ok, revision = self._txn_put(kv.key, value, old_lease, exists)
                if not ok:
                    return None
                return KV(kv.key, value, revision, has_ttl=True, expiration=time.time() + ttl,
                          lease_id=old_lease, ttl=ttl, created=kv.created)
            # The key's etcd lease was granted a shorter TTL (an earlier run with another TTL):
            # move the key to a new lease below, which revokes the old one.
        new_lease = self._grant(ttl, "granting a lease for %s" % kv.key) if ttl else 0
        try:
            ok, revision = self._txn_put(kv.key, value, new_lease, exists)
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

    def delete(self, key):
        resp = self._post("/kv/deleterange", {"key": _b64(key)}, "deleting %s" % key)
        return int(resp.get("deleted", 0) or 0) > 0

    def remaining_ttl(self, kv):
        if not kv.lease_id:
            return None
        resp = self._post("/kv/lease/timetolive", {"ID": kv.lease_id}, "reading lease %x" % kv.lease_id)
        ttl = int(resp.get("TTL", -1) or -1)
        return float(max(ttl, 0))

    def watch(self, prefix, after_revision, idle=10.0):
        requests = self._requests
        revision = int(after_revision)
        create = {"create_request": {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix))}}
        while True:
            create["create_request"]["start_revision"] = revision + 1
            holder = {}

            def op(index, holder=holder):  # pylint: disable=dangerous-default-value
                client = self._client(index)
                try:
                    resp = client.session.post(client.get_url("/watch"), data=json.dumps(create), stream=True,
                                               timeout=(self.timeout, idle), verify=self.ca_cert or None)
                except requests.exceptions.RequestException as err:
                    raise _ConnectionProblem(_short(err))
                if resp.status_code != 200:
                    text = resp.text.strip()
                    resp.close()
                    if _going_away(resp.status_code, text):
                        raise _ConnectionProblem(text[:200])
                    if resp.status_code in (401, 403) and self.username:
                        self._authenticate(index, client)
                        raise _ConnectionProblem("token expired")
                    raise StoreError("etcd refused the watch on %s: HTTP %d %s"
                                     % (prefix, resp.status_code, text[:200]))
                holder["resp"] = resp
                return resp

            resp = self._attempt(op, "watching %s" % prefix)
            try:
                for line in resp.iter_lines(chunk_size=None):
                    if not line or not line.strip():
                        continue
                    msg = json.loads(line.decode("utf-8"))
                    if "error" in msg and "result" not in msg:
                        if _stream_going_away(msg["error"] or {}):
                            raise requests.exceptions.ConnectionError("etcd closed the watch stream")
                        raise StoreError("etcd watch failed: %s" % json.dumps(msg["error"])[:200])
                    result = msg.get("result", {})
                    if result.get("created"):
                        header = result.get("header", {})
                        current = int(header.get("revision", 0) or 0)
                        cluster = header.get("cluster_id")
                        known, self._cluster_id = self._cluster_id, cluster or self._cluster_id
                        if known and cluster and cluster != known:
                            raise StateLost("etcd's cluster id changed from %s to %s: it was replaced or "
                                            "restored" % (known, cluster))
                        if 0 < current < revision:
                            raise StateLost("etcd is at revision %d, behind revision %d already seen: its data was "
                                            "wiped or restored" % (current, revision))
                    if int(result.get("compact_revision", 0) or 0) > 0:
                        raise WatchExpired("etcd v3 history was compacted up to revision %s"
                                           % result["compact_revision"])
                    if result.get("canceled"):
                        raise StoreError("etcd cancelled the watch on %s: %s"
                                         % (prefix, result.get("cancel_reason", "no reason given")))
                    events = []
                    for ev in result.get("events") or []:
                        kv = ev.get("kv", {})
                        rev = int(kv.get("mod_revision", 0) or 0)
                        if ev.get("type") == "DELETE":
                            events.append(Event("delete", _unb64(kv.get("key")), None, rev))
                        else:
                            events.append(Event("put", _unb64(kv.get("key")), _unb64(kv.get("value")), rev,
                                                has_ttl=bool(int(kv.get("lease", 0) or 0)),
                                                created=int(kv.get("create_revision", 0) or 0)))
                        revision = max(revision, rev)
                    if events:
                        yield events
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    socket.timeout):
                # idle read timeout or a dropped stream: report idleness, then resume from `revision`
                yield []
            finally:
                resp.close()


# What etcd's gateway says while its own gRPC server is stopping, starting or not listening yet.
_GOING_AWAY = ("closing", "unavailable", "connection error", "connection refused", "error while dialing")


def _going_away(status, text):
    """An answer of an etcd that is shutting down or restarting (the JSON gateway answers 503 "connection
    error ... connection refused" while the server behind it is gone): count it as not answering."""
    return status in (408, 503) and any(part in text.lower() for part in _GOING_AWAY)


def _stream_going_away(error):
    """An error inside a v3 watch stream that means etcd is going away: gRPC UNAVAILABLE, or the gateway's
    408 "grpc: the client connection is closing" when the server behind it stops."""
    if error.get("grpc_code") == 14:
        return True
    try:
        status = int(error.get("http_code", 0) or 0)
    except (TypeError, ValueError):
        return False
    return _going_away(status, str(error.get("message", "")))


def _short(err):
    text = str(err).replace("\n", " ").strip()
    return text[:300] if text else err.__class__.__name__


def connect(endpoints=None, api="auto", ca_cert=None, client_cert=None, client_key=None, username=None,
            password=None, timeout=5.0):
    """Open the store for ``api`` ("v2", "v3" or "auto": v3 when the v3 gateway answers, else v2)."""
    kwargs = dict(ca_cert=ca_cert, client_cert=client_cert, client_key=client_key, username=username,
                  password=password, timeout=timeout)
    if (client_cert and not client_key) or (client_key and not client_cert):
        raise StoreError("etcd client TLS needs both a certificate and a key (--etcd-certfile and --etcd-keyfile)")
    if api == "v2":
        return V2Store(endpoints, **kwargs)
    if api == "v3":
        return V3Store(endpoints, **kwargs)
    if api not in (None, "", "auto"):
        raise StoreError("etcd API %r is not one of v2, v3, auto" % (api,))
    v3 = V3Store(endpoints, **kwargs)
    v3.report_outages = False  # the caller reports a failed connect; outages count from here on
    try:
        v3.list("/coreos.com/network/__probe__/")
        v3.report_outages = True
        return v3
    except StoreError as err:
        if isinstance(err, Unreachable):
            raise
        v3.close()
    return V2Store(endpoints, **kwargs)


# ------------------------------------------------------------------------------------------------
# Finding the API a network lives under (the modules' api=auto)
# ------------------------------------------------------------------------------------------------
class ConfigConflict(StoreError):
    """``<prefix>/config`` exists under both etcd APIs with different content: which one holds the network
    cannot be guessed.  ``key``, ``v2_value`` and ``v3_value`` are the raw texts; ``str()`` is one line
    with secrets hidden."""

    def __init__(self, key: str, v2_value: str, v3_value: str) -> None:
        self.key = key
        self.v2_value = v2_value
        self.v3_value = v3_value
        super().__init__("%s differs between the etcd v2 and v3 APIs (v2: %s, v3: %s); pass api: v2 or api: v3 "
                         "to say which one holds the network" % (key, _shown_value(v2_value), _shown_value(v3_value)))


def _shown_value(text: str, limit: int = 200) -> str:
    """A stored network config for a one-line message: compact JSON with every secret Backend option hidden
    (the catalogue says which), a text that is not JSON whole-hidden when it names a secret option."""
    from .catalogue import HIDDEN, redact, secret_options

    try:
        shown = json.dumps(redact(json.loads(text)), separators=(",", ":"), sort_keys=True)
    except ValueError:
        if any(name in text.lower() for name in secret_options()):
            return "%s (not JSON, and it names a secret option)" % HIDDEN
        shown = "not JSON: " + json.dumps(text)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def same_config(first: str, second: str) -> bool:
    """Whether two stored config texts say the same: equal parsed JSON (key order and spacing do not count);
    texts that are not JSON must be equal byte for byte."""
    try:
        return json.loads(first) == json.loads(second)
    except ValueError:
        return first == second


def choose_api(key: str, v2_value: Optional[str], v3_value: Optional[str], v2_answers: bool = True,
               v3_answers: bool = True) -> str:
    """Which API holds the network whose config key is ``key``, from what each API said.

    ``v2_value``/``v3_value``: the text at ``key`` under that API (None: absent or the API did not answer);
    ``v2_answers``/``v3_answers``: whether the API answered at all.  Only under one API: that one.  Under both
    and the same (:func:`same_config`): v3.  Under both and different: :class:`ConfigConflict`.  Under neither:
    v3 (where new networks go), or v2 when only the v2 API answers."""
    if not v2_answers and not v3_answers:
        raise StoreError("neither etcd API answers (reading %s)" % key)
    v2_value = v2_value if v2_answers else None
    v3_value = v3_value if v3_answers else None
    if v2_value is not None and v3_value is not None:
        if same_config(v2_value, v3_value):
            return "v3"
        raise ConfigConflict(key, v2_value, v3_value)
    if v2_value is not None:
        return "v2"
    if v3_value is not None:
        return "v3"
    return "v3" if v3_answers else "v2"


def _probe(cls: Type[EtcdStore], endpoints: Union[str, Sequence[str], None], key: str,
           kwargs: Dict[str, object]) -> Tuple[Optional[EtcdStore], Optional[KV], Optional[StoreError]]:
    """Open ``cls`` and read ``key`` -> (store, KV or None, None), or (None, None, why) when this API is not
    there (its client library is missing, etcd does not serve it, etcd refuses it).  An etcd that does not
    answer at all raises :class:`Unreachable`."""
    try:
        store = cls(endpoints, **kwargs)
    except BadEndpoint:
        raise
    except StoreError as err:
        return None, None, err
    store.report_outages = False  # the caller reports a failed connect; outages count from the choice on
    try:
        kv = store.get(key)
    except Unreachable:
        store.close()
        raise
    except StoreError as err:
        store.close()
        return None, None, err
    return store, kv, None


def connect_for_prefix(prefix: str, endpoints: Union[str, Sequence[str], None] = None, ca_cert: Optional[str] = None,
                       client_cert: Optional[str] = None, client_key: Optional[str] = None,
                       username: Optional[str] = None, password: Optional[str] = None,
                       timeout: float = 5.0) -> EtcdStore:
    """Open the store of the API that holds the flannel network under ``prefix``: read ``<prefix>/config``
    under both APIs and decide with :func:`choose_api` (raises :class:`ConfigConflict` when they disagree).

    For tools that manage an existing network (the modules' ``api: auto``); :func:`connect` with
    ``api="auto"`` (v3 whenever its gateway answers) is unchanged.  Costs one read per API."""
    if (client_cert and not client_key) or (client_key and not client_cert):
        raise StoreError("etcd client TLS needs both a certificate and a key (--etcd-certfile and --etcd-keyfile)")
    kwargs = dict(ca_cert=ca_cert, client_cert=client_cert, client_key=client_key, username=username,
                  password=password, timeout=timeout)
    key = "/" + (prefix or "/coreos.com/network").strip().strip("/") + "/config"
    v3, kv3, why3 = _probe(V3Store, endpoints, key, kwargs)
    try:
        v2, kv2, why2 = _probe(V2Store, endpoints, key, kwargs)
    except StoreError:
        if v3 is not None:
            v3.close()
        raise
    stores = {"v2": v2, "v3": v3}
    try:
        if v2 is None and v3 is None:
            raise StoreError("etcd at %s serves neither API flannel uses (v3: %s; v2: %s)"
                             % (", ".join(e.url for e in parse_endpoints(endpoints)), why3, why2))
        api = choose_api(key, kv2.value if kv2 is not None else None, kv3.value if kv3 is not None else None,
                         v2_answers=v2 is not None, v3_answers=v3 is not None)
    except StoreError:
        for store in stores.values():
            if store is not None:
                store.close()
        raise
    chosen = stores.pop(api)
    for store in stores.values():
        if store is not None:
            store.close()
    chosen.report_outages = True
    return chosen
