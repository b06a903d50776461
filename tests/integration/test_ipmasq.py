"""ip-masq/forward rules through real iptables-restore — inside a throw-away network namespace, never
in the machine's own tables."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest

from tests.integration.netns import REPO, sh

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


def expected(c: str, p: str) -> list:
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
        "-A FLANNEL-POSTRTG -s %s ! -d 224.0.0.0/4 %s -j MASQUERADE --random-fully" % (c, MASQ),
        "-A FLANNEL-POSTRTG ! -s %s -d %s %s -j MASQUERADE --random-fully" % (c, c, MASQ),
    ]


def test_ipmasq_rules_in_a_namespace() -> None:
    if os.geteuid() != 0:
        pytest.fail("this test needs root for a network namespace: run make test as root")
    ns = "pfl-ipt-%s" % secrets.token_hex(3)
    sh("ip", "netns", "add", ns)
    try:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", SCRIPT], cwd=REPO,
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        steps = {name: (changed, state) for name, changed, state in json.loads(proc.stdout)}
    finally:
        sh("ip", "netns", "del", ns, check=False)
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
