"""Drives one real backend inside a namespace, one JSON command per stdin line, one JSON reply per
stdout line — the agent's life cycle without etcd, so the datapaths can be tested on their own.

Run as ``ip netns exec NS .venv/bin/python -m testbed.backend_driver``.  Commands::

    {"op": "create", "config": {...network config...}, "iface": "eth0", "public_ip": null,
     "ipv6": false, "public_ipv6": null}
        -> {"ok": true, "lease_value": "<lease JSON to publish>"}   (remove_leftovers + prepare)
        "ipv6": true (implied by a config with EnableIPv6) gives the interface's global IPv6 address
        to the backend (ExternalInterface.address6 / public_ipv6)
    {"op": "configure", "subnet": "10.100.1.0/24", "subnet6": "fd10:0:0:1::/64"}   (either may be null)
    {"op": "sync", "leases": [{"subnet": "...", "subnet6": "...", "value": "<lease JSON>"}, ...]}
    {"op": "add" | "remove", "subnet": "...", "subnet6": "...", "value": "..."}
    {"op": "tick"} | {"op": "status"} | {"op": "close"} | {"op": "cleanup"}

Errors reply ``{"ok": false, "error": "<the one line>"}``; logs go to stderr.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sys
from typing import Any, Dict, Optional

from pyflannel import backend as backends
from pyflannel import netlink
from pyflannel.leases import Lease, decode_lease, encode_lease
from pyflannel.netconfig import parse_config


def ext_iface(name: str, public_ip: Optional[str], ipv6: bool = False,
              public_ipv6: Optional[str] = None) -> backends.ExternalInterface:
    msg = netlink.link_by_name(name)
    if msg is None:
        raise backends.BackendError("no interface %s" % name)
    v4 = netlink.ipv4_addresses(msg["index"])
    address = str(v4[0].ip) if v4 else None
    address6 = None
    if ipv6:
        v6 = netlink.global_addresses(msg["index"], socket.AF_INET6)
        address6 = str(v6[0].ip) if v6 else None
    return backends.ExternalInterface(name, msg["index"], address, public_ip or address, msg.get_attr("IFLA_MTU"),
                                      address6=address6, public_ipv6=public_ipv6 or address6)


def _net(text: Optional[str], make: Any) -> Any:
    return make(text) if text else None


def lease(item: Dict[str, Any]) -> Lease:
    return Lease(_net(item.get("subnet"), ipaddress.IPv4Network), decode_lease(item["value"]),
                 ipv6_subnet=_net(item.get("subnet6"), ipaddress.IPv6Network))


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    be: Optional[backends.Backend] = None
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        op = cmd["op"]
        reply: Dict[str, Any] = {"ok": True}
        try:
            if op == "create":
                config = parse_config(cmd["config"])
                ipv6 = bool(cmd.get("ipv6", config.enable_ipv6))
                be = backends.create(config, ext_iface(cmd["iface"], cmd.get("public_ip"), ipv6,
                                                       cmd.get("public_ipv6")))
                backends.remove_leftovers(be)
                reply["lease_value"] = encode_lease(be.prepare(), "v3")
                reply["mtu"] = be.mtu()
            elif op == "configure":
                assert be is not None
                be.configure(Lease(_net(cmd.get("subnet"), ipaddress.IPv4Network), be.prepare(),
                                   ipv6_subnet=_net(cmd.get("subnet6"), ipaddress.IPv6Network)))
            elif op == "sync":
                assert be is not None
                be.sync([lease(item) for item in cmd["leases"]])
            elif op == "add":
                assert be is not None
                be.lease_added(lease(cmd))
            elif op == "remove":
                assert be is not None
                be.lease_removed(lease(cmd))
            elif op == "tick":
                assert be is not None
                be.tick()
            elif op == "status":
                assert be is not None
                reply["status"] = be.status()
                reply["metrics"] = be.metrics()
            elif op == "close":
                if be is not None:
                    be.close()
                reply["closed"] = True
            elif op == "cleanup":
                assert be is not None
                be.cleanup()
            else:
                raise ValueError("unknown op %r" % op)
        except backends.BackendError as err:
            reply = {"ok": False, "error": str(err)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
        if op == "close":
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
