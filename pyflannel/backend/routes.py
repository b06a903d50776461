"""The routes of the backends: one route per remote lease (:class:`RouteBackend`), or one per network
(:func:`reconcile_network_routes`).

A backend whose device carries the whole network (udp, wireguard) wants one route per network through that
device; :func:`reconcile_network_routes` makes the kernel's routes of its protocol exactly those.

A route backend (host-gw, vxlan) says per lease which :class:`Hop` s it wants (:meth:`RouteBackend.hops_for`:
one per address family the lease and the network share; the wanted set is keyed by destination subnet,
IPv4 and IPv6 side by side);
this base installs it, removes it when the lease goes, makes the kernel's routes (tagged with the
catalogue's route protocol id for the backend) match the wanted set exactly on every snapshot, and
repairs them from ``tick()``.  Backends that need more per hop than a route (vxlan's neighbour and fdb
entries) add it in :meth:`RouteBackend.install_extra` / :meth:`RouteBackend.uninstall_extra` /
:meth:`RouteBackend.reconcile_extra`.

A hop straight out of the external interface (``oif`` is that interface, no ``onlink`` flag) needs its
gateway on-link there.  One that is not is not handed to the kernel: it is reported in one log line
for all such leases (not one per lease, not per tick) and retried when the interface's addresses change.

Idle cost with thousands of leases: the full check (one route dump against the wanted set) runs on every
tick for up to :data:`FEW_HOPS` hops or when its last run took less than :data:`CHEAP_CHECK` seconds, else
when its last run took at most 1/:data:`REPAIR_BUDGET` of the time since; in between only the unroutable
hops are retried, and only when the interface's connected subnets changed.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Set, Tuple

from pyflannel import catalogue, netlink
from pyflannel.backend import Backend, ExternalInterface
from pyflannel.leases import Lease

log = logging.getLogger("pyflannel.backend.routes")

REPAIR_BUDGET = 100  # the periodic full check may cost at most 1/REPAIR_BUDGET of the time between checks
CHEAP_CHECK = 0.02  # seconds: a full check this cheap runs on every tick
FEW_HOPS = 100  # with this many wanted hops or fewer the full check runs on every tick, however busy the CPU
SHOWN = 10  # routes named one by one in the log per pass; the rest are counted

Net = Any  # ipaddress.IPv4Network or IPv6Network


def usable_ipv6_peer(ip: Optional[str]) -> bool:
    """A PublicIPv6 a route or fdb entry may point at: unicast, not link-local, loopback or unspecified.
    The lease validator refuses the others before a backend sees them; this keeps the datapath safe
    on its own (a multicast fdb destination would flood the overlay)."""
    if not ip:
        return False
    try:
        addr = ipaddress.IPv6Address(ip)
    except ValueError:
        return False
    return not (addr.is_multicast or addr.is_link_local or addr.is_loopback or addr.is_unspecified
                or addr.ipv4_mapped is not None)


def _net_order(net: Any) -> Tuple[int, Any]:
    """A sort key for a mix of IPv4 and IPv6 networks (IPv4 first)."""
    return (net.version, net)


def our_routes(proto: int, ipv6: bool) -> List[Dict[str, Any]]:
    """The kernel's routes tagged ``proto``, both families (a network that no longer has IPv6 must not keep
    IPv6 routes); a kernel without IPv6 has none of those: its failing IPv6 dump is an error only when
    ``ipv6`` (the network carries IPv6)."""
    out = netlink.routes(proto)
    try:
        out += netlink.routes(proto, socket.AF_INET6)
    except Exception as err:  # IPv6 disabled in the kernel (ipv6.disable=1)
        if ipv6:
            raise
        log.debug("no IPv6 route dump: %s", err)
    return out


def reconcile_network_routes(proto: int, wanted: Dict[Net, int], ipv6: bool) -> Tuple[int, List[Net]]:
    """The routes of a backend whose device carries a whole network (udp, wireguard): make the kernel's
    routes tagged ``proto`` exactly ``wanted``, network -> ifindex of the device it goes out of (no
    gateway), IPv4 and IPv6 side by side.  Returns (routes removed, networks installed)."""
    removed = 0
    kept = []
    for route in our_routes(proto, ipv6):
        if wanted.get(route["dst"]) != route["oif"] or route["gateway"]:
            netlink.delete_route(route["dst"], oif=route["oif"], proto=proto, gateway=route["gateway"])
            removed += 1
        else:
            kept.append(route)
    installed = []
    for network, index in wanted.items():
        if not any(r["dst"] == network and r["oif"] == index for r in kept):
            netlink.replace_route(network, index, proto)
            installed.append(network)
    return removed, installed


@dataclass(frozen=True)
class Hop:
    """What one remote lease needs in one address family: ``dst via gateway dev oif [onlink]``, plus, for a
    VTEP behind an overlay device, the MAC and underlay address (``vtep_mac``, ``underlay``).  The family is
    the one of ``dst``; ``gateway``/``underlay`` are canonical address text."""

    dst: Net
    gateway: str
    oif: int
    onlink: bool = False
    vtep_mac: str = ""
    underlay: str = ""

    def matches(self, route: Dict[str, Any]) -> bool:
        return (route["oif"] == self.oif and route["gateway"] == self.gateway
                and (not self.onlink or bool(route["onlink"])))


Failure = Tuple[Net, str, str]  # (subnet, gateway, error text; "" = not on-link)


class RouteBackend(Backend):
    """Base of route backends.  Subclasses implement :meth:`hops_for` and may override :meth:`describe` and
    the ``*_extra`` hooks."""

    # What an operator can do about a gateway that is not on-link (subclasses say it their way).
    offlink_advice = "put the nodes on one L2 segment or choose the interface that shares one with --iface"

    def __init__(self, config: Any, ext_iface: ExternalInterface, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config, ext_iface, settings)
        self.proto: int = self.spec.route_proto
        self._want: Dict[Net, Hop] = {}
        self._unreachable: Set[Net] = set()  # wanted hops already reported as not routable
        self._lock = threading.RLock()
        self.repairs = 0
        self._nets_seen: List[Net] = []  # connected subnets at the last on-link judgement
        self._checked = 0.0  # time.monotonic() of the last full check
        self._check_cost = 0.0  # how long it took

    # -- what subclasses say --------------------------------------------------------------------------
    def hops_for(self, lease: Lease) -> List[Hop]:
        """The hops a remote lease needs, at most one per address family (none: ignore the lease)."""
        raise NotImplementedError

    def describe(self, hop: Hop) -> str:
        return "via %s dev %s%s" % (hop.gateway, self._dev_name(hop.oif), " onlink" if hop.onlink else "")

    def install_extra(self, hop: Hop) -> None:
        """Program what ``hop`` needs besides its route (called before the route is installed)."""

    def uninstall_extra(self, hop: Hop) -> None:
        """Remove what :meth:`install_extra` added for ``hop`` (it is no longer wanted)."""

    def reconcile_extra(self) -> Tuple[int, Set[Net]]:
        """Make the extras match the wanted hops exactly: (stale entries removed, subnets of the
        wanted hops whose extras had to be put right)."""
        return 0, set()

    # -- helpers for subclasses -----------------------------------------------------------------------
    def wanted(self) -> List[Hop]:
        return list(self._want.values())

    def _dev_name(self, index: int) -> str:
        return self.ext_iface.name if index == self.ext_iface.index else "#%d" % index

    # -- the interface ----------------------------------------------------------------------------------
    def configure(self, lease: Lease) -> None:
        with self._lock:
            self.lease = lease

    def lease_added(self, lease: Lease) -> None:
        with self._lock:
            hops = {hop.dst: hop for hop in self.hops_for(lease)}
            fresh: List[Failure] = []
            nets: Optional[List[Net]] = None
            for subnet in lease.subnets():
                hop = hops.get(subnet)
                old = self._want.get(subnet)
                if hop is None:
                    if old is not None:
                        self._unreachable.discard(subnet)
                        self._uninstall(self._want.pop(subnet))
                    continue
                if old == hop:
                    continue  # unchanged (the node restarted and rewrote its lease): no route churn
                self._want[subnet] = hop
                if old is not None:
                    self.uninstall_extra(old)  # after the swap: an extra the new hop shares is kept
                if nets is None:
                    nets = self._networks()
                if self._install(hop, nets, fresh):
                    log.debug("%s: lease %s: %s", self.name, subnet, self.describe(hop))
            self._report(fresh)

    def lease_removed(self, lease: Lease) -> None:
        with self._lock:
            for subnet in lease.subnets():
                old = self._want.pop(subnet, None)
                self._unreachable.discard(subnet)
                if old is not None:
                    self._uninstall(old)
                    log.debug("%s: lease %s gone: its route removed", self.name, subnet)

    def sync(self, leases: List[Lease]) -> None:
        with self._lock:
            want = {}
            for lease in leases:
                for hop in self.hops_for(lease):
                    want[hop.dst] = hop
            self._want = want
            self._unreachable &= set(want)
            self._reconcile()

    def tick(self) -> None:
        """Repair missing or altered routes (paced by the check's own cost) and retry unroutable hops."""
        with self._lock:
            cost = self._check_cost
            if (len(self._want) <= FEW_HOPS or cost < CHEAP_CHECK
                    or time.monotonic() - self._checked >= REPAIR_BUDGET * cost):
                self.repairs += self._reconcile()
            elif self._unreachable:
                self.repairs += self._retry()

    def cleanup(self) -> None:
        with self._lock:
            netlink.delete_routes(self.proto)
            self._want = {}
            self._unreachable = set()

    @classmethod
    def remove_installed(cls, ext_iface: ExternalInterface) -> None:
        count = netlink.delete_routes(catalogue.get(cls.name).route_proto)
        if count:
            log.info("removed %d route(s) an earlier %s backend left", count, cls.name)

    def status(self) -> Dict[str, Any]:
        return {"backend": self.name, "interface": self.ext_iface.name, "mtu": self.mtu(),
                "remote_leases": len(self._want),
                "unreachable_leases": [str(s) for s in sorted(self._unreachable, key=_net_order)]}

    def metrics(self) -> Dict[str, float]:
        return {"datapath_remote_leases": float(len(self._want)),
                "datapath_unreachable_leases": float(len(self._unreachable)),
                "datapath_repairs_total": float(self.repairs)}

    # -- the loop ---------------------------------------------------------------------------------------
    def _networks(self) -> List[Net]:
        """The external interface's connected subnets (IPv4, and IPv6 when the network has IPv6): one
        address dump per family, judged per hop in Python."""
        nets = netlink.connected_networks(self.ext_iface.index) if self.enable_ipv4 else []
        if self.enable_ipv6:
            nets = nets + netlink.connected_networks(self.ext_iface.index, socket.AF_INET6)
        return nets

    def _install(self, hop: Hop, nets: List[Net], fresh: List[Failure]) -> bool:
        """Program ``hop``; one that cannot be goes to ``fresh`` (once, until it works again)."""
        dst = hop.dst
        if hop.oif == self.ext_iface.index and not hop.onlink and not netlink.on_link_in(nets, hop.gateway):
            if dst not in self._unreachable:
                self._unreachable.add(dst)
                fresh.append((dst, hop.gateway, ""))
            return False
        try:
            self.install_extra(hop)
            netlink.replace_route(dst, hop.oif, self.proto, gateway=hop.gateway, onlink=hop.onlink)
        except Exception as err:
            if dst not in self._unreachable:
                self._unreachable.add(dst)
                fresh.append((dst, hop.gateway, str(err) or type(err).__name__))
            return False
        if dst in self._unreachable:
            self._unreachable.discard(dst)
            log.info("%s: lease %s is reachable now: %s", self.name, dst, self.describe(hop))
        return True

    def _uninstall(self, hop: Hop) -> None:
        netlink.delete_route(hop.dst, proto=self.proto)
        self.uninstall_extra(hop)

    def _report(self, fresh: List[Failure]) -> None:
        """One error line for all hops that just became unroutable."""
        if not fresh:
            return
        off = [(s, g) for s, g, err in fresh if not err]
        failed = [(s, g, err) for s, g, err in fresh if err]
        name, iface = self.name, self.ext_iface.name
        if off:
            addrs: List[Any] = list(netlink.ipv4_addresses(self.ext_iface.index))
            if any(s.version == 6 for s, _g in off):
                addrs += netlink.global_addresses(self.ext_iface.index, socket.AF_INET6, usable=False)
            where = ", ".join(str(a) for a in addrs) or "no address"
            if len(off) == 1:
                log.error("%s: lease %s has next hop %s, which is not on-link on %s (%s); %s",
                          name, off[0][0], off[0][1], iface, where, self.offlink_advice)
            else:
                log.error("%s: %d leases have next hops that are not on-link on %s (%s) (first: %s via %s); %s; "
                          "%d unroutable lease(s) in total, listed in the agent's status",
                          name, len(off), iface, where, off[0][0], off[0][1], self.offlink_advice,
                          len(self._unreachable))
        if len(failed) == 1:
            log.error("%s: cannot add route %s via %s: %s", name, failed[0][0], failed[0][1], failed[0][2])
        elif failed:
            log.error("%s: cannot add %d routes (first: %s via %s: %s)", name, len(failed), failed[0][0],
                      failed[0][1], failed[0][2])

    def _retry(self) -> int:
        nets = self._networks()
        if nets == self._nets_seen:
            return 0  # the interface's subnets did not change: the same hops are still off-link
        fresh: List[Failure] = []
        changed = 0
        for dst in sorted(self._unreachable, key=_net_order):
            hop = self._want.get(dst)
            if hop is not None and self._install(hop, nets, fresh):
                changed += 1
        self._nets_seen = nets
        self._report(fresh)
        return changed

    def _reconcile(self) -> int:
        """Make the kernel's routes of our protocol (and the extras) match the wanted hops exactly;
        returns the number of stale entries removed plus the number of leases put right."""
        began = time.monotonic()
        nets = self._networks()
        fresh: List[Failure] = []
        have: Dict[Net, Optional[Dict[str, Any]]] = {r["dst"]: r for r in our_routes(self.proto, self.enable_ipv6)}
        stale = 0  # routes nobody wants (reconcile_extra counts the neighbours and fdb entries)
        for dst, route in list(have.items()):
            hop = self._want.get(dst)
            if hop is None or not hop.matches(route):
                netlink.delete_route(dst, oif=route["oif"], proto=self.proto, gateway=route["gateway"])
                have[dst] = None
                stale += hop is None
        extra_stale, fixed = self.reconcile_extra()
        installed = 0
        for dst, hop in self._want.items():
            if have.get(dst) is None and self._install(hop, nets, fresh):
                fixed.add(dst)
                installed += 1
                if installed <= SHOWN:
                    log.info("%s: route %s %s installed", self.name, dst, self.describe(hop))
        if installed > SHOWN:
            log.info("%s: %d more routes installed", self.name, installed - SHOWN)
        self._report(fresh)
        self._nets_seen = nets
        self._checked = time.monotonic()
        self._check_cost = self._checked - began
        return stale + extra_stale + len(fixed)  # a lease put right counts once
