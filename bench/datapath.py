"""Datapath benchmark: iperf3 TCP between two namespace hosts over raw veth and over every datapath backend
of the catalogue, each printed as a ratio of raw veth, plus the TCP retransmits.  Needs root (network namespaces).

Every overlay run is preceded by a raw veth run of the same length ("raw veth next"), and the ratio
is taken against that one, so load from other processes that comes and goes hits both alike.

    sudo .venv/bin/python bench/datapath.py            # 10 s per run, all four
    sudo .venv/bin/python bench/datapath.py -t 5 --only raw,udp
    sudo .venv/bin/python bench/datapath.py --repeat 3   # median of three pairs per backend
    sudo .venv/bin/python bench/datapath.py --only raw,wireguard --repeat 3

``--ipv6`` measures the IPv6 paths instead, on a dual-stack network (10.100.0.0/16 and fc00::/48, /64 per
node): raw veth over IPv6 (iperf3 -6 between the hosts' underlay addresses fd00:30:1::1N) as the baseline,
vxlan (device flannel-v6.<VNI> over the IPv6 underlay) and host-gw (IPv6 routes via the peer's PublicIPv6),
iperf3 -6 between the docker0 stand-ins' first addresses of the nodes' IPv6 subnets.  udp is IPv4-only and
wireguard's IPv6 path is not part of this mode: both are skipped with a note.

    sudo .venv/bin/python bench/datapath.py --ipv6 --only raw,host-gw,vxlan --repeat 3

wireguard runs also a plain tunnel set up by hand between the same two namespaces (wg genkey,
wireguard-go -f, wg set; same MTU as flannel-wg; the kernel's WireGuard instead when it has one), in
the same round as each flannel run, and reports flannel's wireguard path as a ratio of that tunnel
(the figure that says what flannel costs on top of WireGuard itself) besides its ratio of raw veth.

The hosts come from the integration test bed (testbed/netns.py: two namespaces whose eth0
veths meet on a bridge in a third namespace), with a real etcd and real flanneld agents.  Traffic
stays inside those namespaces.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyflannel.catalogue import BACKENDS as CATALOGUE
from pyflannel.catalogue import DATAPATHS
from testbed.etcdserver import EtcdServer
from testbed.netns import Agent, Host, TestBed, private_mount, put_config, sh, wait_for

PREFIX = "/coreos.com/network"
BACKENDS = DATAPATHS  # every backend of the catalogue that moves packets
TARGETS = {"host-gw": 0.90, "vxlan": 0.85, "udp": 0.05}
WG_TARGET = 0.85  # flannel's wireguard path / a plain WireGuard tunnel between the same namespaces
NETWORK = "10.100.0.0/16"
IPV6_NETWORK = "fc00::/48"  # --ipv6: dual stack, a /64 per node (the schema's default IPv6SubnetLen)
# --ipv6: the backends whose IPv6 path this benchmark measures, and why the others are left out
IPV6_BACKENDS = ("host-gw", "vxlan")
IPV6_SKIPPED = {b.name: "IPv4-only backend" for b in CATALOGUE if b.datapath and 6 not in b.families}
IPV6_SKIPPED.setdefault("wireguard", "its IPv6 device (flannel-wg-v6) is not measured by this benchmark")


TICK = os.sysconf("SC_CLK_TCK")


def pump_cpu(hosts: List[Host]) -> float:
    """CPU seconds used so far by the udp packet pumps and wireguard-go daemons in the hosts' namespaces."""
    total = 0.0
    for host in hosts:
        for pid in host.run("ip", "netns", "pids", host.ns).stdout.split():
            try:
                with open("/proc/%s/cmdline" % pid, "rb") as f:
                    cmdline = f.read()
                if b"pyflannel.udpproxy" not in cmdline and not cmdline.startswith(b"wireguard-go\0") \
                        and b"/wireguard-go\0" not in cmdline:
                    continue
                with open("/proc/%s/stat" % pid) as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / TICK
            except (OSError, IndexError, ValueError):
                pass
    return total


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def iperf(client: Host, server: Host, server_ip: str, client_ip: str, seconds: int) -> Dict[str, float]:
    """One iperf3 TCP run; also the CPU it cost (iperf3 on both ends, with the kernel work done in
    their context, plus the udp pumps), per GB received."""
    hosts = [client, server]
    family = ["-6"] if ":" in server_ip else []  # IPv6 addresses: iperf3 -6 on both ends
    cpu0 = children_cpu() + pump_cpu(hosts)
    srv = server.popen("iperf3", *family, "-s", "-1", "-B", server_ip)
    try:
        time.sleep(0.5)
        proc = client.run("iperf3", *family, "-J", "-c", server_ip, "-B", client_ip, "-t", str(seconds), "-O", "1",
                          check=False, timeout=seconds + 30)
        data = json.loads(proc.stdout)
        if "error" in data:
            raise RuntimeError("iperf3: %s" % data["error"])
        end = data["end"]
    finally:
        try:
            srv.wait(5)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait(5)
    time.sleep(0.6)  # the pumps publish their counters every half second; CPU times are immediate
    cpu = children_cpu() + pump_cpu(hosts) - cpu0
    total_gb = end["sum_received"]["bytes"] / 1e9 * (1 + 1.0 / seconds)  # + the omitted first second, roughly
    return {"gbps": end["sum_received"]["bits_per_second"] / 1e9,
            "retransmits": float(end["sum_sent"].get("retransmits", 0)),
            "cpu_per_gb": cpu / total_gb if total_gb else 0.0}


class PlainTunnel:
    """A WireGuard tunnel set up by hand between the bed's two hosts, the yardstick for flannel's
    wireguard path: device wgplain0, 10.200.0.<n>/24, port 51900, the given MTU.  The kernel's
    WireGuard when it has one, else wireguard-go, each in a mount namespace of its own (a private
    /run/wireguard, so it never meets the agents' flannel-wg sockets)."""

    DEV = "wgplain0"
    PORT = 51900

    def __init__(self, hosts: List[Host], mtu: int) -> None:
        self.hosts = hosts
        self.pids: List[int] = []
        self.kernel = False
        keys = [sh("wg", "genkey").stdout.strip() for _host in hosts]
        pubs = [sh("wg", "pubkey", input=k + "\n").stdout.strip() for k in keys]
        for n, host in enumerate(hosts):
            run = os.path.join(host.dir, "wgplain-run")
            wrap = private_mount(run, "/run/wireguard")
            # a long-lived process in that mount namespace: wireguard-go itself, or a sleeper for the kernel's device
            self.kernel = host.run("ip", "link", "add", self.DEV, "type", "wireguard", check=False).returncode == 0
            proc = host.popen(*wrap, *(["sleep", "3600"] if self.kernel else ["wireguard-go", "-f", self.DEV]))
            self.pids.append(proc.pid)
            sock = os.path.join(run, self.DEV + ".sock")
            wait_for(lambda sock=sock: self.kernel or os.path.exists(sock), 10,
                     what="wireguard-go socket of " + self.DEV)
            self.wg(n, "set", self.DEV, "private-key", "/dev/stdin", "listen-port", str(self.PORT), stdin=keys[n])
            host.run("ip", "link", "set", self.DEV, "mtu", str(mtu))
            host.run("ip", "addr", "add", "10.200.0.%d/24" % (n + 1), "dev", self.DEV)
            host.run("ip", "link", "set", self.DEV, "up")
        for n, _host in enumerate(hosts):
            m = 1 - n
            self.wg(n, "set", self.DEV, "peer", pubs[m], "endpoint", "%s:%d" % (hosts[m].address, self.PORT),
                    "allowed-ips", "10.200.0.%d/32" % (m + 1))

    def address(self, n: int) -> str:
        return "10.200.0.%d" % (n + 1)

    def wg(self, n: int, *args: str, stdin: str = "") -> None:
        proc = subprocess.run(["nsenter", "-t", str(self.pids[n]), "-m", "-n", "wg", *args], input=stdin + "\n",
                              capture_output=True, text=True, timeout=30, check=False)
        if proc.returncode != 0:
            raise RuntimeError("wg %s: %s" % (" ".join(args[:2]), proc.stderr.strip()))

    def close(self) -> None:
        for host in self.hosts:
            host.run("ip", "link", "del", self.DEV, check=False)


def bridge_ip6(agent: Agent) -> str:
    """Put FLANNEL_IPV6_SUBNET (like FLANNEL_SUBNET, the subnet's first address with its prefix length) on
    the agent's docker0 stand-in beside the IPv4 one and return the address."""
    subnet6 = agent.subnet_env.get("FLANNEL_IPV6_SUBNET")
    if not subnet6:
        raise RuntimeError("%s: no FLANNEL_IPV6_SUBNET in subnet.env; log:\n%s" % (agent.host.ns, agent.logtext()))
    address = ipaddress.IPv6Interface(subnet6)
    agent.host.set_bridge_address(str(address))
    return str(address.ip)


def underlay(host: Host, ipv6: bool) -> str:
    """The host's eth0 address of the family measured."""
    if not ipv6:
        return host.address
    assert host.address6 is not None, "TestBed(ipv6=True) gives every host an IPv6 address"
    return host.address6


def run_backend(bed: TestBed, server: EtcdServer, btype: str, seconds: int, env: Dict[str, str],
                repeat: int = 1, ipv6: bool = False) -> Dict[str, Any]:
    """``repeat`` rounds of raw veth then ``btype``'s path between the two hosts' docker0 stand-ins (over
    IPv6 with ``ipv6``: a dual-stack network, both the raw baseline and the overlay run with iperf3 -6);
    returns the round with the median ratio, with every round's ratio in ``ratios``."""
    prefix = "/bench-%s%s" % (btype, PREFIX)
    config: Dict[str, Any] = {"Network": NETWORK, "Backend": {"Type": btype}}
    if ipv6:
        config.update({"EnableIPv6": True, "IPv6Network": IPV6_NETWORK})
    put_config(bed, server, prefix, config)
    if btype == "wireguard":  # a private /run/wireguard and key file per host (see tests/integration/test_wireguard.py)
        agents = [Agent(h, server.url, prefix, ["--wireguard-key-file", os.path.join(h.dir, "wgkey")], env=env,
                        wrap=private_mount(os.path.join(h.dir, "wgrun"), "/run/wireguard")) for h in bed.hosts]
    else:
        agents = [Agent(h, server.url, prefix, env=env) for h in bed.hosts]
    plain: Optional[PlainTunnel] = None
    try:
        for a in agents:
            a.start(wait=False)
        for a in agents:
            a.wait_ready()
        ends = [bridge_ip6(a) for a in agents] if ipv6 else [a.bridge_ip for a in agents]
        deadline = time.monotonic() + 15
        while bed.hosts[0].ping(ends[1], ends[0], count=1, deadline=2).returncode != 0:
            if time.monotonic() > deadline:
                log_text = agents[0].logtext()
                raise RuntimeError("%s: no connectivity %s -> %s; log:\n%s" % (btype, ends[0], ends[1], log_text))
        # the path the overlay runs take (device and next hop), as the kernel picks it
        path = bed.hosts[0].run("ip", "-6" if ipv6 else "-4", "route", "get", ends[1], "from", ends[0],
                                check=False).stdout.split("\n")[0].strip()
        if btype == "wireguard":
            plain = PlainTunnel(bed.hosts, int(agents[0].subnet_env["FLANNEL_MTU"]))
        runs = []
        for n in range(repeat):
            # raw veth right before the overlay run, so a change in the machine's load hits both alike
            raw = iperf(bed.hosts[0], bed.hosts[1], underlay(bed.hosts[1], ipv6), underlay(bed.hosts[0], ipv6),
                        seconds)
            tunnel = None
            if plain is not None and n % 2:  # the plain tunnel first every other round: no order bias
                tunnel = iperf(bed.hosts[0], bed.hosts[1], plain.address(1), plain.address(0), seconds)
            run = iperf(bed.hosts[0], bed.hosts[1], ends[1], ends[0], seconds)
            if plain is not None and tunnel is None:
                tunnel = iperf(bed.hosts[0], bed.hosts[1], plain.address(1), plain.address(0), seconds)
            run["raw_gbps"] = raw["gbps"]
            run["raw_cpu_per_gb"] = raw["cpu_per_gb"]
            if tunnel is not None:
                run["plain_gbps"] = tunnel["gbps"]
                run["plain_cpu_per_gb"] = tunnel["cpu_per_gb"]
                run["plain_retransmits"] = tunnel["retransmits"]
            runs.append(run)
        # the run with the median ratio
        runs.sort(key=lambda r: r["gbps"] / r["raw_gbps"])
        result = runs[len(runs) // 2]
        result["ratios"] = [round(r["gbps"] / r["raw_gbps"], 3) for r in runs]
        result["path"] = path
        if btype == "udp":
            m = agents[0].metrics()
            result["udp_packets_out"] = m.get("flannel_udp_packets_out_total", 0)
            result["udp_drops"] = sum(v for k, v in m.items() if k.startswith("flannel_udp_drops"))
        if plain is not None:
            result["plain_ratios"] = sorted(round(r["gbps"] / r["plain_gbps"], 3) for r in runs)
            result["plain_ratio"] = result["plain_ratios"][len(runs) // 2]  # the median
            result["plain_kernel"] = plain.kernel
        return result
    finally:
        if plain is not None:
            plain.close()
        for a in agents:
            a.stop()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("-t", "--time", type=int, default=10, help="seconds per iperf3 run (default 10)")
    parser.add_argument("--only", default="raw," + ",".join(BACKENDS),
                        help="comma list of raw," + ",".join(BACKENDS))
    parser.add_argument("--repeat", type=int, default=1, help="raw+overlay pairs per backend; the median ratio "
                        "is reported (default 1)")
    parser.add_argument("--udp-queues", type=int, default=0, help="PYFLANNEL_UDP_QUEUES for the udp run")
    parser.add_argument("--udp-mode", default="", help="PYFLANNEL_UDP_MODE for the udp run (split|both)")
    parser.add_argument("--ipv6", action="store_true",
                        help="measure the IPv6 paths (raw veth, %s) on a dual-stack network; ratios against raw "
                             "veth over IPv6" % ", ".join(IPV6_BACKENDS))
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/datapath.py needs root (network namespaces)", file=sys.stderr)
        return 2
    wanted = [x.strip() for x in args.only.split(",") if x.strip()]
    if args.ipv6:
        for name in [x for x in wanted if x in IPV6_SKIPPED]:
            print("--ipv6: skipping %s (%s)" % (name, IPV6_SKIPPED[name]))
        wanted = [x for x in wanted if x == "raw" or x in IPV6_BACKENDS]
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print("load average before: %s" % " ".join(load))
    if args.ipv6:
        print("family: IPv6 (network %s + %s; raw veth = iperf3 -6 between the hosts' eth0 IPv6 addresses)"
              % (NETWORK, IPV6_NETWORK))
    bed = TestBed(["A", "A"], ipv6=args.ipv6)
    server = EtcdServer(host=bed.etcd_address, port=2379, netns=bed.etcd_ns)
    server.peer_port = 2380
    results: Dict[str, Dict[str, Any]] = {}
    try:
        server.start()
        h1, h2 = bed.hosts
        if "raw" in wanted:
            results["raw"] = iperf(h1, h2, underlay(h2, args.ipv6), underlay(h1, args.ipv6), args.time)
        for btype in BACKENDS:
            if btype in wanted:
                env = {}
                if btype == "udp" and args.udp_queues:
                    env["PYFLANNEL_UDP_QUEUES"] = str(args.udp_queues)
                if btype == "udp" and args.udp_mode:
                    env["PYFLANNEL_UDP_MODE"] = args.udp_mode
                results[btype] = run_backend(bed, server, btype, args.time, env, args.repeat, ipv6=args.ipv6)
    finally:
        server.destroy()
        bed.destroy()
    header = ("path", "Gbit/s", "raw next", "ratio", "target", "retrans", "cpu-s/GB", "cpu ratio")
    print("%-8s %8s %9s %7s %8s %8s %9s %9s" % header)
    for name, r in results.items():
        raw = r.get("raw_gbps", r["gbps"])
        raw_cpu = r.get("raw_cpu_per_gb", r["cpu_per_gb"])
        target = ">= %.2f" % TARGETS[name] if name in TARGETS else ""
        cpu_ratio = raw_cpu / r["cpu_per_gb"] if r["cpu_per_gb"] else 0.0
        print("%-8s %8.2f %9.2f %7.3f %8s %8d %9.2f %9.3f%s" % (
            name, r["gbps"], raw, r["gbps"] / raw, target, r["retransmits"], r["cpu_per_gb"], cpu_ratio,
            "   (ratios %s)" % r["ratios"] if len(r.get("ratios", [])) > 1 else ""))
    if args.ipv6:
        print("family: IPv6 — every ratio is against raw veth over IPv6 in the same round")
        for name, r in results.items():
            if r.get("path"):
                print("  %s path: %s" % (name, r["path"]))
    print("cpu-s/GB: CPU seconds of iperf3 (both ends, with the kernel work done in their context) and of the\n"
          "udp pumps, per GB; cpu ratio = raw veth's cost / this path's cost: an efficiency figure that, unlike\n"
          "Gbit/s, changes little when other processes load the machine")
    if "wireguard" in results:
        wgr = results["wireguard"]
        plain_cpu = wgr["plain_cpu_per_gb"]
        print("wireguard: flannel-wg %.3f Gbit/s, plain %s tunnel %.3f Gbit/s (%d retransmits) in the same round:\n"
              "  flannel / plain tunnel = %.3f (median; target >= %.2f; all rounds %s),\n"
              "  plain tunnel / raw veth = %.3f (same round as the median-by-raw run),\n"
              "  cpu-s/GB flannel %.2f vs plain %.2f"
              % (wgr["gbps"], "kernel" if wgr["plain_kernel"] else "wireguard-go", wgr["plain_gbps"],
                 wgr["plain_retransmits"], wgr["plain_ratio"], WG_TARGET, wgr["plain_ratios"],
                 wgr["plain_gbps"] / wgr["raw_gbps"], wgr["cpu_per_gb"], plain_cpu))
    if "udp" in results:
        udp = results["udp"]
        print("udp: %d packets tunnelled by the sender, %d dropped"
              % (udp.get("udp_packets_out", 0), udp.get("udp_drops", 0)))
    with open("/proc/loadavg") as f:
        print("load average after: %s" % " ".join(f.read().split()[:3]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
