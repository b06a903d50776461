"""ip-masq and forward rules, exactly as Go flanneld installs them, applied with
``iptables-restore --noflush`` (C = the flannel Network, P = this node's lease)::

    *nat
    -I POSTROUTING 1 -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
    -A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
    -A FLANNEL-POSTRTG -s P -d C -m comment --comment "flanneld masq" -j RETURN
    -A FLANNEL-POSTRTG -s C -d P -m comment --comment "flanneld masq" -j RETURN
    -A FLANNEL-POSTRTG ! -s C -d P -m comment --comment "flanneld masq" -j RETURN
    -A FLANNEL-POSTRTG -s C ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
    -A FLANNEL-POSTRTG ! -s C -d C -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
    *filter
    -A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
    -A FLANNEL-FWD -s C -m comment --comment "flanneld forward" -j ACCEPT
    -A FLANNEL-FWD -d C -m comment --comment "flanneld forward" -j ACCEPT

The address family is a parameter: an IPv6 network and subnet give the same rule set through
``ip6tables-restore`` / ``ip6tables-save`` with the IPv6 multicast range ``ff00::/8`` in place of
``224.0.0.0/4`` — Go flanneld's current ``masqIP6Rules`` / ``forwardRules`` (pkg/trafficmngr/iptables).
Go v0.20's ``MasqIP6Rules`` (network/iptables.go) had the older order of its IPv4 list (RETURN
``-s C -d C``, MASQUERADE ``-s C ! -d ff00::/8``, RETURN ``! -s C -d P``, MASQUERADE ``! -s C -d C``);
we keep both families in the one shape above, as the IPv4 rules already follow current Go.  The two families live in
separate kernel tables, so an IPv4 and an IPv6 ``IPTables`` object on one host never touch each
other's rules; ``--random-fully`` support is detected per object, i.e. per binary.

Our chains are rewritten as a whole (declaring a chain in a ``--noflush`` restore empties it), so
rules for an old network or subnet disappear with the next ``ensure()``.  ``ensure()`` compares
with ``iptables-save`` first and only writes when something differs.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple, Union

log = logging.getLogger("pyflannel.ipmasq")

MASQ_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
MASQ_COMMENT = '-m comment --comment "flanneld masq"'
FWD_COMMENT = '-m comment --comment "flanneld forward"'
KUBE_PROXY_MARK = "0x4000/0x4000"
MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class IPTablesError(Exception):
    """iptables refused our rules; ``str()`` is one line."""


def _run(cmd: List[str], data: Optional[str] = None, family: int = 4, nat: bool = False) -> str:
    """Run one iptables tool; any failure is an ``IPTablesError`` of one line.  For IPv6 the line
    says what is needed (ip6tables, and for the nat table the kernel's IPv6 NAT)."""
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError:
        hint = "" if family == 4 else " (IPv6 masquerading and forward rules need ip6tables)"
        raise IPTablesError("%s is not installed: install the iptables package%s" % (cmd[0], hint)) from None
    except subprocess.TimeoutExpired:
        raise IPTablesError("%s did not finish within 30 s (xtables lock held?)" % " ".join(cmd)) from None
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split()) or str(proc.returncode)
        hint = ""
        if family == 6 and nat and "random-fully" not in detail.lower():
            hint = "; IPv6 masquerading needs ip6tables nat support (kernel ip6table_nat/nf_nat)"
        raise IPTablesError("%s failed: %s%s" % (" ".join(cmd), detail, hint))
    return proc.stdout


def family_of(network: Network, subnet: Network, what: str = "ip-masq rules") -> Tuple[int, Network, Network]:
    """Both as network objects of one family (strict, like ``IPv4Network(x)``), or a one-line error that
    starts with ``what`` (the iptables and the nftables rules share this)."""
    try:
        net = ipaddress.ip_network(network)
        sub = ipaddress.ip_network(subnet)
    except ValueError as err:
        raise ValueError("%s: %s" % (what, err)) from None
    if net.version != sub.version:
        raise ValueError("%s: network %s and subnet %s are of different address families" % (what, net, sub))
    return net.version, net, sub


class IPTables:
    """The rules for one (network, subnet) of one address family (derived from them: IPv4 → iptables,
    IPv6 → ip6tables); ``ensure()`` installs or repairs, ``remove()`` deletes."""

    def __init__(self, network: Network, subnet: Network, masq: bool, forward: bool) -> None:
        self.family, self.network, self.subnet = family_of(network, subnet)
        self.masq = masq
        self.forward = forward
        self.random_fully = True
        self.multicast = MULTICAST[self.family]
        self.tool = "iptables" if self.family == 4 else "ip6tables"
        self.restore = shutil.which(self.tool + "-restore") or self.tool + "-restore"
        self.save = shutil.which(self.tool + "-save") or self.tool + "-save"

    def _run(self, table: str, cmd: List[str], data: Optional[str] = None) -> str:
        return _run(cmd, data, self.family, table == "nat")

    # -- the rules, in iptables-save's own spelling -------------------------------------------------
    def masq_rules(self) -> List[str]:
        c, p = self.network, self.subnet
        random = " --random-fully" if self.random_fully else ""
        return [
            "-A %s -m mark --mark %s %s -j RETURN" % (MASQ_CHAIN, KUBE_PROXY_MARK, MASQ_COMMENT),
            "-A %s -s %s -d %s %s -j RETURN" % (MASQ_CHAIN, p, c, MASQ_COMMENT),
            "-A %s -s %s -d %s %s -j RETURN" % (MASQ_CHAIN, c, p, MASQ_COMMENT),
            "-A %s ! -s %s -d %s %s -j RETURN" % (MASQ_CHAIN, c, p, MASQ_COMMENT),
            "-A %s -s %s ! -d %s %s -j MASQUERADE%s" % (MASQ_CHAIN, c, self.multicast, MASQ_COMMENT, random),
            "-A %s ! -s %s -d %s %s -j MASQUERADE%s" % (MASQ_CHAIN, c, c, MASQ_COMMENT, random),
        ]

    def fwd_rules(self) -> List[str]:
        c = self.network
        return [
            "-A %s -s %s %s -j ACCEPT" % (FWD_CHAIN, c, FWD_COMMENT),
            "-A %s -d %s %s -j ACCEPT" % (FWD_CHAIN, c, FWD_COMMENT),
        ]

    MASQ_JUMP = "-A POSTROUTING %s -j %s" % (MASQ_COMMENT, MASQ_CHAIN)
    FWD_JUMP = "-A FORWARD %s -j %s" % (FWD_COMMENT, FWD_CHAIN)

    # -- reading the current state ---------------------------------------------------------------
    def _current(self, table: str, chain: str, parent: str) -> Tuple[bool, List[str], int]:
        """(chain exists, its rules, how many jumps from ``parent`` to it)."""
        text = self._run(table, [self.save, "-t", table])
        exists = False
        rules: List[str] = []
        jumps = 0
        for line in text.splitlines():
            if line.startswith(":%s " % chain):
                exists = True
            elif line.startswith("-A %s " % chain):
                rules.append(line.strip())
            elif line.startswith("-A %s " % parent) and line.rstrip().endswith("-j " + chain):
                jumps += 1
        return exists, rules, jumps

    def _table_ok(self, table: str, chain: str, parent: str, wanted: List[str]) -> bool:
        exists, rules, jumps = self._current(table, chain, parent)
        return exists and jumps == 1 and rules == wanted

    def _apply(self, table: str, chain: str, parent: str, jump: str, wanted: List[str], insert: bool) -> None:
        _exists, _rules, jumps = self._current(table, chain, parent)
        lines = ["*" + table, ":%s - [0:0]" % chain]
        spec = jump.split(" ", 2)[2]  # the jump rule without "-A PARENT"
        lines += ["-D %s %s" % (parent, spec)] * max(0, jumps - 1)
        if jumps == 0:
            lines.append(("-I %s 1 %s" % (parent, spec)) if insert else ("-A %s %s" % (parent, spec)))
        lines += wanted
        lines.append("COMMIT")
        self._run(table, [self.restore, "--noflush", "-w", "5"], "\n".join(lines) + "\n")

    def _remove_table(self, table: str, chain: str, parent: str, jump: str) -> bool:
        exists, _rules, jumps = self._current(table, chain, parent)
        if not exists and not jumps:
            return False
        spec = jump.split(" ", 2)[2]
        lines = ["*" + table]
        lines += ["-D %s %s" % (parent, spec)] * jumps
        if exists:
            lines += [":%s - [0:0]" % chain, "-X %s" % chain]
        lines.append("COMMIT")
        self._run(table, [self.restore, "--noflush", "-w", "5"], "\n".join(lines) + "\n")
        return True

    # -- public -----------------------------------------------------------------------------------
    def ensure(self) -> bool:
        """Install or repair the rules; True when something had to change."""
        changed = False
        if self.masq:
            if not self._table_ok("nat", MASQ_CHAIN, "POSTROUTING", self.masq_rules()):
                try:
                    self._apply("nat", MASQ_CHAIN, "POSTROUTING", self.MASQ_JUMP, self.masq_rules(), insert=True)
                except IPTablesError as err:
                    text = str(err).lower()
                    if not self.random_fully or ("random-fully" not in text and "unknown" not in text):
                        raise
                    log.info("this %s does not support MASQUERADE --random-fully; using plain MASQUERADE", self.tool)
                    self.random_fully = False
                    self._apply("nat", MASQ_CHAIN, "POSTROUTING", self.MASQ_JUMP, self.masq_rules(), insert=True)
                changed = True
                log.info("ip-masq rules for %s (this node %s) installed in nat/%s", self.network, self.subnet,
                         MASQ_CHAIN)
        elif self._remove_table("nat", MASQ_CHAIN, "POSTROUTING", self.MASQ_JUMP):
            changed = True
            log.info("removed the ip-masq rules (nat/%s): --ip-masq is off", MASQ_CHAIN)
        if self.forward:
            if not self._table_ok("filter", FWD_CHAIN, "FORWARD", self.fwd_rules()):
                self._apply("filter", FWD_CHAIN, "FORWARD", self.FWD_JUMP, self.fwd_rules(), insert=False)
                changed = True
                log.info("forward rules for %s installed in filter/%s", self.network, FWD_CHAIN)
        elif self._remove_table("filter", FWD_CHAIN, "FORWARD", self.FWD_JUMP):
            changed = True
            log.info("removed the forward rules (filter/%s): --iptables-forward-rules is off", FWD_CHAIN)
        return changed

    def remove(self) -> bool:
        """Delete both chains and the jumps to them (of this object's family only); True when there was
        something to delete."""
        nat = self._remove_table("nat", MASQ_CHAIN, "POSTROUTING", self.MASQ_JUMP)
        fwd = self._remove_table("filter", FWD_CHAIN, "FORWARD", self.FWD_JUMP)
        return nat or fwd

    def rules(self) -> Dict[str, List[str]]:
        """What ``ensure()`` installs, per table (for status and tests)."""
        out: Dict[str, List[str]] = {}
        if self.masq:
            out["nat"] = [self.MASQ_JUMP, *self.masq_rules()]
        if self.forward:
            out["filter"] = [self.FWD_JUMP, *self.fwd_rules()]
        return out
