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
from tests.ansible_runner import Play, adhoc, collection_root
from tests.etcdserver import EtcdServer, free_port

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
        assert r["info_auto"]["api"] == "v3"

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
