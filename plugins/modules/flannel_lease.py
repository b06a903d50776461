#!/usr/bin/python
# Copyright: netfabric.flannel contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: flannel_lease
short_description: Reserve or release flannel subnet leases in etcd
version_added: "0.1.0"
description:
  - With O(state=present), reserves a subnet (in a dual-stack network an IPv4 and an IPv6 subnet, in an IPv6-only
    network an IPv6 subnet) for a node's public IP. A reservation is a lease key
    without TTL; the flannel agent with that public IP takes it (and keeps it TTL-less) instead of picking a
    free subnet, and no other node can take it.
  - When the node already holds a lease on that very subnet, that lease becomes a reservation (its value is
    kept, only the TTL goes away).
  - The subnet must be one the network config hands out (inside C(Network), of C(SubnetLen), between
    C(SubnetMin) and C(SubnetMax)); this is checked with the collection's network-config schema. The same holds
    for the IPv6 subnet (C(IPv6Network), C(IPv6SubnetLen), C(IPv6SubnetMin), C(IPv6SubnetMax)).
  - A reservation that the agents' lease validator would skip (for example a PublicIPv6 that is link-local) is
    refused.
  - With O(state=absent), releases a lease or reservation, by subnet (IPv4 or IPv6) or by public IP (IPv4 or
    IPv6), for example the lease of a decommissioned host that would otherwise keep its subnet for up to 24
    hours (a reservation forever).
author:
  - netfabric.flannel developers (@netfabric)
extends_documentation_fragment:
  - netfabric.flannel.etcd
options:
  subnet:
    description:
      - The subnet as an IPv4 CIDR, like V(10.1.5.0/24).
      - Required when O(state=present) and the network has IPv4; must be left out for an IPv6-only network.
      - With O(state=absent), releases the lease holding this IPv4 subnet.
    type: str
  ipv6_subnet:
    description:
      - The IPv6 subnet as an IPv6 CIDR, like V(fc00:0:0:5::/64).
      - Required when O(state=present) and the network has IPv6 (C(EnableIPv6)); refused when it has not.
      - With O(state=absent), releases the lease holding this IPv6 subnet; this addresses IPv6-only leases
        (key C(0.0.0.0-0&<ip6>-<len>)). Given with O(subnet), both must be the lease's.
    type: str
  public_ip:
    description:
      - The node's public IP, the address its agent publishes (C(--public-ip)).
      - Required when O(state=present) and the network has IPv4; optional in an IPv6-only network (a node
        without IPv4 publishes C(0.0.0.0)).
      - With O(state=absent) and no O(subnet) or O(ipv6_subnet), every lease of this IP is released; with a
        subnet, the lease must belong to this IP or the module fails and releases nothing.
    type: str
  public_ipv6:
    description:
      - The node's public IPv6 address (C(PublicIPv6), the agent's C(--public-ipv6)).
      - Required when O(state=present) and the network has IPv6; refused when it has not.
      - With O(state=absent), selects leases the way O(public_ip) does; given with O(public_ip), a lease must
        carry both.
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
    api: v3
    subnet: 10.100.5.0/24
    public_ip: 10.0.0.21

- name: Free the subnet of a decommissioned host of a classic (etcd v2) network
  netfabric.flannel.flannel_lease:
    api: v2
    public_ip: 10.0.0.23
    state: absent

- name: Release one subnet, under the API that holds the network config
  netfabric.flannel.flannel_lease:
    api: auto
    subnet: 10.100.7.0/24
    state: absent

- name: Dual-stack network, reserve both subnets for node 10.0.0.22 / 2001:db8::22
  netfabric.flannel.flannel_lease:
    api: v3
    subnet: 10.100.6.0/24
    ipv6_subnet: fc00:100:0:6::/64
    public_ip: 10.0.0.22
    public_ipv6: 2001:db8::22

- name: Release a lease of an IPv6-only network
  netfabric.flannel.flannel_lease:
    api: v3
    ipv6_subnet: fd00:42::300/120
    state: absent
"""

RETURN = r"""
lease:
  description: The reservation after the run (as it would be, in check mode).
  returned: when O(state=present)
  type: dict
  contains:
    subnet:
      description: The IPv4 subnet; null for a lease of an IPv6-only network.
      type: str
      sample: 10.100.5.0/24
    ipv6_subnet:
      description: The IPv6 subnet; null when the network has no IPv6.
      type: str
      sample: fc00:100:0:5::/64
    public_ip:
      description: The node's public IP (C(PublicIP)); null when it publishes none (C(0.0.0.0)).
      type: str
      sample: 10.0.0.21
    public_ipv6:
      description: The node's public IPv6 address (C(PublicIPv6)), null when unset.
      type: str
      sample: 2001:db8::21
    reservation:
      description: Always true after O(state=present).
      type: bool
      sample: true
    backend_type:
      description: The backend type of the lease (V(udp) for a lease without C(BackendType)).
      type: str
      sample: udp
    vtep_mac:
      description: The VTEP MAC address of a vxlan lease, else null.
      type: str
      sample: null
    expiration:
      description: Always null (a reservation has no TTL).
      type: int
      sample: null
    ttl:
      description: Always null (a reservation has no TTL).
      type: int
      sample: null
    key:
      description: The etcd key of the reservation.
      type: str
      sample: /coreos.com/network/subnets/10.100.5.0-24&fc00:100:0:5::-64
    value:
      description: The stored JSON value.
      type: str
      sample: '{"PublicIP":"10.0.0.21","PublicIPv6":"2001:db8::21"}'
  sample:
    subnet: 10.100.5.0/24
    ipv6_subnet: null
    public_ip: 10.0.0.21
    public_ipv6: null
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
    - {subnet: 10.100.7.0/24, ipv6_subnet: null, public_ip: 10.0.0.23, public_ipv6: null, reservation: false,
       key: /coreos.com/network/subnets/10.100.7.0-24}
api:
  description:
    - The etcd API that was used, V(v2) or V(v3); with O(api=auto), the API under which C(<prefix>/config) was
      found.
  returned: always
  type: str
  sample: v3
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netfabric.flannel.plugins.module_utils.etcdstore import KV
from ansible_collections.netfabric.flannel.plugins.module_utils.flannel_module import (
    ETCD_REQUIRED_TOGETHER,
    connect_store,
    etcd_argument_spec,
    fill_expiration,
    lease_summary,
    parse_ip,
    parse_subnet,
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
    lease_problem,
    subnet_key,
)

# The options of each family: (subnet option, public address option, config key naming the family).
FAMILIES = {4: ("subnet", "public_ip", "EnableIPv4"), 6: ("ipv6_subnet", "public_ipv6", "EnableIPv6")}


def kind(lease) -> str:
    return "reservation" if lease.reservation else "lease"


def holder(lease) -> str:
    """Who holds a lease, for messages: its PublicIP, PublicIPv6 or both."""
    return "/".join(ip for ip in (lease.attrs.public_ip, lease.attrs.public_ipv6) if ip) or "0.0.0.0"


def is_node(lease, public_ip, public_ipv6) -> bool:
    """Whether ``lease`` belongs to the node named by its public IP (IPv6-only: by its public IPv6)."""
    if public_ip is not None:
        return lease.attrs.public_ip == public_ip
    return lease.attrs.public_ipv6 == public_ipv6


def owned(lease, public_ip, public_ipv6) -> bool:
    """Whether every address given (None: not given) is the lease's."""
    return ((public_ip is None or lease.attrs.public_ip == public_ip)
            and (public_ipv6 is None or lease.attrs.public_ipv6 == public_ipv6))


def family_arguments(module, config, subnets: dict, addresses: dict) -> None:
    """Each family the network has needs its subnet and public address; a family it has not, neither."""
    for version, (subnet_opt, ip_opt, flag) in FAMILIES.items():
        pool = config.pool(version)
        if pool is not None:
            missing = [opt for opt, value in ((subnet_opt, subnets[version]), (ip_opt, addresses[version]))
                       if value is None]
            if missing:
                names = " and ".join(missing)
                module.fail_json(msg="%s missing: the network (IPv%d %s) gives every lease an IPv%d subnet and "
                                     "public address; add %s" % (names, version, pool.network, version, names))
            continue
        given = [opt for opt, value in ((subnet_opt, subnets[version]), (ip_opt, addresses[version]))
                 if value is not None and opt != "public_ip"]  # a node of an IPv6-only network may publish IPv4
        if given:
            module.fail_json(msg="%s: the network config has no IPv%d (%s is false); leave %s out or change the "
                                 "network with netfabric.flannel.flannel_network first"
                                 % (", ".join(given), version, flag, "them" if len(given) > 1 else "it"))


def outside_message(version, subnet, pool) -> str:
    lead = "" if version == 4 else "IPv6"
    option = FAMILIES[version][0]
    return ("%s=%s: is not a subnet this network hands out (%sNetwork %s, %sSubnetLen %d, %sSubnetMin %s, "
            "%sSubnetMax %s); pick a /%d in that range"
            % (option, subnet, lead, pool.network, lead, pool.subnet_len, lead, pool.subnet_min, lead,
               pool.subnet_max, pool.subnet_len))


def diff_entry(kv_key: str, value: str, reservation: bool) -> dict:
    return {kv_key: {"value": value, "reservation": reservation}}


def reserve(module, store, subnet, public_ip, ipv6_subnet=None, public_ipv6=None) -> dict:
    prefix = prefix_of(module)
    _kv, config, config_error = read_config(module, store)
    if config_error:
        module.fail_json(msg="%s (in %s); fix the network config first" % (config_error, config_key(prefix)))
    if config is None:
        module.fail_json(msg="there is no network config at %s; write one with netfabric.flannel.flannel_network "
                             "first" % config_key(prefix))
    family_arguments(module, config, {4: subnet, 6: ipv6_subnet}, {4: public_ip, 6: public_ipv6})
    for version, net in ((4, subnet), (6, ipv6_subnet)):
        pool = config.pool(version)
        if pool is not None and not pool.contains(net):
            module.fail_json(msg=outside_message(version, net, pool))
    wanted = Lease(subnet, LeaseAttrs(public_ip, public_ipv6=public_ipv6), reservation=True,
                   ipv6_subnet=ipv6_subnet)
    why = lease_problem(wanted, config.network, config.subnet_len, config.ipv6_network, config.ipv6_subnet_len)
    if why:
        module.fail_json(msg="refusing to reserve %s for %s: agents would skip this lease because %s"
                             % (wanted.label, holder(wanted), why))
    node = public_ip or public_ipv6
    key = subnet_key(prefix, subnet, ipv6_subnet)
    leases, _skipped = read_leases(module, store)
    mine = None
    for kv, lease in leases:
        if kv.key == key:
            if not owned(lease, public_ip, public_ipv6):
                module.fail_json(msg="subnet %s is held by %s (a %s); release it first (state: absent) or reserve "
                                     "another subnet for %s" % (wanted.label, holder(lease), kind(lease),
                                                                holder(wanted)))
            mine = (kv, lease)
            continue
        for theirs, ours in ((lease.subnet, subnet), (lease.ipv6_subnet, ipv6_subnet)):
            if theirs is not None and ours is not None and theirs.overlaps(ours):
                module.fail_json(msg="subnet %s overlaps %s held by %s (a %s); release that one first"
                                     % (ours, lease.label, holder(lease), kind(lease)))
        if is_node(lease, public_ip, public_ipv6):
            first = lease.subnet if lease.subnet is not None else lease.ipv6_subnet
            option = "subnet" if lease.subnet is not None else "ipv6_subnet"
            module.fail_json(msg="%s already holds %s (a %s) and a node keeps one subnet; release it first "
                                 "(state: absent, %s: %s) or reserve that subnet"
                                 % (node, lease.label, kind(lease), option, first))

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
        value = encode_lease(wanted.attrs, store.api)
        before = {}
    result["changed"] = True
    if module._diff:
        result["diff"] = dict(before=before, after=diff_entry(key, value, True))
    if module.check_mode:
        attrs = mine[1].attrs if mine is not None else wanted.attrs
        new = Lease(subnet, attrs, expiration=None, reservation=True, raw=value, ipv6_subnet=ipv6_subnet)
        result["lease"] = lease_summary(KV(key, value, 0), new)
        return result
    written = None
    if mine is not None:
        written = store_call(module, store.update, mine[0], value, None)
    if written is None:  # no lease there, or it expired meanwhile
        written = store_call(module, store.create, key, value, None)
    if written is None:
        module.fail_json(msg="subnet %s was taken by another node while reserving it; run again to see who holds it"
                             % wanted.label)
    new = Lease(subnet, wanted.attrs if mine is None else mine[1].attrs, expiration=None,
                reservation=True, raw=value, ipv6_subnet=ipv6_subnet)
    result["lease"] = lease_summary(written, new)
    return result


def release(module, store, subnet, public_ip, ipv6_subnet=None, public_ipv6=None) -> dict:
    leases, _skipped = read_leases(module, store)
    doomed = []
    for kv, lease in leases:
        if subnet is not None or ipv6_subnet is not None:
            if subnet is not None and lease.subnet != subnet:
                continue
            if ipv6_subnet is not None and lease.ipv6_subnet != ipv6_subnet:
                continue
            if not owned(lease, public_ip, public_ipv6):
                module.fail_json(msg="subnet %s is held by %s, not %s; nothing was released"
                                     % (lease.label, holder(lease), "/".join(ip for ip in (public_ip, public_ipv6)
                                                                             if ip)))
        elif not owned(lease, public_ip, public_ipv6):
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
            ipv6_subnet=dict(type="str"),
            public_ip=dict(type="str"),
            public_ipv6=dict(type="str"),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        # which family needs which option is the network config's say (reserve() checks it)
        required_if=[["state", "present", ["subnet", "ipv6_subnet"], True],
                     ["state", "present", ["public_ip", "public_ipv6"], True],
                     ["state", "absent", ["subnet", "ipv6_subnet", "public_ip", "public_ipv6"], True]],
        required_together=ETCD_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    params = module.params
    subnet = parse_subnet(module, "subnet", params["subnet"], 4) if params["subnet"] else None
    ipv6_subnet = parse_subnet(module, "ipv6_subnet", params["ipv6_subnet"], 6) if params["ipv6_subnet"] else None
    public_ip = parse_ip(module, "public_ip", params["public_ip"], 4) if params["public_ip"] else None
    public_ipv6 = parse_ip(module, "public_ipv6", params["public_ipv6"], 6) if params["public_ipv6"] else None
    store = connect_store(module)
    if params["state"] == "present":
        result = reserve(module, store, subnet, public_ip, ipv6_subnet, public_ipv6)
    else:
        result = release(module, store, subnet, public_ip, ipv6_subnet, public_ipv6)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
