"""What a node's kernel holds for flannel, read with ``ip -j`` (flannel_node_info's bridge, devices and routes):
docker0 against subnet.env, the links and routes of the catalogue's backends. Readers only; nothing changes."""

from __future__ import annotations

import json
import re

from . import catalogue


def _ip_json(module, args):
    """``ip -j <args>`` parsed; None when ip fails (no such device, no IPv6)."""
    ip = module.get_bin_path("ip")
    if ip is None:
        module.fail_json(msg="the ip command (iproute2) is not installed on this host")
    rc, out, _err = module.run_command([ip, "-j"] + args)
    if rc != 0:
        return None
    try:
        return json.loads(out) if out.strip() else []
    except ValueError:
        return None


def bridge_info(module, name, env):
    data = _ip_json(module, ["address", "show", "dev", name])
    link = data[0] if data else {}
    addrs = link.get("addr_info", [])
    out = {"name": name, "exists": bool(link), "mtu": link.get("mtu"),
           "addresses": ["%s/%s" % (a["local"], a["prefixlen"]) for a in addrs if a.get("family") == "inet"],
           "addresses6": ["%s/%s" % (a["local"], a["prefixlen"]) for a in addrs
                          if a.get("family") == "inet6" and a.get("scope") == "global"]}
    want, want6 = env.get("FLANNEL_SUBNET", ""), env.get("FLANNEL_IPV6_SUBNET", "")
    if not want and not want6:
        out["state"] = "no subnet.env"
    elif (not want or want in out["addresses"]) and (not want6 or want6 in out["addresses6"]):
        out["state"] = "ok"
    else:
        out["state"] = "mismatch"
    return out


def backend_of_device(name):
    for backend in catalogue.BACKENDS:
        if any(re.fullmatch(pattern, name) for pattern in backend.devices):
            return backend.name
    return None


def devices(module):
    out = []
    for link in _ip_json(module, ["-d", "link", "show"]) or []:
        backend = backend_of_device(link.get("ifname", ""))
        if backend is not None:
            out.append({"name": link["ifname"], "kind": link.get("linkinfo", {}).get("info_kind"), "backend": backend,
                        "mtu": link.get("mtu"), "up": "UP" in link.get("flags", [])})
    return out


def routes(module):
    protos = dict((b.route_proto, b.name) for b in catalogue.BACKENDS if b.route_proto is not None)
    out = []
    for family in (4, 6):
        # -N: protocols as numbers, whatever names /etc/iproute2/rt_protos gives them (older ip lacks -N)
        found = _ip_json(module, ["-N", "-%d" % family, "route", "show", "table", "all"])
        if found is None:
            found = _ip_json(module, ["-%d" % family, "route", "show", "table", "all"]) or []
        for route in found:
            proto = str(route.get("protocol", ""))
            if proto.isdigit() and int(proto) in protos:
                out.append({"family": family, "dst": route.get("dst"), "gateway": route.get("gateway"),
                            "dev": route.get("dev"), "protocol": int(proto), "backend": protos[int(proto)]})
    return out
