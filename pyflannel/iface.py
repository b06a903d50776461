"""External interface selection (``--iface``, ``--iface-regex``, ``--iface-can-reach``, ``--public-ip``).

Netlink through pyroute2.  The result is the backend interface's :class:`ExternalInterface`.

Rules, as Go flanneld:

* ``--iface`` (repeatable; a name or an IPv4 address): the first entry that matches an interface wins;
  an address selects the interface holding it and that very address.
* ``--iface-regex`` (repeatable, tried when no ``--iface`` matched): each expression is matched against
  every interface's IPv4 addresses first, then against interface names.
* ``--iface-can-reach ADDR``: the interface and source address of the route towards ADDR.
* none of these: the interface of the default route and its first IPv4 address.
* ``--public-ip`` replaces the address other nodes use to reach us (NAT, or fake nodes in tests).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from typing import Dict, List, Optional, Sequence, Tuple

from pyflannel.backend import ExternalInterface


class IfaceError(Exception):
    """No usable interface; ``str()`` is one line saying what to do."""


class _Link:
    def __init__(self, index: int, name: str, mtu: int, up: bool) -> None:
        self.index = index
        self.name = name
        self.mtu = mtu
        self.up = up
        self.addrs: List[str] = []


def _inventory(ipr) -> Dict[int, _Link]:
    links: Dict[int, _Link] = {}
    for msg in ipr.get_links():
        name = msg.get("IFLA_IFNAME") or msg.get_attr("IFLA_IFNAME")
        links[msg["index"]] = _Link(msg["index"], name, int(msg.get("IFLA_MTU") or 1500),
                                    bool(msg["flags"] & 1))
    for msg in ipr.get_addr(family=socket.AF_INET):
        link = links.get(msg["index"])
        addr = msg.get("IFA_LOCAL") or msg.get("IFA_ADDRESS")
        if link is not None and addr and addr not in link.addrs:
            link.addrs.append(addr)
    return links


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
        return True
    except ValueError:
        return False


def _by_iface(links: Dict[int, _Link], specs: Sequence[str]) -> Optional[Tuple[_Link, str]]:
    for spec in specs:
        spec = spec.strip()
        if not spec:
            continue
        if _is_ipv4(spec):
            for link in links.values():
                if spec in link.addrs:
                    return link, spec
            continue
        for link in links.values():
            if link.name == spec:
                if not link.addrs:
                    raise IfaceError("interface %s (--iface) has no IPv4 address; give it one or choose another "
                                     "interface" % spec)
                return link, link.addrs[0]
    return None


def _by_regex(links: Dict[int, _Link], patterns: Sequence[str]) -> Optional[Tuple[_Link, str]]:
    ordered = [links[i] for i in sorted(links)]
    for pattern in patterns:
        try:
            rx = re.compile(pattern)
        except re.error as err:
            raise IfaceError("--iface-regex %r is not a valid regular expression (%s); fix it"
                             % (pattern, err)) from None
        for link in ordered:  # addresses first ...
            for addr in link.addrs:
                if rx.search(addr):
                    return link, addr
        for link in ordered:  # ... then names
            if link.name and rx.search(link.name) and link.addrs:
                return link, link.addrs[0]
    return None


def _route_to(ipr, links: Dict[int, _Link], dst: str, what: str) -> Tuple[_Link, str]:
    try:
        routes = ipr.route("get", dst=dst)
    except Exception as err:  # pyroute2 raises NetlinkError; keep the message for the person
        raise IfaceError("no route to %s (%s): %s; add a route or pick the interface with --iface"
                         % (dst, what, getattr(err, "args", [err])[-1])) from None
    if not routes:
        raise IfaceError("no route to %s (%s); add a route or pick the interface with --iface" % (dst, what))
    route = routes[0]
    link = links.get(route.get("RTA_OIF"))
    if link is None:
        raise IfaceError("the route to %s (%s) has no outgoing interface; pick one with --iface" % (dst, what))
    src = route.get("RTA_PREFSRC")
    if not src or src not in link.addrs:
        if not link.addrs:
            raise IfaceError("interface %s (route to %s) has no IPv4 address; give it one or use --iface"
                             % (link.name, dst))
        src = link.addrs[0]
    return link, src


def _default_route(ipr, links: Dict[int, _Link]) -> Tuple[_Link, str]:
    best = None
    for route in ipr.get_routes(family=socket.AF_INET):
        if route.get("dst_len") != 0 or route.get("table") not in (254, None):
            continue
        oif = route.get("RTA_OIF")
        if oif not in links:
            continue
        prio = route.get("RTA_PRIORITY") or 0
        if best is None or prio < best[0]:
            best = (prio, links[oif])
    if best is None:
        raise IfaceError("no default route to pick the external interface from; add a default route or choose "
                         "the interface with --iface, --iface-regex or --iface-can-reach")
    link = best[1]
    if not link.addrs:
        raise IfaceError("interface %s (default route) has no IPv4 address; give it one or choose another "
                         "interface with --iface" % link.name)
    return link, link.addrs[0]


def select(ifaces: Sequence[str] = (), regexes: Sequence[str] = (), can_reach: Optional[str] = None,
           public_ip: Optional[str] = None) -> ExternalInterface:
    """Pick the external interface as Go flanneld does; raises IfaceError with one line."""
    if public_ip and not _is_ipv4(public_ip):
        raise IfaceError("--public-ip %r is not an IPv4 address; give the address other nodes reach "
                         "this one at" % public_ip)
    if can_reach and not _is_ipv4(can_reach):
        raise IfaceError("--iface-can-reach %r is not an IPv4 address; give an address this node must reach"
                         % can_reach)
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        links = _inventory(ipr)
        found = None
        if ifaces:
            found = _by_iface(links, ifaces)
            if found is None and not regexes:
                raise IfaceError("no interface matches --iface %s; list interfaces with `ip -4 addr` and give "
                                 "a name or an address that exists" % ",".join(ifaces))
        if found is None and regexes:
            found = _by_regex(links, regexes)
            if found is None:
                tried = ["--iface " + ",".join(ifaces)] * bool(ifaces) + ["--iface-regex " + r for r in regexes]
                raise IfaceError("no interface matches %s; list interfaces with `ip -4 addr` and fix the "
                                 "flags" % " or ".join(tried))
        if found is None and can_reach:
            found = _route_to(ipr, links, can_reach, "--iface-can-reach")
        if found is None:
            found = _default_route(ipr, links)
    link, address = found
    return ExternalInterface(name=link.name, index=link.index, address=address,
                             public_ip=public_ip or address, mtu=link.mtu)
