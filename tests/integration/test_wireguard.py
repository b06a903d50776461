"""The wireguard backend end to end: real flanneld agents in namespaces, a real etcd (v2 and v3),
real encrypted packets.  This kernel has no WireGuard, so every host runs wireguard-go; its UAPI
socket path (/run/wireguard/flannel-wg.sock) is the same in every network namespace, so each agent
runs in a mount namespace of its own with a per-host directory bind-mounted on /run/wireguard
(netns.private_mount), and is inspected with ``nsenter -t <agent pid> -m -n wg ...``."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import time
from typing import Any, Dict, List, Optional

import pytest

from testbed.netns import (
    REPO,
    Agent,
    BackendDriver,
    Host,
    TestBed,
    ping_all,
    private_mount,
    put_config,
    sh,
    wait_for,
    wait_peers,
)

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
NETWORK = "10.100.0.0/16"
PSK = "q2Xo0rO6fP1cB3bq6mkH0wKdQw4kVmXhP3n3mF1sA2U="
DEV = "flannel-wg"


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("wg", "wireguard-go", "tcpdump", "unshare", "nsenter"):
        if not shutil.which(tool):
            pytest.fail("%s is missing: install wireguard-tools, wireguard-go and tcpdump (make deps)" % tool)


def wrap(host: Host) -> List[str]:
    return private_mount(os.path.join(host.dir, "wgrun"), "/run/wireguard")


def wg_agent(host: Host, server: Any, api: str = "v3", prefix: str = PREFIX) -> Agent:
    return Agent(host, server.url, prefix, ["--etcd-api", api, "--wireguard-key-file", key_file(host)],
                 wrap=wrap(host))


def key_file(host: Host) -> str:
    return os.path.join(host.dir, "wgkey")


def put_config_v2(bed: TestBed, server: Any, prefix: str, config: Dict[str, Any]) -> None:
    """The config through the v2 API (a separate store from v3's in etcd 3.4), from the etcd namespace."""
    code = ("import sys; sys.path.insert(0, %r); from pyflannel import etcdstore; "
            "etcdstore.connect([%r], api='v2').put(%r, %r)"
            % (REPO, server.url, prefix + "/config", json.dumps(config)))
    sh("ip", "netns", "exec", bed.etcd_ns, os.path.join(REPO, ".venv", "bin", "python"), "-c", code, timeout=60)


def in_agent(agent: Agent, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A command in the agent's network and mount namespaces (its private /run/wireguard)."""
    assert agent.proc is not None
    return sh("nsenter", "-t", str(agent.proc.pid), "-m", "-n", *args, check=check)


def wg_dump(agent: Agent) -> Dict[str, List[str]]:
    rows = [line.split("\t") for line in in_agent(agent, "wg", "show", DEV, "dump").stdout.splitlines()]
    return {row[0]: row for row in rows[1:]}


def wireguard_go_pids(host: Host) -> List[int]:
    out = []
    for pid in sh("ip", "netns", "pids", host.ns).stdout.split():
        try:
            with open("/proc/%s/comm" % pid) as f:
                if f.read().strip() == "wireguard-go":
                    out.append(int(pid))
        except OSError:
            pass
    return out


def start(agents: List[Agent]) -> List[Agent]:
    for agent in agents:
        agent.start(wait=False)
    for agent in agents:
        agent.wait_ready(40)
    wait_peers(agents, 30)
    return agents


def ping_mesh(agents: List[Agent], count: int = 3) -> Dict[str, str]:
    """Every host pings every other host's bridge address from its own; returns the failures.
    Deadline 45 s: crossed first handshakes can leave one direction dead until tick() resets the peer
    (20 s without an answer, ticks every 5 s); ping stops at the count's replies."""
    return ping_all(agents, count, deadline=45, wait=False)


def diagnose(agent: Agent) -> str:
    """wg show, links and routes of an agent's host, for a failure message."""
    out = [agent.host.ns]
    if agent.proc is not None and agent.proc.poll() is None:
        out.append(in_agent(agent, "wg", "show", check=False).stdout)
    out.append(agent.host.run("ip", "-br", "link", check=False).stdout)
    out.append(agent.host.run("ip", "route", check=False).stdout)
    return "\n".join(out)


def assert_mesh(agents: List[Agent]) -> None:
    failed = ping_mesh(agents)
    assert not failed, "pings failed:\n%s\n%s\n%s" % (
        "\n".join("%s:\n%s" % kv for kv in failed.items()), "\n".join(diagnose(a) for a in agents),
        "\n".join(a.logtext()[-2500:] for a in agents))


def health(agent: Agent) -> Dict[str, Any]:
    out = agent.host.run("curl", "-sf", "-m", "3", "http://127.0.0.1:%d/healthz" % agent.healthz_port).stdout
    return json.loads(out)


@pytest.mark.parametrize("api", ["v2", "v3"])
def test_three_host_mesh(api: str, testbed: Any, bed_etcd: Any) -> None:
    """Two hosts on segment A, the third on B behind the router; v3 also with PSK and keepalive."""
    bed = testbed(["A", "A", "B"])
    server = bed_etcd(bed)
    backend: Dict[str, Any] = {"Type": "wireguard"}
    if api == "v3":
        backend.update(PSK=PSK, PersistentKeepaliveInterval=7)
    config = {"Network": NETWORK, "SubnetLen": 24, "Backend": backend}
    (put_config_v2 if api == "v2" else put_config)(bed, server, PREFIX, config)
    agents = start([wg_agent(h, server, api) for h in bed.hosts])
    assert_mesh(agents)

    keys = {}
    for agent in agents:
        with open(key_file(agent.host)) as f:
            private = f.read().strip()
        assert oct(os.stat(key_file(agent.host)).st_mode & 0o777) == oct(0o400)
        keys[agent.host.ns] = sh("wg", "pubkey", input=private + "\n").stdout.strip()
    for agent in agents:
        env = agent.subnet_env
        assert env["FLANNEL_MTU"] == "1420"
        subnet = ipaddress.IPv4Network(agent.subnet)
        link = agent.host.link(DEV)
        assert link is not None and link["mtu"] == 1420
        addrs = agent.host.ip_json("-4", "addr", "show", "dev", DEV)[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs] == [(str(subnet.network_address), 32)]
        ours = [r for r in agent.host.routes() if r.get("dev") == DEV]
        assert [(r["dst"], r.get("scope"), r.get("protocol")) for r in ours] == [(NETWORK, "link", "111")]
        dump = wg_dump(agent)
        others = [a for a in agents if a is not agent]
        assert sorted(dump) == sorted(keys[o.host.ns] for o in others)
        for other in others:
            row = dump[keys[other.host.ns]]
            assert row[2] == "%s:51820" % other.host.address and row[3] == other.subnet
            assert row[7] == ("7" if api == "v3" else "off")
            assert row[1] == (PSK if api == "v3" else "(none)")
        if api == "v3":  # PSK on every peer, as wg reports it
            psks = in_agent(agent, "wg", "show", DEV, "preshared-keys").stdout.split()
            assert psks.count(PSK) == 2 and len(psks) == 4
        status = health(agent)["backend"]
        assert status["backend"] == "wireguard" and status["implementation"] == "wireguard-go"
        assert status["peers"] == 2 and status["public_key"] == keys[agent.host.ns]
        assert "wireguard-go" in agent.logtext()
        assert in_agent(agent, "wg", "show", DEV, "listen-port").stdout.strip() == "51820"


def test_capture_shows_only_encrypted_udp(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": NETWORK, "Backend": {"Type": "wireguard"}})
    a1, a2 = start([wg_agent(h, server) for h in bed.hosts])
    assert bed.hosts[0].ping(a2.bridge_ip, a1.bridge_ip, count=2).returncode == 0  # handshake done
    pcap = os.path.join(bed.hosts[1].dir, "underlay.pcap")
    errlog = os.path.join(bed.hosts[1].dir, "tcpdump.err")
    with open(errlog, "wb") as err:
        dump = subprocess.Popen(bed.hosts[1].cmd("timeout", "20", "tcpdump", "-i", "eth0", "-nn", "-U",
                                                 "--immediate-mode", "-c", "20", "-w", pcap, "icmp or udp"),
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: "listening on" in open(errlog).read(), 10, what="tcpdump listening")
        # a payload pattern that would show in the capture if the inner packet crossed in plaintext
        ping = bed.hosts[0].run("ping", "-n", "-c", "10", "-i", "0.1", "-w", "10", "-p", "c0ffee42c0ffee42", "-I",
                                a1.bridge_ip, a2.bridge_ip, check=False, timeout=20)
        assert ping.returncode == 0, ping.stdout
        dump.wait(25)
    finally:
        if dump.poll() is None:
            dump.kill()
            dump.wait(5)
    with open(pcap, "rb") as f:
        raw = f.read()
    assert bytes.fromhex("c0ffee42c0ffee42c0ffee42") not in raw
    text = sh("tcpdump", "-nn", "-r", pcap).stdout
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) >= 20, text
    assert not [line for line in lines if "ICMP" in line], text
    assert all(" UDP" in line for line in lines), text
    assert all(("%s.51820 > %s.51820" % (bed.hosts[0].address, bed.hosts[1].address) in line)
               or ("%s.51820 > %s.51820" % (bed.hosts[1].address, bed.hosts[0].address) in line)
               for line in lines), text


def test_restart_keeps_key_device_and_wireguard_go(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": NETWORK, "Backend": {"Type": "wireguard", "PSK": PSK}})
    a1, a2 = start([wg_agent(h, server) for h in bed.hosts])
    assert_mesh([a1, a2])
    h1 = bed.hosts[0]
    with open(key_file(h1)) as f:
        key = f.read()
    ifindex = h1.link(DEV)["ifindex"]
    pids = wireguard_go_pids(h1)
    assert len(pids) == 1
    peers = wg_dump(a1)
    # traffic through the restart: a bounded ping from the other host the whole time
    flow = subprocess.Popen(bed.hosts[1].cmd("ping", "-n", "-c", "60", "-i", "0.1", "-w", "20", "-I", a2.bridge_ip,
                                             a1.bridge_ip), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        time.sleep(0.5)
        a1.kill()  # SIGKILL: no clean shutdown at all
        a1.start(wait=False)
        a1.wait_ready(40)
        out, _err = flow.communicate(timeout=40)
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait(5)
    assert flow.returncode == 0, out
    assert " 0% packet loss" in out, out  # no flap
    a1.host.set_bridge_address(a1.subnet_env["FLANNEL_SUBNET"])
    with open(key_file(h1)) as f:
        assert f.read() == key
    assert h1.link(DEV)["ifindex"] == ifindex
    assert wireguard_go_pids(h1) == pids
    assert sorted(wg_dump(a1)) == sorted(peers)
    assert "reusing the existing device" in a1.logtext()
    # a clean stop (SIGTERM) and start: the same again
    a1.stop()
    a1.start()
    assert h1.link(DEV)["ifindex"] == ifindex and wireguard_go_pids(h1) == pids
    wait_peers([a1, a2], 30)
    assert_mesh([a1, a2])


def stale(host: Host) -> Dict[str, Any]:
    routes = host.ip_json("-4", "route", "show", "table", "main")
    return {"links": [n for n in host.links() if n.startswith("flannel")],
            "protos": sorted({str(r.get("protocol")) for r in routes if str(r.get("protocol")) in ("109", "111")}),
            "wireguard-go": wireguard_go_pids(host)}


def test_switch_vxlan_wireguard_hostgw_leaves_nothing_stale(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A"])
    server = bed_etcd(bed)
    agents: List[Agent] = []
    for btype in ("vxlan", "wireguard", "host-gw"):
        for agent in agents:
            agent.stop()
        put_config(bed, server, PREFIX, {"Network": NETWORK, "Backend": {"Type": btype}})
        agents = start([wg_agent(h, server) for h in bed.hosts])
        assert_mesh(agents)
        for host in bed.hosts:
            left = stale(host)
            if btype == "vxlan":
                assert left == {"links": ["flannel.1"], "protos": ["109"], "wireguard-go": []}, left
            elif btype == "wireguard":
                assert left["links"] == [DEV] and left["protos"] == ["111"] and len(left["wireguard-go"]) == 1, left
            else:
                assert left == {"links": [], "protos": [], "wireguard-go": []}, left
    for agent in agents:
        agent.stop()


def driver(host: Host, backend: Dict[str, Any], subnet: str, others: List[Dict[str, str]],
           env: Optional[Dict[str, str]] = None) -> BackendDriver:
    return BackendDriver.up(host, NETWORK, backend, subnet, others,
                            env=dict({"WIREGUARD_KEY_FILE": key_file(host)}, **(env or {})), wrap=wrap(host))


def test_repairs_foreign_leases_and_key_file_errors(testbed: Any) -> None:
    bed = testbed(["A", "A"])
    h1, h2 = bed.hosts
    d2 = driver(h2, {"Type": "wireguard"}, "10.100.2.0/24", [])
    peer = {"subnet": "10.100.2.0/24", "value": d2.lease_value}
    vxlan = {"subnet": "10.100.9.0/24",
             "value": json.dumps({"PublicIP": "172.30.1.99", "BackendType": "vxlan",
                                  "BackendData": {"VtepMAC": "02:00:00:00:00:09"}})}
    d1 = driver(h1, {"Type": "wireguard"}, "10.100.1.0/24", [peer, vxlan])
    assert d2.call("add", subnet="10.100.1.0/24", value=d1.lease_value)["ok"]
    assert h1.ping("10.100.2.1", "10.100.1.1", count=2).returncode == 0
    ns1 = ["nsenter", "-t", str(d1.proc.pid), "-m", "-n"]
    key2 = json.loads(d2.lease_value)["BackendData"]["PublicKey"]
    assert sh(*ns1, "wg", "show", DEV, "peers").stdout.split() == [key2]  # the vxlan lease is ignored
    # the peer and the route go behind our back: tick() puts them back
    sh(*ns1, "wg", "set", DEV, "peer", key2, "remove")
    sh(*ns1, "ip", "route", "del", NETWORK, "dev", DEV)
    assert h1.ping("10.100.2.1", "10.100.1.1", count=1, deadline=2).returncode != 0
    assert d1.call("tick")["ok"]
    assert sh(*ns1, "wg", "show", DEV, "peers").stdout.split() == [key2]
    assert d1.call("status")["metrics"]["datapath_repairs_total"] == 2
    assert h1.ping("10.100.2.1", "10.100.1.1", count=2).returncode == 0
    # wireguard-go dies: the next tick starts a new one with the same key and peers
    for pid in wireguard_go_pids(h1):
        os.kill(pid, 15)
    wait_for(lambda: h1.link(DEV) is None, 10, what="flannel-wg gone with wireguard-go")
    assert d1.call("tick")["ok"]
    assert sh(*ns1, "wg", "show", DEV, "peers").stdout.split() == [key2]
    assert h1.ping("10.100.2.1", "10.100.1.1", count=3, deadline=10).returncode == 0
    # the lease goes: its peer goes
    assert d1.call("remove", **peer)["ok"]
    assert sh(*ns1, "wg", "show", DEV, "peers").stdout.split() == []
    # cleanup() removes device, route and wireguard-go
    assert d1.call("cleanup")["ok"]
    assert h1.link(DEV) is None and not [r for r in h1.routes() if r.get("dev") == DEV]
    wait_for(lambda: not wireguard_go_pids(h1), 10, what="wireguard-go gone")
    d1.close()
    # a damaged key file: one line saying what is wrong and what to do
    bad = os.path.join(h1.dir, "badkey")
    with open(bad, "w") as f:
        f.write("not a key\n")
    d = BackendDriver(h1, env={"WIREGUARD_KEY_FILE": bad}, wrap=wrap(h1))
    reply = d.call("create", config={"Network": NETWORK, "Backend": {"Type": "wireguard"}}, iface="eth0")
    assert not reply["ok"] and "\n" not in reply["error"]
    assert bad in reply["error"] and "delete it" in reply["error"], reply
    d.close()
