"""External interface selection (``--iface``, ``--iface-regex``, ``--iface-can-reach``, ``--public-ip``,
``--public-ipv6``).

Netlink through pyroute2 (attributes read with ``get_attr``, which pyroute2 0.7 and 0.9 both have).
The result is an :class:`ExternalInterface`, which the backends are given.

Rules, as Go flanneld (v0.20 for IPv6):

* ``--iface`` (repeatable; a name, an IPv4 or an IPv6 address): the first entry that matches an
  interface wins; an address selects the interface holding it and that very address.
* ``--iface-regex`` (repeatable, tried when no ``--iface`` matched): each expression is matched against
  every interface's addresses of the wanted families first (IPv4, then global IPv6), then against
  interface names.
* ``--iface-can-reach ADDR`` (IPv4 or IPv6): the interface and source address of the route towards ADDR.
* none of these: the interface of the IPv4 default route (of the IPv6 default route on an IPv6-only
  network, ``want_ipv4=False``).
* ``--public-ip`` / ``--public-ipv6`` replace the address other nodes use to reach us (NAT, or fake
  nodes in tests).

Families: ``want_ipv4`` (default) needs an IPv4 address on the chosen interface, its first one unless
the flag named another.  ``want_ipv6`` needs a global IPv6 address (not link-local, not tentative or
dadfailed), the first in the kernel's order (``ip -6 addr show scope global``), unless ``--public-ipv6``
is given.  A family that is not wanted is left empty: ``address``/``public_ip`` are None on an IPv6-only
network, ``address6``/``public_ipv6`` are None unless IPv6 is wanted.  Addresses are canonical text.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

from pyflannel import netlink

log = logging.getLogger("pyflannel.iface")


@dataclass
class ExternalInterface:
    """The interface flannel traffic leaves through (``--iface`` and friends)."""

    name: str
    index: int
    # the interface's IPv4 address used for sending/binding; None only on an IPv6-only network
    # (``iface.select(want_ipv4=False)``) when the interface has no IPv4 address
    address: Optional[str]
    public_ip: Optional[str]  # what other nodes use to reach us (``--public-ip``; usually == address)
    mtu: int
    # the interface's global IPv6 address (canonical text), when IPv6 is wanted and the interface has one
    address6: Optional[str] = None
    # what other nodes reach us at over IPv6 (``--public-ipv6``; usually == address6)
    public_ipv6: Optional[str] = None


class IfaceError(Exception):
    """No usable interface; ``str()`` is one line saying what to do."""


class _Link:
    def __init__(self, index: int, name: str, mtu: int, up: bool) -> None:
        self.index = index
        self.name = name
        self.mtu = mtu
        self.up = up
        self.addrs: List[str] = []  # IPv4, kernel order
        self.addrs6: List[str] = []  # usable global IPv6, kernel order
        self.unusable6: Dict[str, str] = {}  # global IPv6 address -> "tentative" / "dadfailed"


# (link, IPv4 address or None, IPv6 address or None, how it was chosen, for messages)
_Found = Tuple[_Link, Optional[str], Optional[str], str]


def _inventory(ipr) -> Dict[int, _Link]:
    links: Dict[int, _Link] = {}
    for msg in ipr.get_links():
        name = msg.get_attr("IFLA_IFNAME")
        links[msg["index"]] = _Link(msg["index"], name, int(msg.get_attr("IFLA_MTU") or 1500),
                                    bool(msg["flags"] & 1))
    for msg in ipr.get_addr(family=socket.AF_INET):
        link = links.get(msg["index"])
        addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if link is not None and addr and addr not in link.addrs:
            link.addrs.append(addr)
    for msg in ipr.get_addr(family=socket.AF_INET6):
        link = links.get(msg["index"])
        if link is None or msg["family"] != socket.AF_INET6:
            continue
        iface, scope, flags = netlink.address_info(msg)
        if not netlink.is_global_address(iface, scope):
            continue
        addr = str(iface.ip)
        if netlink.is_usable(flags):
            if addr not in link.addrs6:
                link.addrs6.append(addr)
        else:
            link.unusable6[addr] = "dadfailed" if flags & netlink.IFA_F_DADFAILED else "tentative"
    return links


def _ip(text: str) -> Optional[Union[ipaddress.IPv4Address, ipaddress.IPv6Address]]:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _is_ipv4(text: str) -> bool:
    ip = _ip(text)
    return ip is not None and ip.version == 4


def _is_ipv6(text: str) -> bool:
    ip = _ip(text)
    return ip is not None and ip.version == 6


def _by_iface(links: Dict[int, _Link], specs: Sequence[str]) -> Optional[_Found]:
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        ip = _ip(spec)
        if ip is not None and ip.version == 4:
            for link in links.values():
                if spec in link.addrs:
                    return link, spec, None, "--iface %s" % spec
            continue
        if ip is not None:
            addr = str(ip)
            for link in links.values():
                if addr in link.addrs6:
                    return link, None, addr, "--iface %s" % spec
                if addr in link.unusable6:
                    raise IfaceError("IPv6 address %s (--iface) on %s is %s (duplicate address detection); wait "
                                     "for it, add it with nodad, or choose another address or interface"
                                     % (addr, link.name, link.unusable6[addr]))
            continue
        for link in links.values():
            if link.name == spec:
                return link, None, None, "--iface"
    return None


def _by_regex(links: Dict[int, _Link], patterns: Sequence[str], want_ipv4: bool, want_ipv6: bool,
              public_ipv6: Optional[str]) -> Optional[_Found]:
    ordered = [links[i] for i in sorted(links)]
    for pattern in patterns:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise IfaceError("--iface-regex %r is not a valid regular expression (%s); fix it"
                             % (pattern, err)) from None
        what = "--iface-regex %s" % pattern
        for link in ordered:  # addresses first ...
            for addr in link.addrs if want_ipv4 else ():
                if rx.search(addr):
                    return link, addr, None, what
            for addr in link.addrs6 if want_ipv6 else ():
                if rx.search(addr):
                    return link, None, addr, what
        for link in ordered:  # ... then names (of interfaces with an address of the family that decides)
            if not (link.name and rx.search(link.name)):
                continue
            if (link.addrs if want_ipv4 else (link.addrs6 or public_ipv6)):
                return link, None, None, what
    return None


def _route_to(ipr, links: Dict[int, _Link], dst: str, what: str) -> _Found:
    try:
        routes = ipr.route("get", dst=dst)
    except Exception as err:  # pyroute2 raises NetlinkError; keep the message for the person
        raise IfaceError("no route to %s (%s): %s; add a route or pick the interface with --iface"
                         % (dst, what, getattr(err, "args", [err])[-1])) from None
    if not routes:
        raise IfaceError("no route to %s (%s); add a route or pick the interface with --iface" % (dst, what))
    route = routes[0]
    link = links.get(route.get_attr("RTA_OIF"))
    if link is None:
        raise IfaceError("the route to %s (%s) has no outgoing interface; pick one with --iface" % (dst, what))
    src = route.get_attr("RTA_PREFSRC")
    how = "route to %s" % dst
    if src and _is_ipv6(src):
        src = str(ipaddress.ip_address(src))
        return link, None, src if src in link.addrs6 else None, how
    return link, src if src and src in link.addrs else None, None, how


def _default_route(ipr, links: Dict[int, _Link], family: int) -> _Found:
    best = None
    for route in ipr.get_routes(family=family):
        table = route.get_attr("RTA_TABLE") or route["table"]
        if route["dst_len"] != 0 or table != 254 or route["type"] != 1:  # unicast, main table
            continue
        oif = route.get_attr("RTA_OIF")
        if oif is None:  # multipath: the first next hop's link
            hops = route.get_attr("RTA_MULTIPATH") or []
            oif = hops[0]["oif"] if hops else None
        if oif not in links:
            continue
        prio = route.get_attr("RTA_PRIORITY") or 0
        if best is None or prio < best[0]:
            best = (prio, links[oif])
    if best is None:
        if family == socket.AF_INET6:
            raise IfaceError("no IPv6 default route to pick the external interface from (the network is "
                             "IPv6-only); add an IPv6 default route or choose the interface with --iface, "
                             "--iface-regex or --iface-can-reach")
        raise IfaceError("no default route to pick the external interface from; add a default route or choose "
                         "the interface with --iface, --iface-regex or --iface-can-reach")
    return best[1], None, None, "IPv6 default route" if family == socket.AF_INET6 else "default route"


def _addresses(found: _Found, want_ipv4: bool, want_ipv6: bool,
               public_ipv6: Optional[str]) -> Tuple[Optional[str], Optional[str]]:
    """The IPv4 and IPv6 address of the chosen interface, for the wanted families."""
    link, v4, v6, how = found
    address = None
    if want_ipv4:
        address = v4 or (link.addrs[0] if link.addrs else None)
        if address is None:
            raise IfaceError("interface %s (%s) has no IPv4 address; give it one or choose another interface "
                             "with --iface" % (link.name, how))
    address6 = None
    if want_ipv6:
        address6 = v6 or (link.addrs6[0] if link.addrs6 else None)
        if address6 is None and not public_ipv6:
            why = ""
            if link.unusable6:
                why = " (%s)" % ", ".join("%s is %s" % kv for kv in sorted(link.unusable6.items()))
            raise IfaceError("interface %s (%s) has no global IPv6 address%s and this network uses IPv6; give it "
                             "one (link-local fe80:: does not count), choose another interface with --iface, or "
                             "set --public-ipv6" % (link.name, how, why))
    return address, address6


def _listing(want_ipv4: bool, want_ipv6: bool) -> str:
    return "ip addr" if want_ipv4 and want_ipv6 else "ip -6 addr" if want_ipv6 else "ip -4 addr"


def select(ifaces: Sequence[str] = (), regexes: Sequence[str] = (), can_reach: Optional[str] = None,
           public_ip: Optional[str] = None, public_ipv6: Optional[str] = None, want_ipv4: bool = True,
           want_ipv6: bool = False) -> ExternalInterface:
    """Pick the external interface as Go flanneld does; raises IfaceError with one line.

    ``want_ipv4``/``want_ipv6``: the address families the network uses (at least one)."""
    if not (want_ipv4 or want_ipv6):
        raise ValueError("select() needs want_ipv4 or want_ipv6")
    if public_ip and not _is_ipv4(public_ip):
        raise IfaceError("--public-ip %r is not an IPv4 address; give the address other nodes reach "
                         "this one at" % public_ip)
    if public_ip and not want_ipv4:  # one set of flags for every network: say it, and carry on
        log.warning("--public-ip %s is ignored: this network is IPv6-only (--public-ipv6 gives the IPv6 address "
                    "other nodes reach this one at)", public_ip)
        public_ip = None
    if public_ipv6 and not _is_ipv6(public_ipv6):
        raise IfaceError("--public-ipv6 %r is not an IPv6 address; give the IPv6 address other nodes reach "
                         "this one at" % public_ipv6)
    if public_ipv6 and not want_ipv6:
        log.warning("--public-ipv6 %s is ignored: this network does not use IPv6 (its config has no EnableIPv6)",
                    public_ipv6)
        public_ipv6 = None
    if can_reach and _ip(can_reach) is None:
        raise IfaceError("--iface-can-reach %r is not an IP address (IPv4 or IPv6); give an address this node "
                         "must reach" % can_reach)
    public_ipv6 = str(ipaddress.IPv6Address(public_ipv6.strip())) if public_ipv6 else None
    from pyroute2 import IPRoute

    listing = _listing(want_ipv4, want_ipv6)
    with IPRoute() as ipr:
        links = _inventory(ipr)
        found = None
        if ifaces:
            found = _by_iface(links, ifaces)
            if found is None and not regexes:
                raise IfaceError("no interface matches --iface %s; list interfaces with `%s` and give "
                                 "a name or an address that exists" % (",".join(ifaces), listing))
        if found is None and regexes:
            found = _by_regex(links, regexes, want_ipv4, want_ipv6, public_ipv6)
            if found is None:
                tried = ["--iface " + ",".join(ifaces)] * bool(ifaces) + ["--iface-regex " + r for r in regexes]
                raise IfaceError("no interface matches %s; list interfaces with `%s` and fix the "
                                 "flags" % (" or ".join(tried), listing))
        if found is None and can_reach:
            found = _route_to(ipr, links, can_reach.strip(), "--iface-can-reach")
        if found is None:
            found = _default_route(ipr, links, socket.AF_INET if want_ipv4 else socket.AF_INET6)
    address, address6 = _addresses(found, want_ipv4, want_ipv6, public_ipv6)
    link = found[0]
    return ExternalInterface(name=link.name, index=link.index, address=address,
                             public_ip=(public_ip or address) if want_ipv4 else None, mtu=link.mtu,
                             address6=address6, public_ipv6=public_ipv6 or address6)


def underlay_addresses(index: int) -> Tuple[List[str], List[str]]:
    """The addresses :func:`select` could pick on the link ``index`` right now: its IPv4 addresses and its
    usable global IPv6 addresses (not tentative, not dadfailed), canonical text, in the kernel's order.
    Both lists are empty once the link is gone.  The agent checks its chosen addresses against these."""
    try:
        ipv4 = [str(iface.ip) for iface in netlink.addresses(index, socket.AF_INET)]
        ipv6 = [str(iface.ip) for iface in netlink.global_addresses(index, socket.AF_INET6)]
    except Exception as err:  # pyroute2's NetlinkError: ENODEV once the link is deleted
        if getattr(err, "code", None) == 19:
            return [], []
        raise
    return ipv4, ipv6
