# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""The etcd facade's errors and the two things it reads: a key (:class:`KV`) and a change (:class:`Event`)."""


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


class _ConnectionProblem(Exception):
    pass


def _short(err):
    text = str(err).replace("\n", " ").strip()
    return text[:300] if text else err.__class__.__name__
