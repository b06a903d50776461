#!/usr/bin/python
# Copyright: netfabric.flannel contributors
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: flannel_migrate
short_description: Copy a flannel network from the etcd v2 keys to the etcd v3 API
version_added: "0.2.0"
description:
  - etcd keeps the keys of its v2 API and those of its v3 API apart. A network built with the v2 API (Go flanneld
    up to 0.17, C(etcdctl mk)) is invisible to agents on v3 until its keys are copied. This module copies them,
    on a running network, so that the agents can then be moved to v3 one at a time without any node changing
    its subnet.
  - With O(state=copied), first checks that every endpoint answers the v3 API and finds out which ones still
    serve the v2 API; then copies every lease under C(<prefix>/subnets/) from v2 to v3, byte for byte, each
    with the time it has left (a v3 lease granted with that remaining TTL; a reservation, a key without TTL,
    stays without TTL), and the network config C(<prefix>/config) last.
  - A key v3 already holds with the same value is left alone. A lease v3 holds for the same node with another
    value is left alone too (its agent runs on v3 already and rewrote it). When v3 already holds a different
    network config, a lease of another node, or a lease overlapping one of v2, the module fails with one line
    and writes nothing.
  - When no endpoint serves the v2 API any more and v3 holds the network config, there is nothing left to copy
    (the migration is done) and nothing changes.
  - With O(state=v2_removed), deletes the v2 copies of the keys that v3 holds - every lease whose key v3 holds
    for the same node, then the network config when v3 holds the same one. Leases v3 does not hold stay in v2.
    Do this only once every agent uses v3, and before the v2 API is turned off (without it, the v2 keys cannot
    be reached any more).
author:
  - netfabric.flannel developers (@netfabric)
extends_documentation_fragment:
  - netfabric.flannel.etcd
options:
  api:
    description:
      - The etcd API the network is copied to. Only V(v3); the keys are read from the v2 keys API.
      - Every endpoint in O(endpoints) must answer it (etcd 3.4 or newer).
    type: str
    choices: [v3]
    default: v3
  state:
    description:
      - V(copied) copies the network config and the leases from the v2 keys to v3.
      - V(v2_removed) deletes the v2 keys that v3 holds a copy of.
    type: str
    choices: [copied, v2_removed]
    default: copied
attributes:
  check_mode:
    support: full
    description: Reports what would be copied or deleted without writing to etcd.
  diff_mode:
    support: full
    description: Shows the keys that are added to v3 (or removed from v2), secrets of the network config hidden.
  platform:
    support: full
    platforms: posix
    description: Runs on any host with Python that reaches the etcd endpoints.
requirements:
  - python-etcd and etcd3gw (Python libraries) on the host that runs the module; the agent's Python
    (C(/opt/pyflannel/bin/python)) has both.
notes:
  - The copies of the leases of nodes whose agents still use v2 expire in v3 when their remaining time runs out
    (at least an hour, since the agents renew an hour before expiry); move those agents to v3 before that, or
    run the module again (it copies what is new and leaves the rest).
  - The collection's playbook C(playbooks/migrate-etcd-v3.yml) runs the whole migration with this module (the
    copy, the agents moved one node at a time, the v2 API turned off); see C(docs/migration.md).
seealso:
  - module: netfabric.flannel.flannel_lease_info
  - module: netfabric.flannel.flannel_network
"""

EXAMPLES = r"""
- name: Copy the network under /atomic.io/network from the v2 keys to v3
  netfabric.flannel.flannel_migrate:
    endpoints: [http://10.0.0.11:2379, http://10.0.0.12:2379, http://10.0.0.13:2379]
    prefix: /atomic.io/network
    api: v3
    state: copied
  register: copied

- name: Once every agent uses v3, delete the v2 copies (before turning the v2 API off)
  netfabric.flannel.flannel_migrate:
    endpoints: [http://10.0.0.11:2379]
    prefix: /atomic.io/network
    api: v3
    state: v2_removed
"""

RETURN = r"""
api:
  description: The API the keys were copied to; always V(v3).
  returned: always
  type: str
  sample: v3
v2_served:
  description: Whether at least one endpoint still serves the v2 keys API.
  returned: always
  type: bool
  sample: true
endpoints:
  description: Every endpoint, and whether it serves the v2 keys API (all of them answer v3, or the module fails).
  returned: always
  type: list
  elements: dict
  sample: [{url: "http://10.0.0.11:2379", v2: true}]
config:
  description:
    - What happened to the network config in v3 (V(copied)) or in v2 (V(removed)).
    - V(copied) - it was copied to v3; V(same) - v3 holds the same config already; V(only_v3) - v3 holds one and
      v2 none (or v2 is not served); V(removed) - the v2 copy was deleted; V(kept) - the v2 copy stays (v3 has no
      network config).
  returned: always
  type: str
  sample: copied
copied:
  description: The leases copied to v3 (would be, in check mode), each with the TTL it got.
  returned: when O(state=copied)
  type: list
  elements: dict
  sample:
    - {key: /atomic.io/network/subnets/10.100.0.0-25, subnet: 10.100.0.0/25, ipv6_subnet: null,
       public_ip: 192.0.2.11, public_ipv6: null, ttl: 85310, reservation: false}
unchanged:
  description: Lease keys v3 holds with the same value already (nothing to copy).
  returned: when O(state=copied)
  type: list
  elements: str
  sample: [/atomic.io/network/subnets/10.100.0.128-25]
newer_in_v3:
  description: Lease keys v3 holds for the same node with another value (its agent uses v3 and rewrote it); left alone.
  returned: when O(state=copied)
  type: list
  elements: str
  sample: [/atomic.io/network/subnets/10.100.1.0-25]
removed:
  description: The v2 keys that were deleted (would be, in check mode).
  returned: when O(state=v2_removed)
  type: list
  elements: str
  sample: [/atomic.io/network/subnets/10.100.0.0-25, /atomic.io/network/config]
kept_in_v2:
  description: v2 leases that were not deleted, with the reason (v3 holds no copy of them).
  returned: when O(state=v2_removed)
  type: list
  elements: dict
  sample: [{key: /atomic.io/network/subnets/10.100.1.128-25, reason: v3 has no such key}]
skipped:
  description: v2 keys under C(<prefix>/subnets/) that were not copied, with the reason (not a lease, or it expired).
  returned: when O(state=copied)
  type: list
  elements: dict
  sample: [{key: /atomic.io/network/subnets/10.100.0.300-25, reason: "not a lease key: ..."}]
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.netfabric.flannel.plugins.module_utils.catalogue import redact_text
from ansible_collections.netfabric.flannel.plugins.module_utils.flannel_module import (
    ETCD_REQUIRED_TOGETHER,
    HAS_ETCD3GW,
    HAS_PYTHON_ETCD,
    etcd_argument_spec,
)
from ansible_collections.netfabric.flannel.plugins.module_utils.migration import (
    Migration,
    config_difference,
    line,
    same_config,
)

# main, and the names the unit tests use from here
__all__ = ["config_difference", "line", "main", "redact_text", "same_config"]


def main() -> None:
    module = AnsibleModule(
        argument_spec=etcd_argument_spec(
            api=dict(type="str", choices=["v3"], default="v3"),
            state=dict(type="str", choices=["copied", "v2_removed"], default="copied"),
        ),
        required_together=ETCD_REQUIRED_TOGETHER,
        supports_check_mode=True,
    )
    if not HAS_PYTHON_ETCD:
        module.fail_json(msg=missing_required_lib("python-etcd", reason="to read the v2 keys"))
    if not HAS_ETCD3GW:
        module.fail_json(msg=missing_required_lib("etcd3gw", reason="to write the v3 keys"))
    if module.params["timeout"] is not None and module.params["timeout"] <= 0:
        module.fail_json(msg="timeout=%s: must be a positive number of seconds" % module.params["timeout"])
    migration = Migration(module)
    migration.probe()
    result = migration.copy() if module.params["state"] == "copied" else migration.remove_v2()
    module.exit_json(**result)


if __name__ == "__main__":
    main()
