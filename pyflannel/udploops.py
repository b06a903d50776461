"""The udp pump's loops without a virtio-net header: ``plain`` (one packet per syscall both ways) and
the batching ``tx`` of ``batch`` and ``gro`` (a run of equal-sized packets to one node in one
``UDP_SEGMENT`` sendmsg).  Standard library only."""

from __future__ import annotations

import os
import select
import socket
import struct
from typing import Any, Dict, List, Tuple

from pyflannel.udppeers import UNKNOWN_SENDER, State
from pyflannel.udpwire import NEEDS_CSUM, VNET_LEN, ZERO_VNET, _complete_csum, check_ingress, icmp_unreachable

MAX_VIEW = 2048  # pre-sliced memoryviews for packets up to this size
BUF_SIZE = 65536
SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
MAX_UDP_PAYLOAD = 65000  # per UDP_SEGMENT sendmsg (the whole must fit a 16-bit UDP length)


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
