"""Secrets never reach the agent's log (issue 18), checked on real agents at debug level (-v=1):

* a wireguard network whose ``PSK`` is set at start and rotated in etcd while the agents run (the
  config-change warning fires and names the option): neither key appears in any log line;
* etcd with authentication on: ``--etcd-password`` works and, right or wrong (then etcd's refusal is
  logged), never appears in the log; nor does a password in an ``--etcd-endpoints`` URL."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, List

import pytest

from pyflannel import etcdstore
from testbed.etcdserver import EtcdServer
from testbed.netns import Agent, Host, private_mount, put_config, sh, wait_peers
from tests.integration.test_agent import BIG

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
PSK = "q2Xo0rO6fP1cB3bq6mkH0wKdQw4kVmXhP3n3mF1sA2U="
PSK2 = "8CMfxUeyv5e7V2ZyG4i5tR0cZ5g0w1bJkmxX2kT0uH8="
PASSWORD = "pw-Qx7-not-for-logs"
WRONG = "pw-Zr4-wrong-and-secret"


def full_log(path: Any) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def wg_agent(host: Host, server: Any) -> Agent:
    return Agent(host, server.url, PREFIX, ["--etcd-api", "v3", "-v=1", "--wireguard-key-file",
                                            os.path.join(host.dir, "wgkey")],
                 env={"PYFLANNEL_CONFIG_POLL": "1"},
                 wrap=private_mount(os.path.join(host.dir, "wgrun"), "/run/wireguard"))


def wait_all(agents: List[Agent], text: str, timeout: float = 20.0) -> None:
    from testbed.netns import wait_for

    wait_for(lambda: all(text in full_log(a.log) for a in agents), timeout, 0.2, "%r in every log" % text)


def test_psk_set_and_rotated_is_never_logged(testbed: Any, bed_etcd: Any) -> None:
    for tool in ("wg", "wireguard-go", "unshare"):
        if not shutil.which(tool):
            pytest.fail("%s is missing: install wireguard-tools and wireguard-go (make deps)" % tool)
    bed = testbed(["A", "A"])
    server = bed_etcd(bed)
    config = {"Network": "10.100.0.0/16", "SubnetLen": 24, "Backend": {"Type": "wireguard", "PSK": PSK}}
    put_config(bed, server, PREFIX, config)
    agents = [wg_agent(h, server) for h in bed.hosts]
    for agent in agents:
        agent.start(wait=False)
    for agent in agents:
        agent.wait_ready(40)
    wait_peers(agents, 30)
    # the key is in use: every peer carries it (so the paths that handle it have run)
    for agent in agents:
        assert agent.proc is not None
        psks = sh("nsenter", "-t", str(agent.proc.pid), "-m", "-n", "wg", "show", "flannel-wg",
                  "preshared-keys").stdout.split()
        assert psks.count(PSK) == 1, psks
    wait_all(agents, '"PSK":"(hidden)"')  # the start-up config line, redacted
    # rotated in etcd while running: the agents say so (and keep the config they started with)
    config["Backend"]["PSK"] = PSK2
    put_config(bed, server, PREFIX, config)
    wait_all(agents, "Backend.PSK (hidden) -> (hidden)")
    # a config an agent cannot use, with the key in it, is reported without the key too
    config["Backend"]["PSK"] = PSK2[:-2] + "!="
    put_config(bed, server, PREFIX, config)
    wait_all(agents, "is not valid")
    for agent in agents:
        text = full_log(agent.log)
        assert agent.proc is not None and agent.proc.poll() is None, text[-3000:]
        changed = [line for line in text.splitlines() if "Backend.PSK (hidden) -> (hidden)" in line]
        assert len(changed) == 1 and changed[0].startswith("W"), changed
        for secret in (PSK, PSK2, PSK2[:-2]):
            assert secret not in text, "a PSK in %s's log:\n%s" % (agent.host.ns, text[-4000:])


def test_etcd_password_is_never_logged(agents: Any, tmp_path: Path) -> None:
    server = EtcdServer(enable_v2=False).start()
    try:
        cmd = ["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", server.url]
        sh(*cmd, "user", "add", "root", "--new-user-password=" + PASSWORD)
        sh(*cmd, "user", "grant-role", "root", "root")
        sh(*cmd, "auth", "enable")
        sh(*cmd, "--user", "root:" + PASSWORD, "put", PREFIX + "/config", BIG)
        good = agents("auth-ok", server.url, "v3", PREFIX, "127.0.0.181",
                      extra=["--etcd-username", "root", "--etcd-password", PASSWORD, "-v=1"])
        good.wait_subnet(20)
        bad = agents("auth-bad", server.url, "v3", PREFIX, "127.0.0.182",
                     extra=["--etcd-username", "root", "-v=1"], env={"FLANNELD_ETCD_PASSWORD": WRONG})
        bad.wait_log("check --etcd-username/--etcd-password", 20)  # refused: said, retried, never shown
        bad.stop()
        # an endpoint URL with the password in it: a usage error, the password masked
        url = server.url.replace("http://", "http://root:%s@" % PASSWORD) + "0000"
        usage = agents("auth-url", url, "v3", PREFIX, "127.0.0.183")
        assert usage.wait_exit(30) == 2
        assert good.stop() == 0
        for node in (good, bad, usage):
            text = node.log()
            assert PASSWORD not in text and WRONG not in text, text[-3000:]
        store = etcdstore.connect(server.url, api="v3", username="root", password=PASSWORD)
        kvs, _revision = store.list(PREFIX + "/subnets/")
        assert [json.loads(kv.value)["PublicIP"] for kv in kvs] == ["127.0.0.181"]
        store.close()
    finally:
        server.destroy()


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_a_login_works_while_etcd_has_auth_off(api: str) -> None:
    """A login configured before auth is switched on in etcd (or a --check run that adds one) must not
    stop anything: etcd without auth takes the requests without a token, as Go's client goes on."""
    server = EtcdServer(enable_v2=api == "v2").start()
    try:
        store = etcdstore.connect(server.url, api=api, username="flannel", password=PASSWORD)
        store.put(PREFIX + "/config", BIG)
        assert store.get(PREFIX + "/config").value == BIG
        store.close()
    finally:
        server.destroy()
