"""Lease churn (issue 18): 200 other nodes' leases put and deleted in a loop against one real flanneld
(host-gw) in a namespace.  The agent coalesces what the watch delivers (the last event per lease), so
once the churn stops its routes equal etcd's leases within a few seconds, and its log holds a summary
line a minute instead of a line per event.  The churn is bounded in operations and time."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from typing import Any, Set

import pytest

from testbed.netns import REPO, Agent, etcdctl, put_config, wait_for

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
LEASES = 200
CHURN_SECONDS = 20
MAX_OPS = 60000
HOSTGW_PROTO = "108"  # the route protocol host-gw tags its routes with (the catalogue's 0x6C)

# Runs in the etcd namespace: LEASES host-gw leases (10.100.<1..200>.0/24, next hops on segment A) put
# or deleted at random by 8 threads until the time or the operation budget is spent; prints the
# number of operations.
CHURN = r"""
import json, random, sys, threading, time
sys.path.insert(0, %(repo)r)
from pyflannel import etcdstore
store = etcdstore.connect([%(url)r], api="v3")
prefix, leases, seconds, max_ops = %(prefix)r, %(leases)d, %(seconds)f, %(max_ops)d
deadline = time.monotonic() + seconds
ops = [0]
lock = threading.Lock()
def work(seed):
    rnd = random.Random(seed)
    while time.monotonic() < deadline:
        with lock:
            if ops[0] >= max_ops:
                return
            ops[0] += 1
        i = rnd.randrange(leases)
        key = "%%s/subnets/10.100.%%d.0-24" %% (prefix, 1 + i)
        if rnd.random() < 0.5:
            store.put(key, json.dumps({"PublicIP": "172.30.1.%%d" %% (30 + i), "BackendType": "host-gw"}))
        else:
            store.delete(key)
threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(ops[0])
"""


def etcd_subnets(bed: Any, server: Any, agent: Agent) -> Set[str]:
    """The other nodes' leases in etcd (the agent's own has no route)."""
    keys = etcdctl(bed, server, "get", "--prefix", "--keys-only", PREFIX + "/subnets/").split()
    return {k.rsplit("/", 1)[1].replace("-", "/") for k in keys if k.strip()} - {agent.subnet}


def route_subnets(agent: Agent) -> Set[str]:
    return {r["dst"] for r in agent.host.ip_json("-4", "route", "show", "proto", HOSTGW_PROTO)}


def full_log(agent: Agent) -> str:
    with open(agent.log, errors="replace") as f:
        return f.read()


def test_churn_of_200_leases_settles_within_seconds(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A"])
    server = bed_etcd(bed)
    # the agent's own lease comes from 10.100.250.0 and up: the churn uses 10.100.1-200
    put_config(bed, server, PREFIX, {"Network": "10.100.0.0/16", "SubnetLen": 24, "SubnetMin": "10.100.250.0",
                                     "Backend": {"Type": "host-gw"}})
    # a few leases that stay through the churn
    for i in random.sample(range(LEASES), 5):
        etcdctl(bed, server, "put", "%s/subnets/10.100.%d.0-24" % (PREFIX, 1 + i),
                json.dumps({"PublicIP": "172.30.1.%d" % (30 + i), "BackendType": "host-gw"}))
    agent = Agent(bed.hosts[0], server.url, PREFIX, ["--etcd-api", "v3"])
    agent.start()
    wait_for(lambda: route_subnets(agent) == etcd_subnets(bed, server, agent), 15, what="routes of the first leases")
    before = len(full_log(agent).splitlines())

    began = time.monotonic()
    code = CHURN % {"repo": REPO, "url": server.url, "prefix": PREFIX, "leases": LEASES, "seconds": CHURN_SECONDS,
                    "max_ops": MAX_OPS}
    proc = subprocess.run(["ip", "netns", "exec", bed.etcd_ns, os.path.join(REPO, ".venv", "bin", "python"), "-c",
                           code], capture_output=True, text=True, timeout=CHURN_SECONDS + 60, check=True)
    ops = int(proc.stdout.strip())
    stopped = time.monotonic()
    want = etcd_subnets(bed, server, agent)
    wait_for(lambda: route_subnets(agent) == want, 15, 0.1, "routes == etcd's %d leases after the churn" % len(want))
    settled = time.monotonic() - stopped
    time.sleep(2)
    assert route_subnets(agent) == etcd_subnets(bed, server, agent) == want
    assert agent.proc is not None and agent.proc.poll() is None, agent.logtext()
    log = full_log(agent).splitlines()[before:]
    info = [line for line in log if line.startswith("I")]
    ours = [line for line in info if " agent.py:" in line]
    print("churn: %d operations in %.1f s (%.0f/s), %d leases at the end; routes equal etcd %.2f s after the churn; "
          "%d log lines (%d INFO: %d from agent.py); metrics: %s\n%s"
          % (ops, stopped - began, ops / (stopped - began), len(want), settled, len(log), len(info), len(ours),
             {k: v for k, v in agent.metrics().items() if "lease_events" in k or "remote_leases" in k},
             "\n".join(log[:12] + (["..."] if len(log) > 12 else []))))
    assert ops >= 1000, ops  # it was churn
    assert settled <= 5, settled
    assert len(ours) <= 3, "\n".join(ours)
    # every INFO line, the datapath's included (a route per lease event is a debug line): a handful in all
    assert len(info) <= 5, "\n".join(info)
    assert not [line for line in log if line[:1] in ("E", "W")], "\n".join(log)
