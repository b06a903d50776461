"""The udp backend's packet pump: a worker process moving raw IPv4 packets between one TUN queue and
one UDP socket.  Standard library only, so it starts fast and does nothing else.

Started by :mod:`pyflannel.backend.udp` as ``python -m pyflannel.udpproxy MODE TUN_FD SOCK_FD CTL_FD
STATS_FD SLOT SUBNET_LEN [OFFLOAD]`` with the descriptors passed down (``STATS_FD`` -1: no stats region;
``OFFLOAD`` one of ``gro``, ``tso``, ``batch``, ``plain``, see below; ``plain`` when left out):

* ``tx`` mode: read a packet from the TUN queue, find the remote node by the destination's subnet
  (one dict lookup), decrement the TTL once (the tunnel is one hop), send it as the whole payload of
  a UDP datagram to ``PublicIP:port`` (Go flanneld's wire format).  No lease for the destination ->
  ICMP net-unreachable back into the TUN.
* ``rx`` mode: receive a datagram; drop (and count) it unless its source address holds a lease and
  the inner packet passes :func:`check_ingress` (IPv4 header, total length = datagram length, inner
  source in the sender's subnet, inner destination in ours); write the payload into the TUN queue.
* ``both``: the two loops as two threads of one process.

The control descriptor carries newline-delimited JSON snapshots from the agent
(``{"routes": {"<subnet int>": "<public ip>"}, "own": <subnet int>, "port": 8285}``, subnets as
their address shifted right by ``32 - SUBNET_LEN``); end of
file on it (the agent went away) ends the worker.  Counters are written every half second into the
worker's slot of the shared stats region: one little-endian uint64 per name in ``STATS``, in that order
(``SLOT_SIZE`` bytes per slot).

The per-packet path allocates as little as Python allows: one preallocated buffer per direction,
pre-sliced memoryviews for every packet length up to ``MAX_VIEW``, the routing table swapped in as a
whole.

``OFFLOAD`` picks the loops (the backend chooses it; ``gro`` is its default, and it falls back to
``batch`` where the TUN refuses the virtio-net header):

* ``gro``: the TUN carries a virtio-net header.  ``tx`` (:func:`tx_loop_batch`) reads one packet at a
  time and sends a run of equal-sized packets to one node with one ``UDP_SEGMENT`` sendmsg.  ``rx``
  (:func:`rx_loop_vnet`) reads from a socket with ``UDP_GRO``: a run of datagrams arrives in one read,
  and consecutive segments of one TCP flow are written into the TUN as a single GSO packet.
* ``tso``: as ``gro``, but the TUN also has TCP segmentation offload: the kernel hands the pump TCP
  super-packets of up to 64 KiB, which ``tx`` (:func:`tx_loop_vnet`) cuts into MSS-sized IPv4 packets
  (own IP and TCP checksums, TTL decremented) and sends with ``UDP_SEGMENT``.
* ``batch``: no virtio-net header; ``tx`` batches as in ``gro``, ``rx`` (:func:`rx_loop`) writes one
  packet per datagram.
* ``plain``: one packet per syscall both ways (:func:`tx_loop`, :func:`rx_loop`).

On the wire every mode sends ordinary, individual flannel datagrams.  Where the kernel refuses
``UDP_SEGMENT``, ``tx`` sends one datagram per packet from then on.
"""

from __future__ import annotations

import functools
import json
import mmap
import os
import select
import socket
import struct
import sys
import threading
import time
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple

STATS = ("packets_out", "bytes_out", "packets_in", "bytes_in", "drops_unknown_source", "drops_no_route",
         "drops_ttl", "errors", "segmented_out", "merged_in", "rx_dropped_bad_header", "rx_dropped_bad_length",
         "rx_dropped_foreign_source", "rx_dropped_foreign_destination")
# check_ingress's answers: the STATS index of the drop reason (0 = the packet may enter the TUN)
BAD_HEADER = STATS.index("rx_dropped_bad_header")
BAD_LENGTH = STATS.index("rx_dropped_bad_length")
FOREIGN_SOURCE = STATS.index("rx_dropped_foreign_source")
FOREIGN_DESTINATION = STATS.index("rx_dropped_foreign_destination")
UNKNOWN_SENDER = STATS.index("drops_unknown_source")
SLOT_SIZE = 8 * len(STATS)
MAX_VIEW = 2048  # pre-sliced memoryviews for packets up to this size
BUF_SIZE = 65536


class State:
    def __init__(self, subnet_len: int) -> None:
        self.shift = 32 - subnet_len
        self.routes: Dict[int, Tuple[str, int]] = {}
        # PublicIP -> the subnets (shifted, as in ``routes``) that sender may use as inner sources
        self.allowed: Dict[str, FrozenSet[int]] = {}
        self.own = -1  # our subnet, shifted; -1 (no lease yet) matches no packet
        self.counters: List[int] = [0] * len(STATS)

    def load(self, snapshot: dict) -> None:
        port = int(snapshot.get("port", 8285))
        routes = {int(k): (ip, port) for k, ip in snapshot.get("routes", {}).items()}
        by_ip: Dict[str, Set[int]] = {}
        for key, (ip, _port) in routes.items():
            by_ip.setdefault(ip, set()).add(key)
        own = snapshot.get("own")
        self.own = -1 if own is None else int(own)
        self.allowed = {ip: frozenset(keys) for ip, keys in by_ip.items()}
        self.routes = routes


_ADDRS = struct.Struct("!II")


def check_ingress(buf: Any, p: int, n: int, sources: FrozenSet[int], own: int, shift: int) -> int:
    """Judge the inner packet ``buf[p:p + n]`` of a datagram from a peer whose subnets are ``sources``:
    0 when it may be written to the TUN, else the STATS index of the drop reason (IPv4 with IHL >= 5
    and IHL * 4 <= n; total length == n; source in ``sources``; destination in ``own``)."""
    if n < 20:
        return BAD_HEADER
    b = buf[p]
    if b >> 4 != 4 or b & 0x0F < 5 or (b & 0x0F) << 2 > n:
        return BAD_HEADER
    if (buf[p + 2] << 8) | buf[p + 3] != n:
        return BAD_LENGTH
    src, dst = _ADDRS.unpack_from(buf, p + 12)
    if src >> shift not in sources:
        return FOREIGN_SOURCE
    if dst >> shift != own:
        return FOREIGN_DESTINATION
    return 0


def checksum(data: bytes) -> int:
    """The Internet checksum: the big integer modulo 0xffff is the ones' complement sum of 16-bit words."""
    if len(data) % 2:
        data += b"\0"
    total = int.from_bytes(data, "big") % 0xFFFF
    return (~total) & 0xFFFF


_last_icmp = [0.0, 0]


def icmp_unreachable(state: State, packet: memoryview, n: int, tunfd: int, prefix: bytes = b"") -> None:
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
        os.write(tunfd, prefix + bytes(header) + bytes(icmp))
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
    check = check_ingress
    c = state.counters
    shift = state.shift
    while True:
        try:
            n, addr = recvfrom_into(buf)
        except InterruptedError:
            continue
        sources = state.allowed.get(addr[0])
        if sources is None:
            c[UNKNOWN_SENDER] += 1
            continue
        bad = check(buf, 0, n, sources, state.own, shift)
        if bad:
            c[bad] += 1
            continue
        try:
            write(tunfd, views[n] if n <= MAX_VIEW else mv[:n])
        except OSError:
            c[7] += 1
            continue
        c[2] += 1
        c[3] += n


VNET = struct.Struct("<BBHHHH")  # virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_LEN = VNET.size
NEEDS_CSUM = 1
GSO_TCPV4 = 1
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_UDP_PAYLOAD = 65000  # per UDP_SEGMENT sendmsg (the whole must fit a 16-bit UDP length)
ZERO_VNET = bytes(VNET_LEN)


def _fold(total: int) -> int:
    return (~(total % 0xFFFF)) & 0xFFFF


def segment_tcp(buf: bytearray, p: int, n: int, mss: int, out: bytearray) -> Tuple[int, int, int]:
    """Cut the TCP super-packet ``buf[p:n]`` into ``mss``-byte pieces, each a complete IPv4/TCP packet
    with its own IP id, sequence number and checksums (TTL as in the super-packet), laid out back to
    back in ``out``.  Returns (bytes in ``out``, size of every piece but the last, number of pieces)."""
    mv = memoryview(buf)
    from_bytes = int.from_bytes
    ihl = (buf[p] & 0x0F) * 4
    tcp = p + ihl
    thl = (buf[tcp + 12] >> 4) * 4
    hl = ihl + thl
    data = p + hl
    iph = bytearray(mv[p:tcp])
    tcph = bytearray(mv[tcp:data])
    ipid = _U16.unpack_from(iph, 4)[0]
    seq0 = _U32.unpack_from(tcph, 4)[0]
    tflags = tcph[13]
    pseudo = from_bytes(mv[p + 12:p + 20], "big") + 6
    o = 0
    i = 0
    off = data
    while off < n:
        size = min(mss, n - off)
        last = off + size >= n
        _U16.pack_into(iph, 2, hl + size)
        _U16.pack_into(iph, 4, (ipid + i) & 0xFFFF)
        iph[10] = iph[11] = 0
        _U16.pack_into(iph, 10, _fold(from_bytes(iph, "big")))
        _U32.pack_into(tcph, 4, (seq0 + off - data) & 0xFFFFFFFF)
        f = tflags if last else tflags & 0xF6  # FIN and PSH only on the last piece
        tcph[13] = f if i == 0 else f & 0x7F  # CWR only on the first
        tcph[16] = tcph[17] = 0
        total = (pseudo + thl + size + from_bytes(tcph, "big")
                 + from_bytes(mv[off:off + size], "big") * (256 if size & 1 else 1))
        _U16.pack_into(tcph, 16, _fold(total))
        out[o:o + ihl] = iph
        out[o + ihl:o + hl] = tcph
        out[o + hl:o + hl + size] = mv[off:off + size]
        o += hl + size
        off += size
        i += 1
    return o, hl + mss, i


def tx_loop_vnet(state: State, tunfd: int, sock: socket.socket) -> None:
    """TUN (virtio-net header, TSO) -> UDP, cutting TCP super-packets into wire packets."""
    buf = bytearray(BUF_SIZE + VNET_LEN)
    mv = memoryview(buf)
    out = bytearray(BUF_SIZE * 2)
    omv = memoryview(out)
    bufs = [buf]
    readv = os.readv
    sendto = sock.sendto
    sendmsg = sock.sendmsg
    vnet = VNET.unpack_from
    u32 = _U32
    seg_opt = struct.Struct("=H")
    c = state.counters
    shift = state.shift
    gso_ok = True
    p = VNET_LEN  # where the IP packet starts
    while True:
        try:
            n = readv(tunfd, bufs)
        except InterruptedError:
            continue
        if n < p + 20 or buf[p] >> 4 != 4:
            continue
        flags, gso_type, _hdr_len, gso_size, _cs, _co = vnet(buf, 0)
        addr = state.routes.get(u32.unpack_from(buf, p + 16)[0] >> shift)
        if addr is None:
            c[5] += 1
            icmp_unreachable(state, mv[p:], n - p, tunfd, ZERO_VNET)
            continue
        ttl = buf[p + 8]
        if ttl <= 1:
            c[6] += 1
            continue
        if gso_type == 0:
            if flags & NEEDS_CSUM:  # finish the checksum the kernel left partial
                _complete_csum(buf, mv, p, n, bytes(buf[0:VNET_LEN]))
            buf[p + 8] = ttl - 1
            csum = ((buf[p + 10] << 8) | buf[p + 11]) + 0x100
            if csum >= 0xFFFF:
                csum += 1
            buf[p + 10] = (csum >> 8) & 0xFF
            buf[p + 11] = csum & 0xFF
            try:
                sendto(mv[p:n], addr)
            except OSError:
                c[7] += 1
                continue
            c[0] += 1
            c[1] += n - p
            continue
        if gso_type & 0x7F != GSO_TCPV4 or buf[p + 9] != 6:
            c[7] += 1
            continue
        buf[p + 8] = ttl - 1  # segment_tcp computes every piece's IP checksum afresh
        o, seg_len, _count = segment_tcp(buf, p, n, gso_size, out)
        per_send = max(1, MAX_UDP_PAYLOAD // seg_len)
        start = 0
        while start < o:
            stop = min(o, start + per_send * seg_len)
            pieces = -(-(stop - start) // seg_len)
            gso_ok = _send(sendto, sendmsg, seg_opt.pack, omv[start:], stop - start, seg_len, pieces, addr,
                           gso_ok, c)
            start = stop


def _complete_csum(buf: bytearray, mv: memoryview, p: int, n: int, hdr: bytes) -> None:
    """Finish a checksum the kernel left partial (virtio NEEDS_CSUM, header ``hdr``) in the packet
    ``buf[p:n]``."""
    _flags, _gso, _hl, _gs, csum_start, csum_offset = VNET.unpack_from(hdr, 0)
    start = p + csum_start
    length = n - start
    csum = _fold(int.from_bytes(mv[start:n], "big") * (256 if length & 1 else 1))
    if csum == 0 and buf[p + 9] == 17:
        csum = 0xFFFF
    struct.pack_into("!H", buf, start + csum_offset, csum)


def tx_loop_batch(state: State, tunfd: int, sock: socket.socket, vnet: bool) -> None:
    """TUN -> UDP, one read per packet straight into a staging buffer; a run of equal-sized packets
    to one node leaves in one ``UDP_SEGMENT`` sendmsg (the kernel cuts it into the usual individual
    datagrams).  A run ends when the TUN has nothing more to read, so nothing waits for company."""
    os.set_blocking(tunfd, False)
    poller = select.poll()
    poller.register(tunfd, select.POLLIN)
    wait = poller.poll
    out = bytearray(2 * BUF_SIZE + 2 * VNET_LEN)
    omv = memoryview(out)
    hdr = bytearray(VNET_LEN)
    readv = os.readv
    sendto = sock.sendto
    sendmsg = sock.sendmsg
    seg_opt = struct.Struct("=H").pack
    unpack = struct.Struct("!I").unpack_from
    c = state.counters
    shift = state.shift
    gso_ok = True
    max_segs = 64
    o = 0  # bytes staged
    seg = 0  # size of the run's packets
    cnt = 0  # packets staged
    dest = None  # the run's destination
    iovs: Dict[int, List[Any]] = {}  # readv vectors per staging offset, made once
    startswith = out.startswith
    routes: Dict[int, Tuple[str, int]] = {}
    last_dst = b"no route"  # never matches 4 bytes of a packet
    last_addr: Any = None
    while True:
        if cnt and (cnt >= max_segs or o + seg > MAX_UDP_PAYLOAD):
            flush = True
            n = 0
        else:
            flush = False
            iov = iovs.get(o)
            if iov is None:
                iov = [hdr, omv[o:o + BUF_SIZE]] if vnet else [omv[o:o + BUF_SIZE]]
                if len(iovs) < 4096:
                    iovs[o] = iov
            try:
                n = readv(tunfd, iov)
            except BlockingIOError:
                if not cnt:
                    wait()
                    continue
                flush = True
                n = 0
            except InterruptedError:
                continue
        if not flush:
            if vnet:
                n -= VNET_LEN
            if n < 20 or out[o] >> 4 != 4:
                continue
            if routes is state.routes and startswith(last_dst, o + 16):
                addr = last_addr  # same destination as the packet before: no lookup
            else:
                routes = state.routes
                addr = routes.get(unpack(out, o + 16)[0] >> shift)
                if addr is None:
                    c[5] += 1
                    icmp_unreachable(state, omv[o:], n, tunfd, ZERO_VNET if vnet else b"")
                    continue
                last_dst = bytes(out[o + 16:o + 20])
                last_addr = addr
            ttl = out[o + 8]
            if ttl <= 1:
                c[6] += 1
                continue
            if vnet and hdr[0] & NEEDS_CSUM:
                _complete_csum(out, omv, o, o + n, hdr)
            out[o + 8] = ttl - 1
            csum = ((out[o + 10] << 8) | out[o + 11]) + 0x100
            if csum >= 0xFFFF:
                csum += 1
            out[o + 10] = (csum >> 8) & 0xFF
            out[o + 11] = csum & 0xFF
            if not cnt:
                dest, seg, o, cnt = addr, n, n, 1
                continue
            if addr == dest and n <= seg:
                o += n
                cnt += 1
                if n == seg:
                    continue
                # a shorter packet ends the run
            else:
                # does not belong to the run: send the run, then start a new one with this packet
                moved = bytes(omv[o:o + n])
                _send(sendto, sendmsg, seg_opt, omv, o, seg, cnt, dest, gso_ok, c)
                out[0:n] = moved
                dest, seg, o, cnt = addr, n, n, 1
                continue
        gso_ok = _send(sendto, sendmsg, seg_opt, omv, o, seg, cnt, dest, gso_ok, c)
        o = cnt = 0


def _send(sendto: Any, sendmsg: Any, seg_opt: Any, omv: memoryview, o: int, seg: int, cnt: int, dest: Any,
          gso_ok: bool, c: List[int]) -> bool:
    """Send ``cnt`` staged packets (all ``seg`` bytes but the last); returns whether UDP GSO works."""
    if cnt > 1 and gso_ok:
        try:
            sendmsg([omv[:o]], [(SOL_UDP, UDP_SEGMENT, seg_opt(seg))], 0, dest)
        except OSError as err:
            # EINVAL/ENOPROTOOPT/EOPNOTSUPP/EIO: no UDP segmentation here (or packets larger than the
            # path allows, which then need IP fragmentation): from now on one datagram per packet.
            if err.errno in (5, 22, 92, 95):
                gso_ok = False
        else:
            c[0] += cnt
            c[1] += o
            c[8] += 1
            return gso_ok
    for start in range(0, o, seg):
        try:
            sendto(omv[start:min(o, start + seg)], dest)
        except OSError:
            c[7] += 1
            continue
        c[0] += 1
        c[1] += min(o, start + seg) - start
    return gso_ok


_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")


def merge_tcp_run(buf: bytearray, p: int, end: int, gso: int, out: bytearray) -> Tuple[int, int, int]:
    """Merge consecutive TCP segments from the run of IPv4 packets in ``buf[p:end]`` (each ``gso``
    bytes, the last maybe shorter) into one TCP GSO packet in ``out``: a virtio-net header, the first
    packet's headers with the total length, then the payloads.  Segments merge while they belong to
    one flow (same addresses, ports, ack, header and options), follow each other in sequence and
    carry a plain ACK; a PSH ends the merge (it is included).  Returns (bytes written to ``out``,
    where the merged segments end in ``buf``, how many merged); (0, end of the first packet, 1) when
    fewer than two merge — the caller writes that packet as it is and tries again after it."""
    first_end = p + (end - p if end - p < gso else gso)
    if buf[p] != 0x45 or buf[p + 9] != 6 or gso <= 60:
        return 0, first_end, 1
    hl = 20 + (buf[p + 32] >> 4) * 4
    mss = gso - hl
    if mss <= 0 or hl < 40:
        return 0, first_end, 1
    flow = bytes(buf[p + 12:p + 24])  # addresses and ports
    ack = bytes(buf[p + 28:p + 33])  # ack number and data offset
    opts = bytes(buf[p + 40:p + hl])
    seq = _U32.unpack_from(buf, p + 24)[0]
    u16 = _U16.unpack_from
    u32 = _U32.unpack_from
    startswith = buf.startswith
    mv = memoryview(buf)
    o = VNET_LEN + hl
    off = p
    flags = 0x10
    count = 0
    while off < end:
        size = end - off if end - off < gso else gso
        f = buf[off + 33]
        if (f != 0x10 and f != 0x18) or buf[off] != 0x45 or buf[off + 9] != 6 or size <= hl \
                or u16(buf, off + 2)[0] != size or u32(buf, off + 24)[0] != seq or not startswith(flow, off + 12) \
                or not startswith(ack, off + 28) or not startswith(opts, off + 40):
            break
        out[o:o + size - hl] = mv[off + hl:off + size]
        o += size - hl
        seq = (seq + size - hl) & 0xFFFFFFFF
        off += size
        count += 1
        flags = f
        if f == 0x18 or size < gso:
            break  # PSH (or a short segment) ends a GSO packet
    if count < 2:
        return 0, first_end, 1
    p_out = VNET_LEN
    out[p_out:p_out + hl] = mv[p:p + hl]
    total_len = o - p_out
    _U16.pack_into(out, p_out + 2, total_len)
    out[p_out + 10] = out[p_out + 11] = 0
    _U16.pack_into(out, p_out + 10, _fold(int.from_bytes(out[p_out:p_out + 20], "big")))
    out[p_out + 33] = flags  # the last segment's flags (PSH)
    pseudo = (int.from_bytes(out[p_out + 12:p_out + 20], "big") + 6 + total_len - 20) % 0xFFFF or 0xFFFF
    _U16.pack_into(out, p_out + 36, pseudo)  # partial checksum: the pseudo-header sum, finished downstream
    VNET.pack_into(out, 0, NEEDS_CSUM, GSO_TCPV4, hl, mss, 20, 16)
    return o, off, count


def rx_loop_vnet(state: State, tunfd: int, sock: socket.socket) -> None:
    """UDP (with GRO) -> TUN (virtio-net header): consecutive segments of one TCP flow become one
    GSO packet; everything else is written packet by packet."""
    buf = bytearray(BUF_SIZE + VNET_LEN)
    mv = memoryview(buf)
    out = bytearray(BUF_SIZE + VNET_LEN)
    omv = memoryview(out)
    recvmsg_into = sock.recvmsg_into
    into = [mv[VNET_LEN:]]
    write = os.write
    writev = os.writev
    anc_size = socket.CMSG_SPACE(4)
    check = check_ingress
    c = state.counters
    shift = state.shift
    p = VNET_LEN
    while True:
        try:
            n, anc, _flags, addr = recvmsg_into(into, anc_size)
        except InterruptedError:
            continue
        gso = 0
        for level, kind, value in anc:
            if level == SOL_UDP and kind == UDP_GRO:
                gso = int.from_bytes(value[:4], sys.byteorder)
        segs = -(-n // gso) if gso and n > gso else 1
        sources = state.allowed.get(addr[0])
        if sources is None:
            c[UNKNOWN_SENDER] += segs
            continue
        own = state.own
        if segs == 1:
            bad = check(buf, p, n, sources, own, shift)
            if bad:
                c[bad] += 1
                continue
            buf[0:VNET_LEN] = ZERO_VNET
            try:
                write(tunfd, mv[:p + n])
            except OSError:
                c[7] += 1
                continue
            c[2] += 1
            c[3] += n
            continue
        end = p + n
        off = p
        while off < end:
            # The packet at ``off`` is checked here; merge_tcp_run only adds the ones after it that
            # have IHL 5, a total length equal to their datagram and the same addresses as this one.
            size = end - off if end - off < gso else gso
            bad = check(buf, off, size, sources, own, shift)
            if bad:
                c[bad] += 1
                off += size
                continue
            o, stop, count = merge_tcp_run(buf, off, end, gso, out)
            try:
                if o:
                    write(tunfd, omv[:o])
                    c[9] += 1
                else:
                    writev(tunfd, [ZERO_VNET, mv[off:stop]])
            except OSError:
                c[7] += count
            else:
                c[2] += count
                c[3] += stop - off
            off = stop


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
    offload = argv[7] if len(argv) > 7 else "plain"
    if offload == "tso":
        tx, rx = tx_loop_vnet, rx_loop_vnet
    elif offload == "gro":
        tx, rx = functools.partial(tx_loop_batch, vnet=True), rx_loop_vnet
    elif offload == "batch":
        tx, rx = functools.partial(tx_loop_batch, vnet=False), rx_loop
    else:
        tx, rx = tx_loop, rx_loop
    if mode == "tx":
        tx(state, int(tunfd), sock)
    elif mode == "rx":
        rx(state, int(tunfd), sock)
    else:
        threading.Thread(target=rx, args=(state, int(tunfd), sock), daemon=True).start()
        tx(state, int(tunfd), sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
