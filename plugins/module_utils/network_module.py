# Copyright: netfabric.flannel contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the flannel_network module computes before and after it talks to etcd: the argument spec of
``backend``, the document to store, the refusals (options of a family that is off, leases a change
would invalidate) and the diff text.  Used by ``plugins/modules/flannel_network.py`` only."""

from __future__ import annotations

from ansible_collections.netfabric.flannel.plugins.module_utils.catalogue import (
    all_options,
    redact_text,
)
from ansible_collections.netfabric.flannel.plugins.module_utils.flannel_module import lease_fits

# Module option -> Go key, in the order Go flanneld documents them.
IPV4_OPTIONS = (("network", "Network"), ("subnet_len", "SubnetLen"), ("subnet_min", "SubnetMin"),
                ("subnet_max", "SubnetMax"))
IPV6_OPTIONS = (("ipv6_network", "IPv6Network"), ("ipv6_subnet_len", "IPv6SubnetLen"),
                ("ipv6_subnet_min", "IPv6SubnetMin"), ("ipv6_subnet_max", "IPv6SubnetMax"))
# Backend option -> Go key, from the catalogue (DOCUMENTATION's suboptions are written from it too).
BACKEND_KEYS = tuple((name, opt.go) for name, (opt, _backends) in all_options().items())


def backend_spec() -> dict:
    """The argument spec of ``backend``: every option of every backend in the catalogue."""
    spec = dict(type=dict(type="str", default="udp"))
    for name, (opt, _backends) in all_options().items():
        spec[name] = dict(type=opt.ansible_type)
        if opt.choices:
            spec[name]["choices"] = list(opt.choices)
        if opt.no_log:
            spec[name]["no_log"] = True
    return spec


def wanted_document(params: dict) -> dict:
    """The JSON object to store: only the options given, plus Backend.Type, with Go's key names.

    EnableIPv4/EnableIPv6/EnableNFTables are stored only when they differ from Go's defaults (true/false/false),
    so an IPv4-only document is what it was before IPv6."""
    doc = {}
    for option, key in IPV4_OPTIONS:
        if params.get(option) is not None:
            doc[key] = params[option]
    if params.get("enable_ipv4") is False:
        doc["EnableIPv4"] = False
    if params.get("enable_ipv6"):
        doc["EnableIPv6"] = True
    for option, key in IPV6_OPTIONS:
        if params.get(option) is not None:
            doc[key] = params[option]
    if params.get("enable_nftables"):
        doc["EnableNFTables"] = True
    backend_params = params.get("backend") or {}
    backend = {"Type": backend_params.get("type") or "udp"}
    for option, key in BACKEND_KEYS:
        if backend_params.get(option) is not None:
            backend[key] = backend_params[option]
    doc["Backend"] = backend
    return doc


def unused_options(params: dict) -> str | None:
    """A one-line refusal for options of a family that is switched off (Go would ignore them), else None."""
    for family, flag, options in (("IPv4", "enable_ipv4", IPV4_OPTIONS), ("IPv6", "enable_ipv6", IPV6_OPTIONS)):
        if params.get(flag):
            continue
        given = [option for option, _key in options if params.get(option) is not None]
        if given:
            many = len(given) > 1
            return ("%s: %s when %s is on; set %s: true or leave %s out"
                    % (", ".join(given), "these options only apply" if many else "this option only applies", family,
                       flag, "them" if many else "it"))
    return None


def pretty(text: str | None) -> str:
    """A stored document for the diff: indented JSON when it parses, else the raw text; secrets hidden."""
    if text is None:
        return ""
    text = redact_text(text, indent=2) or ""
    return text if text.endswith("\n") else text + "\n"


def _moves(current, wanted) -> list:
    """What changes between two configs that moves every node (a network, a subnet length, a family)."""
    moved = []
    for name, flag in (("EnableIPv4", "enable_ipv4"), ("EnableIPv6", "enable_ipv6")):
        before, after = getattr(current, flag), getattr(wanted, flag)
        if before and not after:  # switching a family on moves nobody: each node keeps its subnet
            moved.append("%s from %s to %s" % (name, str(before).lower(), str(after).lower()))
    for lead, version in (("", 4), ("IPv6", 6)):
        old, new = current.pool(version), wanted.pool(version)
        if old is None or new is None:
            continue
        if old.network != new.network:
            moved.append("%sNetwork from %s to %s" % (lead, old.network, new.network))
        if old.subnet_len != new.subnet_len:
            moved.append("%sSubnetLen from %d to %d" % (lead, old.subnet_len, new.subnet_len))
    return moved


def _ranges(config) -> str:
    """SubnetMin-SubnetMax of each family, for a message."""
    out = []
    for lead, pool in (("", config.pool4), ("IPv6", config.pool6)):
        if pool is not None:
            out.append("%sSubnetMin/%sSubnetMax to %s-%s" % (lead, lead, pool.subnet_min, pool.subnet_max))
    return " and ".join(out)


def lease_problems(current, wanted, leases) -> tuple:
    """Leases that the change from ``current`` to ``wanted`` would invalidate -> (why, subnets)."""
    if not leases:
        return None, []
    # A family switched on: a lease without a subnet of it keeps its other subnets (the agent replaces it
    # with one that adds the new family), so only the families it already had must still fit.
    added = [pool.version for pool in wanted.pools() if current is None or current.pool(pool.version) is None]
    outside = [lease for _kv, lease in leases if not lease_fits(wanted, lease, added)]
    moved = _moves(current, wanted) if current is not None else []
    if not moved and not outside:
        return None, []
    what = "change " + (" and ".join(moved) if moved else _ranges(wanted))
    if not outside:
        outside = [lease for _kv, lease in leases]
    shown = ", ".join("%s of %s" % (lease.label, lease.attrs.address) for lease in outside[:5])
    if len(outside) > 5:
        shown += " and %d more" % (len(outside) - 5)
    why = ("refusing to %s: %d existing lease(s) (%s) would become invalid and their nodes would drop them and "
           "re-acquire a subnet in the new range, giving containers new addresses; set force: true to do it anyway"
           % (what, len(outside), shown))
    return why, [lease.label for lease in outside]
