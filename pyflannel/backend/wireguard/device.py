"""A WireGuard device's life: the kernel's or wireguard-go's, found, made, repaired and removed.

The kernel's WireGuard is used when ``ip link add … type wireguard`` works.  When it does not (no module:
many containers, small VMs, this project's test machine), Debian's ``wireguard-go`` runs each device in
userspace (its UAPI socket /run/wireguard/<device>.sock): as the transient systemd unit
``flannel-wireguard-go`` (``flannel-wireguard-go-v6`` for flannel-wg-v6) when the agent runs under systemd
(so a restart of flanneld.service does not take the tunnels down), else as a detached process of its own
session.  Both speak the same UAPI, and ``wg`` drives both (:mod:`.wgtool`).  An existing working device is
adopted on start (same key, same ifindex, same wireguard-go process: no flap).

Which devices a network uses (:func:`plan_devices`) and whether its Mode can work here
(:func:`mode_problem`) are decided here too.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Any, List, Optional, Tuple

from pyflannel import catalogue, netlink
from pyflannel.backend import BackendError, ExternalInterface
from pyflannel.backend.wireguard.peers import WgDevice
from pyflannel.backend.wireguard.wgtool import wg

log = logging.getLogger("pyflannel.backend.wireguard")

DEVICE = "flannel-wg"
DEVICE_V6 = "flannel-wg-v6"
DEVICES = (DEVICE, DEVICE_V6)
UNIT = "flannel-wireguard-go"
UNIT_V6 = "flannel-wireguard-go-v6"
UNITS = {DEVICE: UNIT, DEVICE_V6: UNIT_V6}
MODES = catalogue.get("wireguard").option("Mode").choices
SOCKET_DIR = "/run/wireguard"
SOCKET_WAIT = 10.0  # seconds wireguard-go may take to create its TUN and UAPI socket


def unit_for(dev: str) -> str:
    """The transient systemd unit that runs wireguard-go for ``dev``."""
    return UNITS.get(dev, "%s-%s" % (UNIT, dev))


def _socket_path(dev: str = DEVICE) -> str:
    return os.path.join(SOCKET_DIR, dev + ".sock")


def _device_answers(dev: str = DEVICE) -> bool:
    try:
        return wg("show", dev, "listen-port", check=False).returncode == 0
    except BackendError:
        return False


def _same_namespaces_as_init() -> bool:
    """A transient systemd unit runs in PID 1's network and mount namespaces: only use one when we do."""
    try:
        return all(os.stat("/proc/self/ns/%s" % ns).st_ino == os.stat("/proc/1/ns/%s" % ns).st_ino
                   for ns in ("net", "mnt"))
    except OSError:
        return False


def under_systemd() -> bool:
    return ((bool(os.environ.get("INVOCATION_ID")) or os.path.isdir("/run/systemd/system"))
            and bool(shutil.which("systemd-run")) and _same_namespaces_as_init())


def _systemctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=30, check=False)


def stop_unit(unit: str = UNIT) -> bool:
    """Stop the transient wireguard-go unit ``unit`` if there is one (True when it was running)."""
    if not shutil.which("systemctl") or not os.path.isdir("/run/systemd/system"):
        return False
    active = _systemctl("is-active", "--quiet", unit + ".service").returncode == 0
    if active:
        _systemctl("stop", unit + ".service")
    _systemctl("reset-failed", unit + ".service")  # a failed unit of that name would block systemd-run
    return active


def remove_device(dev: str) -> Tuple[bool, bool]:
    """Delete ``dev`` when it is a WireGuard device (kernel or wireguard-go's TUN; deleting the link ends
    the wireguard-go serving it) and stop its unit; (device removed, unit stopped)."""
    msg = netlink.link_by_name(dev)
    removed = msg is not None and netlink.link_kind(msg) in ("wireguard", "tun")
    if removed:
        netlink.delete_link(dev)
    return removed, stop_unit(unit_for(dev))


@dataclass
class Device(WgDevice):
    """One WireGuard device with its link: at run time its ifindex and implementation ("kernel" or
    "wireguard-go")."""

    index: int = 0
    implementation: str = ""
    proc: Optional[subprocess.Popen] = None  # wireguard-go, when this process started it detached

    @property
    def unit(self) -> str:
        return unit_for(self.name)

    # -- the link and its wireguard-go ----------------------------------------------------------------
    def adopt(self) -> Optional[Any]:
        """The existing device if it works (kernel device, or a TUN whose wireguard-go answers)."""
        msg = netlink.link_by_name(self.name)
        if msg is None:
            return None
        kind = netlink.link_kind(msg)
        if kind == "wireguard" or (kind == "tun" and _device_answers(self.name)):
            self.implementation = "kernel" if kind == "wireguard" else "wireguard-go"
            return msg
        log.info("%s exists but is not a working WireGuard device (kind %s): recreating it", self.name, kind)
        netlink.delete_link(self.name)
        return None

    def create(self) -> Any:
        kernel_error = netlink.create_link(self.name, "wireguard")
        if kernel_error is None:
            self.implementation = "kernel"
            log.info("%s: using the kernel's WireGuard", self.name)
        else:
            self.start_wireguard_go(kernel_error)
        msg = netlink.link_by_name(self.name)
        if msg is None:
            raise BackendError("%s vanished right after it was created" % self.name)
        return msg

    def start_wireguard_go(self, kernel_error: str) -> None:
        binary = shutil.which("wireguard-go")
        if not binary:
            raise BackendError(
                "cannot create %s: no kernel WireGuard (%s) and wireguard-go is not installed; install the "
                "wireguard-go package (userspace WireGuard) or load the wireguard kernel module"
                % (self.name, kernel_error))
        self.implementation = "wireguard-go"
        if under_systemd():
            stop_unit(self.unit)  # a unit left over from a device that is gone
            proc = subprocess.run(
                ["systemd-run", "--unit", self.unit, "--collect", "--quiet", "--description",
                 "userspace WireGuard for flanneld's %s" % self.name, "-p", "Restart=no",
                 binary, "-f", self.name], capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode != 0:
                raise BackendError("cannot start wireguard-go for %s as the transient unit %s: %s"
                                   % (self.name, self.unit, (proc.stderr or proc.stdout).strip()))
            how = "as the transient systemd unit %s" % self.unit
        else:
            self.proc = subprocess.Popen([binary, "-f", self.name], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True, close_fds=True)
            how = "detached (pid %d)" % self.proc.pid
        path = _socket_path(self.name)
        deadline = time.monotonic() + SOCKET_WAIT
        while not (os.path.exists(path) and netlink.link_by_name(self.name) is not None
                   and _device_answers(self.name)):
            if self.proc is not None and self.proc.poll() is not None:
                raise BackendError("wireguard-go for %s exited with status %s at start; is /dev/net/tun there and "
                                   "another %s running?" % (self.name, self.proc.returncode, self.name))
            if time.monotonic() > deadline:
                raise BackendError("wireguard-go for %s did not create %s within %.0f s; check that "
                                   "%s is writable and wireguard-go runs" % (self.name, path, SOCKET_WAIT, SOCKET_DIR))
            time.sleep(0.05)
        log.info("%s: no kernel WireGuard (%s): running the userspace wireguard-go %s", self.name, kernel_error, how)

    def ensure(self) -> None:
        msg = self.adopt()
        if msg is not None:
            log.info("%s: reusing the existing device (%s, ifindex %d)", self.name, self.implementation,
                     msg["index"])
        else:
            msg = self.create()
        self.index = msg["index"]
        self.apply_interface()

    def still_answers(self) -> bool:
        """wireguard-go answers on its socket; asked again after a moment before it is declared dead (a
        busy machine must not make us recreate a working device)."""
        if _device_answers(self.name):
            return True
        time.sleep(0.5)
        return _device_answers(self.name)

    def repair_link(self) -> int:
        """Bring back a vanished device (or wireguard-go); 1 when it had to be recreated."""
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("wireguard-go for %s exited with status %s", self.name, self.proc.returncode)
            self.proc = None
        msg = netlink.link_by_name(self.name)
        if msg is None or msg["index"] != self.index or (self.implementation == "wireguard-go"
                                                         and not self.still_answers()):
            log.warning("%s disappeared or stopped answering: recreating it", self.name)
            if msg is not None:
                netlink.delete_link(self.name)
            self.index = 0
            self.ensure()
            return 1
        self.apply_interface()
        return 0


def plan_devices(mode: str, enable_ipv4: bool, enable_ipv6: bool, listen_port: int,
                 listen_port_v6: int) -> List[Device]:
    """The devices a mode uses: separate, one per enabled family (flannel-wg for IPv4 on ListenPort,
    flannel-wg-v6 for IPv6 on ListenPortV6); the other modes, flannel-wg on ListenPort for both."""
    families = tuple(v for v, on in ((4, enable_ipv4), (6, enable_ipv6)) if on)
    if mode != "separate":
        return [Device(DEVICE, listen_port, families)]
    out = []
    if enable_ipv4:
        out.append(Device(DEVICE, listen_port, (4,)))
    if enable_ipv6:
        out.append(Device(DEVICE_V6, listen_port_v6, (6,)))
    return out


def mode_problem(mode: str, enable_ipv4: bool, enable_ipv6: bool, ext: ExternalInterface) -> Optional[str]:
    """Why ``mode`` cannot work on this network and interface (one line), or None."""
    if mode not in MODES:
        return "wireguard Mode %r is not one of %s; fix Backend.Mode in the network config" % (mode, ", ".join(MODES))
    if mode == "ipv4":
        if not enable_ipv4:
            return ("wireguard Mode ipv4 sends over IPv4, but this network is IPv6-only (EnableIPv4 false) and its "
                    "leases carry no IPv4 address; use Mode separate, auto or ipv6")
        if not ext.public_ip:
            return ("wireguard Mode ipv4 sends over IPv4, but interface %s has no IPv4 address; give it one, pass "
                    "--public-ip, or use Mode separate, auto or ipv6" % ext.name)
    if mode == "ipv6":
        if not enable_ipv6:
            return ("wireguard Mode ipv6 sends over IPv6, but this network has no IPv6 (EnableIPv6 and IPv6Network "
                    "in the network config), so no lease carries a PublicIPv6; enable IPv6 or use Mode separate, "
                    "auto or ipv4")
        if not ext.public_ipv6:
            return ("wireguard Mode ipv6 sends over IPv6, but interface %s has no IPv6 address other nodes reach this "
                    "one at; give it a global IPv6 address, pass --public-ipv6, or use Mode separate, auto or ipv4"
                    % ext.name)
    if mode == "separate" and enable_ipv6 and not ext.public_ipv6:
        return ("wireguard's %s (Mode separate on a network with IPv6) sends over IPv6, but interface %s has no IPv6 "
                "address other nodes reach this one at; give it a global IPv6 address, pass --public-ipv6, or use "
                "Mode auto or ipv4" % (DEVICE_V6, ext.name))
    if mode == "separate" and enable_ipv4 and not ext.public_ip:
        return ("wireguard's %s (Mode separate on a network with IPv4) sends over IPv4, but interface %s has no IPv4 "
                "address; give it one, pass --public-ip, or use Mode auto or ipv6" % (DEVICE, ext.name))
    return None
