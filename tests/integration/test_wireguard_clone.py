"""A copied wireguard key file (a cloned VM image) must not take traffic from the node it was copied
from: real flanneld agents and wireguard-go in namespaces, a real etcd (v3), real packets.

* The clone starts last with a copy of h1's key file: it makes a fresh key before any device or
  lease of its own uses h1's (one warning naming h1), its peers accept its lease, and h2's traffic
  to h1 loses nothing while nothing meant for h1 shows up on the clone.
* Defense in depth on the peers: a host that does use h1's key (a plain wireguard-go here, as an
  agent without the check would) draws h2's endpoint for h1 to itself; h2's tick sets it back to
  the address h1's lease names and says so once.

Every traffic loop is bounded in count and time; all traffic stays between the bed's namespaces."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from typing import Any, List, Tuple

import pytest

from testbed.netns import (
    Agent,
    Host,
    TestBed,
    etcdctl,
    ping_pairs,
    private_mount,
    put_config,
    sh,
    wait_for,
    wait_peers,
)
from tests.integration.test_wireguard import (
    DEV,
    NETWORK,
    PREFIX,
    assert_mesh,
    diagnose,
    key_file,
    start,
    wg_agent,
    wg_dump,
)

pytestmark = [pytest.mark.integration]

PATTERN = "c0ffee42c0ffee42"  # ping payload of h2's traffic to h1: it must never show up on the clone
CLASH = "is already in the older lease"
ROAM = "which is not in its lease"


@pytest.fixture(autouse=True)
def _tools() -> None:
    for tool in ("wg", "wireguard-go", "tcpdump", "unshare", "nsenter", "timeout"):
        if not shutil.which(tool):
            pytest.fail("%s is missing: install wireguard-tools, wireguard-go and tcpdump (make deps)" % tool)


def public_of(path: str) -> str:
    with open(path) as f:
        private = f.read().strip()
    return sh("wg", "pubkey", input=private + "\n").stdout.strip()  # the key on a pipe, never in argv


def log_lines(agent: Agent, words: str) -> List[str]:
    """The lines of the agent's whole log (all its starts) holding ``words``."""
    with open(agent.log, errors="replace") as f:
        return [line for line in f.read().splitlines() if words in line]


def copy_key(src: Host, dst: Host) -> None:
    """What a cloned image does: the same key file on another host."""
    shutil.copyfile(key_file(src), key_file(dst))
    os.chmod(key_file(dst), 0o400)


def leases(bed: TestBed, server: Any) -> List[Tuple[str, dict]]:
    lines = etcdctl(bed, server, "get", "--prefix", PREFIX + "/subnets/").splitlines()
    return [(lines[i], json.loads(lines[i + 1])) for i in range(0, len(lines) - 1, 2)]


def capture(host: Host, name: str, expr: str, seconds: int) -> Tuple[subprocess.Popen, str]:
    """tcpdump on every interface of ``host`` (those made later too), bounded in time and count."""
    pcap = os.path.join(host.dir, name + ".pcap")
    errlog = os.path.join(host.dir, name + ".err")
    with open(errlog, "wb") as err:
        proc = subprocess.Popen(host.cmd("timeout", str(seconds), "tcpdump", "-i", "any", "-nn", "-U",
                                         "--immediate-mode", "-c", "5000", "-w", pcap, expr),
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    wait_for(lambda: "listening on" in open(errlog).read(), 10, what="tcpdump listening on %s" % host.ns)
    return proc, pcap


def finish(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def read_pcap(pcap: str, expr: str) -> List[str]:
    out = sh("tcpdump", "-nn", "-r", pcap, expr, check=False).stdout
    return [line for line in out.splitlines() if line.strip()]


def bounded_ping(host: Host, source: str, target: str, count: int, deadline: int) -> subprocess.Popen:
    """``count`` pings at 5/s from ``source`` to ``target`` (stops after ``deadline`` seconds), payload PATTERN."""
    return subprocess.Popen(host.cmd("ping", "-n", "-c", str(count), "-i", "0.2", "-w", str(deadline), "-p", PATTERN,
                                     "-I", source, target), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def two_nodes_up(testbed: Any, bed_etcd: Any) -> Tuple[Any, Any, List[Host], List[Any]]:
    """Three hosts on one segment, a wireguard network, agents on h1 and h2 reaching each other; h3 idle."""
    bed = testbed(["A", "A", "A"])
    server = bed_etcd(bed)
    put_config(bed, server, PREFIX, {"Network": NETWORK, "Backend": {"Type": "wireguard"}})
    agents = start([wg_agent(bed.hosts[0], server), wg_agent(bed.hosts[1], server)])
    assert_mesh(agents)
    return bed, server, bed.hosts, agents


def test_a_cloned_key_file_gets_a_fresh_key_and_steals_nothing(testbed: Any, bed_etcd: Any) -> None:
    bed, server, (h1, h2, h3), (a1, a2) = two_nodes_up(testbed, bed_etcd)
    pub1 = public_of(key_file(h1))
    copy_key(h1, h3)
    assert public_of(key_file(h3)) == pub1

    # every ICMP packet on every interface of the clone (its flannel-wg, once made, included)
    dump, pcap = capture(h3, "clone", "icmp", 90)
    # h2 -> h1 the whole time the clone starts: 5 packets a second for 15 s
    flow = bounded_ping(h2, a2.bridge_ip, a1.bridge_ip, 75, 25)
    a3 = wg_agent(h3, server)
    try:
        time.sleep(1.0)
        a3.start(wait=False)
        a3.wait_ready(40)
        # the clone sends to both peers at once (10 replies each within 20 s: its new key is accepted)
        failed = ping_pairs([(h3, a3.bridge_ip, a1.bridge_ip), (h3, a3.bridge_ip, a2.bridge_ip)], count=10,
                            deadline=20)
        out, _err = flow.communicate(timeout=60)
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait(5)
        finish(dump)
    # h2 -> h1 lost nothing, and nothing meant for h1 came out decrypted on the clone
    assert flow.returncode == 0 and " 0% packet loss" in out, out
    assert not read_pcap(pcap, "src net %s and dst net %s" % (a2.subnet, a1.subnet))
    assert not read_pcap(pcap, "dst net %s and not src net %s" % (a1.subnet, a3.subnet))
    with open(pcap, "rb") as f:
        assert bytes.fromhex(PATTERN * 2) not in f.read()
    # ... while the capture did see the clone's own pings on its flannel-wg
    echo = "src host %s and dst host %s and icmp[icmptype] == icmp-echo" % (a3.bridge_ip, a1.bridge_ip)
    mine = read_pcap(pcap, echo)
    assert len(mine) >= 10, mine
    assert not failed, failed
    wait_peers([a1, a2, a3], 30)

    # the clone said so in one line naming h1, and uses a key of its own
    clash = log_lines(a3, CLASH)
    assert len(clash) == 1, a3.logtext()
    assert clash[0].startswith("W") and pub1 in clash[0] and "%s of %s" % (a1.subnet, h1.address) in clash[0]
    pub3 = public_of(key_file(h3))
    assert pub3 != pub1 and pub3 in clash[0]
    assert oct(os.stat(key_file(h3)).st_mode & 0o777) == oct(0o400)
    # its lease carries the new key; h1's key is in h1's lease only
    published = {value["PublicIP"]: value["BackendData"]["PublicKey"] for _key, value in leases(bed, server)}
    assert published == {h1.address: pub1, h2.address: public_of(key_file(h2)), h3.address: pub3}, published
    # both peers took the clone's lease as a peer; h2 still has h1 at h1's address, never moved
    for agent in (a1, a2):
        row = wg_dump(agent)[pub3]
        assert row[2] == "%s:51820" % h3.address and row[3] == a3.subnet
    assert wg_dump(a2)[pub1][2] == "%s:51820" % h1.address
    for agent in (a1, a2):
        assert not log_lines(agent, ROAM) and not log_lines(agent, CLASH)
        assert not log_lines(agent, "ignoring the lease")  # the clone's lease was never refused: valid

    # a restart of the clone keeps its new key (its own lease has it): no second warning
    a3.stop()
    a3.start()
    assert public_of(key_file(h3)) == pub3
    assert len(log_lines(a3, CLASH)) == 1


def rogue_wireguard(host: Host, private_path: str, peer_pub: str, peer_at: str, inner: str,
                    route: str) -> Tuple[subprocess.Popen, List[str]]:
    """A plain wireguard-go device ``wgclone`` on ``host`` using the private key in ``private_path`` (given
    on a pipe), one peer; returns its process and the nsenter prefix for commands in its namespaces."""
    proc = host.popen(*private_mount(os.path.join(host.dir, "wgrun"), "/run/wireguard"), "wireguard-go", "-f",
                      "wgclone", log=os.path.join(host.dir, "wgclone.log"))
    ns = ["nsenter", "-t", str(proc.pid), "-m", "-n"]
    wait_for(lambda: sh(*ns, "wg", "show", "wgclone", check=False).returncode == 0, 10, what="wgclone's socket")
    with open(private_path) as f:
        sh(*ns, "wg", "set", "wgclone", "private-key", "/dev/stdin", "listen-port", "51820", "peer", peer_pub,
           "endpoint", peer_at, "allowed-ips", route, input=f.read())
    sh(*ns, "ip", "addr", "add", inner, "dev", "wgclone")
    sh(*ns, "ip", "link", "set", "wgclone", "up")
    sh(*ns, "ip", "route", "add", route, "dev", "wgclone")
    return proc, ns


def test_a_peer_endpoint_drawn_away_by_a_cloned_key_is_set_back(testbed: Any, bed_etcd: Any) -> None:
    _bed, _server, (h1, h2, h3), (a1, a2) = two_nodes_up(testbed, bed_etcd)
    pub1, pub2 = public_of(key_file(h1)), public_of(key_file(h2))
    home = "%s:51820" % h1.address
    assert wg_dump(a2)[pub1][2] == home
    # h3 uses h1's key with no agent and no check at all, and sends to h2 from an address of h1's subnet
    inner = a1.subnet.replace(".0/24", ".250")
    clone, ns = rogue_wireguard(h3, key_file(h1), pub2, "%s:51820" % h2.address, inner + "/32", a2.subnet)
    rogue = subprocess.Popen([*ns, "ping", "-n", "-c", "50", "-i", "0.2", "-w", "12", "-I", inner, a2.bridge_ip],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # h2 roams h1's endpoint to the clone, and its next tick sets it back, saying so once
        wait_for(lambda: log_lines(a2, ROAM), 20, what="h2 setting h1's endpoint back")
        _out, _err = rogue.communicate(timeout=30)
    finally:
        if rogue.poll() is None:
            rogue.kill()
            rogue.wait(5)
    lines = log_lines(a2, ROAM)
    assert len(lines) == 1, "\n".join(lines)  # the clone kept sending for 10 s: still one warning
    assert lines[0].startswith("W") and pub1 in lines[0] and "moved to %s:51820" % h3.address in lines[0]
    assert "set back to %s" % home in lines[0]
    # the clone goes away: h1's endpoint stays h1's and h2 -> h1 works (the reset made h2's next packet
    # start a fresh handshake with h1; while a clone lives, every handshake it makes draws h2 again
    # until the next tick: WireGuard cannot tell two holders of one key apart)
    os.killpg(clone.pid, signal.SIGTERM)
    clone.wait(10)
    wait_for(lambda: wg_dump(a2)[pub1][2] == home, 10, what="h1's endpoint back at %s" % home)
    failed = ping_pairs([(h2, a2.bridge_ip, a1.bridge_ip)], count=3, deadline=45)
    assert not failed, "%s\n%s\n%s\n%s" % (failed, diagnose(a1), diagnose(a2), a2.logtext()[-3000:])
    assert wg_dump(a2)[pub1][2] == home
    assert a2.metrics().get("flannel_wireguard_endpoint_resets_total", 0) >= 1
    assert DEV in a2.host.links()
