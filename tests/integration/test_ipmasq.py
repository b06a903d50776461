"""ip-masq/forward rules through real iptables-restore — inside a throw-away network namespace, never
in the machine's own tables."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from typing import Any

import pytest

from testbed.netns import REPO, sh

pytestmark = [pytest.mark.integration]

SCRIPT = r"""
import ipaddress, json, subprocess, sys
from pyflannel.ipmasq import IPTables
steps = []
def save():
    return subprocess.run(["iptables-save"], capture_output=True, text=True, check=True).stdout
def rules(text):
    return [l for l in text.splitlines() if "flanneld" in l or l.startswith(":FLANNEL")]
t = IPTables(ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv4Network("10.100.5.0/24"), True, True)
steps.append(("first", t.ensure(), rules(save())))
steps.append(("again", t.ensure(), rules(save())))
subprocess.run(["iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "2"], check=True)
subprocess.run(["iptables", "-t", "filter", "-D", "FORWARD", "1"], check=True)
steps.append(("repaired", t.ensure(), rules(save())))
# a foreign rule elsewhere is left alone; a duplicated jump is reduced to one
subprocess.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "192.0.2.0/24", "-j", "MASQUERADE"], check=True)
subprocess.run(["iptables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq",
                "-j", "FLANNEL-POSTRTG"], check=True)
steps.append(("dedup", t.ensure(), rules(save())))
t2 = IPTables(ipaddress.IPv4Network("10.200.0.0/16"), ipaddress.IPv4Network("10.200.9.0/24"), True, True)
steps.append(("moved", t2.ensure(), rules(save())))
t3 = IPTables(ipaddress.IPv4Network("10.200.0.0/16"), ipaddress.IPv4Network("10.200.9.0/24"), False, True)
steps.append(("masq off", t3.ensure(), rules(save())))
t2.remove()
steps.append(("removed", None, save()))
print(json.dumps(steps))
"""

C, P = "10.100.0.0/16", "10.100.5.0/24"
MASQ = '-m comment --comment "flanneld masq"'
FWD = '-m comment --comment "flanneld forward"'


SCRIPT6 = r"""
import ipaddress, json, subprocess, sys
from pyflannel.ipmasq import IPTables
steps = []
def rules(tool):
    text = subprocess.run([tool + "-save"], capture_output=True, text=True, check=True).stdout
    return [l for l in text.splitlines() if "flanneld" in l or l.startswith(":FLANNEL")]
def step(name, changed):
    steps.append((name, changed, rules("iptables"), rules("ip6tables")))
t4 = IPTables(ipaddress.IPv4Network("10.100.0.0/16"), ipaddress.IPv4Network("10.100.5.0/24"), True, True)
t6 = IPTables(ipaddress.IPv6Network("fd00:100::/48"), ipaddress.IPv6Network("fd00:100:0:5::/64"), True, True)
assert (t4.family, t4.tool, t6.family, t6.tool) == (4, "iptables", 6, "ip6tables")
step("v4 first", t4.ensure())
step("v6 first", t6.ensure())
step("v6 again", t6.ensure())
step("v4 again", t4.ensure())
subprocess.run(["ip6tables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "2"], check=True)
subprocess.run(["ip6tables", "-t", "filter", "-D", "FORWARD", "1"], check=True)
step("v4 after v6 damage", t4.ensure())
step("v6 repaired", t6.ensure())
subprocess.run(["ip6tables", "-t", "nat", "-A", "POSTROUTING", "-s", "2001:db8::/64", "-j", "MASQUERADE"], check=True)
subprocess.run(["ip6tables", "-t", "nat", "-A", "POSTROUTING", "-m", "comment", "--comment", "flanneld masq",
                "-j", "FLANNEL-POSTRTG"], check=True)
step("v6 dedup", t6.ensure())
t6b = IPTables(ipaddress.IPv6Network("fd00:200::/48"), ipaddress.IPv6Network("fd00:200:0:9::/64"), True, True)
step("v6 moved", t6b.ensure())
t6.ensure()
t6.remove()
step("v6 removed", t4.ensure())
t6.remove()  # a second remove() is a no-op
t4.remove()
step("v4 removed", None)
save6 = subprocess.run(["ip6tables-save"], capture_output=True, text=True, check=True).stdout
print(json.dumps({"steps": steps, "save6": save6}))
"""

C6, P6 = "fd00:100::/48", "fd00:100:0:5::/64"


def run_in_namespace(script: str) -> Any:
    if os.geteuid() != 0:
        pytest.fail("this test needs root for a network namespace: run make test as root")
    ns = "pfl-ipt-%s" % secrets.token_hex(3)
    sh("ip", "netns", "add", ns)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", script], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)
    finally:
        sh("ip", "netns", "del", ns, check=False)


def expected(c: str, p: str, multicast: str = "224.0.0.0/4") -> list:
    return [
        ":FLANNEL-FWD - [0:0]",
        "-A FORWARD %s -j FLANNEL-FWD" % FWD,
        "-A FLANNEL-FWD -s %s %s -j ACCEPT" % (c, FWD),
        "-A FLANNEL-FWD -d %s %s -j ACCEPT" % (c, FWD),
        ":FLANNEL-POSTRTG - [0:0]",
        "-A POSTROUTING %s -j FLANNEL-POSTRTG" % MASQ,
        "-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 %s -j RETURN" % MASQ,
        "-A FLANNEL-POSTRTG -s %s -d %s %s -j RETURN" % (p, c, MASQ),
        "-A FLANNEL-POSTRTG -s %s -d %s %s -j RETURN" % (c, p, MASQ),
        "-A FLANNEL-POSTRTG ! -s %s -d %s %s -j RETURN" % (c, p, MASQ),
        "-A FLANNEL-POSTRTG -s %s ! -d %s %s -j MASQUERADE --random-fully" % (c, multicast, MASQ),
        "-A FLANNEL-POSTRTG ! -s %s -d %s %s -j MASQUERADE --random-fully" % (c, c, MASQ),
    ]


def test_ipmasq_rules_in_a_namespace() -> None:
    steps = {name: (changed, state) for name, changed, state in run_in_namespace(SCRIPT)}
    assert steps["first"] == (True, expected(C, P))
    assert steps["again"] == (False, expected(C, P))
    assert steps["repaired"] == (True, expected(C, P))
    changed, state = steps["dedup"]
    assert changed and state == expected(C, P)
    assert steps["moved"] == (True, expected("10.200.0.0/16", "10.200.9.0/24"))
    changed, state = steps["masq off"]
    assert changed and state == expected("10.200.0.0/16", "10.200.9.0/24")[:4]
    removed = steps["removed"][1]
    assert "FLANNEL" not in removed and "flanneld" not in removed
    assert "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE" in removed


def test_ip6masq_rules_beside_ipv4_in_a_namespace() -> None:
    out = run_in_namespace(SCRIPT6)
    steps = {name: (changed, v4, v6) for name, changed, v4, v6 in out["steps"]}
    v4, v6 = expected(C, P), expected(C6, P6, "ff00::/8")
    assert steps["v4 first"] == (True, v4, [])
    assert steps["v6 first"] == (True, v4, v6)
    assert steps["v6 again"] == (False, v4, v6)
    assert steps["v4 again"] == (False, v4, v6)
    # damage to the IPv6 rules is not the IPv4 object's business, and the IPv6 object repairs it
    changed, state4, state6 = steps["v4 after v6 damage"]
    assert changed is False and state4 == v4 and state6 != v6
    assert steps["v6 repaired"] == (True, v4, v6)
    assert steps["v6 dedup"] == (True, v4, v6)
    assert steps["v6 moved"] == (True, v4, expected("fd00:200::/48", "fd00:200:0:9::/64", "ff00::/8"))
    assert steps["v6 removed"] == (False, v4, [])
    assert steps["v4 removed"] == (None, [], [])
    assert "-A POSTROUTING -s 2001:db8::/64 -j MASQUERADE" in out["save6"]
