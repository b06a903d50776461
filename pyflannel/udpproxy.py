"""The udp backend's packet pump: a worker process moving raw IPv4 packets between one TUN queue and
one UDP socket.  Standard library only, so it starts fast and does nothing else.

Started by :mod:`pyflannel.backend.udp` as ``python -m pyflannel.udpproxy MODE TUN_FD SOCK_FD CTL_FD
STATS_FD SLOT SUBNET_LEN`` with the descriptors passed down:

* ``tx`` mode: read a packet from the TUN queue, find the remote node by the destination's subnet
  (one dict lookup), decrement the TTL once (the tunnel is one hop), send it as the whole payload of
  a UDP datagram to ``PublicIP:port`` (Go flanneld's wire format).  No lease for the destination ->
  ICMP net-unreachable back into the TUN.
* ``rx`` mode: receive a datagram; drop (and count) it unless its source address holds a lease;
  write the payload into the TUN queue.
* ``both``: the two loops as two threads of one process.

The control descriptor carries newline-delimited JSON snapshots from the agent
(``{"routes": {"<subnet int>": "<public ip>"}, "port": 8285}``); end of
file on it (the agent went away) ends the worker.  Counters are written every half second into the
shared stats region (eight little-endian uint64 per slot, see ``STATS``).

The per-packet path allocates as little as Python allows: one preallocated buffer per direction,
pre-sliced memoryviews for every packet length, the routing table swapped in as a whole.
"""

from __future__ import annotations

import json
import mmap
import os
import socket
import struct
import sys
import threading
import time
from typing import Dict, List, Optional, Tuple

STATS = ("packets_out", "bytes_out", "packets_in", "bytes_in", "drops_unknown_source", "drops_no_route",
         "drops_ttl", "errors")
SLOT_SIZE = 8 * len(STATS)
MAX_VIEW = 2048  # pre-sliced memoryviews for packets up to this size
BUF_SIZE = 65536


class State:
    def __init__(self, subnet_len: int) -> None:
        self.shift = 32 - subnet_len
        self.routes: Dict[int, Tuple[str, int]] = {}
        self.allowed: Dict[str, bool] = {}
        self.counters: List[int] = [0] * len(STATS)

    def load(self, snapshot: dict) -> None:
        port = int(snapshot.get("port", 8285))
        routes = {int(k): (ip, port) for k, ip in snapshot.get("routes", {}).items()}
        self.allowed = {ip: True for ip in set(snapshot.get("routes", {}).values())}
        self.routes = routes


def checksum(data: bytes) -> int:
    """The Internet checksum: the big integer modulo 0xffff is the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = int.from_bytes(data, "big") % 0xFFFF
    return (~total) & 0xFFFF


_last_icmp = [0.0, 0]


def icmp_unreachable(state: State, packet: memoryview, n: int, tunfd: int) -> None:
    """ICMP destination unreachable (net unreachable) for ``packet``, written back into the TUN;
    at most 100 per second, never in answer to an ICMP error."""
    ihl = (packet[0] & 0x0F) * 4
    if packet[9] == 1 and n > ihl and packet[ihl] in (3, 4, 5, 11, 12):
        return
    now = time.monotonic()
    if now - _last_icmp[0] >= 1.0:
        _last_icmp[0], _last_icmp[1] = now, 0
    if _last_icmp[1] >= 100:
        return
    _last_icmp[1] += 1
    # The source is the unreachable subnet's base address: never an address of this host (the kernel
    # drops packets from the TUN whose source is local), and on the path back through flannel0.
    dst = struct.unpack_from("!I", packet, 16)[0]
    source = struct.pack("!I", (dst >> state.shift) << state.shift)
    quoted = bytes(packet[:min(n, ihl + 8)])
    icmp = bytearray(b"\x03\x00\0\0\0\0\0\0" + quoted)
    struct.pack_into("!H", icmp, 2, checksum(bytes(icmp)))
    header = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0xC0, 20 + len(icmp), 0, 0, 64, 1, 0, source,
                                   bytes(packet[12:16])))
    struct.pack_into("!H", header, 10, checksum(bytes(header)))
    try:
        os.write(tunfd, bytes(header) + bytes(icmp))
    except OSError:
        state.counters[7] += 1


def tx_loop(state: State, tunfd: int, sock: socket.socket) -> None:
    buf = bytearray(BUF_SIZE)
    mv = memoryview(buf)
    views = [mv[:i] for i in range(MAX_VIEW + 1)]
    bufs = [buf]
    readv = os.readv
    sendto = sock.sendto
    unpack = struct.Struct("!I").unpack_from
    c = state.counters
    shift = state.shift
    while True:
        try:
            n = readv(tunfd, bufs)
        except InterruptedError:
            continue
        if n < 20 or buf[0] >> 4 != 4:
            continue  # not IPv4 (the TUN has no IPv6 address; stray frames are ignored)
        addr = state.routes.get(unpack(buf, 16)[0] >> shift)
        if addr is None:
            c[5] += 1
            icmp_unreachable(state, mv, n, tunfd)
            continue
        ttl = buf[8]
        if ttl <= 1:
            c[6] += 1
            continue
        buf[8] = ttl - 1
        csum = ((buf[10] << 8) | buf[11]) + 0x100
        if csum >= 0xFFFF:
            csum += 1
        buf[10] = (csum >> 8) & 0xFF
        buf[11] = csum & 0xFF
        try:
            sendto(views[n] if n <= MAX_VIEW else mv[:n], addr)
        except OSError:
            c[7] += 1
            continue
        c[0] += 1
        c[1] += n


def rx_loop(state: State, tunfd: int, sock: socket.socket) -> None:
    buf = bytearray(BUF_SIZE)
    mv = memoryview(buf)
    views = [mv[:i] for i in range(MAX_VIEW + 1)]
    recvfrom_into = sock.recvfrom_into
    write = os.write
    c = state.counters
    while True:
        try:
            n, addr = recvfrom_into(buf)
        except InterruptedError:
            continue
        if addr[0] not in state.allowed:
            c[4] += 1
            continue
        if n < 20 or buf[0] >> 4 != 4:
            c[7] += 1
            continue
        try:
            write(tunfd, views[n] if n <= MAX_VIEW else mv[:n])
        except OSError:
            c[7] += 1
            continue
        c[2] += 1
        c[3] += n


def control_loop(state: State, ctlfd: int) -> None:
    """Apply snapshots from the agent; exit the whole worker when the agent closes the pipe."""
    pending = b""
    while True:
        try:
            chunk = os.read(ctlfd, 1 << 20)
        except InterruptedError:
            continue
        if not chunk:
            os._exit(0)
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip():
                state.load(json.loads(line))


def stats_loop(state: State, region: Optional[mmap.mmap], slot: int) -> None:
    packer = struct.Struct("<%dQ" % len(STATS))
    while True:
        time.sleep(0.5)
        if region is not None:
            packer.pack_into(region, slot * SLOT_SIZE, *state.counters)


def main(argv: List[str]) -> int:
    mode, tunfd, sockfd, ctlfd, statsfd, slot, subnet_len = argv[:7]
    state = State(int(subnet_len))
    sock = socket.socket(fileno=int(sockfd))
    region = None
    if int(statsfd) >= 0:
        region = mmap.mmap(int(statsfd), 0)
    # The first snapshot comes before any packet is forwarded.
    first = b""
    while not first.endswith(b"\n"):
        chunk = os.read(int(ctlfd), 1 << 20)
        if not chunk:
            return 0
        first += chunk
    for line in first.splitlines():
        if line.strip():
            state.load(json.loads(line))
    threading.Thread(target=control_loop, args=(state, int(ctlfd)), daemon=True).start()
    threading.Thread(target=stats_loop, args=(state, region, int(slot)), daemon=True).start()
    if mode == "tx":
        tx_loop(state, int(tunfd), sock)
    elif mode == "rx":
        rx_loop(state, int(tunfd), sock)
    else:
        threading.Thread(target=rx_loop, args=(state, int(tunfd), sock), daemon=True).start()
        tx_loop(state, int(tunfd), sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
