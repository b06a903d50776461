"""Thousands of peers: 5000 host-gw leases in a real etcd, one real agent.

The agent must become ready, program every on-link route, and report 5000 off-link next hops in one
summary line instead of one line per lease.  CPU is measured by bench/peers.py, not asserted here."""

from __future__ import annotations

import time
from typing import Any, List

import pytest

from testbed.netns import Agent, etcdctl, hostgw_leases, put_config, wait_for, write_leases

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
NETWORK = "10.0.0.0/8"
COUNT = 5000


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
    on, off = hostgw_leases(COUNT // 2, True), hostgw_leases(COUNT, False)[COUNT // 2:]
    write_leases(bed, server, PREFIX, on + off)
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
    write_leases(bed, server, PREFIX, [("10.250.1.0/24", "192.168.63.250")])
    wait_for(lambda: hostgw_routes(agent) == len(on) + 1, 20, what="the added lease's route")
    assert len(not_on_link_lines(agent)) == len(lines)
