# Copyright: netfabric.flannel contributors
# Apache License 2.0 (see LICENSE)
"""The backend catalogue: every fact about every backend, written down once.

Shared verbatim by the Ansible modules (module_utils) and the pyflannel agent
(``pyflannel/catalogue.py`` is a symlink to this file).  Standard library only, Python 3.8 syntax.

Per backend: its options (Go key, snake_case name, type, default, allowed range or choices, one-line
description), the shape of the ``BackendData`` its leases carry, its MTU overhead, the route
protocol id its routes are tagged with and the pyflannel module that implements it.  Everything else
derives from here: the network-config schema (``netconfig``), the agent's backend registry, the
``flannel_network`` module's argument spec, the role argument specs and module documentation
(written by ``scripts/backend_options.py``), and the backend lists of the lab, the benchmarks, molecule and
the Makefile (checked by ``tests/unit/plugins/modules/test_catalogue.py``).

Adding a backend: one entry in :data:`BACKENDS`, one module under ``pyflannel/backend/``, then
``scripts/backend_options.py --write``.
"""

import base64
import binascii
import json


class Option:
    """One ``Backend`` option of the network config."""

    def __init__(self, go, name, kind, default=None, low=None, high=None, choices=None, doc="", no_log=False):
        self.go = go  # the key in the JSON config, as Go flanneld spells it
        self.name = name  # snake_case, for the module and the role
        self.kind = kind  # "int", "bool", "str" or "key" (a base64 WireGuard key)
        self.default = default  # None: unset (the backend derives a value)
        self.low = low
        self.high = high
        self.choices = choices
        self.doc = doc
        self.no_log = no_log

    @property
    def ansible_type(self):
        return "str" if self.kind == "key" else self.kind


class Backend:
    """One backend type."""

    def __init__(self, name, summary, module, options=(), overhead=0, route_proto=None, lease_type=None,
                 lease_data=(), datapath=True, underlay=None, devices=(), families=(4, 6)):
        self.name = name
        self.summary = summary
        self.module = module  # pyflannel.backend.<module>
        self.options = tuple(options)
        self.overhead = overhead  # bytes the datapath adds: FLANNEL_MTU = interface MTU - overhead
        self.route_proto = route_proto  # rtnetlink protocol id of the routes it installs (None: none)
        # The lease's BackendType as written to etcd ("" = none, what Go's udp and alloc write)
        self.lease_type = name if lease_type is None else lease_type
        # BackendData keys this backend's leases carry: (key, kind) with kind "mac", "int" or "key"
        self.lease_data = tuple(lease_data)
        self.datapath = datapath  # False: hands out leases but moves no packets (alloc)
        self.underlay = underlay  # (protocol, Go option holding the port, default port) or None
        self.devices = tuple(devices)  # regular expressions of the link names it creates
        # Address families it carries; a backend with both also runs IPv6-only networks.
        self.families = tuple(families)

    @property
    def ipv6_only(self):
        """Whether it runs a network with EnableIPv4 false."""
        return 6 in self.families

    def option(self, go):
        for opt in self.options:
            if opt.go == go:
                return opt
        return None

    @property
    def option_names(self):
        return [opt.go for opt in self.options]


def _mtu():
    return Option("MTU", "mtu", "int", None, 68, 65535,
                  doc="MTU of the flannel device; default the interface's MTU minus the backend's overhead")


BACKENDS = (
    Backend(
        "udp", "encapsulation in UDP by the agent itself through a TUN device (slow, works anywhere)",
        "udp",
        options=(Option("Port", "port", "int", 8285, 0, 65535, doc="UDP port the agent listens on and sends to"),
                 _mtu()),
        overhead=28, route_proto=0x6E, lease_type="", underlay=("udp", "Port", 8285), devices=("flannel0",),
        families=(4,)),
    Backend(
        "vxlan", "in-kernel VXLAN (device flannel.<VNI>)",
        "vxlan",
        options=(Option("VNI", "vni", "int", 1, 0, 16777215, doc="VXLAN network identifier"),
                 Option("Port", "port", "int", 0, 0, 65535, doc="UDP port of the VXLAN device; 0 = the kernel's 8472"),
                 Option("GBP", "gbp", "bool", False, doc="VXLAN Group Based Policy"),
                 Option("Learning", "learning", "bool", False, doc="let the kernel learn VXLAN forwarding entries"),
                 Option("DirectRouting", "direct_routing", "bool", False,
                        doc="plain routes, without encapsulation, to hosts on the same L2 network"),
                 _mtu(),
                 Option("MacPrefix", "mac_prefix", "str", None, doc="prefix of the VTEP MAC addresses, like 0E-2A")),
        overhead=50, route_proto=0x6D, lease_data=(("VNI", "int"), ("VtepMAC", "mac")),
        underlay=("udp", "Port", 8472), devices=(r"flannel\.[0-9]+", r"flannel-v6\.[0-9]+")),
    Backend(
        "host-gw", "plain routes via the other hosts (every host on one L2 network)",
        "hostgw",
        options=(_mtu(),),
        overhead=0, route_proto=0x6C),
    Backend(
        "wireguard", "encrypted WireGuard tunnels (device flannel-wg; the kernel's or wireguard-go)",
        "wireguard",
        options=(Option("ListenPort", "listen_port", "int", 51820, 1, 65535, doc="UDP port WireGuard listens on"),
                 Option("ListenPortV6", "listen_port_v6", "int", 51821, 1, 65535,
                        doc="UDP port of the IPv6 WireGuard device, used with IPv6"),
                 Option("PSK", "psk", "key", None, no_log=True,
                        doc="pre-shared key (base64, as wg genpsk prints) applied to every peer"),
                 Option("PersistentKeepaliveInterval", "persistent_keepalive_interval", "int", 0, 0, 65535,
                        doc="seconds between keepalives to every peer; 0 = off"),
                 Option("Mode", "mode", "str", "separate", choices=("separate", "auto", "ipv4", "ipv6"),
                        doc="separate, one device per address family, or one device over the auto, ipv4 or "
                            "ipv6 underlay"),
                 _mtu()),
        overhead=80, route_proto=0x6F, lease_data=(("PublicKey", "key"),),
        underlay=("udp", "ListenPort", 51820), devices=("flannel-wg", "flannel-wg-v6")),
    Backend(
        "alloc", "hands out subnets only and builds no datapath", "alloc",
        overhead=0, lease_type="", datapath=False),
)

BY_NAME = dict((b.name, b) for b in BACKENDS)

# Backend types Go flanneld knows and pyflannel does not provide.
FOREIGN_BACKENDS = ("ipip", "ipsec", "gce", "aws-vpc", "ali-vpc", "tencent-vpc", "extension")

# The backends that move packets, in the order lists show them (lab, molecule, benchmarks).
DATAPATHS = tuple(b.name for b in BACKENDS if b.datapath)

# Backends whose leases carry no BackendType.
UNTYPED = tuple(b.name for b in BACKENDS if not b.lease_type)


def names():
    return [b.name for b in BACKENDS]


def get(name):
    return BY_NAME.get(name)


def all_options():
    """Every option by snake_case name, once, in catalogue order: {name: (Option, [backend names])}.
    An option several backends share (Port, MTU) keeps its first definition's kind."""
    out = {}
    for backend in BACKENDS:
        for opt in backend.options:
            if opt.name not in out:
                out[opt.name] = (opt, [])
            out[opt.name][1].append(backend.name)
    return out


def key_problem(value):
    """Why ``value`` is not a WireGuard key (base64 of 32 bytes), or None."""
    if not isinstance(value, str):
        return "must be a base64 WireGuard key in a string"
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return "is not base64 (make one with wg genpsk)"
    if len(raw) != 32 or len(value) != 44:
        return "is not a 32-byte key in base64 (44 characters, as wg genpsk prints)"
    return None


def option_doc(name):
    """One sentence for the snake_case option ``name``: its Go key, and per backend what it is and its
    default (backends that describe it the same way are named together)."""
    opt, backends = all_options()[name]
    groups = []  # [(description, [backend with default])]
    for bname in backends:
        o = BY_NAME[bname].option(opt.go)
        where = bname if o.default in (None, "") else "%s, default %s" % (bname, _show(o.default))
        for doc, wheres in groups:
            if doc == o.doc:
                wheres.append(where)
                break
        else:
            groups.append((o.doc, [where]))
    text = "; ".join("%s (%s)" % (doc, ("; " if any("," in w for w in wheres) else ", ").join(wheres))
                     for doc, wheres in groups)
    if opt.choices:
        text += "; one of %s" % ", ".join(opt.choices)
    return "C(%s): %s." % (opt.go, text)


def _show(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# What a redacted secret shows in logs, messages and diffs (the schema's errors say the same).
HIDDEN = "(hidden)"


def secret_options():
    """The Go keys, in lower case, of every option marked ``no_log`` in any backend (``psk`` today)."""
    return set(opt.go.lower() for backend in BACKENDS for opt in backend.options if opt.no_log)


def redact(config):
    """A copy of a network config (a dict with Go's key names, in any case, as read from etcd or as
    ``NetworkConfig.to_dict()`` gives it) fit for a log, a message or a diff: the value of every
    ``Backend`` option the catalogue marks ``no_log`` is replaced by :data:`HIDDEN` (an unset one,
    None, stays None so a log still tells set from unset).  Anything that is not a dict is returned as is."""
    if not isinstance(config, dict):
        return config
    secrets = secret_options()
    out = {}
    for key, value in config.items():
        if isinstance(key, str) and key.lower() == "backend" and isinstance(value, dict):
            value = dict((name, HIDDEN if _is_secret(name, secrets) and item is not None else item)
                         for name, item in value.items())
        out[key] = value
    return out


def redact_text(text, indent=None):
    """A stored document (text) as results, messages and diffs show it: every secret replaced by
    :data:`HIDDEN` (see :func:`redact`); a text that is not JSON and names a secret option is hidden whole;
    with nothing secret and no ``indent``, the text byte for byte.  None stays None."""
    if text is None:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        if any(name in text.lower() for name in secret_options()):
            return "%s (not JSON, and it names a secret option)" % HIDDEN
        return text
    hidden = redact(doc)
    if indent is None and hidden == doc:
        return text
    return json.dumps(hidden, indent=indent)


def _is_secret(name, secrets):
    return isinstance(name, str) and name.lower() in secrets
