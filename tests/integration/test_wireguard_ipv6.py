"""The wireguard backend with IPv6 (Go v0.20): real wireguard-go devices in namespaces carrying real
IPv4 and IPv6 packets, driven through testbed.backend_driver (the agent's life cycle without
etcd: create/prepare, configure with the lease's IPv4 and/or IPv6 subnet, sync with the other leases),
and once end to end with real flanneld agents and a real etcd.

Each host runs in a mount namespace of its own with a private /run/wireguard (two devices per host
here: flannel-wg.sock and flannel-wg-v6.sock), as in test_wireguard.py.  The bed has IPv6 twins of the
segment addresses (TestBed(ipv6=True): fd00:30:N::1M, the third host behind the router)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from testbed.netns import (
    Agent,
    BackendDriver,
    Host,
    TestBed,
    etcdctl,
    first_address,
    private_mount,
    put_config,
    sh,
    wait_for,
    wait_peers,
)
from tests.integration.test_wireguard import diagnose

pytestmark = [pytest.mark.integration]

NETWORK = "10.100.0.0/16"
NETWORK6 = "fd10::/48"
DEV, DEV6 = "flannel-wg", "flannel-wg-v6"
PSK = "q2Xo0rO6fP1cB3bq6mkH0wKdQw4kVmXhP3n3mF1sA2U="


@pytest.fixture(autouse=True)
def _tools() -> None:
    if os.geteuid() != 0:
        pytest.fail("the namespace tests need root (network namespaces, netlink): run make test as root")
    for tool in ("ip", "ping", "wg", "wireguard-go", "unshare", "nsenter"):
        if not shutil.which(tool):
            pytest.fail("%s is missing: install wireguard-tools, wireguard-go and iputils-ping (make deps)" % tool)


@pytest.fixture
def bed6() -> Iterator[Any]:
    """A factory of IPv6 test beds (TestBed(..., ipv6=True)); all destroyed at the end of the test."""
    beds: List[TestBed] = []

    def make(segments: List[str]) -> TestBed:
        bed = TestBed(segments, ipv6=True)
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        bed.destroy()


def config(backend: Dict[str, Any], v4: bool = True, v6: bool = True) -> Dict[str, Any]:
    cfg: Dict[str, Any] = {"Backend": dict({"Type": "wireguard"}, **backend)}
    if v4:
        cfg.update(Network=NETWORK, SubnetLen=24)
    else:
        cfg["EnableIPv4"] = False
    if v6:
        cfg.update(EnableIPv6=True, IPv6Network=NETWORK6, IPv6SubnetLen=64)
    return cfg


class Node:
    """One host's backend (a driver process) with its lease."""

    def __init__(self, host: Host, cfg: Dict[str, Any]) -> None:
        self.host = host
        self.subnet = "10.100.%d.0/24" % host.n if "Network" in cfg else None
        self.subnet6 = "fd10:0:0:%d::/64" % host.n if cfg.get("EnableIPv6") else None
        self.driver = BackendDriver(host, env={"WIREGUARD_KEY_FILE": os.path.join(host.dir, "wgkey")},
                                    wrap=private_mount(os.path.join(host.dir, "wgrun"), "/run/wireguard"))
        reply = self.driver.call("create", config=cfg, iface="eth0", ipv6=bool(self.subnet6))
        assert reply["ok"], reply
        self.value = reply["lease_value"]
        reply = self.driver.call("configure", subnet=self.subnet, subnet6=self.subnet6)
        assert reply["ok"], reply
        host.set_bridge_address(*[first_address(s) for s in (self.subnet, self.subnet6) if s])

    @property
    def lease(self) -> Dict[str, Any]:
        return {"subnet": self.subnet, "subnet6": self.subnet6, "value": self.value}

    @property
    def ip(self) -> Optional[str]:
        return first_address(self.subnet).split("/")[0] if self.subnet else None

    @property
    def ip6(self) -> Optional[str]:
        return first_address(self.subnet6).split("/")[0] if self.subnet6 else None

    def call(self, op: str, **kwargs: Any) -> Dict[str, Any]:
        reply = self.driver.call(op, **kwargs)
        assert reply["ok"], (op, reply, self.driver.logtext())
        return reply

    def wg(self, *args: str) -> str:
        return sh("nsenter", "-t", str(self.driver.proc.pid), "-m", "-n", "wg", *args).stdout

    def dump(self, dev: str) -> Dict[str, List[str]]:
        rows = [line.split("\t") for line in self.wg("show", dev, "dump").splitlines()]
        return {row[0]: row for row in rows[1:]}

    def close(self) -> None:
        self.driver.close()


def up(hosts: List[Host], cfg: Dict[str, Any]) -> List[Node]:
    nodes = [Node(h, cfg) for h in hosts]
    for node in nodes:
        node.call("sync", leases=[o.lease for o in nodes if o is not node])
    return nodes


Point = Tuple[Host, Optional[str], Optional[str]]  # a host and its bridge's IPv4 and IPv6 address


def ping_mesh(points: List[Point], tick: Optional[Callable[[], None]] = None, deadline: int = 40) -> Dict[str, str]:
    """Every host pings every other host's bridge addresses (IPv4 and IPv6) from its own, in parallel,
    calling ``tick`` every few seconds meanwhile (the backends' tick() resets a session that only works
    one way after crossed handshakes); returns {"h1->10.100.2.1": output} of the pings that failed."""
    procs = []
    for a_host, a4, a6 in points:
        for b_host, b4, b6 in points:
            for src, dst in ((a4, b4), (a6, b6)):
                if a_host is b_host or not src or not dst:
                    continue
                cmd = a_host.cmd("ping", "-n", *(["-6"] if ":" in dst else []), "-c", "3", "-i", "0.2", "-w",
                                 str(deadline), "-I", src, dst)
                procs.append(("%s->%s" % (a_host.ns, dst),
                              subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    end = time.monotonic() + deadline + 5
    last_tick = time.monotonic()
    while time.monotonic() < end and any(p.poll() is None for _name, p in procs):
        time.sleep(0.5)
        if tick is not None and time.monotonic() - last_tick >= 5:
            tick()
            last_tick = time.monotonic()
    failed = {}
    for name, proc in procs:
        out, _err = proc.communicate(timeout=30)
        if proc.returncode != 0:
            failed[name] = out
    return failed


def assert_mesh(nodes: List[Node]) -> None:
    def tick() -> None:
        for node in nodes:
            node.call("tick")

    failed = ping_mesh([(n.host, n.ip, n.ip6) for n in nodes], tick)
    if failed:
        info = []
        for node in nodes:
            info.append("%s:\n%s\n%s\n%s" % (node.host.ns, node.wg("show"), node.host.run("ip", "-br", "addr").stdout,
                                             node.host.run("ip", "-6", "route").stdout))
            info.append(node.driver.logtext()[-2000:])
        pytest.fail("pings failed:\n%s\n%s" % ("\n".join("%s:\n%s" % kv for kv in failed.items()), "\n".join(info)))


def wireguard_go(host: Host) -> Dict[str, int]:
    """device name -> pid of the wireguard-go processes in the host's namespace."""
    out = {}
    for pid in sh("ip", "netns", "pids", host.ns).stdout.split():
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"wireguard-go":
            out[argv[-2].decode() if argv[-1] == b"" else argv[-1].decode()] = int(pid)
    return out


def addresses(host: Host, family: str, dev: str) -> List[str]:
    info = host.ip_json(family, "addr", "show", "dev", dev)
    return ["%s/%d" % (a["local"], a["prefixlen"]) for a in (info[0]["addr_info"] if info else [])
            if a.get("scope") != "link"]


def wg_routes(host: Host) -> List[tuple]:
    """(dst, dev) of every route with the wireguard protocol (111), IPv4 and IPv6."""
    out = []
    for family in ("-4", "-6"):
        for r in host.ip_json(family, "route", "show", "proto", "111"):
            out.append((r["dst"], r["dev"]))
    return sorted(out)


def flannel_links(host: Host) -> List[str]:
    return sorted(n for n in host.links() if n.startswith("flannel"))


def test_separate_mode_dual_stack_mesh(bed6: Any) -> None:
    """Mode separate (the default): flannel-wg for IPv4, flannel-wg-v6 on 51821 for IPv6, three hosts
    (the third behind the router, over IPv6 routing too), PSK and keepalive on both devices."""
    bed = bed6(["A", "A", "B"])
    nodes = up(bed.hosts, config({"PSK": PSK, "PersistentKeepaliveInterval": 7}))
    assert_mesh(nodes)
    keys = {}
    for node in nodes:
        value = json.loads(node.value)
        assert value["PublicIP"] == node.host.address and value["PublicIPv6"] == node.host.address6
        assert value["BackendData"] == value["BackendV6Data"] and set(value["BackendData"]) == {"PublicKey"}
        keys[node.host.n] = value["BackendData"]["PublicKey"]
    for node in nodes:
        h = node.host
        assert flannel_links(h) == [DEV, DEV6]
        assert h.link(DEV)["mtu"] == 1420 and h.link(DEV6)["mtu"] == 1420
        assert addresses(h, "-4", DEV) == ["10.100.%d.0/32" % h.n] and addresses(h, "-6", DEV) == []
        assert addresses(h, "-6", DEV6) == ["fd10:0:0:%d::/128" % h.n] and addresses(h, "-4", DEV6) == []
        assert wg_routes(h) == [(NETWORK, DEV), (NETWORK6, DEV6)]
        assert sorted(wireguard_go(h)) == [DEV, DEV6]  # one wireguard-go per device
        assert node.wg("show", DEV, "listen-port").strip() == "51820"
        assert node.wg("show", DEV6, "listen-port").strip() == "51821"
        for dev, port in ((DEV, 51820), (DEV6, 51821)):
            dump = node.dump(dev)
            others = [o for o in nodes if o is not node]
            assert sorted(dump) == sorted(keys[o.host.n] for o in others)
            for other in others:
                row = dump[keys[other.host.n]]
                if dev == DEV:
                    assert row[2] == "%s:%d" % (other.host.address, port) and row[3] == other.subnet
                else:
                    assert row[2] == "[%s]:%d" % (other.host.address6, port) and row[3] == other.subnet6
                assert row[1] == PSK and row[7] == "7"
        status = node.call("status")
        assert status["status"]["devices"][DEV6]["peers"] == 2 and status["status"]["peers"] == 2
        assert status["metrics"]["wireguard_peers"] == 4
    # a lease going removes its peer from both devices; sync puts it back
    gone = nodes[2]
    assert nodes[0].call("remove", **gone.lease)
    assert keys[3] not in nodes[0].dump(DEV) and keys[3] not in nodes[0].dump(DEV6)
    nodes[0].call("sync", leases=[nodes[1].lease, gone.lease])
    assert keys[3] in nodes[0].dump(DEV) and keys[3] in nodes[0].dump(DEV6)
    # the v6 peer and route go behind our back: tick() repairs them
    sh("nsenter", "-t", str(nodes[0].driver.proc.pid), "-m", "-n", "wg", "set", DEV6, "peer", keys[2], "remove")
    nodes[0].host.run("ip", "-6", "route", "del", NETWORK6, "dev", DEV6)
    nodes[0].call("tick")
    assert keys[2] in nodes[0].dump(DEV6) and (NETWORK6, DEV6) in wg_routes(nodes[0].host)
    assert nodes[0].host.ping(nodes[1].ip6, nodes[0].ip6, count=2).returncode == 0


@pytest.mark.parametrize("mode", ["auto", "ipv6"])
def test_one_device_modes_dual_stack_mesh(bed6: Any, mode: str) -> None:
    """Mode auto (the bed's addresses are all private, so IPv4 endpoints, as Go) and ipv6 (IPv6
    endpoints): one flannel-wg carrying both subnets per peer, both routes on it, no flannel-wg-v6."""
    bed = bed6(["A", "A", "B"])
    nodes = up(bed.hosts, config({"Mode": mode}))
    assert_mesh(nodes)
    keys = {n.host.n: json.loads(n.value)["BackendData"]["PublicKey"] for n in nodes}
    for node in nodes:
        h = node.host
        assert flannel_links(h) == [DEV] and sorted(wireguard_go(h)) == [DEV]
        assert addresses(h, "-4", DEV) == ["10.100.%d.0/32" % h.n]
        assert addresses(h, "-6", DEV) == ["fd10:0:0:%d::/128" % h.n]
        assert wg_routes(h) == [(NETWORK, DEV), (NETWORK6, DEV)]
        dump = node.dump(DEV)
        for other in (o for o in nodes if o is not node):
            row = dump[keys[other.host.n]]
            want = ("%s:51820" % other.host.address if mode == "auto" else "[%s]:51820" % other.host.address6)
            assert row[2] == want
            assert sorted(row[3].split(",")) == sorted([other.subnet, other.subnet6])


def test_separate_mode_ipv6_only_mesh(bed6: Any) -> None:
    bed = bed6(["A", "A", "B"])
    nodes = up(bed.hosts, config({}, v4=False))
    assert_mesh(nodes)
    for node in nodes:
        h = node.host
        value = json.loads(node.value)
        assert value["PublicIP"] == "0.0.0.0" and value["PublicIPv6"] == h.address6
        assert "BackendData" not in value and set(value["BackendV6Data"]) == {"PublicKey"}
        assert flannel_links(h) == [DEV6] and sorted(wireguard_go(h)) == [DEV6]
        assert addresses(h, "-6", DEV6) == ["fd10:0:0:%d::/128" % h.n]
        assert wg_routes(h) == [(NETWORK6, DEV6)]
        assert h.link(DEV6)["mtu"] == 1420
        assert all(row[2].endswith("]:51821") for row in node.dump(DEV6).values())


def test_restart_keeps_both_devices_then_switches_leave_nothing(bed6: Any) -> None:
    """Restart (a new backend process): both devices, their ifindex and their wireguard-go stay.  Then
    Mode auto: flannel-wg-v6 and its wireguard-go go, IPv6 moves to flannel-wg.  Then host-gw: no
    flannel-wg*, no wireguard route of either family, no wireguard-go."""
    bed = bed6(["A", "A"])
    cfg = config({})
    nodes = up(bed.hosts, cfg)
    assert_mesh(nodes)
    h1 = bed.hosts[0]
    ifindex = {dev: h1.link(dev)["ifindex"] for dev in (DEV, DEV6)}
    pids = wireguard_go(h1)
    assert sorted(pids) == [DEV, DEV6]
    peers = {dev: sorted(nodes[0].dump(dev)) for dev in (DEV, DEV6)}
    # a flow over IPv6 through the restart: no packet lost
    flow = subprocess.Popen(bed.hosts[1].cmd("ping", "-6", "-n", "-c", "40", "-i", "0.1", "-w", "20", "-I",
                                             nodes[1].ip6, nodes[0].ip6),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)
        nodes[0].close()
        nodes[0] = Node(h1, cfg)
        nodes[0].call("sync", leases=[nodes[1].lease])
        out, _err = flow.communicate(timeout=40)
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait(5)
    assert flow.returncode == 0 and " 0% packet loss" in out, out
    assert {dev: h1.link(dev)["ifindex"] for dev in (DEV, DEV6)} == ifindex
    assert wireguard_go(h1) == pids
    assert {dev: sorted(nodes[0].dump(dev)) for dev in (DEV, DEV6)} == peers
    log = nodes[0].driver.logtext()
    assert "%s: reusing the existing device" % DEV in log and "%s: reusing the existing device" % DEV6 in log
    assert_mesh(nodes)

    # switch both hosts to Mode auto
    for node in nodes:
        node.close()
    nodes = up(bed.hosts, config({"Mode": "auto"}))
    for host in bed.hosts:
        assert flannel_links(host) == [DEV]
        wait_for(lambda host=host: sorted(wireguard_go(host)) == [DEV], 10, what="flannel-wg-v6's wireguard-go gone")
        assert wg_routes(host) == [(NETWORK, DEV), (NETWORK6, DEV)]
    assert h1.link(DEV)["ifindex"] == ifindex[DEV]  # flannel-wg itself was kept
    assert_mesh(nodes)

    # back to separate (flannel-wg-v6 comes back), then switch away to host-gw
    for node in nodes:
        node.close()
    nodes = up(bed.hosts, cfg)
    assert flannel_links(h1) == [DEV, DEV6] and wg_routes(h1) == [(NETWORK, DEV), (NETWORK6, DEV6)]
    for node in nodes:
        node.close()
    for host in bed.hosts:
        driver = BackendDriver(host, wrap=private_mount(os.path.join(host.dir, "wgrun"), "/run/wireguard"))
        reply = driver.call("create", config={"Network": NETWORK, "Backend": {"Type": "host-gw"}}, iface="eth0")
        assert reply["ok"], reply
        assert flannel_links(host) == [] and wg_routes(host) == []
        wait_for(lambda host=host: not wireguard_go(host), 10, what="every wireguard-go gone")
        assert "removed what an earlier wireguard backend left: %s, %s" % (DEV, DEV6) in driver.logtext()
        driver.close()


class WgAgent(Agent):
    """A flanneld with a private /run/wireguard whose docker0 stand-in also gets FLANNEL_IPV6_SUBNET."""

    def __init__(self, host: Host, server: Any) -> None:
        super().__init__(host, server.url, "/coreos.com/network",
                         ["--etcd-api", "v3", "--wireguard-key-file", os.path.join(host.dir, "wgkey")],
                         wrap=private_mount(os.path.join(host.dir, "wgrun"), "/run/wireguard"))

    def wait_ready(self, timeout: float = 30.0) -> Dict[str, str]:
        env = super().wait_ready(timeout)
        self.host.set_bridge_address(env["FLANNEL_IPV6_SUBNET"])
        return env


def test_agents_dual_stack_separate_mode(bed6: Any, bed_etcd: Any) -> None:
    """Real flanneld agents (etcd v3): leases with both subnets, PublicIPv6 and BackendV6Data, subnet.env
    with the IPv6 lines and the wireguard MTU, and both families across both devices."""
    bed = bed6(["A", "A", "B"])
    server = bed_etcd(bed)
    put_config(bed, server, "/coreos.com/network", config({"PersistentKeepaliveInterval": 5}))
    agents = [WgAgent(h, server) for h in bed.hosts]
    for agent in agents:
        agent.start(wait=False)
    for agent in agents:
        agent.wait_ready(40)
    wait_peers(agents, 30)
    points = []
    for agent in agents:
        env = agent.subnet_env
        assert env["FLANNEL_MTU"] == "1420" and env["FLANNEL_IPV6_NETWORK"] == NETWORK6, env
        points.append((agent.host, env["FLANNEL_SUBNET"].split("/")[0], env["FLANNEL_IPV6_SUBNET"].split("/")[0]))
    failed = ping_mesh(points)  # the agents tick their backends themselves
    assert not failed, "%s\n%s\n%s" % ("\n".join("%s:\n%s" % kv for kv in failed.items()),
                                       "\n".join(diagnose(a) for a in agents),
                                       "\n".join(a.logtext()[-2000:] for a in agents))
    values = [json.loads(line) for line in etcdctl(bed, server, "get", "--prefix", "--print-value-only",
                                                   "/coreos.com/network/subnets/").splitlines() if line.strip()]
    assert len(values) == 3
    for value in values:
        assert value["BackendType"] == "wireguard" and value["PublicIPv6"]
        assert value["BackendV6Data"] == value["BackendData"] and set(value["BackendData"]) == {"PublicKey"}
    for agent in agents:
        assert flannel_links(agent.host) == [DEV, DEV6]
        assert wg_routes(agent.host) == [(NETWORK, DEV), (NETWORK6, DEV6)]
        out = sh("nsenter", "-t", str(agent.proc.pid), "-m", "-n", "wg", "show", DEV6, "endpoints").stdout
        assert sorted(line.split("\t")[1] for line in out.splitlines()) == sorted(
            "[%s]:51821" % h.address6 for h in bed.hosts if h is not agent.host)
    for agent in agents:
        agent.stop()
