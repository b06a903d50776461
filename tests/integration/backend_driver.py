"""Drives one real backend inside a namespace, one JSON command per stdin line, one JSON reply per
stdout line — the agent's life cycle without etcd, so the datapaths can be tested on their own.

Run as ``ip netns exec NS .venv/bin/python -m tests.integration.backend_driver``.  Commands::

    {"op": "create", "config": {...network config...}, "iface": "eth0", "public_ip": null}
        -> {"ok": true, "lease_value": "<lease JSON to publish>"}   (remove_leftovers + prepare)
    {"op": "configure", "subnet": "10.100.1.0/24"}
    {"op": "sync", "leases": [{"subnet": "...", "value": "<lease JSON>"}, ...]}
    {"op": "add" | "remove", "subnet": "...", "value": "..."}
    {"op": "tick"} | {"op": "status"} | {"op": "close"} | {"op": "cleanup"}

Errors reply ``{"ok": false, "error": "<the one line>"}``; logs go to stderr.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from typing import Any, Dict, Optional

from pyflannel import backend as backends
from pyflannel import netlink
from pyflannel.leases import Lease, decode_lease, encode_lease
from pyflannel.netconfig import parse_config


def ext_iface(name: str, public_ip: Optional[str]) -> backends.ExternalInterface:
    msg = netlink.link_by_name(name)
    if msg is None:
        raise backends.BackendError("no interface %s" % name)
    address = str(netlink.ipv4_addresses(msg["index"])[0].ip)
    return backends.ExternalInterface(name, msg["index"], address, public_ip or address, msg.get_attr("IFLA_MTU"))


def lease(item: Dict[str, Any]) -> Lease:
    return Lease(ipaddress.IPv4Network(item["subnet"]), decode_lease(item["value"]))


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
                be = backends.create(config, ext_iface(cmd["iface"], cmd.get("public_ip")))
                backends.remove_leftovers(be)
                reply["lease_value"] = encode_lease(be.prepare(), "v3")
                reply["mtu"] = be.mtu()
            elif op == "configure":
                assert be is not None
                be.configure(Lease(ipaddress.IPv4Network(cmd["subnet"]), be.prepare()))
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
