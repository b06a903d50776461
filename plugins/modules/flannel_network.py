#!/usr/bin/python
# Copyright: netfabric.flannel contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: flannel_network
short_description: Write the flannel network config to etcd
version_added: "0.1.0"
description:
  - 'Writes the flannel network config, the JSON document at C(<prefix>/config) that every flannel agent
    (pyflannel or Go flanneld) reads, for example C({"Network": "10.1.0.0/16", "Backend": {"Type": "vxlan"}}).'
  - The options are validated by the collection's network-config schema before anything is written; an
    invalid value fails with the schema's one-line message and etcd is left as it was.
  - The stored JSON uses Go flanneld's key names (C(Network), C(SubnetLen), C(SubnetMin), C(SubnetMax),
    C(EnableIPv6), C(IPv6Network), C(Backend.Type), C(VNI), C(Port), C(DirectRouting) ...) and holds only the
    options you give, plus C(Backend.Type). C(EnableIPv4) is stored only when it is V(false), C(EnableIPv6) and
    C(EnableNFTables) only when they are V(true), so an IPv4-only config looks exactly as before IPv6 existed.
  - IPv6 follows Go flanneld v0.20. O(enable_ipv6=true) with O(ipv6_network) gives a dual-stack network (every
    lease holds an IPv4 and an IPv6 subnet); adding O(enable_ipv4=false) gives an IPv6-only network, which needs
    a backend that carries IPv6 (not V(udp)).
  - The stored config is compared semantically with the wanted one (defaults and key order do not count),
    so a config written by hand or by another tool is not rewritten when it means the same.
  - Changing C(Network), C(SubnetLen), C(IPv6Network) or C(IPv6SubnetLen), switching a family off (C(EnableIPv4)
    or C(EnableIPv6) to false) while leases exist, or any change that leaves an existing lease outside the new
    ranges, needs O(force=true). Every node holding such a lease drops it and acquires a new subnet, so its
    containers get new addresses. Switching a family on needs no force, as each node keeps its subnets and adds
    one of the new family when its agent restarts.
author:
  - netfabric.flannel developers (@netfabric)
extends_documentation_fragment:
  - netfabric.flannel.etcd
options:
  network:
    description:
      - The overlay address range as an IPv4 CIDR, like V(10.1.0.0/16) (C(Network)).
      - Required when O(state=present), unless O(enable_ipv4=false).
    type: str
  subnet_len:
    description:
      - The prefix length of each host's subnet (C(SubnetLen)).
      - Default of the schema when left out is V(24) for networks of /22 or larger, else the network's
        prefix length + 2.
    type: int
  subnet_min:
    description:
      - The first subnet handed out (C(SubnetMin)), an address on a O(subnet_len) boundary inside
        O(network). Default is the second subnet of the network.
    type: str
  subnet_max:
    description:
      - The last subnet handed out (C(SubnetMax)). Default is the last subnet of the network.
    type: str
  enable_ipv4:
    description:
      - Whether the network has IPv4 (C(EnableIPv4)). V(false) together with O(enable_ipv6=true) is an IPv6-only
        network; O(network), O(subnet_len), O(subnet_min) and O(subnet_max) must then be left out.
    type: bool
    default: true
  enable_ipv6:
    description:
      - Whether the network has IPv6 (C(EnableIPv6)); needs O(ipv6_network). The O(ipv6_network),
        O(ipv6_subnet_len), O(ipv6_subnet_min) and O(ipv6_subnet_max) options are only accepted with V(true).
    type: bool
    default: false
  enable_nftables:
    description:
      - Whether the agents put their masquerade and forward rules into nftables instead of iptables
        (C(EnableNFTables), Go flanneld v0.25 and later). With V(true) every agent keeps its rules in the tables
        C(flannel-ipv4) (family C(ip)) and C(flannel-ipv6) (family C(ip6)) and leaves iptables alone; the nodes
        need the C(nft) command (Debian package C(nftables)).
      - A change is applied by each agent when it restarts (RV(restart_agents) is V(true)); no lease moves.
    type: bool
    default: false
  ipv6_network:
    description:
      - The IPv6 overlay address range as an IPv6 CIDR, like V(fc00::/48) (C(IPv6Network)); the prefix must be
        /124 or shorter.
      - Required when O(enable_ipv6=true).
    type: str
  ipv6_subnet_len:
    description:
      - The prefix length of each host's IPv6 subnet (C(IPv6SubnetLen)), at most V(126) and at least the
        O(ipv6_network) prefix length + 2.
      - Default of the schema when left out is V(64) for networks of /62 or larger, else the network's prefix
        length + 2.
    type: int
  ipv6_subnet_min:
    description:
      - The first IPv6 subnet handed out (C(IPv6SubnetMin)), an IPv6 address on a O(ipv6_subnet_len) boundary
        inside O(ipv6_network). Default is the second subnet of the network.
    type: str
  ipv6_subnet_max:
    description:
      - The last IPv6 subnet handed out (C(IPv6SubnetMax)). Default is the last subnet of the network.
    type: str
  backend:
    description:
      - The datapath (C(Backend)) with its options. Options that the chosen type does not know are refused.
    type: dict
    suboptions:
      # >>> backend options (written by scripts/backend_options.py from the catalogue; edit that)
      type:
        description:
          - 'The backend type (C(Backend.Type)): V(udp), V(vxlan), V(host-gw), V(wireguard), V(alloc).'
          - Go flanneld's default when left out is V(udp).
        type: str
        default: udp
      port:
        description:
          - 'C(Port): UDP port the agent listens on and sends to (udp, default 8285); UDP port of the VXLAN
            device; 0 = the kernel''s 8472 (vxlan, default 0).'
        type: int
      mtu:
        description:
          - 'C(MTU): MTU of the flannel device; default the interface''s MTU minus the backend''s overhead (udp,
            vxlan, host-gw, wireguard).'
        type: int
      vni:
        description:
          - 'C(VNI): VXLAN network identifier (vxlan, default 1).'
        type: int
      gbp:
        description:
          - 'C(GBP): VXLAN Group Based Policy (vxlan, default false).'
        type: bool
      learning:
        description:
          - 'C(Learning): let the kernel learn VXLAN forwarding entries (vxlan, default false).'
        type: bool
      direct_routing:
        description:
          - 'C(DirectRouting): plain routes, without encapsulation, to hosts on the same L2 network (vxlan,
            default false).'
        type: bool
      mac_prefix:
        description:
          - 'C(MacPrefix): prefix of the VTEP MAC addresses, like 0E-2A (vxlan).'
        type: str
      listen_port:
        description:
          - 'C(ListenPort): UDP port WireGuard listens on (wireguard, default 51820).'
        type: int
      listen_port_v6:
        description:
          - 'C(ListenPortV6): UDP port of the IPv6 WireGuard device, used with IPv6 (wireguard, default 51821).'
        type: int
      psk:
        description:
          - 'C(PSK): pre-shared key (base64, as wg genpsk prints) applied to every peer (wireguard).'
        type: str
      persistent_keepalive_interval:
        description:
          - 'C(PersistentKeepaliveInterval): seconds between keepalives to every peer; 0 = off (wireguard,
            default 0).'
        type: int
      mode:
        description:
          - 'C(Mode): separate, one device per address family, or one device over the auto, ipv4 or ipv6
            underlay (wireguard, default separate); one of separate, auto, ipv4, ipv6.'
        type: str
        choices: [separate, auto, ipv4, ipv6]
      # <<< backend options
  force:
    description:
      - Allow a change that invalidates existing leases (a new O(network) or O(subnet_len), or a range that
        leaves a lease outside). Nodes then re-acquire a subnet in the new range.
    type: bool
    default: false
  state:
    description:
      - V(present) writes the config, V(absent) deletes the config key (leases are left alone).
    type: str
    choices: [present, absent]
    default: present
attributes:
  check_mode:
    support: full
    description: Reports what would change without writing to etcd.
  diff_mode:
    support: full
    description: Shows the stored JSON before and after.
  platform:
    support: full
    platforms: posix
    description: Runs on any host with Python that reaches the etcd endpoints.
seealso:
  - module: netfabric.flannel.flannel_lease_info
  - module: netfabric.flannel.flannel_lease
"""

EXAMPLES = r"""
- name: VXLAN network, one /24 per host
  netfabric.flannel.flannel_network:
    api: v3
    endpoints:
      - http://10.0.0.11:2379
      - http://10.0.0.12:2379
    network: 10.100.0.0/16
    backend:
      type: vxlan
      vni: 1
      direct_routing: true
  run_once: true

- name: Three /25 subnets only, udp backend, etcd v2
  netfabric.flannel.flannel_network:
    api: v2
    prefix: /atomic.io/network
    network: 10.100.0.0/16
    subnet_len: 25
    subnet_min: 10.100.0.0
    subnet_max: 10.100.1.0
    backend:
      type: udp

- name: Move a live network to a new range (every node re-acquires a subnet)
  netfabric.flannel.flannel_network:
    api: auto  # the API that holds the network's config
    network: 10.200.0.0/16
    backend:
      type: host-gw
    force: true

- name: Dual stack, one /24 and one /64 per host
  netfabric.flannel.flannel_network:
    api: v3
    network: 10.100.0.0/16
    enable_ipv6: true
    ipv6_network: fc00:100::/48
    backend:
      type: vxlan

- name: IPv6 only, 255 /120 subnets
  netfabric.flannel.flannel_network:
    api: v3
    enable_ipv4: false
    enable_ipv6: true
    ipv6_network: fd00:42::/112
    ipv6_subnet_len: 120
    backend:
      type: host-gw

- name: VXLAN network whose agents keep their masquerade and forward rules in nftables
  netfabric.flannel.flannel_network:
    api: v3
    network: 10.100.0.0/16
    enable_nftables: true
    backend:
      type: vxlan

- name: Remove the network config
  netfabric.flannel.flannel_network:
    api: v3
    state: absent
"""

RETURN = r"""
key:
  description: The etcd key of the network config.
  returned: always
  type: str
  sample: /coreos.com/network/config
api:
  description:
    - The etcd API that was used, V(v2) or V(v3); with O(api=auto), the API under which C(<prefix>/config) was
      found (V(v3) for a new network, unless etcd serves only the v2 API).
  returned: always
  type: str
  sample: v3
config:
  description:
    - The effective config with every default filled in, with Go's key names.
    - With IPv6 it also holds C(EnableIPv6) (V(true)), C(IPv6Network), C(IPv6SubnetLen), C(IPv6SubnetMin) and
      C(IPv6SubnetMax); an IPv6-only config holds C(EnableIPv4) (V(false)) and no C(Network), C(SubnetLen),
      C(SubnetMin), C(SubnetMax). An IPv4-only config has no C(Enable*) keys.
    - C(EnableNFTables) (V(true)) is there only when the agents use nftables.
    - Empty when O(state=absent).
  returned: always
  type: dict
  sample:
    Network: 10.100.0.0/16
    SubnetLen: 24
    SubnetMin: 10.100.1.0
    SubnetMax: 10.100.255.0
    Backend: {Type: vxlan, VNI: 1, Port: 0, GBP: false, Learning: false, DirectRouting: false, MTU: null,
              MacPrefix: null}
stored:
  description:
    - The JSON document in etcd after the run (what was written, or what was already there).
    - Secret backend options (C(PSK)) are shown as V((hidden)), here, in RV(previous) and in the diff.
  returned: when O(state=present)
  type: str
  sample: '{"Network": "10.100.0.0/16", "Backend": {"Type": "vxlan"}}'
previous:
  description: The JSON document that was in etcd before the run, null if there was none; secrets hidden.
  returned: always
  type: str
  sample: '{"Network": "10.1.0.0/16"}'
invalidated_leases:
  description:
    - Subnets of existing leases that the new config no longer covers (only with O(force=true));
      their nodes acquire new subnets.
    - A dual-stack lease is given as its IPv4 and IPv6 subnets separated by a space, like
      V(10.1.5.0/24 fc00:0:0:5::/64); an IPv6-only lease as its IPv6 subnet.
  returned: when O(state=present)
  type: list
  elements: str
  sample: [10.1.5.0/24]
leases:
  description: How many leases exist under C(<prefix>/subnets/).
  returned: always
  type: int
  sample: 3
restart_agents:
  description:
    - Whether running agents must restart to apply the change, because a key they apply only when they start
      changed (C(Network), C(SubnetLen), C(EnableIPv4), C(EnableIPv6), C(IPv6Network), C(IPv6SubnetLen),
      C(EnableNFTables) or C(Backend)). V(false) when there was no config before, when nothing changed, and
      when only C(SubnetMin)/C(SubnetMax) moved (they matter for new leases only).
    - The flannel role restarts the agents that are running when this is V(true).
  returned: always
  type: bool
  sample: true
restart_keys:
  description: The top-level keys behind RV(restart_agents) (names only, never values).
  returned: always
  type: list
  elements: str
  sample: [Backend]
"""

import json

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.netfabric.flannel.plugins.module_utils.flannel_module import (
    ETCD_REQUIRED_TOGETHER,
    connect_store,
    etcd_argument_spec,
    one_line,
    prefix_of,
    read_config,
    read_leases,
    store_call,
)
from ansible_collections.netfabric.flannel.plugins.module_utils.catalogue import redact_text
from ansible_collections.netfabric.flannel.plugins.module_utils.leases import config_key
from ansible_collections.netfabric.flannel.plugins.module_utils.netconfig import ConfigError, changes, parse_config
from ansible_collections.netfabric.flannel.plugins.module_utils.network_module import (
    BACKEND_KEYS,
    backend_spec,
    lease_problems,
    pretty,
    unused_options,
    wanted_document,
)

# main, and the names the unit tests use from here
__all__ = ["BACKEND_KEYS", "backend_spec", "lease_problems", "main", "wanted_document"]


def main() -> None:
    module = AnsibleModule(
        argument_spec=etcd_argument_spec(
            network=dict(type="str"),
            subnet_len=dict(type="int"),
            subnet_min=dict(type="str"),
            subnet_max=dict(type="str"),
            enable_ipv4=dict(type="bool", default=True),
            enable_ipv6=dict(type="bool", default=False),
            enable_nftables=dict(type="bool", default=False),
            ipv6_network=dict(type="str"),
            ipv6_subnet_len=dict(type="int"),
            ipv6_subnet_min=dict(type="str"),
            ipv6_subnet_max=dict(type="str"),
            backend=dict(type="dict", options=backend_spec()),
            force=dict(type="bool", default=False),
            state=dict(type="str", choices=["present", "absent"], default="present"),
        ),
        # network (ipv6_network) is required when IPv4 (IPv6) is on: the schema says so, in its own words
        required_together=ETCD_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    params = module.params
    state = params["state"]

    wanted = None
    document = None
    if state == "present":
        # Validate before touching etcd at all: a bad value never reaches the store.
        document = wanted_document(params)
        try:
            wanted = parse_config(document)
        except ConfigError as err:
            module.fail_json(msg=one_line(err))
        unused = unused_options(params)
        if unused:
            module.fail_json(msg=unused)

    store = connect_store(module)
    key = config_key(prefix_of(module))
    kv, current, _current_error = read_config(module, store)
    previous = kv.value if kv is not None else None
    leases, _skipped = read_leases(module, store)
    result = dict(changed=False, key=key, api=store.api, previous=redact_text(previous), leases=len(leases),
                  restart_agents=False, restart_keys=[])

    if state == "absent":
        result["config"] = {}
        if kv is not None:
            result["changed"] = True
            if not module.check_mode:
                store_call(module, store.delete, key)
        if module._diff:
            result["diff"] = dict(before=pretty(previous), after="", before_header=key, after_header=key)
        module.exit_json(**result)

    result["config"] = wanted.to_dict()
    if current is not None and current == wanted:
        # Same meaning: keep what is stored, whatever its key order or spelled-out defaults.
        result["stored"] = redact_text(previous)
        result["invalidated_leases"] = []
        if module._diff:
            result["diff"] = dict(before=pretty(previous), after=pretty(previous), before_header=key,
                                  after_header=key)
        module.exit_json(**result)

    why, invalid = lease_problems(current, wanted, leases)
    if why and not params["force"]:
        module.fail_json(msg=why, key=key, api=store.api, previous=redact_text(previous), invalidated_leases=invalid)
    text = json.dumps(document)
    restart = changes(current, wanted)[0] if current is not None else []
    result.update(changed=True, stored=redact_text(text), invalidated_leases=invalid, restart_agents=bool(restart),
                  restart_keys=restart)
    if not module.check_mode:
        store_call(module, store.put, key, text)
    if module._diff:
        result["diff"] = dict(before=pretty(previous), after=pretty(text), before_header=key, after_header=key)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
