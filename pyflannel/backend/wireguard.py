"""wireguard backend: one encrypted device ``flannel-wg``, one WireGuard peer per remote lease.

Compatible with Go flanneld v0.20's wireguard backend (IPv4):

* device ``flannel-wg``, address = the lease subnet's network address as a /32, MTU = interface MTU
  - 80 (or the ``MTU`` option), one scope-link route for the whole Network via the device, tagged
  with the catalogue's route protocol (0x6F) so a later start or another backend can find it again;
* the private key lives in a key file (``--wireguard-key-file``, else ``$WIREGUARD_KEY_FILE``, else
  ``/run/flannel/wgkey``): base64 of 32 bytes on one line, mode 0400, made when missing; our lease
  publishes the public key as ``BackendData.PublicKey``;
* per remote wireguard lease one peer: PublicKey from the lease, Endpoint ``PublicIP:ListenPort``,
  AllowedIPs = the lease's subnet, PresharedKey = the ``PSK`` option (every peer), PersistentKeepalive
  = ``PersistentKeepaliveInterval`` when > 0.  Leases of other backend types are ignored.

Kernel or userspace.  The kernel's WireGuard is used when ``ip link add … type wireguard`` works.
When it does not (no module: many containers, small VMs, this project's test machine), Debian's
``wireguard-go`` runs the device in userspace: as the transient systemd unit
``flannel-wireguard-go`` when the agent runs under systemd (so a restart of flanneld.service does not
take the tunnel down), else as a detached process of its own session.  Both speak the same UAPI, and
``wg`` (wireguard-tools) drives both, so there is one configuration code path.  An existing working
``flannel-wg`` is adopted on start (same key, same ifindex, same wireguard-go process: no flap).

How the peers are kept in step:

* ``sync()`` (a whole snapshot) and ``tick()`` (repairs) are declarative: they read ``wg show
  flannel-wg dump``, compare it with the wanted state and, only when something differs, apply the
  full state with one ``wg syncconf flannel-wg /dev/stdin`` (syncconf changes only the peers that
  differ, so the sessions of unchanged peers survive; it does set the listen port again, which makes
  wireguard-go rebind its UDP socket, hence no syncconf while the dump already matches).
* ``lease_added()``/``lease_removed()`` change one peer with one ``wg set`` — O(1) per watch event,
  so thousands of leases arriving one by one cost thousands of small commands, not thousands of full
  resyncs of thousands of peers.
* The private key and the PSK only ever travel on a pipe (``/dev/stdin``): never on a command line,
  never in a file other than the key file.
* ``tick()`` tolerates an endpoint that differs from the lease's (WireGuard roams to where a peer's
  authenticated packets come from, e.g. behind NAT); a missing endpoint is repaired.
* ``tick()`` also resets a peer whose session only works one way (see :meth:`_unstick`: after two
  handshakes crossed, wireguard-go was seen here sending for up to the 120 s rekey with a session the
  other end had dropped).
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from pyflannel import catalogue, netlink
from pyflannel.backend import Backend, BackendError, ExternalInterface, register
from pyflannel.leases import Lease, LeaseAttrs

log = logging.getLogger("pyflannel.backend.wireguard")

DEVICE = "flannel-wg"
UNIT = "flannel-wireguard-go"
SOCKET_DIR = "/run/wireguard"
DEFAULT_KEY_FILE = "/run/flannel/wgkey"
KEY_FILE_ENV = "WIREGUARD_KEY_FILE"
ZERO_KEY = base64.b64encode(bytes(32)).decode("ascii")  # "no pre-shared key" in WireGuard's terms
SOCKET_WAIT = 10.0  # seconds wireguard-go may take to create its TUN and UAPI socket
WG_TIMEOUT = 30.0
STUCK_AFTER = 20.0  # seconds of sending without anything coming back before a peer's session is reset


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
    directory = os.path.dirname(path) or "."
    try:
        os.makedirs(directory, 0o755, exist_ok=True)
        key = generate_private_key()
        tmp = os.path.join(directory, ".%s.%d.tmp" % (os.path.basename(path), os.getpid()))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        try:
            os.write(fd, (key + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            os.unlink(tmp)
            return read_key_file(path), False
        os.unlink(tmp)
    except OSError as err:
        raise BackendError("cannot create the wireguard private key file %s: %s; fix the directory or point "
                           "--wireguard-key-file elsewhere" % (path, err.strerror or err)) from None
    return key, True


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
    endpoint: str  # "PublicIP:port"
    allowed_ip: str  # the lease's subnet, e.g. "10.100.2.0/24"
    psk: str  # base64; ZERO_KEY = none
    keepalive: int  # seconds, 0 = off


def render_config(private: str, listen_port: int, peers: List[Peer]) -> str:
    """The full device state as a ``wg syncconf`` file.  It must hold the private key and the listen
    port too: syncconf resets whatever the [Interface] section leaves out."""
    lines = ["[Interface]", "PrivateKey = %s" % private, "ListenPort = %d" % listen_port]
    for peer in sorted(peers, key=lambda p: p.public_key):
        lines += ["", "[Peer]", "PublicKey = %s" % peer.public_key, "PresharedKey = %s" % peer.psk,
                  "Endpoint = %s" % peer.endpoint, "AllowedIPs = %s" % peer.allowed_ip,
                  "PersistentKeepalive = %d" % peer.keepalive]
    return "\n".join(lines) + "\n"


@dataclass
class Dump:
    private_key: str
    listen_port: int
    peers: Dict[str, Dict[str, Any]]  # public key -> {psk, endpoint, allowed (set), handshake, rx, tx, keepalive}


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
        allowed = set() if row[3] == "(none)" else {a for a in row[3].split(",") if a}
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
            out.append("missing peer %s (%s)" % (key, peer.allowed_ip))
        elif (have["allowed"] != {peer.allowed_ip} or have["psk"] != peer.psk or have["keepalive"] != peer.keepalive
              or not have["endpoint"]):
            out.append("peer %s (%s) altered" % (key, peer.allowed_ip))
    return out


# -- the device: kernel or wireguard-go -------------------------------------------------------------
def _socket_path() -> str:
    return os.path.join(SOCKET_DIR, DEVICE + ".sock")


def _device_answers() -> bool:
    try:
        return wg("show", DEVICE, "listen-port", check=False).returncode == 0
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


def stop_unit() -> bool:
    """Stop the transient wireguard-go unit if there is one (True when it was running)."""
    if not shutil.which("systemctl") or not os.path.isdir("/run/systemd/system"):
        return False
    active = _systemctl("is-active", "--quiet", UNIT + ".service").returncode == 0
    if active:
        _systemctl("stop", UNIT + ".service")
    _systemctl("reset-failed", UNIT + ".service")  # a failed unit of that name would block systemd-run
    return active


@register("wireguard")
class WireguardBackend(Backend):
    def __init__(self, config: Any, ext_iface: ExternalInterface, settings: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config, ext_iface, settings)
        mode = config.option("Mode") or "separate"
        if mode == "ipv6":
            raise BackendError("wireguard Mode ipv6 needs IPv6 support, which this pyflannel does not have yet; use "
                               "Mode separate (the default), auto or ipv4")
        self.mode = mode
        self.listen_port = int(config.option("ListenPort") or 51820)
        self.psk = config.option("PSK") or ZERO_KEY
        self.keepalive = int(config.option("PersistentKeepaliveInterval") or 0)
        self.key_file = key_file_path(self.settings)
        self.private = ""
        self.public = ""
        self.dev = DEVICE
        self.index = 0
        self.implementation = ""
        self.proc: Optional[subprocess.Popen] = None  # wireguard-go, when this process started it detached
        self._want: Dict[ipaddress.IPv4Network, Peer] = {}
        self._traffic: Dict[str, Tuple[int, int, float]] = {}  # key -> (rx, tx, waiting for an answer since)
        self._lock = threading.RLock()
        self.repairs = 0
        self.syncs = 0

    # -- device -----------------------------------------------------------------------------------
    def _adopt(self) -> Optional[Any]:
        """The existing flannel-wg if it works (kernel device, or a TUN whose wireguard-go answers)."""
        msg = netlink.link_by_name(self.dev)
        if msg is None:
            return None
        kind = netlink.link_kind(msg)
        if kind == "wireguard" or (kind == "tun" and _device_answers()):
            self.implementation = "kernel" if kind == "wireguard" else "wireguard-go"
            return msg
        log.info("%s exists but is not a working WireGuard device (kind %s): recreating it", self.dev, kind)
        netlink.delete_link(self.dev)
        return None

    def _create(self) -> Any:
        kernel_error = netlink.create_link(self.dev, "wireguard")
        if kernel_error is None:
            self.implementation = "kernel"
            log.info("%s: using the kernel's WireGuard", self.dev)
        else:
            self._start_wireguard_go(kernel_error)
        msg = netlink.link_by_name(self.dev)
        if msg is None:
            raise BackendError("%s vanished right after it was created" % self.dev)
        return msg

    def _start_wireguard_go(self, kernel_error: str) -> None:
        binary = shutil.which("wireguard-go")
        if not binary:
            raise BackendError(
                "cannot create %s: no kernel WireGuard (%s) and wireguard-go is not installed; install the "
                "wireguard-go package (userspace WireGuard) or load the wireguard kernel module"
                % (self.dev, kernel_error))
        self.implementation = "wireguard-go"
        if under_systemd():
            stop_unit()  # a unit left over from a device that is gone
            proc = subprocess.run(
                ["systemd-run", "--unit", UNIT, "--collect", "--quiet", "--description",
                 "userspace WireGuard for flanneld's %s" % self.dev, "-p", "Restart=no",
                 binary, "-f", self.dev], capture_output=True, text=True, timeout=30, check=False)
            if proc.returncode != 0:
                raise BackendError("cannot start wireguard-go for %s as the transient unit %s: %s"
                                   % (self.dev, UNIT, (proc.stderr or proc.stdout).strip()))
            how = "as the transient systemd unit %s" % UNIT
        else:
            self.proc = subprocess.Popen([binary, "-f", self.dev], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True, close_fds=True)
            how = "detached (pid %d)" % self.proc.pid
        deadline = time.monotonic() + SOCKET_WAIT
        while not (os.path.exists(_socket_path()) and netlink.link_by_name(self.dev) is not None
                   and _device_answers()):
            if self.proc is not None and self.proc.poll() is not None:
                raise BackendError("wireguard-go for %s exited with status %s at start; is /dev/net/tun there and "
                                   "another %s running?" % (self.dev, self.proc.returncode, self.dev))
            if time.monotonic() > deadline:
                raise BackendError("wireguard-go for %s did not create %s within %.0f s" % (
                    self.dev, _socket_path(), SOCKET_WAIT))
            time.sleep(0.05)
        log.info("%s: no kernel WireGuard (%s): running the userspace wireguard-go %s", self.dev, kernel_error, how)

    def _ensure_device(self) -> None:
        msg = self._adopt()
        if msg is not None:
            log.info("%s: reusing the existing device (%s, ifindex %d)", self.dev, self.implementation, msg["index"])
        else:
            msg = self._create()
        self.index = msg["index"]
        self._apply_interface()

    def _dump(self) -> Dump:
        try:
            return parse_dump(wg("show", self.dev, "dump").stdout)
        except ValueError as err:
            raise BackendError(str(err)) from None

    def _apply_interface(self) -> None:
        """Private key and listen port, set only where they differ (no rebind, no peer touched)."""
        dump = self._dump()
        args = []
        if dump.private_key != self.private:
            args += ["private-key", "/dev/stdin"]
        if dump.listen_port != self.listen_port:
            args += ["listen-port", str(self.listen_port)]
        if args:
            wg("set", self.dev, *args, stdin=self.private + "\n")

    def _link_settings(self) -> int:
        """MTU, up, address, the Network route; returns how many had to be changed."""
        msg = netlink.link_by_name(self.dev)
        if msg is None:
            return 0
        changed = self.settle_device(msg, self.dev)
        if self.lease is None:
            return changed
        network = self.config.network
        have = netlink.routes(netlink.RTPROT_WIREGUARD)
        for r in have:
            if r["dst"] != network or r["oif"] != self.index or r["gateway"]:
                netlink.delete_route(r["dst"], oif=r["oif"], proto=netlink.RTPROT_WIREGUARD, gateway=r["gateway"])
                changed += 1
        if not any(r["dst"] == network and r["oif"] == self.index and not r["gateway"] for r in have):
            netlink.replace_route(network, self.index, netlink.RTPROT_WIREGUARD)
            changed += 1
        return changed

    # -- life cycle -------------------------------------------------------------------------------
    def prepare(self) -> LeaseAttrs:
        with self._lock:
            if not self.private:
                wg_binary()
                self.private, created = load_or_create_key(self.key_file)
                self.public = public_key(self.private)
                log.info("%s wireguard private key file %s (public key %s)",
                         "created the" if created else "using the", self.key_file, self.public)
            if not self.index:
                self._ensure_device()
                self._link_settings()
            return LeaseAttrs(self.ext_iface.public_ip, "wireguard", {"PublicKey": self.public})

    def configure(self, lease: Lease) -> None:
        with self._lock:
            self.lease = lease
            self._link_settings()
            old = self._want.pop(lease.subnet, None)
            if old is not None:
                self._remove_peer(old)

    def _peer_for(self, lease: Lease) -> Optional[Peer]:
        attrs = lease.attrs
        key = attrs.data("PublicKey")
        if not self.is_remote(lease) or not key or key == self.public:
            return None
        return Peer(key, "%s:%d" % (attrs.public_ip, self.listen_port), str(lease.subnet), self.psk, self.keepalive)

    def _set_peer(self, peer: Peer) -> None:
        psk = "/dev/stdin" if peer.psk != ZERO_KEY else "/dev/null"  # wg reads /dev/null as "no pre-shared key"
        wg("set", self.dev, "peer", peer.public_key, "preshared-key", psk, "endpoint", peer.endpoint,
           "allowed-ips", peer.allowed_ip, "persistent-keepalive", str(peer.keepalive) if peer.keepalive else "off",
           stdin=peer.psk + "\n" if peer.psk != ZERO_KEY else "")

    def _remove_peer(self, peer: Peer) -> None:
        wg("set", self.dev, "peer", peer.public_key, "remove")

    def lease_added(self, lease: Lease) -> None:
        with self._lock:
            peer = self._peer_for(lease)
            old = self._want.get(lease.subnet)
            if old == peer:
                return  # unchanged (the node restarted and rewrote its lease): nothing touched
            if old is not None:
                del self._want[lease.subnet]
                if peer is None or old.public_key != peer.public_key:
                    self._remove_peer(old)
            if peer is None:
                return
            for subnet, other in list(self._want.items()):
                if other.public_key == peer.public_key:  # the key moved to another subnet
                    del self._want[subnet]
            self._want[lease.subnet] = peer
            self._set_peer(peer)
            log.info("lease %s: peer %s at %s", lease.subnet, peer.public_key, peer.endpoint)

    def lease_removed(self, lease: Lease) -> None:
        with self._lock:
            old = self._want.pop(lease.subnet, None)
            if old is not None:
                self._remove_peer(old)
                log.info("lease %s gone: removed its peer %s", lease.subnet, old.public_key)

    def sync(self, leases: List[Lease]) -> None:
        with self._lock:
            want: Dict[ipaddress.IPv4Network, Peer] = {}
            seen = set()
            for lease in leases:
                peer = self._peer_for(lease)
                if peer is not None and peer.public_key not in seen:
                    seen.add(peer.public_key)
                    want[lease.subnet] = peer
            self._want = want
            self._sync_peers()

    def _sync_peers(self, dump: Optional[Dump] = None) -> int:
        """One ``wg syncconf`` of the whole wanted state when the device's dump differs; 1 if applied."""
        dump = dump or self._dump()
        peers = list(self._want.values())
        diff = dump_differences(dump, self.private, self.listen_port, peers)
        if not diff:
            return 0
        text = render_config(self.private, self.listen_port, peers)
        wg("syncconf", self.dev, "/dev/stdin", stdin=text)
        self.syncs += 1
        shown = diff[:3] + (["%d more" % (len(diff) - 3)] if len(diff) > 3 else [])
        log.info("%s: synced %d peer(s) (%s)", self.dev, len(peers), "; ".join(shown))
        return 1

    def tick(self) -> None:
        """Bring back a vanished device (or wireguard-go), then its settings, route and peers."""
        with self._lock:
            if self.lease is None:
                return
            if self.proc is not None and self.proc.poll() is not None:
                log.warning("wireguard-go for %s exited with status %s", self.dev, self.proc.returncode)
                self.proc = None
            msg = netlink.link_by_name(self.dev)
            gone_quiet = self.implementation == "wireguard-go" and not self._still_answers()
            if msg is None or msg["index"] != self.index or gone_quiet:
                log.warning("%s disappeared or stopped answering: recreating it", self.dev)
                if msg is not None:
                    netlink.delete_link(self.dev)
                self.index = 0
                self._ensure_device()
                self.repairs += 1
            else:
                self._apply_interface()
            self.repairs += self._link_settings()
            dump = self._dump()
            self.repairs += self._sync_peers(dump) + self._unstick(dump)

    def _unstick(self, dump: Dump) -> int:
        """Reset a peer whose session only works one way; returns how many were reset.

        When both ends start a handshake at the same moment, wireguard-go can end up sending with a
        session the other end does not hold: our data goes out, nothing authenticated comes back,
        and since the handshake reply did arrive neither side starts a new one before the 120 s
        rekey.  A healthy peer answers within 10 s of our data (its data or a passive keepalive), so
        a peer with a handshake, growing tx and unchanged rx for STUCK_AFTER seconds is removed and
        added again: the next packet starts a fresh handshake."""
        now = time.monotonic()
        reset = 0
        wanted = {p.public_key: p for p in self._want.values()}
        for key in list(self._traffic):
            if key not in dump.peers:
                del self._traffic[key]
        for key, have in dump.peers.items():
            rx, tx = have["rx"], have["tx"]
            seen = self._traffic.get(key)
            if seen is None or rx != seen[0] or not have["handshake"]:
                self._traffic[key] = (rx, tx, 0.0)
            elif tx != seen[1] and not seen[2]:
                self._traffic[key] = (rx, tx, now)  # we send, and wait for an answer from here on
            elif seen[2] and now - seen[2] >= STUCK_AFTER and key in wanted:
                log.warning("%s: peer %s (%s) sent nothing back for %.0f s while we sent %d bytes: resetting its "
                            "session", self.dev, key, wanted[key].allowed_ip, now - seen[2], tx - seen[1])
                self._remove_peer(wanted[key])
                self._set_peer(wanted[key])
                del self._traffic[key]
                reset += 1
        return reset

    @staticmethod
    def _still_answers() -> bool:
        """wireguard-go answers on its socket; asked again after a moment before it is declared dead (a
        busy machine must not make us recreate a working device)."""
        if _device_answers():
            return True
        time.sleep(0.5)
        return _device_answers()

    def cleanup(self) -> None:
        with self._lock:
            self._remove_all()
            self._want = {}
            self.index = 0

    @staticmethod
    def _remove_all() -> Tuple[bool, int, bool]:
        routes = netlink.delete_routes(netlink.RTPROT_WIREGUARD)
        msg = netlink.link_by_name(DEVICE)
        removed = msg is not None and netlink.link_kind(msg) in ("wireguard", "tun")
        if removed:
            netlink.delete_link(DEVICE)  # ends a wireguard-go serving it
        unit = stop_unit()
        return removed, routes, unit

    @classmethod
    def remove_installed(cls, ext_iface: ExternalInterface) -> None:
        removed, routes, unit = cls._remove_all()
        if removed or routes or unit:
            log.info("removed what an earlier wireguard backend left: %s, %d route(s)%s",
                     DEVICE if removed else "no device", routes, ", unit %s" % UNIT if unit else "")

    # -- observability ----------------------------------------------------------------------------
    def status(self) -> Dict[str, Any]:
        return {"backend": self.name, "device": self.dev, "implementation": self.implementation,
                "public_key": self.public, "listen_port": self.listen_port, "key_file": self.key_file,
                "psk": self.psk != ZERO_KEY, "persistent_keepalive": self.keepalive, "mtu": self.mtu(),
                "peers": len(self._want), "remote_leases": len(self._want)}

    def metrics(self) -> Dict[str, float]:
        return {"datapath_remote_leases": float(len(self._want)), "datapath_repairs_total": float(self.repairs),
                "wireguard_peers": float(len(self._want)), "wireguard_syncs_total": float(self.syncs),
                "wireguard_userspace": 1.0 if self.implementation == "wireguard-go" else 0.0}
