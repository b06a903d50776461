"""The datapaths end to end: real flanneld agents in network namespaces, a real etcd, real packets.

Each test builds its own hosts (testbed/netns.py) and tears them down, failed or not."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from typing import Any, Dict, List

import pytest

from testbed.netns import Agent, TestBed, etcdctl, ping_all, put_config, wait_for, wait_peers

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
NETWORK = "10.100.0.0/16"
MTU = {"vxlan": 1450, "host-gw": 1500, "udp": 1472}
# udp datagrams dropped because their source address holds no lease (samples keyed by name and labels)
UNKNOWN_SENDER_DROPS = 'flannel_udp_dropped_packets_total{direction="rx",reason="unknown_sender"}'


def start_agents(bed: TestBed, server: Any, args: Any = None, hosts: Any = None) -> List[Agent]:
    agents = []
    for host in hosts or bed.hosts:
        agent = Agent(host, server.url, PREFIX, list(args or []))
        agent.start(wait=False)
        agents.append(agent)
    for agent in agents:
        agent.wait_ready()
    wait_peers(agents)
    return agents


def assert_pings(agents: List[Agent]) -> None:
    failed = ping_all(agents)
    assert not failed, "pings failed:\n" + "\n".join(
        "%s:\n%s\n%s" % (k, v, a.logtext()[-3000:]) for k, v in failed.items() for a in agents[:1])


def udp_workers(agent: Agent) -> List[int]:
    """PIDs of udp packet-pump processes in the agent's namespace."""
    out = []
    for pid in agent.host.run("ip", "netns", "pids", agent.host.ns).stdout.split():
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                if b"pyflannel.udpproxy" in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out


def routes_by_dst(agent: Agent) -> Dict[str, Dict[str, Any]]:
    return {r["dst"]: r for r in agent.host.routes()}


@pytest.mark.parametrize("btype", ["vxlan", "host-gw", "udp"])
def test_three_hosts(btype: str, testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A", "A"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": NETWORK, "SubnetLen": 24, "Backend": {"Type": btype}})
    agents = start_agents(bed, server, ["--ip-masq"])
    subnets = [a.subnet for a in agents]
    assert len(set(subnets)) == 3
    assert_pings(agents)

    for agent in agents:
        env = agent.subnet_env
        assert env["FLANNEL_NETWORK"] == NETWORK
        assert env["FLANNEL_MTU"] == str(MTU[btype])
        assert env["FLANNEL_IPMASQ"] == "true"
        subnet = ipaddress.IPv4Network(agent.subnet)
        assert env["FLANNEL_SUBNET"] == "%s/24" % (subnet.network_address + 1)
        routes = routes_by_dst(agent)
        others = [a for a in agents if a is not agent]
        if btype == "vxlan":
            link = agent.host.link("flannel.1")
            assert link is not None and link["mtu"] == 1450
            info = link["linkinfo"]["info_data"]
            assert info["id"] == 1 and info["port"] == 8472 and info["local"] == agent.host.address
            assert not info.get("learning")
            neigh = {n["dst"]: n for n in agent.host.ip_json("neigh", "show", "dev", "flannel.1")}
            fdb_out = agent.host.run("bridge", "-j", "fdb", "show", "dev", "flannel.1").stdout
            fdb = {f["mac"]: f for f in json.loads(fdb_out) if f.get("dst")}
            for other in others:
                osub = ipaddress.IPv4Network(other.subnet)
                r = routes[str(osub)]
                assert r["dev"] == "flannel.1" and r["gateway"] == str(osub.network_address)
                assert "onlink" in r["flags"]
                mac = other.host.link("flannel.1")["address"]
                assert neigh[str(osub.network_address)]["lladdr"] == mac
                assert "PERMANENT" in neigh[str(osub.network_address)]["state"]
                assert fdb[mac]["dst"] == other.host.address
            addrs = agent.host.ip_json("-4", "addr", "show", "dev", "flannel.1")[0]["addr_info"]
            assert [(a["local"], a["prefixlen"]) for a in addrs] == [(str(subnet.network_address), 32)]
        elif btype == "host-gw":
            for other in others:
                r = routes[other.subnet]
                assert r["dev"] == "eth0" and r["gateway"] == other.host.address
            assert not [n for n in agent.host.links() if n.startswith("flannel")]
        else:
            link = agent.host.link("flannel0")
            assert link is not None and link["mtu"] == 1472
            assert link["linkinfo"]["info_kind"] == "tun"
            assert routes[NETWORK]["dev"] == "flannel0"
            addrs = agent.host.ip_json("-4", "addr", "show", "dev", "flannel0")[0]["addr_info"]
            assert [(a["local"], a["prefixlen"]) for a in addrs] == [(str(subnet.network_address), 32)]
            sockets = agent.host.run("ss", "-uln").stdout
            assert "%s:8285" % agent.host.address in sockets
        # ip-masq rules are in the namespace's nat table
        nat = agent.host.run("iptables-save", "-t", "nat").stdout
        assert "-A FLANNEL-POSTRTG -s %s -d %s -m comment --comment \"flanneld masq\" -j RETURN" % (
            agent.subnet, NETWORK) in nat
        health = json.loads(agent.host.run("curl", "-sf", "http://127.0.0.1:%d/healthz" % agent.healthz_port).stdout)
        assert health["backend"]["backend"] == btype

    # a lease that goes away takes its routes (and neighbour/fdb entries) with it
    gone = agents[2]
    gone.stop()
    etcdctl(bed, server, "del", PREFIX + "/subnets/" + gone.subnet.replace("/", "-"))
    if btype != "udp":
        wait_for(lambda: gone.subnet not in routes_by_dst(agents[0]), 15, what="route of the removed lease gone")
    if btype == "vxlan":
        gw = str(ipaddress.IPv4Network(gone.subnet).network_address)
        wait_for(lambda: gw not in {n["dst"] for n in agents[0].host.ip_json("neigh", "show", "dev", "flannel.1")},
                 15, what="neighbour of the removed lease gone")
    if btype == "udp":
        # unknown destination now: ICMP net unreachable from flannel0's address
        wait_for(lambda: agents[0].metrics().get("flannel_datapath_remote_leases") == 1.0, 15,
                 what="udp routing table updated")
        out = agents[0].host.ping(gone.bridge_ip, source=agents[0].bridge_ip, count=1, deadline=3).stdout
        assert "Unreachable" in out, out
    assert_pings(agents[:2])


def test_hostgw_two_segments_then_iface(testbed: Any, bed_etcd: Any) -> None:
    """h1 on segment A, h2 behind the router on B, both with eth1 on segment C (seed 000's eth1)."""
    bed = testbed(["A", "B"], second=["C", "C"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": NETWORK, "Backend": {"Type": "host-gw"}})
    h1, h2 = bed.hosts
    agents = start_agents(bed, server)
    # default-route interface: the other node's PublicIP is behind a router -> one clear line each
    for agent, other in ((agents[0], agents[1]), (agents[1], agents[0])):
        line = wait_for(lambda a=agent: [ln for ln in a.logtext().splitlines() if "not on-link" in ln], 15,
                        what="the not-on-link message")
        assert len(line) == 1, line
        text = line[0]
        assert other.subnet in text and other.host.address in text
        assert "--iface" in text and "vxlan" in text and "L2 segment" in text
        assert other.subnet not in routes_by_dst(agent)
    for agent in agents:
        agent.stop()
    # --iface eth1: both share segment C -> works
    etcdctl(bed, server, "del", "--prefix", PREFIX + "/subnets/")
    for agent in agents:
        agent.args = ["--iface", "eth1"]
    for agent in agents:
        agent.start(wait=False)
    for agent in agents:
        agent.wait_ready()
    route = wait_for(lambda: routes_by_dst(agents[0]).get(agents[1].subnet), 15, what="the host-gw route")
    assert route["gateway"] == h2.address2 and route["dev"] == "eth1"
    assert_pings(agents)
    for agent in agents:
        agent.stop()
    # behind NAT (public IP not on the interface): refuses to start, one clear line
    nat = Agent(h1, server.url, PREFIX, ["--iface", "eth1", "--public-ip", "192.0.2.77"])
    nat.start(wait=False)
    assert nat.proc is not None and nat.proc.wait(30) != 0
    assert "host-gw cannot work behind NAT" in nat.logtext()


def _flannel_state(agent: Agent) -> Dict[str, Any]:
    routes = agent.host.routes()
    return {
        "links": sorted(n for n in agent.host.links() if n.startswith("flannel")),
        "protos": sorted({str(r.get("protocol")) for r in routes if str(r.get("protocol")) in
                          ("108", "109", "110")}),
    }


def test_switch_vni_and_backend_leaves_nothing(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A"])
    server = bed_etcd(bed)
    steps = [
        ({"Type": "vxlan"}, {"links": ["flannel.1"], "protos": ["109"]}),
        ({"Type": "vxlan", "VNI": 2}, {"links": ["flannel.2"], "protos": ["109"]}),
        ({"Type": "host-gw", "MTU": 1400}, {"links": [], "protos": ["108"]}),
        ({"Type": "udp", "MTU": 1300}, {"links": ["flannel0"], "protos": ["110"]}),
        ({"Type": "vxlan", "VNI": 3, "DirectRouting": True}, {"links": ["flannel.3"], "protos": ["109"]}),
    ]
    agents = [Agent(host, server.url, PREFIX) for host in bed.hosts]
    for backend, expected in steps:
        put_config(bed, server, PREFIX, {"Network": NETWORK, "Backend": backend})
        for agent in agents:
            agent.start(wait=False)
        for agent in agents:
            agent.wait_ready()
        wait_for(lambda want=expected: all(_flannel_state(a) == want for a in agents), 15,
                 what="only %s's devices and routes (%s)" % (backend, expected))
        mtu = backend.get("MTU") or MTU[backend["Type"]]
        for agent in agents:
            assert agent.subnet_env["FLANNEL_MTU"] == str(mtu)  # the MTU override reaches docker
            for dev in expected["links"]:
                assert agent.host.link(dev)["mtu"] == mtu
        assert_pings(agents)
        for agent in agents:
            assert agent.stop() == 0
            assert not udp_workers(agent)  # a clean stop takes the udp workers along


def test_etcd_outage_loses_no_packet(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": NETWORK, "Backend": {"Type": "vxlan"}})
    # TTL 120 s -> renewal every 60 s, retried every 15 s while etcd is away
    agents = start_agents(bed, server, ["--subnet-lease-ttl", "120"])
    a, b = agents
    ping = a.host.popen("ping", "-n", "-q", "-c", "350", "-i", "0.2", "-w", "90", "-I", a.bridge_ip, b.bridge_ip,
                        stdout=subprocess.PIPE)
    time.sleep(2)
    server.stop()
    time.sleep(60)
    restarted = time.time()
    server.start()
    out, _err = ping.communicate(timeout=60)
    assert b" 0% packet loss" in out and b"350 received" in out, out
    for agent in agents:
        assert agent.proc is not None and agent.proc.poll() is None, agent.logtext()

    def renewed(agent: Agent) -> bool:
        return agent.metrics().get("flannel_lease_renewals_total", 0) >= 1 and "renewed lease" in agent.logtext()

    wait_for(lambda: all(renewed(x) for x in agents), 60, interval=1, what="lease renewals after the outage")
    leases = etcdctl(bed, server, "get", "--prefix", "--keys-only", PREFIX + "/subnets/").split()
    assert sorted(leases) == sorted(PREFIX + "/subnets/" + x.subnet.replace("/", "-") for x in agents)
    assert time.time() - restarted < 120
    assert_pings(agents)


@pytest.mark.parametrize("btype", ["vxlan", "udp"])
def test_sigkill_restart_keeps_subnet_without_route_flaps(btype: str, testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A", "A"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": NETWORK, "Backend": {"Type": btype}})
    agents = start_agents(bed, server)
    assert_pings(agents)
    victim = agents[0]
    subnet = victim.subnet
    monitors = [x.host.popen("ip", "monitor", "route", stdout=subprocess.PIPE) for x in agents[1:]]
    time.sleep(0.5)
    victim.kill()
    if btype == "udp":
        # the udp workers notice their agent is gone and exit
        wait_for(lambda: not udp_workers(victim), 10, what="orphaned udp workers to exit")
    victim.start()
    assert victim.subnet == subnet
    if btype == "udp":
        assert len(udp_workers(victim)) == 2
    assert_pings(agents)
    time.sleep(1)
    for mon in monitors:
        mon.terminate()
    for mon, other in zip(monitors, agents[1:]):
        out, _err = mon.communicate(timeout=10)
        text = out.decode(errors="replace")
        assert subnet not in text, "route for %s changed on %s:\n%s" % (subnet, other.host.ns, text)


SEND_SCRIPT = r"""
import socket, struct, sys
src_inner, dst_inner, target, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
payload = b"spoofed-or-not"
udp = struct.pack("!HHHH", 40000, 9999, 8 + len(payload), 0) + payload
hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                            socket.inet_aton(src_inner), socket.inet_aton(dst_inner)))
total = int.from_bytes(bytes(hdr), "big") % 0xFFFF
struct.pack_into("!H", hdr, 10, (~total) & 0xFFFF)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(count):
    s.sendto(bytes(hdr) + udp, (target, 8285))
"""

LISTEN_SCRIPT = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
s.settimeout(0.2)
got, deadline = 0, time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        s.recv(2048)
        got += 1
    except socket.timeout:
        pass
print(got)
"""


def _tun_rx(agent: Agent) -> int:
    return int(agent.host.run("cat", "/sys/class/net/flannel0/statistics/rx_packets").stdout)


def test_udp_spoofed_datagrams_never_reach_the_tun(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A", "A"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": NETWORK, "Backend": {"Type": "udp"}})
    agents = start_agents(bed, server, hosts=bed.hosts[:2])
    a, b = agents
    attacker = bed.hosts[2]  # on the same segment, holds no lease
    assert_pings(agents)
    python = "python3"

    def attempt(sender: Any, inner_src: str) -> int:
        listener = a.host.popen(python, "-c", LISTEN_SCRIPT, a.bridge_ip, "3", stdout=subprocess.PIPE)
        time.sleep(0.5)
        sender.run(python, "-c", SEND_SCRIPT, inner_src, a.bridge_ip, a.host.address, "20")
        out, _err = listener.communicate(timeout=15)
        return int(out.strip() or b"0")

    wait_for(lambda: UNKNOWN_SENDER_DROPS in a.metrics(), 10, what="udp metrics")
    drops = a.metrics()[UNKNOWN_SENDER_DROPS]
    rx = _tun_rx(a)
    assert attempt(attacker, b.bridge_ip) == 0
    assert _tun_rx(a) == rx, "a spoofed datagram was written into flannel0"
    wait_for(lambda: a.metrics()[UNKNOWN_SENDER_DROPS] >= drops + 20, 5,
             what="20 counted drops")
    # the control: the same datagrams from a lease holder's address do arrive
    assert attempt(b.host, b.bridge_ip) == 20
    assert _tun_rx(a) >= rx + 20
