"""host-gw backend: a plain route ``<subnet> via <PublicIP> dev <iface>`` per remote host-gw lease.

Works only when every node shares one L2 segment on the external interface: the next hop must be
on-link.  A lease whose PublicIP is not gets one clear log line (naming the lease, the next hop and
the fix) instead of a kernel "network is unreachable"; ``tick()`` retries and repairs missing routes.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

from pyflannel import netlink
from pyflannel.backend import Backend, BackendError, ExternalInterface, register
from pyflannel.leases import Lease, LeaseAttrs

log = logging.getLogger("pyflannel.backend.hostgw")

# The periodic full route check may cost at most 1/REPAIR_BUDGET of the time between two checks.
REPAIR_BUDGET = 100
CHEAP_CHECK = 0.02  # seconds: a full check this cheap runs on every tick


@register("host-gw")
class HostGwBackend(Backend):
    def __init__(self, config: Any, ext_iface: ExternalInterface, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config, ext_iface, settings)
        if ext_iface.public_ip != ext_iface.address:
            raise BackendError(
                "host-gw cannot work behind NAT: the public IP %s is not the address %s of interface %s; other "
                "nodes route straight to the public IP, so drop --public-ip, pick the interface holding it with "
                "--iface, or use the vxlan backend" % (ext_iface.public_ip, ext_iface.address, ext_iface.name))
        self._want: Dict[ipaddress.IPv4Network, str] = {}  # subnet -> next hop (PublicIP)
        self._unreachable: Set[ipaddress.IPv4Network] = set()  # leases already reported as not on-link
        self._lock = threading.RLock()
        self.repairs = 0
        self._nets_seen: List[ipaddress.IPv4Network] = []  # connected subnets at the last on-link judgement
        self._checked = 0.0  # time.monotonic() of the last full reconcile
        self._check_cost = 0.0  # how long it took

    def prepare(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext_iface.public_ip, "host-gw")

    def configure(self, lease: Lease) -> None:
        with self._lock:
            self.lease = lease

    def _usable(self, lease: Lease) -> bool:
        if lease.attrs.backend_type != "host-gw":
            return False
        return self.lease is None or lease.subnet != self.lease.subnet

    def _networks(self) -> List[ipaddress.IPv4Network]:
        """The interface's connected subnets: one address dump, judged for every next hop in Python."""
        return netlink.connected_networks(self.ext_iface.index)

    def _install(self, subnet: ipaddress.IPv4Network, hop: str, nets: List[ipaddress.IPv4Network],
                 fresh: List[Tuple[ipaddress.IPv4Network, str, str]]) -> bool:
        """Route ``subnet`` via ``hop``; a lease that cannot be routed is added to ``fresh`` (once,
        until it is reachable again) for :meth:`_report`, so thousands of them cost one log line."""
        if not netlink.on_link_in(nets, hop):
            if subnet not in self._unreachable:
                self._unreachable.add(subnet)
                fresh.append((subnet, hop, ""))
            return False
        try:
            netlink.replace_route(subnet, self.ext_iface.index, netlink.RTPROT_HOSTGW, gateway=hop)
        except Exception as err:
            if subnet not in self._unreachable:
                self._unreachable.add(subnet)
                fresh.append((subnet, hop, str(err) or type(err).__name__))
            return False
        if subnet in self._unreachable:
            self._unreachable.discard(subnet)
            log.info("host-gw: lease %s is reachable now: route via %s dev %s", subnet, hop, self.ext_iface.name)
        return True

    def _report(self, fresh: List[Tuple[ipaddress.IPv4Network, str, str]],
                nets: List[ipaddress.IPv4Network]) -> None:
        """One error line for all leases that just became unroutable (not one per lease, not per tick)."""
        off = [(s, h) for s, h, err in fresh if not err]
        failed = [(s, h, err) for s, h, err in fresh if err]
        if not fresh:
            return
        where = ", ".join(str(a) for a in netlink.ipv4_addresses(self.ext_iface.index)) or "no address"
        advice = ("host-gw needs every node on one L2 segment: put the nodes on the same segment, choose the "
                  "interface that shares one with --iface, or use the vxlan backend")
        if len(off) == 1:
            log.error("host-gw: lease %s has next hop %s, which is not on-link on %s (%s); %s",
                      off[0][0], off[0][1], self.ext_iface.name, where, advice)
        elif off:
            log.error("host-gw: %d leases have next hops that are not on-link on %s (%s) (first: %s via %s); %s; "
                      "%d unroutable lease(s) in total, listed in the agent's status",
                      len(off), self.ext_iface.name, where, off[0][0], off[0][1], advice, len(self._unreachable))
        if len(failed) == 1:
            log.error("host-gw: cannot add route %s via %s dev %s: %s", failed[0][0], failed[0][1],
                      self.ext_iface.name, failed[0][2])
        elif failed:
            log.error("host-gw: cannot add %d routes on %s (first: %s via %s: %s)", len(failed), self.ext_iface.name,
                      failed[0][0], failed[0][1], failed[0][2])

    def lease_added(self, lease: Lease) -> None:
        with self._lock:
            if not self._usable(lease):
                return
            hop = lease.attrs.public_ip
            old = self._want.get(lease.subnet)
            self._want[lease.subnet] = hop
            if old == hop:
                return
            fresh: List[Tuple[ipaddress.IPv4Network, str, str]] = []
            nets = self._networks()
            if self._install(lease.subnet, hop, nets, fresh):
                log.info("lease %s: route via %s dev %s", lease.subnet, hop, self.ext_iface.name)
            self._report(fresh, nets)

    def lease_removed(self, lease: Lease) -> None:
        with self._lock:
            if self._want.pop(lease.subnet, None) is not None:
                netlink.delete_route(lease.subnet, proto=netlink.RTPROT_HOSTGW)
                log.info("lease %s gone: route removed", lease.subnet)
            self._unreachable.discard(lease.subnet)

    def sync(self, leases: List[Lease]) -> None:
        with self._lock:
            self._want = {lease.subnet: lease.attrs.public_ip for lease in leases if self._usable(lease)}
            self._unreachable &= set(self._want)
            self._reconcile()

    def tick(self) -> None:
        """Retry leases that were not reachable and repair missing or altered routes.

        Idle cost with thousands of leases: retrying the unroutable ones costs one address dump (the
        on-link test is pure Python); the full repair (one route dump compared against the wanted
        set) runs when its last run took at most 1/REPAIR_BUDGET of the time since — every tick
        with a few leases, every minute or so with thousands."""
        with self._lock:
            cost = self._check_cost
            if cost < CHEAP_CHECK or time.monotonic() - self._checked >= REPAIR_BUDGET * cost:
                self.repairs += self._reconcile()
            elif self._unreachable:
                self.repairs += self._retry()

    def _retry(self) -> int:
        nets = self._networks()
        if nets == self._nets_seen:
            return 0  # the interface's subnets did not change: the same hops are still off-link
        fresh: List[Tuple[ipaddress.IPv4Network, str, str]] = []
        changed = 0
        for dst in sorted(self._unreachable):
            hop = self._want.get(dst)
            if hop is not None and self._install(dst, hop, nets, fresh):
                changed += 1
        self._nets_seen = nets
        self._report(fresh, nets)
        return changed

    def _reconcile(self) -> int:
        began = time.monotonic()
        nets = self._networks()
        fresh: List[Tuple[ipaddress.IPv4Network, str, str]] = []
        have = {r["dst"]: r for r in netlink.routes(netlink.RTPROT_HOSTGW)}
        index = self.ext_iface.index
        for dst, r in have.items():
            if self._want.get(dst) != r["gateway"] or r["oif"] != index:
                netlink.delete_route(dst, oif=r["oif"], proto=netlink.RTPROT_HOSTGW, gateway=r["gateway"])
                have[dst] = None
        changed = 0
        installed = 0
        for dst, hop in self._want.items():
            if have.get(dst) is None and self._install(dst, hop, nets, fresh):
                changed += 1
                installed += 1
                if installed <= 10:
                    log.info("host-gw: route %s via %s dev %s installed", dst, hop, self.ext_iface.name)
        if installed > 10:
            log.info("host-gw: %d more routes installed on %s", installed - 10, self.ext_iface.name)
        self._report(fresh, nets)
        self._nets_seen = nets
        self._checked = time.monotonic()
        self._check_cost = self._checked - began
        return changed

    def cleanup(self) -> None:
        with self._lock:
            netlink.delete_routes(netlink.RTPROT_HOSTGW)
            self._want = {}

    @classmethod
    def remove_installed(cls, ext_iface: ExternalInterface) -> None:
        count = netlink.delete_routes(netlink.RTPROT_HOSTGW)
        if count:
            log.info("removed %d route(s) an earlier host-gw backend left", count)

    def status(self) -> Dict[str, Any]:
        return {"backend": self.name, "interface": self.ext_iface.name, "mtu": self.mtu(),
                "remote_leases": len(self._want), "unreachable_leases": sorted(str(s) for s in self._unreachable)}

    def metrics(self) -> Dict[str, float]:
        return {"datapath_remote_leases": float(len(self._want)),
                "datapath_unreachable_leases": float(len(self._unreachable)),
                "datapath_repairs_total": float(self.repairs)}
