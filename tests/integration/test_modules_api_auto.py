"""``api: auto`` of the three modules against a real etcd (Debian etcd-server, v2 enabled): the API is the one
where ``<prefix>/config`` is.  Only under v2: v2; only under v3: v3; under both and the same: v3; under both
and different: every module fails with one line naming both, and nothing is written; under neither: v3, or v2
when etcd serves no v3 gateway.  What the modules wrote is checked by reading each API directly."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Dict, Optional

import pytest

from plugins.module_utils.etcdstore import connect
from plugins.module_utils.leases import LeaseAttrs, config_key, encode_lease, subnet_key
from testbed.etcdserver import EtcdServer
from tests.ansible_runner import Play

# the session fixture of test_modules.py, reused (one collections link per worker)
from tests.integration.test_modules import collections_path  # noqa: F401  # pylint: disable=unused-import

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

NET = {"Network": "10.61.0.0/16", "Backend": {"Type": "vxlan"}}
# the same document as etcdctl or another tool may have written it: other key order and spacing
NET_OTHER_SPELLING = '{ "Backend": {"Type": "vxlan"},\n  "Network": "10.61.0.0/16" }'
PSK = "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2U="
WIREGUARD = {"Network": "10.62.0.0/16", "Backend": {"Type": "wireguard", "PSK": PSK}}
MODULE_ARGS = {"network": "10.61.0.0/16", "backend": {"type": "vxlan"}}
SUBNET = ipaddress.IPv4Network("10.61.5.0/24")
LEASE_ARGS = {"subnet": str(SUBNET), "public_ip": "192.0.2.21"}

# case -> (v2 text, v3 text) stored before the modules run (None: no key); the server they run against
CASES: Dict[str, tuple] = {
    "only_v2": (json.dumps(NET), None, "default"),
    "only_v3": (None, json.dumps(NET), "default"),
    "both_same": (json.dumps(NET), NET_OTHER_SPELLING, "default"),
    "neither": (None, None, "default"),
    "neither_no_v3_gateway": (None, None, "no_v3_gateway"),
    "neither_no_v2": (None, None, "no_v2"),
}
EXPECTED = {"only_v2": "v2", "only_v3": "v3", "both_same": "v3", "neither": "v3", "neither_no_v3_gateway": "v2",
            "neither_no_v2": "v3"}


def read(url: str, api: str, key: str) -> Optional[str]:
    store = connect([url], api=api)
    try:
        kv = store.get(key)
        return None if kv is None else kv.value
    finally:
        store.close()


def server_for(kind: str, shared: EtcdServer) -> Optional[EtcdServer]:
    """The shared session etcd, or a private one: no v3 JSON gateway (only the v2 API answers), or no v2."""
    if kind == "default":
        return None
    if kind == "no_v3_gateway":
        return EtcdServer(extra_args=["--enable-grpc-gateway=false"]).start()
    return EtcdServer(enable_v2=False).start()


@pytest.mark.parametrize("case", sorted(CASES))
def test_auto_uses_the_api_that_holds_the_config(case: str, collections_path: Path,  # noqa: F811
                                                 tmp_path: Path, etcd_server: EtcdServer, etcd_prefix: str) -> None:
    v2_text, v3_text, kind = CASES[case]
    own = server_for(kind, etcd_server)
    server = own or etcd_server
    try:
        key = config_key(etcd_prefix)
        apis = ("v3",) if kind == "no_v2" else ("v2",) if kind == "no_v3_gateway" else ("v2", "v3")
        for api, text in (("v2", v2_text), ("v3", v3_text)):
            if text is not None:
                connect([server.url], api=api).put(key, text)
        (tmp_path / "tmp").mkdir()
        play = Play(collections_path, tmp_path,
                    {"endpoints": [server.url], "prefix": etcd_prefix, "api": "auto", "timeout": 3})
        play.add("info", "flannel_lease_info", {})
        play.add("network", "flannel_network", MODULE_ARGS)
        play.add("lease", "flannel_lease", LEASE_ARGS)
        play.add("info_after", "flannel_lease_info", {"public_ip": LEASE_ARGS["public_ip"]})
        r = play.run()

        want = EXPECTED[case]
        for name in ("info", "network", "lease", "info_after"):
            assert not r[name].get("failed"), (name, r[name].get("msg"))
            assert r[name]["api"] == want, (name, r[name]["api"])
        # a config that was there (in whatever spelling) is the same network: nothing rewritten
        assert r["network"]["changed"] is (v2_text is None and v3_text is None)
        assert r["info"]["config"].get("Network") == (None if r["network"]["changed"] else "10.61.0.0/16")
        assert r["lease"]["changed"] is True and r["lease"]["lease"]["key"] == subnet_key(etcd_prefix, SUBNET)
        assert [item["subnet"] for item in r["info_after"]["leases"]] == [str(SUBNET)]

        # etcd itself: the chosen API holds the config and the reservation; the other API was not written
        lease_key = subnet_key(etcd_prefix, SUBNET)
        assert json.loads(read(server.url, want, key)) == NET
        assert read(server.url, want, lease_key) == encode_lease(LeaseAttrs("192.0.2.21"), want)
        for other in apis:
            if other != want:
                before = v2_text if other == "v2" else v3_text
                assert read(server.url, other, key) == before
                assert read(server.url, other, lease_key) is None
    finally:
        if own is not None:
            own.destroy()


def test_auto_refuses_to_guess_when_the_apis_disagree(collections_path: Path, tmp_path: Path,  # noqa: F811
                                                      etcd_server: EtcdServer, etcd_prefix: str) -> None:
    key = config_key(etcd_prefix)
    v2_text, v3_text = json.dumps(WIREGUARD), json.dumps(NET)
    connect([etcd_server.url], api="v2").put(key, v2_text)
    connect([etcd_server.url], api="v3").put(key, v3_text)
    (tmp_path / "tmp").mkdir()
    play = Play(collections_path, tmp_path,
                {"endpoints": [etcd_server.url], "prefix": etcd_prefix, "api": "auto", "timeout": 3})
    play.add("info", "flannel_lease_info", {})
    play.add("network", "flannel_network", MODULE_ARGS)
    play.add("network_check", "flannel_network", MODULE_ARGS, check=True)
    play.add("lease", "flannel_lease", LEASE_ARGS)
    play.add("release", "flannel_lease", {"public_ip": "192.0.2.21", "state": "absent"})
    # the way out the message names: say which API holds the network
    play.add("info_v2", "flannel_lease_info", {"api": "v2"})
    play.add("network_v3", "flannel_network", dict(MODULE_ARGS, api="v3"))
    r = play.run()

    line = ("%s differs between the etcd v2 and v3 APIs (v2: " % key)
    for name in ("info", "network", "network_check", "lease", "release"):
        msg = r[name].get("msg", "")
        assert r[name].get("failed") is True, (name, r[name])
        assert msg.startswith(line) and "\n" not in msg, (name, msg)
        assert "10.62.0.0/16" in msg and "10.61.0.0/16" in msg, msg
        assert msg.endswith("pass api: v2 or api: v3 to say which one holds the network"), msg
        assert "(hidden)" in msg, msg
    # the wireguard PSK of the v2 document is in none of the failures and no output line
    failures = [r[name] for name in ("info", "network", "network_check", "lease", "release")]
    assert PSK not in json.dumps(failures) + play.last_output
    # nothing was written under either API
    assert read(etcd_server.url, "v2", key) == v2_text and read(etcd_server.url, "v3", key) == v3_text
    for api in ("v2", "v3"):
        assert read(etcd_server.url, api, subnet_key(etcd_prefix, SUBNET)) is None
    assert r["info_v2"]["api"] == "v2" and r["info_v2"]["config"]["Network"] == "10.62.0.0/16"
    # the config the info module returns hides the PSK too
    assert r["info_v2"]["config"]["Backend"]["PSK"] == "(hidden)" and PSK not in json.dumps(r["info_v2"])
    assert r["network_v3"]["api"] == "v3" and r["network_v3"]["changed"] is False
