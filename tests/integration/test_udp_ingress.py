"""udp ingress checks end to end: real agents with the udp backend in namespaces; a peer host sends
crafted datagrams to the receiver's port 8285.  None of the malformed or misaddressed ones may reach
the receiver's flannel0 (its rx_packets counter stays put), each is counted under its reason in
/metrics, and ordinary pings keep working.  One test bed for the whole module."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
from typing import Callable, Dict, Iterator, Tuple

import pytest

from testbed.etcdserver import EtcdServer
from testbed.netns import Agent, TestBed, ping_all, put_config, wait_for, wait_peers

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
NETWORK = "10.100.0.0/16"
COUNT = 20

SEND = r"""
import socket, sys
data, target, count = bytes.fromhex(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    s.sendto(data, (target, 8285))
"""


def _csum(header: bytes) -> int:
    return (~(int.from_bytes(header, "big") % 0xFFFF)) & 0xFFFF


def udp_packet(src: str, dst: str, payload: bytes = b"crafted-ingress") -> bytearray:
    """A well-formed IPv4/UDP packet (UDP checksum 0)."""
    udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src),
                                socket.inet_aton(dst)))
    struct.pack_into("!H", hdr, 10, _csum(bytes(hdr)))
    return hdr + udp


@pytest.fixture(scope="module")
def pair() -> Iterator[Tuple[Agent, Agent]]:
    if os.geteuid() != 0:
        pytest.fail("the namespace tests need root (network namespaces, netlink): run make test as root")
    bed = TestBed(["A", "A"])
    server = EtcdServer(host=bed.etcd_address, port=2379, netns=bed.etcd_ns)
    server.peer_port = 2380
    try:
        server.start()
        put_config(bed, server, PREFIX, {"Network": NETWORK, "SubnetLen": 24, "Backend": {"Type": "udp"}})
        agents = [Agent(h, server.url, PREFIX) for h in bed.hosts]
        for agent in agents:
            agent.start(wait=False)
        for agent in agents:
            agent.wait_ready()
        wait_peers(agents)
        assert not ping_all(agents), "no connectivity before the test"
        yield agents[0], agents[1]
    finally:
        server.destroy()
        bed.destroy()


def _unused_subnet_address(*taken: Agent) -> str:
    """An address inside the network but in nobody's lease."""
    used = {ipaddress.IPv4Network(a.subnet) for a in taken}
    for net in ipaddress.IPv4Network(NETWORK).subnets(new_prefix=24):
        if net not in used and int(net.network_address) != int(ipaddress.IPv4Network(NETWORK).network_address):
            return str(net.network_address + 9)
    raise AssertionError("no free subnet")


def _bad_ihl(rx: Agent, tx: Agent) -> bytes:
    p = udp_packet(tx.bridge_ip, rx.bridge_ip)
    p[0] = 0x44  # IHL 4: shorter than the fixed header
    return bytes(p)


def _wrong_total_length(rx: Agent, tx: Agent) -> bytes:
    p = udp_packet(tx.bridge_ip, rx.bridge_ip)
    struct.pack_into("!H", p, 2, len(p) - 4)  # says less than the datagram carries
    p[10:12] = b"\0\0"
    struct.pack_into("!H", p, 10, _csum(bytes(p[:20])))
    return bytes(p)


def _truncated(rx: Agent, tx: Agent) -> bytes:
    return bytes(udp_packet(tx.bridge_ip, rx.bridge_ip)[:-6])  # total length says 6 bytes more


def _foreign_source(rx: Agent, tx: Agent) -> bytes:
    return bytes(udp_packet(_unused_subnet_address(rx, tx), rx.bridge_ip))


def _foreign_destination(rx: Agent, tx: Agent) -> bytes:
    return bytes(udp_packet(tx.bridge_ip, _unused_subnet_address(rx, tx)))


# the receiver's drop counter for one reason (the metrics parser keys samples by name and labels)
DROPPED = 'flannel_udp_dropped_packets_total{direction="rx",reason="%s"}'

CASES: Dict[str, Tuple[Callable[[Agent, Agent], bytes], str]] = {
    "bad_ihl": (_bad_ihl, DROPPED % "bad_header"),
    "wrong_total_length": (_wrong_total_length, DROPPED % "bad_length"),
    "truncated": (_truncated, DROPPED % "bad_length"),
    "foreign_source": (_foreign_source, DROPPED % "foreign_source"),
    "foreign_destination": (_foreign_destination, DROPPED % "foreign_destination"),
}


def _tun_rx(agent: Agent) -> int:
    return int(agent.host.run("cat", "/sys/class/net/flannel0/statistics/rx_packets").stdout)


@pytest.mark.parametrize("case", list(CASES))
def test_udp_ingress_drops_crafted_datagrams(case: str, pair: Tuple[Agent, Agent]) -> None:
    rx, tx = pair
    make, metric = CASES[case]
    datagram = make(rx, tx)
    wait_for(lambda: "flannel_udp_packets_in_total" in rx.metrics(), 10, what="the receiver's udp metrics")
    dropped = rx.metrics().get(metric, 0.0)
    tun_before = _tun_rx(rx)
    tx.host.run("python3", "-c", SEND, datagram.hex(), rx.host.address, str(COUNT))
    wait_for(lambda: rx.metrics().get(metric, 0.0) >= dropped + COUNT or _tun_rx(rx) > tun_before, 5,
             what="the %d datagrams to be dropped or delivered" % COUNT)
    assert _tun_rx(rx) == tun_before, "a %s datagram was written into flannel0" % case
    assert rx.metrics().get(metric, 0.0) >= dropped + COUNT, "%s did not count the drops" % metric
    # the peer is still a peer: ordinary traffic passes
    assert not ping_all([rx, tx], count=2)
    assert _tun_rx(rx) > tun_before


def test_udp_ingress_well_formed_datagram_passes(pair: Tuple[Agent, Agent]) -> None:
    """The control: the same crafting code, well formed and well addressed, reaches flannel0."""
    rx, tx = pair
    tun_before = _tun_rx(rx)
    tx.host.run("python3", "-c", SEND, bytes(udp_packet(tx.bridge_ip, rx.bridge_ip)).hex(), rx.host.address,
                str(COUNT))
    wait_for(lambda: _tun_rx(rx) >= tun_before + COUNT, 5, what="%d packets into flannel0" % COUNT)
