"""The udp packet pump's pure parts: checksums, cutting a TCP super-packet into wire packets,
merging a received run back into one GSO packet, ICMP net-unreachable.  No root needed."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from pyflannel import udpproxy
from pyflannel.udpproxy import GSO_TCPV4, NEEDS_CSUM, VNET, VNET_LEN, State, merge_tcp_run, segment_tcp

SRC, DST = "10.100.1.5", "10.100.2.7"


def ones_sum(data: bytes) -> int:
    """Reference: the RFC 1071 ones' complement sum, 16 bits at a time."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for (word,) in struct.iter_unpack("!H", data):
        total += word
        total = (total & 0xFFFF) + (total >> 16)
    return total


def ip_ok(packet: bytes) -> bool:
    ihl = (packet[0] & 0x0F) * 4
    return ones_sum(packet[:ihl]) == 0xFFFF


def tcp_ok(packet: bytes) -> bool:
    ihl = (packet[0] & 0x0F) * 4
    segment = packet[ihl:]
    pseudo = packet[12:20] + struct.pack("!BBH", 0, 6, len(segment))
    return ones_sum(pseudo + segment) == 0xFFFF


def tcp_packet(payload: bytes, seq: int, flags: int = 0x18, ipid: int = 100, options: bytes = b"") -> bytes:
    """A valid IPv4/TCP packet (checksums computed with the reference implementation)."""
    thl = 20 + len(options)
    tcp = bytearray(struct.pack("!HHIIBBHHH", 40000, 5201, seq, 777, (thl // 4) << 4, flags, 512, 0, 0)
                    + options + payload)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), ipid, 0x4000, 63, 6, 0,
                               socket.inet_aton(SRC), socket.inet_aton(DST)))
    struct.pack_into("!H", ip, 10, 0xFFFF - ones_sum(bytes(ip)))
    pseudo = bytes(ip[12:20]) + struct.pack("!BBH", 0, 6, len(tcp))
    struct.pack_into("!H", tcp, 16, 0xFFFF - ones_sum(pseudo + bytes(tcp)))
    return bytes(ip + tcp)


def split(data: bytes, seg_len: int, count: int):
    return [data[i * seg_len:(i + 1) * seg_len] for i in range(count)]


def test_checksum_matches_rfc1071_reference() -> None:
    data = bytes(range(256)) * 3 + b"\x01"
    assert udpproxy.checksum(data) == (~ones_sum(data)) & 0xFFFF
    header = tcp_packet(b"x", 1)[:20]
    assert ip_ok(header)


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=1, max_size=20000), mss=st.integers(min_value=200, max_value=1432),
       seq=st.integers(min_value=0, max_value=0xFFFFFFFF), fin=st.booleans(),
       options=st.sampled_from([b"", b"\x01\x01\x08\x0a" + bytes(8)]))
def test_segment_tcp_makes_valid_consecutive_packets(payload: bytes, mss: int, seq: int, fin: bool,
                                                     options: bytes) -> None:
    flags = 0x18 | (0x01 if fin else 0)
    big = tcp_packet(payload, seq, flags, ipid=65530, options=options)
    buf = bytearray(big)
    out = bytearray(2 * 65536)
    o, seg_len, count = segment_tcp(buf, 0, len(buf), mss, out)
    hl = 40 + len(options)
    assert seg_len == hl + mss
    assert count == -(-len(payload) // mss)
    pieces = split(bytes(out[:o]), seg_len, count)
    joined = b""
    for i, piece in enumerate(pieces):
        assert ip_ok(piece) and tcp_ok(piece), "piece %d has a bad checksum" % i
        assert struct.unpack_from("!H", piece, 2)[0] == len(piece)
        assert struct.unpack_from("!H", piece, 4)[0] == (65530 + i) & 0xFFFF
        assert struct.unpack_from("!I", piece, 24)[0] == (seq + i * mss) & 0xFFFFFFFF
        last = i == count - 1
        assert piece[33] == (flags if last else 0x10)
        assert piece[40:hl] == options
        joined += piece[hl:]
    assert joined == payload


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=2, max_size=30000), mss=st.integers(min_value=100, max_value=1432),
       seq=st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_merge_tcp_run_restores_the_stream(payload: bytes, mss: int, seq: int) -> None:
    """segment_tcp then merge_tcp_run: one GSO packet carrying every byte, with a correct header."""
    big = tcp_packet(payload, seq, 0x18)
    wire = bytearray(2 * 65536)
    o, seg_len, count = segment_tcp(bytearray(big), 0, len(big), mss, wire)
    rx = bytearray(VNET_LEN) + wire[:o]
    out = bytearray(65536 + VNET_LEN)
    n, stop, merged = merge_tcp_run(rx, VNET_LEN, VNET_LEN + o, seg_len, out)
    if count == 1:
        # a lone packet is left to the caller, to be written as it is
        assert (n, stop, merged) == (0, VNET_LEN + o, 1)
        return
    # every piece but the last is a plain ACK, the last carries PSH: all of them merge
    assert (stop, merged) == (VNET_LEN + o, count)
    assert n == VNET_LEN + 40 + len(payload)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = VNET.unpack_from(out, 0)
    expected = (NEEDS_CSUM, GSO_TCPV4, 40, mss, 20, 16)
    assert (flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) == expected
    merged = bytes(out[VNET_LEN:n])
    assert ip_ok(merged)
    assert struct.unpack_from("!H", merged, 2)[0] == len(merged)
    assert struct.unpack_from("!I", merged, 24)[0] == seq
    assert merged[33] == 0x18
    assert merged[40:] == payload
    # the TCP checksum field holds the pseudo-header sum, as for any CHECKSUM_PARTIAL packet
    pseudo = merged[12:20] + struct.pack("!BBH", 0, 6, len(merged) - 20)
    assert struct.unpack_from("!H", merged, 36)[0] == ones_sum(pseudo)


def _run(*packets: bytes) -> bytearray:
    return bytearray(VNET_LEN) + b"".join(packets)


def test_merge_refuses_what_is_not_one_flow_in_order() -> None:
    a = tcp_packet(b"a" * 100, 1000, 0x10)
    b = tcp_packet(b"b" * 100, 1100, 0x10)
    size = len(a)
    end = VNET_LEN + 2 * size
    out = bytearray(65536)
    assert merge_tcp_run(_run(a, b), VNET_LEN, end, size, out)[1:] == (end, 2)
    refused = (0, VNET_LEN + size, 1)
    gap = tcp_packet(b"b" * 100, 1200, 0x10)  # a missing segment in between
    assert merge_tcp_run(_run(a, gap), VNET_LEN, end, size, out) == refused
    psh_first = tcp_packet(b"a" * 100, 1000, 0x18)  # PSH ends a merge: nothing to merge it with
    assert merge_tcp_run(_run(psh_first, b), VNET_LEN, end, size, out) == refused
    syn = tcp_packet(b"b" * 100, 1100, 0x12)
    assert merge_tcp_run(_run(a, syn), VNET_LEN, end, size, out) == refused
    other = bytearray(b)
    other[20:22] = struct.pack("!H", 40001)  # another connection (source port)
    assert merge_tcp_run(_run(a, bytes(other)), VNET_LEN, end, size, out) == refused
    udp = bytearray(a)
    udp[9] = 17
    assert merge_tcp_run(_run(bytes(udp), b), VNET_LEN, end, size, out) == refused


def test_merge_stops_after_psh_and_goes_on_with_the_rest() -> None:
    pieces = [tcp_packet(bytes([65 + i]) * 100, 1000 + 100 * i, 0x18 if i == 2 else 0x10) for i in range(6)]
    run = _run(*pieces)
    size = len(pieces[0])
    out = bytearray(65536)
    n, stop, count = merge_tcp_run(run, VNET_LEN, len(run), size, out)
    assert (stop, count) == (VNET_LEN + 3 * size, 3)
    assert out[VNET_LEN + 33] == 0x18 and bytes(out[VNET_LEN + 40:n]) == b"A" * 100 + b"B" * 100 + b"C" * 100
    n, stop, count = merge_tcp_run(run, stop, len(run), size, out)
    assert (stop, count) == (len(run), 3)
    assert out[VNET_LEN + 33] == 0x10 and bytes(out[VNET_LEN + 40:n]) == b"D" * 100 + b"E" * 100 + b"F" * 100


def test_icmp_net_unreachable_goes_back_into_the_tun() -> None:
    state = State(24)
    offender = tcp_packet(b"hello", 5)
    rfd, wfd = os.pipe()
    try:
        udpproxy.icmp_unreachable(state, memoryview(offender), len(offender), wfd, b"PREFIX")
        data = os.read(rfd, 4096)
    finally:
        os.close(rfd)
        os.close(wfd)
    assert data.startswith(b"PREFIX")
    icmp_packet = data[len(b"PREFIX"):]
    assert ip_ok(icmp_packet)
    assert icmp_packet[9] == 1
    assert icmp_packet[12:16] == socket.inet_aton("10.100.2.0")  # the unreachable subnet, never a local address
    assert icmp_packet[16:20] == socket.inet_aton(SRC)
    body = icmp_packet[20:]
    assert body[0:2] == b"\x03\x00"  # destination unreachable, net unreachable
    assert ones_sum(body) == 0xFFFF
    assert body[8:] == offender[:28]  # the offender's header and 8 bytes


def test_no_icmp_in_answer_to_icmp_errors() -> None:
    state = State(24)
    error = bytearray(tcp_packet(b"", 1)[:20] + b"\x03\x01\0\0\0\0\0\0")
    error[9] = 1
    rfd, wfd = os.pipe()
    os.set_blocking(rfd, False)
    try:
        udpproxy.icmp_unreachable(state, memoryview(error), len(error), wfd)
        try:
            got = os.read(rfd, 4096)
        except BlockingIOError:
            got = b""
    finally:
        os.close(rfd)
        os.close(wfd)
    assert got == b""


def test_state_load_builds_the_lookup_table() -> None:
    state = State(24)
    state.load({"routes": {str(int.from_bytes(socket.inet_aton("10.100.2.0"), "big") >> 8): "192.0.2.2"},
                "port": 8285})
    key = struct.unpack("!I", socket.inet_aton(DST))[0] >> state.shift
    assert state.routes[key] == ("192.0.2.2", 8285)
    assert "192.0.2.2" in state.allowed and "192.0.2.3" not in state.allowed


# -- ingress checks ---------------------------------------------------------------------------------
PEER_IP, OTHER_PEER_IP = "192.0.2.1", "192.0.2.3"


def _key(address: str) -> int:
    return int.from_bytes(socket.inet_aton(address), "big") >> 8


def _ingress_state() -> State:
    """We hold 10.100.2.0/24; 192.0.2.1 holds 10.100.1.0/24, 192.0.2.3 holds 10.100.3.0/24."""
    state = State(24)
    state.load({"routes": {str(_key("10.100.1.0")): PEER_IP, str(_key("10.100.3.0")): OTHER_PEER_IP},
                "own": _key("10.100.2.0"), "port": 8285})
    return state


def _verdict(packet: bytes, sender: str = PEER_IP, at: int = 0) -> int:
    state = _ingress_state()
    buf = bytearray(at) + packet
    return udpproxy.check_ingress(buf, at, len(packet), state.allowed[sender], state.own, state.shift)


def test_ingress_accepts_a_packet_from_the_senders_subnet_to_ours() -> None:
    packet = tcp_packet(b"x" * 100, 1)
    assert _verdict(packet) == 0
    assert _verdict(packet, at=VNET_LEN) == 0  # behind a virtio-net header, as rx_loop_vnet sees it


def test_ingress_drops_bad_header() -> None:
    good = tcp_packet(b"x" * 40, 1)
    for first in (0x65, 0x44, 0x40, 0x4F):  # IPv6 version, IHL 4, IHL 0, IHL 15 (60 bytes > packet)
        assert _verdict(bytes([first]) + good[1:21]) == udpproxy.BAD_HEADER, hex(first)
    assert _verdict(good[:19]) == udpproxy.BAD_HEADER  # truncated inside the header
    assert _verdict(b"") == udpproxy.BAD_HEADER


def test_ingress_drops_bad_length() -> None:
    good = tcp_packet(b"x" * 40, 1)
    assert _verdict(good[:-1]) == udpproxy.BAD_LENGTH  # truncated: total length says more
    assert _verdict(good + b"\0") == udpproxy.BAD_LENGTH  # trailing bytes after the packet
    longer = bytearray(good)
    struct.pack_into("!H", longer, 2, len(good) + 100)
    assert _verdict(bytes(longer)) == udpproxy.BAD_LENGTH


def test_ingress_drops_foreign_source() -> None:
    packet = tcp_packet(b"x" * 40, 1)  # source 10.100.1.5: 192.0.2.1's subnet, not 192.0.2.3's
    assert _verdict(packet, sender=OTHER_PEER_IP) == udpproxy.FOREIGN_SOURCE
    spoofed = bytearray(packet)
    spoofed[12:16] = socket.inet_aton("10.100.9.9")  # nobody's subnet
    assert _verdict(bytes(spoofed)) == udpproxy.FOREIGN_SOURCE


def test_ingress_drops_foreign_destination() -> None:
    packet = bytearray(tcp_packet(b"x" * 40, 1))
    packet[16:20] = socket.inet_aton("10.100.3.7")  # the other peer's subnet: we are no transit
    assert _verdict(bytes(packet)) == udpproxy.FOREIGN_DESTINATION
    packet[16:20] = socket.inet_aton("172.30.1.2")  # outside the network
    assert _verdict(bytes(packet)) == udpproxy.FOREIGN_DESTINATION


def test_ingress_unknown_sender_and_no_own_lease() -> None:
    state = _ingress_state()
    assert state.allowed.get("192.0.2.99") is None  # the rx loops count it as UNKNOWN_SENDER
    assert udpproxy.STATS[udpproxy.UNKNOWN_SENDER] == "drops_unknown_source"
    bare = State(24)
    bare.load({"routes": {str(_key("10.100.1.0")): PEER_IP}})
    packet = tcp_packet(b"x", 1)
    assert udpproxy.check_ingress(packet, 0, len(packet), bare.allowed[PEER_IP], bare.own,
                                  bare.shift) == udpproxy.FOREIGN_DESTINATION


def test_state_load_builds_the_reverse_map() -> None:
    state = State(24)
    state.load({"routes": {str(_key("10.100.1.0")): PEER_IP, str(_key("10.100.4.0")): PEER_IP,
                           str(_key("10.100.3.0")): OTHER_PEER_IP}, "own": _key("10.100.2.0")})
    assert state.allowed == {PEER_IP: frozenset({_key("10.100.1.0"), _key("10.100.4.0")}),
                             OTHER_PEER_IP: frozenset({_key("10.100.3.0")})}
    assert state.own == _key("10.100.2.0")


def _rx_once(loop: str, datagrams: list) -> tuple:
    """Run one rx loop over real sockets: send ``datagrams`` from 127.0.0.2 to 127.0.0.1, return (what
    reached the fake TUN, the counters)."""
    state = State(24)
    state.load({"routes": {str(_key("10.100.1.0")): "127.0.0.2"}, "own": _key("10.100.2.0")})
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tx.bind(("127.0.0.2", 0))
    tun_r, tun_w = os.pipe()
    os.set_blocking(tun_r, False)
    target = udpproxy.rx_loop if loop == "plain" else udpproxy.rx_loop_vnet
    threading.Thread(target=target, args=(state, tun_w, rx), daemon=True).start()
    for d in datagrams:
        tx.sendto(d, rx.getsockname())
    deadline = time.monotonic() + 5
    while sum(state.counters[i] for i in (2, 4, 7, 10, 11, 12, 13)) < len(datagrams) and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        got = os.read(tun_r, 1 << 20)
    except BlockingIOError:
        got = b""
    tx.close()
    return got, list(state.counters)


def test_rx_loops_count_each_reason_and_pass_the_good() -> None:
    good = tcp_packet(b"g" * 30, 1)
    bad_ihl = bytes([0x44]) + good[1:]
    short = good[:-3]
    foreign_src = bytearray(good)
    foreign_src[12:16] = socket.inet_aton("10.100.7.1")
    foreign_dst = bytearray(good)
    foreign_dst[16:20] = socket.inet_aton("10.100.7.1")
    datagrams = [bad_ihl, short, bytes(foreign_src), bytes(foreign_dst), good]
    for loop in ("plain", "vnet"):
        got, c = _rx_once(loop, datagrams)
        assert (c[udpproxy.BAD_HEADER], c[udpproxy.BAD_LENGTH], c[udpproxy.FOREIGN_SOURCE],
                c[udpproxy.FOREIGN_DESTINATION], c[2]) == (1, 1, 1, 1, 1), (loop, c)
        assert got.endswith(good) and len(got) == len(good) + (VNET_LEN if loop == "vnet" else 0)
