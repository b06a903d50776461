"""The udp backend's packet pump: a worker process moving raw IPv4 packets between one TUN queue and
one UDP socket.  Standard library only, so it starts fast and does nothing else.  This module is the
worker's entry point (:func:`main`, the control and stats threads); the loops live in
:mod:`pyflannel.udploops` (no virtio-net header) and :mod:`pyflannel.udpgso` (virtio-net header), the
packet checks and the TCP segmentation and merging in :mod:`pyflannel.udpwire`, the peer table and the
counters in :mod:`pyflannel.udppeers`; the names the udp backend and the tests use are re-exported here.

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
pre-sliced memoryviews for every packet length up to ``udploops.MAX_VIEW`` (``plain``), the routing
table swapped in as a whole.

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
import socket
import struct
import sys
import threading
import time
from typing import List, Optional

from pyflannel.udpgso import rx_loop_vnet, tx_loop_vnet
from pyflannel.udploops import rx_loop, tx_loop, tx_loop_batch
from pyflannel.udppeers import (
    BAD_HEADER,
    BAD_LENGTH,
    FOREIGN_DESTINATION,
    FOREIGN_SOURCE,
    SLOT_SIZE,
    STATS,
    UNKNOWN_SENDER,
    State,
)
from pyflannel.udpwire import (
    GSO_TCPV4,
    NEEDS_CSUM,
    VNET,
    VNET_LEN,
    check_ingress,
    checksum,
    icmp_unreachable,
    merge_tcp_run,
    segment_tcp,
)

# what the udp backend and the tests import from here
__all__ = ["BAD_HEADER", "BAD_LENGTH", "FOREIGN_DESTINATION", "FOREIGN_SOURCE", "GSO_TCPV4", "NEEDS_CSUM",
           "SLOT_SIZE", "STATS", "UNKNOWN_SENDER", "VNET", "VNET_LEN", "State", "check_ingress", "checksum",
           "icmp_unreachable", "main", "merge_tcp_run", "rx_loop", "rx_loop_vnet", "segment_tcp", "tx_loop",
           "tx_loop_batch", "tx_loop_vnet"]


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
