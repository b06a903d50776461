"""The packets the udp pump checks and builds: the ingress check of a peer's inner packet, ICMP net
unreachable, the Internet checksum, and the virtio-net header's TCP segmentation (TSO, tx) and merging
(GRO, rx).  Standard library only."""

from __future__ import annotations

import os
import struct
import time
from typing import Any, FrozenSet, Tuple

from pyflannel.udppeers import BAD_HEADER, BAD_LENGTH, FOREIGN_DESTINATION, FOREIGN_SOURCE, State

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


VNET = struct.Struct("<BBHHHH")  # virtio_net_hdr: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_LEN = VNET.size
NEEDS_CSUM = 1
GSO_TCPV4 = 1
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
