"""vxlan backend: device ``flannel.<VNI>``, one neighbour + fdb entry + onlink route per remote lease.

Per remote vxlan lease (subnet S, first address G, VtepMAC M, PublicIP P):

* neighbour ``G lladdr M nud permanent dev flannel.<VNI>``
* fdb ``M dst P self permanent dev flannel.<VNI>``
* route ``S via G dev flannel.<VNI> onlink`` (tagged with :data:`netlink.RTPROT_VXLAN`)

With ``DirectRouting`` a lease whose PublicIP is on-link on the external interface gets a plain
``S via P dev <iface>`` route instead.  Leases of another backend type are ignored (as Go does).
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from typing import Any, Dict, Optional, Set, Tuple

from pyflannel import netlink
from pyflannel.backend import BackendError, ExternalInterface, register
from pyflannel.backend.routes import Hop, Net, RouteBackend
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


@register("vxlan")
class VxlanBackend(RouteBackend):
    offlink_advice = "check the routes to that node (vxlan reaches it through the underlay's routing)"

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
        self.settle_device(msg, self.dev)
        self.mac = msg.get_attr("IFLA_ADDRESS").lower()

    # -- life cycle -------------------------------------------------------------------------------
    def prepare(self) -> LeaseAttrs:
        with self._lock:
            self._ensure_device()
            return LeaseAttrs(self.ext_iface.public_ip, "vxlan", {"VNI": self.vni, "VtepMAC": self.mac})

    def configure(self, lease: Lease) -> None:
        with self._lock:
            self.lease = lease
            msg = netlink.link_by_name(self.dev)
            if msg is not None:
                self.settle_device(msg, self.dev)

    # -- hops -----------------------------------------------------------------------------------------
    def hop_for(self, lease: Lease) -> Optional[Hop]:
        attrs = lease.attrs
        if not self.is_remote(lease) or not attrs.vtep_mac:
            return None
        if self.direct_routing and netlink.on_link(self.ext_iface.index, attrs.public_ip):
            return Hop(lease.subnet, attrs.public_ip, self.ext_iface.index)
        return Hop(lease.subnet, str(lease.subnet.network_address), self.index, onlink=True,
                   vtep_mac=attrs.vtep_mac.lower(), underlay=attrs.public_ip)

    def describe(self, hop: Hop) -> str:
        if not hop.vtep_mac:
            return "direct route via %s dev %s" % (hop.gateway, self.ext_iface.name)
        return "via %s dev %s onlink, VTEP %s at %s" % (hop.gateway, self.dev, hop.vtep_mac, hop.underlay)

    def install_extra(self, hop: Hop) -> None:
        if hop.vtep_mac:
            netlink.replace_neighbour(self.index, hop.gateway, hop.vtep_mac)
            netlink.replace_fdb(self.index, hop.vtep_mac, hop.underlay)

    def uninstall_extra(self, hop: Hop) -> None:
        if not hop.vtep_mac:
            return
        if not any(h.vtep_mac == hop.vtep_mac and h.underlay == hop.underlay for h in self.wanted()):
            netlink.delete_fdb(self.index, hop.vtep_mac, hop.underlay)
        if not any(h.gateway == hop.gateway and h.vtep_mac for h in self.wanted()):
            netlink.delete_neighbour(self.index, hop.gateway)

    def reconcile_extra(self) -> Tuple[int, Set[Net]]:
        """Neighbours and fdb entries on the device match the wanted VTEPs exactly."""
        stale = 0
        fixed: Set[Net] = set()
        vteps = [h for h in self.wanted() if h.vtep_mac]
        neigh = netlink.neighbours(self.index)
        fdb = netlink.fdb_entries(self.index)
        want_neigh = {h.gateway: h.vtep_mac for h in vteps}
        want_fdb = {h.vtep_mac: h.underlay for h in vteps}
        for ip, mac in neigh.items():
            if want_neigh.get(ip) != (mac or "").lower():
                netlink.delete_neighbour(self.index, ip)
                stale += ip not in want_neigh
        for mac, dst in fdb.items():
            if want_fdb.get(mac) != dst:
                netlink.delete_fdb(self.index, mac, dst)
                stale += mac not in want_fdb
        for hop in vteps:
            if (neigh.get(hop.gateway) or "").lower() != hop.vtep_mac or fdb.get(hop.vtep_mac) != hop.underlay:
                self.install_extra(hop)
                fixed.add(hop.dst)
        return stale, fixed

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
                # the hops through the old device now go through the new one
                self._want = {dst: replace(hop, oif=self.index) if hop.vtep_mac else hop
                              for dst, hop in self._want.items()}
                self.repairs += 1 + self._reconcile()
                return
            if (msg.get_attr("IFLA_ADDRESS") or "").lower() != self.mac:
                # our lease tells every peer this VtepMAC; a changed address would black-hole their traffic
                log.warning("%s's MAC was changed to %s behind our back: restoring %s, the lease's VtepMAC",
                            self.dev, msg.get_attr("IFLA_ADDRESS"), self.mac)
                netlink.set_link(self.index, address=self.mac)
                # the kernel flushes the device's neighbours with its address: put them back now
                self.repairs += 1 + self._reconcile()
                return
        super().tick()

    def cleanup(self) -> None:
        with self._lock:
            super().cleanup()
            netlink.delete_link(self.dev)

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
        out = super().status()
        out.update(device=self.dev, vni=self.vni, port=self.port, vtep_mac=self.mac)
        return out
