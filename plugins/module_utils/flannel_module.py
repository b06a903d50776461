# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""Glue the netfabric.flannel modules share: the etcd connection options, opening the store through
THE facade (``etcdstore.connect``, or ``etcdstore.connect_for_prefix`` for ``api: auto``) with errors turned
into one ``fail_json`` line, reading the network config through THE schema and the leases through THE lease
layout.

Nothing here talks to etcd or parses JSON on its own.
"""

from __future__ import annotations

import copy
import importlib.util
import ipaddress
import time

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.netfabric.flannel.plugins.module_utils.etcdstore import (
    EtcdStore,
    StoreError,
    connect,
    connect_for_prefix,
)
from ansible_collections.netfabric.flannel.plugins.module_utils.leases import (
    DEFAULT_PREFIX,
    Lease,
    LeaseFormatError,
    config_key,
    decode_lease,
    normalize_prefix,
    parse_subnet_key,
    subnets_dir,
)
from ansible_collections.netfabric.flannel.plugins.module_utils.netconfig import ConfigError, parse_config

# Whether the client libraries are installed, found without importing them (the facade imports only
# the one the chosen API needs, which keeps every module run faster).
HAS_PYTHON_ETCD = importlib.util.find_spec("etcd") is not None  # python-etcd, for the v2 API
HAS_ETCD3GW = importlib.util.find_spec("etcd3gw") is not None  # for the v3 API

DEFAULT_ENDPOINTS = ["http://127.0.0.1:2379"]

# The argument spec of the options documented in the netfabric.flannel.etcd doc fragment.
ETCD_ARGUMENT_SPEC = dict(
    endpoints=dict(type="list", elements="str", default=DEFAULT_ENDPOINTS),
    prefix=dict(type="str", default=DEFAULT_PREFIX),
    api=dict(type="str", choices=["v2", "v3", "auto"], default="auto"),
    ca_cert=dict(type="path"),
    client_cert=dict(type="path"),
    client_key=dict(type="path"),
    username=dict(type="str"),
    password=dict(type="str", no_log=True),
    timeout=dict(type="float", default=5.0),
)


def etcd_argument_spec(**extra: dict) -> dict:
    """The connection options plus a module's own ``extra`` options (a fresh copy each call)."""
    spec = copy.deepcopy(ETCD_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


ETCD_REQUIRED_TOGETHER = [["client_cert", "client_key"]]


def _require_library(module, api: str) -> str:
    """Fail with Ansible's usual message when the client library for ``api`` is missing.

    Returns the API to ask the facade for: ``auto`` narrows to the one API whose library is present.
    """
    if api == "v2" and not HAS_PYTHON_ETCD:
        module.fail_json(msg=missing_required_lib("python-etcd", reason="for api=v2"))
    if api == "v3" and not HAS_ETCD3GW:
        module.fail_json(msg=missing_required_lib("etcd3gw", reason="for api=v3"))
    if api == "auto":
        if not HAS_ETCD3GW and not HAS_PYTHON_ETCD:
            module.fail_json(msg=missing_required_lib("etcd3gw or python-etcd", reason="to talk to etcd"))
        if not HAS_ETCD3GW:
            return "v2"
        if not HAS_PYTHON_ETCD:
            return "v3"
    return api


def connect_store(module) -> EtcdStore:
    """Open the etcd store the module's connection options describe; fails the module with one line
    (the facade's message) when etcd cannot be reached or refuses.

    ``api: auto`` means the API where ``<prefix>/config`` is (``etcdstore.connect_for_prefix``): only under
    one API, that one; under both and the same, v3; under both and different, a failure naming both; under
    neither, v3, or v2 when only the v2 API answers. With only one client library installed, auto is that
    library's API (the other cannot be read)."""
    params = module.params
    api = _require_library(module, params["api"])
    if params["timeout"] is not None and params["timeout"] <= 0:
        module.fail_json(msg="timeout=%s: must be a positive number of seconds" % params["timeout"])
    options = dict(
        endpoints=params["endpoints"],
        ca_cert=params["ca_cert"],
        client_cert=params["client_cert"],
        client_key=params["client_key"],
        username=params["username"],
        password=params["password"],
        timeout=params["timeout"],
    )
    try:
        if api == "auto":
            return connect_for_prefix(prefix_of(module), **options)
        return connect(api=api, **options)
    except StoreError as err:
        module.fail_json(msg=one_line(err))


def one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or err.__class__.__name__


def store_call(module, fn, *args, **kwargs):
    """Call a store operation; a StoreError fails the module with its one-line message."""
    try:
        return fn(*args, **kwargs)
    except StoreError as err:
        module.fail_json(msg=one_line(err))


def prefix_of(module) -> str:
    return normalize_prefix(module.params["prefix"])


def read_config(module, store):
    """Read ``<prefix>/config`` -> (KV or None, NetworkConfig or None, ConfigError text or None)."""
    kv = store_call(module, store.get, config_key(prefix_of(module)))
    if kv is None:
        return None, None, None
    try:
        return kv, parse_config(kv.value), None
    except ConfigError as err:
        return kv, None, one_line(err)


def read_leases(module, store, with_ttl: bool = False):
    """Every lease under ``<prefix>/subnets/`` -> (list of (KV, Lease), list of skipped {key, reason}).

    ``with_ttl``: fill every lease's expiration (one extra request per lease on etcd v3; see
    :func:`fill_expiration` to do it for a few leases only).
    """
    kvs, _revision = store_call(module, store.list, subnets_dir(prefix_of(module)))
    leases = []
    skipped = []
    for kv in kvs:
        try:
            subnet, subnet6 = parse_subnet_key(kv.key)
            attrs = decode_lease(kv.value)
        except LeaseFormatError as err:
            skipped.append({"key": kv.key, "reason": one_line(err)})
            continue
        lease = Lease(subnet, attrs, expiration=kv.expiration if kv.has_ttl else None,
                      reservation=not kv.has_ttl, revision=kv.revision, lease_id=kv.lease_id,
                      ipv6_subnet=subnet6, raw=kv.value, created=kv.created)
        if with_ttl:
            fill_expiration(module, store, kv, lease)
        leases.append((kv, lease))
    leases.sort(key=lambda pair: lease_order(pair[1]))
    return leases, skipped


def lease_order(lease) -> tuple:
    """Sort key: by IPv4 subnet, then IPv6 subnet; IPv6-only leases after the others."""
    v4 = lease.subnet
    v6 = lease.ipv6_subnet
    return (v4 is None, int(v4.network_address) if v4 is not None else 0,
            int(v6.network_address) if v6 is not None else 0)


def lease_fits(config, lease, new_families=()) -> bool:
    """Whether ``lease`` is one ``config`` hands out in every family it enables (as Go flanneld decides
    whether a node may keep its lease: the IPv4 subnet in the IPv4 pool, the IPv6 subnet in the IPv6 pool).
    A family in ``new_families`` (switched on just now) may be missing from the lease."""
    for pool in config.pools():
        subnet = lease.subnet if pool.version == 4 else lease.ipv6_subnet
        if subnet is None and pool.version in new_families:
            continue
        if not pool.contains(subnet):
            return False
    return True


_EXAMPLES = {4: ("10.1.5.0/24", "192.0.2.1"), 6: ("fc00:0:0:5::/64", "2001:db8::1")}
_OTHER_OPTION = {"subnet": "ipv6_subnet", "ipv6_subnet": "subnet", "public_ip": "public_ipv6",
                 "public_ipv6": "public_ip"}


def parse_subnet(module, option: str, text: str, version: int = 4, strict: bool = True):
    """The option's CIDR of the given family (IPv4Network or IPv6Network); one fail_json line otherwise.

    ``strict``: host bits set is an error (a lease subnet) rather than masked off (a filter)."""
    name = "IPv%d" % version
    example = _EXAMPLES[version][0]
    text = str(text).strip()
    if "/" not in text:
        module.fail_json(msg="%s=%r: needs a prefix length, like %s" % (option, text, example))
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        module.fail_json(msg="%s=%r: is not an %s CIDR like %s" % (option, text, name, example))
    if net.version != version:
        other = _OTHER_OPTION.get(option)
        hint = "; use %s for an IPv%d subnet" % (other, net.version) if other else ""
        module.fail_json(msg="%s=%r: is not an %s CIDR like %s%s" % (option, text, name, example, hint))
    if strict and net.network_address != ipaddress.ip_address(text.split("/", 1)[0]):
        module.fail_json(msg="%s=%r: has host bits set; the subnet is %s" % (option, text, net))
    return net


def parse_ip(module, option: str, text: str, version: int = 4) -> str:
    """The option's address of the given family, canonical text; one fail_json line otherwise."""
    name = "IPv%d" % version
    example = _EXAMPLES[version][1]
    text = str(text).strip()
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        addr = None
    if addr is None or addr.version != version:
        other = _OTHER_OPTION.get(option)
        hint = ("; use %s for an IPv%d address" % (other, addr.version)) if addr is not None and other else ""
        module.fail_json(msg="%s=%r: is not an %s address like %s%s" % (option, text, name, example, hint))
    return str(addr)


def fill_expiration(module, store, kv, lease) -> None:
    """Set ``lease.expiration`` for a key with a TTL when the listing did not carry it (etcd v3)."""
    if kv.has_ttl and lease.expiration is None:
        remaining = store_call(module, store.remaining_ttl, kv)
        lease.expiration = None if remaining is None else time.time() + remaining


def lease_summary(kv, lease, now: float | None = None) -> dict:
    """The documented dict for one lease: Lease.as_dict() plus key, ttl and the raw value."""
    out = lease.as_dict()
    now = time.time() if now is None else now
    out["key"] = kv.key
    out["ttl"] = None if lease.expiration is None else max(0, round(lease.expiration - now))
    if lease.expiration is not None:
        out["expiration"] = int(lease.expiration)
    out["value"] = kv.value
    return out
