# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""Lease keys and lease values, laid out exactly as Go flanneld lays them out in etcd.

Shared verbatim by the Ansible modules (module_utils) and the pyflannel agent
(``pyflannel/leases.py`` is a symlink to it).  Standard library only, Python 3.8 syntax.

* Key: ``<prefix>/subnets/<ip>-<len>``, dual stack ``<ip>-<len>&<ip6>-<len6>``.
* Value written on etcd v2: the shape flanneld v0.11 wrote, e.g.
  ``{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VtepMAC":"7a:fd:a9:52:84:87"}}``.
* Value written on etcd v3: the current shape, with ``"PublicIPv6":null`` after PublicIP and ``VNI``
  inside the vxlan BackendData.
* Reading accepts every shape, with keys matched case-insensitively.
* IPv6 (Go v0.20): ``PublicIPv6`` and ``BackendV6Data`` beside PublicIP/BackendData, and the key
  ``<ip>-<len>&<ip6>-<len6>``.  A lease of an IPv6-only network has the key
  ``0.0.0.0-0&<ip6>-<len6>`` (what Go's later releases write for an empty IPv4 subnet) and, when the
  node has no IPv4 address, ``"PublicIP":"0.0.0.0"``.
"""

import ipaddress
import json
import re

from .catalogue import BY_NAME, UNTYPED, key_problem
# The judging of leases lives in leasebook.py; its names stay importable from here (__all__).
from .leasebook import Change, LeaseBook, judge_leases, lease_age, lease_problem

__all__ = [
    "DEFAULT_PREFIX", "LEASE_TTL", "MAX_VALUE_BYTES", "NO_IPV4", "NO_IPV4_KEY", "UNTYPED_BACKENDS", "V3_ONLY_DATA",
    "Change", "Lease", "LeaseAttrs", "LeaseBook", "LeaseFormatError", "check_value_size", "config_key",
    "decode_lease", "encode_lease", "judge_leases", "lease_age", "lease_problem", "normalize_prefix",
    "parse_subnet_key", "printable", "subnet_key", "subnet_key_name", "subnets_dir",
]

DEFAULT_PREFIX = "/coreos.com/network"
LEASE_TTL = 86400  # seconds: 24 h, as Go flanneld
MAX_VALUE_BYTES = 64 * 1024  # a lease value is a few hundred bytes; anything above this is refused

# Backends whose lease carries no BackendType (Go's udp and alloc never set one).
UNTYPED_BACKENDS = UNTYPED + ("",)
# BackendData keys that the v2 lease shape (flanneld v0.11) leaves out.
V3_ONLY_DATA = ("VNI",)

_KEY_RE = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})(?:&([0-9a-fA-F:]+)-(\d{1,3}))?$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$")


class LeaseFormatError(ValueError):
    """A lease key or value that does not follow the layout; one line for a person."""


# C0 and C1 control characters, DEL and the Unicode line/paragraph separators: what could end a log line
# or rewrite a terminal.  Backslashes are left alone, so text that is already repr()-escaped stays as is.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text, limit=300):
    """``text`` from etcd (a key name, a value, a reason quoting them) made safe for one log line:
    control characters repr()-escaped (a newline becomes ``\\n``), and cut after ``limit`` characters."""
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    more = len(text) - limit
    if more > 0:
        text = text[:limit]
    text = _CONTROL_RE.sub(lambda match: repr(match.group())[1:-1], text)
    return text + ("... (%d more characters)" % more if more > 0 else "")


def normalize_prefix(prefix):
    """``/coreos.com/network/`` and ``coreos.com/network`` both become ``/coreos.com/network``."""
    prefix = (prefix or DEFAULT_PREFIX).strip()
    return "/" + prefix.strip("/")


def config_key(prefix):
    return normalize_prefix(prefix) + "/config"


def subnets_dir(prefix):
    return normalize_prefix(prefix) + "/subnets/"


NO_IPV4 = "0.0.0.0"  # PublicIP of a node without IPv4 in an IPv6-only network
NO_IPV4_KEY = "0.0.0.0-0"  # the IPv4 part of an IPv6-only lease's key


def subnet_key_name(subnet, ipv6_subnet=None):
    """``10.1.2.0/24`` -> ``10.1.2.0-24`` (the last path element); ``None`` and ``fc00:0:0:3::/64`` ->
    ``0.0.0.0-0&fc00:0:0:3::-64``."""
    if subnet is None and ipv6_subnet is None:
        raise ValueError("a lease key needs an IPv4 or an IPv6 subnet")
    name = NO_IPV4_KEY if subnet is None else "%s-%d" % (subnet.network_address, subnet.prefixlen)
    if ipv6_subnet is not None:
        name += "&%s-%d" % (ipv6_subnet.network_address, ipv6_subnet.prefixlen)
    return name


def subnet_key(prefix, subnet, ipv6_subnet=None):
    return subnets_dir(prefix) + subnet_key_name(subnet, ipv6_subnet)


def parse_subnet_key(key):
    """Parse a lease key (full path or last element) into (IPv4Network or None, IPv6Network or None);
    the IPv4 part is None for ``0.0.0.0-0&<ip6>-<len6>`` (IPv6-only).

    Raises :class:`LeaseFormatError` for anything else, including ``10.12.13.300-24`` and
    ``10.12.13.0-24hi``.
    """
    name = key.rsplit("/", 1)[-1]
    match = _KEY_RE.match(name)
    if not match:
        raise LeaseFormatError("not a lease key: %r (expected <ip>-<prefixlen>, like 10.1.2.0-24)" % key)
    ip4, len4, ip6, len6 = match.groups()
    try:
        subnet = ipaddress.IPv4Network("%s/%s" % (ip4, len4))
    except ValueError:
        raise LeaseFormatError("not a lease key: %r (address, prefix length or host bits are wrong)" % key)
    if subnet.prefixlen == 0:
        if ip6 is None or str(subnet.network_address) != "0.0.0.0":
            raise LeaseFormatError("not a lease key: %r (a /0 IPv4 part is only for IPv6-only leases, "
                                   "0.0.0.0-0&<ip6>-<len>)" % key)
        subnet = None
    subnet6 = None
    if ip6 is not None:
        try:
            subnet6 = ipaddress.IPv6Network("%s/%s" % (ip6, len6))
        except ValueError:
            raise LeaseFormatError("not a lease key: %r (the IPv6 part is wrong)" % key)
        if subnet6.prefixlen == 0:
            raise LeaseFormatError("not a lease key: %r (the IPv6 part is a /0)" % key)
    return subnet, subnet6


class LeaseAttrs:
    """What a node publishes in its lease."""

    def __init__(self, public_ip, backend_type="", backend_data=None, public_ipv6=None, backend_v6_data=None):
        # None (written as "0.0.0.0") only for a node without IPv4 in an IPv6-only network
        self.public_ip = None if public_ip in (None, "", NO_IPV4) else str(ipaddress.IPv4Address(str(public_ip)))
        self.backend_type = backend_type or ""
        self.backend_data = backend_data  # dict or None
        self.public_ipv6 = None if public_ipv6 in (None, "") else str(ipaddress.IPv6Address(str(public_ipv6)))
        self.backend_v6_data = backend_v6_data  # dict or None: the IPv6 device's BackendData

    def __eq__(self, other):
        return isinstance(other, LeaseAttrs) and self._key() == other._key()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(json.dumps(self._key(), sort_keys=True))

    def _key(self):
        return (self.public_ip, self.effective_type, self.backend_data or None, self.public_ipv6,
                self.backend_v6_data or None)

    def __repr__(self):
        return "LeaseAttrs(%s)" % encode_lease(self, "v3")

    @property
    def effective_type(self):
        """The backend type, with an untyped lease read as ``udp`` (what Go's udp writes)."""
        return self.backend_type or "udp"

    @property
    def vtep_mac(self):
        return (self.backend_data or {}).get("VtepMAC")

    @property
    def vni(self):
        return (self.backend_data or {}).get("VNI")

    @property
    def address(self):
        """The address to name this node by in messages."""
        return self.public_ip or self.public_ipv6 or NO_IPV4

    def data(self, key, version=4):
        """A BackendData (``version=6``: BackendV6Data) value, None when absent."""
        return ((self.backend_data if version == 4 else self.backend_v6_data) or {}).get(key)

    def _identity(self, version):
        spec = BY_NAME.get(self.backend_type)
        for key, kind in spec.lease_data if spec is not None else ():
            if kind in ("mac", "key") and self.data(key, version) is not None:
                return key, self.data(key, version)
        return None

    @property
    def identity(self):
        """(BackendData key, value) that no two nodes may share (vxlan's VtepMAC, wireguard's
        PublicKey), or None."""
        return self._identity(4)

    @property
    def identity6(self):
        """The same for BackendV6Data (vxlan's IPv6 VtepMAC), or None."""
        return self._identity(6)


def _backend_data_for(attrs, api, data):
    if data is None:
        return None
    spec = BY_NAME.get(attrs.backend_type)
    if spec is not None and spec.lease_data:
        shaped = {}
        for key, kind in spec.lease_data:
            if api == "v2" and key in V3_ONLY_DATA:
                continue
            if kind != "int" or data.get(key) is not None:
                shaped[key] = data.get(key)
        return shaped
    return data


def encode_lease(attrs, api):
    """The lease value, byte for byte as Go flanneld writes it for the given etcd API."""
    if api not in ("v2", "v3"):
        raise ValueError("api must be 'v2' or 'v3', not %r" % (api,))
    out = {"PublicIP": attrs.public_ip or NO_IPV4}
    if api == "v3" or attrs.public_ipv6 is not None:
        out["PublicIPv6"] = attrs.public_ipv6
    if attrs.backend_type not in UNTYPED_BACKENDS:
        out["BackendType"] = attrs.backend_type
    data = _backend_data_for(attrs, api, attrs.backend_data)
    if data is not None:
        out["BackendData"] = data
    data = _backend_data_for(attrs, api, attrs.backend_v6_data)
    if data is not None:
        out["BackendV6Data"] = data
    return json.dumps(out, separators=(",", ":"))


def check_value_size(text):
    """Refuse a lease value above :data:`MAX_VALUE_BYTES` before anything parses or caches it."""
    if text is not None and len(text) > MAX_VALUE_BYTES:
        raise LeaseFormatError("lease value is %d bytes, more than the %d a lease may hold"
                               % (len(text), MAX_VALUE_BYTES))


def _ci_get(obj, name):
    for key, value in obj.items():
        if key.lower() == name.lower():
            return value
    return None


def decode_lease(text):
    """Read a lease value of any shape Go flanneld has written. Raises LeaseFormatError."""
    check_value_size(text)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        raise LeaseFormatError("lease value is not JSON: %r" % (text[:80],))
    if not isinstance(obj, dict):
        raise LeaseFormatError("lease value is not a JSON object: %r" % (text[:80],))
    public_ip = _ci_get(obj, "PublicIP")
    try:
        public_ip = str(ipaddress.IPv4Address(public_ip))
    except (ValueError, TypeError):
        raise LeaseFormatError("lease PublicIP is not an IPv4 address: %r" % (public_ip,))
    ipv6 = _ci_get(obj, "PublicIPv6")
    if ipv6 is not None:
        try:
            ipv6 = str(ipaddress.IPv6Address(ipv6 if isinstance(ipv6, str) else None))
        except (ValueError, TypeError):
            raise LeaseFormatError("lease PublicIPv6 is not an IPv6 address: %r" % (str(ipv6)[:60],))
    backend_type = _ci_get(obj, "BackendType") or ""
    if not isinstance(backend_type, str):
        raise LeaseFormatError("lease BackendType is not a string: %r" % (backend_type,))
    shaped = []
    for field in ("BackendData", "BackendV6Data"):
        data = _ci_get(obj, field)
        if data is not None and not isinstance(data, dict):
            raise LeaseFormatError("lease %s is not an object: %r" % (field, str(data)[:60]))
        spec = BY_NAME.get(backend_type)
        if data is not None and spec is not None and spec.lease_data:
            data = _shape_data(backend_type, spec.lease_data, data)
        shaped.append(data)
    return LeaseAttrs(public_ip, backend_type, shaped[0], ipv6, shaped[1])


def _shape_data(backend_type, shape, data):
    """BackendData checked against the catalogue's lease shape, keys in Go's spelling."""
    norm = {}
    for key, kind in shape:
        value = _ci_get(data, key)
        if kind == "int":
            if value is not None:
                norm[key] = value
        elif kind == "mac":
            if not isinstance(value, str) or not _MAC_RE.match(value):
                raise LeaseFormatError("%s lease %s is not a MAC address: %r" % (backend_type, key, value))
            norm[key] = value.lower()
        elif kind == "key":
            if key_problem(value):
                raise LeaseFormatError("%s lease %s is not a WireGuard public key: %r"
                                       % (backend_type, key, str(value)[:60]))
            norm[key] = value
    return norm


class Lease:
    """A lease as read from etcd.

    ``expiration`` is a Unix time, or None for a reservation (a key without TTL); ``ttl_known`` is
    False when the store could not say cheaply (etcd v3 lists carry the lease id, not its TTL).
    """

    def __init__(self, subnet, attrs, expiration=None, reservation=False, revision=0, lease_id=0,
                 ipv6_subnet=None, raw=None, created=0):
        self.created = created or 0  # etcd create revision / index: the older lease wins a conflict
        self.subnet = subnet
        self.ipv6_subnet = ipv6_subnet
        self.attrs = attrs
        self.expiration = expiration
        self.reservation = reservation
        self.revision = revision
        self.lease_id = lease_id
        self.raw = raw

    @property
    def key_name(self):
        return subnet_key_name(self.subnet, self.ipv6_subnet)

    @property
    def label(self):
        """The subnets for messages: ``10.5.3.0/24``, ``10.5.3.0/24 fc00:0:0:3::/64`` or ``fc00:0:0:3::/64``."""
        return " ".join(str(net) for net in (self.subnet, self.ipv6_subnet) if net is not None)

    def subnets(self):
        """The lease's subnets, IPv4 first."""
        return [net for net in (self.subnet, self.ipv6_subnet) if net is not None]

    def __repr__(self):
        return "Lease(%s %s%s)" % (self.label, self.attrs.address, " reserved" if self.reservation else "")

    def as_dict(self):
        """A plain summary, for modules' return values and logs."""
        return {
            "subnet": str(self.subnet) if self.subnet is not None else None,
            "public_ip": self.attrs.public_ip,
            "ipv6_subnet": str(self.ipv6_subnet) if self.ipv6_subnet is not None else None,
            "public_ipv6": self.attrs.public_ipv6,
            "backend_type": self.attrs.effective_type,
            "vtep_mac": self.attrs.vtep_mac,
            "expiration": self.expiration,
            "reservation": self.reservation,
        }
