#!/usr/bin/python
# Copyright: netfabric.flannel contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: flannel_node_info
short_description: What a flannel node holds right now
version_added: "0.3.0"
description:
  - Reads one node's flannel state, the way the agent sees it, with the node's own Python (the agent's
    virtual environment may be absent) and C(ip -j).
  - The subnet file parsed by the agent's own parser, the docker bridge (addresses and MTU) against it, the
    flannel devices present (names matched with the backend catalogue's device patterns), the routes tagged
    with the catalogue's route protocols (IPv4 and IPv6, every table), the state of the flanneld, docker and
    etcd services, and the installed agent's version.
  - With O(wheels), also whether wheel files fit an interpreter on the node, judged by C(packaging.tags)
    run by that interpreter.
  - With V(certs) in O(gather), the certificates of O(certs) (each block of a bundle) - subject, issuer,
    expiry - read with the standard library; private keys are never opened.
  - With V(etcd) in O(gather), the local etcd member's version, DB size and whether it is the leader, from
    its v3 JSON gateway (what C(etcdctl endpoint status) asks), over TLS when O(etcd_endpoint) is https.
  - Never changes anything.
author:
  - netfabric.flannel developers (@netfabric)
extends_documentation_fragment:
  - netfabric.flannel.read_only
options:
  subnet_file:
    description:
      - The subnet file the agent writes (its C(--subnet-file)).
    type: path
    default: /run/flannel/subnet.env
  install_dir:
    description:
      - Where the agent is installed (a virtual environment); its version is read from there.
    type: path
    default: /opt/pyflannel
  bridge:
    description:
      - The bridge whose addresses must be on the flannel subnets.
    type: str
    default: docker0
  services:
    description:
      - The systemd services whose state is returned in RV(services).
    type: list
    elements: str
    default: [flanneld, docker, etcd]
  gather:
    description:
      - What to read. An empty list reads nothing of the node (for a wheel check alone).
    type: list
    elements: str
    choices: [subnet, bridge, devices, routes, services, agent, certs, etcd]
    default: [subnet, bridge, devices, routes, services, agent]
  certs:
    description:
      - With V(certs) in O(gather), the certificate files to read, as a name for each path (for example
        C(member) for C(/etc/etcd/pki/member.crt), C(etcd CA) for C(/etc/etcd/pki/ca.crt)). Result in RV(certs).
    type: dict
    default: {}
  cert_warn_days:
    description:
      - A certificate that expires within this many days is marked C(expiring) in RV(certs); an expired
        one (or an unreadable file) is also a line of RV(problems).
    type: int
    default: 30
  etcd_endpoint:
    description:
      - With V(etcd) in O(gather), the URL of the local member's client endpoint.
    type: str
    default: https://127.0.0.1:2379
  etcd_ca_cert:
    description: CA bundle that verifies the member's certificate (https).
    type: path
  etcd_client_cert:
    description: Client certificate presented to the member (https with client certificate authentication).
    type: path
  etcd_client_key:
    description: Its private key (read by the TLS library only, never returned).
    type: path
  wheels:
    description:
      - Wheel file names (C(<name>-<version>-<python tag>-<abi tag>-<platform tag>.whl)) to check against
        the tags the interpreter O(wheel_python) supports; the result is RV(wheel_fit).
    type: list
    elements: str
  wheel_python:
    description:
      - The interpreter the wheels would be installed for. When it does not exist (yet), the Python this
        module runs on stands in.
      - The tags are those of C(packaging.tags.sys_tags()) run by that interpreter, with the C(packaging)
        distribution, else pip's vendored copy, else the pip wheel its C(venv) module would install. Without
        any of them (a node whose venv support is not installed yet) a basic check stands in - python tag,
        abi3 range and architecture, without glibc or musl versions - and RV(wheel_fit.method) says V(basic).
    type: path
attributes:
  platform:
    support: full
    platforms: posix
    description: Linux with iproute2 (C(ip -j)) and systemd.
seealso:
  - module: netfabric.flannel.flannel_lease_info
"""

EXAMPLES = r"""
- name: What this node holds
  netfabric.flannel.flannel_node_info:
  register: node

- name: Docker0 must be on the flannel subnet
  ansible.builtin.assert:
    that: node.bridge.state == 'ok'
    fail_msg: "{{ node.problems | join('; ') }}"

- name: The routes the vxlan backend installed
  ansible.builtin.debug:
    msg: "{{ node.routes | selectattr('backend', 'equalto', 'vxlan') | map(attribute='dst') | list }}"

- name: Do these wheels fit the interpreter the agent's venv is made from
  netfabric.flannel.flannel_node_info:
    gather: []
    wheels: [wrapt-1.16.0-cp311-cp311-manylinux_2_28_x86_64.whl, pyflannel-0.3.0-py3-none-any.whl]
    wheel_python: /usr/bin/python3
  register: fit

- name: Certificate expiry, and the local etcd member's version, leader and DB size
  netfabric.flannel.flannel_node_info:
    gather: [certs, etcd]
    certs: {ca: /etc/etcd/pki/ca.crt, member: /etc/etcd/pki/member.crt}
    etcd_ca_cert: /etc/etcd/pki/ca.crt
    etcd_client_cert: /etc/etcd/pki/member.crt
    etcd_client_key: /etc/etcd/pki/member.key
  register: node
"""

RETURN = r"""
subnet_file:
  description: The subnet file read.
  returned: always
  type: str
  sample: /run/flannel/subnet.env
subnet_env:
  description: The subnet file's C(NAME=value) lines; empty when the file is not there (or not gathered).
  returned: always
  type: dict
  sample: {"FLANNEL_NETWORK": "10.100.0.0/16", "FLANNEL_SUBNET": "10.100.42.1/24", "FLANNEL_MTU": "1450",
           "FLANNEL_IPMASQ": "false"}
flannel_address:
  description: The node's flannel address (the address of FLANNEL_SUBNET, docker0's); empty without one.
  returned: always
  type: str
  sample: 10.100.42.1
flannel_address6:
  description: The node's IPv6 flannel address (of FLANNEL_IPV6_SUBNET); empty without one.
  returned: always
  type: str
  sample: fc00:100:0:2a::1
mtu:
  description: FLANNEL_MTU as a number; null without it.
  returned: always
  type: int
  sample: 1450
bridge:
  description: The docker bridge against the subnet file.
  returned: always
  type: dict
  contains:
    name:
      description: The bridge (O(bridge)).
      type: str
    exists:
      description: Whether the link is there.
      type: bool
    addresses:
      description: Its IPv4 addresses with prefix length.
      type: list
      elements: str
      sample: [10.100.42.1/24]
    addresses6:
      description: Its global IPv6 addresses with prefix length.
      type: list
      elements: str
    mtu:
      description: The link's MTU (docker shows 1500 until a container joins the bridge).
      type: int
    state:
      description:
        - V(ok) when the bridge holds FLANNEL_SUBNET (and FLANNEL_IPV6_SUBNET when the file has one),
          V(mismatch) when not, V(no subnet.env) without a FLANNEL_SUBNET or FLANNEL_IPV6_SUBNET, V(-) when
          not gathered.
      type: str
      sample: ok
devices:
  description: The links whose names match a backend's device pattern in the catalogue.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "flannel.1", "kind": "vxlan", "backend": "vxlan", "mtu": 1450, "up": true}]
routes:
  description: The routes tagged with a backend's route protocol, both address families, every table.
  returned: always
  type: list
  elements: dict
  sample: [{"family": 4, "dst": "10.100.7.0/24", "gateway": "10.100.7.0", "dev": "flannel.1", "protocol": 109,
            "backend": "vxlan"}]
services:
  description: The state of each of O(services) (systemd's ActiveState), V(-) when the unit does not exist.
  returned: always
  type: dict
  sample: {"flanneld": "active", "docker": "active", "etcd": "-"}
agent:
  description: The agent installed in O(install_dir).
  returned: always
  type: dict
  sample: {"installed": true, "python": "/opt/pyflannel/bin/python", "version": "0.3.0"}
problems:
  description:
    - One line per thing that is wrong on a flannel node, from what was gathered - no subnet file, the bridge
      not on the flannel subnets, flanneld or docker not active, and RV(cert_problems).
  returned: always
  type: list
  elements: str
certs:
  description: With V(certs) in O(gather), one entry per file of O(certs), in the order given.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "member", "path": "/etc/etcd/pki/member.crt", "exists": true, "error": "", "days_left": 3649,
            "certs": [{"subject": "CN=node1", "issuer": "CN=netfabric-flannel etcd CA", "serial": "4f1a",
                       "not_before": "2026-12-06T11:02:10Z", "not_after": "2036-12-04T11:02:10Z", "days_left": 3649,
                       "self_signed": false, "expiring": false, "fingerprint_sha256": "9b0c..."}]}]
etcd:
  description: With V(etcd) in O(gather), the local member's status; its C(error) says why when not readable.
  returned: always
  type: dict
  sample: {"reachable": true, "version": "3.4.23", "db_size": 20480, "db_size_in_use": 16384,
           "member_id": "8e9e05c52164694d", "leader_id": "8e9e05c52164694d", "leader": true, "error": ""}
cert_problems:
  description:
    - The lines of RV(problems) about certificates - a file of O(certs) that cannot be read, a certificate that
      has expired (one that expires within O(cert_warn_days) is only marked C(expiring) in RV(certs)).
  returned: always
  type: list
  elements: str
wheel_fit:
  description: With O(wheels), how they fit the interpreter.
  returned: when O(wheels) is given
  type: dict
  contains:
    interpreter:
      description: The interpreter asked (O(wheel_python), or this module's own when that is absent).
      type: str
    python:
      description: Its version, major.minor.
      type: str
      sample: "3.11"
    architecture:
      description: Its machine architecture.
      type: str
      sample: x86_64
    method:
      description:
        - Where the tags came from - V(packaging), V(pip), V(pip wheel <path>), or V(basic) (no packaging
          implementation on the node, see O(wheel_python)).
      type: str
      sample: packaging
    misfits:
      description: The wheels none of whose tags the interpreter supports.
      type: list
      elements: str
    misfit_pythons:
      description: The python tags of the misfits.
      type: list
      elements: str
      sample: [cp39]
    misfit_platforms:
      description: The architectures of the misfits' platform tags (C(manylinux_2_28_aarch64) gives C(aarch64)).
      type: list
      elements: str
      sample: [aarch64]
"""

import glob
import ipaddress
import os

from ansible.module_utils.basic import AnsibleModule

from ..module_utils import subnetenv
from ..module_utils.certinfo import cert_file_info, etcd_member_status
from ..module_utils.netstate import bridge_info, devices, routes
from ..module_utils.wheelfit import basic_fit, wheel_fit, wheel_tags

# wheel_tags and basic_fit: for the unit tests, which reach them through this module
__all__ = ["basic_fit", "main", "wheel_fit", "wheel_tags"]

PARTS = ["subnet", "bridge", "devices", "routes", "services", "agent"]
# read only when asked for: they need settings (file paths, an endpoint) the default run has no use for
EXTRA_PARTS = ["certs", "etcd"]


def read_subnet(module, path):
    """The parsed file; empty when it does not exist. Any other read error fails the module."""
    try:
        return subnetenv.read(path)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        module.fail_json(msg="cannot read %s: %s" % (path, err))


def first_address(value):
    """``10.100.42.1/24`` -> ``10.100.42.1``; empty for anything else."""
    try:
        return str(ipaddress.ip_interface(value.strip()).ip) if value else ""
    except ValueError:
        return ""


def services(module, names):
    systemctl = module.get_bin_path("systemctl")
    out = {}
    for name in names:
        state = "-"
        if systemctl is not None:
            rc, text, _err = module.run_command([systemctl, "show", "--property=LoadState,ActiveState",
                                                 name + ".service"])
            props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line) if rc == 0 else {}
            if props.get("LoadState", "not-found") != "not-found":
                state = props.get("ActiveState", "-")
        out[name] = state
    return out


def agent(install_dir):
    python = os.path.join(install_dir, "bin", "python")
    version = None
    for meta in sorted(glob.glob(os.path.join(install_dir, "lib", "python*", "site-packages",
                                              "pyflannel-*.dist-info", "METADATA"))):
        with open(meta, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("Version:"):
                    version = line.split(":", 1)[1].strip()
                    break
    return {"installed": os.path.exists(python), "python": python, "version": version}


def cert_problems(files):
    """An unreadable certificate file or an expired certificate is a problem; one expiring soon is not."""
    out = []
    for item in files:
        if item["error"]:
            out.append("%s certificate %s: %s" % (item["name"], item["path"], item["error"]))
        for cert in item["certs"]:
            if cert["days_left"] < 0:
                out.append("%s certificate %s (%s) expired on %s"
                           % (item["name"], item["path"], cert["subject"], cert["not_after"]))
    return out


def problems(result, gather):
    out = list(result["cert_problems"])
    if "subnet" in gather and not result["subnet_env"]:
        out.append("no %s (is flanneld running?)" % result["subnet_file"])
    elif "bridge" in gather and result["bridge"]["state"] == "mismatch":
        bridge = result["bridge"]
        want, want6 = result["subnet_env"].get("FLANNEL_SUBNET"), result["subnet_env"].get("FLANNEL_IPV6_SUBNET")
        if want and want not in bridge["addresses"]:
            out.append("%s is %s, subnet.env says %s" % (bridge["name"], ", ".join(bridge["addresses"]) or "missing",
                                                         want))
        if want6 and want6 not in bridge["addresses6"]:
            have6 = ", ".join(bridge["addresses6"]) or "none"
            out.append("%s has IPv6 %s, subnet.env says %s" % (bridge["name"], have6, want6))
    if "services" not in gather:
        return out
    for name in ("flanneld", "docker"):
        state = result["services"].get(name)
        if state not in (None, "active"):
            out.append("%s is %s" % (name, state))
    return out


def main():
    module = AnsibleModule(
        argument_spec=dict(
            subnet_file=dict(type="path", default=subnetenv.DEFAULT_PATH),
            install_dir=dict(type="path", default="/opt/pyflannel"),
            bridge=dict(type="str", default="docker0"),
            services=dict(type="list", elements="str", default=["flanneld", "docker", "etcd"]),
            gather=dict(type="list", elements="str", choices=PARTS + EXTRA_PARTS, default=PARTS),
            certs=dict(type="dict", default={}),
            cert_warn_days=dict(type="int", default=30),
            etcd_endpoint=dict(type="str", default="https://127.0.0.1:2379"),
            etcd_ca_cert=dict(type="path"),
            etcd_client_cert=dict(type="path"),
            etcd_client_key=dict(type="path", no_log=False),
            wheels=dict(type="list", elements="str"),
            wheel_python=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    gather = params["gather"]
    env = read_subnet(module, params["subnet_file"]) if "subnet" in gather else {}
    result = {
        "changed": False,
        "subnet_file": params["subnet_file"],
        "subnet_env": env,
        "flannel_address": first_address(env.get("FLANNEL_SUBNET")),
        "flannel_address6": first_address(env.get("FLANNEL_IPV6_SUBNET")),
        "mtu": int(env["FLANNEL_MTU"]) if env.get("FLANNEL_MTU", "").isdigit() else None,
        "bridge": bridge_info(module, params["bridge"], env) if "bridge" in gather else
        {"name": params["bridge"], "exists": None, "addresses": [], "addresses6": [], "mtu": None, "state": "-"},
        "devices": devices(module) if "devices" in gather else [],
        "routes": routes(module) if "routes" in gather else [],
        "services": services(module, params["services"]) if "services" in gather else {},
        "agent": agent(params["install_dir"]) if "agent" in gather else {},
        "certs": [cert_file_info(name, path, params["cert_warn_days"]) for name, path in params["certs"].items()]
        if "certs" in gather else [],
        "etcd": etcd_member_status(params["etcd_endpoint"], params["etcd_ca_cert"], params["etcd_client_cert"],
                                   params["etcd_client_key"]) if "etcd" in gather else {},
    }
    result["cert_problems"] = cert_problems(result["certs"])
    result["problems"] = problems(result, gather)
    if params["wheels"] is not None:
        result["wheel_fit"] = wheel_fit(module, params["wheels"], params["wheel_python"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
