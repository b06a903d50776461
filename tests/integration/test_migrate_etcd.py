"""flannel_migrate for real (ansible-playbook, localhost) against a real etcd with the v2 API on, then off.

What the module wrote is read back through the facade, on both APIs.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import time
from pathlib import Path

import pytest

from plugins.module_utils.etcdstore import connect
from plugins.module_utils.leases import config_key, subnet_key
from testbed.etcdserver import EtcdServer, free_port
from tests.ansible_runner import Play, collection_root

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

PREFIX = "/atomic.io/network"
CONFIG = '{"Network": "10.100.0.0/16", "SubnetLen": 25, "SubnetMin": "10.100.0.0", "SubnetMax": "10.100.1.0", ' \
         '"Backend": {"Type": "vxlan"}}'
# Go flanneld v0.11's lease value, byte for byte, and an udp one
VXLAN = '{"PublicIP":"192.0.2.1","BackendType":"vxlan","BackendData":{"VtepMAC":"7a:fd:a9:52:84:87"}}'
UDP = '{"PublicIP":"192.0.2.2"}'
RESERVED = '{"PublicIP":"192.0.2.3","BackendType":"vxlan","BackendData":{"VtepMAC":"7a:fd:a9:52:84:89"}}'


@pytest.fixture
def server():
    """An etcd of its own: the test restarts it with the v2 API off."""
    etcd = EtcdServer(enable_v2=True).start()
    yield etcd
    etcd.destroy()


@pytest.fixture
def play(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Play:
    (tmp_path / "tmp").mkdir()
    return Play(collection_root(tmp_path_factory.mktemp("collections")), tmp_path, {})


def args(server, **extra):
    out = {"endpoints": [server.url], "prefix": PREFIX, "api": "v3", "timeout": 3}
    out.update(extra)
    return out


def key(name):
    return "%s/subnets/%s" % (PREFIX, name)


def seed_v2(v2):
    """The classic hand-made setup: etcdctl mk of the config, three leases as Go flanneld writes them, and a
    key under subnets/ that is no lease."""
    v2.put(config_key(PREFIX), CONFIG)
    assert v2.create(key("10.100.0.0-25"), VXLAN, ttl=86400) is not None
    assert v2.create(key("10.100.0.128-25"), UDP, ttl=600) is not None
    assert v2.create(key("10.100.1.0-25"), RESERVED) is not None  # a reservation: no TTL
    v2.put(key("10.100.1.300-25"), UDP)


def test_copy_check_diff_idempotent_remove_and_v2_off(play, server):
    v2 = connect([server.url], api="v2")
    v3 = connect([server.url], api="v3")
    seed_v2(v2)

    # 1: check mode with diff writes nothing, and says what it would copy
    play.add("check", "flannel_migrate", args(server), check=True)
    r = play.run()
    check = r["check"]
    assert check["changed"] is True and not check.get("failed"), check
    assert check["v2_served"] is True and check["endpoints"] == [{"url": server.url, "v2": True}]
    assert check["config"] == "copied"
    assert [c["key"] for c in check["copied"]] == [key("10.100.0.0-25"), key("10.100.0.128-25"), key("10.100.1.0-25")]
    assert [s["key"] for s in check["skipped"]] == [key("10.100.1.300-25")]
    assert key("10.100.0.0-25") + " = " + VXLAN in check["diff"]["after"]
    assert config_key(PREFIX) + " = " + CONFIG in check["diff"]["after"]
    assert v3.list(PREFIX + "/")[0] == []

    # 2: the copy: every lease with its value and the time it has left, the reservation without TTL, the config
    started = time.time()
    play.add("copy", "flannel_migrate", args(server))
    play.add("again", "flannel_migrate", args(server))
    r = play.run()
    copy, again = r["copy"], r["again"]
    assert copy["changed"] is True, copy
    by_key = {c["key"]: c for c in copy["copied"]}
    assert by_key[key("10.100.1.0-25")]["reservation"] is True and by_key[key("10.100.1.0-25")]["ttl"] is None
    assert by_key[key("10.100.0.0-25")]["subnet"] == "10.100.0.0/25"
    assert by_key[key("10.100.0.0-25")]["public_ip"] == "192.0.2.1"
    assert v3.get(config_key(PREFIX)).value == CONFIG
    stored = {kv.key: kv for kv in v3.list(PREFIX + "/subnets/")[0]}
    assert sorted(stored) == sorted(by_key)
    for name, value in ((key("10.100.0.0-25"), VXLAN), (key("10.100.0.128-25"), UDP), (key("10.100.1.0-25"), RESERVED)):
        assert stored[name].value == value
    assert not stored[key("10.100.1.0-25")].has_ttl
    for name in (key("10.100.0.0-25"), key("10.100.0.128-25")):
        left2 = v2.remaining_ttl(v2.get(name))
        left3 = v3.remaining_ttl(stored[name])
        elapsed = time.time() - started
        assert stored[name].has_ttl
        # the v3 lease got the v2 key's remaining time (not a fresh 24 h): within the seconds the run took
        assert left3 <= left2 + 2 and left3 >= left2 - elapsed - 2, (name, left2, left3)
    assert 500 < v3.remaining_ttl(stored[key("10.100.0.128-25")]) <= 600
    # each lease has a v3 lease of its own
    assert len({stored[key("10.100.0.0-25")].lease_id, stored[key("10.100.0.128-25")].lease_id}) == 2
    # the second run: nothing to copy
    assert again["changed"] is False, again
    assert again["config"] == "same" and again["copied"] == []
    assert sorted(again["unchanged"]) == sorted(by_key)

    # 3: an agent moved to v3 rewrote its lease (v3 shape, a new TTL): left alone, still changed=0
    mine = v3.get(key("10.100.0.0-25"))
    newer = '{"PublicIP":"192.0.2.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,' \
            '"VtepMAC":"7a:fd:a9:52:84:87"}}'
    assert v3.update(mine, newer, ttl=86400) is not None
    play.add("agent_moved", "flannel_migrate", args(server))
    r = play.run()
    assert r["agent_moved"]["changed"] is False
    assert r["agent_moved"]["newer_in_v3"] == [key("10.100.0.0-25")]
    assert v3.get(key("10.100.0.0-25")).value == newer

    # 4: a node that joined on v2 since is copied on the next run, the rest stays
    assert v2.create(key("10.100.1.128-25"), '{"PublicIP":"192.0.2.4"}', ttl=86400) is not None
    play.add("late", "flannel_migrate", args(server))
    r = play.run()
    assert r["late"]["changed"] is True
    assert [c["key"] for c in r["late"]["copied"]] == [key("10.100.1.128-25")]

    # 5: removing the v2 copies: check mode keeps them; then every key v3 holds goes from v2, the config last;
    #    a v2 lease v3 does not hold stays
    assert v2.create(key("10.100.2.0-25"), '{"PublicIP":"192.0.2.5"}', ttl=86400) is not None
    play.add("remove_check", "flannel_migrate", args(server, state="v2_removed"), check=True)
    r = play.run()
    assert r["remove_check"]["changed"] is True
    assert v2.get(config_key(PREFIX)) is not None and len(v2.list(PREFIX + "/subnets/")[0]) == 6
    play.add("remove", "flannel_migrate", args(server, state="v2_removed"))
    play.add("remove_again", "flannel_migrate", args(server, state="v2_removed"))
    r = play.run()
    remove = r["remove"]
    assert remove["changed"] is True and remove["removed"][-1] == config_key(PREFIX), remove
    assert sorted(remove["removed"][:-1]) == sorted([key("10.100.0.0-25"), key("10.100.0.128-25"),
                                                     key("10.100.1.0-25"), key("10.100.1.128-25")])
    assert [k["key"] for k in remove["kept_in_v2"]] == [key("10.100.1.300-25"), key("10.100.2.0-25")]
    assert v2.get(config_key(PREFIX)) is None
    assert sorted(kv.key for kv in v2.list(PREFIX + "/subnets/")[0]) == [key("10.100.1.300-25"),
                                                                         key("10.100.2.0-25")]
    assert len(v3.list(PREFIX + "/subnets/")[0]) == 4 and v3.get(config_key(PREFIX)).value == CONFIG
    assert r["remove_again"]["changed"] is False and r["remove_again"]["removed"] == []

    # 6: the v2 API off: a second run of the migration finds nothing to do
    v2.close()
    server.stop()
    server.enable_v2 = False
    server.start()
    play.add("v2_off", "flannel_migrate", args(server))
    play.add("v2_off_remove", "flannel_migrate", args(server, state="v2_removed"))
    play.add("v2_off_other_prefix", "flannel_migrate", args(server, prefix="/nothing/here"))
    r = play.run()
    assert r["v2_off"]["changed"] is False and r["v2_off"]["v2_served"] is False, r["v2_off"]
    assert r["v2_off"]["config"] == "only_v3" and r["v2_off"]["endpoints"] == [{"url": server.url, "v2": False}]
    assert r["v2_off_remove"]["changed"] is False
    assert r["v2_off_other_prefix"]["failed"] is True
    assert r["v2_off_other_prefix"]["msg"].startswith("no endpoint serves the v2 API and v3 holds no network config "
                                                      "at /nothing/here/config")


def test_refusals_write_nothing(play, server):
    v2 = connect([server.url], api="v2")
    v3 = connect([server.url], api="v3")
    seed_v2(v2)
    # another node holds 10.100.0.128/25 in v3
    assert v3.create(key("10.100.0.128-25"), '{"PublicIP":"192.0.2.9"}', ttl=600) is not None
    play.add("other_node", "flannel_migrate", args(server))
    play.add("dead_member", "flannel_migrate",
             args(server, endpoints=[server.url, "http://127.0.0.1:%d" % free_port()], timeout=1))
    play.add("no_config", "flannel_migrate", args(server, prefix="/nothing/here"))
    play.add("bad_state", "flannel_migrate", args(server, state="moved"))
    r = play.run()
    assert r["other_node"]["failed"] is True
    msg = r["other_node"]["msg"]
    assert msg.startswith("refusing to copy the leases to v3: %s belongs to 192.0.2.2 in v2 but to 192.0.2.9 in v3"
                          % key("10.100.0.128-25")), msg
    assert "nothing was copied" in msg and "\n" not in msg
    assert [kv.key for kv in v3.list(PREFIX + "/")[0]] == [key("10.100.0.128-25")]
    assert r["dead_member"]["failed"] is True
    assert "does not answer" in r["dead_member"]["msg"] and "every member must be up" in r["dead_member"]["msg"]
    assert r["no_config"]["failed"] is True
    assert r["no_config"]["msg"].startswith("there is no network config at /nothing/here/config in v2 nor in v3")
    assert r["bad_state"]["failed"] is True

    # a lease of the same node under another key in v3, and one overlapping a v2 lease
    v3.delete(key("10.100.0.128-25"))
    assert v3.create(key("10.100.2.0-25"), '{"PublicIP":"192.0.2.1"}', ttl=600) is not None
    play.add("moved_node", "flannel_migrate", args(server))
    r = play.run()
    assert r["moved_node"]["failed"] is True
    assert "192.0.2.1 holds %s in v2 but %s in v3" % (key("10.100.0.0-25"), key("10.100.2.0-25")) \
        in r["moved_node"]["msg"]
    v3.delete(key("10.100.2.0-25"))
    assert v3.create(key("10.100.0.0-24"), '{"PublicIP":"192.0.2.7"}', ttl=600) is not None
    play.add("overlap", "flannel_migrate", args(server))
    r = play.run()
    assert r["overlap"]["failed"] is True
    assert "v2's %s (192.0.2.1) overlaps v3's %s (192.0.2.7)" % (key("10.100.0.0-25"), key("10.100.0.0-24")) \
        in r["overlap"]["msg"]
    assert "(and 1 more)" in r["overlap"]["msg"]  # 10.100.0.128/25 overlaps it too
    v3.delete(key("10.100.0.0-24"))

    # v3 holds a different network config: refused, nothing copied; v2_removed refuses too
    v3.put(config_key(PREFIX), CONFIG.replace('"SubnetMax": "10.100.1.0"', '"SubnetMax": "10.100.1.128"'))
    play.add("other_config", "flannel_migrate", args(server))
    play.add("other_config_remove", "flannel_migrate", args(server, state="v2_removed"))
    r = play.run()
    assert r["other_config"]["failed"] is True
    assert r["other_config"]["msg"].startswith(
        "v3 already holds a different network config at %s/config (v3 -> v2: SubnetMax 10.100.1.128 -> 10.100.1.0)"
        % PREFIX), r["other_config"]["msg"]
    assert v3.list(PREFIX + "/subnets/")[0] == []
    assert r["other_config_remove"]["failed"] is True and "nothing was removed" in r["other_config_remove"]["msg"]
    assert v2.get(config_key(PREFIX)) is not None

    # the same config spelled differently (key order, case, a default written out) is the same config
    v3.put(config_key(PREFIX), '{"backend": {"type": "vxlan", "VNI": 1}, "network": "10.100.0.0/16", '
                               '"SubnetLen": 25, "SubnetMin": "10.100.0.0", "SubnetMax": "10.100.1.0"}')
    play.add("same_meaning", "flannel_migrate", args(server))
    r = play.run()
    assert r["same_meaning"]["changed"] is True and r["same_meaning"]["config"] == "same", r["same_meaning"]
    assert len(r["same_meaning"]["copied"]) == 3


def test_no_secret_in_diff_or_error(play, server):
    """A wireguard PSK of the network config stays out of the diff and out of the refusal line."""
    v2 = connect([server.url], api="v2")
    v3 = connect([server.url], api="v3")
    old, new = (base64.b64encode(os.urandom(32)).decode() for _count in range(2))
    doc = {"Network": "10.100.0.0/16", "Backend": {"Type": "wireguard", "PSK": old}}
    v2.put(config_key(PREFIX), json.dumps(doc))
    assert v2.create(subnet_key(PREFIX, ipaddress.ip_network("10.100.5.0/24")),
                     '{"PublicIP":"192.0.2.1","BackendType":"wireguard","BackendData":{"PublicKey":"%s"}}'
                     % base64.b64encode(os.urandom(32)).decode(), ttl=86400) is not None
    play.add("check", "flannel_migrate", args(server), check=True)
    r = play.run()
    assert r["check"]["changed"] is True
    assert old not in json.dumps(r) and old not in play.last_output
    assert '"PSK": "(hidden)"' in r["check"]["diff"]["after"]

    v3.put(config_key(PREFIX), json.dumps({"Network": "10.100.0.0/16", "Backend": {"Type": "wireguard", "PSK": new}}))
    play.add("refused", "flannel_migrate", args(server))
    r = play.run()
    assert r["refused"]["failed"] is True
    assert "Backend.PSK (hidden) -> (hidden)" in r["refused"]["msg"], r["refused"]["msg"]
    assert old not in play.last_output and new not in play.last_output and new not in json.dumps(r)
