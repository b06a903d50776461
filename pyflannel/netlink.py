"""Small netlink helpers shared by the datapath backends, all through pyroute2's IPRoute.

Only API calls that exist in both pyroute2 0.7 (Debian bookworm) and 0.9 are used:
``link``/``addr``/``route``/``neigh``/``fdb`` and ``link_lookup``.

Every route a backend installs carries a route protocol number of its own, so what an earlier run
installed can be found again (and removed) without guessing from addresses.

Address families are parameters, never assumptions.  Where the family follows from an argument (a
route's ``dst`` network, a neighbour's ``ip``, an fdb ``dst``, the ``ip`` of :func:`on_link`) it is
derived from that argument; the dumps (:func:`addresses`, :func:`routes`, :func:`neighbours`,
:func:`connected_networks`) take ``family`` (``socket.AF_INET`` by default, so IPv4 callers read as
before).  :func:`delete_routes` removes a protocol's routes of both families.  Addresses read back
from the kernel are in canonical text (``str(ipaddress.ip_address(...))``: IPv6 compressed, lower
case), so they compare equal to what :mod:`pyflannel.leases` holds.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from typing import Any, Dict, List, Optional, Tuple, Union

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pyflannel import catalogue

# Route protocol numbers (rtm_protocol) tagging the routes each backend installs, from the catalogue.
# Values lie outside the ones iproute2's rt_protos names (kernel 0-4, zebra/bird/... 9-19, 42, 99, 186-192).
RTPROT_HOSTGW = catalogue.get("host-gw").route_proto  # 108
RTPROT_VXLAN = catalogue.get("vxlan").route_proto  # 109
RTPROT_UDP = catalogue.get("udp").route_proto  # 110
RTPROT_WIREGUARD = catalogue.get("wireguard").route_proto  # 111

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1

# ifa_flags (linux/if_addr.h)
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40

FAMILIES = (socket.AF_INET, socket.AF_INET6)

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
_LINK_LOCAL6 = ipaddress.IPv6Network("fe80::/10")

_lock = threading.RLock()
_ipr: Optional[IPRoute] = None


def ipr() -> IPRoute:
    """One IPRoute socket per process (netlink sockets are not thread-safe: callers hold ``lock``)."""
    global _ipr
    with _lock:
        if _ipr is None:
            _ipr = IPRoute()
        return _ipr


def lock() -> threading.RLock:
    return _lock


def reset() -> None:
    """Close the shared socket (after a fork, or in tests)."""
    global _ipr
    with _lock:
        if _ipr is not None:
            try:
                _ipr.close()
            except Exception:
                pass
        _ipr = None


def attr(msg: Any, name: str, default: Any = None) -> Any:
    value = msg.get_attr(name)
    return default if value is None else value


def family_of(value: Any) -> int:
    """``socket.AF_INET`` or ``AF_INET6`` for an address, network or interface (object or text);
    ValueError for anything that is not an IP address."""
    version = getattr(value, "version", None)
    if version is None:
        text = str(value).strip()
        version = (ipaddress.ip_interface(text) if "/" in text else ipaddress.ip_address(text)).version
    return socket.AF_INET6 if version == 6 else socket.AF_INET


def canonical(ip: Any) -> str:
    """The canonical text of an IP address (IPv6 compressed and lower case)."""
    return str(ipaddress.ip_address(str(ip).strip()))


def _check_family(family: int) -> int:
    if family not in FAMILIES:
        raise ValueError("address family %r is neither AF_INET nor AF_INET6" % (family,))
    return family


def _any(family: int) -> str:
    return "::" if family == socket.AF_INET6 else "0.0.0.0"


def link_by_name(name: str) -> Optional[Any]:
    with _lock:
        idx = ipr().link_lookup(ifname=name)
        if not idx:
            return None
        try:
            return ipr().link("get", index=idx[0])[0]
        except NetlinkError as err:
            if err.code == errno.ENODEV:
                return None
            raise


def link_kind(msg: Any) -> Optional[str]:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def link_info_data(msg: Any) -> Any:
    info = msg.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_DATA") if info is not None else None


def links() -> List[Any]:
    with _lock:
        return list(ipr().link("dump"))


def delete_link(name: str) -> bool:
    with _lock:
        idx = ipr().link_lookup(ifname=name)
        if not idx:
            return False
        try:
            ipr().link("del", index=idx[0])
        except NetlinkError as err:
            if err.code != errno.ENODEV:
                raise
        return True


def address_info(msg: Any) -> Tuple[IPInterface, int, int]:
    """One RTM_NEWADDR message as (interface address, ifa_scope, ifa_flags).

    IPv4 reads IFA_ADDRESS before IFA_LOCAL (as this module always did); IPv6 reads IFA_LOCAL first
    (on a point-to-point link IFA_ADDRESS is the peer).  The 32-bit IFA_FLAGS attribute wins over the
    8-bit header field when the kernel sends it."""
    if msg["family"] == socket.AF_INET6:
        address = attr(msg, "IFA_LOCAL") or attr(msg, "IFA_ADDRESS")
    else:
        address = attr(msg, "IFA_ADDRESS") or attr(msg, "IFA_LOCAL")
    iface = ipaddress.ip_interface("%s/%d" % (address, msg["prefixlen"]))
    return iface, msg["scope"], attr(msg, "IFA_FLAGS", msg["flags"])


def is_global_address(iface: IPInterface, scope: int) -> bool:
    """Scope global (universe), not link-local: for IPv6 what ``ip -6 addr show scope global`` lists
    (unique local fc00::/7 included, as Go's IsGlobalUnicast)."""
    if scope != RT_SCOPE_UNIVERSE or iface.ip.is_multicast or iface.ip.is_loopback:
        return False
    return not (iface.version == 6 and iface.ip in _LINK_LOCAL6)


def is_usable(flags: int) -> bool:
    """Not tentative (duplicate address detection still running) and not dadfailed."""
    return not flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED)


def _address_dump(index: int, family: int) -> List[Tuple[IPInterface, int, int]]:
    _check_family(family)
    with _lock:
        msgs = ipr().addr("dump", index=index, family=family)
    return [address_info(msg) for msg in msgs if msg["index"] == index and msg["family"] == family]


def addresses(index: int, family: int = socket.AF_INET) -> List[IPInterface]:
    """The link's addresses of ``family`` (IPv4Interface or IPv6Interface), in the kernel's order;
    for IPv6 link-local and tentative ones included (see :func:`global_addresses`)."""
    return [iface for iface, _scope, _flags in _address_dump(index, family)]


def global_addresses(index: int, family: int = socket.AF_INET6, usable: bool = True) -> List[IPInterface]:
    """The link's global addresses of ``family`` (no link-local, host or multicast ones); with
    ``usable`` only those that are not tentative or dadfailed."""
    return [iface for iface, scope, flags in _address_dump(index, family)
            if is_global_address(iface, scope) and (not usable or is_usable(flags))]


def ipv4_addresses(index: int) -> List[ipaddress.IPv4Interface]:
    return addresses(index, socket.AF_INET)  # type: ignore[return-value]


def set_only_address(index: int, iface: IPInterface) -> bool:
    """Make ``iface`` the link's only address of its family; True when something changed.

    IPv4: every other IPv4 address goes (as always).  IPv6: ``iface`` is added with IFA_F_NODAD (a
    flannel device must not wait for duplicate address detection) and only other *global* IPv6
    addresses go: link-local fe80::/10 ones stay.  The other family is never touched."""
    family = family_of(iface)
    current = _address_dump(index, family)
    present = False
    changed = False
    with _lock:
        for have, scope, flags in current:
            if have == iface and (family == socket.AF_INET or not flags & IFA_F_DADFAILED):
                present = True
                continue
            if family == socket.AF_INET6 and not is_global_address(have, scope) and have != iface:
                continue
            ipr().addr("del", index=index, address=str(have.ip), prefixlen=have.network.prefixlen, family=family)
            changed = True
        if not present:
            kwargs: Dict[str, Any] = {"index": index, "address": str(iface.ip), "prefixlen": iface.network.prefixlen,
                                      "family": family}
            if family == socket.AF_INET6:
                kwargs["flags"] = IFA_F_NODAD
            ipr().addr("add", **kwargs)
            changed = True
    return changed


def set_link(index: int, **kwargs: Any) -> None:
    with _lock:
        ipr().link("set", index=index, **kwargs)


def routes(proto: Optional[int] = None, family: int = socket.AF_INET) -> List[Dict[str, Any]]:
    """Unicast routes of the main table of ``family`` as small dicts: dst (IPv4Network or IPv6Network),
    gateway, oif, proto, onlink."""
    _check_family(family)
    with _lock:
        msgs = ipr().route("dump", family=family)
    out = []
    for msg in msgs:
        table = attr(msg, "RTA_TABLE", msg["table"])
        if table != RT_TABLE_MAIN or msg["type"] != RTN_UNICAST or msg["family"] != family:
            continue
        if proto is not None and msg["proto"] != proto:
            continue
        dst = attr(msg, "RTA_DST", _any(family))
        gateway = attr(msg, "RTA_GATEWAY")
        out.append({
            "dst": ipaddress.ip_network("%s/%d" % (dst, msg["dst_len"])),
            "gateway": canonical(gateway) if gateway else gateway,
            "oif": attr(msg, "RTA_OIF"),
            "proto": msg["proto"],
            "onlink": bool(msg["flags"] & RTNH_F_ONLINK),
        })
    return out


def replace_route(dst: IPNetwork, oif: int, proto: int, gateway: Optional[str] = None,
                  onlink: bool = False) -> None:
    """``ip route replace`` (the family is the one of ``dst``)."""
    family = family_of(dst)
    kwargs: Dict[str, Any] = {"dst": str(dst.network_address), "dst_len": dst.prefixlen, "oif": oif,
                              "proto": proto, "table": RT_TABLE_MAIN, "family": family}
    if gateway:
        kwargs["gateway"] = gateway
    elif family == socket.AF_INET:
        kwargs["scope"] = RT_SCOPE_LINK  # as `ip route add <dst> dev <link>` does (IPv6 routes: universe)
    if onlink:
        kwargs["flags"] = RTNH_F_ONLINK
    with _lock:
        ipr().route("replace", **kwargs)


# A delete of what is already gone (no such route/neighbour/fdb entry, or its link vanished) is fine.
_GONE = (errno.ESRCH, errno.ENOENT, errno.ENODEV)


def _delete(kind: str, kwargs: Dict[str, Any]) -> bool:
    """``ipr().<kind>("del", **kwargs)``; False when there was nothing to delete."""
    with _lock:
        try:
            getattr(ipr(), kind)("del", **kwargs)
            return True
        except NetlinkError as err:
            if err.code in _GONE:
                return False
            raise


def delete_route(dst: IPNetwork, oif: Optional[int] = None, proto: Optional[int] = None,
                 gateway: Optional[str] = None) -> bool:
    kwargs: Dict[str, Any] = {"dst": str(dst.network_address), "dst_len": dst.prefixlen, "table": RT_TABLE_MAIN,
                              "family": family_of(dst)}
    if oif:
        kwargs["oif"] = oif
    if proto is not None:
        kwargs["proto"] = proto
    if gateway:
        kwargs["gateway"] = gateway
    return _delete("route", kwargs)


def delete_routes(proto: int, family: Optional[int] = None) -> int:
    """Delete every main-table route tagged with ``proto``, of both families unless ``family`` is
    given (a backend switch leaves no IPv6 route behind); returns how many."""
    count = 0
    for fam in FAMILIES if family is None else (_check_family(family),):
        for r in routes(proto, fam):
            if delete_route(r["dst"], oif=r["oif"], proto=proto, gateway=r["gateway"]):
                count += 1
    return count


def neighbours(index: int, family: int = socket.AF_INET) -> Dict[str, str]:
    """Permanent neighbours of ``family`` on a link: ip (canonical text) -> lladdr."""
    _check_family(family)
    with _lock:
        msgs = ipr().neigh("dump", family=family)
    out = {}
    for msg in msgs:
        if msg["ifindex"] == index and msg["family"] == family and msg["state"] & NUD_PERMANENT:
            ip = attr(msg, "NDA_DST")
            if ip:
                out[canonical(ip)] = attr(msg, "NDA_LLADDR")
    return out


def replace_neighbour(index: int, ip: str, mac: str) -> None:
    with _lock:
        ipr().neigh("replace", ifindex=index, dst=canonical(ip), lladdr=mac, state=NUD_PERMANENT,
                    family=family_of(ip))


def delete_neighbour(index: int, ip: str, mac: Optional[str] = None) -> None:
    kwargs: Dict[str, Any] = {"ifindex": index, "dst": canonical(ip), "family": family_of(ip)}
    if mac:
        kwargs["lladdr"] = mac
    _delete("neigh", kwargs)


def fdb_entries(index: int) -> Dict[str, str]:
    """Unicast fdb entries of a vxlan link: lladdr (lower case) -> dst (the remote VTEP address, IPv4
    or IPv6, canonical text)."""
    with _lock:
        msgs = ipr().fdb("dump", ifindex=index)
    out = {}
    for msg in msgs:
        if msg["ifindex"] != index:
            continue
        mac = attr(msg, "NDA_LLADDR")
        dst = attr(msg, "NDA_DST")
        if mac and dst and mac != "00:00:00:00:00:00":
            out[mac.lower()] = canonical(dst)
    return out


def replace_fdb(index: int, mac: str, dst: str) -> None:
    with _lock:
        ipr().fdb("replace", ifindex=index, lladdr=mac, dst=canonical(dst), state=NUD_PERMANENT, flags=NTF_SELF)


def delete_fdb(index: int, mac: str, dst: Optional[str] = None) -> None:
    kwargs: Dict[str, Any] = {"ifindex": index, "lladdr": mac, "flags": NTF_SELF}
    if dst:
        kwargs["dst"] = canonical(dst)
    _delete("fdb", kwargs)


def on_link(index: int, ip: str) -> bool:
    """Whether ``ip`` lies in a subnet directly connected on the link (a usable next hop); the family
    is the one of ``ip``."""
    return on_link_in(connected_networks(index, family_of(ip)), ip)


def connected_networks(index: int, family: int = socket.AF_INET) -> List[IPNetwork]:
    """The subnets of ``family`` directly connected on the link (one address dump; host addresses,
    /32 or /128, excluded; for IPv6 the link-local fe80::/64 included: such next hops are on-link)."""
    return [iface.network for iface in addresses(index, family) if iface.network.prefixlen < iface.max_prefixlen]


def on_link_in(networks: List[IPNetwork], ip: str) -> bool:
    """``on_link`` against networks from :func:`connected_networks`: pure Python, no netlink call,
    so a caller judging thousands of next hops needs one address dump, not one per hop."""
    addr = ipaddress.ip_address(str(ip).strip())
    return any(net.version == addr.version and addr in net for net in networks)


def create_link(name: str, kind: str, **kwargs: Any) -> Optional[str]:
    """``ip link add <name> type <kind>``: None when created, else why not, as a short text (e.g.
    "Operation not supported" when the kernel lacks that link type)."""
    with _lock:
        try:
            ipr().link("add", ifname=name, kind=kind, **kwargs)
        except NetlinkError as err:
            if err.code == errno.EOPNOTSUPP:
                return "the kernel has no %s link type" % kind
            return "%s (errno %d)" % (err.args[1] if len(err.args) > 1 else err, err.code)
    return None
