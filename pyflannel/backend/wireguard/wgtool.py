"""``wg`` (wireguard-tools): the calls, the wanted state of a device and the device's dump.

``wg`` drives both the kernel's WireGuard and wireguard-go (the same UAPI), so there is one
configuration code path.  Secrets (the private key, the PSK) only ever travel on a pipe (``/dev/stdin``):
never on a command line, never in a file other than the key file.
"""

from __future__ import annotations

import base64
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from pyflannel.backend import BackendError

ZERO_KEY = base64.b64encode(bytes(32)).decode("ascii")  # "no pre-shared key" in WireGuard's terms
WG_TIMEOUT = 30.0


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
