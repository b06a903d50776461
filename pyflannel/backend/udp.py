"""udp backend: TUN ``flannel0`` and a user-space packet pump, wire-compatible with Go flanneld.

* ``flannel0``: TUN without packet information, persistent (a restart of the agent keeps address and
  routes), multi-queue; address = first address of the lease /32, route ``<Network> dev flannel0``
  (tagged :data:`netlink.RTPROT_UDP`), MTU = interface MTU - 28 (IPv4 + UDP header) or ``MTU``.
* UDP socket on ``<iface address>:<Port>`` (8285); the raw IPv4 packet is the whole datagram.
* The pump runs in worker processes (:mod:`pyflannel.udpproxy`) so both directions use both CPUs
  without the GIL: per TUN queue one ``tx`` process (TUN -> UDP) and one ``rx`` process (UDP -> TUN)
  sharing that queue's socket.  ``PYFLANNEL_UDP_QUEUES`` (default 1) sets the number of queues,
  ``PYFLANNEL_UDP_MODE=both`` runs both directions as threads of one process per queue.
* Datagrams from an address that holds no lease are dropped and counted
  (``flannel_udp_dropped_packets_total{direction="rx",reason="unknown_sender"}``); so are datagrams
  whose inner packet is malformed or not from the sender's subnet to ours (the same counter with the
  reasons ``bad_header``, ``bad_length``, ``foreign_source``, ``foreign_destination``).
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import logging
import mmap
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional

from pyflannel import netlink, udpproxy
from pyflannel.backend import Backend, BackendError, ExternalInterface, register
from pyflannel.backend.routes import reconcile_network_routes
from pyflannel.leases import Lease

log = logging.getLogger("pyflannel.backend.udp")

DEVICE = "flannel0"
SOCKET_BUFFER = 8 << 20
TXQLEN = 4000  # TUN ring: absorbs bursts while a worker waits for the CPU (a full ring drops packets)

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
IFF_TUN = 0x0001
IFF_MULTI_QUEUE = 0x0100
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUNSETOFFLOAD = 0x400454D0
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
SOL_UDP = 17
UDP_GRO = 104


def _open_queue(name: str, vnet: bool, tso: bool = False) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    flags = IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE | (IFF_VNET_HDR if vnet else 0)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        if vnet:
            fcntl.ioctl(fd, TUNSETOFFLOAD, (TUN_F_CSUM | TUN_F_TSO4) if tso else 0)
    except OSError:
        os.close(fd)
        raise
    return fd


@register("udp")
class UdpBackend(Backend):
    def __init__(self, config: Any, ext_iface: ExternalInterface, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config, ext_iface, settings)
        self.port = int(config.option("Port") or self.default("Port"))
        self.queues = max(1, int(os.environ.get("PYFLANNEL_UDP_QUEUES", "1")))
        self.mode = os.environ.get("PYFLANNEL_UDP_MODE", "split")
        # gro (default): virtio-net header on the TUN, batched UDP_SEGMENT sends, UDP_GRO receive merged
        # into TUN GSO writes; tso: the TUN also hands out TCP super-packets; batch: batched sends only;
        # plain: one packet per syscall.
        self.offload = os.environ.get("PYFLANNEL_UDP_OFFLOAD", "gro")
        if self.offload not in ("gro", "tso", "batch", "plain"):
            self.offload = "plain"
        self.vnet = self.offload in ("gro", "tso")
        self.index = 0
        self._tun_fds: List[int] = []
        self._socks: List[socket.socket] = []
        self._workers: List[Dict[str, Any]] = []
        self._routes: Dict[ipaddress.IPv4Network, str] = {}
        self._lock = threading.RLock()
        self._stats_fd = -1
        self._stats: Optional[mmap.mmap] = None
        self._dead_totals = [0] * len(udpproxy.STATS)
        self.restarts = 0

    # -- device -----------------------------------------------------------------------------------
    def _first_queue(self) -> int:
        """Open the first queue, with segmentation offload when the kernel allows it."""
        if self.vnet:
            try:
                return _open_queue(DEVICE, True, self.offload == "tso")
            except OSError as err:
                try:
                    fd = _open_queue(DEVICE, False)
                except OSError:
                    raise err from None  # the device itself is the problem, not the offload
                log.info("%s: no virtio-net header support on the TUN here (%s); offload %s -> batch", DEVICE,
                         err, self.offload)
                self.vnet = False
                self.offload = "batch"
                return fd
        return _open_queue(DEVICE, False)

    def _ensure_tun(self) -> None:
        msg = netlink.link_by_name(DEVICE)
        if msg is not None and netlink.link_kind(msg) != "tun":
            log.info("%s exists but is not a TUN device (%s): replacing it", DEVICE, netlink.link_kind(msg))
            netlink.delete_link(DEVICE)
        fds = []
        try:
            try:
                fds.append(self._first_queue())
            except OSError:
                # e.g. a persistent single-queue flannel0 from Go flanneld or an older run
                log.info("%s cannot be attached as a multi-queue TUN: recreating it", DEVICE)
                netlink.delete_link(DEVICE)
                fds.append(self._first_queue())
            fcntl.ioctl(fds[0], TUNSETPERSIST, 1)
            for _queue in range(self.queues - 1):
                fds.append(_open_queue(DEVICE, self.vnet, self.offload == "tso"))
        except OSError as err:
            for fd in fds:
                os.close(fd)
            raise BackendError("cannot open TUN device %s: %s; the udp backend needs /dev/net/tun and CAP_NET_ADMIN"
                               % (DEVICE, err)) from err
        self._tun_fds = fds
        msg = netlink.link_by_name(DEVICE)
        if msg is None:
            raise BackendError("TUN device %s vanished right after it was created" % DEVICE)
        self.index = msg["index"]
        if msg.get_attr("IFLA_MTU") != self.mtu():
            netlink.set_link(self.index, mtu=self.mtu())
        if (msg.get_attr("IFLA_TXQLEN") or 0) != TXQLEN:
            netlink.set_link(self.index, txqlen=TXQLEN)
        try:  # no IPv6 link-local address, so no router solicitations into the pump
            with open("/proc/sys/net/ipv6/conf/%s/disable_ipv6" % DEVICE, "w") as f:
                f.write("1")
        except OSError:
            pass
        if not msg["flags"] & 1:
            netlink.set_link(self.index, state="up")

    def _bind(self, sock: socket.socket) -> None:
        """Bind, waiting up to 5 s for the port while the workers of a killed predecessor exit."""
        for attempt in range(50):
            try:
                sock.bind((self.ext_iface.address, self.port))
                return
            except OSError as err:
                if err.errno != errno.EADDRINUSE or attempt == 49:
                    raise
                time.sleep(0.1)

    def _open_sockets(self) -> None:
        for _queue in range(self.queues):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            if self.queues > 1:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            for force, plain in ((33, socket.SO_RCVBUF), (32, socket.SO_SNDBUF)):  # SO_*BUFFORCE
                try:
                    sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
                except OSError:
                    sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
            if self.vnet:
                try:
                    sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                except OSError as err:
                    log.info("UDP_GRO is not available (%s)", err)
            try:
                self._bind(sock)
            except OSError as err:
                sock.close()
                for s in self._socks:
                    s.close()
                self._socks = []
                raise BackendError("cannot bind UDP %s:%d for the udp backend: %s; is another flanneld running, or "
                                   "pick another Backend.Port" % (self.ext_iface.address, self.port, err)) from err
            self._socks.append(sock)

    # -- workers ----------------------------------------------------------------------------------
    def _snapshot(self) -> bytes:
        shift = 32 - self.config.subnet_len
        routes = {str(int(s.network_address) >> shift): ip for s, ip in self._routes.items()}
        snap: Dict[str, Any] = {"routes": routes, "port": self.port}
        if self.lease is not None:
            snap["own"] = int(self.lease.subnet.network_address) >> shift
        return (json.dumps(snap) + "\n").encode()

    def _spawn(self, mode: str, queue: int, slot: int) -> Dict[str, Any]:
        rfd, wfd = os.pipe()
        tunfd = self._tun_fds[queue]
        sockfd = self._socks[queue].fileno()
        fds = (tunfd, sockfd, rfd, self._stats_fd)
        for fd in fds:
            os.set_inheritable(fd, True)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "pyflannel.udpproxy", mode, str(tunfd), str(sockfd), str(rfd),
                 str(self._stats_fd), str(slot), str(self.config.subnet_len), self.offload],
                pass_fds=fds, close_fds=True, stdin=subprocess.DEVNULL)
        finally:
            os.close(rfd)
        os.write(wfd, self._snapshot())
        return {"proc": proc, "ctl": wfd, "mode": mode, "queue": queue, "slot": slot}

    def _start_workers(self) -> None:
        modes = ["both"] if self.mode == "both" else ["tx", "rx"]
        slots = len(modes) * self.queues
        self._stats_fd = os.memfd_create("pyflannel-udp-stats", os.MFD_CLOEXEC)
        os.ftruncate(self._stats_fd, udpproxy.SLOT_SIZE * slots)
        self._stats = mmap.mmap(self._stats_fd, 0)
        slot = 0
        for queue in range(self.queues):
            for mode in modes:
                self._workers.append(self._spawn(mode, queue, slot))
                slot += 1
        log.info("udp: %s:%d <-> %s, %d queue(s), %d worker process(es), offload %s", self.ext_iface.address,
                 self.port, DEVICE, self.queues, len(self._workers), self.offload)

    def _retire_slot(self, slot: int) -> None:
        """Fold a dead worker's counters into the totals so they never go backwards."""
        if self._stats is None:
            return
        width = len(udpproxy.STATS)
        values = struct.unpack_from("<%dQ" % width, self._stats, slot * udpproxy.SLOT_SIZE)
        for i, value in enumerate(values):
            self._dead_totals[i] += value
        struct.pack_into("<%dQ" % width, self._stats, slot * udpproxy.SLOT_SIZE, *([0] * width))

    def _push(self) -> None:
        data = self._snapshot()
        for w in self._workers:
            try:
                os.write(w["ctl"], data)
            except OSError:
                pass  # a dead worker is restarted by tick()

    # -- life cycle -------------------------------------------------------------------------------
    def configure(self, lease: Lease) -> None:
        with self._lock:
            self.lease = lease
            self._ensure_tun()
            address = ipaddress.IPv4Interface("%s/32" % lease.subnet.network_address)
            netlink.set_only_address(self.index, address)
            self._reconcile_route()
            self._open_sockets()
            self._start_workers()

    def _reconcile_route(self) -> List[Any]:
        """The network's one route, through flannel0, is the only route of ours; returns what was installed."""
        return reconcile_network_routes(netlink.RTPROT_UDP, {self.config.network: self.index}, ipv6=False)[1]

    def _usable(self, lease: Lease) -> bool:
        return self.lease is None or lease.subnet != self.lease.subnet

    def sync(self, leases: List[Lease]) -> None:
        with self._lock:
            self._routes = {lease.subnet: lease.attrs.public_ip for lease in leases if self._usable(lease)}
            self._push()

    def lease_added(self, lease: Lease) -> None:
        with self._lock:
            if self._usable(lease) and self._routes.get(lease.subnet) != lease.attrs.public_ip:
                self._routes[lease.subnet] = lease.attrs.public_ip
                self._push()
                log.debug("lease %s: via %s:%d", lease.subnet, lease.attrs.public_ip, self.port)

    def lease_removed(self, lease: Lease) -> None:
        with self._lock:
            if self._routes.pop(lease.subnet, None) is not None:
                self._push()
                log.debug("lease %s gone", lease.subnet)

    def tick(self) -> None:
        with self._lock:
            for i, w in enumerate(self._workers):
                code = w["proc"].poll()
                if code is None:
                    continue
                log.error("udp %s worker (queue %d) exited with status %s: restarting it", w["mode"], w["queue"],
                          code)
                os.close(w["ctl"])
                self._retire_slot(w["slot"])
                self._workers[i] = self._spawn(w["mode"], w["queue"], w["slot"])
                self.restarts += 1
            if self.lease is not None and self.index:
                for network in self._reconcile_route():
                    log.warning("route %s dev %s was missing: restored", network, DEVICE)

    def _stop_workers(self) -> None:
        for w in self._workers:
            try:
                os.close(w["ctl"])  # end of file: the worker exits
            except OSError:
                pass
        for w in self._workers:
            proc = w["proc"]
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(2)
        self._workers = []

    def close(self) -> None:
        with self._lock:
            self._stop_workers()
            for s in self._socks:
                s.close()
            self._socks = []
            for fd in self._tun_fds:
                os.close(fd)
            self._tun_fds = []

    def cleanup(self) -> None:
        with self._lock:
            self.close()
            netlink.delete_routes(netlink.RTPROT_UDP)
            netlink.delete_link(DEVICE)

    @classmethod
    def remove_installed(cls, ext_iface: ExternalInterface) -> None:
        routes = netlink.delete_routes(netlink.RTPROT_UDP)
        msg = netlink.link_by_name(DEVICE)
        removed = msg is not None and netlink.link_kind(msg) == "tun"
        if removed:
            netlink.delete_link(DEVICE)
        if removed or routes:
            log.info("removed what an earlier udp backend left: %s%d route(s)", DEVICE + ", " if removed else "",
                     routes)

    # -- observability ----------------------------------------------------------------------------
    def counters(self) -> Dict[str, int]:
        totals = dict(zip(udpproxy.STATS, self._dead_totals))
        if self._stats is not None:
            width = len(udpproxy.STATS)
            for slot in range(len(self._stats) // udpproxy.SLOT_SIZE):
                values = struct.unpack_from("<%dQ" % width, self._stats, slot * udpproxy.SLOT_SIZE)
                for name, value in zip(udpproxy.STATS, values):
                    totals[name] += value
        return totals

    def status(self) -> Dict[str, Any]:
        alive = sum(1 for w in self._workers if w["proc"].poll() is None)
        return {"backend": self.name, "device": DEVICE, "port": self.port, "mtu": self.mtu(),
                "remote_leases": len(self._routes), "workers": len(self._workers), "workers_alive": alive}

    def metrics(self) -> Dict[str, float]:
        out = {"udp_%s_total" % k: float(v) for k, v in self.counters().items()}
        out["datapath_remote_leases"] = float(len(self._routes))
        out["udp_worker_restarts_total"] = float(self.restarts)
        return out
