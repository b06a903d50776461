"""A WireGuard device's peers: where a peer is reached, and how the device's peers are kept in step.

Per device (see :class:`WgDevice`):

* ``sync_peers()`` (a whole snapshot, and the repairs of ``tick()``) is declarative: it reads ``wg show
  <dev> dump``, compares it with the wanted state and, only when something differs, applies the full state
  with one ``wg syncconf <dev> /dev/stdin`` (syncconf changes only the peers that differ, so the sessions
  of unchanged peers survive; it does set the listen port again, which makes wireguard-go rebind its UDP
  socket, hence no syncconf while the dump already matches).
* ``put()``/``drop()`` change one peer with one ``wg set`` — O(1) per watch event, so thousands of leases
  arriving one by one cost thousands of small commands, not thousands of full resyncs of thousands of peers.
* ``pin_endpoints()`` pins each peer's endpoint to its lease: WireGuard moves an endpoint to wherever the
  peer's last authenticated packet came from, so a host holding a copy of that peer's private key (a
  cloned key file) would draw our packets for the peer to itself and decrypt them.  An endpoint at an
  address the peer's lease does not name (PublicIP, PublicIPv6) is set back to the lease's endpoint and
  its session reset (the next packet starts a fresh handshake there), with one warning per peer and
  foreign endpoint; another port at a lease address is left alone (a NAT may rewrite the source port; in
  Mode auto a peer may send over its other family).  flannel configures every peer from its lease, so a
  node behind NAT must publish where it is reached (``--public-ip``, ListenPort forwarded) — as it must
  anyway for its peers to reach it first.  A missing endpoint is repaired by ``sync_peers()``.
* ``unstick()`` resets a peer whose session only works one way (after two handshakes crossed,
  wireguard-go was seen here sending for up to the 120 s rekey with a session the other end had dropped),
  and a live peer with which no handshake completes.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from pyflannel.backend import BackendError
from pyflannel.backend.wireguard.wgtool import ZERO_KEY, Dump, Peer, dump_differences, parse_dump, render_config, wg

log = logging.getLogger("pyflannel.backend.wireguard")

STUCK_AFTER = 20.0  # seconds of sending without anything coming back before a peer's session is reset
# seconds (times a random 1 to 1.5) of both ends sending without a handshake before a peer is reset: two
# handshake attempts (REKEY_TIMEOUT is 5 s) that both failed
UNMET_AFTER = 10.0
# what Go's net.IP.IsPrivate() calls private (RFC 1918, RFC 4193): auto mode's endpoint choice uses it
_PRIVATE = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("172.16.0.0/12"),
            ipaddress.ip_network("192.168.0.0/16"), ipaddress.ip_network("fc00::/7"))


# -- where a peer is reached ----------------------------------------------------------------------
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


# -- a device's peers ---------------------------------------------------------------------------------
@dataclass
class WgDevice:
    """A WireGuard device as ``wg`` configures it: its name, listen port, the address families it carries
    (``(4,)``, ``(6,)`` or ``(4, 6)``), our keys and the wanted peers (lease key -> Peer), with what the
    session repairs remember per peer.  :class:`~pyflannel.backend.wireguard.device.Device` adds the link."""

    name: str
    listen_port: int
    families: Tuple[int, ...]
    private: str = field(default="", repr=False)  # never in a repr or a log line
    public: str = ""  # our public key (the tie-break between two ends whose handshakes cross)
    want: Dict[str, Peer] = field(default_factory=dict)
    traffic: Dict[str, Tuple[int, int, float]] = field(default_factory=dict)  # key -> (rx, tx, waiting since)
    # key -> (rx, tx, reset due at): a live peer with which no handshake completes (crossed initiations)
    unmet: Dict[str, Tuple[int, int, float]] = field(default_factory=dict)
    syncs: int = 0
    roams: Dict[str, str] = field(default_factory=dict)  # peer key -> the foreign endpoint last warned about
    pins: int = 0  # endpoints set back to the lease's

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
