"""EnableNFTables end to end: real flanneld agents in network namespaces (testbed/netns.py),
a real etcd, the real ``nft`` — Go flanneld v0.25+'s tables, chains and rules in each host's own
namespace, never in the machine's; iptables left alone; packets between and out of the docker0
stand-ins; repair, a lease change, clean-up; a bad value; the flannel_network module's option."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from pyflannel import etcdstore
from testbed.netns import REPO, Agent, Host, TestBed, etcdctl, ping_all, put_config, wait_for
from tests.ansible_runner import Play, collection_root

pytestmark = [pytest.mark.integration]

PREFIX = "/coreos.com/network"
NETWORK, NETWORK6 = "10.100.0.0/16", "fc00:100::/48"
CONFIG = {"Network": NETWORK, "EnableNFTables": True, "Backend": {"Type": "vxlan"}}
DUAL = dict(CONFIG, EnableIPv6=True, IPv6Network=NETWORK6)
PYTHON = os.path.join(REPO, ".venv", "bin", "python")


def _need_nft() -> None:
    if not shutil.which("nft"):
        pytest.fail("nft is missing: run `make deps` (Debian package nftables)")


# -- what the kernel holds ---------------------------------------------------------------------------------
def go_table(version: int, network: str, subnet: str) -> List[str]:
    """Go flanneld's table for one family, as the lines of ``nft list table`` (stripped, no empty lines)."""
    f, table, multicast = ("ip", "flannel-ipv4", "224.0.0.0/4") if version == 4 else ("ip6", "flannel-ipv6", "ff00::/8")
    c, p = network, subnet
    return [
        "table %s %s {" % (f, table),
        "chain forward {",
        "type filter hook forward priority filter; policy accept;",
        "%s saddr %s accept" % (f, c),
        "%s daddr %s accept" % (f, c),
        "}",
        "chain postrtg {",
        "type nat hook postrouting priority srcnat; policy accept;",
        "meta mark 0x4000 return",
        "%s saddr %s %s daddr %s return" % (f, p, f, c),
        "%s saddr %s %s daddr %s return" % (f, c, f, p),
        "%s saddr != %s %s daddr %s return" % (f, p, f, c),
        "%s saddr %s %s daddr != %s masquerade fully-random" % (f, c, f, multicast),
        "%s saddr != %s %s daddr %s masquerade fully-random" % (f, c, f, c),
        "}",
        "}",
    ]


def table(host: Host, version: int) -> Optional[List[str]]:
    """``nft list table`` of flannel's table of one family in the host's namespace (None: not there)."""
    family, name = ("ip", "flannel-ipv4") if version == 4 else ("ip6", "flannel-ipv6")
    proc = host.run("nft", "list", "table", family, name, check=False)
    if proc.returncode != 0:
        assert "No such file or directory" in proc.stderr, proc.stderr
        return None
    lines = [line.strip() for line in proc.stdout.splitlines() if line.strip()]
    return [re.sub(r"0x0+([0-9a-f])", r"0x\1", line) for line in lines]  # nft prints the mark as 0x00004000


def tables(host: Host) -> List[str]:
    """Every nftables table in the host's namespace (iptables-nft would add "ip nat", "ip filter" ...)."""
    return sorted(line.strip() for line in host.run("nft", "list", "tables").stdout.splitlines() if line.strip())


def assert_no_iptables(host: Host) -> None:
    for tool in ("iptables-save", "ip6tables-save"):
        out = host.run(tool).stdout
        assert "FLANNEL" not in out and "flanneld" not in out, out


def start(bed: TestBed, server: Any, config: Dict[str, Any], args: Optional[List[str]] = None,
          hosts: Optional[List[Host]] = None, env: Optional[Dict[str, str]] = None) -> List[Agent]:
    _need_nft()
    put_config(bed, server, PREFIX, config)
    agents = [Agent(host, server.url, PREFIX, ["--ip-masq", *(args or [])], env=env) for host in hosts or bed.hosts]
    for agent in agents:
        agent.start(wait=False)
    for agent in agents:
        agent.wait_ready()
    return agents


def assert_mesh(agents: List[Agent], versions: tuple) -> None:
    failed = ping_all(agents, versions=versions)
    lines = "\n".join("%s: %s" % kv for kv in failed.items())
    assert not failed, "pings failed:\n%s\n%s" % (lines, agents[0].logtext()[-3000:])


# A datagram listener that prints the source address of the first datagram (at most ``seconds`` long).
LISTEN = r"""
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(float(sys.argv[3]))
try:
    print(s.recvfrom(512)[1][0])
except socket.timeout:
    print("nothing")
"""

# Ten datagrams at most, 0.2 s apart, from one address to another.
SEND = r"""
import socket, sys, time
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0))
for _ in range(10):
    s.sendto(b"nft", (sys.argv[2], int(sys.argv[3])))
    time.sleep(0.2)
"""


def source_seen(sender: Host, source: str, receiver_ns: str, target: str, port: int = 47001) -> str:
    """The source address ``receiver_ns`` sees on a datagram ``sender`` sends from ``source`` to ``target``."""
    listener = subprocess.Popen(["ip", "netns", "exec", receiver_ns, sys.executable, "-c", LISTEN, target, str(port),
                                 "5"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        sender.run(sys.executable, "-c", SEND, source, target, str(port), timeout=15)
        out, _err = listener.communicate(timeout=15)
    finally:
        if listener.poll() is None:
            listener.kill()
            listener.wait(5)
    return out.strip()


# -- the tests -------------------------------------------------------------------------------------------
def test_dual_stack_go_tables_no_iptables_traffic_in_and_out(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A"], ipv6=True)
    server = bed_etcd(bed)
    agents = start(bed, server, DUAL)
    for agent in agents:
        host = agent.host
        assert table(host, 4) == go_table(4, NETWORK, agent.subnet_of(4))
        assert table(host, 6) == go_table(6, NETWORK6, agent.subnet_of(6))
        # nothing else: iptables (the nf_tables variant here) would have made tables of its own
        assert tables(host) == ["table ip flannel-ipv4", "table ip6 flannel-ipv6"]
        assert_no_iptables(host)
        assert "EnableNFTables" in agent.logtext()  # the config line names the mode
    assert_mesh(agents, (4, 6))
    a, b = agents
    # between the stand-ins the source stays (the return rules); out of the network it is masqueraded
    # to the host's own address (the router has no route back to the flannel networks)
    for version, router in ((4, "172.30.1.254"), (6, "fd00:30:1::fe")):
        assert source_seen(a.host, a.bridge(version), b.host.ns, b.bridge(version)) == a.bridge(version)
        host_address = a.host.address if version == 4 else a.host.address6
        assert source_seen(a.host, a.bridge(version), bed.router, router) == host_address
    # nothing was rewritten while the tables were right
    time.sleep(6)
    for agent in agents:
        assert agent.metrics().get("flannel_iptables_repairs_total") == 0.0
        assert agent.logtext().count("written: masquerade rules") == 2  # once per family, at start


def test_repair_lease_change_and_clean_up(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A", "A"])
    server = bed_etcd(bed)
    agents = start(bed, server, CONFIG, ["--iptables-resync", "1"])
    a, b = agents
    want = go_table(4, NETWORK, a.subnet)
    assert table(a.host, 4) == want and table(a.host, 6) is None  # IPv4 network: no IPv6 table

    # someone deletes the table, then one rule: both come back as they were
    a.host.run("nft", "delete", "table", "ip", "flannel-ipv4")
    wait_for(lambda: table(a.host, 4) == want, 15, what="flannel-ipv4 restored")
    listing = a.host.run("nft", "-a", "list", "chain", "ip", "flannel-ipv4", "postrtg").stdout
    handle = re.search(r"ip saddr %s ip daddr %s return # handle (\d+)" % (re.escape(a.subnet), re.escape(NETWORK)),
                       listing)
    assert handle, listing
    a.host.run("nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", handle.group(1))
    assert table(a.host, 4) != want
    wait_for(lambda: table(a.host, 4) == want, 15, what="the deleted rule restored")
    wait_for(lambda: a.metrics().get("flannel_iptables_repairs_total", 0) >= 2, 10, what="two repairs counted")
    assert a.logtext().count("nftables flannel-ipv4 rules were missing and have been restored") >= 2
    assert tables(a.host) == ["table ip flannel-ipv4"]
    assert_no_iptables(a.host)
    assert_mesh(agents, (4,))

    # a clean stop keeps the rules (like the datapath); a new lease at the next start rewrites them
    old = a.subnet
    assert a.stop() == 0
    assert table(a.host, 4) == want
    etcdctl(bed, server, "del", PREFIX + "/subnets/" + old.replace("/", "-"))
    new = next("10.100.%d.0/24" % n for n in range(77, 99) if "10.100.%d.0/24" % n != b.subnet)
    env = Path(a.subnet_file).read_text().replace("FLANNEL_SUBNET=%s" % old.replace(".0/24", ".1/24"),
                                                  "FLANNEL_SUBNET=%s" % new.replace(".0/24", ".1/24"))
    Path(a.subnet_file).write_text(env)  # the subnet file's subnet is taken when no lease names this node
    os.utime(a.subnet_file, (time.time() - 60, time.time() - 60))  # not "fresh": readiness is the agent's write
    a.start()
    assert a.subnet == new
    assert table(a.host, 4) == go_table(4, NETWORK, new)
    assert_mesh(agents, (4,))

    # clean-up (what the teardown does once the agent is stopped) removes the table, and only it
    for agent in agents:
        assert agent.stop() == 0
    code = ("from pyflannel.nftables import remove_table; "
            "print(remove_table(4), remove_table(6), remove_table(4))")
    assert a.host.run(PYTHON, "-c", code).stdout.split() == ["True", "False", "False"]
    assert tables(a.host) == []
    assert table(b.host, 4) == go_table(4, NETWORK, b.subnet)  # another host's namespace: untouched


def test_bad_value_is_one_line_and_changes_nothing(testbed: Any, bed_etcd: Any) -> None:
    bed = testbed(["A"])
    server = bed_etcd(bed)
    _need_nft()
    host = bed.hosts[0]
    bad = dict(CONFIG, EnableNFTables="yes")
    line = 'invalid network config: EnableNFTables="yes": must be true or false'
    put_config(bed, server, PREFIX, bad)
    agent = Agent(host, server.url, PREFIX, ["--ip-masq"], env={"PYFLANNEL_CONFIG_POLL": "1"})
    agent.start(wait=False)
    wait_for(lambda: line in agent.logtext(), 20, what="the config error")
    time.sleep(4)  # retried every second: still one line
    errors = [text for text in agent.logtext().splitlines() if line in text]
    assert len(errors) == 1 and errors[0].startswith("E"), errors
    assert agent.proc is not None and agent.proc.poll() is None  # waits for a good config
    assert not os.path.exists(agent.subnet_file)
    assert etcdctl(bed, server, "get", "--prefix", "--keys-only", PREFIX + "/subnets/").split() == []
    assert tables(host) == []
    assert_no_iptables(host)

    # fixed: the agent goes on; made bad again while it runs: one warning, the table stays as it is
    put_config(bed, server, PREFIX, CONFIG)
    agent.wait_ready()
    want = go_table(4, NETWORK, agent.subnet)
    assert table(host, 4) == want
    put_config(bed, server, PREFIX, bad)
    wait_for(lambda: agent.logtext().count(line) == 2, 20, what="the running agent's note")
    time.sleep(3)
    assert agent.logtext().count(line) == 2
    assert table(host, 4) == want and tables(host) == ["table ip flannel-ipv4"]
    assert_no_iptables(host)
    assert agent.proc is not None and agent.proc.poll() is None


def test_switch_from_iptables_needs_a_restart(testbed: Any, bed_etcd: Any) -> None:
    """EnableNFTables switched on under a running agent: one warning asking for a restart; after it the
    rules are in nftables (iptables mode before: the iptables chains, no flannel tables) and the iptables
    chains are gone; switched off again, the restart puts the chains back and deletes the table."""
    bed = testbed(["A"])
    server = bed_etcd(bed)
    host = bed.hosts[0]
    plain = {k: v for k, v in CONFIG.items() if k != "EnableNFTables"}
    [agent] = start(bed, server, plain, env={"PYFLANNEL_CONFIG_POLL": "1"})
    assert "FLANNEL-POSTRTG" in host.run("iptables-save", "-t", "nat").stdout
    assert table(host, 4) is None
    put_config(bed, server, PREFIX, CONFIG)
    note = wait_for(lambda: [ln for ln in agent.logtext().splitlines() if "EnableNFTables" in ln and "restart" in ln],
                    20, what="the restart note")
    assert len(note) == 1 and note[0].startswith("W"), note
    assert table(host, 4) is None  # nothing changes until the restart
    assert agent.stop() == 0
    agent.start()
    assert table(host, 4) == go_table(4, NETWORK, agent.subnet)
    # the iptables mode's chains and jumps are gone with the restart: no second masquerade
    nat, flt = (host.run("iptables-save", "-t", t).stdout for t in ("nat", "filter"))
    assert "FLANNEL" not in nat + flt, nat + flt
    assert "removed the iptables rules an earlier iptables mode left" in agent.logtext()
    # and back: iptables mode deletes the nftables table at its start
    put_config(bed, server, PREFIX, plain)
    assert agent.stop() == 0
    agent.start()
    assert table(host, 4) is None
    assert "FLANNEL-POSTRTG" in host.run("iptables-save", "-t", "nat").stdout


def test_module_option_check_diff_idempotent_restart(tmp_path: Path, etcd_server: Any, etcd_prefix: str) -> None:
    collections = collection_root(tmp_path / "collections")
    (tmp_path / "tmp").mkdir()
    defaults = {"endpoints": [etcd_server.url], "api": "v3", "prefix": etcd_prefix, "timeout": 3}
    play = Play(collections, tmp_path, defaults)
    base = {"network": "10.1.0.0/16", "backend": {"type": "vxlan"}}
    play.add("plain", "flannel_network", base)
    play.add("check", "flannel_network", dict(base, enable_nftables=True), check=True)
    play.add("bad", "flannel_network", dict(base, enable_nftables="maybe"))
    play.add("after_bad", "flannel_network", base, check=True)
    play.add("on", "flannel_network", dict(base, enable_nftables=True))
    play.add("again", "flannel_network", dict(base, enable_nftables=True))
    play.add("off", "flannel_network", base)
    r = play.run()
    assert r["plain"]["changed"] is True and "EnableNFTables" not in json.loads(r["plain"]["stored"])
    check = r["check"]
    assert check["changed"] is True and check["restart_agents"] is True and check["restart_keys"] == ["EnableNFTables"]
    assert json.loads(check["diff"]["after"])["EnableNFTables"] is True
    assert "EnableNFTables" not in check["diff"]["before"]
    bad = r["bad"]
    assert bad["failed"] is True and "enable_nftables" in bad["msg"] and "\n" not in bad["msg"]
    assert r["after_bad"]["changed"] is False  # neither check mode nor the bad value wrote anything
    on = r["on"]
    assert on["changed"] is True and on["config"]["EnableNFTables"] is True
    assert json.loads(on["stored"]) == {"Network": "10.1.0.0/16", "EnableNFTables": True, "Backend": {"Type": "vxlan"}}
    assert r["again"]["changed"] is False and r["again"]["restart_agents"] is False
    off = r["off"]
    assert off["changed"] is True and off["restart_keys"] == ["EnableNFTables"]
    assert "EnableNFTables" not in off["config"]
    store = etcdstore.connect([etcd_server.url], api="v3")
    try:
        kv = store.get(etcd_prefix + "/config")
        assert kv is not None and json.loads(kv.value) == {"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}
    finally:
        store.close()
