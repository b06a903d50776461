"""Small netlink helpers shared by the datapath backends, all through pyroute2's IPRoute.

Only API calls that exist in both pyroute2 0.7 (Debian bookworm) and 0.9 are used:
``link``/``addr``/``route``/``neigh``/``fdb`` and ``link_lookup``.

Every route a backend installs carries a route protocol number of its own, so what an earlier run
installed can be found again (and removed) without guessing from addresses.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from typing import Any, Dict, List, Optional

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


def ipv4_addresses(index: int) -> List[ipaddress.IPv4Interface]:
    with _lock:
        msgs = ipr().addr("dump", index=index, family=socket.AF_INET)
    out = []
    for msg in msgs:
        if msg["index"] != index:
            continue
        address = attr(msg, "IFA_ADDRESS") or attr(msg, "IFA_LOCAL")
        out.append(ipaddress.IPv4Interface("%s/%d" % (address, msg["prefixlen"])))
    return out


def set_only_address(index: int, iface: ipaddress.IPv4Interface) -> bool:
    """Make ``iface`` the only IPv4 address on the link; True when something changed."""
    changed = False
    current = ipv4_addresses(index)
    with _lock:
        for have in current:
            if have != iface:
                ipr().addr("del", index=index, address=str(have.ip), prefixlen=have.network.prefixlen)
                changed = True
        if iface not in current:
            ipr().addr("add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
            changed = True
    return changed


def set_link(index: int, **kwargs: Any) -> None:
    with _lock:
        ipr().link("set", index=index, **kwargs)


def routes(proto: Optional[int] = None) -> List[Dict[str, Any]]:
    """IPv4 routes of the main table as small dicts: dst (IPv4Network), gateway, oif, proto, onlink."""
    with _lock:
        msgs = ipr().route("dump", family=socket.AF_INET)
    out = []
    for msg in msgs:
        table = attr(msg, "RTA_TABLE", msg["table"])
        if table != RT_TABLE_MAIN or msg["type"] != 1:  # unicast routes of the main table only
            continue
        if proto is not None and msg["proto"] != proto:
            continue
        dst = attr(msg, "RTA_DST", "0.0.0.0")
        out.append({
            "dst": ipaddress.IPv4Network("%s/%d" % (dst, msg["dst_len"])),
            "gateway": attr(msg, "RTA_GATEWAY"),
            "oif": attr(msg, "RTA_OIF"),
            "proto": msg["proto"],
            "onlink": bool(msg["flags"] & RTNH_F_ONLINK),
        })
    return out


def replace_route(dst: ipaddress.IPv4Network, oif: int, proto: int, gateway: Optional[str] = None,
                  onlink: bool = False) -> None:
    kwargs: Dict[str, Any] = {"dst": str(dst.network_address), "dst_len": dst.prefixlen, "oif": oif,
                              "proto": proto, "table": RT_TABLE_MAIN}
    if gateway:
        kwargs["gateway"] = gateway
    else:
        kwargs["scope"] = 253  # RT_SCOPE_LINK, as `ip route add <dst> dev <link>` does
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


def delete_route(dst: ipaddress.IPv4Network, oif: Optional[int] = None, proto: Optional[int] = None,
                 gateway: Optional[str] = None) -> bool:
    kwargs: Dict[str, Any] = {"dst": str(dst.network_address), "dst_len": dst.prefixlen, "table": RT_TABLE_MAIN}
    if oif:
        kwargs["oif"] = oif
    if proto is not None:
        kwargs["proto"] = proto
    if gateway:
        kwargs["gateway"] = gateway
    return _delete("route", kwargs)


def delete_routes(proto: int) -> int:
    """Delete every main-table IPv4 route tagged with ``proto``; returns how many."""
    count = 0
    for r in routes(proto):
        if delete_route(r["dst"], oif=r["oif"], proto=proto, gateway=r["gateway"]):
            count += 1
    return count


def neighbours(index: int) -> Dict[str, str]:
    """Permanent IPv4 neighbours of a link: ip -> lladdr."""
    with _lock:
        msgs = ipr().neigh("dump", family=socket.AF_INET)
    out = {}
    for msg in msgs:
        if msg["ifindex"] == index and msg["state"] & NUD_PERMANENT:
            out[attr(msg, "NDA_DST")] = attr(msg, "NDA_LLADDR")
    return out


def replace_neighbour(index: int, ip: str, mac: str) -> None:
    with _lock:
        ipr().neigh("replace", ifindex=index, dst=ip, lladdr=mac, state=NUD_PERMANENT, family=socket.AF_INET)


def delete_neighbour(index: int, ip: str, mac: Optional[str] = None) -> None:
    kwargs: Dict[str, Any] = {"ifindex": index, "dst": ip, "family": socket.AF_INET}
    if mac:
        kwargs["lladdr"] = mac
    _delete("neigh", kwargs)


def fdb_entries(index: int) -> Dict[str, str]:
    """Unicast fdb entries of a vxlan link: lladdr -> dst (the remote VTEP address)."""
    with _lock:
        msgs = ipr().fdb("dump", ifindex=index)
    out = {}
    for msg in msgs:
        if msg["ifindex"] != index:
            continue
        mac = attr(msg, "NDA_LLADDR")
        dst = attr(msg, "NDA_DST")
        if mac and dst and mac != "00:00:00:00:00:00":
            out[mac.lower()] = dst
    return out


def replace_fdb(index: int, mac: str, dst: str) -> None:
    with _lock:
        ipr().fdb("replace", ifindex=index, lladdr=mac, dst=dst, state=NUD_PERMANENT, flags=NTF_SELF)


def delete_fdb(index: int, mac: str, dst: Optional[str] = None) -> None:
    kwargs: Dict[str, Any] = {"ifindex": index, "lladdr": mac, "flags": NTF_SELF}
    if dst:
        kwargs["dst"] = dst
    _delete("fdb", kwargs)


def on_link(index: int, ip: str) -> bool:
    """Whether ``ip`` lies in a subnet directly connected on the link (a usable next hop)."""
    return on_link_in(connected_networks(index), ip)


def connected_networks(index: int) -> List[ipaddress.IPv4Network]:
    """The subnets directly connected on the link (one address dump; /32 addresses excluded)."""
    return [iface.network for iface in ipv4_addresses(index) if iface.network.prefixlen < 32]


def on_link_in(networks: List[ipaddress.IPv4Network], ip: str) -> bool:
    """``on_link`` against networks from :func:`connected_networks`: pure Python, no netlink call,
    so a caller judging thousands of next hops needs one address dump, not one per hop."""
    addr = ipaddress.IPv4Address(ip)
    return any(addr in net for net in networks)


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
