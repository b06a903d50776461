"""Thousands of peers: one real host-gw agent facing 5000 leases in a real etcd.  Needs root.

For each case it builds a one-host namespace test bed (testbed/netns.py) with a real etcd
(testbed/etcdserver.py), writes N host-gw leases straight into etcd (v3, through the project's facade
plugins/module_utils/etcdstore.py), starts ``flanneld`` and reports:

- **ready**: start until subnet.env is written (what systemd's READY=1 waits for);
- **all routes**: start until ``ip route show proto 108`` lists every route that can be programmed;
- **idle CPU**: utime+stime of the agent (/proc/<pid>/stat) over ``--idle`` seconds after that, in %
  of one core;
- **RSS** at the end, and how many "not on-link" log lines the agent wrote.

Cases: ``on-link`` (next hops inside a /18 given to eth0 as a second address) and ``off-link`` (next
hops in 198.18.0.0/15: no route can be programmed, one summary line expected).

    sudo .venv/bin/python bench/peers.py                 # 5000 leases, 30 s idle, both cases
    sudo .venv/bin/python bench/peers.py -n 1000 --idle 10 --only on-link
    sudo .venv/bin/python bench/peers.py --tree /tmp/old  # the agent from another checkout (PYTHONPATH)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from testbed.etcdserver import EtcdServer  # noqa: E402
from testbed.netns import Agent, TestBed, hostgw_leases, put_config, write_leases  # noqa: E402

PREFIX = "/coreos.com/network"
CLK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def agent_pid(agent: Agent) -> int:
    """The flanneld python process (the Popen is ``ip netns exec``, which execs it: same pid)."""
    assert agent.proc is not None
    return agent.proc.pid


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def rss_mib(pid: int) -> float:
    with open("/proc/%d/statm" % pid) as f:
        return int(f.read().split()[1]) * PAGE / 2 ** 20


def count_routes(bed: TestBed) -> int:
    out = bed.hosts[0].run("ip", "-4", "route", "show", "proto", "108", timeout=60).stdout
    return len(out.splitlines())


def run_case(case: str, count: int, idle: float, tree: str) -> Dict[str, Any]:
    on_link = case == "on-link"
    bed = TestBed(["A"])
    server = EtcdServer(host=bed.etcd_address, port=2379, netns=bed.etcd_ns)
    server.peer_port = 2380
    try:
        server.start()
        host = bed.hosts[0]
        host.run("ip", "addr", "add", "192.168.0.1/18", "dev", "eth0")
        put_config(bed, server, PREFIX, {"Network": "10.0.0.0/8", "SubnetLen": 24, "Backend": {"Type": "host-gw"}})
        t0 = time.monotonic()
        write_leases(bed, server, PREFIX, hostgw_leases(count, on_link))
        written = time.monotonic() - t0
        env = {"PYTHONPATH": tree} if tree else {}
        agent = Agent(host, server.url, PREFIX, args=["--iface", "eth0"], env=env)
        start = time.monotonic()
        agent.start(timeout=120)
        ready = time.monotonic() - start
        want = count if on_link else 0
        routes = -1
        deadline = start + 120
        while time.monotonic() < deadline:
            routes = count_routes(bed)
            if routes >= want and (want or "not on-link" in agent.logtext()):
                break
            time.sleep(0.2)
        all_routes = time.monotonic() - start
        time.sleep(2)  # let the start-up work settle
        pid = agent_pid(agent)
        c0, w0 = cpu_seconds(pid), time.monotonic()
        time.sleep(idle)
        c1, w1 = cpu_seconds(pid), time.monotonic()
        with open(agent.log, errors="replace") as f:
            noisy = sum(1 for line in f if "not on-link" in line)
        result = {"case": case, "leases": count, "write_s": round(written, 1), "ready_s": round(ready, 2),
                  "all_routes_s": round(all_routes, 2), "routes": routes,
                  "idle_cpu_pct": round(100.0 * (c1 - c0) / (w1 - w0), 2), "rss_mib": round(rss_mib(pid), 1),
                  "not_on_link_lines": noisy}
        agent.stop()
        return result
    finally:
        server.destroy()
        bed.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("-n", "--leases", type=int, default=5000)
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measurement")
    parser.add_argument("--only", default="on-link,off-link")
    parser.add_argument("--tree", default="", help="run the agent from this source tree (PYTHONPATH)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    header = ("case", "leases", "ready s", "routes s", "routes", "idle CPU", "RSS MiB", "log lines")
    print("%-9s %6s %8s %9s %8s %10s %8s %10s" % header)
    for case in args.only.split(","):
        r = run_case(case, args.leases, args.idle, args.tree)
        row = (r["case"], r["leases"], r["ready_s"], r["all_routes_s"], r["routes"], r["idle_cpu_pct"],
               r["rss_mib"], r["not_on_link_lines"])
        print("%-9s %6d %8.2f %9.2f %8d %9.2f%% %8.1f %10d" % row)
        print(json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
