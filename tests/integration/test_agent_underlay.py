"""The underlay addresses a running agent chose at start (issue 18): when one leaves the interface the
agent says so once (WARNING: other nodes reach this one at it), and once more when it is back (INFO);
IPv4 and IPv6, on a real flanneld in a dual-stack namespace."""

from __future__ import annotations

import time
from typing import Any, List

import pytest

from testbed.netns import SEGMENTS, Agent, put_config, wait_for

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
TICK = 5  # the agent checks every tick


def lines(agent: Agent, text: str) -> List[str]:
    with open(agent.log, errors="replace") as f:
        return [line for line in f.read().splitlines() if text in line]


def test_underlay_address_gone_and_back_logged_once_each(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A"], ipv6=True)
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": "10.100.0.0/16", "EnableIPv6": True, "IPv6Network": "fd10:100::/48",
                                     "Backend": {"Type": "alloc"}})
    host = bed.hosts[0]
    agent = Agent(host, server.url, PREFIX, ["--etcd-api", "v3"]).start()
    assert host.address6 is not None

    gone6 = "the IPv6 address %s is gone from eth0" % host.address6
    host.run("ip", "-6", "addr", "del", host.address6 + "/64", "dev", "eth0")
    wait_for(lambda: lines(agent, gone6), 3 * TICK, what="the IPv6 warning")
    time.sleep(2 * TICK)  # more ticks: no repeat
    assert [line[0] for line in lines(agent, gone6)] == ["W"]
    host.run("ip", "-6", "addr", "add", host.address6 + "/64", "dev", "eth0", "nodad")
    back6 = "the IPv6 address %s is back on eth0" % host.address6
    wait_for(lambda: lines(agent, back6), 3 * TICK, what="the IPv6 address back")
    assert [line[0] for line in lines(agent, back6)] == ["I"]

    # IPv4 (the default route and etcd's reachability go with it while it is away)
    host.run("ip", "-4", "addr", "del", host.address + "/24", "dev", "eth0")
    gone4 = "the IPv4 address %s is gone from eth0" % host.address
    wait_for(lambda: lines(agent, gone4), 3 * TICK, what="the IPv4 warning")
    host.run("ip", "-4", "addr", "add", host.address + "/24", "dev", "eth0")
    host.run("ip", "-4", "route", "replace", "default", "via", "%s.254" % SEGMENTS["A"])
    wait_for(lambda: lines(agent, "the IPv4 address %s is back on eth0" % host.address), 3 * TICK,
             what="the IPv4 address back")
    time.sleep(TICK + 1)
    assert len(lines(agent, gone4)) == 1 and len(lines(agent, gone6)) == 1
    assert agent.proc is not None and agent.proc.poll() is None, agent.logtext()
    assert agent.stop() == 0
