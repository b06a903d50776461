"""The wireguard backend's pure parts: key file, config rendering, dump parsing and comparison,
which leases become peers.  No netlink, no devices (tests/integration/test_wireguard.py has those)."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import os
import shutil
import stat

import pytest

from pyflannel.backend import BackendError, ExternalInterface
from pyflannel.backend import wireguard as wgb
from pyflannel.leases import Lease, LeaseAttrs
from pyflannel.netconfig import parse_config

PSK = "q2Xo0rO6fP1cB3bq6mkH0wKdQw4kVmXhP3n3mF1sA2U="
KEY_A = base64.b64encode(b"\x01" * 32).decode()
KEY_B = base64.b64encode(b"\x02" * 32).decode()
IFACE = ExternalInterface("eth0", 2, "192.0.2.1", "192.0.2.1", 1500)
IFACE6 = ExternalInterface("eth0", 2, "192.0.2.1", "192.0.2.1", 1500, "2001:db8::1", "2001:db8::1")
IFACE6_ONLY = ExternalInterface("eth0", 2, None, None, 1500, "2001:db8::1", "2001:db8::1")
V6 = {"EnableIPv6": True, "IPv6Network": "fd10::/48", "IPv6SubnetLen": 64}
V6_ONLY = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd10::/48", "IPv6SubnetLen": 64}


def backend(iface=IFACE, net=None, **options):
    config = dict({"Network": "10.100.0.0/16"}, **(net or {}))
    if config.get("EnableIPv4") is False:
        del config["Network"]
    config["Backend"] = dict({"Type": "wireguard"}, **options)
    return wgb.WireguardBackend(parse_config(config), iface, {"wireguard_key_file": "/nonexistent/wgkey"})


def test_generated_keys_are_clamped_base64():
    for _round in range(20):
        raw = base64.b64decode(wgb.generate_private_key(), validate=True)
        assert len(raw) == 32 and raw[0] & 7 == 0 and raw[31] & 0x80 == 0 and raw[31] & 0x40


def test_key_file_path_precedence():
    env = {"WIREGUARD_KEY_FILE": "/env/key"}
    assert wgb.key_file_path({"wireguard_key_file": "/flag/key"}, env) == "/flag/key"
    assert wgb.key_file_path({"wireguard_key_file": ""}, env) == "/env/key"
    assert wgb.key_file_path({}, {}) == "/run/flannel/wgkey"


def test_key_file_created_0400_and_kept(tmp_path):
    path = str(tmp_path / "sub" / "wgkey")
    key, created = wgb.load_or_create_key(path)
    assert created and stat.S_IMODE(os.stat(path).st_mode) == 0o400
    with open(path) as f:
        assert f.read() == key + "\n"
    assert wgb.load_or_create_key(path) == (key, False)
    assert os.listdir(tmp_path / "sub") == ["wgkey"]  # no temporary file left


def test_key_file_written_by_wg_genkey_is_accepted_and_its_mode_tightened(tmp_path):
    path = tmp_path / "wgkey"
    path.write_text(KEY_A + "\n")
    os.chmod(path, 0o644)
    assert wgb.load_or_create_key(str(path)) == (KEY_A, False)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400


@pytest.mark.parametrize("content, problem", [
    (b"", "is empty"),
    (b"not a key\n", "is not base64"),
    (base64.b64encode(b"x" * 16) + b"\n", "32-byte key"),
    ((KEY_A + "\n" + KEY_B + "\n").encode(), "holds 2 lines"),
    (b"\xff\xfe\n", "is not text"),
])
def test_bad_key_file_is_one_line_naming_file_and_fix(tmp_path, content, problem):
    path = tmp_path / "wgkey"
    path.write_bytes(content)
    with pytest.raises(BackendError) as err:
        wgb.load_or_create_key(str(path))
    text = str(err.value)
    assert "\n" not in text and str(path) in text and problem in text and "delete it" in text
    assert path.read_bytes() == content  # never overwritten


def test_key_file_that_is_a_directory(tmp_path):
    with pytest.raises(BackendError, match="is a directory"):
        wgb.load_or_create_key(str(tmp_path))


@pytest.mark.skipif(not shutil.which("wg"), reason="wireguard-tools (wg) not installed")
def test_public_key_matches_rfc7748_vector():
    alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    public = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert wgb.public_key(base64.b64encode(alice).decode()) == base64.b64encode(public).decode()


def peers():
    return [wgb.Peer(KEY_B, "192.0.2.3:51820", ("10.100.3.0/24",), wgb.ZERO_KEY, 0),
            wgb.Peer(KEY_A, "192.0.2.2:51820", ("10.100.2.0/24",), PSK, 25)]


def test_render_config_is_the_full_state_sorted_by_key():
    text = wgb.render_config(KEY_A, 51820, peers())
    assert text == (
        "[Interface]\nPrivateKey = %s\nListenPort = 51820\n\n"
        "[Peer]\nPublicKey = %s\nPresharedKey = %s\nEndpoint = 192.0.2.2:51820\nAllowedIPs = 10.100.2.0/24\n"
        "PersistentKeepalive = 25\n\n"
        "[Peer]\nPublicKey = %s\nPresharedKey = %s\nEndpoint = 192.0.2.3:51820\nAllowedIPs = 10.100.3.0/24\n"
        "PersistentKeepalive = 0\n" % (KEY_A, KEY_A, PSK, KEY_B, wgb.ZERO_KEY))


DUMP = ("%s\tPUB\t51820\toff\n"
        "%s\t%s\t192.0.2.2:51820\t10.100.2.0/24\t1700000000\t100\t200\t25\n"
        "%s\t(none)\t192.0.2.3:51820\t10.100.3.0/24\t0\t0\t0\toff\n" % (KEY_A, KEY_A, PSK, KEY_B))


def test_dump_in_step_means_no_sync():
    dump = wgb.parse_dump(DUMP)
    assert dump.listen_port == 51820 and set(dump.peers) == {KEY_A, KEY_B}
    assert dump.peers[KEY_B]["psk"] == wgb.ZERO_KEY and dump.peers[KEY_A]["keepalive"] == 25
    assert wgb.dump_differences(dump, KEY_A, 51820, peers()) == []


def test_dump_differences():
    dump = wgb.parse_dump(DUMP.replace("192.0.2.3:51820", "198.51.100.7:4444"))  # roamed: fine
    assert wgb.dump_differences(dump, KEY_A, 51820, peers()) == []
    dump = wgb.parse_dump(DUMP.replace("192.0.2.3:51820", "(none)"))
    assert wgb.dump_differences(dump, KEY_A, 51820, peers()) == ["peer %s (10.100.3.0/24) altered" % KEY_B]
    diff = wgb.dump_differences(wgb.parse_dump(DUMP), KEY_B, 51821, peers()[:1])
    assert diff == ["private key", "listen port 51820 (want 51821)", "stale peer %s" % KEY_A]
    dump = wgb.parse_dump(DUMP.splitlines()[0] + "\n")
    assert len(wgb.dump_differences(dump, KEY_A, 51820, peers())) == 2
    with pytest.raises(ValueError):
        wgb.parse_dump("")


def test_dump_with_both_families_compares_canonical_subnets():
    peer = wgb.Peer(KEY_B, "[2001:db8::3]:51820", ("10.100.3.0/24", "fd10:0:0:3::/64"), wgb.ZERO_KEY, 0)
    dump = wgb.parse_dump("%s\tPUB\t51820\toff\n%s\t(none)\t[2001:db8::3]:51820\tfd10:0:0:3:0::/64,10.100.3.0/24\t"
                          "0\t0\t0\toff\n" % (KEY_A, KEY_B))
    assert dump.peers[KEY_B]["allowed"] == {"10.100.3.0/24", "fd10:0:0:3::/64"}
    assert wgb.dump_differences(dump, KEY_A, 51820, [peer]) == []
    one = wgb.Peer(KEY_B, peer.endpoint, ("10.100.3.0/24",), wgb.ZERO_KEY, 0)
    assert wgb.dump_differences(dump, KEY_A, 51820, [one]) == ["peer %s (10.100.3.0/24) altered" % KEY_B]


def lease(subnet, key, btype="wireguard", ip="192.0.2.9", subnet6=None, ip6=None, key6=None):
    data = {"PublicKey": key} if key else None
    data6 = {"PublicKey": key6} if key6 else None
    return Lease(ipaddress.IPv4Network(subnet) if subnet else None, LeaseAttrs(ip, btype, data, ip6, data6),
                 ipv6_subnet=ipaddress.IPv6Network(subnet6) if subnet6 else None)


def peer_map(be, item):
    """{device name: Peer or None} for one lease."""
    return {d.name: be._peer_for(item, d) for d in be.devices}


def test_which_leases_become_peers():
    be = backend(PSK=PSK, ListenPort=51999, PersistentKeepaliveInterval=9)
    be.public = KEY_A
    be.lease = lease("10.100.1.0/24", KEY_A)
    (dev,) = be.devices
    assert be._peer_for(lease("10.100.2.0/24", KEY_B), dev) == wgb.Peer(KEY_B, "192.0.2.9:51999", ("10.100.2.0/24",),
                                                                        PSK, 9, ("192.0.2.9",))
    assert be._peer_for(lease("10.100.1.0/24", KEY_B), dev) is None  # our own subnet
    assert be._peer_for(lease("10.100.3.0/24", KEY_A), dev) is None  # our own key
    assert be._peer_for(lease("10.100.4.0/24", None, "host-gw"), dev) is None  # another backend type
    assert be._peer_for(lease("10.100.5.0/24", None), dev) is None  # no key
    # an IPv4 network ignores the IPv6 half of a dual-stack lease
    both = lease("10.100.6.0/24", KEY_B, subnet6="fd10:0:0:6::/64", ip6="2001:db8::6", key6=KEY_B)
    assert be._peer_for(both, dev).allowed_ips == ("10.100.6.0/24",)


def test_defaults_and_mode():
    be = backend()
    assert (be.listen_port, be.listen_port_v6, be.psk, be.keepalive, be.mtu()) == (51820, 51821, wgb.ZERO_KEY, 0,
                                                                                   1420)
    assert be.mode == "separate" and [(d.name, d.listen_port, d.families) for d in be.devices] == [
        ("flannel-wg", 51820, (4,))]
    assert backend(MTU=1300).mtu() == 1300
    assert backend(Mode="auto").devices[0].families == (4,)


@pytest.mark.parametrize("mode, net, iface, devices", [
    ("separate", V6, IFACE6, [("flannel-wg", 51820, (4,)), ("flannel-wg-v6", 51821, (6,))]),
    ("separate", V6_ONLY, IFACE6_ONLY, [("flannel-wg-v6", 51821, (6,))]),
    ("auto", V6, IFACE6, [("flannel-wg", 51820, (4, 6))]),
    ("ipv4", V6, IFACE6, [("flannel-wg", 51820, (4, 6))]),
    ("ipv6", V6, IFACE6, [("flannel-wg", 51820, (4, 6))]),
    ("auto", V6_ONLY, IFACE6_ONLY, [("flannel-wg", 51820, (6,))]),
    ("ipv6", V6_ONLY, IFACE6_ONLY, [("flannel-wg", 51820, (6,))]),
])
def test_devices_per_mode(mode, net, iface, devices):
    be = backend(iface, net, Mode=mode)
    assert [(d.name, d.listen_port, d.families) for d in be.devices] == devices
    assert len({wgb.unit_for(d.name) for d in be.devices}) == len(devices)  # one unit name per device
    assert be.mtu() == 1420  # 80 bytes on either underlay, as Go


@pytest.mark.parametrize("mode, net, iface, words", [
    ("ipv4", V6_ONLY, IFACE6_ONLY, "IPv6-only"),
    ("ipv4", None, ExternalInterface("eth0", 2, None, None, 1500, "2001:db8::1", "2001:db8::1"), "no IPv4 address"),
    ("ipv6", None, IFACE, "no IPv6 (EnableIPv6"),
    ("ipv6", V6, IFACE, "no IPv6 address other nodes reach"),
    ("separate", V6, IFACE, "flannel-wg-v6"),
])
def test_a_mode_that_cannot_work_is_refused_in_one_line(mode, net, iface, words):
    with pytest.raises(BackendError) as err:
        backend(iface, net, Mode=mode)
    text = str(err.value)
    assert "\n" not in text and words in text and "Mode" in text and "use Mode" in text, text


def test_mode_ipv6_is_accepted_with_ipv6():
    assert backend(IFACE6, V6, Mode="ipv6").mode == "ipv6"


DUAL = lease("10.100.2.0/24", KEY_B, ip="192.0.2.2", subnet6="fd10:0:0:2::/64", ip6="2001:db8::2", key6=KEY_B)


def dual_backend(mode, net=None, iface=IFACE6, **options):
    be = backend(iface, V6 if net is None else net, Mode=mode, **options)
    be.public = KEY_A
    be.lease = lease("10.100.1.0/24", KEY_A, subnet6="fd10:0:0:1::/64", ip6="2001:db8::1", key6=KEY_A)
    return be


def test_separate_mode_peers_and_rendering():
    be = dual_backend("separate", PSK=PSK)
    got = peer_map(be, DUAL)
    both = ("192.0.2.2", "2001:db8::2")  # where the lease says the node is: its packets may come from either
    assert got == {"flannel-wg": wgb.Peer(KEY_B, "192.0.2.2:51820", ("10.100.2.0/24",), PSK, 0, both),
                   "flannel-wg-v6": wgb.Peer(KEY_B, "[2001:db8::2]:51821", ("fd10:0:0:2::/64",), PSK, 0, both)}
    assert wgb.render_config(KEY_A, 51821, [got["flannel-wg-v6"]]) == (
        "[Interface]\nPrivateKey = %s\nListenPort = 51821\n\n[Peer]\nPublicKey = %s\nPresharedKey = %s\n"
        "Endpoint = [2001:db8::2]:51821\nAllowedIPs = fd10:0:0:2::/64\nPersistentKeepalive = 0\n" % (KEY_A, KEY_B, PSK))
    # a peer with no IPv6 half: only the IPv4 device peers with it
    v4only = lease("10.100.3.0/24", KEY_B, ip="192.0.2.3")
    assert peer_map(be, v4only)["flannel-wg-v6"] is None and peer_map(be, v4only)["flannel-wg"] is not None
    # the v6 device takes the key from BackendV6Data
    other = lease("10.100.4.0/24", KEY_B, ip="192.0.2.4", subnet6="fd10:0:0:4::/64", ip6="2001:db8::4",
                  key6=PSK)
    assert peer_map(be, other)["flannel-wg-v6"].public_key == PSK


def test_separate_mode_ipv6_only():
    be = backend(IFACE6_ONLY, V6_ONLY)
    be.public = KEY_A
    be.lease = lease(None, None, ip=None, subnet6="fd10:0:0:1::/64", ip6="2001:db8::1", key6=KEY_A)
    item = lease(None, None, ip=None, subnet6="fd10:0:0:2::/64", ip6="2001:db8::2", key6=KEY_B)
    assert peer_map(be, item) == {"flannel-wg-v6": wgb.Peer(KEY_B, "[2001:db8::2]:51821", ("fd10:0:0:2::/64",),
                                                            wgb.ZERO_KEY, 0, ("2001:db8::2",))}
    mine = lease(None, None, ip=None, subnet6="fd10:0:0:1::/64", ip6="2001:db8::9", key6=KEY_B)
    assert peer_map(be, mine) == {"flannel-wg-v6": None}  # shares our subnet: not a remote lease


@pytest.mark.parametrize("mode, endpoint", [("auto", "192.0.2.2:51820"), ("ipv4", "192.0.2.2:51820"),
                                            ("ipv6", "[2001:db8::2]:51820")])
def test_one_device_modes_carry_both_subnets(mode, endpoint):
    be = dual_backend(mode, ListenPortV6=52000)
    (peer,) = peer_map(be, DUAL).values()
    assert peer == wgb.Peer(KEY_B, endpoint, ("10.100.2.0/24", "fd10:0:0:2::/64"), wgb.ZERO_KEY, 0,
                            ("192.0.2.2", "2001:db8::2"))
    assert wgb.render_config(KEY_A, 51820, [peer]).splitlines()[7:10] == [
        "Endpoint = %s" % endpoint, "AllowedIPs = 10.100.2.0/24, fd10:0:0:2::/64", "PersistentKeepalive = 0"]


def test_one_device_modes_skip_a_peer_without_that_family():
    v6only = lease(None, None, ip=None, subnet6="fd10:0:0:5::/64", ip6="2001:db8::5", key6=KEY_B)
    assert peer_map(dual_backend("ipv4"), v6only) == {"flannel-wg": None}
    auto = peer_map(dual_backend("auto"), v6only)["flannel-wg"]
    assert auto.endpoint == "[2001:db8::5]:51820" and auto.allowed_ips == ("fd10:0:0:5::/64",)
    v4only = lease("10.100.3.0/24", KEY_B, ip="192.0.2.3")
    assert peer_map(dual_backend("ipv6"), v4only) == {"flannel-wg": None}
    assert peer_map(dual_backend("auto"), v4only)["flannel-wg"].endpoint == "192.0.2.3:51820"


def test_auto_endpoint_choice():
    sel = wgb.select_endpoint
    assert sel("192.0.2.2", None, "192.0.2.1", "2001:db8::1") == "192.0.2.2"
    assert sel(None, "2001:db8::2", "192.0.2.1", "2001:db8::1") == "2001:db8::2"
    assert sel("192.0.2.2", "2001:db8::2", "192.0.2.1", "2001:db8::1") == "192.0.2.2"  # public IPv4 first
    assert sel("10.0.0.2", "2001:db8::2", "10.0.0.1", "2001:db8::1") == "2001:db8::2"  # private v4, public v6
    assert sel("10.0.0.2", "fd00::2", "10.0.0.1", "fd00::1") == "10.0.0.2"  # both private: IPv4 (as Go)
    assert sel("10.0.0.2", "2001:db8::2", "10.0.0.1", "fd00::1") == "10.0.0.2"  # our IPv6 is private
    assert sel("192.0.2.2", "2001:db8::2", None, "2001:db8::1") == "2001:db8::2"  # we have no IPv4
    assert sel("10.0.0.2", "2001:db8::2", "10.0.0.1", None) == "10.0.0.2"  # we have no IPv6
    assert sel(None, None, "10.0.0.1", None) is None
    assert [wgb.is_private(a) for a in ("172.16.0.1", "172.32.0.1", "fd00::1", "fe80::1", "2001:db8::1")] == [
        True, False, True, False, False]
    assert wgb.endpoint("2001:db8::2", 51821) == "[2001:db8::2]:51821" and wgb.endpoint("192.0.2.2", 1) == "192.0.2.2:1"


@pytest.mark.parametrize("net, iface, mode, want", [
    (None, IFACE, "separate", ("192.0.2.1", {"PublicKey": KEY_A}, None, None)),
    (V6, IFACE6, "separate", ("192.0.2.1", {"PublicKey": KEY_A}, "2001:db8::1", {"PublicKey": KEY_A})),
    (V6, IFACE6, "auto", ("192.0.2.1", {"PublicKey": KEY_A}, "2001:db8::1", {"PublicKey": KEY_A})),
    (V6_ONLY, IFACE6_ONLY, "separate", (None, None, "2001:db8::1", {"PublicKey": KEY_A})),
])
def test_lease_attributes_per_family(monkeypatch, net, iface, mode, want):
    be = backend(iface, net, Mode=mode)
    monkeypatch.setattr(wgb, "wg_binary", lambda: "wg")
    monkeypatch.setattr(wgb, "load_or_create_key", lambda path: (KEY_B, False))
    monkeypatch.setattr(wgb, "public_key", lambda private: KEY_A)
    removed = []
    monkeypatch.setattr(wgb, "remove_device", lambda name: removed.append(name) or (False, False))
    monkeypatch.setattr(wgb.Device, "ensure", lambda self: setattr(self, "index", 7))
    monkeypatch.setattr(be, "_link_settings", lambda: 0)
    attrs = be.prepare()
    assert (attrs.public_ip, attrs.backend_data, attrs.public_ipv6, attrs.backend_v6_data) == want
    assert attrs.backend_type == "wireguard" and all(d.private == KEY_B for d in be.devices)
    # the device this mode does not use is removed (a mode switch leaves no flannel-wg-v6 behind)
    assert sorted(removed + [d.name for d in be.devices]) == ["flannel-wg", "flannel-wg-v6"]


def _one_peer_device(monkeypatch, name, port, families, endpoint, allowed, keepalive):
    """A device with one wanted peer (KEY_B), its remove/set calls recorded, and a clock the test moves."""
    dev = wgb.Device(name, port, families, KEY_A)
    dev.want = {"10.100.3.0-24": wgb.Peer(KEY_B, endpoint, (allowed,), wgb.ZERO_KEY, keepalive)}
    calls = []
    monkeypatch.setattr(dev, "remove_peer", lambda p: calls.append(("remove", p.public_key)))
    monkeypatch.setattr(dev, "set_peer", lambda p: calls.append(("set", p.public_key)))
    clock = [1000.0]
    monkeypatch.setattr(wgb.time, "monotonic", lambda: clock[0])
    return dev, calls, clock


def test_a_one_way_session_is_reset(monkeypatch):
    dev, calls, clock = _one_peer_device(monkeypatch, "flannel-wg", 51820, (4,), "192.0.2.3:51820", "10.100.3.0/24", 0)

    def tick(rx, tx, handshake=1700000000, step=5.0):
        clock[0] += step
        line = "%s\t(none)\t192.0.2.3:51820\t10.100.3.0/24\t%d\t%d\t%d\toff\n" % (KEY_B, handshake, rx, tx)
        return dev.unstick(wgb.parse_dump("%s\tPUB\t51820\toff\n" % KEY_A + line))

    # answers come back: never reset, however long we send
    assert [tick(100 * i, 200 * i) for i in range(1, 10)] == [0] * 9
    # idle both ways: nothing to judge
    assert [tick(900, 1800) for _tick in range(6)] == [0] * 6
    # we send, nothing comes back: reset once 20 s after the first unanswered send
    assert [tick(900, 1800 + 100 * i) for i in range(1, 6)] == [0, 0, 0, 0, 1]
    assert calls == [("remove", KEY_B), ("set", KEY_B)]
    # no handshake yet (peer down): never reset
    calls.clear()
    assert [tick(900, 3000 + 100 * i, handshake=0) for i in range(8)] == [0] * 8 and calls == []


def test_crossed_initiations_are_broken_by_a_reset(monkeypatch):
    """No handshake completes although both sides send (their initiations cross and each drops the other's
    response): reset once, 10 to 15 s after it was first seen; an idle spell starts the clock again; a peer
    that is down is left alone."""
    dev, calls, clock = _one_peer_device(monkeypatch, "flannel-wg-v6", 51821, (6,), "[2001:db8::3]:51821",
                                         "fd10:0:0:3::/64", 5)

    def tick(rx, tx):
        clock[0] += 5.0
        line = "%s\t(none)\t[2001:db8::3]:51821\tfd10:0:0:3::/64\t0\t%d\t%d\t5\n" % (KEY_B, rx, tx)
        return dev.unstick(wgb.parse_dump("%s\tPUB\t51821\toff\n" % KEY_A + line))

    for seed in range(20):
        wgb.random.seed(seed)
        calls.clear()
        dev.unmet.clear()
        results = [tick(148 * i, 240 * i) for i in range(1, 6)]  # 5 s apart: 25 s
        assert results.count(1) == 1, results
        # first seen at the first tick; due 10-15 s later, acted on at the first tick after that
        assert 10 <= 5 * results.index(1) < 20, results
        assert calls == [("remove", KEY_B), ("set", KEY_B)]
    # the end with the larger public key waits three times as long (the other end, if it is one of ours,
    # resets first; both resetting in the same tick would keep them in step)
    dev.public = "~"  # sorts after every base64 key
    for seed in range(20):
        wgb.random.seed(seed)
        calls.clear()
        dev.unmet.clear()
        results = [tick(148 * i, 240 * i) for i in range(1, 12)]  # 55 s
        assert results.count(1) == 1 and 30 <= 5 * results.index(1) < 50, results
    dev.public = ""
    # idle (no traffic, so no handshake either) for a minute, then both send: the clock starts with the traffic
    calls.clear()
    dev.unmet.clear()
    assert [tick(0, 0) for _tick in range(12)] == [0] * 12
    assert [tick(148 * i, 240 * i) for i in range(1, 3)] == [0, 0] and calls == []
    # down: our initiations go out, nothing comes in
    calls.clear()
    dev.unmet.clear()
    assert [tick(0, 148 * i) for i in range(1, 12)] == [0] * 11 and calls == []


def test_device_put_moves_a_key_and_keeps_an_unchanged_peer(monkeypatch):
    dev = wgb.Device("flannel-wg-v6", 51821, (6,), KEY_A)
    calls = []
    monkeypatch.setattr(dev, "remove_peer", lambda p: calls.append(("remove", p.label)))
    monkeypatch.setattr(dev, "set_peer", lambda p: calls.append(("set", p.label)))
    peer = wgb.Peer(KEY_B, "[2001:db8::2]:51821", ("fd10:0:0:2::/64",), wgb.ZERO_KEY, 0)
    assert dev.put("a", peer) and not dev.put("a", peer)
    moved = wgb.Peer(KEY_B, "[2001:db8::2]:51821", ("fd10:0:0:3::/64",), wgb.ZERO_KEY, 0)
    assert dev.put("b", moved) and list(dev.want) == ["b"]
    assert dev.drop("b") == moved and dev.drop("b") is None
    assert calls == [("set", "fd10:0:0:2::/64"), ("set", "fd10:0:0:3::/64"), ("remove", "fd10:0:0:3::/64")]


# -- a key is one node's: the clash decision, the key replaced, endpoints pinned to the leases --------
def held(subnet, ip, key, created, btype="wireguard", key6=None, ip6=None, subnet6=None):
    """A lease of ``ip`` publishing ``key`` (etcd create revision ``created``: lower = older)."""
    item = lease(subnet, key, btype, ip=ip, key6=key6, ip6=ip6, subnet6=subnet6)
    item.created = created
    return item


def test_key_clash_older_lease_of_another_node_wins():
    clash = wgb.key_clash
    h1 = held("10.100.1.0/24", "192.0.2.1", KEY_A, 10)
    h3_own = held("10.100.3.0/24", "192.0.2.3", KEY_A, 20)
    h3_other_key = held("10.100.3.0/24", "192.0.2.3", KEY_B, 5)
    assert clash(KEY_A, "192.0.2.3", [], claim_now=True) is None
    # a cloned key file: h1's lease has the key, we have no lease yet (or ours carries another key)
    assert clash(KEY_A, "192.0.2.3", [h1], claim_now=True) is h1
    assert clash(KEY_A, "192.0.2.3", [h3_other_key, h1], claim_now=True) is h1
    # a restart: our own lease with the key is no clash, whatever else holds it later
    assert clash(KEY_A, "192.0.2.1", [h1], claim_now=True) is None
    assert clash(KEY_A, "192.0.2.1", [h1, h3_own], claim_now=True) is None  # h3 is the copy
    # ours is younger than theirs: theirs keeps the key, at start and while running
    assert clash(KEY_A, "192.0.2.3", [h3_own, h1], claim_now=True) is h1
    assert clash(KEY_A, "192.0.2.3", [h3_own, h1, None], claim_now=False) is h1
    # running without our lease at hand: nothing to judge
    assert clash(KEY_A, "192.0.2.3", [h1], claim_now=False) is None
    # the oldest holder is named; another key, another backend type's data: no clash
    h4 = held("10.100.4.0/24", "192.0.2.4", KEY_A, 3)
    assert clash(KEY_A, "192.0.2.3", [h1, h4], claim_now=True) is h4
    assert clash(KEY_B, "192.0.2.3", [h1], claim_now=True) is None
    assert clash(KEY_A, "192.0.2.3", [held("10.100.5.0/24", "192.0.2.5", KEY_A, 1, btype="vxlan")],
                 claim_now=True) is None
    # an IPv6-only lease publishes its key in BackendV6Data
    v6 = held(None, None, None, 7, key6=KEY_A, ip6="2001:db8::7", subnet6="fd10:0:0:7::/64")
    assert clash(KEY_A, "2001:db8::3", [v6], claim_now=True) is v6
    assert clash(KEY_A, "2001:db8::7", [v6], claim_now=True) is None


def fake_public(private):
    """A stand-in for ``wg pubkey`` that shows no part of the private key."""
    return "pub-" + hashlib.sha256(private.encode()).hexdigest()[:20]


def identity_backend(monkeypatch, tmp_path, key=KEY_A):
    """A backend whose key file (in tmp_path) holds ``key``; public keys from :func:`fake_public`."""
    path = tmp_path / "wgkey"
    path.write_text(key + "\n")
    os.chmod(path, 0o400)
    monkeypatch.setattr(wgb, "wg_binary", lambda: "wg")
    monkeypatch.setattr(wgb, "public_key", fake_public)
    be = wgb.WireguardBackend(parse_config({"Network": "10.100.0.0/16", "Backend": {"Type": "wireguard"}}), IFACE,
                              {"wireguard_key_file": str(path)})
    return be, path


def test_a_cloned_key_is_replaced_before_use(monkeypatch, tmp_path, caplog):
    be, path = identity_backend(monkeypatch, tmp_path)
    other = held("10.100.7.0/24", "192.0.2.7", fake_public(KEY_A), 10)
    with caplog.at_level("INFO", logger="pyflannel.backend.wireguard"):
        be.check_identity(lambda: [other, held("10.100.8.0/24", "192.0.2.8", KEY_B, 11)])
    fresh = path.read_text()
    assert fresh.endswith("\n") and fresh.strip() != KEY_A and wgb.catalogue.key_problem(fresh.strip()) is None
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400 and os.listdir(tmp_path) == ["wgkey"]
    assert be.private == fresh.strip() and be.public == fake_public(be.private)
    assert all(d.private == be.private for d in be.devices)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    for words in (fake_public(KEY_A), str(path), "older lease 10.100.7.0/24 of 192.0.2.7", be.public):
        assert words in warnings[0]
    assert be.private not in caplog.text and KEY_A not in caplog.text  # no private key in any log line
    # prepare() then uses the fresh key; a second check finds nothing
    be.check_identity(lambda: [other])
    assert path.read_text() == fresh


def test_own_lease_with_the_key_is_no_clash(monkeypatch, tmp_path, caplog):
    be, path = identity_backend(monkeypatch, tmp_path)
    mine = held("10.100.1.0/24", "192.0.2.1", fake_public(KEY_A), 10)
    clone = held("10.100.7.0/24", "192.0.2.7", fake_public(KEY_A), 20)
    with caplog.at_level("WARNING"):
        be.check_identity(lambda: [clone, mine])
    assert path.read_text() == KEY_A + "\n" and be.private == KEY_A and not caplog.records


def test_a_clash_found_while_running_replaces_the_key_and_raises(monkeypatch, tmp_path):
    be, path = identity_backend(monkeypatch, tmp_path)
    be.check_identity(lambda: [])
    be._prepared = True
    applied = []
    for device in be.devices:
        device.index = 5
        monkeypatch.setattr(device, "apply_interface", lambda d=device: applied.append((d.name, d.private)))
    mine = held("10.100.1.0/24", "192.0.2.1", fake_public(KEY_A), 30)
    be.check_identity(lambda: [mine, held("10.100.7.0/24", "192.0.2.7", fake_public(KEY_A), 40)])  # theirs is younger
    assert applied == [] and be.private == KEY_A
    with pytest.raises(wgb.IdentityClash) as err:
        be.check_identity(lambda: [mine, held("10.100.7.0/24", "192.0.2.7", fake_public(KEY_A), 20)])
    assert isinstance(err.value, BackendError) and "\n" not in str(err.value)
    assert "older lease 10.100.7.0/24 of 192.0.2.7" in str(err.value) and "exits" in str(err.value)
    assert be.private != KEY_A and path.read_text() == be.private + "\n"
    assert applied == [("flannel-wg", be.private)]  # off the device at once


def test_a_key_file_that_cannot_be_replaced_is_one_line(monkeypatch, tmp_path):
    be, path = identity_backend(monkeypatch, tmp_path)

    def refuse(src, dst):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(wgb.os, "rename", refuse)
    other = held("10.100.7.0/24", "192.0.2.7", fake_public(KEY_A), 1)
    # at start: the agent stops with one line naming the clash and the file (no device, no lease yet)
    with pytest.raises(BackendError) as err:
        be.check_identity(lambda: [other])
    text = str(err.value)
    assert not isinstance(err.value, wgb.IdentityClash) and "\n" not in text
    assert str(path) in text and "Read-only" in text and "older lease 10.100.7.0/24 of 192.0.2.7" in text
    assert path.read_text() == KEY_A + "\n" and os.listdir(tmp_path) == ["wgkey"] and be.private == KEY_A
    # running: the devices stop using the key all the same, and the agent exits
    be._prepared = True
    applied = []
    for device in be.devices:
        device.index = 5
        monkeypatch.setattr(device, "apply_interface", lambda d=device: applied.append(d.private))
    mine = held("10.100.1.0/24", "192.0.2.1", fake_public(KEY_A), 30)
    with pytest.raises(wgb.IdentityClash) as err:
        be.check_identity(lambda: [mine, other])
    assert "Read-only" in str(err.value) and "stopped using it" in str(err.value) and "\n" not in str(err.value)
    assert be.private != KEY_A and applied == [be.private] and path.read_text() == KEY_A + "\n"


def test_the_base_backend_checks_no_identity_and_lists_nothing():
    from pyflannel.backend import Backend

    def never():
        raise AssertionError("the base backend lists no leases")

    assert Backend.check_identity(object(), never) is None  # type: ignore[arg-type]


def test_endpoint_pinning_decision():
    pin = wgb.pin_endpoint
    peer = wgb.Peer(KEY_B, "192.0.2.2:51820", ("10.100.2.0/24",), wgb.ZERO_KEY, 0, ("192.0.2.2", "2001:db8::2"))
    assert pin("192.0.2.2:51820", peer) is None
    assert pin("", peer) is None  # missing: sync_peers' job
    assert pin("192.0.2.2:40123", peer) is None  # a NAT rewrote the source port of the lease's address
    assert pin("[2001:db8::2]:51820", peer) is None  # the lease's other family
    assert pin("[::ffff:192.0.2.2]:51820", peer) is None
    assert pin("192.0.2.3:51820", peer) == "192.0.2.2:51820"  # a host the lease does not name: a clone
    assert pin("[2001:db8::3]:51820", peer) == "192.0.2.2:51820"
    assert pin("garbage", peer) == "192.0.2.2:51820"
    v6 = wgb.Peer(KEY_B, "[2001:db8::2]:51821", ("fd10:0:0:2::/64",), wgb.ZERO_KEY, 0, ("2001:db8::2",))
    assert pin("[2001:db8:0::2]:51821", v6) is None
    assert pin("[2001:db8::9]:51821", v6) == "[2001:db8::2]:51821"
    assert pin("192.0.2.2:51821", v6) == "[2001:db8::2]:51821"  # not in this lease


def test_a_roamed_endpoint_is_set_back_and_warned_once(monkeypatch, caplog):
    dev = wgb.Device("flannel-wg", 51820, (4,), KEY_A)
    peer = wgb.Peer(KEY_B, "192.0.2.2:51820", ("10.100.2.0/24",), wgb.ZERO_KEY, 0, ("192.0.2.2",))
    dev.want = {"10.100.2.0-24": peer}
    calls = []
    monkeypatch.setattr(dev, "remove_peer", lambda p: calls.append(("remove", p.public_key)))
    monkeypatch.setattr(dev, "set_peer", lambda p: calls.append(("set", p.public_key, p.endpoint)))
    dev.traffic[KEY_B] = (1, 2, 0.0)

    def at(where):
        return wgb.parse_dump("%s\tPUB\t51820\toff\n%s\t(none)\t%s\t10.100.2.0/24\t1\t2\t3\toff\n"
                              % (KEY_A, KEY_B, where))

    with caplog.at_level("WARNING", logger="pyflannel.backend.wireguard"):
        assert dev.pin_endpoints(at("192.0.2.2:51820")) == 0
        assert [dev.pin_endpoints(at("192.0.2.3:51820")) for _n in range(3)] == [1, 1, 1]
        assert dev.pin_endpoints(at("192.0.2.2:51820")) == 0
        assert dev.pin_endpoints(at("192.0.2.4:51820")) == 1  # another roam: warned again
    # removed and added again at the lease's endpoint: the next packet makes a fresh handshake there
    assert calls == [("remove", KEY_B), ("set", KEY_B, "192.0.2.2:51820")] * 4 and dev.pins == 4
    assert KEY_B not in dev.traffic
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "flannel-wg: peer %s's endpoint moved to 192.0.2.3:51820, which is not in its lease (10.100.2.0/24); set "
        "back to 192.0.2.2:51820 (another host holds that node's wireguard key or sends in its name)" % KEY_B,
        "flannel-wg: peer %s's endpoint moved to 192.0.2.4:51820, which is not in its lease (10.100.2.0/24); set "
        "back to 192.0.2.2:51820 (another host holds that node's wireguard key or sends in its name)" % KEY_B]
    # a peer we do not want (e.g. just removed) is not touched, and its memory goes
    dev.want = {}
    assert dev.pin_endpoints(at("192.0.2.3:51820")) == 0 and dev.roams == {}
