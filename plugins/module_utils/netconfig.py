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

IPv6 follows Go flanneld v0.20 (``EnableIPv6``; ``EnableIPv4`` defaults to true):

* ``IPv6Network`` is required with EnableIPv6; a prefix longer than /124 is an error.
* ``IPv6SubnetLen`` given: at most 126 and at least the prefix + 2.  Not given: /64 when the prefix is
  /62 or shorter, else prefix + 2.
* ``IPv6SubnetMin``/``IPv6SubnetMax`` default to the network plus one subnet and the last subnet;
  explicit values must lie inside the network on an IPv6SubnetLen boundary.
* ``EnableIPv4: false`` with EnableIPv6 is an IPv6-only network (``Network`` is then not needed).

``EnableNFTables`` (Go flanneld v0.25+, default false) moves the masquerade and forward rules from
iptables into the nftables tables ``flannel-ipv4``/``flannel-ipv6``; it must be true or false.

Every error is a single line naming the field, the value and the rule (``ConfigError``).
"""

import ipaddress
import json

from .catalogue import BACKENDS, BY_NAME, FOREIGN_BACKENDS, HIDDEN, key_problem, redact, secret_options

DEFAULT_BACKEND = "udp"

# Backend name -> {Go option name: (kind, default)}, derived from the catalogue.
BACKEND_OPTIONS = dict((b.name, dict((o.go, (o.kind, o.default)) for o in b.options)) for b in BACKENDS)

TOP_LEVEL_KEYS = ("Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend", "EnableIPv4", "EnableIPv6",
                  "EnableNFTables")
# Go keys for IPv6 that only matter with EnableIPv6; accepted and ignored when IPv6 is off.
IPV6_KEYS = ("IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax")


class ConfigError(ValueError):
    """An invalid network config.  ``str(err)`` is one line meant for a person."""


def _fail(field, value, rule):
    if field.lower().startswith("backend.") and field.split(".", 1)[1].lower() in secret_options():
        value = HIDDEN  # a secret (no_log in the catalogue) never reaches an error line, whatever is wrong with it
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


def _want_addr(field, value, version):
    name = "IPv%d" % version
    if not isinstance(value, str):
        example = "10.1.0.0" if version == 4 else "fc00::"
        _fail(field, value, "must be an %s address in a string, like \"%s\"" % (name, example))
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        addr = None
    if addr is None or addr.version != version:
        _fail(field, value, "is not an %s address" % name)
    return addr


# Per family: (bits, longest network prefix, longest SubnetLen, example CIDR, usual SubnetLen).  A
# network too small for four subnets of the usual length gets prefix + 2 by default.
_FAMILY = {
    4: (32, 28, 30, "10.1.0.0/16", 24),
    6: (128, 124, 126, "fc00::/48", 64),
}


class Pool:
    """One address family's subnet pool: Network, SubnetLen, SubnetMin, SubnetMax."""

    def __init__(self, network, subnet_len, subnet_min, subnet_max):
        self.network = network  # ipaddress.IPv4Network or IPv6Network
        self.subnet_len = subnet_len  # int
        self.subnet_min = subnet_min  # address of the first subnet handed out
        self.subnet_max = subnet_max  # address of the last subnet handed out

    @property
    def version(self):
        return self.network.version

    @property
    def subnet_size(self):
        return 1 << (self.network.max_prefixlen - self.subnet_len)

    def contains(self, subnet):
        """Whether ``subnet`` is a lease this pool would hand out."""
        if subnet is None or subnet.version != self.version or subnet.prefixlen != self.subnet_len:
            return False
        if not subnet.subnet_of(self.network):
            return False
        return self.subnet_min <= subnet.network_address <= self.subnet_max

    def subnets(self):
        """Every subnet from SubnetMin to SubnetMax, in order."""
        step = self.subnet_size
        addr = int(self.subnet_min)
        last = int(self.subnet_max)
        make = ipaddress.IPv4Network if self.version == 4 else ipaddress.IPv6Network
        while addr <= last:
            yield make((addr, self.subnet_len))
            addr += step

    def capacity(self):
        return (int(self.subnet_max) - int(self.subnet_min)) // self.subnet_size + 1


def _parse_pool(cfg, version):
    """The pool of one family from the folded config; keys carry an ``IPv6`` prefix for IPv6."""
    bits, max_prefix, max_len, example, usual = _FAMILY[version]
    key = "Network" if version == 4 else "IPv6Network"
    lead = "" if version == 4 else "IPv6"
    name = "IPv%d" % version
    raw_net = cfg.get(key)
    if raw_net in (None, ""):
        if version == 4:
            raise ConfigError("invalid network config: Network is missing; give the overlay range, "
                              "like {\"Network\": \"%s\"} (or \"EnableIPv4\": false for an IPv6-only network)"
                              % example)
        raise ConfigError("invalid network config: IPv6Network is missing; EnableIPv6 needs the IPv6 overlay "
                          "range, like {\"IPv6Network\": \"%s\"}" % example)
    if not isinstance(raw_net, str):
        _fail(key, raw_net, "must be an %s CIDR in a string, like \"%s\"" % (name, example))
    if "/" not in raw_net:
        _fail(key, raw_net, "needs a prefix length, like \"%s\"" % example)
    try:
        network = ipaddress.ip_network(raw_net, strict=False)
    except ValueError:
        network = None
    if network is None or network.version != version:
        _fail(key, raw_net, "is not an %s CIDR like \"%s\"" % (name, example))
    prefix = network.prefixlen

    len_key = lead + "SubnetLen"
    subnet_len = cfg.get(len_key)
    if subnet_len is not None:
        subnet_len = _want_int(len_key, subnet_len)
    if subnet_len:  # 0 means "not given", as in Go
        if subnet_len > max_len:
            _fail(len_key, subnet_len, "must be %d or less (each host needs room for a gateway and containers)"
                  % max_len)
        if subnet_len < prefix + 2:
            _fail(len_key, subnet_len, "must be at least the %s prefix + 2 (/%d) so the network "
                  "holds four subnets or more" % (key, prefix + 2))
    else:
        if subnet_len is not None and subnet_len < 0:
            _fail(len_key, subnet_len, "must be a positive prefix length")
        if prefix > max_prefix:
            _fail(key, raw_net, "is too small: the prefix must be /%d or shorter" % max_prefix)
        subnet_len = usual if prefix <= usual - 2 else prefix + 2

    size = 1 << (bits - subnet_len)
    bounds = {}
    for which, default in (("SubnetMin", int(network.network_address) + size),
                           ("SubnetMax", int(network.broadcast_address) + 1 - size)):
        field = lead + which
        value = cfg.get(field)
        if value in (None, "") or (isinstance(value, str) and value in ("0.0.0.0", "::")):
            bounds[which] = ipaddress.ip_address(default) if version == 6 else ipaddress.IPv4Address(default)
            continue
        addr = _want_addr(field, value, version)
        if addr not in network:
            _fail(field, value, "is outside %s %s" % (key, network))
        if int(addr) % size:
            _fail(field, value, "is not on a /%d (%s) boundary" % (subnet_len, len_key))
        bounds[which] = addr
    if bounds["SubnetMin"] > bounds["SubnetMax"]:
        _fail(lead + "SubnetMin", str(bounds["SubnetMin"]), "is above %sSubnetMax %s" % (lead, bounds["SubnetMax"]))
    return Pool(network, subnet_len, bounds["SubnetMin"], bounds["SubnetMax"])


class NetworkConfig:
    """A validated network config with every default filled in.

    ``pool4``/``pool6`` are the IPv4 and IPv6 pools (None when that family is off); ``network``,
    ``subnet_len``, ``subnet_min``, ``subnet_max``, ``contains()``, ``subnets()`` and ``capacity()``
    speak of the IPv4 pool (None / empty for an IPv6-only network)."""

    def __init__(self, network, subnet_len, subnet_min, subnet_max, backend_type, backend, pool6=None,
                 enable_nftables=False):
        self.pool4 = Pool(network, subnet_len, subnet_min, subnet_max) if network is not None else None
        self.pool6 = pool6
        self.enable_nftables = bool(enable_nftables)  # masquerade/forward rules in nftables instead of iptables
        self.backend_type = backend_type  # str
        self.backend = backend  # dict: Go option name -> value, defaults filled (None = unset)

    @property
    def enable_ipv4(self):
        return self.pool4 is not None

    @property
    def enable_ipv6(self):
        return self.pool6 is not None

    def pools(self):
        """The enabled pools, IPv4 first."""
        return [pool for pool in (self.pool4, self.pool6) if pool is not None]

    def pool(self, version):
        return self.pool4 if version == 4 else self.pool6

    def _v4(self, name, default=None):
        return getattr(self.pool4, name) if self.pool4 is not None else default

    network = property(lambda self: self._v4("network"))
    subnet_len = property(lambda self: self._v4("subnet_len"))
    subnet_min = property(lambda self: self._v4("subnet_min"))
    subnet_max = property(lambda self: self._v4("subnet_max"))
    subnet_size = property(lambda self: self._v4("subnet_size"))
    ipv6_network = property(lambda self: self.pool6.network if self.pool6 is not None else None)
    ipv6_subnet_len = property(lambda self: self.pool6.subnet_len if self.pool6 is not None else None)

    def __eq__(self, other):
        return isinstance(other, NetworkConfig) and self.to_dict() == other.to_dict()

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "NetworkConfig(%s)" % self.to_json()

    def to_dict(self, defaults=True):
        """The effective config with Go's key names; ``defaults=False`` leaves out backend options
        that are unset (None).  An IPv4-only config has no EnableIPv4/EnableIPv6 keys; EnableNFTables is
        there only when it is true."""
        backend = {"Type": self.backend_type}
        for name, value in self.backend.items():
            if value is not None or defaults:
                backend[name] = value
        out = {}
        if self.pool4 is not None:
            out.update({"Network": str(self.pool4.network), "SubnetLen": self.pool4.subnet_len,
                        "SubnetMin": str(self.pool4.subnet_min), "SubnetMax": str(self.pool4.subnet_max)})
        else:
            out["EnableIPv4"] = False
        if self.pool6 is not None:
            out.update({"EnableIPv6": True, "IPv6Network": str(self.pool6.network),
                        "IPv6SubnetLen": self.pool6.subnet_len, "IPv6SubnetMin": str(self.pool6.subnet_min),
                        "IPv6SubnetMax": str(self.pool6.subnet_max)})
        if self.enable_nftables:
            out["EnableNFTables"] = True
        out["Backend"] = backend
        return out

    def to_json(self):
        return json.dumps(self.to_dict(defaults=False), sort_keys=False, separators=(",", ":"))

    def option(self, name):
        return self.backend.get(name)

    def contains(self, subnet):
        """Whether ``subnet`` (an IPv4Network) is a lease this config would hand out."""
        return self.pool4 is not None and self.pool4.contains(subnet)

    def subnets(self):
        """Every IPv4 subnet from SubnetMin to SubnetMax, in order."""
        return self.pool4.subnets() if self.pool4 is not None else iter(())

    def capacity(self):
        return self.pool4.capacity() if self.pool4 is not None else 0


# Keys a running agent applies only when it starts (its lease, devices and rules were made for them), and
# keys that only matter for leases taken from now on.
RESTART_KEYS = ("EnableIPv4", "Network", "SubnetLen", "EnableIPv6", "IPv6Network", "IPv6SubnetLen", "EnableNFTables",
                "Backend")
LIMIT_KEYS = ("SubnetMin", "SubnetMax", "IPv6SubnetMin", "IPv6SubnetMax")
# What a key that to_dict() leaves out means, for the log line of a change ("EnableNFTables False -> True").
SHOWN_WHEN_ABSENT = {"EnableNFTables": False}


def changes(old, new, values=False):
    """What differs between two configs -> (restart, limits): the keys of RESTART_KEYS (a running agent
    applies them at its next start) and of LIMIT_KEYS (new leases only) whose values differ, in that order.

    Names only by default (``["Backend"]``).  ``values=True`` describes each difference for a log line
    instead, Backend option by option, secrets hidden by the catalogue's no_log:
    ``["Network 10.1.0.0/16 -> 10.2.0.0/16", "Backend.PSK (hidden) -> (hidden)"]``."""
    before = old.to_dict() if old is not None else {}
    after = new.to_dict() if new is not None else {}
    out = ([], [])
    for group, keys in zip(out, (RESTART_KEYS, LIMIT_KEYS)):
        for key in keys:
            if before.get(key) == after.get(key):
                continue
            if not values:
                group.append(key)
            elif key == "Backend":
                group.extend(_backend_changes(before.get(key) or {}, after.get(key) or {}))
            else:
                absent = SHOWN_WHEN_ABSENT.get(key)
                group.append("%s %s -> %s" % (key, before.get(key, absent), after.get(key, absent)))
    return out


def _backend_changes(before, after):
    shown_before, shown_after = redact({"Backend": before})["Backend"], redact({"Backend": after})["Backend"]
    names = list(before) + [name for name in after if name not in before]
    return ["Backend.%s %s -> %s" % (name, _plain(shown_before.get(name)), _plain(shown_after.get(name)))
            for name in names if before.get(name) != after.get(name)]


def _plain(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else str(value)


def _want_bool(cfg, key, default):
    value = cfg.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        _fail(key, value, "must be true or false")
    return value


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
            _fail(key, cfg[key], "unknown key (known: %s)" % ", ".join(TOP_LEVEL_KEYS + IPV6_KEYS))
    enable4 = _want_bool(cfg, "EnableIPv4", True)
    enable6 = _want_bool(cfg, "EnableIPv6", False)
    nftables = _want_bool(cfg, "EnableNFTables", False)
    if not enable4 and not enable6:
        _fail("EnableIPv4", False, "a network needs IPv4 or IPv6: set EnableIPv4 or EnableIPv6 to true")
    pool4 = _parse_pool(cfg, 4) if enable4 else None
    pool6 = _parse_pool(cfg, 6) if enable6 else None

    backend_type, backend = parse_backend(cfg.get("Backend"))
    families = BY_NAME[backend_type].families
    if pool6 is not None and 6 not in families:
        _fail("EnableIPv6", True, "the %s backend carries IPv4 only; use one of %s for IPv6"
              % (backend_type, ", ".join(b.name for b in BACKENDS if 6 in b.families)))
    if pool4 is None and not BY_NAME[backend_type].ipv6_only:
        _fail("EnableIPv4", False, "the %s backend cannot run an IPv6-only network; use one of %s or set "
              "EnableIPv4 to true" % (backend_type, ", ".join(b.name for b in BACKENDS if b.ipv6_only)))
    if pool4 is None:
        return NetworkConfig(None, None, None, None, backend_type, backend, pool6, enable_nftables=nftables)
    return NetworkConfig(pool4.network, pool4.subnet_len, pool4.subnet_min, pool4.subnet_max, backend_type,
                         backend, pool6, enable_nftables=nftables)


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
                _fail(field, value, why)
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
