"""vxlan backend: device ``flannel.<VNI>``, one neighbour + fdb entry + onlink route per remote lease.

Per remote vxlan lease (subnet S, first address G, VtepMAC M, PublicIP P):

* neighbour ``G lladdr M nud permanent dev flannel.<VNI>``
* fdb ``M dst P self permanent dev flannel.<VNI>``
* route ``S via G dev flannel.<VNI> onlink`` (tagged with :data:`netlink.RTPROT_VXLAN`)

With ``DirectRouting`` a lease whose PublicIP is on-link on the external interface gets a plain
``S via P dev <iface>`` route instead.  Leases of another backend type are ignored (as Go does).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
from typing import Any, Dict, List, Optional, Tuple

from pyflannel import netlink
from pyflannel.backend import Backend, BackendError, ExternalInterface, register
from pyflannel.leases import Lease, LeaseAttrs

log = logging.getLogger("pyflannel.backend.vxlan")

DEFAULT_PORT = 8472  # the kernel's default when no port is given (Go's Port 0)


def device_name(vni: int) -> str:
    return "flannel.%d" % vni


def _is_flannel_vxlan(msg: Any) -> bool:
    name = msg.get_attr("IFLA_IFNAME") or ""
    return name.startswith("flannel.") and name[len("flannel."):].isdigit() and netlink.link_kind(msg) == "vxlan"


def vtep_mac(prefix: str = "") -> str:
    """A random locally administered unicast MAC, starting with ``prefix`` (Backend.MacPrefix) if given.

    The device is always created with a MAC of ours. If the kernel picked a random one instead, udev on
    systemd hosts (99-default.link: MACAddressPolicy=persistent) would replace it a moment after the
    device appears, after that first MAC already went into our lease as the VtepMAC."""
    parts = [p for p in prefix.replace("-", ":").split(":") if p]
    if prefix and (not 1 <= len(parts) <= 5 or not all(len(p) == 2 for p in parts)):
        raise BackendError("vxlan MacPrefix %r is not like \"0E-2A\"; fix Backend.MacPrefix in the network config"
                           % prefix)
    try:
        octets = [int(p, 16) for p in parts]
    except ValueError:
        raise BackendError("vxlan MacPrefix %r is not hexadecimal; fix Backend.MacPrefix in the network config"
                           % prefix) from None
    octets += list(os.urandom(6 - len(octets)))
    octets[0] = (octets[0] | 0x02) & 0xFE  # locally administered, unicast
    return ":".join("%02x" % o for o in octets)


# What one remote lease needs: ("vxlan", gateway G, mac, public ip) or ("direct", public ip).
Want = Tuple[str, ...]


@register("vxlan")
class VxlanBackend(Backend):
    def __init__(self, config: Any, ext_iface: ExternalInterface, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config, ext_iface, settings)
        self.vni = int(config.option("VNI") if config.option("VNI") is not None else 1)
        self.port = int(config.option("Port") or 0) or DEFAULT_PORT
        self.gbp = bool(config.option("GBP"))
        self.learning = bool(config.option("Learning"))
        self.direct_routing = bool(config.option("DirectRouting"))
        self.dev = device_name(self.vni)
        self.index = 0
        self.mac = ""
        self._want: Dict[ipaddress.IPv4Network, Want] = {}
        self._lock = threading.RLock()
        self.repairs = 0

    # -- device -----------------------------------------------------------------------------------
    def _device_matches(self, msg: Any) -> bool:
        if netlink.link_kind(msg) != "vxlan":
            return False
        data = netlink.link_info_data(msg)
        if data is None:
            return False
        return (data.get_attr("IFLA_VXLAN_ID") == self.vni
                and (data.get_attr("IFLA_VXLAN_PORT") or DEFAULT_PORT) == self.port
                and data.get_attr("IFLA_VXLAN_LOCAL") == self.ext_iface.address
                and data.get_attr("IFLA_VXLAN_LINK") == self.ext_iface.index
                and bool(data.get_attr("IFLA_VXLAN_LEARNING")) == self.learning
                and (data.get_attr("IFLA_VXLAN_GBP") is not None) == self.gbp)

    def _ensure_device(self) -> None:
        for msg in netlink.links():
            name = msg.get_attr("IFLA_IFNAME")
            if name != self.dev and _is_flannel_vxlan(msg):
                log.info("removing %s left over from an earlier VNI (now VNI %d)", name, self.vni)
                netlink.delete_link(name)
        msg = netlink.link_by_name(self.dev)
        if msg is not None and not self._device_matches(msg):
            log.info("%s does not match the config (VNI %d, port %d, local %s on %s): recreating it",
                     self.dev, self.vni, self.port, self.ext_iface.address, self.ext_iface.name)
            netlink.delete_link(self.dev)
            msg = None
        if msg is None:
            kwargs: Dict[str, Any] = {
                "ifname": self.dev, "kind": "vxlan", "vxlan_id": self.vni, "vxlan_port": self.port,
                "vxlan_local": self.ext_iface.address, "vxlan_link": self.ext_iface.index,
                "vxlan_learning": self.learning, "vxlan_udp_csum": False,
            }
            if self.gbp:
                kwargs["vxlan_gbp"] = True
            # a device recreated by tick() keeps the VtepMAC our lease already tells every peer
            kwargs["address"] = self.mac or vtep_mac(self.config.option("MacPrefix") or "")
            try:
                with netlink.lock():
                    netlink.ipr().link("add", **kwargs)
            except Exception as err:
                raise BackendError(
                    "cannot create vxlan device %s (VNI %d, port %d) on %s: %s; is another device using this VNI "
                    "or UDP port?" % (self.dev, self.vni, self.port, self.ext_iface.name, err)) from err
            msg = netlink.link_by_name(self.dev)
            if msg is None:
                raise BackendError("vxlan device %s vanished right after it was created" % self.dev)
        self.index = msg["index"]
        if msg.get_attr("IFLA_MTU") != self.mtu():
            netlink.set_link(self.index, mtu=self.mtu())
        if not msg["flags"] & 1:
            netlink.set_link(self.index, state="up")
        self.mac = msg.get_attr("IFLA_ADDRESS").lower()

    # -- life cycle -------------------------------------------------------------------------------
    def prepare(self) -> LeaseAttrs:
        with self._lock:
            self._ensure_device()
            return LeaseAttrs(self.ext_iface.public_ip, "vxlan", {"VNI": self.vni, "VtepMAC": self.mac})

    def configure(self, lease: Lease) -> None:
        with self._lock:
            self.lease = lease
            gw = ipaddress.IPv4Interface("%s/32" % lease.subnet.network_address)
            if netlink.set_only_address(self.index, gw):
                log.info("%s has address %s (lease %s)", self.dev, gw, lease.subnet)

    def _want_for(self, lease: Lease) -> Optional[Want]:
        attrs = lease.attrs
        if attrs.backend_type != "vxlan" or not attrs.vtep_mac:
            return None
        if self.lease is not None and lease.subnet == self.lease.subnet:
            return None
        if self.direct_routing and netlink.on_link(self.ext_iface.index, attrs.public_ip):
            return ("direct", attrs.public_ip)
        return ("vxlan", str(lease.subnet.network_address), attrs.vtep_mac.lower(), attrs.public_ip)

    def _install(self, subnet: ipaddress.IPv4Network, want: Want) -> None:
        if want[0] == "direct":
            netlink.replace_route(subnet, self.ext_iface.index, netlink.RTPROT_VXLAN, gateway=want[1])
            return
        _subnet, gw, mac, public_ip = want
        netlink.replace_neighbour(self.index, gw, mac)
        netlink.replace_fdb(self.index, mac, public_ip)
        netlink.replace_route(subnet, self.index, netlink.RTPROT_VXLAN, gateway=gw, onlink=True)

    def _uninstall(self, subnet: ipaddress.IPv4Network, want: Want) -> None:
        if want[0] == "direct":
            netlink.delete_route(subnet, proto=netlink.RTPROT_VXLAN)
            return
        _subnet, gw, mac, public_ip = want
        netlink.delete_route(subnet, proto=netlink.RTPROT_VXLAN)
        if mac not in {w[2] for s, w in self._want.items() if w[0] == "vxlan" and s != subnet}:
            netlink.delete_fdb(self.index, mac, public_ip)
        netlink.delete_neighbour(self.index, gw)

    def lease_added(self, lease: Lease) -> None:
        with self._lock:
            want = self._want_for(lease)
            old = self._want.get(lease.subnet)
            if want is None:
                if old is not None:
                    self._uninstall(lease.subnet, old)
                    del self._want[lease.subnet]
                return
            if old == want:
                return  # unchanged (e.g. the node restarted and rewrote its lease): no route churn
            if old is not None:
                self._uninstall(lease.subnet, old)
            self._want[lease.subnet] = want
            self._install(lease.subnet, want)
            log.info("lease %s: %s", lease.subnet, self._describe(want))

    def lease_removed(self, lease: Lease) -> None:
        with self._lock:
            old = self._want.pop(lease.subnet, None)
            if old is not None:
                self._uninstall(lease.subnet, old)
                log.info("lease %s gone: removed its route, neighbour and fdb entry", lease.subnet)

    def sync(self, leases: List[Lease]) -> None:
        with self._lock:
            want = {}
            for lease in leases:
                w = self._want_for(lease)
                if w is not None:
                    want[lease.subnet] = w
            self._want = want
            self._reconcile()

    def tick(self) -> None:
        """Recreate a vanished device and repair missing or altered routes/neighbours/fdb entries."""
        with self._lock:
            if self.lease is None:
                return
            msg = netlink.link_by_name(self.dev)
            if msg is None or msg["index"] != self.index:
                log.warning("%s disappeared: recreating it", self.dev)
                self._ensure_device()
                self.configure(self.lease)
            elif (msg.get_attr("IFLA_ADDRESS") or "").lower() != self.mac:
                # our lease tells every peer this VtepMAC; a changed address would black-hole their traffic
                log.warning("%s's MAC was changed to %s behind our back: restoring %s, the lease's VtepMAC",
                            self.dev, msg.get_attr("IFLA_ADDRESS"), self.mac)
                netlink.set_link(self.index, address=self.mac)
                self.repairs += 1
            self.repairs += self._reconcile()

    def _describe(self, want: Want) -> str:
        if want[0] == "direct":
            return "direct route via %s dev %s" % (want[1], self.ext_iface.name)
        return "via %s dev %s onlink, VTEP %s at %s" % (want[1], self.dev, want[2], want[3])

    def _reconcile(self) -> int:
        """Make routes, neighbours and fdb entries match ``self._want`` exactly; returns the changes."""
        changed = 0
        routes: Dict[ipaddress.IPv4Network, Any] = {r["dst"]: r for r in netlink.routes(netlink.RTPROT_VXLAN)}
        for dst, r in routes.items():
            w = self._want.get(dst)
            ok = w is not None and (
                (w[0] == "direct" and r["oif"] == self.ext_iface.index and r["gateway"] == w[1])
                or (w[0] == "vxlan" and r["oif"] == self.index and r["gateway"] == w[1] and r["onlink"]))
            if not ok:
                netlink.delete_route(dst, oif=r["oif"], proto=netlink.RTPROT_VXLAN, gateway=r["gateway"])
                routes[dst] = None
                changed += 1
        neigh = netlink.neighbours(self.index)
        fdb = netlink.fdb_entries(self.index)
        want_neigh = {w[1]: w[2] for w in self._want.values() if w[0] == "vxlan"}
        want_fdb = {w[2]: w[3] for w in self._want.values() if w[0] == "vxlan"}
        for ip, mac in neigh.items():
            if want_neigh.get(ip) != (mac or "").lower():
                netlink.delete_neighbour(self.index, ip)
                changed += 1
        for mac, dst in fdb.items():
            if want_fdb.get(mac) != dst:
                netlink.delete_fdb(self.index, mac, dst)
                changed += 1
        for dst, w in self._want.items():
            r = routes.get(dst)
            if w[0] == "vxlan":
                if neigh.get(w[1], "").lower() != w[2] or fdb.get(w[2]) != w[3] or r is None \
                        or r["oif"] != self.index or r["gateway"] != w[1]:
                    self._install(dst, w)
                    changed += 1
            elif r is None or r["oif"] != self.ext_iface.index or r["gateway"] != w[1]:
                self._install(dst, w)
                changed += 1
        if changed:
            log.info("%s: %d route/neighbour/fdb change(s) to match %d remote lease(s)",
                     self.dev, changed, len(self._want))
        return changed

    def cleanup(self) -> None:
        with self._lock:
            netlink.delete_routes(netlink.RTPROT_VXLAN)
            netlink.delete_link(self.dev)
            self._want = {}

    @classmethod
    def remove_installed(cls, ext_iface: ExternalInterface) -> None:
        removed = [m.get_attr("IFLA_IFNAME") for m in netlink.links() if _is_flannel_vxlan(m)]
        for name in removed:
            netlink.delete_link(name)
        routes = netlink.delete_routes(netlink.RTPROT_VXLAN)
        if removed or routes:
            log.info("removed what an earlier vxlan backend left: devices %s, %d route(s)",
                     ", ".join(removed) or "none", routes)

    # -- observability ----------------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        return {"backend": self.name, "device": self.dev, "vni": self.vni, "port": self.port, "vtep_mac": self.mac,
                "mtu": self.mtu(), "remote_leases": len(self._want)}

    def metrics(self) -> Dict[str, float]:
        return {"datapath_remote_leases": float(len(self._want)), "datapath_repairs_total": float(self.repairs)}
