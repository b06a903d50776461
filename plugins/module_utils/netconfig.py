# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""The flannel network-config schema: the one place that parses, validates and fills defaults.

This file is shared verbatim by the Ansible modules (as module_utils) and by the pyflannel agent
(``pyflannel/netconfig.py`` is a symlink to it).  It must stay importable on its own: standard
library only, Python 3.8 syntax.

The rules follow Go flanneld's ``subnet.ParseConfig`` for IPv4:

* ``Network`` is required.  Keys match case-insensitively, as Go's encoding/json does.
* ``SubnetLen`` given: at most 30 and at least the network prefix + 2.  Not given: a prefix longer
  than /28 is an error, a prefix of /22 or shorter gets /24, anything else prefix + 2.
* ``SubnetMin`` defaults to the network plus one subnet, ``SubnetMax`` to the last subnet; explicit
  values must lie inside the network and sit on a SubnetLen boundary.
* ``Backend.Type`` defaults to ``udp``.

Every error is a single line naming the field, the value and the rule (``ConfigError``).
"""

import ipaddress
import json

from .catalogue import BACKENDS, BY_NAME, FOREIGN_BACKENDS, key_problem

DEFAULT_BACKEND = "udp"

# Backend name -> {Go option name: (kind, default)}, derived from the catalogue.
BACKEND_OPTIONS = dict((b.name, dict((o.go, (o.kind, o.default)) for o in b.options)) for b in BACKENDS)

TOP_LEVEL_KEYS = ("Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4", "EnableIPv6")
# Go keys for IPv6 that only matter with EnableIPv6; accepted and ignored when IPv6 is off.
IPV6_KEYS = ("IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax")


class ConfigError(ValueError):
    """An invalid network config.  ``str(err)`` is one line meant for a person."""


def _fail(field, value, rule):
    if not field.isprintable():  # a key with a newline or a control character: keep it on one line
        field = json.dumps(field)
    raise ConfigError("invalid network config: %s=%s: %s" % (field, json.dumps(value), rule))


def _fold_keys(obj, known, where):
    """Map a JSON object's keys case-insensitively onto ``known`` names; unknown keys are kept
    under their own name so the caller can reject them."""
    out = {}
    lower = dict((k.lower(), k) for k in known)
    for key, value in obj.items():
        name = lower.get(key.lower(), key)
        if name in out:
            _fail(where + name, value, "the key is given twice (keys are case-insensitive)")
        out[name] = value
    return out


def _want_int(field, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(field, value, "must be a whole number")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")) or value != int(value):  # pylint: disable=comparison-with-itself
            _fail(field, value, "must be a whole number")
        value = int(value)
    return value


def _want_ipv4(field, value):
    if not isinstance(value, str):
        _fail(field, value, "must be an IPv4 address in a string, like \"10.1.0.0\"")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        _fail(field, value, "is not an IPv4 address")


class NetworkConfig:
    """A validated network config with every default filled in."""

    def __init__(self, network, subnet_len, subnet_min, subnet_max, backend_type, backend):
        self.network = network  # ipaddress.IPv4Network
        self.subnet_len = subnet_len  # int
        self.subnet_min = subnet_min  # ipaddress.IPv4Address
        self.subnet_max = subnet_max  # ipaddress.IPv4Address
        self.backend_type = backend_type  # str
        self.backend = backend  # dict: Go option name -> value, defaults filled (None = unset)

    def __eq__(self, other):
        return isinstance(other, NetworkConfig) and self.to_dict() == other.to_dict()

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "NetworkConfig(%s)" % self.to_json()

    @property
    def subnet_size(self):
        return 1 << (32 - self.subnet_len)

    def to_dict(self, defaults=True):
        """The effective config with Go's key names; ``defaults=False`` leaves out backend options
        that are unset (None)."""
        backend = {"Type": self.backend_type}
        for name, value in self.backend.items():
            if value is not None or defaults:
                backend[name] = value
        return {
            "Network": str(self.network),
            "SubnetLen": self.subnet_len,
            "SubnetMin": str(self.subnet_min),
            "SubnetMax": str(self.subnet_max),
            "Backend": backend,
        }

    def to_json(self):
        return json.dumps(self.to_dict(defaults=False), sort_keys=False, separators=(",", ":"))

    def option(self, name):
        return self.backend.get(name)

    def contains(self, subnet):
        """Whether ``subnet`` (an IPv4Network) is a lease this config would hand out."""
        if subnet.version != 4 or subnet.prefixlen != self.subnet_len:
            return False
        if not subnet.subnet_of(self.network):
            return False
        return self.subnet_min <= subnet.network_address <= self.subnet_max

    def subnets(self):
        """Every subnet from SubnetMin to SubnetMax, in order."""
        step = self.subnet_size
        addr = int(self.subnet_min)
        last = int(self.subnet_max)
        while addr <= last:
            yield ipaddress.IPv4Network((addr, self.subnet_len))
            addr += step

    def capacity(self):
        return (int(self.subnet_max) - int(self.subnet_min)) // self.subnet_size + 1


def parse_config(data):
    """Parse a network config given as JSON text, bytes or an already decoded dict.

    Returns a :class:`NetworkConfig`; raises :class:`ConfigError` with one line otherwise.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("invalid network config: not UTF-8 text; store the config as JSON")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError as err:
            raise ConfigError("invalid network config: not valid JSON (%s); fix the JSON syntax" % err)
    if not isinstance(data, dict):
        raise ConfigError("invalid network config: must be a JSON object like {\"Network\": \"10.1.0.0/16\"}")

    cfg = _fold_keys(data, TOP_LEVEL_KEYS + IPV6_KEYS, "")
    for key in cfg:
        if key not in TOP_LEVEL_KEYS and key not in IPV6_KEYS:
            _fail(key, cfg[key], "unknown key (known: %s)" % ", ".join(TOP_LEVEL_KEYS))
    if cfg.get("EnableIPv6") not in (None, False):
        _fail("EnableIPv6", cfg["EnableIPv6"], "IPv6 networks are not supported by pyflannel; remove it")
    if cfg.get("EnableIPv4") not in (None, True):
        _fail("EnableIPv4", cfg["EnableIPv4"], "pyflannel needs an IPv4 network; remove it or set true")

    if "Network" not in cfg or cfg["Network"] in (None, ""):
        raise ConfigError("invalid network config: Network is missing; give the overlay range, "
                          "like {\"Network\": \"10.1.0.0/16\"}")
    raw_net = cfg["Network"]
    if not isinstance(raw_net, str):
        _fail("Network", raw_net, "must be an IPv4 CIDR in a string, like \"10.1.0.0/16\"")
    if "/" not in raw_net:
        _fail("Network", raw_net, "needs a prefix length, like \"10.1.0.0/16\"")
    try:
        network = ipaddress.IPv4Network(raw_net, strict=False)
    except ValueError:
        _fail("Network", raw_net, "is not an IPv4 CIDR like \"10.1.0.0/16\"")
    prefix = network.prefixlen

    subnet_len = cfg.get("SubnetLen")
    if subnet_len is not None:
        subnet_len = _want_int("SubnetLen", subnet_len)
    if subnet_len:  # 0 means "not given", as in Go
        if subnet_len > 30:
            _fail("SubnetLen", subnet_len, "must be 30 or less (each host needs room for a gateway and containers)")
        if subnet_len < prefix + 2:
            _fail("SubnetLen", subnet_len, "must be at least the Network prefix + 2 (/%d) so the network "
                  "holds four subnets or more" % (prefix + 2))
    else:
        if subnet_len is not None and subnet_len < 0:
            _fail("SubnetLen", subnet_len, "must be a positive prefix length")
        if prefix > 28:
            _fail("Network", raw_net, "is too small: the prefix must be /28 or shorter")
        subnet_len = 24 if prefix <= 22 else prefix + 2

    size = 1 << (32 - subnet_len)
    mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
    bounds = {}
    for name, default in (("SubnetMin", int(network.network_address) + size),
                          ("SubnetMax", int(network.broadcast_address) + 1 - size)):
        value = cfg.get(name)
        if value in (None, "", "0.0.0.0"):
            bounds[name] = ipaddress.IPv4Address(default)
            continue
        addr = _want_ipv4(name, value)
        if addr not in network:
            _fail(name, value, "is outside Network %s" % network)
        if int(addr) & mask != int(addr):
            _fail(name, value, "is not on a /%d (SubnetLen) boundary" % subnet_len)
        bounds[name] = addr
    if bounds["SubnetMin"] > bounds["SubnetMax"]:
        _fail("SubnetMin", str(bounds["SubnetMin"]), "is above SubnetMax %s" % bounds["SubnetMax"])

    backend_type, backend = parse_backend(cfg.get("Backend"))
    return NetworkConfig(network, subnet_len, bounds["SubnetMin"], bounds["SubnetMax"], backend_type, backend)


def parse_backend(raw):
    """Validate the ``Backend`` object; returns (type, options with defaults filled)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        _fail("Backend", raw, "must be an object like {\"Type\": \"vxlan\"}")
    known = set(["Type"])
    for opts in BACKEND_OPTIONS.values():
        known.update(opts)
    backend = _fold_keys(raw, sorted(known), "Backend.")
    btype = backend.pop("Type", None)
    if btype in (None, ""):
        btype = DEFAULT_BACKEND
    if not isinstance(btype, str):
        _fail("Backend.Type", btype, "must be a string: one of %s" % ", ".join(BACKEND_OPTIONS))
    if btype not in BACKEND_OPTIONS:
        lowered = btype.lower()
        if lowered in BACKEND_OPTIONS:
            btype = lowered
        elif lowered in FOREIGN_BACKENDS:
            _fail("Backend.Type", btype, "is a Go flanneld backend that pyflannel does not provide; use one of %s"
                  % ", ".join(BACKEND_OPTIONS))
        else:
            _fail("Backend.Type", btype, "is not a backend; use one of %s" % ", ".join(BACKEND_OPTIONS))
    spec = BY_NAME[btype]
    out = {}
    for name, value in backend.items():
        if spec.option(name) is None:
            allowed = ", ".join(spec.option_names) or "none"
            _fail("Backend." + name, value, "is not an option of the %s backend (options: %s)" % (btype, allowed))
    for opt in spec.options:
        value = backend.get(opt.go)
        if value is None:
            out[opt.go] = opt.default
            continue
        field = "Backend." + opt.go
        if opt.kind == "bool":
            if not isinstance(value, bool):
                _fail(field, value, "must be true or false")
        elif opt.kind == "key":
            why = key_problem(value)
            if why:
                _fail(field, "(hidden)" if opt.no_log else value, why)
        elif opt.kind == "str":
            if not isinstance(value, str):
                _fail(field, value, "must be a string")
            if opt.choices and value not in opt.choices:
                _fail(field, value, "must be one of %s" % ", ".join(opt.choices))
        else:
            value = _want_int(field, value)
            if not opt.low <= value <= opt.high:
                _fail(field, value, "must be between %d and %d" % (opt.low, opt.high))
        out[opt.go] = value
    return btype, out
