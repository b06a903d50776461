#!/usr/bin/python
# Copyright: netfabric.flannel contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: flannel_lease_info
short_description: List the subnet leases of a flannel network
version_added: "0.1.0"
description:
  - Lists the leases under C(<prefix>/subnets/) in etcd, one per flannel node, with the subnet, the IPv6
    subnet (dual-stack and IPv6-only networks), the node's public IP and public IPv6 address, the backend, the
    VTEP MAC (vxlan), when the lease expires and whether it is a reservation (a lease key without TTL that
    belongs to its public IP for good).
  - Reads both lease shapes Go flanneld has written (v0.11 and current) and pyflannel's.
  - Never changes anything.
author:
  - netfabric.flannel developers (@netfabric)
extends_documentation_fragment:
  - netfabric.flannel.etcd
  - netfabric.flannel.read_only
options:
  public_ip:
    description:
      - Only list the leases of this public IP.
    type: str
  public_ipv6:
    description:
      - Only list the leases of this public IPv6 address (C(PublicIPv6)).
    type: str
  subnet:
    description:
      - Only list leases whose IPv4 subnet overlaps this IPv4 CIDR, like V(10.1.5.0/24) or V(10.1.0.0/20).
    type: str
  ipv6_subnet:
    description:
      - Only list leases whose IPv6 subnet overlaps this IPv6 CIDR, like V(fc00:0:0:5::/64) or V(fc00::/56).
      - Given with O(subnet), a lease must match both.
    type: str
attributes:
  platform:
    support: full
    platforms: posix
    description: Runs on any host with Python that reaches the etcd endpoints.
seealso:
  - module: netfabric.flannel.flannel_lease
  - module: netfabric.flannel.flannel_network
"""

EXAMPLES = r"""
- name: All leases of a network kept under the etcd v3 API
  netfabric.flannel.flannel_lease_info:
    endpoints: [http://10.0.0.11:2379]
    api: v3
  register: flannel_leases

- name: Show which host holds which subnet
  ansible.builtin.debug:
    msg: "{{ flannel_leases.leases | items2dict(key_name='subnet', value_name='public_ip') }}"

- name: The lease of one host, in a classic network under the etcd v2 API
  netfabric.flannel.flannel_lease_info:
    api: v2
    public_ip: 10.0.0.21
  register: node_lease

- name: The leases in one part of the IPv6 range, wherever the network config is (v2 or v3)
  netfabric.flannel.flannel_lease_info:
    api: auto
    ipv6_subnet: fc00:100::/56
  register: some_leases

- name: Which API that was
  ansible.builtin.debug:
    var: some_leases.api
"""

RETURN = r"""
leases:
  description: The leases that match the filters, ordered by subnet (IPv6-only leases last, by IPv6 subnet).
  returned: always
  type: list
  elements: dict
  contains:
    subnet:
      description: The leased IPv4 subnet; null for a lease of an IPv6-only network (key C(0.0.0.0-0&<ip6>-<len>)).
      type: str
      sample: 10.100.42.0/24
    ipv6_subnet:
      description: The leased IPv6 subnet (the key's C(&<ip6>-<len>) part); null for an IPv4 lease.
      type: str
      sample: fc00:100:0:2a::/64
    public_ip:
      description: The node's public IP (C(PublicIP)); null when the lease says C(0.0.0.0) (a node without IPv4).
      type: str
      sample: 192.0.2.1
    public_ipv6:
      description: The node's public IPv6 address (C(PublicIPv6)); null when unset.
      type: str
      sample: 2001:db8::1
    backend_type:
      description: The backend type of the lease; a lease without C(BackendType) reads as V(udp), as Go's udp writes it.
      type: str
      sample: vxlan
    vtep_mac:
      description: The VTEP MAC address of a vxlan lease, else null.
      type: str
      sample: 7a:fd:a9:52:84:87
    reservation:
      description: True for a key without TTL (a reserved subnet).
      type: bool
      sample: false
    expiration:
      description: Unix time when the lease expires; null for a reservation.
      type: int
      sample: 1790000000
    ttl:
      description: Seconds until the lease expires; null for a reservation.
      type: int
      sample: 86315
    key:
      description: The etcd key.
      type: str
      sample: /coreos.com/network/subnets/10.100.42.0-24
    value:
      description: The stored JSON value.
      type: str
      sample: '{"PublicIP":"192.0.2.1","BackendType":"host-gw"}'
skipped:
  description:
    - Keys under the subnets directory that agents do not use, with the reason, judged by the same validator
      as the agent's.
    - A key or value that does not parse, a value over 64 KiB, a subnet outside C(Network) or not of the
      configured C(SubnetLen), a PublicIP that is not unicast, a vxlan C(VtepMAC) that is not a unicast MAC,
      and the younger of two leases that overlap or share a C(VtepMAC) (the older one, by etcd create
      revision, stays in RV(leases)).
    - The same for IPv6 - an IPv6 subnet outside C(IPv6Network) or not of C(IPv6SubnetLen), an IPv6 subnet
      without C(PublicIPv6), a C(PublicIPv6) that is link-local, multicast or IPv4-mapped, an IPv6-only lease
      in a network without IPv6 or an IPv4 lease in an IPv6-only network, and overlapping IPv6 subnets.
  returned: always
  type: list
  elements: dict
  sample: [{key: /coreos.com/network/subnets/10.1.2.300-24, reason: "not a lease key: ..."}]
config:
  description:
    - The effective network config with defaults filled in; empty when there is none or it is invalid.
    - Secret backend options (the wireguard C(PSK)) are shown as V((hidden)).
  returned: always
  type: dict
  sample: {Network: 10.100.0.0/16, SubnetLen: 24, SubnetMin: 10.100.1.0, SubnetMax: 10.100.255.0,
           Backend: {Type: udp, Port: 8285, MTU: null}}
config_error:
  description: Why the stored network config is invalid, if it is.
  returned: when the stored config does not pass the schema
  type: str
  sample: 'invalid network config: Network is missing; ...'
api:
  description:
    - The etcd API that was used, V(v2) or V(v3); with O(api=auto), the API under which C(<prefix>/config) was
      found (V(v3) when there is none and the v3 API answers).
  returned: always
  type: str
  sample: v2
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netfabric.flannel.plugins.module_utils.flannel_module import (
    ETCD_REQUIRED_TOGETHER,
    connect_store,
    etcd_argument_spec,
    fill_expiration,
    lease_summary,
    parse_ip,
    parse_subnet,
    read_config,
    read_leases,
)
from ansible_collections.netfabric.flannel.plugins.module_utils.catalogue import redact
from ansible_collections.netfabric.flannel.plugins.module_utils.leases import judge_leases, subnets_dir


def main() -> None:
    module = AnsibleModule(
        argument_spec=etcd_argument_spec(
            public_ip=dict(type="str"),
            public_ipv6=dict(type="str"),
            subnet=dict(type="str"),
            ipv6_subnet=dict(type="str"),
        ),
        required_together=ETCD_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    params = module.params
    want_ip = parse_ip(module, "public_ip", params["public_ip"], 4) if params["public_ip"] else None
    want_ip6 = parse_ip(module, "public_ipv6", params["public_ipv6"], 6) if params["public_ipv6"] else None
    want_net = parse_subnet(module, "subnet", params["subnet"], 4, strict=False) if params["subnet"] else None
    want_net6 = (parse_subnet(module, "ipv6_subnet", params["ipv6_subnet"], 6, strict=False)
                 if params["ipv6_subnet"] else None)

    store = connect_store(module)
    _kv, config, config_error = read_config(module, store)
    leases, skipped = read_leases(module, store)
    if config is not None:
        _usable, refused = judge_leases([lease for _kv, lease in leases], config.network, config.subnet_len,
                                        config.ipv6_network, config.ipv6_subnet_len)
        leases = [(kv, lease) for kv, lease in leases if lease.key_name not in refused]
        base = subnets_dir(module.params["prefix"])
        skipped.extend({"key": base + name, "reason": why} for name, why in sorted(refused.items()))
    now = time.time()
    out = []
    for kv, lease in leases:
        if want_ip is not None and lease.attrs.public_ip != want_ip:
            continue
        if want_ip6 is not None and lease.attrs.public_ipv6 != want_ip6:
            continue
        if want_net is not None and (lease.subnet is None or not lease.subnet.overlaps(want_net)):
            continue
        if want_net6 is not None and (lease.ipv6_subnet is None or not lease.ipv6_subnet.overlaps(want_net6)):
            continue
        fill_expiration(module, store, kv, lease)
        out.append(lease_summary(kv, lease, now))
    result = dict(changed=False, api=store.api, leases=out, skipped=skipped,
                  config=redact(config.to_dict()) if config is not None else {})
    if config_error:
        result["config_error"] = config_error
    module.exit_json(**result)


if __name__ == "__main__":
    main()
