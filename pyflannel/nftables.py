"""Masquerade and forward rules in nftables, for networks whose config sets ``"EnableNFTables": true``.

Each address family of the network gets one table of its own, laid out as Go flanneld v0.25+ lays it
out (C = the flannel network of that family, P = this node's lease subnet, M = the multicast range
``224.0.0.0/4`` or ``ff00::/8``)::

    table ip flannel-ipv4 {                    # ip6 flannel-ipv6 for IPv6, with "ip6 saddr" etc.
        chain forward {                        # only with --iptables-forward-rules
            type filter hook forward priority filter; policy accept;
            ip saddr C accept
            ip daddr C accept
        }
        chain postrtg {                        # only with --ip-masq
            type nat hook postrouting priority srcnat; policy accept;
            meta mark 0x4000 return
            ip saddr P ip daddr C return
            ip saddr C ip daddr P return
            ip saddr != P ip daddr C return
            ip saddr C ip daddr != M masquerade fully-random
            ip saddr != C ip daddr C masquerade fully-random
        }
    }

The table belongs to flannel alone, so it is always written whole: one ``nft -f -`` run that creates
the table if needed, deletes it and declares it again, which the kernel applies as one transaction
(no moment without rules, nothing left of an old network or subnet).  ``ensure()`` reads the table
with ``nft list table`` first and writes only when it differs from what is wanted; the agent calls it
again every ``--iptables-resync`` seconds, which puts back a table or rule someone removed.  When the
kernel refuses ``fully-random`` the rules fall back to plain ``masquerade``.  iptables is never called.

:class:`NFTables` has the small interface of :class:`pyflannel.ipmasq.IPTables` (``ensure()``,
``remove()``, ``rules()``, ``tool``), so the agent holds either kind in one list.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import shutil
import subprocess
from typing import Dict, List, Optional, Tuple, Union

from pyflannel.ipmasq import MULTICAST, family_of

log = logging.getLogger("pyflannel.nftables")

# address family -> (nft family, table name)
TABLES = {4: ("ip", "flannel-ipv4"), 6: ("ip6", "flannel-ipv6")}
FWD_CHAIN = "forward"
MASQ_CHAIN = "postrtg"
FWD_HOOK = "type filter hook forward priority filter; policy accept;"
MASQ_HOOK = "type nat hook postrouting priority srcnat; policy accept;"
KUBE_PROXY_MARK = "0x4000"
TIMEOUT = 30.0  # seconds one nft run may take

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]


class NFTablesError(Exception):
    """nft is missing or refused our rules; ``str()`` is one line."""


def nft_command() -> str:
    return shutil.which("nft") or "nft"


def run_nft(nft: str, args: List[str], data: Optional[str] = None) -> str:
    """Run ``nft`` once; every failure is an :class:`NFTablesError` of one line."""
    cmd = [nft, *args]
    try:
        proc = subprocess.run(cmd, input=data, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    except FileNotFoundError:
        raise NFTablesError("%s is not installed: the network config sets EnableNFTables, which needs the nft "
                            "command (install the nftables package)" % nft) from None
    except subprocess.TimeoutExpired:
        raise NFTablesError("%s did not finish within %.0f s" % (" ".join(cmd), TIMEOUT)) from None
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split()) or "exit status %d" % proc.returncode
        raise NFTablesError("%s failed: %s" % (" ".join(cmd), detail))
    return proc.stdout


def _absent(err: NFTablesError) -> bool:
    """Whether nft failed because the table is not there."""
    return "No such file or directory" in str(err)


def normalized(text: str) -> str:
    """A listing reduced to what matters for a comparison: one space between words, no empty lines,
    hexadecimal numbers without leading zeros (nft prints ``meta mark 0x00004000``)."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    joined = "\n".join(line for line in lines if line)
    return re.sub(r"\b0x0*([0-9a-fA-F]+)", lambda m: "0x" + m.group(1).lower(), joined)


class NFTables:
    """The table of one address family for one (network, subnet): IPv4 -> ``ip flannel-ipv4``, IPv6 ->
    ``ip6 flannel-ipv6``.  ``masq``: the ``postrtg`` chain (--ip-masq); ``forward``: the ``forward`` chain
    (--iptables-forward-rules); with neither the table is there and empty, as Go flanneld leaves it.
    ``ensure()`` installs or repairs, ``remove()`` deletes the table."""

    def __init__(self, network: Network, subnet: Network, masq: bool, forward: bool,
                 nft: Optional[str] = None) -> None:
        self.family, self.network, self.subnet = family_of(network, subnet, "nftables rules")
        self.masq = masq
        self.forward = forward
        self.random_fully = True
        self.nft_family, self.table = TABLES[self.family]
        self.tool = "nftables %s" % self.table  # what the agent's log lines call these rules
        self.nft = nft or nft_command()
        self.multicast = MULTICAST[self.family]
        # nft's own listing of the table right after our last write, normalized: on an nft that prints
        # a rule differently from how we spell it, the table still counts as ours and is not rewritten
        self._written: Optional[str] = None

    # -- the rules, as nft lists them ------------------------------------------------------------
    def fwd_rules(self) -> List[str]:
        f, c = self.nft_family, self.network
        return ["%s saddr %s accept" % (f, c), "%s daddr %s accept" % (f, c)]

    def masq_rules(self) -> List[str]:
        f, c, p = self.nft_family, self.network, self.subnet
        masquerade = "masquerade fully-random" if self.random_fully else "masquerade"
        return [
            "meta mark %s return" % KUBE_PROXY_MARK,
            "%s saddr %s %s daddr %s return" % (f, p, f, c),
            "%s saddr %s %s daddr %s return" % (f, c, f, p),
            "%s saddr != %s %s daddr %s return" % (f, p, f, c),
            "%s saddr %s %s daddr != %s %s" % (f, c, f, self.multicast, masquerade),
            "%s saddr != %s %s daddr %s %s" % (f, c, f, c, masquerade),
        ]

    def chains(self) -> List[Tuple[str, str, List[str]]]:
        """(name, type/hook/priority line, rules) of each chain the table holds, in nft's order."""
        out = []
        if self.forward:
            out.append((FWD_CHAIN, FWD_HOOK, self.fwd_rules()))
        if self.masq:
            out.append((MASQ_CHAIN, MASQ_HOOK, self.masq_rules()))
        return out

    def definition(self) -> str:
        """The whole table in nft's syntax (also the shape ``nft list table`` prints)."""
        blocks = []
        for name, hook, rules in self.chains():
            blocks.append("\tchain %s {\n\t\t%s\n%s\t}\n" % (name, hook, "".join("\t\t%s\n" % r for r in rules)))
        return "table %s %s {\n%s}\n" % (self.nft_family, self.table, "\n".join(blocks))

    def script(self) -> str:
        """What ``nft -f -`` gets: the table created if missing, deleted and declared again; nft sends
        the whole file to the kernel as one transaction."""
        name = "%s %s" % (self.nft_family, self.table)
        return "table %s\ndelete table %s\n%s" % (name, name, self.definition())

    def rules(self) -> Dict[str, List[str]]:
        """What ``ensure()`` installs, per chain (for status and tests)."""
        return {name: list(rules) for name, _hook, rules in self.chains()}

    # -- the kernel's state ----------------------------------------------------------------------
    def _run(self, args: List[str], data: Optional[str] = None) -> str:
        return run_nft(self.nft, args, data)

    def current(self) -> Optional[str]:
        """``nft list table`` of our table, or None when there is none."""
        try:
            return self._run(["list", "table", self.nft_family, self.table])
        except NFTablesError as err:
            if _absent(err):
                return None
            raise

    def matches(self, listing: Optional[str]) -> bool:
        if listing is None:
            return False
        have = normalized(listing)
        return have == normalized(self.definition()) or (self._written is not None and have == self._written)

    def _write(self) -> None:
        try:
            self._run(["-f", "-"], self.script())
        except NFTablesError as err:
            if not (self.masq and self.random_fully and "fully-random" in str(err)):
                raise
            log.info("this kernel or nft does not support masquerade fully-random; using plain masquerade in %s",
                     self.table)
            self.random_fully = False
            self._run(["-f", "-"], self.script())
        self._written = normalized(self.current() or "")

    # -- public -----------------------------------------------------------------------------------
    def ensure(self) -> bool:
        """Install or repair the table; True when it had to be written."""
        if self.matches(self.current()):
            return False
        self._write()
        what = []
        if self.masq:
            what.append("masquerade rules for %s (this node %s)" % (self.network, self.subnet))
        if self.forward:
            what.append("forward rules for %s" % self.network)
        log.info("nftables table %s %s written: %s", self.nft_family, self.table, " and ".join(what) or "no chains")
        return True

    def remove(self) -> bool:
        """Delete the table (whatever it holds); True when there was one."""
        return remove_table(self.family, self.nft)


def remove_table(family: int, nft: Optional[str] = None) -> bool:
    """Delete flannel's nftables table of one address family (4 or 6); True when there was one."""
    nft_family, table = TABLES[family]
    nft = nft or nft_command()
    try:
        run_nft(nft, ["list", "table", nft_family, table])
    except NFTablesError as err:
        if _absent(err):
            return False
        raise
    name = "%s %s" % (nft_family, table)
    # "table" first: deleting one that vanished in between is no error
    run_nft(nft, ["-f", "-"], "table %s\ndelete table %s\n" % (name, name))
    log.info("nftables table %s deleted", name)
    return True
