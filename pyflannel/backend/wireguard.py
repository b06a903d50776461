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
* The private key lives in a key file (``--wireguard-key-file``, else ``$WIREGUARD_KEY_FILE``, else
  ``/run/flannel/wgkey``): base64 of 32 bytes on one line, mode 0400, made when missing.  Our lease
  publishes the public key as ``BackendData.PublicKey`` (IPv4 networks) and ``BackendV6Data.PublicKey``
  (IPv6 networks), whatever the mode, as Go does.
* A key is one node's: ``check_identity()`` (before ``prepare()``, with every lease) replaces a key
  that an older lease of another address already publishes — a copied key file, e.g. a cloned VM
  image — with a fresh one (the key file is rewritten atomically, one warning names the other node),
  before any device or lease of ours uses it.  Our own lease with the key (a restart) is no clash, nor
  is a younger lease with it (its node is the copy; every validator refuses its lease).  Found while
  running (both started at once), the key is replaced at once and :class:`IdentityClash` makes the
  agent exit 1; the next start publishes the new key.
* PresharedKey = the ``PSK`` option (every peer), PersistentKeepalive = ``PersistentKeepaliveInterval``
  when > 0.  Leases of other backend types are ignored.

Kernel or userspace.  The kernel's WireGuard is used when ``ip link add … type wireguard`` works.
When it does not (no module: many containers, small VMs, this project's test machine), Debian's
``wireguard-go`` runs each device in userspace (its UAPI socket /run/wireguard/<device>.sock): as the
transient systemd unit ``flannel-wireguard-go`` (``flannel-wireguard-go-v6`` for flannel-wg-v6) when the
agent runs under systemd (so a restart of flanneld.service does not take the tunnels down), else as a
detached process of its own session.  Both speak the same UAPI, and ``wg`` (wireguard-tools) drives
both, so there is one configuration code path.  An existing working device is adopted on start (same
key, same ifindex, same wireguard-go process: no flap); a device the current mode does not use (e.g.
flannel-wg-v6 after a switch to Mode auto) is removed with its wireguard-go.

How the peers are kept in step (per device):

* ``sync()`` (a whole snapshot) and ``tick()`` (repairs) are declarative: they read ``wg show <dev>
  dump``, compare it with the wanted state and, only when something differs, apply the full state with
  one ``wg syncconf <dev> /dev/stdin`` (syncconf changes only the peers that differ, so the sessions of
  unchanged peers survive; it does set the listen port again, which makes wireguard-go rebind its UDP
  socket, hence no syncconf while the dump already matches).
* ``lease_added()``/``lease_removed()`` change one peer with one ``wg set`` per device — O(1) per watch
  event, so thousands of leases arriving one by one cost thousands of small commands, not thousands of
  full resyncs of thousands of peers.
* The private key and the PSK only ever travel on a pipe (``/dev/stdin``): never on a command line,
  never in a file other than the key file.
* ``tick()`` pins each peer's endpoint to its lease: WireGuard moves an endpoint to wherever the peer's
  last authenticated packet came from, so a host holding a copy of that peer's private key (a cloned
  key file) would draw our packets for the peer to itself and decrypt them.  An endpoint at an address
  the peer's lease does not name (PublicIP, PublicIPv6) is set back to the lease's endpoint and its
  session reset (the next packet starts a fresh handshake there), with one warning per peer and
  foreign endpoint; another port at a lease address is left alone (a NAT may
  rewrite the source port; in Mode auto a peer may send over its other family).  flannel configures
  every peer from its lease, so a node behind NAT must publish where it is reached (``--public-ip``,
  ListenPort forwarded) — as it must anyway for its peers to reach it first.  A missing endpoint is
  repaired.
* ``tick()`` also resets a peer whose session only works one way (see :meth:`Device.unstick`: after two
  handshakes crossed, wireguard-go was seen here sending for up to the 120 s rekey with a session the
  other end had dropped).

A device here may carry both families (Mode auto/ipv4/ipv6), so this module settles addresses and
judges remote leases itself (``_settle``, ``_is_remote``, both IPv6-only-lease safe) instead of using
the Backend base's one-family helpers.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import logging
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

from pyflannel import catalogue, netlink
from pyflannel.backend import Backend, BackendError, ExternalInterface, IdentityClash, register
from pyflannel.leases import Lease, LeaseAttrs
from pyflannel.subnetenv import sync_dir

log = logging.getLogger("pyflannel.backend.wireguard")

DEVICE = "flannel-wg"
DEVICE_V6 = "flannel-wg-v6"
DEVICES = (DEVICE, DEVICE_V6)
UNIT = "flannel-wireguard-go"
UNIT_V6 = "flannel-wireguard-go-v6"
UNITS = {DEVICE: UNIT, DEVICE_V6: UNIT_V6}
MODES = ("separate", "auto", "ipv4", "ipv6")
SOCKET_DIR = "/run/wireguard"
DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KEY_FILE_ENV = "WIREGUARD_KEY_FILE"
ZERO_KEY = base64.b64encode(bytes(32)).decode("ascii")  # "no pre-shared key" in WireGuard's terms
SOCKET_WAIT = 10.0  # seconds wireguard-go may take to create its TUN and UAPI socket
WG_TIMEOUT = 30.0
STUCK_AFTER = 20.0  # seconds of sending without anything coming back before a peer's session is reset
# seconds (times a random 1 to 1.5) of both ends sending without a handshake before a peer is reset: two
# handshake attempts (REKEY_TIMEOUT is 5 s) that both failed
UNMET_AFTER = 10.0
AF = {4: socket.AF_INET, 6: socket.AF_INET6}
# what Go's net.IP.IsPrivate() calls private (RFC 1918, RFC 4193): auto mode's endpoint choice uses it
_PRIVATE = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("172.16.0.0/12"),
            ipaddress.ip_network("192.168.0.0/16"), ipaddress.ip_network("fc00::/7"))


# -- the private key file ---------------------------------------------------------------------------
def key_file_path(settings: Optional[Dict[str, Any]] = None, environ: Optional[Dict[str, str]] = None) -> str:
    """``--wireguard-key-file``, else ``$WIREGUARD_KEY_FILE`` (Go flanneld's name), else the default."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    return (settings or {}).get("wireguard_key_file") or environ.get(KEY_FILE_ENV) or DEFAULT_KEY_FILE


def generate_private_key() -> str:
    """32 random bytes clamped as an X25519 private key (what ``wg genkey`` does), in base64."""
    raw = bytearray(os.urandom(32))
    raw[0] &= 248
    raw[31] &= 127
    raw[31] |= 64
    return base64.b64encode(bytes(raw)).decode("ascii")


def _bad_key(path: str, problem: str) -> BackendError:
    return BackendError("wireguard private key file %s %s; delete it (a new key is made at the next start) or put "
                        "a key made by `wg genkey` in it" % (path, problem))


def read_key_file(path: str) -> str:
    """The base64 private key in ``path`` (one line; a trailing newline is fine)."""
    try:
        with open(path, "rb") as f:
            data = f.read(4096)
    except IsADirectoryError:
        raise _bad_key(path, "is a directory") from None
    except OSError as err:
        raise BackendError("cannot read the wireguard private key file %s: %s" % (path, err.strerror or err)) from None
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise _bad_key(path, "is not text (a base64 key on one line)") from None
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise _bad_key(path, "is empty" if not lines else "holds %d lines, not one key" % len(lines))
    key = lines[0].strip()
    problem = catalogue.key_problem(key)
    if problem:
        raise _bad_key(path, "holds no usable key: it " + problem.replace("wg genpsk", "wg genkey"))
    return key


def load_or_create_key(path: str) -> Tuple[str, bool]:
    """(private key, created): read ``path``, or write a fresh key there (mode 0400) when it is missing.

    The new key is written to a temporary file and linked into place, so a half-written key file is
    never seen and a key another process just made is not overwritten."""
    if os.path.lexists(path):
        key = read_key_file(path)
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            log.warning("wireguard private key file %s had mode %04o: setting 0400", path, mode)
            os.chmod(path, 0o400)
        return key, False
    key = generate_private_key()
    try:
        if not _write_key_file(path, key, replace=False):
            return read_key_file(path), False
    except OSError as err:
        raise BackendError("cannot create the wireguard private key file %s: %s; fix the directory or point "
                           "--wireguard-key-file elsewhere" % (path, err.strerror or err)) from None
    return key, True


def replace_key(path: str) -> str:
    """Write a fresh private key over the key file ``path`` (mode 0400) and return it; raises OSError.

    Atomic: the key goes to a temporary file (exclusive create) that is renamed over ``path``, so the
    file holds the old key or the new one, never a part of either."""
    key = generate_private_key()
    _write_key_file(path, key, replace=True)
    return key


def _write_key_file(path: str, key: str, replace: bool) -> bool:
    """Put ``key`` in ``path`` through a temporary file in the same directory: linked into place (False when
    ``path`` appeared meanwhile: nothing written) or, ``replace``, renamed over it.  Raises OSError."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, 0o755, exist_ok=True)
    tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # left by a crashed run that had our pid: no live process uses this name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        try:
            os.write(fd, (key + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(tmp, path)
            sync_dir(directory)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        sync_dir(directory)
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


# -- wg (wireguard-tools) -----------------------------------------------------------------------
def wg_binary() -> str:
    path = shutil.which("wg")
    if not path:
        raise BackendError("the wireguard backend needs `wg` from wireguard-tools: install the wireguard-tools "
                           "package")
    return path


def wg(*args: str, stdin: Optional[str] = None, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run([wg_binary(), *args], input=stdin if stdin is not None else "", capture_output=True,
                              text=True, timeout=WG_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise BackendError("`wg %s` did not answer within %.0f s" % (" ".join(args[:2]), WG_TIMEOUT)) from None
    if check and proc.returncode != 0:
        raise BackendError("`wg %s` failed: %s" % (" ".join(args[:2]), (proc.stderr or proc.stdout).strip()
                                                   or "exit status %d" % proc.returncode))
    return proc


def public_key(private: str) -> str:
    return wg("pubkey", stdin=private + "\n").stdout.strip()


# -- the wanted state, its rendering and the device's dump -----------------------------------------
@dataclass(frozen=True)
class Peer:
    public_key: str
    endpoint: str  # "PublicIP:port" or "[PublicIPv6]:port"
    allowed_ips: Tuple[str, ...]  # the lease's subnet(s) this device carries, e.g. ("10.100.2.0/24",)
    psk: str  # base64; ZERO_KEY = none
    keepalive: int  # seconds, 0 = off
    # the addresses its lease names the node by (PublicIP, PublicIPv6): where its packets may come from
    addresses: Tuple[str, ...] = ()

    @property
    def label(self) -> str:
        return ",".join(self.allowed_ips)


def render_config(private: str, listen_port: int, peers: List[Peer]) -> str:
    """The full device state as a ``wg syncconf`` file.  It must hold the private key and the listen
    port too: syncconf resets whatever the [Interface] section leaves out."""
    lines = ["[Interface]", "PrivateKey = %s" % private, "ListenPort = %d" % listen_port]
    for peer in sorted(peers, key=lambda p: p.public_key):
        lines += ["", "[Peer]", "PublicKey = %s" % peer.public_key, "PresharedKey = %s" % peer.psk,
                  "Endpoint = %s" % peer.endpoint, "AllowedIPs = %s" % ", ".join(peer.allowed_ips),
                  "PersistentKeepalive = %d" % peer.keepalive]
    return "\n".join(lines) + "\n"


@dataclass
class Dump:
    private_key: str
    listen_port: int
    peers: Dict[str, Dict[str, Any]]  # public key -> {psk, endpoint, allowed (set), handshake, rx, tx, keepalive}


def _canonical_net(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return text


def parse_dump(text: str) -> Dump:
    """``wg show <dev> dump``: the interface line, then one line per peer (tab-separated)."""
    rows = [line.split("\t") for line in text.splitlines() if line.strip()]
    if not rows or len(rows[0]) < 3:
        raise ValueError("unexpected `wg show dump` output: %r" % text[:200])
    head = rows[0]
    peers = {}
    for row in rows[1:]:
        if len(row) < 8:
            continue
        allowed = set() if row[3] == "(none)" else {_canonical_net(a) for a in row[3].split(",") if a}
        peers[row[0]] = {"psk": ZERO_KEY if row[1] == "(none)" else row[1],
                         "endpoint": "" if row[2] == "(none)" else row[2], "allowed": allowed,
                         "handshake": int(row[4]) if row[4].isdigit() else 0,
                         "rx": int(row[5]) if row[5].isdigit() else 0, "tx": int(row[6]) if row[6].isdigit() else 0,
                         "keepalive": 0 if row[7] == "off" else int(row[7])}
    return Dump(head[0], int(head[2]) if head[2].isdigit() else 0, peers)


def dump_differences(dump: Dump, private: str, listen_port: int, peers: List[Peer]) -> List[str]:
    """What differs between the device and the wanted state, one short phrase each (empty: in step)."""
    out = []
    if dump.private_key != private:
        out.append("private key")
    if dump.listen_port != listen_port:
        out.append("listen port %d (want %d)" % (dump.listen_port, listen_port))
    wanted = {p.public_key: p for p in peers}
    for key in dump.peers:
        if key not in wanted:
            out.append("stale peer %s" % key)
    for key, peer in wanted.items():
        have = dump.peers.get(key)
        if have is None:
            out.append("missing peer %s (%s)" % (key, peer.label))
        elif (have["allowed"] != {_canonical_net(a) for a in peer.allowed_ips} or have["psk"] != peer.psk
              or have["keepalive"] != peer.keepalive or not have["endpoint"]):
            out.append("peer %s (%s) altered" % (key, peer.label))
    return out


def endpoint(address: str, port: int) -> str:
    """``192.0.2.1:51820`` or ``[2001:db8::1]:51821``."""
    return ("[%s]:%d" if ":" in address else "%s:%d") % (address, port)


def is_private(address: str) -> bool:
    """Go's ``net.IP.IsPrivate()``: RFC 1918 IPv4 or RFC 4193 (fc00::/7) IPv6."""
    ip = ipaddress.ip_address(address)
    return any(ip.version == net.version and ip in net for net in _PRIVATE)


def select_endpoint(peer_ip: Optional[str], peer_ipv6: Optional[str], own_ip: Optional[str],
                    own_ipv6: Optional[str]) -> Optional[str]:
    """Mode auto's underlay address for a peer (Go's selectPublicEndpoint): the only one it has; of two,
    its IPv4 when that is public, else its IPv6 when both ends' IPv6 are public, else its IPv4.  Unlike
    Go, a node without an address of one family uses the other (Go would try IPv4 without having one)."""
    if peer_ip is None or peer_ipv6 is None:
        return peer_ip or peer_ipv6
    if own_ip is None and own_ipv6 is not None:
        return peer_ipv6
    if own_ipv6 is None:
        return peer_ip
    if not is_private(peer_ip):
        return peer_ip
    if not is_private(peer_ipv6) and not is_private(own_ipv6):
        return peer_ipv6
    return peer_ip


# -- who may use a key, and where a peer may be ---------------------------------------------------
def lease_keys(lease: Lease) -> Tuple[str, ...]:
    """The wireguard public keys a lease publishes (BackendData's and BackendV6Data's; usually one)."""
    if lease.attrs.backend_type != "wireguard":
        return ()
    keys = (lease.attrs.data("PublicKey", 4), lease.attrs.data("PublicKey", 6))
    return tuple(dict.fromkeys(k for k in keys if isinstance(k, str) and k))


def _age(lease: Lease) -> Tuple[int, str]:
    """Older first, as the lease validator judges two leases sharing a key: etcd's create revision, then
    the key name."""
    return (lease.created or 0, lease.key_name)


def key_clash(public: str, address: Optional[str], leases: Iterable[Optional[Lease]],
              claim_now: bool) -> Optional[Lease]:
    """The lease of another node (another address than ``address``) that holds the public key ``public``
    by an older claim than ours, or None.

    Our claim is our oldest lease (a lease with our address) that carries the key: a restart with our
    own lease is no clash, and a younger lease with the key is the other node's problem (every
    validator refuses it).  Without such a lease, ``claim_now`` (at start, before our lease is written)
    means we would claim the key now, so every other node's lease with it is older; otherwise (while
    running, our lease not at hand) nothing can be judged: None."""
    holders = [lease for lease in leases if lease is not None and public in lease_keys(lease)]
    ours = [_age(lease) for lease in holders if lease.attrs.address == address]
    others = sorted((lease for lease in holders if lease.attrs.address != address), key=_age)
    if not others:
        return None
    if ours:
        return others[0] if _age(others[0]) < min(ours) else None
    return others[0] if claim_now else None


def _endpoint_ip(text: str) -> Optional[Any]:
    """The address of ``1.2.3.4:51820`` or ``[fd00::1]:51821`` (IPv4-mapped IPv6 as IPv4), None if unreadable."""
    host = text.rsplit(":", 1)[0] if text.count(":") == 1 or text.startswith("[") else text
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    return ip.ipv4_mapped if ip.version == 6 and ip.ipv4_mapped else ip


def pin_endpoint(seen: str, peer: Peer) -> Optional[str]:
    """The endpoint to set ``peer`` back to when the device has it at ``seen``, or None when ``seen`` is fine.

    WireGuard moves a peer's endpoint to wherever its last authenticated packet came from.  flannel
    configures every peer from its lease, so the lease is authoritative: an endpoint at an address of
    the peer's lease (PublicIP or PublicIPv6, any port: a NAT may rewrite the source port, and in Mode
    auto a peer may send over the other family) is fine; any other address means another host holds
    the peer's private key (a cloned key file) or sends in its name, and our packets for that peer
    would go there.  An empty endpoint is :meth:`Device.sync_peers`' business."""
    if not seen or seen == peer.endpoint:
        return None
    ip = _endpoint_ip(seen)
    allowed = {_endpoint_ip(peer.endpoint)} | {_endpoint_ip(endpoint(a, 0)) for a in peer.addresses}
    if ip is not None and ip in allowed:
        return None
    return peer.endpoint


# -- the device: kernel or wireguard-go -------------------------------------------------------------
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
class Device:
    """One WireGuard device: its name, listen port, the address families it carries (``(4,)``, ``(6,)``
    or ``(4, 6)``) and, at run time, its ifindex, implementation and wanted peers (lease key -> Peer)."""

    name: str
    listen_port: int
    families: Tuple[int, ...]
    private: str = field(default="", repr=False)  # never in a repr or a log line
    public: str = ""  # our public key (the tie-break between two ends whose handshakes cross)
    index: int = 0
    implementation: str = ""
    proc: Optional[subprocess.Popen] = None  # wireguard-go, when this process started it detached
    want: Dict[str, Peer] = field(default_factory=dict)
    traffic: Dict[str, Tuple[int, int, float]] = field(default_factory=dict)  # key -> (rx, tx, waiting since)
    # key -> (rx, tx, reset due at): a live peer with which no handshake completes (crossed initiations)
    unmet: Dict[str, Tuple[int, int, float]] = field(default_factory=dict)
    syncs: int = 0
    roams: Dict[str, str] = field(default_factory=dict)  # peer key -> the foreign endpoint last warned about
    pins: int = 0  # endpoints set back to the lease's

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

    # -- wg -----------------------------------------------------------------------------------------
    def dump(self) -> Dump:
        try:
            return parse_dump(wg("show", self.name, "dump").stdout)
        except ValueError as err:
            raise BackendError(str(err)) from None

    def apply_interface(self) -> None:
        """Private key and listen port, set only where they differ (no rebind, no peer touched)."""
        dump = self.dump()
        args = []
        if dump.private_key != self.private:
            args += ["private-key", "/dev/stdin"]
        if dump.listen_port != self.listen_port:
            args += ["listen-port", str(self.listen_port)]
        if args:
            wg("set", self.name, *args, stdin=self.private + "\n")

    def set_peer(self, peer: Peer) -> None:
        psk = "/dev/stdin" if peer.psk != ZERO_KEY else "/dev/null"  # wg reads /dev/null as "no pre-shared key"
        wg("set", self.name, "peer", peer.public_key, "preshared-key", psk, "endpoint", peer.endpoint,
           "allowed-ips", ",".join(peer.allowed_ips),
           "persistent-keepalive", str(peer.keepalive) if peer.keepalive else "off",
           stdin=peer.psk + "\n" if peer.psk != ZERO_KEY else "")

    def remove_peer(self, peer: Peer) -> None:
        wg("set", self.name, "peer", peer.public_key, "remove")

    def put(self, name: str, peer: Optional[Peer]) -> bool:
        """The lease ``name`` wants ``peer`` (None: no peer) on this device; True when something changed."""
        old = self.want.get(name)
        if old == peer:
            return False  # unchanged (the node restarted and rewrote its lease): nothing touched
        if old is not None:
            del self.want[name]
            if peer is None or old.public_key != peer.public_key:
                self.remove_peer(old)
        if peer is None:
            return old is not None
        for other_name, other in list(self.want.items()):
            if other.public_key == peer.public_key:  # the key moved to another lease
                del self.want[other_name]
        self.want[name] = peer
        self.set_peer(peer)
        return True

    def drop(self, name: str) -> Optional[Peer]:
        old = self.want.pop(name, None)
        if old is not None:
            self.remove_peer(old)
        return old

    def sync_peers(self, dump: Optional[Dump] = None) -> int:
        """One ``wg syncconf`` of the whole wanted state when the device's dump differs; 1 if applied."""
        dump = dump or self.dump()
        peers = list(self.want.values())
        diff = dump_differences(dump, self.private, self.listen_port, peers)
        if not diff:
            return 0
        text = render_config(self.private, self.listen_port, peers)
        wg("syncconf", self.name, "/dev/stdin", stdin=text)
        self.syncs += 1
        shown = diff[:3] + (["%d more" % (len(diff) - 3)] if len(diff) > 3 else [])
        log.info("%s: synced %d peer(s) (%s)", self.name, len(peers), "; ".join(shown))
        return 1

    def pin_endpoints(self, dump: Dump) -> int:
        """Set back every peer whose endpoint moved to an address its lease does not name (see
        :func:`pin_endpoint`); returns how many.  Warned once per peer and foreign endpoint (a clone that
        keeps sending would otherwise log every tick), then at debug level.

        The peer is removed and added again, not only given its endpoint back: the session that moved
        it was made with the other host (a copy of the peer's key), and our next packet for the peer must
        start a fresh handshake with the host at the lease's address instead of going there under keys
        it does not hold (seen here: without it, the peer stayed unreachable until a keepalive of the
        other host reset WireGuard's 15 s retry timer, again and again).  The other host has to make a
        new handshake to draw the endpoint again, not just send a keepalive."""
        wanted = {p.public_key: p for p in self.want.values()}
        for key in list(self.roams):
            if key not in wanted:
                del self.roams[key]
        pinned = 0
        for key, have in dump.peers.items():
            peer = wanted.get(key)
            back = pin_endpoint(have["endpoint"], peer) if peer is not None else None
            if back is None:
                continue
            self.remove_peer(peer)  # type: ignore[arg-type]
            self.set_peer(peer)  # type: ignore[arg-type]
            self.traffic.pop(key, None)  # a new session: unstick() starts watching it afresh
            pinned += 1
            if self.roams.get(key) != have["endpoint"]:
                self.roams[key] = have["endpoint"]
                log.warning("%s: peer %s's endpoint moved to %s, which is not in its lease (%s); set back to %s "
                            "(another host holds that node's wireguard key or sends in its name)", self.name, key,
                            have["endpoint"], peer.label, back)  # type: ignore[union-attr]
            else:
                log.debug("%s: peer %s's endpoint moved to %s again; set back to %s", self.name, key,
                          have["endpoint"], back)
        self.pins += pinned
        return pinned

    def _unmet(self, key: str, rx: int, tx: int, now: float, peer: Optional[Peer]) -> int:
        """A peer without a handshake: reset (1) once it has been sending to us and we to it (both counters
        grew) for UNMET_AFTER to 1.5 x UNMET_AFTER seconds.  Both ends then keep sending initiations that
        cross on the wire: each takes the other's initiation, which drops its own pending one, so each end's
        response is refused by the other; with traffic on both sides every 5 s they stay in step for good.
        The reset makes this end's next packet start a handshake at once, out of that step, provided the
        other end does not reset at the same moment (our agents tick in step when started together): the
        end with the smaller public key resets first, the other only three times later (a peer that is not
        one of our agents never resets).  The clock starts again whenever neither side sent anything since
        the last look (an idle peer has no handshake either).  A peer that is down sends nothing (rx
        stays): never reset."""
        seen = self.unmet.get(key)
        if seen is None or (rx == seen[0] and tx == seen[1]):
            later = 1.0 if not self.public or self.public < key else 3.0
            self.unmet[key] = (rx, tx, now + UNMET_AFTER * later * random.uniform(1.0, 1.5))
            return 0
        if peer is None or now < seen[2] or rx == seen[0] or tx == seen[1]:
            return 0
        log.warning("%s: no handshake with peer %s (%s) completed while both sides sent (%d bytes in, %d out): "
                    "resetting its session", self.name, key, peer.label, rx - seen[0], tx - seen[1])
        self.remove_peer(peer)
        self.set_peer(peer)
        del self.unmet[key]
        return 1

    def unstick(self, dump: Dump) -> int:
        """Reset a peer whose session only works one way; returns how many were reset.

        When both ends start a handshake at the same moment, wireguard-go can end up sending with a
        session the other end does not hold: our data goes out, nothing authenticated comes back,
        and since the handshake reply did arrive neither side starts a new one before the 120 s
        rekey.  A healthy peer answers within 10 s of our data (its data or a passive keepalive), so
        a peer with a handshake, growing tx and unchanged rx for STUCK_AFTER seconds is removed and
        added again: the next packet starts a fresh handshake."""
        now = time.monotonic()
        reset = 0
        wanted = {p.public_key: p for p in self.want.values()}
        for known in (self.traffic, self.unmet):
            for key in list(known):
                if key not in dump.peers:
                    del known[key]
        for key, have in dump.peers.items():
            rx, tx = have["rx"], have["tx"]
            if not have["handshake"]:
                self.traffic.pop(key, None)
                reset += self._unmet(key, rx, tx, now, wanted.get(key))
                continue
            self.unmet.pop(key, None)
            seen = self.traffic.get(key)
            if seen is None or rx != seen[0] or not have["handshake"]:
                self.traffic[key] = (rx, tx, 0.0)
            elif tx != seen[1] and not seen[2]:
                self.traffic[key] = (rx, tx, now)  # we send, and wait for an answer from here on
            elif seen[2] and now - seen[2] >= STUCK_AFTER and key in wanted:
                log.warning("%s: peer %s (%s) sent nothing back for %.0f s while we sent %d bytes: resetting its "
                            "session", self.name, key, wanted[key].label, now - seen[2], tx - seen[1])
                self.remove_peer(wanted[key])
                self.set_peer(wanted[key])
                del self.traffic[key]
                reset += 1
        return reset


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


@register("wireguard")
class WireguardBackend(Backend):
    def __init__(self, config: Any, ext_iface: ExternalInterface, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config, ext_iface, settings)
        self.mode = config.option("Mode") or "separate"
        self.use_ipv4 = bool(config.enable_ipv4)
        self.use_ipv6 = bool(config.enable_ipv6)
        problem = mode_problem(self.mode, self.use_ipv4, self.use_ipv6, ext_iface)
        if problem:
            raise BackendError(problem)
        self.listen_port = int(config.option("ListenPort") or 51820)
        self.listen_port_v6 = int(config.option("ListenPortV6") or 51821)
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
    def _settle(self, device: Device) -> int:
        """MTU, up and, once we hold a lease, the lease's /32 and/or /128 (per the families the device
        carries) as its only address of that family; returns how many had to change."""
        msg = netlink.link_by_name(device.name)
        if msg is None:
            return 0
        changed = 0
        if msg.get_attr("IFLA_MTU") != self.mtu():
            netlink.set_link(device.index, mtu=self.mtu())
            changed += 1
        if not msg["flags"] & 1:
            netlink.set_link(device.index, state="up")
            changed += 1
        lease = self.lease
        if lease is None:
            return changed
        for version, subnet in ((4, lease.subnet), (6, lease.ipv6_subnet)):
            if subnet is None or version not in device.families:
                continue
            own = ipaddress.ip_interface("%s/%d" % (subnet.network_address, 32 if version == 4 else 128))
            if netlink.set_only_address(device.index, own):
                log.info("%s has address %s (lease %s)", device.name, own, subnet)
                changed += 1
        return changed

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
        changed = sum(self._settle(d) for d in self.devices if d.index)
        if self.lease is None:
            return changed
        wanted = self._wanted_routes()
        for family in (socket.AF_INET, socket.AF_INET6):
            have = netlink.routes(netlink.RTPROT_WIREGUARD, family)
            for r in have:
                if wanted.get(r["dst"]) != r["oif"] or r["gateway"]:
                    netlink.delete_route(r["dst"], oif=r["oif"], proto=netlink.RTPROT_WIREGUARD, gateway=r["gateway"])
                    changed += 1
            for network, index in wanted.items():
                if AF[network.version] != family:
                    continue
                if not any(r["dst"] == network and r["oif"] == index and not r["gateway"] for r in have):
                    netlink.replace_route(network, index, netlink.RTPROT_WIREGUARD)
                    changed += 1
        return changed

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

    def _is_remote(self, lease: Lease) -> bool:
        """A wireguard lease that shares no subnet with ours (works for IPv6-only leases too)."""
        if lease.attrs.backend_type != "wireguard":
            return False
        own = self.lease
        return own is None or not set(lease.subnets()) & set(own.subnets())

    def _peer_for(self, lease: Lease, device: Device) -> Optional[Peer]:
        """The peer ``lease`` wants on ``device`` (None: none, e.g. another backend, no key, our own)."""
        if not self._is_remote(lease):
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
