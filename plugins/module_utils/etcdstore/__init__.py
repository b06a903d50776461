# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""The one etcd facade of netfabric.flannel, for etcd v2 (python-etcd) and v3 (etcd3gw).

Shared verbatim by the Ansible modules (module_utils) and the pyflannel agent
(``pyflannel/etcdstore`` is a symlink to this package).  Python 3.8 syntax; the etcd client libraries are
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

The package: :mod:`.common` (errors, KV, Event), :mod:`.endpoints` (URLs), :mod:`.store` (the interface and
failover), :mod:`.v2` and :mod:`.v3` (the two stores); this module opens a store (:func:`connect`,
:func:`connect_for_prefix`) and re-exports every name, so that callers import from the package alone.
"""

import json
from typing import Dict, Optional, Sequence, Tuple, Type, Union

from .common import KV, BadEndpoint, Event, StateLost, StoreError, Unreachable, WatchExpired, _ConnectionProblem, _short
from .endpoints import DEFAULT_ENDPOINTS, Endpoint, parse_endpoints
from .store import EtcdStore
from .v2 import V2Store
from .v3 import V3Store
from .v3watch import _GOING_AWAY, _b64, _going_away, _prefix_end, _stream_going_away, _unb64

__all__ = [
    "DEFAULT_ENDPOINTS", "KV", "_GOING_AWAY", "BadEndpoint", "ConfigConflict", "Endpoint", "EtcdStore", "Event",
    "StateLost", "StoreError", "Unreachable", "V2Store", "V3Store", "WatchExpired", "_ConnectionProblem", "_b64",
    "_going_away", "_prefix_end", "_short", "_stream_going_away", "_unb64", "choose_api", "connect",
    "connect_for_prefix", "parse_endpoints", "same_config",
]


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
    from ..catalogue import HIDDEN, redact, secret_options

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
