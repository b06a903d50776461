"""What the agent may have installed on this node, and one entry point that removes all of it.

``teardown()`` removes, in this network namespace:

* every backend's devices, routes (both address families) and wireguard-go units, through each registered
  backend's own ``remove_installed`` (``pyflannel.backend.remove_leftovers`` with no backend active);
* the ``FLANNEL-POSTRTG``/``FLANNEL-FWD`` iptables and ip6tables chains and the jumps to them
  (``pyflannel.ipmasq.IPTables.remove``), where the tool is installed;
* the nftables tables of an ``EnableNFTables`` network (``pyflannel.nftables.remove_table``), where ``nft``
  is installed.

What it reports is read from the node before and after, with the names the catalogue and those modules
define (the catalogue's device patterns and route protocols, ipmasq's chains, nftables' tables), so a
second run removes nothing and says so.  ``teardown(check=True)`` removes nothing and lists what a real run
would remove.  Run it after the agent stopped (a running agent puts its datapath back).

Command line (the agent's Python; ``playbooks/tasks/teardown.yml`` runs it)::

    python -m pyflannel.node teardown [--check] [--json]
    python -m pyflannel.node state [--json]

``--json`` prints ``{"removed": [...], "left": [...], "errors": [...]}`` (``state``: the inventory):
``removed`` what went away (``--check``: what would), ``left`` what still matches a flannel name but is not
the agent's to remove (a device of another kind, say), ``errors`` one line per step that failed.  The exit
status is 1 when there are errors, else 0.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import socket
import sys
from typing import Any, Dict, List, Optional

from pyflannel import catalogue

# Where systemd keeps the unit files of transient units (systemd-run); wireguard-go runs as one.
TRANSIENT_DIR = "/run/systemd/transient"
FAMILIES = ((4, "IPv4", socket.AF_INET), (6, "IPv6", socket.AF_INET6))


def device_patterns() -> List[str]:
    """The catalogue's link name patterns of every backend."""
    return [pattern for backend in catalogue.BACKENDS for pattern in backend.devices]


def route_protocols() -> Dict[int, str]:
    """{route protocol id: backend name} of every backend that tags its routes."""
    return dict((b.route_proto, b.name) for b in catalogue.BACKENDS if b.route_proto is not None)


def is_flannel_device(name: str) -> bool:
    return any(re.fullmatch(pattern, name) for pattern in device_patterns())


# -- reading the node -----------------------------------------------------------------------------------------
def _devices() -> List[str]:
    from pyflannel import netlink

    names = (m.get_attr("IFLA_IFNAME") or "" for m in netlink.links())
    return sorted(name for name in names if is_flannel_device(name))


def _routes() -> List[str]:
    from pyflannel import netlink

    out = []
    for proto, backend in sorted(route_protocols().items()):
        for _version, label, family in FAMILIES:
            try:
                found = netlink.routes(proto, family)
            except Exception:  # a kernel without IPv6 has no IPv6 routes
                continue
            out += ["%s route %s proto %d (%s)" % (label, r["dst"], proto, backend) for r in found]
    return sorted(out)


def _units() -> List[str]:
    """Transient systemd units running wireguard-go for a device the catalogue names."""
    out = []
    for path in glob.glob(os.path.join(TRANSIENT_DIR, "*.service")):
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError:
            continue
        for line in text.splitlines():
            words = [w.strip("\"'") for w in line.partition("=")[2].split()] if line.startswith("ExecStart=") else []
            if any(os.path.basename(w) == "wireguard-go" for w in words) and any(is_flannel_device(w) for w in words):
                out.append("unit " + os.path.basename(path))
                break
    return sorted(out)


def _iptables() -> List[str]:
    """Our chains, and the jumps to them, per iptables tool that is installed."""
    from pyflannel.ipmasq import FWD_CHAIN, MASQ_CHAIN

    out = []
    for _version, tables in _iptables_tools():
        for table, chain, parent in (("nat", MASQ_CHAIN, "POSTROUTING"), ("filter", FWD_CHAIN, "FORWARD")):
            try:
                exists, _rules, jumps = tables._current(table, chain, parent)
            except Exception:  # no such table (no IPv6 NAT): nothing of ours in it
                continue
            if exists:
                out.append("%s chain %s/%s" % (tables.tool, table, chain))
            out += ["%s jump %s/%s -> %s" % (tables.tool, table, parent, chain)] * jumps
    return sorted(out)


def _iptables_tools() -> List[Any]:
    """(address family, an ``ipmasq.IPTables`` of that family) for each iptables tool that is installed."""
    import ipaddress

    from pyflannel.ipmasq import IPTables

    out = []
    for version, _label, _family in FAMILIES:
        if shutil.which(("iptables" if version == 4 else "ip6tables") + "-save"):
            anything = ipaddress.ip_network("0.0.0.0/0" if version == 4 else "::/0")
            out.append((version, IPTables(anything, anything, True, True)))
    return out


def _nftables() -> List[str]:
    from pyflannel.nftables import TABLES, NFTablesError, run_nft

    nft = shutil.which("nft")
    if not nft:
        return []
    try:
        listing = run_nft(nft, ["list", "tables"])
    except NFTablesError:
        return []
    present = set(" ".join(line.split()) for line in listing.splitlines())
    return sorted("nftables table %s %s" % pair for pair in TABLES.values() if "table %s %s" % pair in present)


def state() -> Dict[str, List[str]]:
    """What this node holds of the agent's datapath, by kind (each a sorted list of one-line descriptions)."""
    return {"devices": _devices(), "routes": _routes(), "units": _units(), "iptables": _iptables(),
            "nftables": _nftables()}


def _flat(found: Dict[str, List[str]]) -> List[str]:
    return ["device " + d for d in found["devices"]] + found["routes"] + found["units"] + found["iptables"] + \
        found["nftables"]


# -- removing it ----------------------------------------------------------------------------------------------
class _NoBackend:
    """The "active backend" handed to ``remove_leftovers``: none, so every backend type removes its leftovers.
    ``remove_installed`` gets an external interface it does not need for removing anything."""

    name = ""

    def __init__(self) -> None:
        from pyflannel.backend import ExternalInterface

        self.ext_iface = ExternalInterface(name="", index=0, address=None, public_ip=None, mtu=0)


def _remove(errors: List[str]) -> None:
    from pyflannel import backend

    try:
        backend.remove_leftovers(_NoBackend())  # type: ignore[arg-type]
    except Exception as err:
        errors.append("removing the backends' devices, routes and units failed: %s" % err)
    for _version, tables in _iptables_tools():
        try:
            tables.remove()
        except Exception as err:
            errors.append("removing the %s chains failed: %s" % (tables.tool, err))
    if shutil.which("nft"):
        from pyflannel.nftables import remove_table

        for version, _label, _family in FAMILIES:
            try:
                remove_table(version)
            except Exception as err:
                errors.append("removing the IPv%d nftables table failed: %s" % (version, err))


def teardown(check: bool = False) -> Dict[str, List[str]]:
    """Remove everything the agent may have installed on this node (``check``: nothing, only say what).

    Returns ``{"removed": [...], "left": [...], "errors": [...]}``: one line per device, route, unit, chain,
    jump or table that went away (would go away), what still carries a flannel name afterwards, and what
    failed."""
    errors: List[str] = []
    before = _flat(state())
    if check:
        return {"removed": before, "left": [], "errors": errors}
    _remove(errors)
    after = _flat(state())
    return {"removed": [item for item in before if item not in after], "left": after, "errors": errors}


# -- command line ---------------------------------------------------------------------------------------------
def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyflannel.node",
                                     description="What the flannel agent installed on this node; remove it all.")
    sub = parser.add_subparsers(dest="command", required=True)
    down = sub.add_parser("teardown", help="remove the agent's devices, routes, units, iptables chains and "
                                           "nftables tables (run it after the agent stopped)")
    down.add_argument("--check", action="store_true", help="remove nothing; list what would be removed")
    down.add_argument("--json", action="store_true", help="print the result as one JSON object")
    show = sub.add_parser("state", help="list what the agent's datapath holds on this node")
    show.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    result: Dict[str, Any]
    if args.command == "state":
        result = state()
        rc = 0
    else:
        result = teardown(check=args.check)
        rc = 1 if result["errors"] else 0
    if args.json:
        print(json.dumps(result, sort_keys=True))
        return rc
    for key, items in result.items():
        for item in items:
            print("%s: %s" % (key, item))
    if args.command == "teardown" and not any(result.values()):
        print("nothing to tear down")
    return rc


if __name__ == "__main__":
    sys.exit(main())
