"""wireguard backend: encrypted WireGuard devices, one peer per remote lease on each.

Compatible with Go flanneld v0.20's wireguard backend, IPv4 and IPv6:

* ``Mode separate`` (the default): one device per address family.  IPv4: ``flannel-wg`` on
  ``ListenPort`` (51820), address = the lease subnet's network address as a /32, one route for the
  Network; per remote lease a peer with Endpoint ``PublicIP:ListenPort`` and AllowedIPs = its IPv4
  subnet.  IPv6 (``EnableIPv6``): ``flannel-wg-v6`` on ``ListenPortV6`` (51821), the same private key,
  address = the IPv6 subnet's network address as a /128, one route for the IPv6Network; peers with
  Endpoint ``[PublicIPv6]:ListenPortV6`` and AllowedIPs = their IPv6 subnet.  An IPv6-only network has
  only ``flannel-wg-v6``.
* ``Mode auto``, ``ipv4``, ``ipv6``: one device ``flannel-wg`` on ``ListenPort`` carrying both families:
  its addresses and routes are those of both, each peer's AllowedIPs hold both subnets of its lease, and
  the Endpoint is the peer's PublicIP (ipv4), ``[PublicIPv6]`` (ipv6) or, in auto, what Go's
  selectPublicEndpoint picks (IPv4 unless the peer has only IPv6, or its IPv4 is private while both
  ends' IPv6 are not) — except that a node without an IPv4 address of its own uses IPv6.
* MTU = interface MTU - 80 on every device (Go counts 80 for either underlay: a 40-byte IPv6 header
  + 8 UDP + 32 WireGuard, an IPv4 one is smaller), or the ``MTU`` option; routes are tagged with the
  catalogue's route protocol (0x6F) in both families, so a later start or another backend finds them.
* The private key lives in a key file (:mod:`.key`).  Our lease publishes the public key as
  ``BackendData.PublicKey`` (IPv4 networks) and ``BackendV6Data.PublicKey`` (IPv6 networks), whatever the
  mode, as Go does.
* A key is one node's: ``check_identity()`` (before ``prepare()``, with every lease) replaces a key
  that an older lease of another address already publishes — a copied key file, e.g. a cloned VM
  image — with a fresh one (the key file is rewritten atomically, one warning names the other node),
  before any device or lease of ours uses it.  Our own lease with the key (a restart) is no clash, nor
  is a younger lease with it (its node is the copy; every validator refuses its lease).  Found while
  running (both started at once), the key is replaced at once and :class:`IdentityClash` makes the
  agent exit 1; the next start publishes the new key.
* PresharedKey = the ``PSK`` option (every peer), PersistentKeepalive = ``PersistentKeepaliveInterval``
  when > 0.  Leases of other backend types are ignored.

The package, one job a module:

* :mod:`.key` — the key file (exclusive create, then link) and which node may use a key;
* :mod:`.wgtool` — the ``wg`` calls (secrets only on pipes), the wanted state rendered, the dump parsed
  and compared;
* :mod:`.peers` — where a peer is reached (Mode auto's choice, endpoints pinned to leases) and how a
  device's peers are kept in step (one ``wg set`` per lease event, one ``wg syncconf`` when a dump
  differs, one-way sessions reset);
* :mod:`.device` — a device's life across the kernel, wireguard-go and its systemd unit; which devices
  a Mode uses (a device the current mode does not use, e.g. flannel-wg-v6 after a switch to Mode auto,
  is removed with its wireguard-go);
* this module — the backend: leases to peers, addresses and the network's routes, the key's identity.

A device here may carry both families (Mode auto/ipv4/ipv6): its addresses are settled for the families
it carries (``Backend.settle_device``).
"""

from __future__ import annotations

import ipaddress
import logging

# os, random and time as this module had them before it became a package: the unit tests seed random,
# patch time.monotonic and os.rename and call catalogue through it
import os  # noqa: F401
import random  # noqa: F401
import threading
import time  # noqa: F401
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from pyflannel import catalogue, netlink  # noqa: F401  (catalogue: kept as os, random and time above)
from pyflannel.backend import Backend, BackendError, ExternalInterface, IdentityClash, register
from pyflannel.backend.routes import reconcile_network_routes
from pyflannel.backend.wireguard.device import (
    DEVICE,
    DEVICE_V6,
    DEVICES,
    MODES,
    SOCKET_DIR,
    SOCKET_WAIT,
    UNIT,
    UNIT_V6,
    UNITS,
    Device,
    mode_problem,
    plan_devices,
    remove_device,
    stop_unit,
    under_systemd,
    unit_for,
)
from pyflannel.backend.wireguard.key import (
    DEFAULT_KEY_FILE,
    KEY_FILE_ENV,
    generate_private_key,
    key_clash,
    key_file_path,
    lease_keys,
    load_or_create_key,
    read_key_file,
    replace_key,
)
from pyflannel.backend.wireguard.peers import (
    STUCK_AFTER,
    UNMET_AFTER,
    WgDevice,
    endpoint,
    is_private,
    pin_endpoint,
    select_endpoint,
)
from pyflannel.backend.wireguard.wgtool import (
    WG_TIMEOUT,
    ZERO_KEY,
    Dump,
    Peer,
    dump_differences,
    parse_dump,
    public_key,
    render_config,
    wg,
    wg_binary,
)
from pyflannel.leases import Lease, LeaseAttrs

__all__ = [
    "DEFAULT_KEY_FILE", "DEVICE", "DEVICES", "DEVICE_V6", "KEY_FILE_ENV", "MODES", "SOCKET_DIR", "SOCKET_WAIT",
    "STUCK_AFTER", "UNIT", "UNITS", "UNIT_V6", "UNMET_AFTER", "WG_TIMEOUT", "ZERO_KEY", "Device", "Dump", "Peer",
    "WgDevice", "WireguardBackend", "dump_differences", "endpoint", "generate_private_key", "is_private",
    "key_clash", "key_file_path", "lease_keys", "load_or_create_key", "mode_problem", "parse_dump",
    "pin_endpoint", "plan_devices", "public_key", "read_key_file", "remove_device", "render_config",
    "replace_key", "select_endpoint", "stop_unit", "under_systemd", "unit_for", "wg", "wg_binary",
]

log = logging.getLogger("pyflannel.backend.wireguard")


@register("wireguard")
class WireguardBackend(Backend):
    def __init__(self, config: Any, ext_iface: ExternalInterface, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config, ext_iface, settings)
        self.mode = config.option("Mode") or self.default("Mode")
        self.use_ipv4 = bool(config.enable_ipv4)
        self.use_ipv6 = bool(config.enable_ipv6)
        problem = mode_problem(self.mode, self.use_ipv4, self.use_ipv6, ext_iface)
        if problem:
            raise BackendError(problem)
        self.listen_port = int(config.option("ListenPort") or self.default("ListenPort"))
        self.listen_port_v6 = int(config.option("ListenPortV6") or self.default("ListenPortV6"))
        self.psk = config.option("PSK") or ZERO_KEY
        self.keepalive = int(config.option("PersistentKeepaliveInterval") or 0)
        self.key_file = key_file_path(self.settings)
        self.private = ""
        self.public = ""
        self.devices = plan_devices(self.mode, self.use_ipv4, self.use_ipv6, self.listen_port,
                                    self.listen_port_v6)
        self.dev = self.devices[0].name
        self._lock = threading.RLock()
        self._prepared = False
        self.repairs = 0

    @property
    def syncs(self) -> int:
        return sum(d.syncs for d in self.devices)

    def device(self, name: str) -> Optional[Device]:
        return next((d for d in self.devices if d.name == name), None)

    # -- addresses and routes -------------------------------------------------------------------------
    def _wanted_routes(self) -> Dict[Any, int]:
        """Network (per enabled family) -> ifindex of the device carrying it."""
        out: Dict[Any, int] = {}
        for version, network in ((4, self.config.network), (6, self.config.ipv6_network)):
            dev = next((d for d in self.devices if version in d.families), None)
            if network is not None and dev is not None and dev.index:
                out[network] = dev.index
        return out

    def _link_settings(self) -> int:
        """MTU, up, addresses of every device, the route(s) of the network(s); returns how many changed."""
        changed = 0
        for device in self.devices:
            msg = netlink.link_by_name(device.name) if device.index else None
            if msg is not None:
                changed += self.settle_device(msg, device.name, device.families)
        if self.lease is None:
            return changed
        removed, installed = reconcile_network_routes(netlink.RTPROT_WIREGUARD, self._wanted_routes(), self.use_ipv6)
        return changed + removed + len(installed)

    # -- life cycle -------------------------------------------------------------------------------
    def _load_key(self) -> None:
        """The private key from the key file (made when missing), once."""
        if self.private:
            return
        wg_binary()
        private, created = load_or_create_key(self.key_file)
        self._use_key(private)
        log.info("%s wireguard private key file %s (public key %s)", "created the" if created else "using the",
                 self.key_file, self.public)

    def _use_key(self, private: str) -> None:
        self.private = private
        self.public = public_key(private)
        for device in self.devices:
            device.private = private
            device.public = self.public

    def _own_address(self) -> Optional[str]:
        """The address our lease names this node by (LeaseAttrs.address: PublicIP, else PublicIPv6)."""
        address = self.ext_iface.public_ip if self.use_ipv4 else self.ext_iface.public_ipv6
        return str(ipaddress.ip_address(address)) if address else None

    def check_identity(self, leases: Callable[[], Iterable[Optional[Lease]]]) -> None:
        """Our public key in an older lease of another node (a cloned key file, e.g. a cloned VM image):
        before prepare(), a fresh key replaces the key file's (one warning naming the other node), so
        no device and no lease of ours ever uses the other node's key; once prepared, a fresh key
        replaces it on the devices and in the key file at once (nothing meant for the other node is
        decrypted here any more) and IdentityClash is raised: the agent exits 1 and the next start
        publishes the new key (the lease carrying the old one is refused by every validator anyway)."""
        with self._lock:
            self._load_key()
            running = self._prepared or self.lease is not None
            other = key_clash(self.public, self._own_address(), leases(), claim_now=not running)
            if other is None:
                return
            what = ("wireguard public key %s of key file %s is already in the older lease %s of %s (a copy of that "
                    "node's key file, e.g. a cloned image?)"
                    % (self.public, self.key_file, other.label, other.attrs.address))
            try:
                fresh, problem = replace_key(self.key_file), ""
            except OSError as err:
                fresh, problem = generate_private_key(), str(err.strerror or err)
            if problem and not running:
                raise BackendError("%s, and the key file cannot be replaced: %s; give this node a key of its own "
                                   "(delete the file: a new key is made at the next start)" % (what, problem))
            self._use_key(fresh)
            if not running:
                log.warning("%s: made a fresh key for this node instead (public key %s)", what, self.public)
                return
            for device in self.devices:  # off the devices at once, even when the key file cannot be written
                if device.index:
                    device.apply_interface()
            if problem:
                raise IdentityClash("%s: this node stopped using it and exits; the key file cannot be replaced (%s): "
                                    "give this node a key of its own (delete the file: a new key is made at the "
                                    "next start)" % (what, problem))
            raise IdentityClash("%s: this node now uses a fresh key (public key %s) and exits so that its next "
                                "start publishes it" % (what, self.public))

    def prepare(self) -> LeaseAttrs:
        with self._lock:
            self._load_key()
            if not self._prepared:
                used = {d.name for d in self.devices}
                for name in DEVICES:
                    if name not in used and any(remove_device(name)):
                        log.info("removed %s: Mode %s on this network does not use it", name, self.mode)
                for device in self.devices:
                    if not device.index:
                        device.ensure()
                self._link_settings()
                self._prepared = True
            data = {"PublicKey": self.public}
            # each family's address and key only when the network has that family (as Go v0.20)
            return LeaseAttrs(self.ext_iface.public_ip if self.use_ipv4 else None, "wireguard",
                              data if self.use_ipv4 else None, self.ext_iface.public_ipv6 if self.use_ipv6 else None,
                              dict(data) if self.use_ipv6 else None)

    def configure(self, lease: Lease) -> None:
        with self._lock:
            self.lease = lease
            self._link_settings()
            for device in self.devices:
                device.drop(lease.key_name)

    def _peer_for(self, lease: Lease, device: Device) -> Optional[Peer]:
        """The peer ``lease`` wants on ``device`` (None: none, e.g. another backend, no key, our own)."""
        if not self.is_remote(lease):
            return None
        attrs = lease.attrs
        subnets = [net for net in lease.subnets() if net.version in device.families
                   and (self.use_ipv4 if net.version == 4 else self.use_ipv6)]
        if not subnets:
            return None
        version = 6 if any(net.version == 6 for net in subnets) else 4
        # Go reads BackendV6Data's key when the lease has IPv6, else BackendData's (the same key in both);
        # a lease with only the other one is still usable
        key = attrs.data("PublicKey", version) or attrs.data("PublicKey", 4 if version == 6 else 6)
        if not key or key == self.public:
            return None
        if device.families == (4,):
            address = attrs.public_ip
        elif device.families == (6,) or self.mode == "ipv6":
            address = attrs.public_ipv6
        elif self.mode == "ipv4":
            address = attrs.public_ip
        else:
            address = select_endpoint(attrs.public_ip, attrs.public_ipv6, self.ext_iface.public_ip,
                                      self.ext_iface.public_ipv6)
        if not address:
            log.warning("lease %s has no %s address for %s (Mode %s): no peer for it", lease.label,
                        "IPv6" if device.families == (6,) or self.mode == "ipv6" else "IPv4", device.name, self.mode)
            return None
        return Peer(key, endpoint(address, device.listen_port), tuple(str(net) for net in subnets), self.psk,
                    self.keepalive, tuple(a for a in (attrs.public_ip, attrs.public_ipv6) if a))

    def lease_added(self, lease: Lease) -> None:
        with self._lock:
            for device in self.devices:
                peer = self._peer_for(lease, device)
                if device.put(lease.key_name, peer) and peer is not None:
                    log.debug("lease %s: peer %s at %s on %s", lease.label, peer.public_key, peer.endpoint,
                              device.name)

    def lease_removed(self, lease: Lease) -> None:
        with self._lock:
            for device in self.devices:
                old = device.drop(lease.key_name)
                if old is not None:
                    log.debug("lease %s gone: removed its peer %s from %s", lease.label, old.public_key, device.name)

    def sync(self, leases: List[Lease]) -> None:
        with self._lock:
            for device in self.devices:
                want: Dict[str, Peer] = {}
                seen = set()
                for lease in leases:
                    peer = self._peer_for(lease, device)
                    if peer is not None and peer.public_key not in seen:
                        seen.add(peer.public_key)
                        want[lease.key_name] = peer
                device.want = want
                device.sync_peers()

    def tick(self) -> None:
        """Bring back a vanished device (or wireguard-go), then its settings, routes and peers."""
        with self._lock:
            if self.lease is None:
                return
            for device in self.devices:
                self.repairs += device.repair_link()
            self.repairs += self._link_settings()
            for device in self.devices:
                dump = device.dump()
                synced = device.sync_peers(dump)
                if not synced:  # a syncconf just now set every endpoint: the dump is stale
                    self.repairs += device.pin_endpoints(dump)
                self.repairs += synced + device.unstick(dump)

    def cleanup(self) -> None:
        with self._lock:
            self._remove_all()
            for device in self.devices:
                device.want = {}
                device.index = 0
            self._prepared = False

    @staticmethod
    def _remove_all() -> Tuple[List[str], int, List[str]]:
        """Remove both devices (and their wireguard-go), every wireguard route of both families and both
        units: (devices removed, routes removed, units stopped)."""
        routes = netlink.delete_routes(netlink.RTPROT_WIREGUARD)
        devices, units = [], []
        for name in DEVICES:
            removed, unit = remove_device(name)
            if removed:
                devices.append(name)
            if unit:
                units.append(unit_for(name))
        return devices, routes, units

    @classmethod
    def remove_installed(cls, ext_iface: ExternalInterface) -> None:
        devices, routes, units = cls._remove_all()
        if devices or routes or units:
            log.info("removed what an earlier wireguard backend left: %s, %d route(s)%s",
                     ", ".join(devices) or "no device", routes, ", unit(s) %s" % ", ".join(units) if units else "")

    # -- observability ----------------------------------------------------------------------------
    def _remote(self) -> int:
        return len({name for d in self.devices for name in d.want})

    def status(self) -> Dict[str, Any]:
        return {"backend": self.name, "mode": self.mode, "device": self.dev,
                "implementation": self.devices[0].implementation, "public_key": self.public,
                "listen_port": self.listen_port, "listen_port_v6": self.listen_port_v6, "key_file": self.key_file,
                "psk": self.psk != ZERO_KEY, "persistent_keepalive": self.keepalive, "mtu": self.mtu(),
                "peers": self._remote(), "remote_leases": self._remote(),
                "devices": {d.name: {"listen_port": d.listen_port, "families": list(d.families),
                                     "implementation": d.implementation, "peers": len(d.want)}
                            for d in self.devices}}

    def metrics(self) -> Dict[str, float]:
        return {"datapath_remote_leases": float(self._remote()), "datapath_repairs_total": float(self.repairs),
                "wireguard_peers": float(sum(len(d.want) for d in self.devices)),
                "wireguard_syncs_total": float(self.syncs),
                "wireguard_endpoint_resets_total": float(sum(d.pins for d in self.devices)),
                "wireguard_userspace": 1.0 if any(d.implementation == "wireguard-go" for d in self.devices) else 0.0}
