"""vxlan backend: device ``flannel.<VNI>``, one neighbour + fdb entry + onlink route per remote lease.

Per remote vxlan lease (subnet S, first address G, VtepMAC M, PublicIP P):

* neighbour ``G lladdr M nud permanent dev flannel.<VNI>``
* fdb ``M dst P self permanent dev flannel.<VNI>``
* route ``S via G dev flannel.<VNI> onlink`` (tagged with :data:`netlink.RTPROT_VXLAN`)

With ``DirectRouting`` a lease whose PublicIP is on-link on the external interface gets a plain
``S via P dev <iface>`` route instead.  Leases of another backend type are ignored (as Go does).

IPv6 (Go v0.20): a network with IPv6 gets a second device ``flannel-v6.<VNI>`` over the IPv6 underlay
(local = our IPv6 address, the same VNI/port/learning/GBP settings, a VtepMAC of its own published in
BackendV6Data), addressed with our IPv6 subnet's network address as a /128, and per remote lease with an
IPv6 subnet (S6, network address G6, V6 VtepMAC M6, PublicIPv6 P6) the same three entries on that device:
neighbour ``G6 lladdr M6``, fdb ``M6 dst P6``, route ``S6 via G6 dev flannel-v6.<VNI> onlink`` (or, with
DirectRouting and P6 on-link, ``S6 via P6 dev <iface>``).  An IPv6-only network has no ``flannel.<VNI>``.
The IPv6 device's MTU is the interface's minus 70 (IPv6 underlay headers; what the kernel gives a vxlan
device over IPv6, which is what Go v0.20's device gets as it sets none).  FLANNEL_MTU is the smallest
MTU of the devices in use: interface - 50 on IPv4-only networks, interface - 70 once IPv6 is on (Go
announces interface - 50 there too, and full-size IPv6 container packets then meet "packet too big").
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import replace
from typing import Any, Dict, List, Optional, Set, Tuple

from pyflannel import catalogue, netlink
from pyflannel.backend import BackendError, ExternalInterface, register
from pyflannel.backend.routes import Hop, Net, RouteBackend, usable_ipv6_peer
from pyflannel.leases import Lease, LeaseAttrs

log = logging.getLogger("pyflannel.backend.vxlan")

DEFAULT_PORT = catalogue.get("vxlan").underlay[2]  # the kernel's default when no port is given (Go's Port 0)
OVERHEAD6 = 70  # IPv6 + UDP + VXLAN + inner Ethernet: the flannel-v6 device's MTU is the interface's minus this


def device_name(vni: int, version: int = 4) -> str:
    return ("flannel.%d" if version == 4 else "flannel-v6.%d") % vni


def _is_flannel_vxlan(msg: Any, version: int = 4) -> bool:
    """A ``flannel.<N>`` (``version=6``: ``flannel-v6.<N>``) vxlan device."""
    prefix = "flannel." if version == 4 else "flannel-v6."
    name = msg.get_attr("IFLA_IFNAME") or ""
    return name.startswith(prefix) and name[len(prefix):].isdigit() and netlink.link_kind(msg) == "vxlan"


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


class _Device:
    """One of the backend's vxlan devices: ``flannel.<VNI>`` (IPv4 underlay) or ``flannel-v6.<VNI>``."""

    def __init__(self, version: int, name: str) -> None:
        self.version = version
        self.name = name
        self.index = 0
        self.mac = ""
        self.family = socket.AF_INET if version == 4 else socket.AF_INET6


@register("vxlan")
class VxlanBackend(RouteBackend):
    offlink_advice = "check the routes to that node (vxlan reaches it through the underlay's routing)"

    def __init__(self, config: Any, ext_iface: ExternalInterface, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config, ext_iface, settings)
        vni = config.option("VNI")
        self.vni = int(self.default("VNI") if vni is None else vni)
        self.port = int(config.option("Port") or 0) or DEFAULT_PORT
        self.gbp = bool(config.option("GBP"))
        self.learning = bool(config.option("Learning"))
        self.direct_routing = bool(config.option("DirectRouting"))
        self.dev = device_name(self.vni)
        self.dev6 = device_name(self.vni, 6)
        self.devices: Dict[int, _Device] = {}  # version -> device, for the families the network carries
        if self.enable_ipv4:
            self.devices[4] = _Device(4, self.dev)
        if self.enable_ipv6:
            if not ext_iface.address6:
                raise BackendError(
                    "vxlan on a network with IPv6 needs an IPv6 address on interface %s (none found) for %s; give "
                    "the interface a global IPv6 address, pick one that has it with --iface, or set EnableIPv6 to "
                    "false" % (ext_iface.name, self.dev6))
            self.devices[6] = _Device(6, self.dev6)

    # the IPv4 device's index and MAC (0 / "" on an IPv6-only network), as before IPv6
    @property
    def index(self) -> int:
        dev = self.devices.get(4)
        return dev.index if dev else 0

    @property
    def mac(self) -> str:
        dev = self.devices.get(4)
        return dev.mac if dev else ""

    @property
    def mac6(self) -> str:
        dev = self.devices.get(6)
        return dev.mac if dev else ""

    def mtu6(self) -> int:
        """The flannel-v6 device's MTU: the ``MTU`` option, else the interface's MTU minus 70."""
        override = self.config.option("MTU")
        return int(override) if override else self.ext_iface.mtu - OVERHEAD6

    def mtu(self) -> int:
        """FLANNEL_MTU: the smallest MTU of the devices the network uses, so a container's full-size
        packet fits the IPv6 device too (Go v0.20 announces the IPv4 device's, interface - 50, also on
        dual-stack networks, and full-size IPv6 packets then meet "packet too big")."""
        mtus = [self.mtu4()] if self.enable_ipv4 else []
        if self.enable_ipv6:
            mtus.append(self.mtu6())
        return min(mtus or [self.mtu4()])

    def mtu4(self) -> int:
        """The flannel.<VNI> device's MTU: the ``MTU`` option, else the interface's MTU minus 50."""
        return super().mtu()

    def _device_mtu(self, dev: _Device) -> int:
        return self.mtu4() if dev.version == 4 else self.mtu6()

    def _local(self, dev: _Device) -> Optional[str]:
        return self.ext_iface.address if dev.version == 4 else self.ext_iface.address6

    # -- device -----------------------------------------------------------------------------------
    def _device_matches(self, msg: Any, dev: _Device) -> bool:
        if netlink.link_kind(msg) != "vxlan":
            return False
        data = netlink.link_info_data(msg)
        if data is None:
            return False
        if dev.version == 4:
            local_ok = data.get_attr("IFLA_VXLAN_LOCAL") == self.ext_iface.address
        else:
            local6 = data.get_attr("IFLA_VXLAN_LOCAL6")
            local_ok = bool(local6) and netlink.canonical(local6) == netlink.canonical(self.ext_iface.address6)
        return (data.get_attr("IFLA_VXLAN_ID") == self.vni
                and (data.get_attr("IFLA_VXLAN_PORT") or DEFAULT_PORT) == self.port
                and local_ok
                and data.get_attr("IFLA_VXLAN_LINK") == self.ext_iface.index
                and bool(data.get_attr("IFLA_VXLAN_LEARNING")) == self.learning
                and (data.get_attr("IFLA_VXLAN_GBP") is not None) == self.gbp)

    def _ensure_devices(self) -> None:
        """Every wanted device exists and matches the config; every other flannel(-v6) vxlan device goes
        (an earlier VNI, or the family the network no longer carries)."""
        wanted = {dev.name for dev in self.devices.values()}
        for msg in netlink.links():
            name = msg.get_attr("IFLA_IFNAME")
            if name not in wanted and (_is_flannel_vxlan(msg) or _is_flannel_vxlan(msg, 6)):
                log.info("removing %s: not a device of this network (VNI %d, IPv4 %s, IPv6 %s)", name, self.vni,
                         "on" if 4 in self.devices else "off", "on" if 6 in self.devices else "off")
                netlink.delete_link(name)
        for dev in self.devices.values():
            self._ensure_device(dev)

    def _ensure_device(self, dev: _Device) -> None:
        local = self._local(dev)
        msg = netlink.link_by_name(dev.name)
        if msg is not None and not self._device_matches(msg, dev):
            log.info("%s does not match the config (VNI %d, port %d, local %s on %s): recreating it",
                     dev.name, self.vni, self.port, local, self.ext_iface.name)
            netlink.delete_link(dev.name)
            msg = None
        if msg is None:
            kwargs: Dict[str, Any] = {
                "ifname": dev.name, "kind": "vxlan", "vxlan_id": self.vni, "vxlan_port": self.port,
                "vxlan_link": self.ext_iface.index, "vxlan_learning": self.learning, "vxlan_udp_csum": False,
            }
            kwargs["vxlan_local" if dev.version == 4 else "vxlan_local6"] = local
            if dev.version == 6:
                kwargs["mtu"] = self.mtu6()
            if self.gbp:
                kwargs["vxlan_gbp"] = True
            # a device recreated by tick() keeps the VtepMAC our lease already tells every peer
            kwargs["address"] = dev.mac or vtep_mac(self.config.option("MacPrefix") or "")
            try:
                with netlink.lock():
                    netlink.ipr().link("add", **kwargs)
            except Exception as err:
                raise BackendError(
                    "cannot create vxlan device %s (VNI %d, port %d) on %s: %s; is another device using this VNI "
                    "or UDP port?" % (dev.name, self.vni, self.port, self.ext_iface.name, err)) from err
            msg = netlink.link_by_name(dev.name)
            if msg is None:
                raise BackendError("vxlan device %s vanished right after it was created" % dev.name)
            if dev.version == 6:
                _no_router_advertisements(dev.name)
        dev.index = msg["index"]
        self.settle_device(msg, dev.name, (dev.version,), self._device_mtu(dev))
        dev.mac = msg.get_attr("IFLA_ADDRESS").lower()

    # -- life cycle -------------------------------------------------------------------------------
    def prepare(self) -> LeaseAttrs:
        with self._lock:
            self._ensure_devices()
            dev4, dev6 = self.devices.get(4), self.devices.get(6)
            return LeaseAttrs(self.ext_iface.public_ip if dev4 else None, "vxlan",
                              {"VNI": self.vni, "VtepMAC": dev4.mac} if dev4 else None,
                              public_ipv6=self.ext_iface.public_ipv6 if dev6 else None,
                              backend_v6_data={"VNI": self.vni, "VtepMAC": dev6.mac} if dev6 else None)

    def configure(self, lease: Lease) -> None:
        with self._lock:
            self.lease = lease
            for dev in self.devices.values():
                msg = netlink.link_by_name(dev.name)
                if msg is not None:
                    self.settle_device(msg, dev.name, (dev.version,), self._device_mtu(dev))

    # -- hops -----------------------------------------------------------------------------------------
    def hops_for(self, lease: Lease) -> List[Hop]:
        if not self.is_remote(lease):
            return []
        attrs = lease.attrs
        hops = []
        dev4, dev6 = self.devices.get(4), self.devices.get(6)
        if dev4 is not None and lease.subnet is not None and attrs.public_ip and attrs.vtep_mac:
            hops.append(self._hop(dev4, lease.subnet, attrs.public_ip, attrs.vtep_mac))
        mac6 = attrs.data("VtepMAC", 6)
        if dev6 is not None and lease.ipv6_subnet is not None and usable_ipv6_peer(attrs.public_ipv6) and mac6:
            hops.append(self._hop(dev6, lease.ipv6_subnet, attrs.public_ipv6, mac6))
        return hops

    def _hop(self, dev: _Device, subnet: Net, public: str, mac: str) -> Hop:
        public = netlink.canonical(public)
        if self.direct_routing and netlink.on_link(self.ext_iface.index, public):
            return Hop(subnet, public, self.ext_iface.index)
        return Hop(subnet, str(subnet.network_address), dev.index, onlink=True, vtep_mac=mac.lower(),
                   underlay=public)

    def _dev_of(self, index: int) -> Optional[_Device]:
        for dev in self.devices.values():
            if dev.index == index:
                return dev
        return None

    def describe(self, hop: Hop) -> str:
        if not hop.vtep_mac:
            return "direct route via %s dev %s" % (hop.gateway, self.ext_iface.name)
        dev = self._dev_of(hop.oif)
        name = dev.name if dev else "#%d" % hop.oif
        return "via %s dev %s onlink, VTEP %s at %s" % (hop.gateway, name, hop.vtep_mac, hop.underlay)

    def install_extra(self, hop: Hop) -> None:
        if hop.vtep_mac:
            netlink.replace_neighbour(hop.oif, hop.gateway, hop.vtep_mac)
            netlink.replace_fdb(hop.oif, hop.vtep_mac, hop.underlay)

    def uninstall_extra(self, hop: Hop) -> None:
        if not hop.vtep_mac:
            return
        same_dev = [h for h in self.wanted() if h.vtep_mac and h.oif == hop.oif]
        if not any(h.vtep_mac == hop.vtep_mac and h.underlay == hop.underlay for h in same_dev):
            netlink.delete_fdb(hop.oif, hop.vtep_mac, hop.underlay)
        if not any(h.gateway == hop.gateway for h in same_dev):
            netlink.delete_neighbour(hop.oif, hop.gateway)

    def reconcile_extra(self) -> Tuple[int, Set[Net]]:
        """Neighbours and fdb entries on each device match the wanted VTEPs through it exactly."""
        stale = 0
        fixed: Set[Net] = set()
        for dev in self.devices.values():
            if not dev.index:
                continue
            vteps = [h for h in self.wanted() if h.vtep_mac and h.oif == dev.index]
            neigh = netlink.neighbours(dev.index, dev.family)
            fdb = netlink.fdb_entries(dev.index)
            want_neigh = {h.gateway: h.vtep_mac for h in vteps}
            want_fdb = {h.vtep_mac: h.underlay for h in vteps}
            for ip, mac in neigh.items():
                if want_neigh.get(ip) != (mac or "").lower():
                    netlink.delete_neighbour(dev.index, ip)
                    stale += ip not in want_neigh
            for mac, dst in fdb.items():
                if want_fdb.get(mac) != dst:
                    netlink.delete_fdb(dev.index, mac, dst)
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
            for dev in self.devices.values():
                msg = netlink.link_by_name(dev.name)
                if msg is None or msg["index"] != dev.index:
                    log.warning("%s disappeared: recreating it", dev.name)
                    old = dev.index
                    self._ensure_device(dev)
                    self.configure(self.lease)
                    # the hops through the old device now go through the new one
                    self._want = {dst: replace(hop, oif=dev.index) if hop.vtep_mac and hop.oif == old else hop
                                  for dst, hop in self._want.items()}
                    self.repairs += 1 + self._reconcile()
                    return
                if (msg.get_attr("IFLA_ADDRESS") or "").lower() != dev.mac:
                    # our lease tells every peer this VtepMAC; a changed address would black-hole their traffic
                    log.warning("%s's MAC was changed to %s behind our back: restoring %s, the lease's VtepMAC",
                                dev.name, msg.get_attr("IFLA_ADDRESS"), dev.mac)
                    netlink.set_link(dev.index, address=dev.mac)
                    # the kernel flushes the device's neighbours with its address: put them back now
                    self.repairs += 1 + self._reconcile()
                    return
        super().tick()

    def cleanup(self) -> None:
        with self._lock:
            super().cleanup()
            for dev in self.devices.values():
                netlink.delete_link(dev.name)

    @classmethod
    def remove_installed(cls, ext_iface: ExternalInterface) -> None:
        removed = [m.get_attr("IFLA_IFNAME") for m in netlink.links()
                   if _is_flannel_vxlan(m) or _is_flannel_vxlan(m, 6)]
        for name in removed:
            netlink.delete_link(name)
        routes = netlink.delete_routes(netlink.RTPROT_VXLAN)  # both families
        if removed or routes:
            log.info("removed what an earlier vxlan backend left: devices %s, %d route(s)",
                     ", ".join(removed) or "none", routes)

    # -- observability ----------------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        out = super().status()
        out.update(device=self.dev if 4 in self.devices else None, vni=self.vni, port=self.port, vtep_mac=self.mac)
        if 6 in self.devices:
            out.update(device6=self.dev6, vtep_mac6=self.mac6, mtu6=self.mtu6())
        return out


def _no_router_advertisements(name: str) -> None:
    """accept_ra=0 on the device (as Go does): it must not configure itself from advertisements."""
    try:
        with open("/proc/sys/net/ipv6/conf/%s/accept_ra" % name, "w") as f:
            f.write("0")
    except OSError as err:
        log.debug("cannot set accept_ra on %s: %s", name, err)
