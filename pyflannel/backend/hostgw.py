"""host-gw backend: a plain route ``<subnet> via <PublicIP> dev <iface>`` per remote host-gw lease.

Works only when every node shares one L2 segment on the external interface: the next hop must be
on-link.  A lease whose PublicIP is not gets one clear log line (naming the lease, the next hop and
the fix) instead of a kernel "network is unreachable"; ``tick()`` retries and repairs missing routes.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from typing import Any, Dict, List, Set

from pyflannel import netlink
from pyflannel.backend import Backend, BackendError, ExternalInterface, register
from pyflannel.leases import Lease, LeaseAttrs

log = logging.getLogger("pyflannel.backend.hostgw")


@register("host-gw")
class HostGwBackend(Backend):
    def __init__(self, config: Any, ext_iface: ExternalInterface) -> None:
        super().__init__(config, ext_iface)
        if ext_iface.public_ip != ext_iface.address:
            raise BackendError(
                "host-gw cannot work behind NAT: the public IP %s is not the address %s of interface %s; other "
                "nodes route straight to the public IP, so drop --public-ip, pick the interface holding it with "
                "--iface, or use the vxlan backend" % (ext_iface.public_ip, ext_iface.address, ext_iface.name))
        self._want: Dict[ipaddress.IPv4Network, str] = {}  # subnet -> next hop (PublicIP)
        self._unreachable: Set[ipaddress.IPv4Network] = set()  # leases already reported as not on-link
        self._lock = threading.RLock()
        self.repairs = 0

    def prepare(self) -> LeaseAttrs:
        return LeaseAttrs(self.ext_iface.public_ip, "host-gw")

    def configure(self, lease: Lease) -> None:
        with self._lock:
            self.lease = lease

    def _usable(self, lease: Lease) -> bool:
        if lease.attrs.backend_type != "host-gw":
            return False
        return self.lease is None or lease.subnet != self.lease.subnet

    def _install(self, subnet: ipaddress.IPv4Network, hop: str) -> bool:
        if not netlink.on_link(self.ext_iface.index, hop):
            if subnet not in self._unreachable:
                self._unreachable.add(subnet)
                log.error(
                    "host-gw: lease %s has next hop %s, which is not on-link on %s (%s); host-gw needs every node "
                    "on one L2 segment: put the nodes on the same segment, choose the interface that shares one "
                    "with --iface, or use the vxlan backend", subnet, hop, self.ext_iface.name,
                    ", ".join(str(a) for a in netlink.ipv4_addresses(self.ext_iface.index)) or "no address")
            return False
        try:
            netlink.replace_route(subnet, self.ext_iface.index, netlink.RTPROT_HOSTGW, gateway=hop)
        except Exception as err:
            if subnet not in self._unreachable:
                self._unreachable.add(subnet)
                log.error("host-gw: cannot add route %s via %s dev %s: %s", subnet, hop, self.ext_iface.name, err)
            return False
        if subnet in self._unreachable:
            self._unreachable.discard(subnet)
            log.info("host-gw: lease %s is reachable now: route via %s dev %s", subnet, hop, self.ext_iface.name)
        return True

    def lease_added(self, lease: Lease) -> None:
        with self._lock:
            if not self._usable(lease):
                return
            hop = lease.attrs.public_ip
            old = self._want.get(lease.subnet)
            self._want[lease.subnet] = hop
            if old != hop and self._install(lease.subnet, hop):
                log.info("lease %s: route via %s dev %s", lease.subnet, hop, self.ext_iface.name)

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
        """Retry leases that were not reachable and repair missing or altered routes."""
        with self._lock:
            self.repairs += self._reconcile()

    def _reconcile(self) -> int:
        have = {r["dst"]: r for r in netlink.routes(netlink.RTPROT_HOSTGW)}
        for dst, r in have.items():
            if self._want.get(dst) != r["gateway"] or r["oif"] != self.ext_iface.index:
                netlink.delete_route(dst, oif=r["oif"], proto=netlink.RTPROT_HOSTGW, gateway=r["gateway"])
                have[dst] = None
        changed = 0
        for dst, hop in self._want.items():
            if have.get(dst) is None and self._install(dst, hop):
                changed += 1
                log.info("host-gw: route %s via %s dev %s installed", dst, hop, self.ext_iface.name)
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
