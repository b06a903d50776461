# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""etcd v2 through python-etcd (imported when a store is opened, so that importing this never fails)."""

import time

from .common import KV, Event, StoreError, WatchExpired, _ConnectionProblem, _short
from .store import EtcdStore


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
