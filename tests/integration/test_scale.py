"""Thousands of peers: 5000 host-gw leases in a real etcd, one real agent (issue 10, item 4).

The agent must become ready, program every on-link route, and report 5000 off-link next hops in one
summary line instead of one line per lease.  CPU is measured by bench/peers.py, not asserted here."""

from __future__ import annotations

import os
import subprocess
import time
from typing import Any, List, Tuple

import pytest

from tests.integration.netns import REPO, Agent, TestBed, etcdctl, put_config, wait_for

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
NETWORK = "10.0.0.0/8"
COUNT = 5000

WRITER = r"""
import json, sys
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, %(repo)r)
from pyflannel import etcdstore
store = etcdstore.connect([%(url)r], api="v3")
pairs = [line.split() for line in sys.stdin.read().splitlines() if line.strip()]
def put(pair):
    store.put(pair[0], json.dumps({"PublicIP": pair[1], "BackendType": "host-gw"}))
with ThreadPoolExecutor(16) as pool:
    list(pool.map(put, pairs))
"""


def leases(count: int, on_link: bool) -> List[Tuple[str, str]]:
    """``count`` (subnet, next hop) pairs: subnets 10.<i>.0/24 from 10.1.0.0; next hops in
    192.168.0.0/18 (on-link once the host has that prefix) or in 198.18.0.0/15 (never on-link)."""
    out = []
    for i in range(count):
        n = 256 + i  # skip 10.0.x.0
        subnet = "10.%d.%d.0/24" % (n // 256, n % 256)
        h = 2 + i
        hop = ("192.168.%d.%d" if on_link else "198.18.%d.%d") % (h // 256, h % 256)
        out.append((subnet, hop))
    return out


def write_leases(bed: TestBed, server: Any, pairs: List[Tuple[str, str]]) -> None:
    """Direct writes through the project's etcd facade, run inside the etcd namespace."""
    lines = "".join("%s/subnets/%s %s\n" % (PREFIX, s.replace("/", "-"), h) for s, h in pairs)
    python = os.path.join(REPO, ".venv", "bin", "python")
    subprocess.run(["ip", "netns", "exec", bed.etcd_ns, python, "-c", WRITER % {"repo": REPO, "url": server.url}],
                   input=lines, text=True, check=True, timeout=120)


def hostgw_routes(agent: Agent) -> int:
    out = agent.host.run("ip", "-4", "route", "show", "proto", "108", timeout=30).stdout
    return len(out.splitlines())


def not_on_link_lines(agent: Agent) -> List[str]:
    with open(agent.log, errors="replace") as f:
        return [ln for ln in f if "not on-link" in ln]


def test_5000_leases_on_link_and_off_link(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A"])
    server = bed_etcd(bed)
    (h1,) = bed.hosts
    h1.run("ip", "addr", "add", "192.168.0.1/18", "dev", "eth0")  # room for 5000 on-link next hops
    put_config(bed, server, PREFIX, {"Network": NETWORK, "SubnetLen": 24, "Backend": {"Type": "host-gw"}})
    on, off = leases(COUNT // 2, True), leases(COUNT, False)[COUNT // 2:]
    write_leases(bed, server, on + off)
    agent = Agent(h1, server.url, PREFIX, args=["--iface", "eth0"]).start(timeout=30)
    # every on-link lease gets its route
    wait_for(lambda: hostgw_routes(agent) >= len(on), 30, interval=1.0, what="%d host-gw routes" % len(on))
    assert hostgw_routes(agent) == len(on)
    # the 2500 off-link ones: one summary line, which stays one after several ticks
    lines = wait_for(lambda: not_on_link_lines(agent), 15, what="the not-on-link summary")
    time.sleep(16)  # three ticks of 5 s
    lines = not_on_link_lines(agent)
    assert len(lines) <= 2, lines[:5]
    assert "%d leases have next hops that are not on-link" % len(off) in lines[0], lines[0]
    assert agent.proc is not None and agent.proc.poll() is None
    # an off-link lease removed and a new on-link one added still work through the watch
    etcdctl(bed, server, "del", "%s/subnets/%s" % (PREFIX, off[0][0].replace("/", "-")))
    write_leases(bed, server, [("10.250.1.0/24", "192.168.63.250")])
    wait_for(lambda: hostgw_routes(agent) == len(on) + 1, 20, what="the added lease's route")
    assert len(not_on_link_lines(agent)) == len(lines)
