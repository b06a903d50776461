"""The collection's modules run for real (ansible-playbook, localhost) against a real etcd, v2 and v3.

What the modules wrote is checked independently by reading etcd through the facade.
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from plugins.module_utils.etcdstore import connect
from plugins.module_utils.leases import LeaseAttrs, config_key, encode_lease, subnet_key
from plugins.module_utils.netconfig import parse_config
from testbed.etcdserver import EtcdServer, free_port
from tests.ansible_runner import Play, adhoc, collection_root

# Each ansible-playbook run costs seconds of CPU; on a busy machine a play of 20 tasks takes minutes.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]


@pytest.fixture(scope="session")
def collections_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return collection_root(tmp_path_factory.mktemp("collections"))


@pytest.fixture
def store(etcd_server, etcd_api):
    s = connect([etcd_server.url], api=etcd_api)
    yield s
    s.close()


@pytest.fixture
def play(collections_path, tmp_path, etcd_server, etcd_api, etcd_prefix) -> Play:
    (tmp_path / "tmp").mkdir()
    return Play(collections_path, tmp_path,
                {"endpoints": [etcd_server.url], "api": etcd_api, "prefix": etcd_prefix, "timeout": 3})


def stored(store, prefix):
    kv = store.get(config_key(prefix))
    return None if kv is None else json.loads(kv.value)


def dead_endpoint() -> str:
    return "http://127.0.0.1:%d" % free_port()


def test_network_write_idempotent_check_diff_invalid(play, store, etcd_prefix, etcd_server, etcd_api):
    vxlan = {"type": "vxlan", "direct_routing": True}
    # 1: nothing may be written by check mode, by invalid input, or when etcd is unreachable.  The schema
    #    checks run before etcd is contacted, so they do not depend on the API: run them once (v3).
    play.add("check", "flannel_network", {"network": "10.1.0.0/16", "backend": vxlan}, check=True)
    schema_cases = {
        "bad_len": ({"network": "10.1.0.0/16", "subnet_len": 31},
                    "invalid network config: SubnetLen=31: must be 30 or less"),
        "bad_opt": ({"network": "10.1.0.0/16", "backend": {"type": "host-gw", "vni": 2}},
                    "invalid network config: Backend.VNI=2: is not an option of the host-gw backend"),
        "bad_type": ({"network": "10.1.0.0/16", "backend": {"type": "ipip"}},
                     'invalid network config: Backend.Type="ipip": is a Go flanneld backend'),
        "bad_net": ({"network": "10.1.0.0"}, 'invalid network config: Network="10.1.0.0": needs a prefix length'),
    }
    if etcd_api == "v3":
        for name, (args, _line) in schema_cases.items():
            play.add(name, "flannel_network", args)
        play.add("missing", "flannel_network", {"subnet_len": 24})
    play.add("unreachable", "flannel_network", {"network": "10.1.0.0/16", "endpoints": [dead_endpoint()],
                                                "timeout": 1})
    r = play.run()
    assert stored(store, etcd_prefix) is None
    assert r["check"]["changed"] is True and not r["check"].get("failed")
    assert r["check"]["diff"]["before"] == ""
    assert json.loads(r["check"]["diff"]["after"]) == {"Network": "10.1.0.0/16",
                                                       "Backend": {"Type": "vxlan", "DirectRouting": True}}
    assert r["check"]["config"]["SubnetMin"] == "10.1.1.0"
    assert r["check"]["config"]["Backend"]["VNI"] == 1
    if etcd_api == "v3":
        for name, (_args, schema_line) in schema_cases.items():
            assert r[name]["failed"] is True, name
            assert r[name]["msg"].startswith(schema_line), (name, r[name]["msg"])
            assert "\n" not in r[name]["msg"]
        assert r["missing"]["failed"] is True and "network" in r["missing"]["msg"]
    assert r["unreachable"]["failed"] is True
    assert r["unreachable"]["msg"].startswith("etcd is unreachable"), r["unreachable"]["msg"]

    # 2: write (through a dead first endpoint: failover), rewrite, same meaning spelled out, a bad change,
    #    a check-mode change with diff
    play.add("write", "flannel_network", {"network": "10.1.0.0/16", "backend": vxlan,
                                          "endpoints": [dead_endpoint(), etcd_server.url]})
    play.add("again", "flannel_network", {"network": "10.1.0.0/16", "backend": vxlan})
    play.add("spelled_out", "flannel_network", {
        "network": "10.1.0.0/16", "subnet_len": 24, "subnet_min": "10.1.1.0", "subnet_max": "10.1.255.0",
        "backend": {"type": "vxlan", "vni": 1, "port": 0, "direct_routing": True, "learning": False}})
    play.add("bad_min", "flannel_network", {"network": "10.1.0.0/16", "subnet_min": "10.2.0.0"})
    play.add("check_change", "flannel_network", {"network": "10.1.0.0/16", "backend": {"type": "host-gw"}},
             check=True)
    r = play.run()
    want = {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan", "DirectRouting": True}}
    assert stored(store, etcd_prefix) == want
    assert r["write"]["changed"] is True and r["write"]["api"] == etcd_api
    assert r["write"]["previous"] is None and json.loads(r["write"]["stored"]) == want
    assert r["write"]["config"] == parse_config(want).to_dict()
    assert json.loads(r["write"]["diff"]["after"]) == want
    assert r["again"]["changed"] is False
    assert r["spelled_out"]["changed"] is False
    assert r["bad_min"]["failed"] is True
    assert r["bad_min"]["msg"].startswith('invalid network config: SubnetMin="10.2.0.0": is outside Network')
    assert r["check_change"]["changed"] is True
    assert json.loads(r["check_change"]["diff"]["before"]) == want
    assert json.loads(r["check_change"]["diff"]["after"]) == {"Network": "10.1.0.0/16",
                                                              "Backend": {"Type": "host-gw"}}
    assert r["check_change"]["config"]["Backend"] == {"Type": "host-gw", "MTU": None}

    # 3: a config written by hand (other key case and order, defaults spelled out) means the same: untouched;
    #    then a real change, then state=absent in check mode and for real
    by_hand = ('{"backend": {"directrouting": true, "type": "vxlan", "VNI": 1}, "subnetlen": 24, '
               '"network": "10.1.0.0/16"}')
    store.put(config_key(etcd_prefix), by_hand)
    play.add("by_hand", "flannel_network", {"network": "10.1.0.0/16", "backend": vxlan})
    play.add("change", "flannel_network", {"network": "10.1.0.0/16", "subnet_len": 26,
                                           "backend": {"type": "udp", "port": 8286}})
    play.add("absent_check", "flannel_network", {"state": "absent"}, check=True)
    play.add("absent", "flannel_network", {"state": "absent"})
    play.add("absent_again", "flannel_network", {"state": "absent"})
    r = play.run()
    assert r["by_hand"]["changed"] is False and r["by_hand"]["stored"] == by_hand
    assert r["change"]["changed"] is True  # no leases exist, so no force needed
    assert json.loads(r["change"]["previous"]) == json.loads(by_hand)
    want = {"Network": "10.1.0.0/16", "SubnetLen": 26, "Backend": {"Type": "udp", "Port": 8286}}
    assert json.loads(r["change"]["stored"]) == want
    # the check-mode delete left the key, so the real one still had something to delete
    assert r["absent_check"]["changed"] is True and json.loads(r["absent_check"]["diff"]["before"]) == want
    assert json.loads(r["absent"]["previous"]) == want
    assert stored(store, etcd_prefix) is None
    assert r["absent"]["changed"] is True and r["absent_again"]["changed"] is False


def test_network_change_with_leases_needs_force(play, store, etcd_prefix):
    store.put(config_key(etcd_prefix), '{"Network": "10.10.0.0/16", "Backend": {"Type": "host-gw"}}')
    lease_key = subnet_key(etcd_prefix, ipaddress.IPv4Network("10.10.7.0/24"))
    lease_value = encode_lease(LeaseAttrs("192.0.2.7", "host-gw"), store.api)
    assert store.create(lease_key, lease_value, ttl=600) is not None

    play.add("new_network", "flannel_network", {"network": "10.20.0.0/16", "backend": {"type": "host-gw"}})
    play.add("new_len", "flannel_network", {"network": "10.10.0.0/16", "subnet_len": 25,
                                            "backend": {"type": "host-gw"}})
    play.add("range_drops_lease", "flannel_network", {"network": "10.10.0.0/16", "subnet_max": "10.10.5.0",
                                                      "backend": {"type": "host-gw"}})
    play.add("harmless", "flannel_network", {"network": "10.10.0.0/16", "subnet_max": "10.10.200.0",
                                             "backend": {"type": "host-gw"}})
    play.add("forced_check", "flannel_network", {"network": "10.20.0.0/16", "force": True,
                                                 "backend": {"type": "host-gw"}}, check=True)
    r = play.run()
    for name in ("new_network", "new_len", "range_drops_lease"):
        assert r[name]["failed"] is True, name
        assert "force: true" in r[name]["msg"] and "10.10.7.0/24 of 192.0.2.7" in r[name]["msg"], r[name]["msg"]
        assert "re-acquire" in r[name]["msg"]
        assert r[name]["invalidated_leases"] == ["10.10.7.0/24"]
    assert "Network from 10.10.0.0/16 to 10.20.0.0/16" in r["new_network"]["msg"]
    assert "SubnetLen from 24 to 25" in r["new_len"]["msg"]
    assert r["harmless"]["changed"] is True and r["harmless"]["invalidated_leases"] == []
    assert r["forced_check"]["changed"] is True and r["forced_check"]["invalidated_leases"] == ["10.10.7.0/24"]
    assert stored(store, etcd_prefix) == {"Network": "10.10.0.0/16", "SubnetMax": "10.10.200.0",
                                          "Backend": {"Type": "host-gw"}}

    play.add("forced", "flannel_network", {"network": "10.20.0.0/16", "force": True, "backend": {"type": "host-gw"}})
    r = play.run()
    assert r["forced"]["changed"] is True and r["forced"]["invalidated_leases"] == ["10.10.7.0/24"]
    assert stored(store, etcd_prefix)["Network"] == "10.20.0.0/16"
    assert store.get(lease_key).value == lease_value  # the module never touches leases: nodes re-acquire


def test_leases_reserve_release_info(play, store, etcd_prefix, etcd_api):
    store.put(config_key(etcd_prefix), '{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')
    key5 = subnet_key(etcd_prefix, ipaddress.IPv4Network("10.5.5.0/24"))
    key7 = subnet_key(etcd_prefix, ipaddress.IPv4Network("10.5.7.0/24"))
    key8 = subnet_key(etcd_prefix, ipaddress.IPv4Network("10.5.8.0/24"))
    value7 = encode_lease(LeaseAttrs("192.0.2.7", "vxlan", {"VtepMAC": "7a:fd:a9:52:84:87", "VNI": 1}), etcd_api)
    value8 = encode_lease(LeaseAttrs("192.0.2.8", "vxlan", {"VtepMAC": "7a:fd:a9:52:84:88", "VNI": 1}), etcd_api)
    assert store.create(key7, value7, ttl=600) is not None
    assert store.create(key8, value8, ttl=600) is not None
    junk_key = etcd_prefix + "/subnets/10.5.9.300-24"
    store.put(junk_key, '{"PublicIP":"192.0.2.9"}')
    # judged by the agent's validator: outside Network, and a younger lease reusing 10.5.7.0's VtepMAC
    outside_key = etcd_prefix + "/subnets/10.6.1.0-24"
    store.put(outside_key, encode_lease(LeaseAttrs("192.0.2.11", "host-gw"), etcd_api))
    twin_key = subnet_key(etcd_prefix, ipaddress.IPv4Network("10.5.10.0/24"))
    store.put(twin_key, encode_lease(LeaseAttrs("192.0.2.10", "vxlan", {"VtepMAC": "7a:fd:a9:52:84:87"}), etcd_api))
    started = time.time()

    # The refusals and the filters are decided on the listing, whichever API produced it: run them on v3.
    logic = etcd_api == "v3"
    play.add("info_all", "flannel_lease_info", {})
    if logic:
        play.add("info_ip", "flannel_lease_info", {"public_ip": "192.0.2.8"})
        play.add("info_net", "flannel_lease_info", {"subnet": "10.5.4.0/23"})
    else:
        play.add("info_auto", "flannel_lease_info", {"api": "auto"})
    play.add("reserve_check", "flannel_lease", {"subnet": "10.5.5.0/24", "public_ip": "192.0.2.5"}, check=True)
    play.add("release_check", "flannel_lease", {"public_ip": "192.0.2.8", "state": "absent"}, check=True)
    play.add("info_mid", "flannel_lease_info", {})
    refusals = {
        "outside": ({"subnet": "10.9.0.0/24"}, "is not a subnet this network hands out"),
        "first_subnet": ({"subnet": "10.5.0.0/24"}, "SubnetMin 10.5.1.0"),
        "host_bits": ({"subnet": "10.5.5.1/24"}, "has host bits set"),
        "taken": ({"subnet": "10.5.7.0/24"}, "held by 192.0.2.7"),
        "second": ({"subnet": "10.5.6.0/24", "public_ip": "192.0.2.7"}, "192.0.2.7 already holds 10.5.7.0/24"),
        "release_wrong": ({"subnet": "10.5.8.0/24", "public_ip": "192.0.2.9", "state": "absent"},
                          "held by 192.0.2.8, not 192.0.2.9"),
    }
    if logic:
        for name, (args, _text) in refusals.items():
            play.add(name, "flannel_lease", dict({"public_ip": "192.0.2.5"}, **args))
    play.add("own", "flannel_lease", {"subnet": "10.5.7.0/24", "public_ip": "192.0.2.7"})
    play.add("own_again", "flannel_lease", {"subnet": "10.5.7.0/24", "public_ip": "192.0.2.7"})
    play.add("reserve", "flannel_lease", {"subnet": "10.5.5.0/24", "public_ip": "192.0.2.5"})
    play.add("reserve_again", "flannel_lease", {"subnet": "10.5.5.0/24", "public_ip": "192.0.2.5"})
    play.add("release", "flannel_lease", {"public_ip": "192.0.2.8", "state": "absent"})
    play.add("release_again", "flannel_lease", {"public_ip": "192.0.2.8", "state": "absent"})
    play.add("info_end", "flannel_lease_info", {})
    r = play.run()

    # info: every field, both TTL'd leases, the junk key reported as skipped
    leases = r["info_all"]["leases"]
    assert [item["subnet"] for item in leases] == ["10.5.7.0/24", "10.5.8.0/24"]
    first = leases[0]
    assert first["public_ip"] == "192.0.2.7" and first["backend_type"] == "vxlan"
    assert first["vtep_mac"] == "7a:fd:a9:52:84:87" and first["reservation"] is False
    assert first["key"] == key7 and first["value"] == value7
    assert 0 < first["ttl"] <= 600
    assert started + 500 < first["expiration"] <= time.time() + 601
    skipped = {s["key"]: s["reason"] for s in r["info_all"]["skipped"]}
    assert sorted(skipped) == sorted([junk_key, outside_key, twin_key])
    assert "outside the network 10.5.0.0/16" in skipped[outside_key]
    assert "shares its VtepMAC 7a:fd:a9:52:84:87 with the older lease 10.5.7.0/24" in skipped[twin_key]
    assert r["info_all"]["config"]["Network"] == "10.5.0.0/16"
    if logic:
        assert [item["subnet"] for item in r["info_ip"]["leases"]] == ["10.5.8.0/24"]
        assert r["info_net"]["leases"] == []
    else:
        assert r["info_auto"]["api"] == "v2"  # auto: the API where <prefix>/config is, here only v2

    # check mode: reported, not written
    assert r["reserve_check"]["changed"] is True and r["reserve_check"]["lease"]["reservation"] is True
    assert r["reserve_check"]["diff"]["before"] == {}
    assert r["release_check"]["changed"] is True
    assert [item["subnet"] for item in r["release_check"]["released"]] == ["10.5.8.0/24"]
    assert [item["subnet"] for item in r["info_mid"]["leases"]] == ["10.5.7.0/24", "10.5.8.0/24"]

    # refusals, each one line
    if logic:
        for name, (_args, text) in refusals.items():
            assert r[name]["failed"] is True and text in r[name]["msg"], (name, r[name]["msg"])
            assert "\n" not in r[name]["msg"]

    # the node's own lease became a reservation, value untouched
    assert r["own"]["changed"] is True and r["own"]["lease"]["reservation"] is True
    assert r["own"]["diff"]["before"][key7]["reservation"] is False
    assert r["own"]["diff"]["after"][key7] == {"value": value7, "reservation": True}
    assert r["own_again"]["changed"] is False
    assert r["reserve"]["changed"] is True and r["reserve_again"]["changed"] is False
    assert r["release"]["changed"] is True and r["release_again"]["changed"] is False
    assert r["release"]["diff"]["before"][key8]["value"] == value8

    # what etcd holds now, read directly
    kv7 = store.get(key7)
    assert kv7.value == value7 and not kv7.has_ttl and store.remaining_ttl(kv7) is None
    kv5 = store.get(key5)
    assert kv5.value == encode_lease(LeaseAttrs("192.0.2.5"), etcd_api) and not kv5.has_ttl
    assert store.get(key8) is None
    end = {item["subnet"]: item for item in r["info_end"]["leases"]}
    assert sorted(end) == ["10.5.5.0/24", "10.5.7.0/24"]
    assert all(item["reservation"] and item["ttl"] is None and item["expiration"] is None for item in end.values())

    # release by subnet
    play.add("release_subnet", "flannel_lease", {"subnet": "10.5.7.0/24", "state": "absent"})
    r = play.run()
    assert r["release_subnet"]["changed"] is True and store.get(key7) is None and store.get(key5) is not None


DUAL = {"network": "10.1.0.0/16", "enable_ipv6": True, "ipv6_network": "fc00:1::/48", "backend": {"type": "vxlan"}}


def test_network_ipv6_dual_stack_and_ipv6_only(play, store, etcd_prefix, etcd_api):
    # 1: bad IPv6 values fail with the schema's one line and write nothing (decided before etcd: v3 only)
    bad = {
        "no_net6": ({"network": "10.1.0.0/16", "enable_ipv6": True, "backend": {"type": "vxlan"}},
                    "invalid network config: IPv6Network is missing"),
        "len6": (dict(DUAL, ipv6_subnet_len=127), "invalid network config: IPv6SubnetLen=127: must be 126 or less"),
        "min6": (dict(DUAL, ipv6_subnet_min="fc00:1::8"),
                 'invalid network config: IPv6SubnetMin="fc00:1::8": is not on a /64 (IPv6SubnetLen) boundary'),
        "net6_v4": (dict(DUAL, ipv6_network="10.2.0.0/16"),
                    'invalid network config: IPv6Network="10.2.0.0/16": is not an IPv6 CIDR'),
        "udp6": (dict(DUAL, backend={"type": "udp"}),
                 "invalid network config: EnableIPv6=true: the udp backend carries IPv4 only"),
        "unused6": ({"network": "10.1.0.0/16", "ipv6_network": "fc00:1::/48"},
                    "ipv6_network: this option only applies when IPv6 is on"),
    }
    if etcd_api == "v3":
        for name, (args, _line) in bad.items():
            play.add(name, "flannel_network", args)
    play.add("check", "flannel_network", DUAL, check=True)
    play.add("write", "flannel_network", DUAL)
    play.add("again", "flannel_network", DUAL)
    play.add("spelled_out", "flannel_network", dict(DUAL, enable_ipv4=True, subnet_len=24, ipv6_subnet_len=64,
                                                    ipv6_subnet_min="fc00:1:0:1::", ipv6_subnet_max="fc00:1:0:ffff::"))
    play.add("ipv4_only_check", "flannel_network", {"network": "10.1.0.0/16", "backend": {"type": "vxlan"}},
             check=True)
    r = play.run()
    if etcd_api == "v3":
        for name, (_args, line) in bad.items():
            assert r[name]["failed"] is True and r[name]["msg"].startswith(line), (name, r[name]["msg"])
            assert "\n" not in r[name]["msg"]
    want = {"Network": "10.1.0.0/16", "EnableIPv6": True, "IPv6Network": "fc00:1::/48", "Backend": {"Type": "vxlan"}}
    assert r["check"]["changed"] is True and json.loads(r["check"]["diff"]["after"]) == want
    assert r["write"]["changed"] is True and r["write"]["previous"] is None
    assert json.loads(r["write"]["stored"]) == want and stored(store, etcd_prefix) == want
    config = r["write"]["config"]
    assert config == parse_config(want).to_dict()
    assert (config["EnableIPv6"], config["IPv6Network"], config["IPv6SubnetLen"]) == (True, "fc00:1::/48", 64)
    assert (config["IPv6SubnetMin"], config["IPv6SubnetMax"]) == ("fc00:1:0:1::", "fc00:1:0:ffff::")
    assert config["Network"] == "10.1.0.0/16" and "EnableIPv4" not in config
    assert r["again"]["changed"] is False and r["spelled_out"]["changed"] is False
    # going back to IPv4 only (no leases: no force needed), shown in check mode
    assert r["ipv4_only_check"]["changed"] is True
    assert json.loads(r["ipv4_only_check"]["diff"]["before"]) == want

    # 2: a dual-stack config written by hand with Go's spelling is left alone; then IPv6-only
    by_hand = ('{"enableipv4": true, "EnableIPv6": true, "network": "10.1.0.0/16", "IPv6SubnetLen": 64, '
               '"ipv6network": "fc00:1::/48", "Backend": {"Type": "vxlan", "VNI": 1}}')
    store.put(config_key(etcd_prefix), by_hand)
    only6 = {"enable_ipv4": False, "enable_ipv6": True, "ipv6_network": "fd00:42::/112", "ipv6_subnet_len": 120,
             "backend": {"type": "host-gw"}}
    play.add("by_hand", "flannel_network", DUAL)
    play.add("only6", "flannel_network", only6)
    play.add("only6_again", "flannel_network", only6)
    play.add("info", "flannel_lease_info", {})
    r = play.run()
    assert r["by_hand"]["changed"] is False and r["by_hand"]["stored"] == by_hand
    want6 = {"EnableIPv4": False, "EnableIPv6": True, "IPv6Network": "fd00:42::/112", "IPv6SubnetLen": 120,
             "Backend": {"Type": "host-gw"}}
    assert r["only6"]["changed"] is True and stored(store, etcd_prefix) == want6
    assert json.loads(r["only6"]["diff"]["before"]) == json.loads(by_hand)
    config = r["only6"]["config"]
    assert config["EnableIPv4"] is False and "Network" not in config and "SubnetLen" not in config
    assert (config["IPv6SubnetMin"], config["IPv6SubnetMax"]) == ("fd00:42::100", "fd00:42::ff00")
    assert r["only6_again"]["changed"] is False
    assert r["info"]["config"] == config and r["info"]["leases"] == []


def test_leases_ipv6(play, store, etcd_prefix, etcd_api):
    """Dual stack: info shows IPv6 subnets and PublicIPv6, the validator's verdicts cover IPv6, a dual-stack
    reservation, releases by IPv6 subnet; then an IPv6-only network and its 0.0.0.0-0&... leases."""
    store.put(config_key(etcd_prefix), json.dumps({"Network": "10.5.0.0/16", "EnableIPv6": True,
                                                   "IPv6Network": "fc00:5::/48", "Backend": {"Type": "vxlan"}}))
    v4, v6 = ipaddress.IPv4Network, ipaddress.IPv6Network

    def vxlan(ip, ip6, mac, mac6=None):
        return encode_lease(LeaseAttrs(ip, "vxlan", {"VtepMAC": mac, "VNI": 1}, ip6,
                                       {"VtepMAC": mac6, "VNI": 1} if mac6 else None), etcd_api)

    key3 = subnet_key(etcd_prefix, v4("10.5.3.0/24"), v6("fc00:5:0:3::/64"))
    value3 = vxlan("192.0.2.3", "2001:db8::3", "7a:fd:a9:52:84:03", "7a:fd:a9:52:86:03")
    assert store.create(key3, value3, ttl=600) is not None
    key4 = subnet_key(etcd_prefix, v4("10.5.4.0/24"), v6("fc00:5:0:4::/64"))
    value4 = vxlan("192.0.2.4", "2001:db8::4", "7a:fd:a9:52:84:04")
    assert store.create(key4, value4, ttl=600) is not None
    # refused by the validator: a link-local PublicIPv6, an IPv6 subnet outside IPv6Network, one of the wrong length,
    # an IPv6 subnet without PublicIPv6, and a younger lease on an IPv6 subnet that is taken
    refused = {
        subnet_key(etcd_prefix, v4("10.5.6.0/24"), v6("fc00:5:0:6::/64")):
            (vxlan("192.0.2.6", "fe80::6", "7a:fd:a9:52:84:06"), "its PublicIPv6 fe80::6 is a link-local address"),
        subnet_key(etcd_prefix, v4("10.5.7.0/24"), v6("fc00:6:0:7::/64")):
            (vxlan("192.0.2.7", "2001:db8::7", "7a:fd:a9:52:84:07"), "lies outside the IPv6 network fc00:5::/48"),
        subnet_key(etcd_prefix, v4("10.5.8.0/24"), v6("fc00:5:0:8::/80")):
            (vxlan("192.0.2.8", "2001:db8::8", "7a:fd:a9:52:84:08"), "is not a /64 (the configured IPv6SubnetLen)"),
        subnet_key(etcd_prefix, v4("10.5.9.0/24"), v6("fc00:5:0:9::/64")):
            (vxlan("192.0.2.9", None, "7a:fd:a9:52:84:09"), "it has an IPv6 subnet but no PublicIPv6"),
    }
    twin = subnet_key(etcd_prefix, v4("10.5.10.0/24"), v6("fc00:5:0:4::/64"))
    refused[twin] = (vxlan("192.0.2.10", "2001:db8::10", "7a:fd:a9:52:84:10"),
                     "it overlaps the older lease 10.5.4.0/24 fc00:5:0:4::/64 of 192.0.2.4")
    for key, (value, _why) in refused.items():
        store.put(key, value)

    logic = etcd_api == "v3"  # refusals and filters are decided on the listing: once is enough
    play.add("info_all", "flannel_lease_info", {})
    if logic:
        play.add("info_net6", "flannel_lease_info", {"ipv6_subnet": "fc00:5:0:4::/62"})
        play.add("info_ip6", "flannel_lease_info", {"public_ipv6": "2001:DB8::3"})
        play.add("info_both", "flannel_lease_info", {"subnet": "10.5.3.0/24", "ipv6_subnet": "fc00:5:0:4::/64"})
        refusals = {
            "no_subnet6": ({"subnet": "10.5.5.0/24", "public_ip": "192.0.2.5"},
                           "ipv6_subnet and public_ipv6 missing: the network (IPv6 fc00:5::/48) gives every lease"),
            "outside6": ({"subnet": "10.5.5.0/24", "ipv6_subnet": "fc00:5:0:0::/64", "public_ip": "192.0.2.5",
                          "public_ipv6": "2001:db8::5"},
                         "ipv6_subnet=fc00:5::/64: is not a subnet this network hands out (IPv6Network fc00:5::/48"),
            "link_local": ({"subnet": "10.5.5.0/24", "ipv6_subnet": "fc00:5:0:5::/64", "public_ip": "192.0.2.5",
                            "public_ipv6": "fe80::5"},
                           "refusing to reserve 10.5.5.0/24 fc00:5:0:5::/64 for 192.0.2.5/fe80::5: agents would skip"),
            "taken6": ({"subnet": "10.5.5.0/24", "ipv6_subnet": "fc00:5:0:4::/64", "public_ip": "192.0.2.5",
                        "public_ipv6": "2001:db8::5"},
                       "subnet fc00:5:0:4::/64 overlaps 10.5.4.0/24 fc00:5:0:4::/64 held by 192.0.2.4/2001:db8::4"),
            "wrong_release": ({"ipv6_subnet": "fc00:5:0:4::/64", "public_ipv6": "2001:db8::5", "state": "absent"},
                              "held by 192.0.2.4/2001:db8::4, not 2001:db8::5; nothing was released"),
        }
        for name, (args, _text) in refusals.items():
            play.add(name, "flannel_lease", args)
    reserve = {"subnet": "10.5.5.0/24", "ipv6_subnet": "fc00:5:0:5::/64", "public_ip": "192.0.2.5",
               "public_ipv6": "2001:db8::5"}
    play.add("reserve_check", "flannel_lease", reserve, check=True)
    play.add("reserve", "flannel_lease", reserve)
    play.add("reserve_again", "flannel_lease", reserve)
    play.add("own3", "flannel_lease", {"subnet": "10.5.3.0/24", "ipv6_subnet": "fc00:5:0:3::/64",
                                       "public_ip": "192.0.2.3", "public_ipv6": "2001:db8::3"})
    play.add("release4", "flannel_lease", {"subnet": "10.5.4.0/24", "ipv6_subnet": "fc00:5:0:4::/64",
                                           "state": "absent"})
    play.add("info_end", "flannel_lease_info", {})
    r = play.run()

    leases = r["info_all"]["leases"]
    assert [(item["subnet"], item["ipv6_subnet"]) for item in leases] == [
        ("10.5.3.0/24", "fc00:5:0:3::/64"), ("10.5.4.0/24", "fc00:5:0:4::/64")]
    first = leases[0]
    assert (first["public_ip"], first["public_ipv6"], first["key"], first["value"]) == (
        "192.0.2.3", "2001:db8::3", key3, value3)
    assert first["reservation"] is False and 0 < first["ttl"] <= 600
    skipped = {s["key"]: s["reason"] for s in r["info_all"]["skipped"]}
    assert sorted(skipped) == sorted(refused)
    for key, (_value, why) in refused.items():
        assert why in skipped[key], (key, skipped[key])
    assert r["info_all"]["config"]["IPv6Network"] == "fc00:5::/48"
    if logic:
        assert [item["ipv6_subnet"] for item in r["info_net6"]["leases"]] == ["fc00:5:0:4::/64"]
        assert [item["subnet"] for item in r["info_ip6"]["leases"]] == ["10.5.3.0/24"]
        assert r["info_both"]["leases"] == []
        for name, (_args, text) in refusals.items():
            assert r[name]["failed"] is True and text in r[name]["msg"], (name, r[name]["msg"])
            assert "\n" not in r[name]["msg"]

    key5 = subnet_key(etcd_prefix, v4("10.5.5.0/24"), v6("fc00:5:0:5::/64"))
    assert key5.endswith("/subnets/10.5.5.0-24&fc00:5:0:5::-64")
    assert r["reserve_check"]["changed"] is True and r["reserve_check"]["diff"]["before"] == {}
    assert r["reserve"]["changed"] is True and r["reserve_again"]["changed"] is False
    got = r["reserve"]["lease"]
    assert (got["subnet"], got["ipv6_subnet"], got["public_ip"], got["public_ipv6"], got["key"]) == (
        "10.5.5.0/24", "fc00:5:0:5::/64", "192.0.2.5", "2001:db8::5", key5)
    assert got["reservation"] is True and got["ttl"] is None
    kv5 = store.get(key5)
    assert not kv5.has_ttl and kv5.value == encode_lease(LeaseAttrs("192.0.2.5", public_ipv6="2001:db8::5"), etcd_api)
    assert json.loads(kv5.value)["PublicIPv6"] == "2001:db8::5"
    assert r["own3"]["changed"] is True and r["own3"]["diff"]["after"][key3] == {"value": value3, "reservation": True}
    assert not store.get(key3).has_ttl
    assert r["release4"]["changed"] is True and store.get(key4) is None
    assert [item["key"] for item in r["release4"]["released"]] == [key4]
    # with 10.5.4.0's lease gone, the twin (a key without TTL) no longer overlaps anything
    end = {item["key"]: item["reservation"] for item in r["info_end"]["leases"]}
    assert end == {key3: True, key5: True, twin: True}

    # IPv6-only: leases keyed 0.0.0.0-0&<ip6>-<len>, addressed by ipv6_subnet and public_ipv6 alone
    for key in [key3, key5, *refused]:
        store.delete(key)
    store.put(config_key(etcd_prefix), json.dumps({"EnableIPv4": False, "EnableIPv6": True,
                                                   "IPv6Network": "fc00:5::/48", "Backend": {"Type": "host-gw"}}))
    key7 = subnet_key(etcd_prefix, None, v6("fc00:5:0:7::/64"))
    value7 = encode_lease(LeaseAttrs(None, "host-gw", public_ipv6="2001:db8::7"), etcd_api)
    assert store.create(key7, value7, ttl=600) is not None
    stray = subnet_key(etcd_prefix, v4("10.5.1.0/24"))  # an IPv4 lease left in an IPv6-only network
    store.put(stray, encode_lease(LeaseAttrs("192.0.2.1", "host-gw"), etcd_api))
    only6 = {"ipv6_subnet": "fc00:5:0:8::/64", "public_ipv6": "2001:db8::8"}
    play.add("info6", "flannel_lease_info", {})
    play.add("v4_in_v6", "flannel_lease", dict(only6, subnet="10.5.8.0/24", public_ip="192.0.2.8"))
    play.add("reserve6", "flannel_lease", only6)
    play.add("reserve6_again", "flannel_lease", only6)
    play.add("release7", "flannel_lease", {"ipv6_subnet": "fc00:5:0:7::/64", "state": "absent"})
    play.add("release8_check", "flannel_lease", {"public_ipv6": "2001:db8::8", "state": "absent"}, check=True)
    play.add("info6_end", "flannel_lease_info", {})
    r = play.run()
    assert key7.endswith("/subnets/0.0.0.0-0&fc00:5:0:7::-64")
    [item] = r["info6"]["leases"]
    assert (item["subnet"], item["ipv6_subnet"], item["public_ip"], item["public_ipv6"], item["key"]) == (
        None, "fc00:5:0:7::/64", None, "2001:db8::7", key7)
    assert {s["key"]: s["reason"] for s in r["info6"]["skipped"]} == {
        stray: "it has no IPv6 subnet and this network is IPv6-only"}
    assert r["v4_in_v6"]["failed"] is True
    assert r["v4_in_v6"]["msg"].startswith("subnet: the network config has no IPv4 (EnableIPv4 is false)")
    key8 = subnet_key(etcd_prefix, None, v6("fc00:5:0:8::/64"))
    assert r["reserve6"]["changed"] is True and r["reserve6"]["lease"]["key"] == key8
    assert r["reserve6"]["lease"]["subnet"] is None and r["reserve6_again"]["changed"] is False
    assert json.loads(store.get(key8).value)["PublicIP"] == "0.0.0.0" and not store.get(key8).has_ttl
    assert r["release7"]["changed"] is True and store.get(key7) is None
    assert r["release8_check"]["changed"] is True
    assert [item["key"] for item in r["release8_check"]["released"]] == [key8]
    assert [item["key"] for item in r["info6_end"]["leases"]] == [key8]


def test_adhoc(collections_path, tmp_path, etcd_server, etcd_prefix):
    """`ansible -m` works too (argument errors are covered by tests/unit/plugins)."""
    (tmp_path / "tmp").mkdir()
    base = {"endpoints": [etcd_server.url], "prefix": etcd_prefix}
    proc = adhoc(collections_path, tmp_path, "netfabric.flannel.flannel_network",
                 dict(base, network="10.30.0.0/16", backend={"type": "host-gw"}))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "CHANGED" in proc.stdout and '"SubnetMin": "10.30.1.0"' in proc.stdout


class TlsEtcdServer(EtcdServer):
    """The same real etcd, with client TLS: https on the client port, client certificates required."""

    def __init__(self, pki: Path) -> None:
        self.pki = pki
        super().__init__(extra_args=[
            "--cert-file", str(pki / "server.crt"), "--key-file", str(pki / "server.key"),
            "--trusted-ca-file", str(pki / "ca.crt"), "--client-cert-auth",
        ])

    @property
    def url(self) -> str:
        return "https://%s:%d" % (self.host, self.port)

    def healthy(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        context.load_cert_chain(str(self.pki / "client.crt"), str(self.pki / "client.key"))
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=1, context=context) as resp:
                return resp.status == 200
        except Exception:
            return False


def make_pki(pki: Path) -> None:
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate (openssl)."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=str(pki), check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt")
    # etcd's v3 JSON gateway dials etcd itself with the server certificate: it needs clientAuth too
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth"),
                      ("client", "extendedKeyUsage=clientAuth")):
        (pki / (name + ".ext")).write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=" + name, "-keyout", name + ".key",
                "-out", name + ".csr")
        openssl("x509", "-req", "-in", name + ".csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", name + ".ext", "-out", name + ".crt")


def test_tls_options_reach_etcd(collections_path, tmp_path):
    """ca_cert/client_cert/client_key go through to a real etcd that demands client certificates."""
    pki = tmp_path / "pki"
    pki.mkdir()
    (tmp_path / "tmp").mkdir()
    make_pki(pki)
    with TlsEtcdServer(pki) as server:
        tls = {"ca_cert": str(pki / "ca.crt"), "client_cert": str(pki / "client.crt"),
               "client_key": str(pki / "client.key")}
        play = Play(collections_path, tmp_path, {"endpoints": [server.url], "timeout": 3})
        for api in ("v2", "v3"):
            prefix = "/tls-%s/coreos.com/network" % api
            play.add("write_" + api, "flannel_network", dict(tls, api=api, prefix=prefix, network="10.44.0.0/16"))
            play.add("no_client_cert_" + api, "flannel_network",
                     {"api": api, "prefix": prefix, "network": "10.45.0.0/16", "ca_cert": tls["ca_cert"]})
            play.add("info_" + api, "flannel_lease_info", dict(tls, api=api, prefix=prefix))
        r = play.run()
        for api in ("v2", "v3"):
            assert r["write_" + api]["changed"] is True, r["write_" + api]["msg"]
            assert r["info_" + api]["config"]["Network"] == "10.44.0.0/16"
            failed = r["no_client_cert_" + api]
            assert failed["failed"] is True and "\n" not in failed["msg"], failed
            store = connect([server.url], api=api, **tls)
            assert json.loads(store.get("/tls-%s/coreos.com/network/config" % api).value)["Network"] == "10.44.0.0/16"


def test_network_psk_rotation_shows_no_secret(play, store, etcd_prefix):
    """The old PSK is no module parameter of the run that replaces it, so Ansible would not mask it: the
    module hides it itself in previous, stored and the diff (catalogue no_log). A hand-written document
    that is not JSON but names the PSK option is hidden whole."""
    old, new = "b2xkb2xkb2xkb2xkb2xkb2xkb2xkb2xkb2xkb2xkb2w=", "bmV3bmV3bmV3bmV3bmV3bmV3bmV3bmV3bmV3bmV3bmU="
    base = {"network": "10.31.0.0/16"}
    play.add("first", "flannel_network", dict(base, backend={"type": "wireguard", "psk": old}))
    r = play.run()
    assert r["first"]["changed"] is True, r["first"]
    assert stored(store, etcd_prefix)["Backend"]["PSK"] == old
    play.add("rotate", "flannel_network", dict(base, backend={"type": "wireguard", "psk": new}))
    r = play.run()
    assert r["rotate"]["changed"] is True, r["rotate"]
    assert stored(store, etcd_prefix)["Backend"]["PSK"] == new
    text = json.dumps(r) + play.last_output
    assert old not in text and new not in text
    assert json.loads(r["rotate"]["previous"])["Backend"]["PSK"] == "(hidden)"
    assert "(hidden)" in r["rotate"]["diff"]["before"]
    store.put(config_key(etcd_prefix), '{"Network": "10.31.0.0/16", "Backend": {"Type": "wireguard", "PSK": "%s"' % old)
    play.add("broken", "flannel_network", dict(base, backend={"type": "wireguard", "psk": new}))
    r = play.run()
    assert r["broken"]["changed"] is True, r["broken"]
    assert old not in json.dumps(r) + play.last_output
