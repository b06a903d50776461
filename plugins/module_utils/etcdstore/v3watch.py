# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""The v3 store's watch stream (a mixin of V3Store) and the encodings both share: base64 keys and values, the end
of a prefix range, the answers that mean an endpoint is going away."""

import base64
import binascii
import functools
import json
import logging
import socket
from typing import Any, Dict, Iterator, List

from .common import Event, StateLost, StoreError, WatchExpired, _ConnectionProblem, _short

_log = logging.getLogger("pyflannel.etcdstore")


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


class V3Watch:
    """watch() of the v3 store: one stream of the keys under a prefix, resumed after the last revision seen."""

    def watch(self, prefix, after_revision, idle=10.0):
        requests = self._requests
        revision = int(after_revision)
        while True:
            resp = self._attempt(functools.partial(self._open_watch, prefix, revision, idle), "watching %s" % prefix)
            try:
                for events in self._watch_batches(resp, prefix, revision):
                    revision = max([revision] + [ev.revision for ev in events])
                    yield events
            except (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    socket.timeout):
                # idle read timeout or a dropped stream: report idleness, then resume from `revision`
                yield []
            finally:
                resp.close()

    def _open_watch(self, prefix: str, revision: int, idle: float, index: int) -> Any:
        """Open a watch stream of the keys under ``prefix`` after ``revision`` on endpoint ``index`` (the
        failover's ``op``); ``idle``: the read timeout of the stream."""
        requests = self._requests
        create = {"create_request": {"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)),
                                     "start_revision": revision + 1}}
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
            raise StoreError("etcd refused the watch on %s: HTTP %d %s" % (prefix, resp.status_code, text[:200]))
        return resp

    def _watch_batches(self, resp: Any, prefix: str, revision: int) -> Iterator[List[Event]]:
        """The events of each message of the open watch stream ``resp`` (one list per message that has any)."""
        for line in resp.iter_lines(chunk_size=None):
            if not line or not line.strip():
                continue
            result = self._watch_result(json.loads(line.decode("utf-8")), prefix, revision)
            events = [_event(ev) for ev in result.get("events") or []]
            for ev in events:
                revision = max(revision, ev.revision)
            if events:
                yield events

    def _watch_result(self, msg: Dict[str, Any], prefix: str, revision: int) -> Dict[str, Any]:
        """The ``result`` of one watch message; raises for an error, a compaction past ``revision``, a cancel,
        and (on the stream's first answer) an etcd that was replaced or went back in time."""
        if "error" in msg and "result" not in msg:
            if _stream_going_away(msg["error"] or {}):
                raise self._requests.exceptions.ConnectionError("etcd closed the watch stream")
            raise StoreError("etcd watch failed: %s" % json.dumps(msg["error"])[:200])
        result = msg.get("result", {})
        if result.get("created"):
            self._check_created(result.get("header", {}), revision)
        if int(result.get("compact_revision", 0) or 0) > 0:
            raise WatchExpired("etcd v3 history was compacted up to revision %s" % result["compact_revision"])
        if result.get("canceled"):
            raise StoreError("etcd cancelled the watch on %s: %s"
                             % (prefix, result.get("cancel_reason", "no reason given")))
        return result

    def _check_created(self, header: Dict[str, Any], revision: int) -> None:
        """StateLost when the watch's first answer shows another cluster, or a revision behind ``revision``."""
        current = int(header.get("revision", 0) or 0)
        cluster = header.get("cluster_id")
        known, self._cluster_id = self._cluster_id, cluster or self._cluster_id
        if known and cluster and cluster != known:
            raise StateLost("etcd's cluster id changed from %s to %s: it was replaced or restored" % (known, cluster))
        if 0 < current < revision:
            raise StateLost("etcd is at revision %d, behind revision %d already seen: its data was wiped or restored"
                            % (current, revision))


def _event(ev: Dict[str, Any]) -> Event:
    """One event of a v3 watch message as an :class:`Event`."""
    kv = ev.get("kv", {})
    rev = int(kv.get("mod_revision", 0) or 0)
    if ev.get("type") == "DELETE":
        return Event("delete", _unb64(kv.get("key")), None, rev)
    return Event("put", _unb64(kv.get("key")), _unb64(kv.get("value")), rev,
                 has_ttl=bool(int(kv.get("lease", 0) or 0)), created=int(kv.get("create_revision", 0) or 0))


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
