"""A flood of slow clients on /healthz must not starve the agent (issue 18): a real flanneld (host-gw)
in a namespace, started under systemd's default limit of 1024 open files (``prlimit``), and 1,100
clients that connect to its health port and then send half a request or nothing at all.

While the flood holds, the agent keeps few descriptors, a lease written by another node becomes a
route, and a flushed FLANNEL-FWD chain is put back; afterwards /healthz answers at once and the log
grew by a few lines, not one per client.  Traffic stays inside the test's own namespace (loopback);
the flood is bounded in clients, connection attempts and time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List

import pytest

from testbed.netns import Agent, etcdctl, put_config, wait_for

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
CLIENTS = 1100
FLOOD_SECONDS = 40  # the flood's upper bound; the test stops it as soon as its checks are done
NOFILE = 1024  # systemd's default for a service
OTHER_SUBNET = "10.100.77.0/24"

# Runs inside the agent's namespace: CLIENTS sockets to 127.0.0.1:<port>, half of them send the start
# of a request and stop, half send nothing.  A socket the server closes is opened again, until
# MAX_CONNECTS attempts or the deadline or a line on stdin ("stop").  Prints one JSON line of counts.
FLOOD = r"""
import json, os, resource, select, selectors, socket, sys, time
port, clients, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
resource.setrlimit(resource.RLIMIT_NOFILE, (clients + 512, clients + 512))
MAX_CONNECTS = clients * 20
sel = selectors.DefaultSelector()
stats = {"connects": 0, "closed_by_server": 0, "max_open": 0}
def open_one(i):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    stats["connects"] += 1
    sel.register(s, selectors.EVENT_WRITE, (i, "connecting"))
sel.register(sys.stdin, selectors.EVENT_READ, (None, "stdin"))
for i in range(clients):
    open_one(i)
print("flooding", flush=True)
deadline = time.monotonic() + seconds
stop = False
while not stop and time.monotonic() < deadline:
    for key, mask in sel.select(timeout=0.5):
        i, state = key.data
        if state == "stdin":
            stop = True
            break
        s = key.fileobj
        if state == "connecting":
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
                sel.unregister(s); s.close()
                if stats["connects"] < MAX_CONNECTS:
                    open_one(i)
                continue
            if i % 2:
                try:
                    s.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
                except OSError:
                    pass
            sel.modify(s, selectors.EVENT_READ, (i, "open"))
        else:
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                stats["closed_by_server"] += 1
                sel.unregister(s); s.close()
                if stats["connects"] < MAX_CONNECTS:
                    open_one(i)
    stats["max_open"] = max(stats["max_open"], len(sel.get_map()) - 1)
print(json.dumps(stats), flush=True)
"""


def full_log(agent: Agent) -> str:
    with open(agent.log, errors="replace") as f:
        return f.read()


def fd_count(pid: int) -> int:
    return len(os.listdir("/proc/%d/fd" % pid))


def threads(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def nofile_limit(pid: int) -> int:
    with open("/proc/%d/limits" % pid) as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    return 0


def forward_rules(agent: Agent) -> List[str]:
    out = agent.host.run("iptables-save", "-t", "filter").stdout
    return [line for line in out.splitlines() if line.startswith("-A FLANNEL-FWD")]


def healthz(agent: Agent, timeout: int = 3) -> Dict[str, Any]:
    proc = agent.host.run("curl", "-sf", "-m", str(timeout), "http://127.0.0.1:%d/healthz" % agent.healthz_port,
                          check=False, timeout=timeout + 10)
    return json.loads(proc.stdout) if proc.returncode == 0 and proc.stdout else {}


def test_healthz_flood_under_1024_open_files(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": "10.100.0.0/16", "SubnetLen": 24, "SubnetMin": "10.100.200.0",
                                     "Backend": {"Type": "host-gw"}})
    agent = Agent(bed.hosts[0], server.url, PREFIX, ["--etcd-api", "v3"],
                  wrap=["prlimit", "--nofile=%d:%d" % (NOFILE, NOFILE), "--"])
    agent.start()
    assert agent.proc is not None
    pid = agent.proc.pid  # ip netns exec and prlimit exec: this is flanneld itself
    assert nofile_limit(pid) == NOFILE
    wait_for(lambda: healthz(agent).get("status") == "ok", 20, what="/healthz ok before the flood")
    assert forward_rules(agent)
    fds_before, threads_before = fd_count(pid), threads(pid)
    log_before = len(full_log(agent).splitlines())

    flood = subprocess.Popen(agent.host.cmd(sys.executable, "-c", FLOOD, str(agent.healthz_port), str(CLIENTS),
                                            str(FLOOD_SECONDS)),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    agent.host.procs.append(flood)
    try:
        assert flood.stdout is not None and flood.stdout.readline().strip() == "flooding", flood.stderr
        started = time.monotonic()
        samples: List[int] = []
        thread_samples: List[int] = []

        def sample() -> None:
            samples.append(fd_count(pid))
            thread_samples.append(threads(pid))

        def sampled(predicate: Any) -> Any:
            def check() -> Any:
                sample()
                return predicate()
            return check

        time.sleep(2)  # let the flood build up
        # another node's lease appears in etcd: it must become a route while the flood holds
        written = time.monotonic()
        etcdctl(bed, server, "put", PREFIX + "/subnets/" + OTHER_SUBNET.replace("/", "-"),
                json.dumps({"PublicIP": "172.30.1.50", "BackendType": "host-gw"}))
        put_took = time.monotonic() - written
        wait_for(sampled(lambda: any(r["dst"] == OTHER_SUBNET and r.get("gateway") == "172.30.1.50"
                                     for r in agent.host.routes())), 15, 0.2, "the new lease's route")
        route_after = time.monotonic() - written
        # iptables repair during the flood (iptables-restore needs descriptors too)
        agent.host.run("iptables", "-F", "FLANNEL-FWD")
        flushed = time.monotonic()
        wait_for(sampled(lambda: len(forward_rules(agent)) >= 2), 20, 0.2, "FLANNEL-FWD restored")
        repair_after = time.monotonic() - flushed
        while time.monotonic() - started < 12:  # hold the flood a while longer, sampling
            sample()
            time.sleep(0.2)
        assert flood.poll() is None, "the flood ended early: %s" % flood.stderr.read()
        during = healthz(agent, timeout=1)  # may or may not get a slot: it must not hang or break anything
    finally:
        if flood.poll() is None:
            try:
                assert flood.stdin is not None
                flood.stdin.write("stop\n")
                flood.stdin.flush()
            except OSError:
                pass
        out, _err = flood.communicate(timeout=30)
    stats = json.loads(out.strip().splitlines()[-1])
    ended = time.monotonic()
    wait_for(lambda: healthz(agent).get("status") == "ok", 10, 0.2, "/healthz ok after the flood")
    answer_after = time.monotonic() - ended
    time.sleep(1)
    log = full_log(agent).splitlines()[log_before:]
    print("flood: %s; agent fds before %d, max %d (limit %d); threads before %d, max %d; "
          "route %.2f s after the put began (etcdctl took %.2f s); FLANNEL-FWD back after %.1f s; "
          "/healthz during the flood: %s, %.1f s after it; %d log lines:\n%s"
          % (stats, fds_before, max(samples), NOFILE, threads_before, max(thread_samples), route_after,
             put_took, repair_after, "answered" if during else "waiting (all slots held)", answer_after, len(log),
             "\n".join(log)))
    assert agent.proc.poll() is None, agent.logtext()
    assert stats["max_open"] >= CLIENTS - 10, stats  # the flood did hold its clients open
    assert max(samples) <= fds_before + 40, (samples, fds_before)  # 16 connections at most, plus slack
    assert max(thread_samples) <= threads_before + 20, thread_samples
    assert len(log) <= 10, "\n".join(log)
    assert not [line for line in log if "Traceback" in line or "Too many open files" in line], "\n".join(log)
    assert any(r["dst"] == OTHER_SUBNET for r in agent.host.routes())
