"""The udp pump's loops over a TUN with a virtio-net header: ``tso`` tx cuts TCP super-packets into
wire packets, ``gro`` and ``tso`` rx merge a flow's segments into one GSO packet.  Standard library only."""

from __future__ import annotations

import os
import socket
import struct
import sys

from pyflannel.udploops import BUF_SIZE, MAX_UDP_PAYLOAD, SOL_UDP, UDP_GRO, _send
from pyflannel.udppeers import UNKNOWN_SENDER, State
from pyflannel.udpwire import (
    _U32,
    GSO_TCPV4,
    NEEDS_CSUM,
    VNET,
    VNET_LEN,
    ZERO_VNET,
    _complete_csum,
    check_ingress,
    icmp_unreachable,
    merge_tcp_run,
    segment_tcp,
)


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
