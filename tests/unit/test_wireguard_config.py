"""The wireguard backend's pure parts: key file, config rendering, dump parsing and comparison,
which leases become peers.  No netlink, no devices (tests/integration/test_wireguard.py has those)."""

from __future__ import annotations

import base64
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


def backend(**options):
    config = parse_config({"Network": "10.100.0.0/16", "Backend": dict({"Type": "wireguard"}, **options)})
    return wgb.WireguardBackend(config, IFACE, {"wireguard_key_file": "/nonexistent/wgkey"})


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
    return [wgb.Peer(KEY_B, "192.0.2.3:51820", "10.100.3.0/24", wgb.ZERO_KEY, 0),
            wgb.Peer(KEY_A, "192.0.2.2:51820", "10.100.2.0/24", PSK, 25)]


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


def lease(subnet, key, btype="wireguard", ip="192.0.2.9"):
    return Lease(ipaddress.IPv4Network(subnet), LeaseAttrs(ip, btype, {"PublicKey": key} if key else None))


def test_which_leases_become_peers():
    be = backend(PSK=PSK, ListenPort=51999, PersistentKeepaliveInterval=9)
    be.public = KEY_A
    be.lease = lease("10.100.1.0/24", KEY_A)
    assert be._peer_for(lease("10.100.2.0/24", KEY_B)) == wgb.Peer(KEY_B, "192.0.2.9:51999", "10.100.2.0/24",
                                                                   PSK, 9)
    assert be._peer_for(lease("10.100.1.0/24", KEY_B)) is None  # our own subnet
    assert be._peer_for(lease("10.100.3.0/24", KEY_A)) is None  # our own key
    assert be._peer_for(lease("10.100.4.0/24", None, "host-gw")) is None  # another backend type
    assert be._peer_for(lease("10.100.5.0/24", None)) is None  # no key


def test_defaults_and_mode():
    be = backend()
    assert (be.listen_port, be.psk, be.keepalive, be.mtu()) == (51820, wgb.ZERO_KEY, 0, 1420)
    assert backend(MTU=1300).mtu() == 1300
    with pytest.raises(BackendError, match="Mode ipv6"):
        backend(Mode="ipv6")


def test_a_one_way_session_is_reset(monkeypatch):
    be = backend()
    peer = wgb.Peer(KEY_B, "192.0.2.3:51820", "10.100.3.0/24", wgb.ZERO_KEY, 0)
    be._want = {ipaddress.IPv4Network("10.100.3.0/24"): peer}
    calls = []
    monkeypatch.setattr(be, "_remove_peer", lambda p: calls.append(("remove", p.public_key)))
    monkeypatch.setattr(be, "_set_peer", lambda p: calls.append(("set", p.public_key)))
    clock = [1000.0]
    monkeypatch.setattr(wgb.time, "monotonic", lambda: clock[0])

    def tick(rx, tx, handshake=1700000000, step=5.0):
        clock[0] += step
        line = "%s\t(none)\t192.0.2.3:51820\t10.100.3.0/24\t%d\t%d\t%d\toff\n" % (KEY_B, handshake, rx, tx)
        return be._unstick(wgb.parse_dump("%s\tPUB\t51820\toff\n" % KEY_A + line))

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
