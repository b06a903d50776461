#!/usr/bin/python
# Copyright: netfabric.flannel contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: flannel_lease
short_description: Reserve or release flannel subnet leases in etcd
version_added: "0.1.0"
description:
  - With O(state=present), reserves a subnet for a node's public IP. A reservation is a lease key
    without TTL; the flannel agent with that public IP takes it (and keeps it TTL-less) instead of picking a
    free subnet, and no other node can take it.
  - When the node already holds a lease on that very subnet, that lease becomes a reservation (its value is
    kept, only the TTL goes away).
  - The subnet must be one the network config hands out (inside C(Network), of C(SubnetLen), between
    C(SubnetMin) and C(SubnetMax)); this is checked with the collection's network-config schema.
  - With O(state=absent), releases a lease or reservation, by subnet or by public IP, for example the
    lease of a decommissioned host that would otherwise keep its subnet for up to 24 hours (a reservation
    forever).
author:
  - netfabric.flannel developers (@netfabric)
extends_documentation_fragment:
  - netfabric.flannel.etcd
options:
  subnet:
    description:
      - The subnet as an IPv4 CIDR, like V(10.1.5.0/24). Required when O(state=present).
    type: str
  public_ip:
    description:
      - The node's public IP, the address its agent publishes (C(--public-ip)). Required when O(state=present).
      - With O(state=absent) and no O(subnet), every lease of this IP is released; with O(subnet), the lease
        must belong to this IP or the module fails and releases nothing.
    type: str
  state:
    description:
      - V(present) reserves O(subnet) for O(public_ip); V(absent) releases leases.
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
    description: Reports what would change without writing to etcd.
  diff_mode:
    support: full
    description: Shows the affected lease keys before and after.
  platform:
    support: full
    platforms: posix
    description: Runs on any host with Python that reaches the etcd endpoints.
notes:
  - Released leases of nodes that still run are taken again by their agents (a new subnet, unless reserved).
    Stop the agent first when a host is decommissioned.
seealso:
  - module: netfabric.flannel.flannel_lease_info
  - module: netfabric.flannel.flannel_network
"""

EXAMPLES = r"""
- name: Give node 10.0.0.21 the subnet 10.100.5.0/24 for good
  netfabric.flannel.flannel_lease:
    endpoints: [http://10.0.0.11:2379]
    subnet: 10.100.5.0/24
    public_ip: 10.0.0.21

- name: Free the subnet of a decommissioned host
  netfabric.flannel.flannel_lease:
    public_ip: 10.0.0.23
    state: absent

- name: Release one subnet
  netfabric.flannel.flannel_lease:
    subnet: 10.100.7.0/24
    state: absent
"""

RETURN = r"""
lease:
  description: The reservation after the run (as it would be, in check mode).
  returned: when O(state=present)
  type: dict
  sample:
    subnet: 10.100.5.0/24
    public_ip: 10.0.0.21
    backend_type: udp
    vtep_mac: null
    reservation: true
    expiration: null
    ttl: null
    key: /coreos.com/network/subnets/10.100.5.0-24
    value: '{"PublicIP":"10.0.0.21"}'
released:
  description:
    - The leases that were released (would be, in check mode), in the form
      M(netfabric.flannel.flannel_lease_info) returns.
  returned: when O(state=absent)
  type: list
  elements: dict
  sample:
    - {subnet: 10.100.7.0/24, public_ip: 10.0.0.23, reservation: false,
       key: /coreos.com/network/subnets/10.100.7.0-24}
api:
  description: The etcd API that was used.
  returned: always
  type: str
  sample: v3
"""

import ipaddress

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netfabric.flannel.plugins.module_utils.etcdstore import KV
from ansible_collections.netfabric.flannel.plugins.module_utils.flannel_module import (
    ETCD_REQUIRED_TOGETHER,
    connect_store,
    etcd_argument_spec,
    fill_expiration,
    lease_summary,
    prefix_of,
    read_config,
    read_leases,
    store_call,
)
from ansible_collections.netfabric.flannel.plugins.module_utils.leases import (
    Lease,
    LeaseAttrs,
    config_key,
    encode_lease,
    subnet_key,
)


def parse_subnet(module, text: str) -> ipaddress.IPv4Network:
    text = text.strip()
    if "/" not in text:
        module.fail_json(msg="subnet=%r: needs a prefix length, like 10.1.5.0/24" % text)
    try:
        return ipaddress.IPv4Network(text)
    except ValueError:
        pass
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        module.fail_json(msg="subnet=%r: is not an IPv4 CIDR like 10.1.5.0/24" % text)
    module.fail_json(msg="subnet=%r: has host bits set; the subnet is %s" % (text, net))


def parse_ip(module, text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text.strip()))
    except ValueError:
        module.fail_json(msg="public_ip=%r: is not an IPv4 address like 192.0.2.1" % text)


def kind(lease) -> str:
    return "reservation" if lease.reservation else "lease"


def diff_entry(kv_key: str, value: str, reservation: bool) -> dict:
    return {kv_key: {"value": value, "reservation": reservation}}


def reserve(module, store, subnet, public_ip: str) -> dict:
    prefix = prefix_of(module)
    _kv, config, config_error = read_config(module, store)
    if config_error:
        module.fail_json(msg="%s (in %s); fix the network config first" % (config_error, config_key(prefix)))
    if config is None:
        module.fail_json(msg="there is no network config at %s; write one with netfabric.flannel.flannel_network "
                             "first" % config_key(prefix))
    if not config.contains(subnet):
        module.fail_json(msg="subnet=%s: is not a subnet this network hands out (Network %s, SubnetLen %d, "
                             "SubnetMin %s, SubnetMax %s); pick a /%d in that range"
                             % (subnet, config.network, config.subnet_len, config.subnet_min, config.subnet_max,
                                config.subnet_len))
    key = subnet_key(prefix, subnet)
    leases, _skipped = read_leases(module, store)
    mine = None
    for kv, lease in leases:
        if kv.key == key:
            if lease.attrs.public_ip != public_ip:
                module.fail_json(msg="subnet %s is held by %s (a %s); release it first (state: absent) or reserve "
                                     "another subnet for %s" % (subnet, lease.attrs.public_ip, kind(lease), public_ip))
            mine = (kv, lease)
        elif lease.subnet.overlaps(subnet):
            module.fail_json(msg="subnet %s overlaps %s held by %s (a %s); release that one first"
                                 % (subnet, lease.subnet, lease.attrs.public_ip, kind(lease)))
        elif lease.attrs.public_ip == public_ip:
            module.fail_json(msg="%s already holds %s (a %s) and a node keeps one subnet; release it first "
                                 "(state: absent, subnet: %s) or reserve that subnet"
                                 % (public_ip, lease.subnet, kind(lease), lease.subnet))

    result = dict(changed=False, api=store.api)
    if mine is not None:
        fill_expiration(module, store, *mine)
    if mine is not None and mine[1].reservation:
        result["lease"] = lease_summary(*mine)
        if module._diff:
            entry = diff_entry(key, mine[0].value, True)
            result["diff"] = dict(before=entry, after=entry)
        return result

    if mine is not None:
        # The node's own lease on this subnet: keep its value, drop the TTL.
        kv, lease = mine
        value = kv.value
        before = diff_entry(key, value, False)
    else:
        value = encode_lease(LeaseAttrs(public_ip), store.api)
        before = {}
    result["changed"] = True
    if module._diff:
        result["diff"] = dict(before=before, after=diff_entry(key, value, True))
    if module.check_mode:
        attrs = mine[1].attrs if mine is not None else LeaseAttrs(public_ip)
        new = Lease(subnet, attrs, expiration=None, reservation=True, raw=value)
        result["lease"] = lease_summary(KV(key, value, 0), new)
        return result
    written = None
    if mine is not None:
        written = store_call(module, store.update, mine[0], value, None)
    if written is None:  # no lease there, or it expired meanwhile
        written = store_call(module, store.create, key, value, None)
    if written is None:
        module.fail_json(msg="subnet %s was taken by another node while reserving it; run again to see who holds it"
                             % subnet)
    new = Lease(subnet, LeaseAttrs(public_ip) if mine is None else mine[1].attrs, expiration=None,
                reservation=True, raw=value)
    result["lease"] = lease_summary(written, new)
    return result


def release(module, store, subnet, public_ip) -> dict:
    leases, _skipped = read_leases(module, store)
    doomed = []
    for kv, lease in leases:
        if subnet is not None:
            if lease.subnet != subnet:
                continue
            if public_ip is not None and lease.attrs.public_ip != public_ip:
                module.fail_json(msg="subnet %s is held by %s, not %s; nothing was released"
                                     % (subnet, lease.attrs.public_ip, public_ip))
        elif lease.attrs.public_ip != public_ip:
            continue
        fill_expiration(module, store, kv, lease)
        doomed.append((kv, lease))
    result = dict(changed=bool(doomed), api=store.api, released=[lease_summary(kv, lease) for kv, lease in doomed])
    if module._diff:
        before = {}
        for kv, lease in doomed:
            before.update(diff_entry(kv.key, kv.value, lease.reservation))
        result["diff"] = dict(before=before, after={})
    if not module.check_mode:
        for kv, _lease in doomed:
            store_call(module, store.delete, kv.key)
    return result


def main() -> None:
    module = AnsibleModule(
        argument_spec=etcd_argument_spec(
            subnet=dict(type="str"),
            public_ip=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        required_if=[["state", "present", ["subnet", "public_ip"]],
                     ["state", "absent", ["subnet", "public_ip"], True]],
        required_together=ETCD_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    params = module.params
    subnet = parse_subnet(module, params["subnet"]) if params["subnet"] else None
    public_ip = parse_ip(module, params["public_ip"]) if params["public_ip"] else None
    store = connect_store(module)
    if params["state"] == "present":
        result = reserve(module, store, subnet, public_ip)
    else:
        result = release(module, store, subnet, public_ip)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
