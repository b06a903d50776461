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
"""

import ipaddress
import json
import re

DEFAULT_PREFIX = "/coreos.com/network"
LEASE_TTL = 86400  # seconds: 24 h, as Go flanneld

# Backends whose lease carries no BackendType (Go's udp and alloc never set one).
UNTYPED_BACKENDS = ("udp", "alloc", "")

_KEY_RE = re.compile(r"^(\d{1,3}(?:\.\d{1,3}){3})-(\d{1,2})(?:&([0-9a-fA-F:]+)-(\d{1,3}))?$")
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$")


class LeaseFormatError(ValueError):
    """A lease key or value that does not follow the layout; one line for a person."""


def normalize_prefix(prefix):
    """``/coreos.com/network/`` and ``coreos.com/network`` both become ``/coreos.com/network``."""
    prefix = (prefix or DEFAULT_PREFIX).strip()
    return "/" + prefix.strip("/")


def config_key(prefix):
    return normalize_prefix(prefix) + "/config"


def subnets_dir(prefix):
    return normalize_prefix(prefix) + "/subnets/"


def subnet_key_name(subnet, ipv6_subnet=None):
    """``10.1.2.0/24`` -> ``10.1.2.0-24`` (the last path element)."""
    name = "%s-%d" % (subnet.network_address, subnet.prefixlen)
    if ipv6_subnet is not None:
        name += "&%s-%d" % (ipv6_subnet.network_address, ipv6_subnet.prefixlen)
    return name


def subnet_key(prefix, subnet, ipv6_subnet=None):
    return subnets_dir(prefix) + subnet_key_name(subnet, ipv6_subnet)


def parse_subnet_key(key):
    """Parse a lease key (full path or last element) into (IPv4Network, IPv6Network or None).

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
    subnet6 = None
    if ip6 is not None:
        try:
            subnet6 = ipaddress.IPv6Network("%s/%s" % (ip6, len6))
        except ValueError:
            raise LeaseFormatError("not a lease key: %r (the IPv6 part is wrong)" % key)
    return subnet, subnet6


class LeaseAttrs:
    """What a node publishes in its lease."""

    def __init__(self, public_ip, backend_type="", backend_data=None, public_ipv6=None):
        self.public_ip = str(ipaddress.IPv4Address(str(public_ip)))
        self.backend_type = backend_type or ""
        self.backend_data = backend_data  # dict or None
        self.public_ipv6 = public_ipv6

    def __eq__(self, other):
        return isinstance(other, LeaseAttrs) and self._key() == other._key()

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash(json.dumps(self._key(), sort_keys=True))

    def _key(self):
        return (self.public_ip, self.effective_type, self.backend_data or None, self.public_ipv6)

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


def _backend_data_for(attrs, api):
    data = attrs.backend_data
    if data is None:
        return None
    if attrs.backend_type == "vxlan":
        shaped = {}
        if api == "v3" and data.get("VNI") is not None:
            shaped["VNI"] = data["VNI"]
        shaped["VtepMAC"] = data.get("VtepMAC")
        return shaped
    return data


def encode_lease(attrs, api):
    """The lease value, byte for byte as Go flanneld writes it for the given etcd API."""
    if api not in ("v2", "v3"):
        raise ValueError("api must be 'v2' or 'v3', not %r" % (api,))
    out = {"PublicIP": attrs.public_ip}
    if api == "v3":
        out["PublicIPv6"] = attrs.public_ipv6
    if attrs.backend_type not in UNTYPED_BACKENDS:
        out["BackendType"] = attrs.backend_type
    data = _backend_data_for(attrs, api)
    if data is not None:
        out["BackendData"] = data
    return json.dumps(out, separators=(",", ":"))


def _ci_get(obj, name):
    for key, value in obj.items():
        if key.lower() == name.lower():
            return value
    return None


def decode_lease(text):
    """Read a lease value of any shape Go flanneld has written. Raises LeaseFormatError."""
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
    backend_type = _ci_get(obj, "BackendType") or ""
    if not isinstance(backend_type, str):
        raise LeaseFormatError("lease BackendType is not a string: %r" % (backend_type,))
    data = _ci_get(obj, "BackendData")
    if data is not None and not isinstance(data, dict):
        raise LeaseFormatError("lease BackendData is not an object: %r" % (data,))
    if data is not None and backend_type == "vxlan":
        mac = _ci_get(data, "VtepMAC")
        if not isinstance(mac, str) or not _MAC_RE.match(mac):
            raise LeaseFormatError("vxlan lease VtepMAC is not a MAC address: %r" % (mac,))
        norm = {"VtepMAC": mac.lower()}
        vni = _ci_get(data, "VNI")
        if vni is not None:
            norm["VNI"] = vni
        data = norm
    ipv6 = _ci_get(obj, "PublicIPv6")
    return LeaseAttrs(public_ip, backend_type, data, ipv6)


class Lease:
    """A lease as read from etcd.

    ``expiration`` is a Unix time, or None for a reservation (a key without TTL); ``ttl_known`` is
    False when the store could not say cheaply (etcd v3 lists carry the lease id, not its TTL).
    """

    def __init__(self, subnet, attrs, expiration=None, reservation=False, revision=0, lease_id=0,
                 ipv6_subnet=None, raw=None):
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

    def __repr__(self):
        return "Lease(%s %s%s)" % (self.subnet, self.attrs.public_ip, " reserved" if self.reservation else "")

    def as_dict(self):
        """A plain summary, for modules' return values and logs."""
        return {
            "subnet": str(self.subnet),
            "public_ip": self.attrs.public_ip,
            "backend_type": self.attrs.effective_type,
            "vtep_mac": self.attrs.vtep_mac,
            "expiration": self.expiration,
            "reservation": self.reservation,
        }
